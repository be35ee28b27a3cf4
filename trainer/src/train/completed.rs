//! A run id that already completed: the same run retried (a Job restarted after metrics.json
//! was written) keeps its result, anything else under the same id is refused.

use artifacts::{Hyperparameters, RunMetrics, Storage, layout};

use super::run::{crop_cache, load_dataset};
use super::{RunTarget, TrainConfig, TrainError};
use crate::dataset;
use crate::progress::Progress;
use crate::torch::Precision;

/// What this run asks for beyond its hyperparameters, compared with what the completed run
/// recorded.
#[derive(Debug)]
pub(super) struct Asked<'a> {
    pub precision: Precision,
    /// `sha256:` of the pretrained backbone this run was given, `None` from scratch.
    pub pretrained_sha256: Option<&'a str>,
    pub workers: u32,
}

/// The stored metrics when `cfg.run_id` already completed with the same hyperparameters and
/// dataset, `None` when it never completed, a [`TrainError::Config`] when it completed with
/// something else: its metrics.json would otherwise describe a run that was not asked for.
///
/// Hyperparameters, the precision (unless `auto`, which accepts what it resolved to then), the
/// pretrained backbone (by content), the number of workers and the dataset prefix are compared
/// first (free). The data is compared by
/// the listing fingerprint (one listing, no object fetched); only when that differs — data
/// rewritten, or a run older than listing fingerprints — is the dataset loaded again to
/// compare the content fingerprint, so a re-upload of identical bytes is still the same run.
pub(super) async fn verify(
    storage: &Storage,
    cfg: &TrainConfig,
    target: &RunTarget,
    progress: &Progress,
    asked: &Asked<'_>,
    leader: bool,
) -> Result<Option<RunMetrics>, TrainError> {
    let key = layout::metrics_in(&target.runs_prefix, &cfg.run_id);
    if storage.head(&key).await?.is_none() {
        return Ok(None);
    }
    let stored = storage
        .get_metrics_in(&target.runs_prefix, &cfg.run_id)
        .await?;
    let refuse = |what: String| {
        TrainError::Config(format!(
            "run {} already completed with {what}; give this training a new --run-id",
            cfg.run_id
        ))
    };
    let mut differences = hyperparameter_differences(&stored.hyperparameters, &cfg.hyper);
    differences.extend(setup_differences(&stored, asked));
    if !differences.is_empty() {
        return Err(refuse(format!(
            "other hyperparameters: {}",
            differences.join(", ")
        )));
    }
    if stored.dataset.trim_matches('/') != cfg.dataset.trim_matches('/') {
        return Err(refuse(format!(
            "dataset {} (asked for {})",
            stored.dataset, cfg.dataset
        )));
    }
    progress.stage("checking the completed run's dataset");
    let listing = dataset::list(storage, &cfg.dataset).await?;
    if stored.listing_fingerprint.as_deref() == Some(listing.fingerprint.as_str()) {
        return Ok(Some(stored));
    }
    tracing::info!(
        run_id = %cfg.run_id,
        "the dataset's listing differs from the completed run's; comparing its content"
    );
    let data = load_dataset(storage, cfg, listing, &crop_cache(cfg), progress, leader).await?;
    if data.fingerprint != stored.dataset_fingerprint {
        return Err(refuse(format!(
            "another dataset content: fingerprint {}, now {}",
            stored.dataset_fingerprint, data.fingerprint
        )));
    }
    Ok(Some(stored))
}

/// `name stored (now asked)` for what else shaped the training: an explicit `--precision`
/// other than the one the run computed in, another backbone, another number of workers.
fn setup_differences(stored: &RunMetrics, asked: &Asked<'_>) -> Vec<String> {
    let mut out = Vec::new();
    let explicit = match asked.precision {
        Precision::Auto => None,
        Precision::Fp32 => Some("fp32"),
        Precision::Bf16 => Some("bf16"),
        Precision::Fp16 => Some("fp16"),
    };
    // Runs from before mixed precision computed in fp32.
    let was = stored.precision.as_deref().unwrap_or("fp32");
    if let Some(now) = explicit.filter(|now| *now != was) {
        out.push(format!("precision {was} (now {now})"));
    }
    let name = |sha: Option<&str>| sha.map_or_else(|| "none".to_owned(), str::to_owned);
    if stored.pretrained_sha256.as_deref() != asked.pretrained_sha256 {
        out.push(format!(
            "pretrained backbone {} (now {})",
            name(stored.pretrained_sha256.as_deref()),
            name(asked.pretrained_sha256)
        ));
    }
    let workers = stored.distributed.as_ref().map_or(1, |d| d.workers);
    if workers != asked.workers {
        out.push(format!("workers {workers} (now {})", asked.workers));
    }
    out
}

