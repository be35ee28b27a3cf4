//! Orchestration: fetch what the run needs, load the data, fit, score the champion, write the
//! artifacts (metrics.json last), apply the gate.

use std::collections::BTreeMap;
use std::sync::Arc;

use artifacts::metrics::METRICS_SCHEMA_VERSION;
use artifacts::{
    PipelineRecord, RunMetrics, SplitCounts, Storage, StorageError, TestPredictions, layout,
};
use chrono::Utc;
use model::{CLASSES, Preprocessor};
use sha2::{Digest, Sha256};
use tch::Device;

use super::checkpoint::{Checkpoints, Guard};
use super::evaluate::{self, Evaluation};
use super::stop::StopSignal;
use super::{Outcome, RunTarget, TrainConfig, TrainError, completed, config, fit, promote};
use crate::cache::CropCache;
use crate::dataset::{self, Dataset, Listing, LoadOptions, Sample};
use crate::dist::{Dist, DistError, World};
use crate::face_index::FaceIndex;
use crate::progress::Progress;

/// `sha256:<hex>` of some bytes, the form every digest in metrics.json takes.
pub(super) fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Fetches the pretrained backbone: a key in `storage`, a URL of any supported store, or a
/// local file path.
async fn fetch_pretrained(storage: &Storage, location: &str) -> Result<Vec<u8>, TrainError> {
    if let Some((dir, file)) = location
        .rsplit_once('/')
        .filter(|_| location.contains("://"))
    {
        return Ok(Storage::open(dir)?.get(file).await?.to_vec());
    }
    let path = std::path::Path::new(location);
    if path.is_absolute() || location.starts_with('.') {
        return std::fs::read(path).map_err(|e| {
            TrainError::Config(format!("cannot read pretrained weights {location}: {e}"))
        });
    }
    storage.get(location).await.map(|b| b.to_vec()).map_err(|e| match e {
        e if e.is_not_found() => TrainError::Config(format!(
            "{e}. Upload torchvision's mobilenet_v2-b0353104.pth there (make setup fetches it into \
             .deps/pretrained/), point --pretrained elsewhere, or pass --pretrained none to train from scratch"
        )),
        e => e.into(),
    })
}

/// Runs a whole training in the shared `runs/` prefix.
pub async fn run(
    storage: &Storage,
    cfg: &TrainConfig,
    progress: &Progress,
) -> Result<Outcome, TrainError> {
    run_in(storage, cfg, &RunTarget::default(), progress).await
}

/// Fetches the champion's weights from a full URL: a key of `storage` when it points there,
/// else the object of another store opened with the same credentials.
pub(super) async fn fetch_url(storage: &Storage, url: &str) -> Result<Vec<u8>, StorageError> {
    if let Some(key) = storage.key_of(url) {
        return Ok(storage.get(key).await?.to_vec());
    }
    match url.rsplit_once('/') {
        Some((dir, file)) => Ok(Storage::open(dir)?.get(file).await?.to_vec()),
        None => Ok(storage.get(url).await?.to_vec()),
    }
}

/// The decoded-image cache the run's samples live in (memory up to the budget, then disk).
pub(super) fn crop_cache(cfg: &TrainConfig) -> Arc<CropCache> {
    let budget_mb = cfg.cache_mb.unwrap_or_else(crate::cache::default_budget_mb);
    let cache_dir = cfg.cache_dir.clone().unwrap_or_else(std::env::temp_dir);
    Arc::new(CropCache::new(budget_mb << 20, &cache_dir))
}

/// Loads the dataset as the run is configured (also used to re-check a completed run). Only
/// rank 0 (`writes`) writes what it learned about faces back to the store.
pub(super) async fn load_dataset(
    storage: &Storage,
    cfg: &TrainConfig,
    listing: Listing,
    cache: &Arc<CropCache>,
    progress: &Progress,
    writes: bool,
) -> Result<Dataset, TrainError> {
    let total = (listing.train.len() + listing.test.len()) as u64;
    let pipeline = pipeline::PipelineId::of(&cfg.detector);
    let faces = FaceIndex::read(storage, &pipeline, &cfg.dataset).await;
    let faces = Arc::new(if writes { faces } else { faces.read_only() });
    progress.start_loading(total);
    let started = std::time::Instant::now();
    let options = LoadOptions {
        cache: cache.clone(),
        pre: Preprocessor::new(cfg.hyper.image_size),
        detector: cfg.detector.clone(),
        faces: faces.clone(),
        val_fraction: cfg.hyper.val_fraction,
        seed: cfg.hyper.seed,
        concurrency: cfg.concurrency,
    };
    let data = dataset::load(storage, &cfg.dataset, listing, options, || {
        progress.loaded_one()
    })
    .await?;
    progress.finish_loading();
    let (reused, detected) = faces.counts();
    tracing::info!(
        reused,
        detected,
        load_seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
        detector = %pipeline.detector_sha256,
        "dataset through the input pipeline (faces reused: found by an earlier run in an unchanged object)"
    );
    Ok(data)
}

