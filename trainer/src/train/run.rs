//! Orchestration: fetch what the run needs, load the data, fit, write the artifacts (metrics.json
//! last), apply the gate.

use std::collections::BTreeMap;
use std::sync::Arc;

use artifacts::metrics::METRICS_SCHEMA_VERSION;
use artifacts::{ChampionRecord, RunMetrics, SplitCounts, Storage, StorageError, layout};
use chrono::Utc;
use model::{CLASSES, Preprocessor};
use sha2::{Digest, Sha256};

use super::checkpoint::{Checkpoints, Guard};
use super::{Outcome, RunTarget, TrainConfig, TrainError, config, fit};
use crate::cache::CropCache;
use crate::dataset::{self, LoadOptions};
use crate::progress::Progress;

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
async fn fetch_url(storage: &Storage, url: &str) -> Result<Vec<u8>, StorageError> {
    if let Some(key) = storage.key_of(url) {
        return Ok(storage.get(key).await?.to_vec());
    }
    match url.rsplit_once('/') {
        Some((dir, file)) => Ok(Storage::open(dir)?.get(file).await?.to_vec()),
        None => Ok(storage.get(url).await?.to_vec()),
    }
}

/// Runs a whole training: the function behind `face2simpson-trainer train`.
pub async fn run_in(
    storage: &Storage,
    cfg: &TrainConfig,
    target: &RunTarget,
    progress: &Progress,
) -> Result<Outcome, TrainError> {
    config::validate(cfg)?;
    layout::validate_runs_prefix(&target.runs_prefix).map_err(TrainError::Config)?;
    if target.champion_uri.is_some() && cfg.champion.is_none() {
        return Err(TrainError::Config(
            "--champion-uri needs --champion (the run id it belongs to)".into(),
        ));
    }
    let started_at = Utc::now();
    let metrics_key = layout::metrics_in(&target.runs_prefix, &cfg.run_id);
    if storage.head(&metrics_key).await?.is_some() {
        // A Job retried after it already finished: the run is complete, keep its result.
        let metrics = storage
            .get_metrics_in(&target.runs_prefix, &cfg.run_id)
            .await?;
        tracing::info!(run_id = %cfg.run_id, "run already complete; not training again");
        return Ok(Outcome {
            metrics,
            decision: None,
            already_complete: true,
        });
    }

    // Everything that can fail cheaply is checked before the expensive part.
    let champion = match (&cfg.champion, cfg.promote) {
        (Some(c), _) => Some(c.clone()),
        (None, true) => storage.get_champion().await?.map(|c| c.run_id),
        (None, false) => None,
    };
    let champion_weights = match &champion {
        Some(c) => {
            let fetched = match &target.champion_uri {
                Some(url) => fetch_url(storage, url).await,
                None => storage
                    .get(&layout::weights_in(&target.runs_prefix, c))
                    .await
                    .map(|b| b.to_vec()),
            };
            Some(fetched.map_err(|e| {
                TrainError::Config(format!("champion {c} cannot be re-scored: {e}"))
            })?)
        }
        None => None,
    };
    let pretrained = match &cfg.pretrained {
        Some(loc) => Some(fetch_pretrained(storage, loc).await?),
        None => None,
    };

    let pre = Preprocessor::new(cfg.hyper.image_size);
    progress.stage("listing dataset");
    let listing = dataset::list(storage, &cfg.dataset).await?;
    let total = (listing.train.len() + listing.test.len()) as u64;
    progress.start_loading(total);
    let budget_mb = cfg.cache_mb.unwrap_or_else(crate::cache::default_budget_mb);
    let cache_dir = cfg.cache_dir.clone().unwrap_or_else(std::env::temp_dir);
    let cache = Arc::new(CropCache::new(budget_mb << 20, &cache_dir));
    let options = LoadOptions {
        cache: cache.clone(),
        pre,
        val_fraction: cfg.hyper.val_fraction,
        seed: cfg.hyper.seed,
        concurrency: cfg.concurrency,
    };
    let data = dataset::load(storage, &cfg.dataset, listing, options, || {
        progress.loaded_one()
    })
    .await?;
    progress.finish_loading();
    tracing::info!(
        train = data.train.len(),
        val = data.val.len(),
        test = data.test.len(),
        skipped = data.skipped.len(),
        fingerprint = %data.fingerprint,
        "dataset loaded"
    );
    let usage = cache.usage();
    tracing::info!(
        budget_mb,
        in_memory_mb = usage.memory_bytes >> 20,
        on_disk_mb = usage.disk_bytes >> 20,
        "decoded-image cache"
    );

    let hyper = cfg.hyper.clone();
    let device = cfg.device;
    let compute = cfg.precision.resolve(device).map_err(TrainError::Config)?;
    let checkpoints = Checkpoints::new(
        storage.clone(),
        &format!(
            "{}/{}",
            target.runs_prefix.trim_end_matches('/'),
            cfg.run_id
        ),
        Guard {
            dataset_fingerprint: data.fingerprint.clone(),
            hyperparameters: hyper.clone(),
            precision: crate::torch::kind_name(compute).to_owned(),
        },
        tokio::runtime::Handle::current(),
    );
    let progress_clone = progress.clone();
    let checkpoints_clone = checkpoints.clone();
    let (fit, data) = tokio::task::spawn_blocking(move || {
        let result = fit::fit(
            &data,
            &hyper,
            fit::Compute {
                device,
                kind: compute,
            },
            pretrained.as_deref(),
            champion_weights.as_deref(),
            &progress_clone,
            Some(&checkpoints_clone),
        );
        (result, data)
    })
    .await
    .map_err(|e| TrainError::Worker(e.to_string()))?;
    let fit = fit?;

    let weights_key = layout::weights_in(&target.runs_prefix, &cfg.run_id);
    storage.put(&weights_key, fit.weights).await?;
    // The ONNX export is what gets served; it is written before metrics.json, whose presence
    // says every artifact of the run is there.
    let onnx_key = layout::onnx_in(&target.runs_prefix, &cfg.run_id);
    let onnx_sha256 = format!("sha256:{:x}", Sha256::digest(&fit.onnx));
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
    let metrics = RunMetrics {
        schema_version: METRICS_SCHEMA_VERSION,
        run_id: cfg.run_id.clone(),
        owner: target.owner.clone(),
        trainer_version: env!("CARGO_PKG_VERSION").to_owned(),
        test_accuracy: fit.test.accuracy,
        champion_run_id: champion.clone(),
        champion_test_accuracy: fit.champion_test.map(|e| e.accuracy),
        classes: CLASSES.iter().map(|c| c.to_string()).collect(),
        per_class_accuracy,
        confusion_matrix: fit.test.confusion.clone(),
        counts: SplitCounts {
            train: data.train.len() as u64,
            val: data.val.len() as u64,
            test: data.test.len() as u64,
        },
        skipped_files: data.skipped.clone(),
        epochs_run: fit.history.len() as u32,
        best_epoch: fit.best_epoch,
        history: fit.history,
        hyperparameters: cfg.hyper.clone(),
        dataset: cfg.dataset.clone(),
        dataset_fingerprint: data.fingerprint.clone(),
        weights_key: weights_key.clone(),
        onnx_key: Some(onnx_key),
        onnx_sha256: Some(onnx_sha256),
        pretrained: cfg.pretrained.clone(),
        started_at,
        finished_at,
        device: crate::torch::device_name(device),
        precision: Some(crate::torch::kind_name(compute).to_owned()),
    };
    // Written last: its presence tells the operator the run is complete.
    storage.put(&metrics_key, metrics.to_json()).await?;
    checkpoints.clear().await;

    let decision = if cfg.promote {
        let decision = artifacts::decide(&cfg.policy, &metrics);
        if decision.promotes() {
            let record = ChampionRecord {
                run_id: cfg.run_id.clone(),
                test_accuracy: metrics.test_accuracy,
                weights_key,
                promoted_at: Utc::now(),
            };
            storage.put_json(layout::CHAMPION, &record).await?;
        }
        Some(decision)
    } else {
        None
    };
    Ok(Outcome {
        metrics,
        decision,
        already_complete: false,
    })
}