/// `name stored (now asked)` for every hyperparameter that differs.
fn hyperparameter_differences(stored: &Hyperparameters, asked: &Hyperparameters) -> Vec<String> {
    // Destructured without `..`: a new hyperparameter cannot be forgotten here.
    let Hyperparameters {
        image_size,
        epochs,
        batch_size,
        learning_rate,
        label_smoothing,
        dropout,
        patience,
        val_fraction,
        seed,
    } = stored;
    let mut out = Vec::new();
    let mut check = |name: &str, was: String, now: String| {
        if was != now {
            out.push(format!("{name} {was} (now {now})"));
        }
    };
    check(
        "image_size",
        image_size.to_string(),
        asked.image_size.to_string(),
    );
    check("epochs", epochs.to_string(), asked.epochs.to_string());
    check(
        "batch_size",
        batch_size.to_string(),
        asked.batch_size.to_string(),
    );
    check(
        "learning_rate",
        learning_rate.to_string(),
        asked.learning_rate.to_string(),
    );
    check(
        "label_smoothing",
        label_smoothing.to_string(),
        asked.label_smoothing.to_string(),
    );
    check("dropout", dropout.to_string(), asked.dropout.to_string());
    check("patience", patience.to_string(), asked.patience.to_string());
    check(
        "val_fraction",
        val_fraction.to_string(),
        asked.val_fraction.to_string(),
    );
    check("seed", seed.to_string(), asked.seed.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hyper() -> Hyperparameters {
        Hyperparameters {
            image_size: 96,
            epochs: 6,
            batch_size: 32,
            learning_rate: 1e-3,
            label_smoothing: 0.1,
            dropout: 0.2,
            patience: 3,
            val_fraction: 0.15,
            seed: 7,
        }
    }

    #[test]
    fn names_every_differing_hyperparameter() {
        assert!(hyperparameter_differences(&hyper(), &hyper()).is_empty());
        let mut other = hyper();
        other.learning_rate = 3e-4;
        other.seed = 8;
        assert_eq!(
            hyperparameter_differences(&hyper(), &other),
            ["learning_rate 0.001 (now 0.0003)", "seed 7 (now 8)"]
        );
    }

    #[test]
    fn names_another_precision_backbone_or_world() {
        let json = serde_json::json!({
            "schema_version": 1, "run_id": "r", "trainer_version": "t",
            "test_accuracy": 0.9, "champion_run_id": null, "champion_test_accuracy": null,
            "classes": ["homer"], "per_class_accuracy": {}, "confusion_matrix": [[1]],
            "counts": {"train": 1, "val": 0, "test": 1}, "skipped_files": [],
            "epochs_run": 1, "best_epoch": 1, "history": [],
            "hyperparameters": hyper(), "dataset": "d", "dataset_fingerprint": "f",
            "weights_key": "w", "pretrained": "p", "pretrained_sha256": "sha256:aa",
            "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:00Z",
            "device": "cpu", "precision": "bf16"
        });
        let stored: RunMetrics = serde_json::from_value(json).unwrap();
        let asked = |precision, sha, workers| Asked {
            precision,
            pretrained_sha256: sha,
            workers,
        };
        let same = asked(Precision::Bf16, Some("sha256:aa"), 1);
        assert!(setup_differences(&stored, &same).is_empty());
        // `auto` accepts what it resolved to on the machine the run had.
        let auto = asked(Precision::Auto, Some("sha256:aa"), 1);
        assert!(setup_differences(&stored, &auto).is_empty());
        assert_eq!(
            setup_differences(&stored, &asked(Precision::Fp32, None, 2)),
            [
                "precision bf16 (now fp32)",
                "pretrained backbone sha256:aa (now none)",
                "workers 1 (now 2)"
            ]
        );
    }
}
