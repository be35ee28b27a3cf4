//! Being told to stop (SIGTERM: the pod is deleted, its node preempted, its Job suspended):
//! the training loop looks between steps, rank 0 writes a mid-epoch checkpoint, and the process
//! exits 143 within the grace period. Before and after the training loop there is nothing worth
//! saving, so the binary exits at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Shared between the signal handler and the training loop.
#[derive(Debug, Clone, Default)]
pub struct StopSignal {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    requested: AtomicBool,
    training: AtomicBool,
}

impl StopSignal {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the run to stop.
    pub fn request(&self) {
        self.inner.requested.store(true, Ordering::SeqCst);
    }

    pub fn requested(&self) -> bool {
        self.inner.requested.load(Ordering::SeqCst)
    }

    /// Whether the training loop is running and will answer [`StopSignal::request`] with a
    /// checkpoint; otherwise whoever handles the signal should end the process itself.
    pub fn in_training(&self) -> bool {
        self.inner.training.load(Ordering::SeqCst)
    }

    /// Marks the training loop as running until the guard is dropped.
    pub(crate) fn training(&self) -> TrainingGuard {
        self.inner.training.store(true, Ordering::SeqCst);
        TrainingGuard {
            inner: self.inner.clone(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct TrainingGuard {
    inner: Arc<Inner>,
}

impl Drop for TrainingGuard {
    fn drop(&mut self) {
        self.inner.training.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_is_marked_while_it_runs() {
        let stop = StopSignal::new();
        assert!(!stop.requested() && !stop.in_training());
        {
            let _guard = stop.clone().training();
            assert!(stop.in_training());
            stop.request();
        }
        assert!(stop.requested() && !stop.in_training());
    }
}
