//! One training run, end to end: dataset → fine-tuning → evaluation → artifacts → gate.

use std::collections::BTreeMap;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use artifacts::metrics::METRICS_SCHEMA_VERSION;
use artifacts::{
    ChampionRecord, Decision, EpochRecord, Hyperparameters, PromotionPolicy, RunMetrics,
    SplitCounts, Storage, StorageError, layout,
};
use chrono::Utc;
use model::{CLASSES, Preprocessor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Reduction, Tensor};

use crate::dataset::{self, Dataset, DatasetError, LoadOptions, Sample};
use crate::progress::Progress;
use crate::torch::{Classifier, WeightsError};

/// Batches prepared ahead of the model step. Two keep the device fed while bounding memory.
const PREFETCH_BATCHES: usize = 2;
const EVAL_BATCH: usize = 64;
/// The pretrained backbone learns at a tenth of the head's rate (discriminative fine-tuning):
/// full-rate Adam on ImageNet features made validation accuracy swing by 20 points from epoch
/// to epoch on small datasets.
const BACKBONE_LR_FACTOR: f64 = 0.1;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("{what}: {source}")]
    Weights { what: String, source: WeightsError },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("training worker failed: {0}")]
    Worker(String),
    #[error("exporting the model to ONNX: {0}")]
    Export(#[from] model::onnx::ExportError),
}

/// Everything `face2simpson-trainer train` is told.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub run_id: String,
    pub dataset: String,
    pub champion: Option<String>,
    pub hyper: Hyperparameters,
    pub device: Device,
    /// Key in the store, a URL, a local path, or `None` to train from scratch.
    pub pretrained: Option<String>,
    pub promote: bool,
    pub policy: PromotionPolicy,
    pub concurrency: usize,
}

/// Where a run's artifacts go and whom it is for. The operator keys runs per model
/// (`runs/<namespace>/<name>`) and passes the champion's weights as a full URL; the defaults
/// are the shared `runs/` prefix of the cluster-free mode.
#[derive(Debug, Clone)]
pub struct RunTarget {
    /// Prefix the run's directory is created under.
    pub runs_prefix: String,
    /// `<namespace>/<name>` recorded in metrics.json.
    pub owner: Option<String>,
    /// Full URL of the champion's weights; by default `<runs_prefix>/<champion>/model.safetensors`.
    pub champion_uri: Option<String>,
}

