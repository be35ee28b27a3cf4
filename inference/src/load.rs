//! Loading what the service runs: the run's `model.onnx` (found beside the weights URI the
//! operator hands us), its `metrics.json`, and the BlazeFace detector; and, best effort, what
//! the model card shows: `validation.json` beside the run and `history.json` in the runs prefix
//! above it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use artifacts::{History, RunMetrics, Storage, layout};
use model::CLASSES;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use pipeline::runtime::{self, RuntimeError};
use pipeline::{DetectorLoadError, FaceDetector, PIPELINE_VERSION};

use crate::batcher::{Forward, OnnxClassifier};
use crate::card::{ModelCard, ValidationView};

/// Where ONNX Runtime is and how the model runs on it.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// `libonnxruntime.so` to load.
    pub library: PathBuf,
    /// Model sessions, each on its own thread, sharing the batch queue.
    pub workers: usize,
    /// Intra-op threads per model session.
    pub threads: usize,
    /// Intra-op threads of one more session, used by a request that is alone in the server
    /// (see [`crate::batcher::Batcher::classify_alone`]); none when not above `threads`.
    pub solo_threads: usize,
}

/// The sessions a model runs on: the workers sharing the batch queue, and the optional session
/// with more threads for a request that is alone.
pub struct Models {
    pub workers: Vec<Box<dyn Forward>>,
    pub solo: Option<Box<dyn Forward>>,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Models")
            .field("workers", &self.workers.len())
            .field("solo", &self.solo.is_some())
            .finish()
    }
}

impl From<Vec<Box<dyn Forward>>> for Models {
    fn from(workers: Vec<Box<dyn Forward>>) -> Self {
        Self {
            workers,
            solo: None,
        }
    }
}

/// What `/v1/model` reports about the model in service. Deliberately no storage URLs or keys:
/// they are internal, and the run id is enough to find the run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelInfo {
    pub run_id: Option<String>,
    pub test_accuracy: Option<f64>,
    pub per_class_accuracy: Option<BTreeMap<String, f64>>,
    /// When the run finished (RFC 3339).
    pub trained_at: Option<String>,
    pub image_size: u32,
    pub classes: Vec<String>,
    /// `sha256:<hex>` of the ONNX file being served.
    pub onnx_sha256: String,
    /// The bytes → input pipeline version the model was trained through; `None` for runs from
    /// before the shared pipeline (trained on centre crops of whole images).
    pub pipeline_version: Option<u32>,
    /// The model card (`GET /v1/model/card`), built when the model loaded.
    #[serde(skip)]
    #[schema(ignore)]
    pub card: Arc<ModelCard>,
}

/// Why loading a model failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid MODEL_URI {0:?}: expected a URL or path ending in a weights file")]
    Uri(String),
    #[error(
        "no ONNX model at {onnx} (derived from MODEL_URI {uri}): the run predates the ONNX export; train it again, or point MODEL_URI at a run that has model.onnx"
    )]
    NoOnnx { uri: String, onnx: String },
    #[error(transparent)]
    Storage(#[from] artifacts::StorageError),
    #[error(
        "{key} has {got}, but metrics.json says {want}: refusing a model that is not the run's"
    )]
    Checksum {
        key: String,
        got: String,
        want: String,
    },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("warm-up inference failed: {0}")]
    WarmUp(String),
    #[error(transparent)]
    Detector(#[from] DetectorLoadError),
    #[error(
        "{run} was trained through input pipeline version {found}, but this server implements version {PIPELINE_VERSION}: it would classify other inputs than the model was trained and tested on. Serve it with a face2simpson-inference built for version {found}, or train it again"
    )]
    Pipeline { run: String, found: u32 },
}

impl LoadError {
    /// Exit code of a server that cannot serve for this reason: 2 when the model can never be
    /// served by this binary (retrying cannot help), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            LoadError::Pipeline { .. } | LoadError::Checksum { .. } | LoadError::Uri(_) => 2,
            _ => 1,
        }
    }
}

/// Refuses a run trained through an input pipeline this server does not implement.
fn check_pipeline(metrics: &RunMetrics) -> Result<(), LoadError> {
    match &metrics.pipeline {
        Some(p) if p.version != PIPELINE_VERSION => Err(LoadError::Pipeline {
            run: metrics.run_id.clone(),
            found: p.version,
        }),
        Some(_) => Ok(()),
        None => {
            tracing::warn!(
                run_id = %metrics.run_id,
                "the run predates the shared input pipeline: its test accuracy was measured on centre crops of whole images, not on the face crops served here"
            );
            Ok(())
        }
    }
}

