//! Dynamic batching: concurrent requests are packed into one forward pass on a dedicated model
//! thread, off the async runtime. The queue in front of it is bounded; when it is full callers
//! get [`BatchError::Busy`] at once instead of memory growing without bound.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use model::{CLASSES, Classifier};
use tch::Tensor;
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// Class probabilities for one image, in [`CLASSES`] order.
pub type Probabilities = [f32; CLASSES.len()];

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most images in one forward pass.
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

struct Job {
    /// Preprocessed images, `3 * size * size` floats each.
    images: Vec<Vec<f32>>,
    reply: oneshot::Sender<Result<Vec<Probabilities>, BatchError>>,
}

/// Handle to the model thread; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: SyncSender<Job>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl Batcher {
    /// Moves `net` onto a new thread that serves batches until every handle is dropped.
    pub fn spawn(
        net: Classifier,
        image_size: u32,
        config: BatchConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (tx, rx) = sync_channel(config.queue_capacity.max(1));
        let worker_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("model".into())
            .spawn(move || worker(net, image_size, config, rx, &worker_metrics))
            .expect("spawning the model thread");
        Self { tx, metrics }
    }

    /// Classifies `images`; they are batched with whatever else is waiting.
    pub async fn classify(&self, images: Vec<Vec<f32>>) -> Result<Vec<Probabilities>, BatchError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job { images, reply }) {
            Ok(()) => self.metrics.queue_depth.inc(),
            Err(TrySendError::Full(_)) => return Err(BatchError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(BatchError::Closed),
        };
        rx.await.map_err(|_| BatchError::Closed)?
    }
}

fn worker(
    net: Classifier,
    image_size: u32,
    config: BatchConfig,
    rx: Receiver<Job>,
    metrics: &Metrics,
) {
    let per_image = 3 * (image_size as usize).pow(2);
    while let Ok(first) = rx.recv() {
        metrics.queue_depth.dec();
        let mut jobs = vec![first];
        let mut count = jobs[0].images.len();
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
        // Callers that gave up (timeout, disconnect) no longer need an answer: skip their images.
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let count: usize = jobs.iter().map(|job| job.images.len()).sum();
        metrics.batch_size.observe(count as f64);
        let mut flat = Vec::with_capacity(count * per_image);
        for job in &jobs {
            for img in &job.images {
                flat.extend_from_slice(img);
            }
        }
        let s = i64::from(image_size);
        let result = Tensor::f_from_slice(&flat)
            .and_then(|t| t.f_view([count as i64, 3, s, s]))
            .and_then(|t| t.f_to_device(net.device()))
            .and_then(|x| {
                let p = net.predict(&x).f_to_device(tch::Device::Cpu)?;
                Vec::<f32>::try_from(p.f_view([-1])?)
            });
        match result {
            Ok(probs) => {
                let mut rows = probs.chunks_exact(CLASSES.len()).map(|r| {
                    let mut out = [0.0f32; CLASSES.len()];
                    out.copy_from_slice(r);
                    out
                });
                for job in jobs {
                    let mine: Vec<Probabilities> = rows.by_ref().take(job.images.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "inference failed");
                for job in jobs {
                    let _ = job.reply.send(Err(BatchError::Failed(e.to_string())));
                }
            }
        }
    }
}
