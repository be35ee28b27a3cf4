//! Dynamic batching: concurrent requests are packed into forward passes on dedicated model
//! threads, off the async runtime. The queue in front of them is bounded; when it is full callers
//! get [`BatchError::Busy`] at once instead of memory growing without bound.
//!
//! A failed forward pass fails only the requests in it. A worker whose model panicked is not
//! trusted again: it answers its batch, then stops, and [`Batcher::alive`] counts it out, so
//! health checks go red when no worker is left (Kubernetes then restarts the pod).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use model::CLASSES;
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// Class probabilities for one image, in [`CLASSES`] order.
pub type Probabilities = [f32; CLASSES.len()];

/// The index of the most probable class (the last of equals, as `Iterator::max_by` picks).
pub fn top1(p: &Probabilities) -> usize {
    p.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most images in one forward pass; larger requests are split.
    pub max_batch: usize,
    /// How long the first request of a batch waits for company.
    pub max_wait: Duration,
    /// Requests waiting for the model at most; beyond that, callers are turned away.
    pub queue_capacity: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("the model queue is full; retry shortly")]
    Busy,
    #[error("the model worker stopped")]
    Closed,
    #[error("inference failed: {0}")]
    Failed(String),
}

/// One model instance: runs a normalised NCHW batch of `n` images of `size`×`size` and returns
/// `n` rows of probabilities.
pub trait Forward: Send {
    fn forward(
        &mut self,
        batch: &[f32],
        n: usize,
        size: usize,
    ) -> Result<Vec<Probabilities>, String>;
}

/// The classifier exported by the trainer (`model.onnx`), on ONNX Runtime.
pub struct OnnxClassifier {
    session: ort::session::Session,
}

impl std::fmt::Debug for OnnxClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxClassifier").finish_non_exhaustive()
    }
}

impl OnnxClassifier {
    pub fn new(session: ort::session::Session) -> Self {
        Self { session }
    }
}

impl Forward for OnnxClassifier {
    fn forward(
        &mut self,
        batch: &[f32],
        n: usize,
        size: usize,
    ) -> Result<Vec<Probabilities>, String> {
        let input = ort::value::TensorRef::from_array_view(([n, 3, size, size], batch))
            .map_err(|e| e.to_string())?;
        let outputs = self
            .session
            .run(ort::inputs![model::onnx::INPUT => input])
            .map_err(|e| e.to_string())?;
        let (shape, probs) = outputs[model::onnx::OUTPUT]
            .try_extract_tensor::<f32>()
            .map_err(|e| e.to_string())?;
        if shape[..] != [n as i64, CLASSES.len() as i64] {
            return Err(format!("unexpected output shape {shape:?}"));
        }
        Ok(probs
            .chunks_exact(CLASSES.len())
            .map(|r| {
                let mut out = [0.0f32; CLASSES.len()];
                out.copy_from_slice(r);
                out
            })
            .collect())
    }
}

struct Job {
    /// Preprocessed images, `3 * size * size` floats each.
    images: Vec<Vec<f32>>,
    reply: oneshot::Sender<Result<Vec<Probabilities>, BatchError>>,
}

/// Handle to the model threads; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: SyncSender<Job>,
    /// The solo lane: one session with more intra-op threads, for a request alone in the
    /// server (see [`Batcher::classify_alone`]).
    solo: Option<SyncSender<Job>>,
    config: BatchConfig,
    image_size: u32,
    metrics: Arc<Metrics>,
    alive: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("alive", &self.alive())
            .finish_non_exhaustive()
    }
}

