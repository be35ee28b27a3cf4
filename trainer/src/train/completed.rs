//! A run id that already completed: the same run retried (a Job restarted after metrics.json
//! was written) keeps its result, anything else under the same id is refused.

use artifacts::{Hyperparameters, RunMetrics, Storage, layout};

use super::run::{crop_cache, load_dataset};
use super::{RunTarget, TrainConfig, TrainError};
use crate::dataset;
use crate::progress::Progress;

/// The stored metrics when `cfg.run_id` already completed with the same hyperparameters and
/// dataset, `None` when it never completed, a [`TrainError::Config`] when it completed with
/// something else: its metrics.json would otherwise describe a run that was not asked for.
///
/// Hyperparameters and the dataset prefix are compared first (free). The data is compared by
/// the listing fingerprint (one listing, no object fetched); only when that differs — data
/// rewritten, or a run older than listing fingerprints — is the dataset loaded again to
/// compare the content fingerprint, so a re-upload of identical bytes is still the same run.
pub(super) async fn verify(
    storage: &Storage,
    cfg: &TrainConfig,
    target: &RunTarget,
    progress: &Progress,
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
    let differences = hyperparameter_differences(&stored.hyperparameters, &cfg.hyper);
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
    let data = load_dataset(storage, cfg, listing, &crop_cache(cfg), progress).await?;
    if data.fingerprint != stored.dataset_fingerprint {
        return Err(refuse(format!(
            "another dataset content: fingerprint {}, now {}",
            stored.dataset_fingerprint, data.fingerprint
        )));
    }
    Ok(Some(stored))
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
}