/// The champion to re-score: its weights and the image size it was trained at.
struct Champion {
    run_id: String,
    weights: Vec<u8>,
    image_size: u32,
}

/// The image size the champion was trained at, from its metrics.json beside its weights. A
/// champion without a readable one (runs from before metrics.json, a hand-placed file) is
/// scored at this run's size, with a warning: a comparison at the wrong size is still better
/// than none, and refusing would block every later run of the model.
async fn champion_image_size(
    storage: &Storage,
    metrics_url_or_key: &str,
    fallback: u32,
) -> Result<u32, TrainError> {
    let read = match storage.key_of(metrics_url_or_key) {
        Some(key) => storage.get(key).await.map(|b| b.to_vec()),
        None if metrics_url_or_key.contains("://") => fetch_url(storage, metrics_url_or_key).await,
        None => storage.get(metrics_url_or_key).await.map(|b| b.to_vec()),
    };
    let why = match read {
        Ok(bytes) => match RunMetrics::from_json(&bytes) {
            Ok(m) if (32..=1024).contains(&m.hyperparameters.image_size) => {
                return Ok(m.hyperparameters.image_size);
            }
            Ok(m) => format!(
                "its image size {} is out of range",
                m.hyperparameters.image_size
            ),
            Err(e) => e,
        },
        Err(e)
            if matches!(
                e,
                StorageError::NotFound { .. } | StorageError::Malformed { .. }
            ) =>
        {
            e.to_string()
        }
        Err(e) => return Err(e.into()),
    };
    tracing::warn!(
        metrics = metrics_url_or_key,
        image_size = fallback,
        "the champion's metrics.json cannot tell its image size ({why}); re-scoring it at this run's size"
    );
    Ok(fallback)
}

/// Fetches what re-scoring the champion needs; errors name the champion.
async fn fetch_champion(
    storage: &Storage,
    image_size: u32,
    target: &RunTarget,
    run_id: &str,
) -> Result<Champion, TrainError> {
    // A champion that is not there (or not weights) is bad input; a store that does not answer
    // is an outage the Job's retry may get past (exit 3, not 2).
    let cannot = |e: StorageError| match e {
        StorageError::NotFound { .. }
        | StorageError::Malformed { .. }
        | StorageError::InvalidUrl { .. }
        | StorageError::Open { .. } => {
            TrainError::Config(format!("champion {run_id} cannot be re-scored: {e}"))
        }
        e => TrainError::Storage(e),
    };
    let (weights, metrics) = match &target.champion_uri {
        Some(url) => (
            fetch_url(storage, url).await.map_err(cannot)?,
            layout::metrics_beside(url),
        ),
        None => (
            storage
                .get(&layout::weights_in(&target.runs_prefix, run_id))
                .await
                .map_err(cannot)?
                .to_vec(),
            layout::metrics_in(&target.runs_prefix, run_id),
        ),
    };
    let image_size = champion_image_size(storage, &metrics, image_size).await?;
    Ok(Champion {
        run_id: run_id.to_owned(),
        weights,
        image_size,
    })
}

/// What training and scoring produced, off the async runtime.
struct Scored {
    fit: fit::Fit,
    champion: Option<Evaluation>,
}

/// Trains, then re-scores the champion on `champion_test` (the test split fitted at the
/// champion's size) or, when the sizes agree, on the run's own test samples. The champion's
/// weights are loaded first so that unusable ones fail before the expensive part. Ranks other
/// than 0 train and return `None`.
#[allow(clippy::too_many_arguments)]
fn train_and_score(
    data: &Dataset,
    cfg: &TrainConfig,
    compute: fit::Compute,
    pretrained: Option<&[u8]>,
    champion: Option<(&Champion, Option<&[Sample]>)>,
    progress: &Progress,
    checkpoints: Option<&Checkpoints>,
    rank: fit::Rank<'_>,
) -> Result<Option<Scored>, TrainError> {
    let device: Device = compute.device;
    let champion_net = champion
        .map(|(c, _)| evaluate::load_champion(&c.weights, device))
        .transpose()?;
    let Some(fit) = fit::fit(
        data,
        &cfg.hyper,
        compute,
        pretrained,
        progress,
        checkpoints,
        rank,
    )?
    else {
        return Ok(None);
    };
    let champion = match (champion_net, champion) {
        (Some(net), Some((c, refitted))) => {
            let samples = refitted.unwrap_or(&data.test);
            let e =
                evaluate::score_champion(&net, samples, c.image_size, cfg.hyper.label_smoothing)?;
            tracing::info!(
                champion = %c.run_id,
                image_size = c.image_size,
                champion_test_accuracy = e.accuracy,
                "re-scored the champion on the test split"
            );
            Some(e)
        }
        _ => None,
    };
    Ok(Some(Scored { fit, champion }))
}

