//! The shadow stage: a candidate that passed the offline gate is loaded beside the champion and
//! scores a sample of live requests **off the response path**, so the operator can compare the
//! two on real traffic before promoting (`artifacts::live` has the files).
//!
//! The champion answers exactly as without a candidate: after the answer is built, a sampled
//! request's inputs are offered to a small bounded queue served by one blocking thread with a
//! one-thread session. When that queue is full or admission reports pressure, the sample is
//! dropped (and counted): shadow work gives way first, it never delays or changes an answer.

mod card;
mod poll;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use artifacts::live::ShadowAssignment;
use artifacts::live::ShadowReport;
use chrono::Utc;

use crate::batcher::Forward;
use crate::metrics::Metrics;

pub(crate) use card::CardCache;
pub use card::redact_urls;
pub(crate) use poll::Poller;

/// Sampled requests waiting for the candidate at most; more are dropped. Small on purpose: the
/// candidate sees a sample, and a backlog would only hold memory and report stale latencies.
pub const QUEUE_CAPACITY: usize = 4;

/// Whether the answered request number `n` (from 0) is sampled at `rate`: exactly
/// `floor(n · rate)` of the first `n` are, evenly spread, the same on every run.
pub fn is_sampled(n: u64, rate: f64) -> bool {
    let rate = if rate.is_finite() {
        rate.clamp(0.0, 1.0)
    } else {
        0.0
    };
    ((n + 1) as f64 * rate).floor() > (n as f64 * rate).floor()
}

/// One sampled request for the candidate: the champion's inputs and what it made of them.
#[derive(Debug)]
pub(crate) struct Job {
    pub inputs: Vec<Vec<f32>>,
    /// The champion's top-1 class per input.
    pub champion: Vec<usize>,
    /// The champion's classification time (its batch queue included, as a request sees it).
    pub champion_time: Duration,
}

/// The candidate being shadowed: loaded (with its queue and worker), or failed to load.
#[derive(Debug)]
pub struct Candidate {
    assignment: ShadowAssignment,
    rate_bits: AtomicU64,
    /// Answered requests counted for sampling since the candidate was installed.
    answered: AtomicU64,
    report: Arc<Mutex<ShadowReport>>,
    queue: Option<SyncSender<Job>>,
    /// When a failed load (a transient reason) is tried again.
    retry_at: Option<Instant>,
}

impl Candidate {
    fn new(assignment: ShadowAssignment, queue: Option<SyncSender<Job>>) -> Self {
        let report = ShadowReport {
            candidate_run_id: assignment.run_id.clone(),
            started_at: Utc::now(),
            ..ShadowReport::default()
        };
        Self {
            rate_bits: AtomicU64::new(assignment.sample_rate.to_bits()),
            assignment,
            answered: AtomicU64::new(0),
            report: Arc::new(Mutex::new(report)),
            queue,
            retry_at: None,
        }
    }

    pub fn assignment(&self) -> &ShadowAssignment {
        &self.assignment
    }

    /// True when it loaded and scores samples.
    pub fn is_loaded(&self) -> bool {
        self.queue.is_some()
    }

    pub fn sample_rate(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }

    /// The operator may change the rate of a running stage without a reload.
    pub fn set_sample_rate(&self, rate: f64) {
        self.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
    }

    /// The same stage (candidate, weights, start) as `other` names.
    pub fn same_stage(&self, other: &ShadowAssignment) -> bool {
        self.assignment.run_id == other.run_id
            && self.assignment.model_uri == other.model_uri
            && self.assignment.started_at == other.started_at
    }

    pub fn retry_due(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|at| now >= at)
    }

    /// This pod's counts so far (without pod, champion and write time: the flusher adds them).
    pub fn report(&self) -> ShadowReport {
        lock(&self.report).clone()
    }

    fn take_sample(&self) -> bool {
        let n = self.answered.fetch_add(1, Ordering::Relaxed);
        is_sampled(n, self.sample_rate())
    }

    /// Hands a sampled request to the worker, or counts it dropped (`job` is `None` when the
    /// request was already under pressure when sampled): never waits.
    pub(crate) fn offer(&self, job: Option<Job>, under_pressure: bool, metrics: &Metrics) {
        metrics.shadow_sampled.inc();
        // Counted before the worker can see it, so a report never has more scored than sampled.
        lock(&self.report).sampled += 1;
        let queued = match (&self.queue, job, under_pressure) {
            (Some(queue), Some(job), false) => match queue.try_send(job) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            },
            _ => false,
        };
        if !queued {
            metrics.shadow_dropped.inc();
            lock(&self.report).dropped += 1;
            tracing::debug!(under_pressure, "shadow sample dropped");
        }
    }
}

