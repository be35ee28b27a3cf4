//! The training loop: Adam with a cosine schedule, discriminative learning rates, early stopping
//! on validation loss, and the best epoch's weights kept.

use std::time::Instant;

use artifacts::{EpochRecord, Hyperparameters};
use model::Preprocessor;
use tch::{Device, Kind, Reduction, Tensor};

use super::TrainError;
use super::batches::{epoch_batches, for_each_batch, sample_seed};
use super::checkpoint::{Checkpoints, LoopState};
use super::evaluate::{Evaluation, evaluate};
use super::weights_err;
use crate::dataset::Dataset;
use crate::progress::Progress;
use crate::torch::Classifier;
use crate::torch::adam::Adam;

/// The pretrained backbone learns at a tenth of the head's rate (discriminative fine-tuning):
/// full-rate Adam on ImageNet features made validation accuracy swing by 20 points from epoch
/// to epoch on small datasets.
const BACKBONE_LR_FACTOR: f64 = 0.1;

pub(super) struct Fit {
    pub weights: Vec<u8>,
    pub onnx: Vec<u8>,
    pub history: Vec<EpochRecord>,
    pub best_epoch: u32,
    pub test: Evaluation,
}

/// Where the network trains and what its convolutions compute in.
#[derive(Debug, Clone, Copy)]
pub struct Compute {
    pub device: Device,
    pub kind: Kind,
}

pub(super) fn fit(
    data: &Dataset,
    hyper: &Hyperparameters,
    Compute { device, kind }: Compute,
    pretrained: Option<&[u8]>,
    progress: &Progress,
    checkpoints: Option<&Checkpoints>,
) -> Result<Fit, TrainError> {
    tch::manual_seed(hyper.seed as i64);
    let pre = Preprocessor::new(hyper.image_size);
    if device.is_cuda() {
        // Fixed input shapes: let cuDNN time its algorithms once and keep the fastest.
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let mut net = Classifier::new(device, hyper.dropout);
    net.set_train_kind(kind);
    if let Some(bytes) = pretrained {
        let n = net
            .load_backbone(bytes)
            .map_err(weights_err("loading the pretrained backbone"))?;
        tracing::info!(tensors = n, "loaded ImageNet backbone");
    }
    let history = train_epochs(&mut net, data, hyper, &pre, progress, checkpoints)?;
    let best_epoch = history.best_epoch;
    let test = evaluate(&net, &data.test, &pre, hyper.label_smoothing)?;
    tracing::info!(test_accuracy = test.accuracy, "evaluated on the test split");
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
    })
}

struct History {
    records: Vec<EpochRecord>,
    best_epoch: u32,
}

/// Cosine annealing from `lr` to `lr / 100` over the planned epochs.
pub fn scheduled_lr(lr: f64, epoch_index: u32, epochs: u32) -> f64 {
    let min = lr / 100.0;
    let t = f64::from(epoch_index) / f64::from(epochs.max(1));
    min + 0.5 * (lr - min) * (1.0 + (std::f64::consts::PI * t).cos())
}

/// One optimisation step: forward in training mode, label-smoothed cross-entropy, Adam (with
/// loss scaling when the network computes in fp16). Returns the batch's mean loss and its
/// number of correct predictions as tensors on the device: reading them would wait for the
/// device, so the caller sums them there and reads once per epoch.
pub fn train_step(
    net: &Classifier,
    opt: &mut Adam,
    scaler: Option<&mut LossScaler>,
    x: &Tensor,
    y: &Tensor,
    label_smoothing: f64,
) -> Result<(Tensor, Tensor), TrainError> {
    let logits = net.logits(x, true);
    let loss =
        logits.f_cross_entropy_loss(y, None::<Tensor>, Reduction::Mean, -100, label_smoothing)?;
    match scaler {
        None => opt.backward_step(&loss)?,
        Some(scaler) => scaler.backward_step(opt, &loss)?,
    }
    let hits = logits.argmax(-1, false).eq_tensor(y).sum(Kind::Int64);
    Ok((loss.detach(), hits))
}

/// Dynamic loss scaling for fp16 (bf16 has fp32's range and needs none): the loss is scaled up
/// so small gradients survive fp16, gradients are unscaled before Adam sees them, and a step
/// whose gradients overflowed is skipped and the scale halved; after `GROWTH_INTERVAL` clean
/// steps the scale doubles. The same policy as `torch.amp.GradScaler`.
#[derive(Debug)]
pub struct LossScaler {
    scale: f64,
    clean_steps: u32,
}

impl LossScaler {
    const INITIAL: f64 = 65536.0;
    const GROWTH_INTERVAL: u32 = 2000;

    pub fn new() -> Self {
        Self {
            scale: Self::INITIAL,
            clean_steps: 0,
        }
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    fn backward_step(&mut self, opt: &mut Adam, loss: &Tensor) -> Result<(), TrainError> {
        opt.zero_grad();
        (loss * self.scale).f_backward()?;
        let grads = opt.grads();
        let overflowed = grads
            .iter()
            .map(|g| g.isfinite().all().logical_not())
            .reduce(|a, b| a.logical_or(&b))
            .is_some_and(|any| bool::try_from(any).unwrap_or(true));
        if self.record(overflowed) {
            for mut g in grads {
                let _ = g.g_div_scalar_(self.scale);
            }
            opt.step();
        }
        Ok(())
    }

    /// Updates the scale after a step; returns whether the step's gradients may be applied.
    pub fn record(&mut self, overflowed: bool) -> bool {
        if overflowed {
            self.scale = (self.scale / 2.0).max(1.0);
            self.clean_steps = 0;
            tracing::debug!(
                scale = self.scale,
                "fp16 gradients overflowed; step skipped"
            );
            return false;
        }
        self.clean_steps += 1;
        if self.clean_steps >= Self::GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.clean_steps = 0;
        }
        true
    }
}