/// What one rank's run produced.
#[derive(Debug)]
pub enum RankOutcome {
    /// Rank 0, or the single process: the run's result.
    Leader(Box<Outcome>),
    /// Another rank of a data-parallel run: its share of training is done; rank 0 evaluates
    /// and writes the artifacts.
    Follower,
}

/// Runs a whole training in one process.
pub async fn run_in(
    storage: &Storage,
    cfg: &TrainConfig,
    target: &RunTarget,
    progress: &Progress,
) -> Result<Outcome, TrainError> {
    match run_rank(
        storage,
        cfg,
        target,
        progress,
        &World::single(),
        &StopSignal::new(),
    )
    .await?
    {
        RankOutcome::Leader(outcome) => Ok(*outcome),
        RankOutcome::Follower => Err(TrainError::Worker(
            "a world of one has no rank but 0".into(),
        )),
    }
}

/// Runs this rank's part of a training: the function behind `face2simpson-trainer train`.
/// Every rank checks the configuration, loads the dataset and trains on its shard; rank 0
/// alone reads and writes checkpoints, evaluates, scores the champion and writes the
/// artifacts. `stop` is answered between training steps with a checkpoint and
/// [`TrainError::Interrupted`].
pub async fn run_rank(
    storage: &Storage,
    cfg: &TrainConfig,
    target: &RunTarget,
    progress: &Progress,
    world: &World,
    stop: &StopSignal,
) -> Result<RankOutcome, TrainError> {
    config::validate(cfg)?;
    world.validate().map_err(TrainError::Config)?;
    if world.is_distributed() {
        world.backend_for(cfg.device).map_err(TrainError::Config)?;
    }
    layout::validate_runs_prefix(&target.runs_prefix).map_err(TrainError::Config)?;
    if target.champion_uri.is_some() && cfg.champion.is_none() {
        return Err(TrainError::Config(
            "--champion-uri needs --champion (the run id it belongs to)".into(),
        ));
    }
    let leader = world.is_leader();
    let started_at = Utc::now();
    let pretrained = match &cfg.pretrained {
        Some(loc) => Some(fetch_pretrained(storage, loc).await?),
        None => None,
    };
    let pretrained_sha256 = pretrained.as_deref().map(sha256);
    let asked = completed::Asked {
        precision: cfg.precision,
        pretrained_sha256: pretrained_sha256.as_deref(),
        workers: world.workers as u32,
    };
    if let Some(metrics) = completed::verify(storage, cfg, target, progress, &asked, leader).await?
    {
        // A Job retried after it already finished: the run is complete, keep its result. With
        // --promote the gate is applied again, so a crash between metrics.json and
        // champion.json cannot lose a promotion.
        tracing::info!(run_id = %cfg.run_id, "run already complete; not training again");
        if !leader {
            return Ok(RankOutcome::Follower);
        }
        let decision = if cfg.promote {
            Some(promote::promote(storage, &cfg.policy, &metrics).await?)
        } else {
            None
        };
        return Ok(RankOutcome::Leader(Box::new(Outcome {
            metrics,
            decision,
            already_complete: true,
        })));
    }

    // The ranks meet before the expensive part: a rank that never comes fails the run within
    // the timeout instead of after the dataset is loaded.
    let dist = if world.is_distributed() {
        progress.stage("meeting the other ranks");
        let (world, device) = (world.clone(), cfg.device);
        let dist = tokio::task::spawn_blocking(move || Dist::connect(&world, device))
            .await
            .map_err(|e| TrainError::Worker(e.to_string()))?;
        Some(dist.map_err(|e| match e {
            DistError::Config(m) => TrainError::Config(m),
            DistError::Collective(e) => TrainError::Distributed(e),
        })?)
    } else {
        None
    };

    // Everything that can fail cheaply is checked before the expensive part.
    let champion_id = match (&cfg.champion, cfg.promote && leader) {
        (Some(c), _) if leader => Some(c.clone()),
        (None, true) => storage.get_champion().await?.map(|c| c.run_id),
        _ => None,
    };
    let champion = match &champion_id {
        Some(c) => Some(fetch_champion(storage, cfg.hyper.image_size, target, c).await?),
        None => None,
    };

    progress.stage("listing dataset");
    let listing = dataset::list(storage, &cfg.dataset).await?;
    let listing_fingerprint = listing.fingerprint.clone();
    let cache = crop_cache(cfg);
    let data = load_dataset(storage, cfg, listing, &cache, progress, leader).await?;
    tracing::info!(
        train = data.train.len(),
        val = data.val.len(),
        test = data.test.len(),
        skipped = data.skipped.len(),
        duplicates_dropped = data.duplicates_dropped,
        faces_found = ?data.faces_found(),
        fingerprint = %data.fingerprint,
        "dataset loaded"
    );
    // The run's samples are fitted to its own size; a champion trained at another size gets
    // the same test images (checked by content) fitted to its size.
    let champion_test = match &champion {
        Some(c) if c.image_size != cfg.hyper.image_size => {
            progress.stage("fitting the test split at the champion's size");
            Some(
                dataset::refit_test(
                    storage,
                    &cfg.dataset,
                    &data.test,
                    &data.test_fingerprint,
                    Preprocessor::new(c.image_size),
                    &cache,
                    cfg.concurrency,
                )
                .await?,
            )
        }
        _ => None,
    };

    let usage = cache.usage();
    tracing::info!(
        budget_mb = cfg.cache_mb.unwrap_or_else(crate::cache::default_budget_mb),
        in_memory_mb = usage.memory_bytes >> 20,
        on_disk_mb = usage.disk_bytes >> 20,
        "decoded-image cache"
    );

    let compute = fit::Compute {
        device: cfg.device,
        kind: cfg
            .precision
            .resolve(cfg.device)
            .map_err(TrainError::Config)?,
    };
    // Rank 0 alone reads and writes checkpoints; the others get its state by broadcast.
    let checkpoints = leader.then(|| {
        Checkpoints::new(
            storage.clone(),
            &format!(
                "{}/{}",
                target.runs_prefix.trim_end_matches('/'),
                cfg.run_id
            ),
            Guard {
                dataset_fingerprint: data.fingerprint.clone(),
                hyperparameters: cfg.hyper.clone(),
                precision: crate::torch::kind_name(compute.kind).to_owned(),
                pipeline: Some(pipeline::PipelineId::of(&cfg.detector)),
                pretrained_sha256: pretrained_sha256.clone(),
                workers: world.workers as u32,
            },
            tokio::runtime::Handle::current(),
        )
    });
    let (scored, data, champion) = {
        let cfg = cfg.clone();
        let progress = progress.clone();
        let checkpoints = checkpoints.clone();
        let stop = stop.clone();
        // On the process's one libtorch thread (see `torch::thread`), not the blocking pool.
        crate::torch::thread::spawn(move || {
            let rank = fit::Rank {
                dist: dist.as_ref(),
                stop: &stop,
            };
            let result = train_and_score(
                &data,
                &cfg,
                compute,
                pretrained.as_deref(),
                champion.as_ref().map(|c| (c, champion_test.as_deref())),
                &progress,
                checkpoints.as_ref(),
                rank,
            );
            (result, data, champion)
        })
        .await
        .map_err(|e| TrainError::Worker(e.to_string()))?
    };
    let Some(Scored {
        fit,
        champion: champion_test,
    }) = scored?
    else {
        tracing::info!(
            rank = world.rank,
            "this rank's training is done; rank 0 writes the artifacts"
        );
        return Ok(RankOutcome::Follower);
    };

    let weights_key = layout::weights_in(&target.runs_prefix, &cfg.run_id);
    let weights_sha256 = sha256(&fit.weights);
    storage.put(&weights_key, fit.weights).await?;
    // The ONNX export is what gets served; it is written before metrics.json, whose presence
    // says every artifact of the run is there.
    let onnx_key = layout::onnx_in(&target.runs_prefix, &cfg.run_id);
    let onnx_sha256 = sha256(&fit.onnx);
    storage.put(&onnx_key, fit.onnx).await?;
    let finished_at = Utc::now();
    let per_class_accuracy = CLASSES
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let row = &fit.test.confusion[i];
            let n: u64 = row.iter().sum();
            (
                c.to_string(),
                if n == 0 {
                    0.0
                } else {
                    row[i] as f64 / n as f64
                },
            )
        })
        .collect::<BTreeMap<_, _>>();
    let classes: Vec<String> = CLASSES.iter().map(|c| c.to_string()).collect();
    let (per_class, macro_f1) = artifacts::class_scores(&classes, &fit.test.confusion);
    let test_predictions = TestPredictions {
        test_fingerprint: data.test_fingerprint.clone(),
        keys: data.test.iter().map(|s| s.key.clone()).collect(),
        labels: data.test.iter().map(|s| s.label as u8).collect(),
        challenger: fit.test.predictions.clone(),
        champion: champion_test.as_ref().map(|e| e.predictions.clone()),
    };
    let metrics = RunMetrics {
        schema_version: METRICS_SCHEMA_VERSION,
        run_id: cfg.run_id.clone(),
        owner: target.owner.clone(),
        trainer_version: crate::build_info::version(),
        trainer_build: Some(crate::build_info::build()),
        test_accuracy: fit.test.accuracy,
        test_loss: Some(fit.test.loss),
        champion_run_id: champion_id.clone(),
        champion_test_accuracy: champion_test.as_ref().map(|e| e.accuracy),
        champion_test_loss: champion_test.as_ref().map(|e| e.loss),
        champion_image_size: champion.as_ref().map(|c| c.image_size),
        classes,
        per_class_accuracy,
        per_class: Some(per_class),
        macro_f1: Some(macro_f1),
        confusion_matrix: fit.test.confusion.clone(),
        counts: SplitCounts {
            train: data.train.len() as u64,
            val: data.val.len() as u64,
            test: data.test.len() as u64,
            duplicates_dropped: data.duplicates_dropped as u64,
        },
        skipped_files: data.skipped.clone(),
        epochs_run: fit.history.len() as u32,
        best_epoch: fit.best_epoch,
        history: fit.history,
        hyperparameters: cfg.hyper.clone(),
        dataset: cfg.dataset.clone(),
        dataset_fingerprint: data.fingerprint.clone(),
        test_fingerprint: Some(data.test_fingerprint.clone()),
        listing_fingerprint: Some(listing_fingerprint),
        test_predictions: Some(test_predictions),
        weights_key,
        weights_sha256: Some(weights_sha256),
        onnx_key: Some(onnx_key),
        onnx_sha256: Some(onnx_sha256),
        pretrained: cfg.pretrained.clone(),
        pretrained_sha256,
        started_at,
        finished_at,
        device: crate::torch::device_name(cfg.device),
        precision: Some(crate::torch::kind_name(compute.kind).to_owned()),
        pipeline: Some(pipeline_record(cfg, &data)),
        distributed: fit.distributed,
    };
    // Written last: its presence tells the operator the run is complete.
    storage
        .put(&metrics_key_of(cfg, target), metrics.to_json())
        .await?;
    if let Some(c) = &checkpoints {
        c.clear().await;
    }

    let decision = if cfg.promote {
        Some(promote::promote(storage, &cfg.policy, &metrics).await?)
    } else {
        None
    };
    Ok(RankOutcome::Leader(Box::new(Outcome {
        metrics,
        decision,
        already_complete: false,
    })))
}