impl Default for RunTarget {
    fn default() -> Self {
        Self {
            runs_prefix: layout::RUNS.to_owned(),
            owner: None,
            champion_uri: None,
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    pub metrics: RunMetrics,
    /// Set with `--promote`.
    pub decision: Option<Decision>,
    /// The run had already completed earlier; nothing was retrained.
    pub already_complete: bool,
}

fn validate(cfg: &TrainConfig) -> Result<(), TrainError> {
    let h = &cfg.hyper;
    let bad = |m: String| Err(TrainError::Config(m));
    layout::validate_run_id(&cfg.run_id).map_err(TrainError::Config)?;
    if let Some(c) = &cfg.champion {
        layout::validate_run_id(c).map_err(|e| TrainError::Config(format!("--champion: {e}")))?;
        if *c == cfg.run_id {
            return bad("--champion must name a different run than --run-id".into());
        }
    }
    if !(32..=1024).contains(&h.image_size) {
        return bad(format!(
            "--image-size {} is outside 32..=1024",
            h.image_size
        ));
    }
    if h.epochs == 0 {
        return bad("--epochs must be at least 1".into());
    }
    if h.batch_size < 2 {
        return bad("--batch-size must be at least 2 (batch norm needs two samples)".into());
    }
    if !(h.learning_rate > 0.0 && h.learning_rate.is_finite()) {
        return bad(format!("--lr {} must be positive", h.learning_rate));
    }
    for (name, v) in [
        ("--label-smoothing", h.label_smoothing),
        ("--dropout", h.dropout),
    ] {
        if !(0.0..1.0).contains(&v) {
            return bad(format!("{name} {v} must be in [0, 1)"));
        }
    }
    if !(0.0..0.9).contains(&h.val_fraction) {
        return bad(format!(
            "--val-fraction {} must be in [0, 0.9)",
            h.val_fraction
        ));
    }
    if h.patience == 0 {
        return bad("--patience must be at least 1".into());
    }
    Ok(())
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
    validate(cfg)?;
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
    let options = LoadOptions {
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

    let hyper = cfg.hyper.clone();
    let device = cfg.device;
    let progress_clone = progress.clone();
    let (fit, data) = tokio::task::spawn_blocking(move || {
        let result = fit(
            &data,
            &hyper,
            device,
            pretrained.as_deref(),
            champion_weights.as_deref(),
            &progress_clone,
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
    };
    // Written last: its presence tells the operator the run is complete.
    storage.put(&metrics_key, metrics.to_json()).await?;

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

/// Accuracy, loss and confusion matrix over a split.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    /// `confusion[true][predicted]`
    pub confusion: Vec<Vec<u64>>,
}

struct Fit {
    weights: Vec<u8>,
    onnx: Vec<u8>,
    history: Vec<EpochRecord>,
    best_epoch: u32,
    test: Evaluation,
    champion_test: Option<Evaluation>,
}

fn weights_err(what: &str) -> impl FnOnce(WeightsError) -> TrainError + '_ {
    move |source| TrainError::Weights {
        what: what.to_owned(),
        source,
    }
}

fn fit(
    data: &Dataset,
    hyper: &Hyperparameters,
    device: Device,
    pretrained: Option<&[u8]>,
    champion: Option<&[u8]>,
    progress: &Progress,
) -> Result<Fit, TrainError> {
    tch::manual_seed(hyper.seed as i64);
    let pre = Preprocessor::new(hyper.image_size);
    let mut net = Classifier::new(device, hyper.dropout);
    if let Some(bytes) = pretrained {
        let n = net
            .load_backbone(bytes)
            .map_err(weights_err("loading the pretrained backbone"))?;
        tracing::info!(tensors = n, "loaded ImageNet backbone");
    }
    let champion_net = match champion {
        Some(bytes) => {
            let mut c = Classifier::new(device, hyper.dropout);
            c.load_weights(bytes)
                .map_err(weights_err("loading the champion's weights"))?;
            Some(c)
        }
        None => None,
    };

    let history = train_epochs(&mut net, data, hyper, &pre, progress)?;
    let best_epoch = history.best_epoch;
    let test = evaluate(&net, &data.test, &pre, hyper.label_smoothing)?;
    let champion_test = champion_net
        .map(|c| evaluate(&c, &data.test, &pre, hyper.label_smoothing))
        .transpose()?;
    tracing::info!(
        test_accuracy = test.accuracy,
        champion_test_accuracy = champion_test.as_ref().map(|e| e.accuracy),
        "evaluated on the test split"
    );
    let weights = net
        .to_safetensors()
        .map_err(weights_err("serialising the weights"))?;
    let onnx = model::onnx::export_safetensors(&weights, hyper.image_size)?;
    Ok(Fit {
        weights,
        onnx,
        history: history.records,
        best_epoch,
        test,
        champion_test,
    })
}

/// The weights of the epoch with the lowest validation loss so far.
struct Best {
    score: f64,
    epoch: u32,
    snapshot: Vec<(String, Tensor)>,
}

struct History {
    records: Vec<EpochRecord>,
    best_epoch: u32,
}

/// A seed per (run, epoch, image): augmentation does not depend on which thread runs it.
fn sample_seed(seed: u64, epoch: u32, index: usize) -> u64 {
    let mut z = seed ^ (u64::from(epoch) << 40) ^ index as u64;
    // splitmix64 finaliser
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Cosine annealing from `lr` to `lr / 100` over the planned epochs.
pub fn scheduled_lr(lr: f64, epoch_index: u32, epochs: u32) -> f64 {
    let min = lr / 100.0;
    let t = f64::from(epoch_index) / f64::from(epochs.max(1));
    min + 0.5 * (lr - min) * (1.0 + (std::f64::consts::PI * t).cos())
}

/// Batches of indices for one epoch; a trailing batch of one is dropped (batch norm cannot
/// train on it) and comes back reshuffled next epoch.
pub fn epoch_batches(n: usize, batch_size: usize, seed: u64, epoch: u32) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(sample_seed(
        seed,
        epoch,
        usize::MAX,
    )));
    order
        .chunks(batch_size)
        .filter(|c| c.len() >= 2)
        .map(<[usize]>::to_vec)
        .collect()
}

type Batch = (Vec<f32>, Vec<i64>);

/// Runs `step` on every batch of an epoch while the next batches are decoded and augmented
/// on other threads, so the model never waits for data it could have had.
pub fn for_each_batch<E>(
    samples: &[Sample],
    batches: &[Vec<usize>],
    make: impl Fn(usize, &Sample) -> Vec<f32> + Sync,
    mut step: impl FnMut(Batch) -> Result<(), E>,
) -> Result<(), E> {
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<Batch>(PREFETCH_BATCHES);
        let make = &make;
        scope.spawn(move || {
            for batch in batches {
                let parts: Vec<Vec<f32>> =
                    batch.par_iter().map(|&i| make(i, &samples[i])).collect();
                let labels = batch.iter().map(|&i| samples[i].label as i64).collect();
                if tx.send((parts.concat(), labels)).is_err() {
                    return; // the consumer stopped early (error)
                }
            }
        });
        for batch in rx {
            step(batch)?;
        }
        Ok(())
    })
}

/// One optimisation step: forward in training mode, label-smoothed cross-entropy, Adam.
/// Returns the batch's mean loss and the number of correct predictions.
pub fn train_step(
    net: &Classifier,
    opt: &mut nn::Optimizer,
    x: &Tensor,
    y: &Tensor,
    label_smoothing: f64,
) -> Result<(f64, i64), TrainError> {
    let logits = net.logits(x, true);
    let loss =
        logits.f_cross_entropy_loss(y, None::<Tensor>, Reduction::Mean, -100, label_smoothing)?;
    opt.backward_step(&loss);
    let hits = logits
        .argmax(-1, false)
        .eq_tensor(y)
        .sum(Kind::Int64)
        .int64_value(&[]);
    Ok((loss.double_value(&[]), hits))
}

/// Moves a prepared batch to the model's device as an NCHW tensor and its labels.
pub fn to_batch(net: &Classifier, xs: &[f32], labels: &[i64], size: u32) -> (Tensor, Tensor) {
    let s = i64::from(size);
    let x = Tensor::from_slice(xs)
        .view([labels.len() as i64, 3, s, s])
        .to_device(net.device());
    let y = Tensor::from_slice(labels).to_device(net.device());
    (x, y)
}

fn train_epochs(
    net: &mut Classifier,
    data: &Dataset,
    hyper: &Hyperparameters,
    pre: &Preprocessor,
    progress: &Progress,
) -> Result<History, TrainError> {
    let mut opt = nn::Adam::default().build(net.var_store(), hyper.learning_rate)?;
    let batch_size = hyper.batch_size as usize;
    let per_epoch = epoch_batches(data.train.len(), batch_size, hyper.seed, 0).len() as u64;
    progress.start_training(u64::from(hyper.epochs) * per_epoch);
    let mut records = Vec::new();
    let mut best: Option<Best> = None;
    let mut since_best = 0;
    for epoch in 1..=hyper.epochs {
        let t0 = Instant::now();
        let lr = scheduled_lr(hyper.learning_rate, epoch - 1, hyper.epochs);
        opt.set_lr_group(crate::torch::net::HEAD_GROUP, lr);
        opt.set_lr_group(crate::torch::net::BACKBONE_GROUP, lr * BACKBONE_LR_FACTOR);
        let batches = epoch_batches(data.train.len(), batch_size, hyper.seed, epoch);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0i64, 0i64);
        for_each_batch(
            &data.train,
            &batches,
            |i, s| pre.train(&s.image, sample_seed(hyper.seed, epoch, i)),
            |(xs, labels)| -> Result<(), TrainError> {
                let (x, y) = to_batch(net, &xs, &labels, hyper.image_size);
                let (loss, hits) = train_step(net, &mut opt, &x, &y, hyper.label_smoothing)?;
                let n = labels.len() as i64;
                loss_sum += loss * n as f64;
                correct += hits;
                seen += n;
                progress.batch_done(epoch, loss_sum / seen as f64);
                Ok(())
            },
        )?;
        let val = evaluate(net, &data.val, pre, hyper.label_smoothing)?;
        let record = EpochRecord {
            epoch,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            val_loss: val.loss,
            val_accuracy: val.accuracy,
            lr,
            seconds: t0.elapsed().as_secs_f64(),
        };
        progress.epoch_done(&record, hyper.epochs);
        records.push(record);

        // With no validation split, the last epoch counts as the best.
        let score = if data.val.is_empty() {
            -f64::from(epoch)
        } else {
            val.loss
        };
        if best.as_ref().is_none_or(|b| score < b.score - 1e-6) {
            let snapshot = net
                .var_store()
                .variables()
                .into_iter()
                .map(|(k, v)| (k, v.detach().copy()))
                .collect();
            best = Some(Best {
                score,
                epoch,
                snapshot,
            });
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= hyper.patience {
                tracing::info!(
                    epoch,
                    patience = hyper.patience,
                    "early stopping: validation loss stopped improving"
                );
                break;
            }
        }
    }
    let Some(Best {
        epoch: best_epoch,
        snapshot,
        ..
    }) = best
    else {
        return Err(TrainError::Config("no epoch ran".into()));
    };
    let vars = net.var_store().variables();
    tch::no_grad(|| {
        for (name, saved) in &snapshot {
            if let Some(v) = vars.get(name) {
                let mut v = v.shallow_clone();
                v.copy_(saved);
            }
        }
    });
    progress.finish_training();
    Ok(History {
        records,
        best_epoch,
    })
}