/// Fetches `model.onnx` beside `uri` (a `model.safetensors` URI as the operator and
/// champion.json name it, or the `.onnx` itself) and `metrics.json` when present, and builds
/// one warmed-up session per worker (and the solo session). `image_size` is used when no
/// metrics say otherwise.
pub async fn load_model(
    uri: &str,
    image_size: u32,
    rt: &RuntimeConfig,
) -> Result<(Models, ModelInfo), LoadError> {
    let (dir, file) = uri
        .trim_end_matches('/')
        .rsplit_once('/')
        .ok_or_else(|| LoadError::Uri(uri.to_owned()))?;
    if file.is_empty() || dir.is_empty() {
        return Err(LoadError::Uri(uri.to_owned()));
    }
    let storage = Storage::open(dir)?;
    let onnx_key = layout::onnx_beside(file);
    let onnx = match storage.get(&onnx_key).await {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => {
            return Err(LoadError::NoOnnx {
                uri: uri.to_owned(),
                onnx: storage.url_of(&onnx_key),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let metrics_key = layout::metrics_beside(file);
    let metrics = match storage.get(&metrics_key).await {
        Ok(bytes) => match RunMetrics::from_json(&bytes) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(key = %storage.url_of(&metrics_key), error = %e, "ignoring malformed metrics.json");
                None
            }
        },
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e.into()),
    };
    let sha = format!("sha256:{:x}", Sha256::digest(&onnx));
    if let Some(want) = metrics.as_ref().and_then(|m| m.onnx_sha256.clone())
        && want != sha
    {
        return Err(LoadError::Checksum {
            key: storage.url_of(&onnx_key),
            got: sha,
            want,
        });
    }
    if let Some(m) = &metrics {
        check_pipeline(m)?;
    }
    let image_size = metrics
        .as_ref()
        .map_or(image_size, |m| m.hyperparameters.image_size);
    let classes: Vec<String> = CLASSES.iter().map(|c| c.to_string()).collect();
    let validation = read_validation(&storage).await;
    let history = read_history_above(dir).await;
    let card = ModelCard::build(
        &classes,
        &sha,
        metrics.as_ref(),
        validation.as_ref(),
        history.as_ref(),
    );
    let info = ModelInfo {
        run_id: metrics.as_ref().map(|m| m.run_id.clone()),
        test_accuracy: metrics.as_ref().map(|m| m.test_accuracy),
        per_class_accuracy: metrics.as_ref().map(|m| m.per_class_accuracy.clone()),
        trained_at: metrics.as_ref().map(|m| m.finished_at.to_rfc3339()),
        image_size,
        classes,
        onnx_sha256: sha,
        pipeline_version: metrics
            .as_ref()
            .and_then(|m| m.pipeline.as_ref().map(|p| p.version)),
        card: Arc::new(card),
    };
    let rt = rt.clone();
    tokio::task::spawn_blocking(move || {
        let env = runtime::environment(&rt.library)?;
        let size = image_size as usize;
        let zeros = vec![0.0f32; 3 * size * size];
        let warm = |threads: usize| -> Result<Box<dyn Forward>, LoadError> {
            let mut m = OnnxClassifier::new(runtime::session(env, &onnx, threads)?);
            // Warm-up: the first run plans and allocates; pay for it before /readyz says yes.
            let p = m.forward(&zeros, 1, size).map_err(LoadError::WarmUp)?;
            if p.len() != 1 {
                return Err(LoadError::WarmUp(format!("{} rows for one image", p.len())));
            }
            Ok(Box::new(m))
        };
        let threads = rt.threads.max(1);
        let workers = (0..rt.workers.max(1))
            .map(|_| warm(threads))
            .collect::<Result<Vec<_>, _>>()?;
        let solo = (rt.solo_threads > threads)
            .then(|| warm(rt.solo_threads))
            .transpose()?;
        Ok((Models { workers, solo }, info))
    })
    .await
    .map_err(|e| LoadError::WarmUp(e.to_string()))?
}

/// `validation.json` beside the run (written by `face2simpson-inference validate`), best
/// effort: missing is normal, unreadable is logged.
async fn read_validation(storage: &Storage) -> Option<ValidationView> {
    const KEY: &str = layout::VALIDATION;
    match storage.get(KEY).await {
        Ok(bytes) => ValidationView::from_json(&bytes)
            .map_err(|e| {
                tracing::warn!(key = %storage.url_of(KEY), error = %e, "ignoring malformed validation.json");
            })
            .ok(),
        Err(e) if e.is_not_found() => None,
        Err(e) => {
            tracing::warn!(key = %storage.url_of(KEY), error = %e, "cannot read validation.json; the card shows no served accuracy");
            None
        }
    }
}

/// `history.json` in the runs prefix above the run directory `run_dir` (the URL of
/// `runs/<ns>/<name>/<run-id>` → `runs/<ns>/<name>/history.json`), best effort.
async fn read_history_above(run_dir: &str) -> Option<History> {
    let (prefix, _) = run_dir.trim_end_matches('/').rsplit_once('/')?;
    if prefix.is_empty() || prefix.ends_with(':') || prefix.ends_with(":/") {
        return None;
    }
    let storage = Storage::open(prefix).ok()?;
    match artifacts::read_history(&storage, layout::HISTORY).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the decision history; the card shows none");
            None
        }
    }
}

/// BlazeFace from `path`, with `sessions` single-threaded sessions (one per concurrent decode).
pub fn load_detector(
    library: &std::path::Path,
    path: &std::path::Path,
    sessions: usize,
    max_faces: usize,
) -> Result<FaceDetector, LoadError> {
    Ok(FaceDetector::load(library, path, sessions, max_faces)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_trained_through_another_pipeline_version_is_refused_for_good() {
        let mut m = crate::card::tests::metrics("r1");
        assert!(check_pipeline(&m).is_ok());
        // A model trained before fast resizing and reduced decodes (version 1).
        if let Some(p) = &mut m.pipeline {
            p.version = 1;
        }
        let err = check_pipeline(&m).unwrap_err();
        assert!(matches!(err, LoadError::Pipeline { found: 1, .. }), "{err}");
        assert_eq!(err.exit_code(), 2);
        m.pipeline = None;
        assert!(
            check_pipeline(&m).is_ok(),
            "runs from before the pipeline are served"
        );
    }
}