/// The pipeline the run's inputs went through, as metrics.json records it.
fn pipeline_record(cfg: &TrainConfig, data: &Dataset) -> PipelineRecord {
    let id = pipeline::PipelineId::of(&cfg.detector);
    PipelineRecord {
        version: id.version,
        detector_sha256: id.detector_sha256,
        crop_margin: id.crop_margin,
        faces_found: data.faces_found(),
    }
}

fn metrics_key_of(cfg: &TrainConfig, target: &RunTarget) -> String {
    layout::metrics_in(&target.runs_prefix, &cfg.run_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A champion that is not there is bad input (exit 2); a store that does not answer while
    /// fetching it is an outage (exit 3), not a reason to fail the Job for good.
    #[tokio::test]
    async fn a_missing_champion_is_bad_input_but_an_unreachable_store_is_an_outage() {
        let empty = Storage::open("memory:///").unwrap_or_else(|e| panic!("{e}"));
        let missing = fetch_champion(&empty, 96, &RunTarget::default(), "champ")
            .await
            .err();
        assert!(
            matches!(missing, Some(TrainError::Config(_))),
            "{missing:?}"
        );
        // Nothing listens on port 9 of loopback.
        let vars = [
            ("AWS_ENDPOINT", "http://127.0.0.1:9"),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "k"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_REGION", "us-east-1"),
        ];
        let down =
            Storage::open_with_env("s3://bucket/root", vars).unwrap_or_else(|e| panic!("{e}"));
        let outage = fetch_champion(&down, 96, &RunTarget::default(), "champ")
            .await
            .err();
        assert!(
            matches!(
                outage,
                Some(TrainError::Storage(StorageError::Backend { .. }))
            ),
            "{outage:?}"
        );
    }
}
