//! Served-path validation (`face2simpson-inference validate`): before a candidate takes
//! traffic, the production binary loads its `model.onnx` with its own runtime and threads and
//! answers every image of the dataset's test split **through the request path** — the real
//! [`crate::app`] router, `POST /v1/predict`, bytes in, JSON verdict out, in process — and
//! writes `validation.json`: served accuracy, per-class recall, agreement with the trainer's own
//! test predictions, latency, peak memory, and pass/fail with reasons (docs/inference.md,
//! *Served-path validation*).
//!
//! Two kinds of failure are told apart, with the reasons the operator's gate reports:
//! [`FailureReason::InfraValidationFailed`] (the model does not load, the golden request fails,
//! test images answered with a server error, p95 latency or peak memory over budget) and
//! [`FailureReason::TrainServeSkew`] (the served verdicts disagree with the trainer's own
//! predictions for the same images more often than allowed).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use artifacts::{RunMetrics, Storage, StorageError, layout};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::Utc;
use model::{CLASSES, class_index};
use pipeline::FaceDetector;
use tower::ServiceExt;

use crate::{AppState, BatchConfig, Limits, LoadError, RuntimeConfig, app, load_model};

pub use artifacts::validation::{
    DEFAULT_MIN_AGREEMENT, Disagreement, Failure, FailureReason, GoldenCheck, Latency,
    RejectedImage, ServedPredictions, ServedScore, Thresholds, VALIDATION_SCHEMA_VERSION,
    Validation,
};

/// Exit codes of `face2simpson-inference validate`, in the trainer's spirit (the operator's
/// podFailurePolicy can tell a verdict from a failure to reach one).
pub mod exit {
    /// Validated and passed; `validation.json` written.
    pub const PASSED: u8 = 0;
    /// Validated and failed (`passed: false`, the reasons in `failures`); `validation.json`
    /// written. Retrying gives the same verdict.
    pub const FAILED: u8 = 1;
    /// Bad flags or configuration (clap's code too): an invalid URL, no test images, a face
    /// detector or ONNX Runtime library that cannot be loaded. No retry helps.
    pub const CONFIG: u8 = 2;
    /// The store could not be reached (listing, reading or writing failed): a retry may pass.
    pub const STORE: u8 = 3;
}

/// The largest verdict body the validator reads (a prediction is a few hundred bytes).
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// The process exit code for a verdict: [`exit::PASSED`] or [`exit::FAILED`].
pub fn verdict_exit_code(validation: &Validation) -> u8 {
    if validation.passed {
        exit::PASSED
    } else {
        exit::FAILED
    }
}

/// Why no verdict could be reached (nothing, or only a partial file, was written).
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl ValidateError {
    /// [`exit::CONFIG`] for what no retry fixes, [`exit::STORE`] for the store failing.
    pub fn exit_code(&self) -> u8 {
        match self {
            ValidateError::Config(_)
            | ValidateError::Storage(
                StorageError::InvalidUrl { .. }
                | StorageError::Open { .. }
                | StorageError::LocalDir { .. },
            ) => exit::CONFIG,
            ValidateError::Storage(_) => exit::STORE,
        }
    }
}

/// Everything a validation needs; the serving parts are built from the same flags as serving.
#[derive(Clone)]
pub struct ValidateConfig {
    /// The candidate, as `load_model` takes it (`…/model.safetensors` or `…/model.onnx`).
    pub model: String,
    /// URL of the dataset prefix; its `test/<class>/<file>` images are scored.
    pub dataset: String,
    /// URL of the `validation.json` to write.
    pub out: String,
    /// The champion to score the same way, if any.
    pub champion: Option<String>,
    pub thresholds: Thresholds,
    /// Input size when a run's metrics.json does not say.
    pub image_size: u32,
    pub runtime: RuntimeConfig,
    pub limits: Limits,
    pub batch: BatchConfig,
    pub detector: Arc<FaceDetector>,
}

impl std::fmt::Debug for ValidateConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidateConfig")
            .field("model", &self.model)
            .field("dataset", &self.dataset)
            .field("out", &self.out)
            .field("champion", &self.champion)
            .field("thresholds", &self.thresholds)
            .finish_non_exhaustive()
    }
}

