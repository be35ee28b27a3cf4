//! The training loop: Adam with a cosine schedule, discriminative learning rates, early stopping
//! on validation loss, and the best epoch's weights kept.

use std::time::{Duration, Instant};

use artifacts::{DistributedRecord, EpochRecord, Hyperparameters};
use model::Preprocessor;
use tch::{Device, Kind, Reduction, Tensor};

use super::batches::{Normalizer, for_each_batch, rank_batches, sample_seed};
use super::checkpoint::{Checkpoints, LoopState, PartialEpoch};
use super::evaluate::{Evaluation, evaluate};
use super::stop::StopSignal;
use super::{TrainError, input_weights_err, weights_err};
use crate::dataset::Dataset;
use crate::dist::{Dist, GradSync};
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
    /// How the steps went across ranks (`None` for a single process).
    pub distributed: Option<DistributedRecord>,
}

/// Where the network trains and what its convolutions compute in.
#[derive(Debug, Clone, Copy)]
pub struct Compute {
    pub device: Device,
    pub kind: Kind,
}

/// What this rank is in the run: its process group (none for a single process) and the stop
/// signal it answers between steps.
#[derive(Debug, Clone, Copy)]
pub struct Rank<'a> {
    pub dist: Option<&'a Dist>,
    pub stop: &'a StopSignal,
}

impl Rank<'_> {
    fn is_leader(&self) -> bool {
        self.dist.is_none_or(Dist::is_leader)
    }

    fn index(&self) -> usize {
        self.dist.map_or(0, Dist::rank)
    }

    fn world(&self) -> usize {
        self.dist.map_or(1, Dist::world_size)
    }
}

