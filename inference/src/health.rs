//! Readiness that tells the truth: a pod whose model fails every pass is not ready, even
//! though its worker threads are alive. Without this a broken pod keeps its share of traffic
//! and answers every request with 500.
//!
//! Red after `max_failures` consecutive failed passes, or when failures keep coming and no
//! pass has succeeded for `deadline`; green again after one success. `/readyz` runs a probe
//! pass while red, so a pod taken out of rotation can still find out that it recovered.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Consecutive failed passes that turn readiness red.
    pub max_failures: u32,
    /// How long failures may go on without a success before readiness turns red.
    pub deadline: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            max_failures: 5,
            deadline: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    consecutive: u32,
    /// The first failure since the last success.
    failing_since: Option<Instant>,
    last_error: String,
}

/// Counts model passes; share it inside the app state.
#[derive(Debug, Default)]
pub struct Health {
    config: HealthConfig,
    state: Mutex<State>,
}

impl Health {
    pub fn new(config: HealthConfig) -> Self {
        Self {
            config,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A few fields updated in one step each: still consistent after a panic elsewhere.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn success(&self) {
        let mut s = self.lock();
        if s.consecutive > 0 {
            tracing::info!(after_failures = s.consecutive, "model passes succeed again");
        }
        *s = State::default();
    }

    pub fn failure(&self, error: &str) {
        self.failure_at(Instant::now(), error);
    }

    pub fn failure_at(&self, now: Instant, error: &str) {
        let mut s = self.lock();
        s.consecutive = s.consecutive.saturating_add(1);
        s.failing_since.get_or_insert(now);
        error.clone_into(&mut s.last_error);
        if s.consecutive == self.config.max_failures {
            tracing::error!(
                failures = s.consecutive,
                error,
                "the model keeps failing; /readyz now answers 503"
            );
        }
    }

    /// `Err(why)` while readiness should be red.
    pub fn check(&self) -> Result<(), String> {
        self.check_at(Instant::now())
    }

    pub fn check_at(&self, now: Instant) -> Result<(), String> {
        let s = self.lock();
        let Some(since) = s.failing_since else {
            return Ok(());
        };
        let stuck = now.saturating_duration_since(since) >= self.config.deadline;
        if s.consecutive >= self.config.max_failures || stuck {
            return Err(format!(
                "the model failed its last {} passes ({} s without a success): {}",
                s.consecutive,
                now.saturating_duration_since(since).as_secs(),
                s.last_error
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn red_after_consecutive_failures_green_after_a_success() {
        let h = Health::new(HealthConfig {
            max_failures: 3,
            deadline: Duration::from_secs(60),
        });
        let t = Instant::now();
        for _ in 0..2 {
            h.failure_at(t, "boom");
        }
        assert!(h.check_at(t).is_ok());
        h.failure_at(t, "boom");
        assert!(h.check_at(t).unwrap_err().contains("boom"));
        h.success();
        assert!(h.check_at(t).is_ok());
    }

    #[test]
    fn red_when_failures_go_on_past_the_deadline() {
        let h = Health::new(HealthConfig {
            max_failures: 100,
            deadline: Duration::from_secs(10),
        });
        let t = Instant::now();
        h.failure_at(t, "slow boom");
        assert!(h.check_at(t + Duration::from_secs(9)).is_ok());
        assert!(h.check_at(t + Duration::from_secs(10)).is_err());
    }
}