/// Splits `…/dir/file` into the store URL of `dir` and `file`.
fn split_uri<'a>(uri: &'a str, what: &str) -> Result<(&'a str, &'a str), ValidateError> {
    let invalid = || {
        ValidateError::Config(format!(
            "invalid {what} {uri:?}: expected a URL or path ending in a file name"
        ))
    };
    let (dir, file) = uri
        .trim_end_matches('/')
        .rsplit_once('/')
        .ok_or_else(invalid)?;
    if dir.is_empty() || file.is_empty() {
        return Err(invalid());
    }
    Ok((dir, file))
}

/// One test image of the dataset.
#[derive(Debug, Clone)]
struct TestImage {
    /// Relative to the dataset prefix: `test/<class>/<file>`.
    key: String,
    label: u8,
}

/// The test split's images, sorted by key, as the trainer would take them.
async fn test_images(dataset: &Storage) -> Result<Vec<TestImage>, ValidateError> {
    let mut out = Vec::new();
    for meta in dataset.list("test").await? {
        let key = meta.location.to_string();
        let parts: Vec<&str> = key.split('/').collect();
        let ["test", class, file] = parts.as_slice() else {
            continue;
        };
        // The trainer's rule, size limit included, so both score the same test split (the
        // trainer lists what it skipped in metrics.json).
        if !artifacts::layout::is_dataset_image(file) {
            continue;
        }
        if meta.size as usize > model::preprocess::MAX_FILE_BYTES {
            tracing::warn!(%key, bytes = meta.size, "over the upload limit, as the trainer skips it; skipped");
            continue;
        }
        match class_index(class) {
            Some(label) => out.push(TestImage {
                label: label as u8,
                key,
            }),
            None => tracing::warn!(%key, "not a class this model knows; skipped"),
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// The run's `metrics.json` beside the model, if there is a readable one.
async fn metrics_beside(model: &str) -> Result<Option<RunMetrics>, ValidateError> {
    let (dir, file) = split_uri(model, "model URI")?;
    let storage = Storage::open(dir)?;
    let key = layout::metrics_beside(file);
    match storage.get(&key).await {
        Ok(bytes) => match RunMetrics::from_json(&bytes) {
            Ok(m) => Ok(Some(m)),
            Err(e) => {
                tracing::warn!(key = %storage.url_of(&key), error = %e, "ignoring malformed metrics.json");
                Ok(None)
            }
        },
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A deterministic 192×144 PNG (colour gradients and a bright disc): no face, so the whole
/// image goes through decode, detection, fit and the model.
pub fn golden_image() -> Vec<u8> {
    let img = image::RgbImage::from_fn(192, 144, |x, y| {
        let (dx, dy) = (x as i32 - 96, y as i32 - 72);
        if dx * dx + dy * dy < 40 * 40 {
            image::Rgb([250, 215, 40])
        } else {
            image::Rgb([(x * 255 / 191) as u8, (y * 255 / 143) as u8, 128])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    // Encoding a generated image into memory cannot fail.
    let _ = img.write_to(&mut out, image::ImageFormat::Png);
    out.into_inner()
}

/// One answer of the request path.
struct Answer {
    status: StatusCode,
    body: serde_json::Value,
    elapsed: Duration,
}

/// Sends `bytes` as `POST /v1/predict` through the router, exactly as a client upload is
/// answered.
async fn predict(router: &axum::Router, bytes: impl Into<Body>) -> Answer {
    let req = Request::post("/v1/predict")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(bytes.into());
    let start = Instant::now();
    let resp = match req {
        Ok(req) => match router.clone().oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        },
        Err(e) => {
            return Answer {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                body: serde_json::json!({"error": e.to_string()}),
                elapsed: start.elapsed(),
            };
        }
    };
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), MAX_ANSWER_BYTES).await;
    let elapsed = start.elapsed();
    let body = match body {
        Ok(b) => serde_json::from_slice(&b)
            .unwrap_or_else(|e| serde_json::json!({"error": format!("answer is not JSON: {e}")})),
        Err(e) => serde_json::json!({"error": format!("reading the answer: {e}")}),
    };
    Answer {
        status,
        body,
        elapsed,
    }
}

fn error_of(body: &serde_json::Value) -> String {
    body.get("error")
        .and_then(|e| e.as_str())
        .unwrap_or("(no error message)")
        .to_owned()
}

/// Nearest-rank percentile of sorted milliseconds.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn latency(mut ms: Vec<f64>) -> Option<Latency> {
    if ms.is_empty() {
        return None;
    }
    ms.sort_by(f64::total_cmp);
    Some(Latency {
        p50_ms: percentile(&ms, 50.0),
        p95_ms: percentile(&ms, 95.0),
        max_ms: ms[ms.len() - 1],
    })
}

/// Peak resident memory of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// A model loaded into its own service, or why it could not be.
enum Served {
    Ready {
        router: axum::Router,
        score: ServedScore,
    },
    Failed(ServedScore),
}

fn empty_score(model: &str, metrics: Option<&RunMetrics>) -> ServedScore {
    ServedScore {
        model: model.to_owned(),
        run_id: metrics.map(|m| m.run_id.clone()),
        onnx_sha256: None,
        image_size: None,
        load_error: None,
        test_images: 0,
        served_accuracy: None,
        per_class_recall: BTreeMap::new(),
        confusion_matrix: vec![vec![0; CLASSES.len()]; CLASSES.len()],
        rejected_images: Vec::new(),
        latency_ms: None,
        trainer_test_accuracy: metrics.map(|m| m.test_accuracy),
    }
}

/// Loads `model` exactly as serving does and puts it behind the real router. A store outage is
/// an error; anything else that stops the model from loading is the model's failure.
async fn serve(
    cfg: &ValidateConfig,
    model: &str,
    metrics: Option<&RunMetrics>,
) -> Result<Served, ValidateError> {
    let mut score = empty_score(model, metrics);
    tracing::info!(model, "loading model");
    let (models, info) = match load_model(model, cfg.image_size, &cfg.runtime).await {
        Ok(loaded) => loaded,
        Err(LoadError::Uri(uri)) => {
            return Err(ValidateError::Config(format!(
                "invalid model URI {uri:?}: expected a URL or path ending in a file name"
            )));
        }
        Err(LoadError::Storage(e)) if !e.is_not_found() => return Err(e.into()),
        Err(e) => {
            tracing::warn!(model, error = %e, "the model did not load");
            score.load_error = Some(e.to_string());
            return Ok(Served::Failed(score));
        }
    };
    score.run_id = info.run_id.clone().or(score.run_id);
    score.onnx_sha256 = Some(info.onnx_sha256.clone());
    score.image_size = Some(info.image_size);
    let state = AppState::new(cfg.limits, cfg.detector.clone());
    if let Err(e) = state.install(models, info, cfg.batch) {
        score.load_error = Some(format!("cannot start the model workers: {e}"));
        return Ok(Served::Failed(score));
    }
    Ok(Served::Ready {
        router: app(state),
        score,
    })
}

/// Answers every test image through `router`; fills `score`, returns the served class per
/// image (`None` where the answer was not 200).
async fn score_images(
    router: &axum::Router,
    dataset: &Storage,
    images: &[TestImage],
    score: &mut ServedScore,
) -> Result<Vec<Option<u8>>, ValidateError> {
    let mut served = Vec::with_capacity(images.len());
    let mut latencies = Vec::with_capacity(images.len());
    let mut support = [0u64; CLASSES.len()];
    let mut right = [0u64; CLASSES.len()];
    let started = Instant::now();
    for (i, image) in images.iter().enumerate() {
        let bytes = dataset.get(&image.key).await?;
        let answer = predict(router, bytes).await;
        let class = (answer.status == StatusCode::OK)
            .then(|| {
                answer
                    .body
                    .get("character")
                    .and_then(|c| c.as_str())
                    .and_then(class_index)
            })
            .flatten();
        match class {
            Some(c) => {
                let label = image.label as usize;
                support[label] += 1;
                score.confusion_matrix[label][c] += 1;
                if c == label {
                    right[label] += 1;
                }
                latencies.push(answer.elapsed.as_secs_f64() * 1e3);
                served.push(Some(c as u8));
            }
            None => {
                let error = if answer.status == StatusCode::OK {
                    "a 200 answer without a known `character`".to_owned()
                } else {
                    error_of(&answer.body)
                };
                tracing::warn!(key = %image.key, status = answer.status.as_u16(), %error, "test image not answered");
                score.rejected_images.push(RejectedImage {
                    key: image.key.clone(),
                    status: answer.status.as_u16(),
                    error,
                });
                served.push(None);
            }
        }
        if (i + 1) % 50 == 0 || i + 1 == images.len() {
            tracing::info!(
                model = %score.model,
                done = i + 1,
                of = images.len(),
                seconds = started.elapsed().as_secs_f64(),
                "scoring the test split"
            );
        }
    }
    let scored: u64 = support.iter().sum();
    score.test_images = scored;
    score.served_accuracy = (scored > 0).then(|| right.iter().sum::<u64>() as f64 / scored as f64);
    score.per_class_recall = CLASSES
        .iter()
        .enumerate()
        .filter(|(c, _)| support[*c] > 0)
        .map(|(c, name)| ((*name).to_owned(), right[c] as f64 / support[c] as f64))
        .collect();
    score.latency_ms = latency(latencies);
    Ok(served)
}

/// The golden request: a fixed image answered 200, a known character, probabilities in 0–1
/// summing to 1. Returns the check and, when it failed, why.
async fn golden(router: &axum::Router) -> (GoldenCheck, Option<String>) {
    let answer = predict(router, golden_image()).await;
    let character = answer
        .body
        .get("character")
        .and_then(|c| c.as_str())
        .map(str::to_owned);
    let probabilities: Option<Vec<f64>> = answer
        .body
        .get("probabilities")
        .and_then(|p| p.as_object())
        .map(|p| p.values().filter_map(serde_json::Value::as_f64).collect());
    let sum = probabilities.as_ref().map(|p| p.iter().sum::<f64>());
    let check = GoldenCheck {
        status: answer.status.as_u16(),
        character: character.clone(),
        probability_sum: sum,
        latency_ms: answer.elapsed.as_secs_f64() * 1e3,
    };
    let problem = if answer.status != StatusCode::OK {
        Some(format!(
            "the golden request was answered {}: {}",
            answer.status,
            error_of(&answer.body)
        ))
    } else if character.as_deref().and_then(class_index).is_none() {
        Some(format!(
            "the golden request's answer names no known character ({character:?})"
        ))
    } else {
        match probabilities {
            Some(p)
                if p.len() == CLASSES.len()
                    && p.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v))
                    && sum.is_some_and(|s| (s - 1.0).abs() <= 1e-3) =>
            {
                None
            }
            p => Some(format!(
                "the golden request's probabilities are not {} values in 0-1 summing to 1: {p:?}",
                CLASSES.len()
            )),
        }
    };
    (check, problem)
}

/// Validates the candidate (and scores the champion) without writing anything.
pub async fn validate(cfg: &ValidateConfig) -> Result<Validation, ValidateError> {
    let started_at = Utc::now();
    if !(0.0..=1.0).contains(&cfg.thresholds.min_agreement) {
        return Err(ValidateError::Config(format!(
            "--min-agreement {} is not between 0 and 1",
            cfg.thresholds.min_agreement
        )));
    }
    split_uri(&cfg.model, "model URI")?;
    if let Some(champion) = &cfg.champion {
        split_uri(champion, "champion URI")?;
    }
    let dataset = Storage::open(&cfg.dataset)?;
    let images = test_images(&dataset).await?;
    if images.is_empty() {
        return Err(ValidateError::Config(format!(
            "no test images under {}/test/<class>/ (.jpg, .jpeg, .png or .webp)",
            dataset.url()
        )));
    }
    tracing::info!(dataset = %dataset.url(), images = images.len(), "test split listed");
    let metrics = metrics_beside(&cfg.model).await?;
    let mut failures = Vec::new();
    let infra = |message: String| Failure {
        reason: FailureReason::InfraValidationFailed,
        message,
    };
    let skew = |message: String| Failure {
        reason: FailureReason::TrainServeSkew,
        message,
    };

    // The candidate.
    let (candidate, served, golden_check, peak_rss) =
        match serve(cfg, &cfg.model, metrics.as_ref()).await? {
            Served::Failed(score) => {
                failures.push(infra(format!(
                    "the model does not load: {}",
                    score.load_error.as_deref().unwrap_or("unknown error")
                )));
                (score, vec![None; images.len()], None, peak_rss_bytes())
            }
            Served::Ready { router, mut score } => {
                let (check, problem) = golden(&router).await;
                failures.extend(problem.map(infra));
                let served = score_images(&router, &dataset, &images, &mut score).await?;
                drop(router);
                (score, served, Some(check), peak_rss_bytes())
            }
        };

    if candidate.load_error.is_none() {
        let server_errors: Vec<&RejectedImage> = candidate
            .rejected_images
            .iter()
            .filter(|r| r.status >= 500 || r.status == StatusCode::REQUEST_TIMEOUT.as_u16())
            .collect();
        if let Some(first) = server_errors.first() {
            failures.push(infra(format!(
                "{} of {} test images were answered with a server error (first: {} {} for {})",
                server_errors.len(),
                images.len(),
                first.status,
                first.error,
                first.key
            )));
        }
        if candidate.test_images == 0 {
            failures.push(infra(format!(
                "none of the {} test images was answered 200",
                images.len()
            )));
        }
        if let (Some(max), Some(lat)) = (cfg.thresholds.max_p95_ms, candidate.latency_ms)
            && lat.p95_ms > max
        {
            failures.push(infra(format!(
                "p95 latency {:.1} ms is over the budget of {max} ms (p50 {:.1} ms, {} requests)",
                lat.p95_ms, lat.p50_ms, candidate.test_images
            )));
        }
        if let Some(max) = cfg.thresholds.max_memory_bytes {
            match peak_rss {
                Some(rss) if rss > max => failures.push(infra(format!(
                    "peak memory {rss} bytes ({:.0} MiB) is over the limit of {max} bytes ({:.0} MiB)",
                    rss as f64 / 1048576.0,
                    max as f64 / 1048576.0
                ))),
                Some(_) => {}
                None => failures.push(infra(
                    "peak memory cannot be measured here (no /proc/self/status) but --max-memory-bytes is set".into(),
                )),
            }
        }
    }

    // Agreement with the trainer's own predictions for the same images.
    let mut agreement = None;
    let mut agreement_images = 0u64;
    let mut disagreements = Vec::new();
    if candidate.load_error.is_none() {
        match metrics
            .as_ref()
            .and_then(|m| m.test_predictions.as_ref().map(|p| (m, p)))
        {
            None => failures.push(skew(format!(
                "agreement with the trainer cannot be checked: {}",
                if metrics.is_none() {
                    "no readable metrics.json beside the model"
                } else {
                    "the run's metrics.json has no test_predictions"
                }
            ))),
            Some((m, p)) => {
                let trainer: HashMap<&str, u8> = p
                    .keys
                    .iter()
                    .map(String::as_str)
                    .zip(p.challenger.iter().copied())
                    .collect();
                let prefix = m.dataset.trim_matches('/');
                let mut agreed = 0u64;
                for (image, served) in images.iter().zip(&served) {
                    let full = if prefix.is_empty() {
                        image.key.clone()
                    } else {
                        format!("{prefix}/{}", image.key)
                    };
                    let Some(&want) = trainer.get(full.as_str()) else {
                        continue;
                    };
                    agreement_images += 1;
                    if *served == Some(want) {
                        agreed += 1;
                    } else {
                        let name = |c: u8| CLASSES.get(c as usize).map_or("?", |n| *n).to_owned();
                        disagreements.push(Disagreement {
                            key: image.key.clone(),
                            label: name(image.label),
                            trainer: name(want),
                            served: served.map(name),
                        });
                    }
                }
                if agreement_images == 0 {
                    failures.push(skew(format!(
                        "agreement with the trainer cannot be checked: none of the {} test images under {} is among the run's {} test predictions (dataset {prefix})",
                        images.len(),
                        dataset.url(),
                        p.keys.len()
                    )));
                } else {
                    let share = agreed as f64 / agreement_images as f64;
                    agreement = Some(share);
                    if share < cfg.thresholds.min_agreement {
                        failures.push(skew(format!(
                            "served verdicts agree with the trainer's predictions on {agreed} of {agreement_images} test images ({:.2}%), below the minimum of {:.2}%",
                            share * 100.0,
                            cfg.thresholds.min_agreement * 100.0
                        )));
                    }
                }
            }
        }
    }
    tracing::info!(
        run_id = candidate.run_id.as_deref(),
        served_accuracy = candidate.served_accuracy,
        trainer_test_accuracy = candidate.trainer_test_accuracy,
        agreement,
        p95_ms = candidate.latency_ms.map(|l| l.p95_ms),
        peak_rss_bytes = peak_rss,
        "candidate scored"
    );

    // The champion, the same way, on the same images.
    let mut champion_predictions = None;
    let champion = match &cfg.champion {
        None => None,
        Some(uri) => {
            let champion_metrics = metrics_beside(uri).await?;
            match serve(cfg, uri, champion_metrics.as_ref()).await? {
                Served::Failed(score) => Some(score),
                Served::Ready { router, mut score } => {
                    champion_predictions =
                        Some(score_images(&router, &dataset, &images, &mut score).await?);
                    tracing::info!(
                        run_id = score.run_id.as_deref(),
                        served_accuracy = score.served_accuracy,
                        "champion scored"
                    );
                    Some(score)
                }
            }
        }
    };

    let predictions = ServedPredictions {
        keys: images.iter().map(|i| i.key.clone()).collect(),
        labels: images.iter().map(|i| i.label).collect(),
        candidate: served,
        champion: champion_predictions,
    };
    Ok(Validation {
        schema_version: VALIDATION_SCHEMA_VERSION,
        validator_version: env!("CARGO_PKG_VERSION").to_owned(),
        dataset: dataset.url().to_owned(),
        classes: CLASSES.iter().map(|c| (*c).to_owned()).collect(),
        candidate,
        agreement,
        agreement_images,
        disagreements,
        golden: golden_check,
        peak_rss_bytes: peak_rss,
        champion,
        predictions,
        thresholds: cfg.thresholds,
        started_at,
        finished_at: Utc::now(),
        passed: failures.is_empty(),
        failures,
    })
}

/// Writes `validation.json` to `out` (a URL or path naming the file).
pub async fn write(out: &str, validation: &Validation) -> Result<(), ValidateError> {
    let (dir, file) = split_uri(out, "--out")?;
    Storage::open(dir)?.put_json(file, validation).await?;
    Ok(())
}

/// [`validate`], then [`write`] the verdict to `cfg.out`. The output location is checked before
/// the (long) scoring, so a bad `--out` fails at once.
pub async fn run(cfg: &ValidateConfig) -> Result<Validation, ValidateError> {
    let (dir, _) = split_uri(&cfg.out, "--out")?;
    Storage::open(dir)?;
    let validation = validate(cfg).await?;
    write(&cfg.out, &validation).await?;
    if validation.passed {
        tracing::info!(out = %cfg.out, "validation passed");
    } else {
        for f in &validation.failures {
            tracing::error!(reason = ?f.reason, "{}", f.message);
        }
        tracing::error!(out = %cfg.out, failures = validation.failures.len(), "validation failed");
    }
    Ok(validation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let ms: Vec<f64> = (1..=100).map(f64::from).collect();
        let l = latency(ms).unwrap();
        assert_eq!((l.p50_ms, l.p95_ms, l.max_ms), (50.0, 95.0, 100.0));
        let l = latency(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((l.p50_ms, l.p95_ms, l.max_ms), (2.0, 3.0, 3.0));
        assert!(latency(Vec::new()).is_none());
    }

    #[test]
    fn peak_rss_is_read_from_proc() {
        let rss = peak_rss_bytes().unwrap();
        assert!(rss > 1 << 20, "{rss}");
    }

    #[test]
    fn store_outages_and_configuration_errors_have_their_own_exit_codes() {
        // An object listed a moment ago and gone now: the data is being rewritten, a retry
        // reads it settled (a backend outage is mapped the same way).
        let outage = StorageError::NotFound {
            url: "s3://b".into(),
            key: "datasets/x/test/homer/1.png".into(),
        };
        assert_eq!(ValidateError::Storage(outage).exit_code(), exit::STORE);
        let bad = StorageError::InvalidUrl {
            url: "nope://".into(),
            reason: "unknown scheme".into(),
        };
        assert_eq!(ValidateError::Storage(bad).exit_code(), exit::CONFIG);
        assert_eq!(ValidateError::Config("x".into()).exit_code(), exit::CONFIG);
        assert!(split_uri("model.onnx", "x").is_err());
        assert_eq!(
            split_uri("file:///a/b/validation.json", "x").unwrap(),
            ("file:///a/b", "validation.json")
        );
    }

    #[test]
    fn the_golden_image_decodes() {
        let img = model::decode(&golden_image()).unwrap();
        assert_eq!(img.dimensions(), (192, 144));
    }
}