/// Trains; rank 0 (or the single process) then scores the kept weights on the test split and
/// exports them. Other ranks return `None` once the last epoch's collectives are done.
pub(super) fn fit(
    data: &Dataset,
    hyper: &Hyperparameters,
    Compute { device, kind }: Compute,
    pretrained: Option<&[u8]>,
    progress: &Progress,
    checkpoints: Option<&Checkpoints>,
    rank: Rank<'_>,
) -> Result<Option<Fit>, TrainError> {
    tch::manual_seed(hyper.seed as i64);
    let pre = Preprocessor::new(hyper.image_size);
    if device.is_cuda() {
        // Fixed input shapes: let cuDNN time its algorithms once and keep the fastest.
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let mut net = Classifier::new(device, hyper.dropout);
    net.set_train_kind(kind);
    // Other ranks get rank 0's weights by broadcast; only rank 0 needs the backbone.
    if let Some(bytes) = pretrained.filter(|_| rank.is_leader()) {
        let n = net
            .load_backbone(bytes)
            .map_err(input_weights_err("loading the pretrained backbone"))?;
        tracing::info!(tensors = n, "loaded ImageNet backbone");
    }
    let history = train_epochs(&mut net, data, hyper, &pre, progress, checkpoints, rank)?;
    if !rank.is_leader() {
        return Ok(None);
    }
    let best_epoch = history.best_epoch;
    let test = evaluate(&net, &data.test, &pre, hyper.label_smoothing)?;
    tracing::info!(test_accuracy = test.accuracy, "evaluated on the test split");
    let weights = net
        .to_safetensors()
        .map_err(weights_err("serialising the weights"))?;
    let onnx = model::onnx::export_safetensors(&weights, hyper.image_size)?;
    Ok(Some(Fit {
        weights,
        onnx,
        history: history.records,
        best_epoch,
        test,
        distributed: history.distributed,
    }))
}

struct History {
    records: Vec<EpochRecord>,
    best_epoch: u32,
    distributed: Option<DistributedRecord>,
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
    backward_and_step(opt, scaler, None, &loss, false)?;
    let hits = logits.argmax(-1, false).eq_tensor(y).sum(Kind::Int64);
    Ok((loss.detach(), hits))
}

/// Back-propagates `loss`, averages the gradients over the ranks when `sync` is given, and
/// applies Adam (through the loss scaler in fp16). Returns whether the ranks agreed to stop
/// after this step (`stop` is this rank's vote; a single process decides alone).
pub fn backward_and_step(
    opt: &mut Adam,
    scaler: Option<&mut LossScaler>,
    sync: Option<&mut GradSync<'_>>,
    loss: &Tensor,
    stop: bool,
) -> Result<bool, TrainError> {
    opt.zero_grad();
    match &scaler {
        None => loss.f_backward()?,
        Some(s) => s.scaled(loss).f_backward()?,
    }
    // Averaged before the overflow check, so every rank sees the same gradients and takes
    // (or skips) the same step.
    let stop = match sync {
        Some(sync) => sync.average(&opt.grads(), stop)?,
        None => stop,
    };
    match scaler {
        None => opt.step(),
        Some(s) => s.unscale_and_step(opt),
    }
    Ok(stop)
}

/// Dynamic loss scaling for fp16 (bf16 has fp32's range and needs none): the loss is scaled up
/// so small gradients survive fp16, gradients are unscaled before Adam sees them, and a step
/// whose gradients overflowed is skipped and the scale halved; after `GROWTH_INTERVAL` clean
/// steps the scale doubles. The same policy as `torch.amp.GradScaler` (with libtorch's own
/// `_amp_update_scale_`), but the scale never drops below 1.
///
/// Everything stays on the device: whether a step overflowed is never read by the host, so the
/// host keeps queueing work instead of waiting for the device at every step. Adam applies or
/// skips the step there ([`Adam::step_unless`]); the scale and the count of skipped steps are
/// read only when asked for (logs at the end of an epoch).
#[derive(Debug)]
pub struct LossScaler {
    /// `[1]` float32, as `_amp_update_scale_` wants it.
    scale: Tensor,
    /// `[1]` int32: clean steps since the last change of scale.
    growth_tracker: Tensor,
    growth_interval: i64,
    skipped: Tensor,
}

impl LossScaler {
    const INITIAL: f64 = 65536.0;
    const GROWTH_INTERVAL: i64 = 2000;

    pub fn new(device: Device) -> Self {
        Self::with_growth_interval(device, Self::GROWTH_INTERVAL)
    }

    fn with_growth_interval(device: Device, growth_interval: i64) -> Self {
        Self {
            scale: Tensor::full([1], Self::INITIAL, (Kind::Float, device)),
            growth_tracker: Tensor::zeros([1], (Kind::Int, device)),
            growth_interval,
            skipped: Tensor::zeros([1], (Kind::Float, device)),
        }
    }

    /// The current scale (waits for the device).
    pub fn scale(&self) -> f64 {
        self.scale.double_value(&[0])
    }

    /// Steps skipped so far because their gradients overflowed (waits for the device).
    pub fn skipped_steps(&self) -> u64 {
        self.skipped.double_value(&[0]) as u64
    }

    fn scaled(&self, loss: &Tensor) -> Tensor {
        loss * &self.scale
    }

    /// After the backward pass of a scaled loss: unscales the gradients, applies Adam unless
    /// they overflowed, and updates the scale.
    fn unscale_and_step(&mut self, opt: &mut Adam) {
        let grads = opt.grads();
        tch::no_grad(|| {
            let flags: Vec<Tensor> = grads
                .iter()
                .map(|g| g.isfinite().all().logical_not())
                .collect();
            let found = match flags.is_empty() {
                true => self.scale.zeros_like().to_kind(Kind::Bool).view([]),
                false => Tensor::stack(&flags, 0).any(),
            };
            let inverse = self.scale.reciprocal();
            for mut g in grads {
                let _ = g.g_mul_(&inverse);
            }
            opt.step_unless(&found);
            let found = found.to_kind(Kind::Float).view([1]);
            let _ = self.scale.internal_amp_update_scale_(
                &self.growth_tracker,
                &found,
                2.0,
                0.5,
                self.growth_interval,
            );
            let _ = self.scale.clamp_min_(1.0);
            let _ = self.skipped.g_add_(&found);
        });
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

/// Every variable (parameters and batch-norm statistics) in name order: the same order on
/// every rank, for broadcasting in place.
fn all_variables(net: &Classifier) -> Vec<Tensor> {
    let mut named: Vec<(String, Tensor)> = net.var_store().variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.into_iter().map(|(_, t)| t).collect()
}

/// The batch-norm running statistics, in name order.
fn batch_norm_buffers(net: &Classifier) -> Vec<Tensor> {
    let mut named: Vec<(String, Tensor)> = net
        .var_store()
        .variables()
        .into_iter()
        .filter(|(k, _)| k.ends_with("running_mean") || k.ends_with("running_var"))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.into_iter().map(|(_, t)| t).collect()
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

/// Seed of the dropout masks of one step: a resumed run draws what it would have drawn, and
/// ranks draw differently (their samples differ; a world of one draws as a single process).
fn step_seed(seed: u64, epoch: u32, step: u32, rank: usize) -> i64 {
    let salted = seed ^ ((rank as u64) << 56);
    sample_seed(salted, epoch, usize::MAX - 2 - step as usize) as i64
}

/// The first thing every rank does together: rank 0's training position, weights,
/// batch-norm statistics and optimizer state (fresh or resumed) become everyone's.
fn share_start(
    dist: &Dist,
    net: &Classifier,
    opt: &mut Adam,
    state: &mut LoopState,
) -> Result<(), TrainError> {
    let device = net.device();
    let steps = state.partial.as_ref().map_or(0, |p| p.steps);
    let header = Tensor::from_slice(&[
        f64::from(state.epoch),
        f64::from(steps),
        opt.steps() as f64,
        f64::from(u8::from(state.stopped)),
    ])
    .to_device(device);
    dist.broadcast_from_leader(std::slice::from_ref(&header))?;
    let header = Vec::<f64>::try_from(header.to_device(Device::Cpu))?;
    if !dist.is_leader() {
        state.epoch = header[0] as u32;
        state.partial = (header[1] > 0.0).then(|| PartialEpoch {
            steps: header[1] as u32,
            ..PartialEpoch::default()
        });
        state.stopped = header[3] > 0.0;
        opt.set_steps(header[2] as i64);
    }
    dist.broadcast_from_leader(&all_variables(net))?;
    dist.broadcast_from_leader(&opt.moments())?;
    Ok(())
}

/// An epoch's running training sums on the device, and how far it got.
struct EpochSums {
    loss: Tensor,
    correct: Tensor,
    seen: f64,
    steps: u32,
    /// Seconds of this epoch spent before a resume.
    seconds_before: f64,
}

impl EpochSums {
    fn start(device: Device, partial: Option<&PartialEpoch>, leader: bool) -> Self {
        // The saved sums cover every rank: rank 0 carries them on, the others start at zero,
        // and the end-of-epoch sum over the ranks is whole again.
        let p = partial.filter(|_| leader).cloned().unwrap_or_default();
        Self {
            loss: Tensor::full([], p.loss_sum, (Kind::Float, device)),
            correct: Tensor::full([], p.correct, (Kind::Float, device)),
            seen: p.seen,
            steps: partial.map_or(0, |p| p.steps),
            seconds_before: partial.map_or(0.0, |p| p.seconds),
        }
    }

    /// Loss sum, correct predictions and samples seen over every rank (one host read).
    fn totals(&self, dist: Option<&Dist>) -> Result<(f64, f64, f64), TrainError> {
        let device = self.loss.device();
        let packed = Tensor::stack(
            &[
                self.loss.to_kind(Kind::Double),
                self.correct.to_kind(Kind::Double),
                Tensor::full([], self.seen, (Kind::Double, device)),
            ],
            0,
        );
        if let Some(d) = dist {
            d.allreduce_sum(std::slice::from_ref(&packed))?;
        }
        let v = Vec::<f64>::try_from(packed.to_device(Device::Cpu))?;
        Ok((v[0], v[1], v[2]))
    }
}

/// Time spent stepping and averaging gradients, for logs and metrics.json.
#[derive(Debug, Default)]
struct StepClock {
    steps: u64,
    step: Duration,
}

fn train_epochs(
    net: &mut Classifier,
    data: &Dataset,
    hyper: &Hyperparameters,
    pre: &Preprocessor,
    progress: &Progress,
    checkpoints: Option<&Checkpoints>,
    rank: Rank<'_>,
) -> Result<History, TrainError> {
    let device = net.device();
    let mut opt = Adam::new(net.var_store(), hyper.learning_rate);
    let mut scaler = (net.train_kind() == Kind::Half).then(|| LossScaler::new(device));
    let leader = rank.is_leader();
    let (mut state, mut best) = match checkpoints.filter(|_| leader) {
        Some(c) => match c.resume(net, &mut opt)? {
            Some(r) => (r.state, r.best),
            None => (LoopState::default(), Vec::new()),
        },
        None => (LoopState::default(), Vec::new()),
    };
    if let Some(dist) = rank.dist {
        share_start(dist, net, &mut opt, &mut state)?;
    }
    let _training = rank.stop.training();
    let batch_size = hyper.batch_size as usize;
    let (index, world) = (rank.index(), rank.world());
    let per_epoch =
        rank_batches(data.train.len(), batch_size, hyper.seed, 0, index, world).len() as u64;
    let done_steps = state.partial.as_ref().map_or(0, |p| u64::from(p.steps));
    progress.start_training(
        (u64::from(hyper.epochs.saturating_sub(state.epoch)) * per_epoch)
            .saturating_sub(done_steps),
    );
    let mut sync = rank.dist.map(GradSync::new);
    let mut clock = StepClock::default();
    let norm = Normalizer::new(device);
    for epoch in state.epoch + 1..=hyper.epochs {
        if state.stopped {
            break;
        }
        let t0 = Instant::now();
        let lr = scheduled_lr(hyper.learning_rate, epoch - 1, hyper.epochs);
        opt.set_lr_group(crate::torch::net::HEAD_GROUP, lr);
        opt.set_lr_group(crate::torch::net::BACKBONE_GROUP, lr * BACKBONE_LR_FACTOR);
        let batches = rank_batches(
            data.train.len(),
            batch_size,
            hyper.seed,
            epoch,
            index,
            world,
        );
        let partial = state.partial.take();
        let mut sums = EpochSums::start(device, partial.as_ref(), leader);
        let skip = (sums.steps as usize).min(batches.len());
        let allreduce_before = sync
            .as_ref()
            .map_or(Duration::ZERO, GradSync::allreduce_time);
        let step_before = clock.step;
        let mut stopped_at = None;
        let ran = for_each_batch(
            &data.train,
            &batches[skip..],
            hyper.image_size,
            device,
            |i, s, out| {
                s.image.read_into(out)?;
                pre.augment(out, sample_seed(hyper.seed, epoch, i));
                Ok(())
            },
            |batch| -> Result<(), TrainError> {
                let started = Instant::now();
                tch::manual_seed(step_seed(hyper.seed, epoch, sums.steps, index));
                let (x, y) = batch.normalized(&norm);
                let logits = net.logits(&x, true);
                let loss = logits.f_cross_entropy_loss(
                    &y,
                    None::<Tensor>,
                    Reduction::Mean,
                    -100,
                    hyper.label_smoothing,
                )?;
                let stop = backward_and_step(
                    &mut opt,
                    scaler.as_mut(),
                    sync.as_mut(),
                    &loss,
                    rank.stop.requested(),
                )?;
                let n = batch.len() as f64;
                sums.loss += loss.detach() * n;
                sums.correct += logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Float);
                sums.seen += n;
                sums.steps += 1;
                clock.steps += 1;
                let took = started.elapsed();
                clock.step += took;
                tracing::debug!(
                    epoch,
                    step = sums.steps,
                    step_ms = took.as_secs_f64() * 1e3,
                    "step done"
                );
                progress.batch_done(epoch);
                if stop {
                    stopped_at = Some(sums.steps);
                    // Ends the epoch's loop; answered below.
                    return Err(TrainError::Interrupted {
                        epoch,
                        step: sums.steps,
                    });
                }
                Ok(())
            },
        );
        match ran {
            Err(TrainError::Interrupted { .. }) if stopped_at.is_some() => {
                return Err(interrupt(
                    net,
                    &opt,
                    &best,
                    state,
                    &sums,
                    t0,
                    rank,
                    checkpoints,
                ));
            }
            other => other?,
        }
        let (loss_sum, correct, seen) = sums.totals(rank.dist)?;
        if let (Some(dist), Some(sync)) = (rank.dist, &sync) {
            // Each rank's statistics saw only its own batches: rank 0's are the ones kept.
            dist.broadcast_from_leader(&batch_norm_buffers(net))?;
            log_epoch_shares(
                epoch,
                dist.world_size(),
                sync.allreduce_time() - allreduce_before,
                clock.step - step_before,
            );
        }
        if leader {
            let val = evaluate(net, &data.val, pre, hyper.label_smoothing)?;
            let record = EpochRecord {
                epoch,
                train_loss: loss_sum / seen.max(1.0),
                train_accuracy: correct / seen.max(1.0),
                val_loss: val.loss,
                val_accuracy: val.accuracy,
                lr,
                seconds: sums.seconds_before + t0.elapsed().as_secs_f64(),
            };
            progress.epoch_done(&record, hyper.epochs);
            state.records.push(record);
            if let Some(s) = &scaler {
                tracing::info!(
                    epoch,
                    loss_scale = s.scale(),
                    skipped_steps = s.skipped_steps(),
                    "fp16 loss scaling"
                );
            }
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
        } else {
            state.epoch = epoch;
        }
        if let Some(dist) = rank.dist {
            // Rank 0 alone decides on early stopping; everyone follows.
            let flag = Tensor::from_slice(&[f64::from(u8::from(state.stopped))]).to_device(device);
            dist.broadcast_from_leader(std::slice::from_ref(&flag))?;
            state.stopped = flag.double_value(&[0]) > 0.0;
        }
    }
    progress.finish_training();
    let distributed = match (rank.dist, &sync) {
        (Some(dist), Some(sync)) => Some(DistributedRecord {
            workers: dist.world_size() as u32,
            backend: dist.backend().to_string(),
            steps: clock.steps,
            allreduce_seconds: sync.allreduce_time().as_secs_f64(),
            step_seconds: clock.step.as_secs_f64(),
        }),
        _ => None,
    };
    if !leader {
        return Ok(History {
            records: Vec::new(),
            best_epoch: 0,
            distributed,
        });
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
    Ok(History {
        records: state.records,
        best_epoch: state.best_epoch,
        distributed,
    })
}

/// Every rank agreed to stop after `sums.steps` steps of the epoch: rank 0 checkpoints where
/// they are, and the error ends the run (exit 143).
#[allow(clippy::too_many_arguments)]
fn interrupt(
    net: &Classifier,
    opt: &Adam,
    best: &[(String, Tensor)],
    mut state: LoopState,
    sums: &EpochSums,
    t0: Instant,
    rank: Rank<'_>,
    checkpoints: Option<&Checkpoints>,
) -> TrainError {
    let epoch = state.epoch + 1;
    let stopped = TrainError::Interrupted {
        epoch,
        step: sums.steps,
    };
    // The sums over every rank go into the checkpoint (a collective: every rank is here).
    let totals = match sums.totals(rank.dist) {
        Ok(t) => t,
        Err(e) => return e,
    };
    if let Some(dist) = rank.dist
        && let Err(e) = dist.broadcast_from_leader(&batch_norm_buffers(net))
    {
        return e.into();
    }
    if let Some(c) = checkpoints.filter(|_| rank.is_leader()) {
        state.partial = Some(PartialEpoch {
            steps: sums.steps,
            loss_sum: totals.0,
            correct: totals.1,
            seen: totals.2,
            seconds: sums.seconds_before + t0.elapsed().as_secs_f64(),
        });
        c.save(&state, net, best, opt);
    }
    tracing::warn!(
        epoch,
        step = sums.steps,
        "stopping as asked (SIGTERM) after this step"
    );
    stopped
}

/// One line per data-parallel epoch: how much of a step went to averaging gradients.
fn log_epoch_shares(epoch: u32, workers: usize, allreduce: Duration, steps: Duration) {
    let (a, s) = (allreduce.as_secs_f64(), steps.as_secs_f64());
    tracing::info!(
        epoch,
        workers,
        allreduce_seconds = a,
        step_seconds = s,
        allreduce_share = if s > 0.0 { a / s } else { 0.0 },
        "gradient averaging"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-layer model whose gradient is set by hand: finite or not.
    fn tiny() -> (tch::nn::VarStore, Tensor) {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[3], tch::nn::Init::Const(0.5));
        (vs, w)
    }

    fn step(scaler: &mut LossScaler, opt: &mut Adam, w: &Tensor, bad: bool) {
        let target = if bad { f64::INFINITY } else { 1.0 };
        let loss = (w * target).sum(Kind::Float);
        backward_and_step(opt, Some(scaler), None, &loss, false).unwrap();
    }

    /// The scaler's bookkeeping lives on the device and follows GradScaler's policy: an
    /// overflowing step is skipped (weights untouched) and halves the scale, a clean one is
    /// Adam's step on the unscaled gradient, and the scale doubles after the growth interval
    /// and never drops below 1.
    #[test]
    fn loss_scale_halves_on_overflow_and_grows_after_clean_steps() {
        let (vs, w) = tiny();
        let mut opt = Adam::new(&vs, 0.1);
        let mut s = LossScaler::with_growth_interval(Device::Cpu, 3);
        step(&mut s, &mut opt, &w, true);
        assert_eq!(s.scale(), LossScaler::INITIAL / 2.0);
        assert_eq!(s.skipped_steps(), 1);
        assert_eq!(Vec::<f32>::try_from(&w).unwrap(), [0.5; 3], "skipped");
        assert_eq!(opt.steps(), 0);
        step(&mut s, &mut opt, &w, false);
        // Adam's first step moves each weight by lr against the gradient's sign.
        let moved = Vec::<f32>::try_from(&w).unwrap();
        assert!(moved.iter().all(|v| (v - 0.4).abs() < 1e-6), "{moved:?}");
        assert_eq!(opt.steps(), 1);
        step(&mut s, &mut opt, &w, false);
        assert_eq!(s.scale(), LossScaler::INITIAL / 2.0);
        step(&mut s, &mut opt, &w, false);
        assert_eq!(
            s.scale(),
            LossScaler::INITIAL,
            "doubled after 3 clean steps"
        );
        for _ in 0..40 {
            step(&mut s, &mut opt, &w, true);
        }
        assert_eq!(s.scale(), 1.0, "never below 1");
        assert_eq!(s.skipped_steps(), 41);
        assert_eq!(opt.steps(), 3);
    }

    #[test]
    fn cosine_schedule() {
        assert!((scheduled_lr(1e-3, 0, 6) - 1e-3).abs() < 1e-12);
        let mid = scheduled_lr(1e-3, 3, 6);
        assert!(mid < 1e-3 && mid > 1e-5);
        assert!(scheduled_lr(1e-3, 5, 6) < mid);
    }
}