impl Default for LossScaler {
    fn default() -> Self {
        Self::new()
    }
}

/// A copy of every variable: the weights of the best epoch so far.
fn snapshot(net: &Classifier) -> Vec<(String, Tensor)> {
    net.var_store()
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy()))
        .collect()
}

impl LoopState {
    /// Records the epoch's validation score: keeps the weights when it is the best so far,
    /// and decides on early stopping.
    fn observe(&mut self, epoch: u32, score: f64, patience: u32) -> bool {
        self.epoch = epoch;
        let improved = self.best_epoch == 0 || score < self.best_score - 1e-6;
        if improved {
            self.best_score = score;
            self.best_epoch = epoch;
            self.since_best = 0;
        } else {
            self.since_best += 1;
            self.stopped = self.since_best >= patience;
        }
        improved
    }
}

fn train_epochs(
    net: &mut Classifier,
    data: &Dataset,
    hyper: &Hyperparameters,
    pre: &Preprocessor,
    progress: &Progress,
    checkpoints: Option<&Checkpoints>,
) -> Result<History, TrainError> {
    let mut opt = Adam::new(net.var_store(), hyper.learning_rate);
    let mut scaler = (net.train_kind() == Kind::Half).then(LossScaler::new);
    let (mut state, mut best) = match checkpoints {
        Some(c) => match c.resume(net, &mut opt)? {
            Some(r) => (r.state, r.best),
            None => (LoopState::default(), Vec::new()),
        },
        None => (LoopState::default(), Vec::new()),
    };
    let batch_size = hyper.batch_size as usize;
    let per_epoch = epoch_batches(data.train.len(), batch_size, hyper.seed, 0).len() as u64;
    progress.start_training(u64::from(hyper.epochs.saturating_sub(state.epoch)) * per_epoch);
    let device = net.device();
    for epoch in state.epoch + 1..=hyper.epochs {
        if state.stopped {
            break;
        }
        let t0 = Instant::now();
        // Dropout masks depend on the epoch alone, so a resumed run draws what it would have.
        tch::manual_seed(sample_seed(hyper.seed, epoch, usize::MAX - 1) as i64);
        let lr = scheduled_lr(hyper.learning_rate, epoch - 1, hyper.epochs);
        opt.set_lr_group(crate::torch::net::HEAD_GROUP, lr);
        opt.set_lr_group(crate::torch::net::BACKBONE_GROUP, lr * BACKBONE_LR_FACTOR);
        let batches = epoch_batches(data.train.len(), batch_size, hyper.seed, epoch);
        let mut loss_sum = Tensor::zeros([], (Kind::Float, device));
        let mut correct = Tensor::zeros([], (Kind::Int64, device));
        let mut seen = 0i64;
        for_each_batch(
            &data.train,
            &batches,
            hyper.image_size,
            device,
            |i, s, out| {
                s.image.read_into(out)?;
                pre.augment(out, sample_seed(hyper.seed, epoch, i));
                Ok(())
            },
            |batch| -> Result<(), TrainError> {
                let (x, y) = batch.to_device(device);
                let (loss, hits) = train_step(
                    net,
                    &mut opt,
                    scaler.as_mut(),
                    &x,
                    &y,
                    hyper.label_smoothing,
                )?;
                let n = batch.len() as i64;
                loss_sum += loss * n as f64;
                correct += hits;
                seen += n;
                progress.batch_done(epoch);
                Ok(())
            },
        )?;
        let (loss_sum, correct) = (loss_sum.double_value(&[]), correct.int64_value(&[]));
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
        state.records.push(record);

        // With no validation split, the last epoch counts as the best.
        let score = if data.val.is_empty() {
            -f64::from(epoch)
        } else {
            val.loss
        };
        if state.observe(epoch, score, hyper.patience) {
            best = snapshot(net);
        }
        if state.stopped {
            tracing::info!(
                epoch,
                patience = hyper.patience,
                "early stopping: validation loss stopped improving"
            );
        }
        if let Some(c) = checkpoints {
            c.save(&state, net, &best, &opt);
        }
    }
    if state.best_epoch == 0 {
        return Err(TrainError::Config("no epoch ran".into()));
    }
    let vars = net.var_store().variables();
    tch::no_grad(|| {
        for (name, saved) in &best {
            if let Some(v) = vars.get(name) {
                let mut v = v.shallow_clone();
                v.copy_(saved);
            }
        }
    });
    progress.finish_training();
    Ok(History {
        records: state.records,
        best_epoch: state.best_epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_scale_halves_on_overflow_and_grows_after_clean_steps() {
        let mut s = LossScaler::new();
        assert!(!s.record(true), "an overflowing step is skipped");
        assert_eq!(s.scale(), LossScaler::INITIAL / 2.0);
        for _ in 0..LossScaler::GROWTH_INTERVAL - 1 {
            assert!(s.record(false));
        }
        assert_eq!(s.scale(), LossScaler::INITIAL / 2.0);
        assert!(s.record(false));
        assert_eq!(s.scale(), LossScaler::INITIAL);
        for _ in 0..40 {
            s.record(true);
        }
        assert_eq!(s.scale(), 1.0, "never below 1");
    }

    #[test]
    fn cosine_schedule() {
        assert!((scheduled_lr(1e-3, 0, 6) - 1e-3).abs() < 1e-12);
        let mid = scheduled_lr(1e-3, 3, 6);
        assert!(mid < 1e-3 && mid > 1e-5);
        assert!(scheduled_lr(1e-3, 5, 6) < mid);
    }
}