fn lock(report: &Mutex<ShadowReport>) -> std::sync::MutexGuard<'_, ShadowReport> {
    // Counters only: still consistent after a panic elsewhere.
    report.lock().unwrap_or_else(|p| p.into_inner())
}

/// The pod's shadow stage: at most one candidate at a time.
#[derive(Debug)]
pub struct Shadow {
    current: RwLock<Option<Arc<Candidate>>>,
    metrics: Arc<Metrics>,
    pub(crate) card: CardCache,
}

impl Shadow {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            current: RwLock::new(None),
            metrics,
            card: CardCache::default(),
        }
    }

    /// The candidate, loaded or failed, while a stage runs.
    pub fn current(&self) -> Option<Arc<Candidate>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The loaded candidate when this answered request is to be scored by it too.
    pub(crate) fn sample(&self) -> Option<Arc<Candidate>> {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        let candidate = guard.as_ref().filter(|c| c.is_loaded())?;
        candidate.take_sample().then(|| candidate.clone())
    }

    /// Puts a loaded candidate beside the champion (replacing any other): one worker thread
    /// running `model` on inputs of `image_size`.
    pub fn install(
        &self,
        assignment: ShadowAssignment,
        model: Box<dyn Forward>,
        image_size: u32,
    ) -> std::io::Result<Arc<Candidate>> {
        let (tx, rx) = sync_channel(QUEUE_CAPACITY);
        let candidate = Arc::new(Candidate::new(assignment, Some(tx)));
        worker::spawn(
            model,
            image_size as usize,
            rx,
            candidate.report.clone(),
            self.metrics.clone(),
        )?;
        tracing::info!(
            run_id = %candidate.assignment.run_id,
            sample_rate = candidate.sample_rate(),
            "shadow candidate loaded"
        );
        self.replace(Some(candidate.clone()));
        Ok(candidate)
    }

    /// Records a candidate that could not be loaded: it is reported (`load_error`), scores
    /// nothing, and is tried again after `retry_after` when the reason may pass.
    pub fn install_failed(
        &self,
        assignment: ShadowAssignment,
        error: String,
        retry_after: Option<Duration>,
    ) -> Arc<Candidate> {
        tracing::warn!(run_id = %assignment.run_id, %error, "cannot load the shadow candidate; answers are unaffected");
        let mut candidate = Candidate::new(assignment, None);
        candidate.retry_at = retry_after.map(|d| Instant::now() + d);
        lock(&candidate.report).load_error = Some(error);
        let candidate = Arc::new(candidate);
        self.replace(Some(candidate.clone()));
        candidate
    }

    /// Ends the stage: the candidate's worker stops once its queue is empty.
    pub fn clear(&self) {
        if let Some(old) = self.replace(None) {
            tracing::info!(run_id = %old.assignment.run_id, "shadow stage ended");
        }
    }

    fn replace(&self, next: Option<Arc<Candidate>>) -> Option<Arc<Candidate>> {
        self.metrics
            .shadow_loaded
            .set(i64::from(next.as_ref().is_some_and(|c| c.is_loaded())));
        let mut guard = self.current.write().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *guard, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_takes_exactly_the_rate_evenly() {
        let taken = |rate: f64, n: u64| (0..n).filter(|&i| is_sampled(i, rate)).count();
        assert_eq!(taken(1.0, 10), 10);
        assert_eq!(taken(0.0, 10), 0);
        assert_eq!(taken(0.5, 10), 5);
        assert_eq!(taken(0.1, 100), 10);
        assert_eq!(taken(0.25, 7), 1);
        let halves: Vec<bool> = (0..4).map(|i| is_sampled(i, 0.5)).collect();
        assert_eq!(halves, [false, true, false, true]);
        assert_eq!(taken(f64::NAN, 10), 0);
        assert_eq!(taken(7.0, 10), 10);
    }
}
