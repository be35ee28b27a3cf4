//! The champion's live verdicts per class and minute, for the operator's prediction-drift
//! check: counted on the request path (one short lock per answer), written by a background
//! task to `<champion run dir>/live/<pod>.json` ([`artifacts::live::LiveVerdicts`]) every
//! report interval, and only when something changed since the last write.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use artifacts::live::LiveVerdicts;
use chrono::Utc;
use model::CLASSES;

use crate::AppState;
use crate::report_store::{Outage, StoreFile};

/// The counts since the process started (a restarted pod starts again from zero; the operator
/// sums files, so nothing is counted twice).
#[derive(Debug)]
pub struct VerdictCounter {
    verdicts: Mutex<LiveVerdicts>,
    /// Bumped on every record, so the flusher can tell "nothing new" without comparing maps.
    changes: AtomicU64,
}

impl Default for VerdictCounter {
    fn default() -> Self {
        Self {
            verdicts: Mutex::new(LiveVerdicts {
                classes: CLASSES.iter().map(|c| c.to_string()).collect(),
                ..LiveVerdicts::default()
            }),
            changes: AtomicU64::new(0),
        }
    }
}

impl VerdictCounter {
    /// Counts one answer's verdicts (class indices, one per classified input).
    pub fn record(&self, classes: &[usize]) {
        if classes.is_empty() {
            return;
        }
        self.lock().record_all(classes, Utc::now());
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> LiveVerdicts {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LiveVerdicts> {
        // Counters only: still consistent after a panic elsewhere.
        self.verdicts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes the pod's verdict counts to `file` every `interval` while they change; store errors
/// are logged once per outage and retried at the next tick, never felt by a request.
pub(crate) async fn flush_every(state: AppState, file: StoreFile, pod: String, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outage = Outage::new("live verdicts");
    let mut flushed = 0;
    tracing::info!(url = %file.url(), "reporting live verdicts");
    loop {
        ticker.tick().await;
        let changes = state.inner.verdicts.changes();
        if changes == flushed {
            continue;
        }
        let Some(verdicts) = state.live_verdicts(&pod) else {
            continue;
        };
        match file.put_json(&verdicts).await {
            Ok(()) => {
                flushed = changes;
                outage.succeeded();
                tracing::debug!(url = %file.url(), "live verdicts written");
            }
            Err(e) => outage.failed(&e),
        }
    }
}