/// Scores `net` on `samples` in eval mode. Empty splits score 0 with no loss.
pub fn evaluate(
    net: &Classifier,
    samples: &[Sample],
    pre: &Preprocessor,
    label_smoothing: f64,
) -> Result<Evaluation, TrainError> {
    let k = CLASSES.len();
    let mut confusion = vec![vec![0u64; k]; k];
    let mut loss_sum = 0.0;
    let batches: Vec<Vec<usize>> = (0..samples.len())
        .collect::<Vec<_>>()
        .chunks(EVAL_BATCH)
        .map(<[usize]>::to_vec)
        .collect();
    tch::no_grad(|| {
        for_each_batch(
            samples,
            &batches,
            |_, s| pre.eval(&s.image),
            |(xs, labels)| -> Result<(), TrainError> {
                let (x, y) = to_batch(net, &xs, &labels, pre.image_size);
                let logits = net.logits(&x, false);
                let loss = logits.f_cross_entropy_loss(
                    &y,
                    None::<Tensor>,
                    Reduction::Sum,
                    -100,
                    label_smoothing,
                )?;
                loss_sum += loss.double_value(&[]);
                let predicted =
                    Vec::<i64>::try_from(logits.argmax(-1, false).to_device(Device::Cpu))?;
                for (t, p) in labels.iter().zip(predicted) {
                    confusion[*t as usize][p as usize] += 1;
                }
                Ok(())
            },
        )
    })?;
    let n = samples.len();
    let correct: u64 = (0..k).map(|i| confusion[i][i]).sum();
    Ok(Evaluation {
        loss: if n == 0 { 0.0 } else { loss_sum / n as f64 },
        accuracy: if n == 0 {
            0.0
        } else {
            correct as f64 / n as f64
        },
        confusion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_schedule() {
        assert!((scheduled_lr(1e-3, 0, 6) - 1e-3).abs() < 1e-12);
        let mid = scheduled_lr(1e-3, 3, 6);
        assert!(mid < 1e-3 && mid > 1e-5);
        assert!(scheduled_lr(1e-3, 5, 6) < mid);
    }

    #[test]
    fn batches_are_deterministic_and_drop_singletons() {
        let a = epoch_batches(65, 32, 1, 1);
        assert_eq!(a, epoch_batches(65, 32, 1, 1));
        assert_ne!(a, epoch_batches(65, 32, 1, 2));
        assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), vec![32, 32]);
        assert_eq!(epoch_batches(66, 32, 1, 1).len(), 3);
    }
}