/// Counts a worker out when its thread ends, however it ends.
struct AliveGuard(Arc<AtomicUsize>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Batcher {
    /// One thread per model instance; they share one queue and serve until every handle is
    /// dropped.
    pub fn spawn(
        models: Vec<Box<dyn Forward>>,
        image_size: u32,
        config: BatchConfig,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(config.queue_capacity.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let alive = Arc::new(AtomicUsize::new(0));
        for (i, model) in models.into_iter().enumerate() {
            let rx = rx.clone();
            let metrics = metrics.clone();
            alive.fetch_add(1, Ordering::SeqCst);
            let guard = AliveGuard(alive.clone());
            std::thread::Builder::new()
                .name(format!("model-{i}"))
                .spawn(move || {
                    let _guard = guard;
                    worker(model, image_size as usize, config, &rx, &metrics);
                })?;
        }
        Ok(Self {
            tx,
            solo: None,
            config,
            image_size,
            metrics,
            alive,
        })
    }

    /// Adds the solo lane: `model` on its own thread and queue of one. It does not count as a
    /// worker for [`Batcher::alive`]: when it stops, requests go to the shared queue.
    pub fn with_solo(mut self, model: Box<dyn Forward>) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(1);
        let rx = Mutex::new(rx);
        let (config, size, metrics) = (self.config, self.image_size as usize, self.metrics.clone());
        std::thread::Builder::new()
            .name("model-solo".into())
            .spawn(move || worker(model, size, config, &rx, &metrics))?;
        self.solo = Some(tx);
        Ok(self)
    }

    /// Model threads still serving.
    pub fn alive(&self) -> usize {
        self.alive.load(Ordering::SeqCst)
    }

    /// Classifies `images`; they are batched with whatever else is waiting.
    pub async fn classify(&self, images: Vec<Vec<f32>>) -> Result<Vec<Probabilities>, BatchError> {
        self.submit(images, false).await
    }

    /// Classifies the images of a request that is alone in the server: on the solo lane, whose
    /// session has the pod's cores to itself, when there is one and it is free; else as
    /// [`Batcher::classify`]. Under load every worker has a request of its own and one
    /// intra-op thread each is the cheaper use of the cores (no thread waits for another);
    /// alone, the other cores would idle while one thread runs the pass.
    pub async fn classify_alone(
        &self,
        images: Vec<Vec<f32>>,
    ) -> Result<Vec<Probabilities>, BatchError> {
        self.submit(images, true).await
    }

    async fn submit(
        &self,
        images: Vec<Vec<f32>>,
        alone: bool,
    ) -> Result<Vec<Probabilities>, BatchError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        if self.alive() == 0 {
            return Err(BatchError::Closed);
        }
        let (reply, rx) = oneshot::channel();
        let mut job = Job { images, reply };
        if alone && let Some(solo) = &self.solo {
            match solo.try_send(job) {
                Ok(()) => {
                    self.metrics.queue_depth.inc();
                    return rx.await.map_err(|_| BatchError::Closed)?;
                }
                // Busy or stopped: the shared queue takes it.
                Err(TrySendError::Full(j) | TrySendError::Disconnected(j)) => job = j,
            }
        }
        match self.tx.try_send(job) {
            Ok(()) => self.metrics.queue_depth.inc(),
            Err(TrySendError::Full(_)) => return Err(BatchError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(BatchError::Closed),
        };
        rx.await.map_err(|_| BatchError::Closed)?
    }
}

/// Takes the next batch off the shared queue: the first job, then whatever arrives within
/// `max_wait` until `max_batch` images are gathered. `None` when every sender is gone.
///
/// With no wait (the default) a worker takes one job at a time and leaves the rest of the
/// queue to the other workers: on CPU a batch costs the same per image as single passes, so
/// draining the queue into one pass would only serialise on one core what the per-core workers
/// can run side by side.
fn gather(rx: &Mutex<Receiver<Job>>, config: BatchConfig, metrics: &Metrics) -> Option<Vec<Job>> {
    // A poisoned lock only means another worker panicked while holding it; the queue itself
    // is intact.
    let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
    let first = rx.recv().ok()?;
    metrics.queue_depth.dec();
    let mut count = first.images.len();
    let mut jobs = vec![first];
    let deadline = Instant::now() + config.max_wait;
    while count < config.max_batch {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match rx.recv_timeout(deadline - now) {
            Ok(job) => {
                metrics.queue_depth.dec();
                count += job.images.len();
                jobs.push(job);
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
        }
    }
    Some(jobs)
}

fn worker(
    mut model: Box<dyn Forward>,
    size: usize,
    config: BatchConfig,
    rx: &Mutex<Receiver<Job>>,
    metrics: &Metrics,
) {
    let per_image = 3 * size * size;
    let max_batch = config.max_batch.max(1);
    while let Some(mut jobs) = gather(rx, config, metrics) {
        // Callers that gave up (timeout, disconnect) no longer need an answer: skip their images.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let images: Vec<&Vec<f32>> = jobs.iter().flat_map(|job| &job.images).collect();
        let mut probs = Vec::with_capacity(images.len());
        let mut failure = None;
        let mut flat = Vec::with_capacity(images.len().min(max_batch) * per_image);
        // Never more than max_batch images in one pass, however many one request brought.
        for chunk in images.chunks(max_batch) {
            flat.clear();
            for img in chunk {
                flat.extend_from_slice(img);
            }
            metrics.batch_size.observe(chunk.len() as f64);
            match catch_unwind(AssertUnwindSafe(|| model.forward(&flat, chunk.len(), size))) {
                Ok(Ok(rows)) if rows.len() == chunk.len() => probs.extend(rows),
                Ok(Ok(rows)) => {
                    failure = Some((
                        format!("{} rows for {} images", rows.len(), chunk.len()),
                        false,
                    ));
                    break;
                }
                Ok(Err(e)) => {
                    failure = Some((e, false));
                    break;
                }
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".into());
                    failure = Some((format!("model panicked: {msg}"), true));
                    break;
                }
            }
        }
        match failure {
            None => {
                let mut rows = probs.into_iter();
                for job in jobs {
                    let mine: Vec<Probabilities> = rows.by_ref().take(job.images.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Some((e, fatal)) => {
                tracing::error!(error = %e, fatal, "inference failed");
                for job in jobs {
                    let _ = job.reply.send(Err(BatchError::Failed(e.clone())));
                }
                if fatal {
                    // After a panic the model's state is unknown: stop this worker for good.
                    tracing::error!("model worker stopped after a panic");
                    return;
                }
            }
        }
    }
}
