//! `history.json`: the decisions taken about a model's runs, newest last, kept beside the runs
//! (`<runs-prefix>/history.json`: `runs/<namespace>/<name>/history.json` for a SimpsonModel,
//! `runs/history.json` in the cluster-free mode). The trainer's `--promote` mode appends an
//! entry for every decision; the inference service reads it for its model card (the chart of
//! the last runs' accuracies, each decision marked).
//!
//! ```json
//! { "schema_version": 1,
//!   "entries": [
//!     { "run_id": "demo-1", "finished_at": "2026-11-29T17:00:00Z",
//!       "decided_at": "2026-11-29T17:00:01Z", "test_accuracy": 0.875, "served_accuracy": null,
//!       "test_images": 64, "champion_run_id": null, "decision": "FirstModel", "promoted": true,
//!       "summary": "FirstModel: 87.5% on 64 test faces" } ] }
//! ```
//!
//! Writers call [`append_history`] (a read-modify-write with compare-and-swap, like
//! `champion.json`), or [`History::append`] on a file they read themselves. The list is bounded
//! ([`MAX_ENTRIES`], oldest dropped) and holds one entry per run: the first decision recorded
//! for a run stands, so a retried Job that decides again leaves the file as it was.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::gate::Decision;
use crate::metrics::RunMetrics;
use crate::storage::{Conditional, Expect, Storage, StorageError};

/// The schema version this crate writes and reads.
pub const SCHEMA_VERSION: u32 = 1;
/// Entries kept; older ones are dropped first.
pub const MAX_ENTRIES: usize = 50;
/// Read-modify-write rounds before [`append_history`] gives up.
const ATTEMPTS: usize = 5;

/// One decision about one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub run_id: String,
    /// When the run finished training (`metrics.json`'s `finished_at`).
    pub finished_at: DateTime<Utc>,
    /// When the decision was taken.
    pub decided_at: DateTime<Utc>,
    /// The run's test accuracy as the trainer measured it.
    pub test_accuracy: f64,
    /// The accuracy served through the production request path (`validation.json`), when the
    /// run was validated before the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_accuracy: Option<f64>,
    /// Test images behind `test_accuracy` (`counts.test`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_images: Option<u64>,
    /// The champion the run was compared with; `None` for a first model.
    #[serde(default)]
    pub champion_run_id: Option<String>,
    /// The decision's kind: `FirstModel`, `Promote`, `Reject`, or a writer's own refusal
    /// (e.g. the operator's `InfraValidationFailed`, `TrainServeSkew`). Readers that do not
    /// know a kind go by `promoted`.
    pub decision: String,
    /// True when the run became the champion.
    pub promoted: bool,
    /// The decision in one line (`artifacts::gate::summarize`), e.g.
    /// `Promote: +2.3 pts (95% CI +0.6..+4.2, p=0.0094, 600 test faces)`.
    pub summary: String,
}

impl HistoryEntry {
    /// An entry for a run the gate decided on, decided now.
    pub fn for_decision(metrics: &RunMetrics, decision: &Decision, summary: &str) -> Self {
        Self::new(metrics, decision.kind(), decision.promotes(), summary)
    }

    /// An entry for a run with any decision kind (the operator's own refusals included),
    /// decided now; `served_accuracy` is `None` (set it when the run was validated).
    pub fn new(metrics: &RunMetrics, kind: &str, promoted: bool, summary: &str) -> Self {
        Self {
            run_id: metrics.run_id.clone(),
            finished_at: metrics.finished_at,
            decided_at: Utc::now(),
            test_accuracy: metrics.test_accuracy,
            served_accuracy: None,
            test_images: Some(metrics.counts.test),
            champion_run_id: metrics.champion_run_id.clone(),
            decision: kind.to_owned(),
            promoted,
            summary: summary.to_owned(),
        }
    }
}

/// The contents of `history.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub schema_version: u32,
    /// Oldest first, at most [`MAX_ENTRIES`], one per run id.
    pub entries: Vec<HistoryEntry>,
}

impl Default for History {
    fn default() -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            entries: Vec::new(),
        }
    }
}

impl History {
    /// Parses and checks a `history.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let h: History = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if h.schema_version != SCHEMA_VERSION {
            return Err(format!(
                "history.json schema_version {} is not {SCHEMA_VERSION}",
                h.schema_version
            ));
        }
        Ok(h)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Adds `entry` at the end and drops the oldest entries beyond `max`. An entry for a run
    /// already recorded is ignored (the first decision about a run stands: a retried Job or a
    /// re-run of a completed run decides again, possibly against a champion that has since
    /// changed). Returns whether the history changed.
    pub fn append(&mut self, entry: HistoryEntry, max: usize) -> bool {
        if self.entries.iter().any(|e| e.run_id == entry.run_id) {
            return false;
        }
        self.entries.push(entry);
        let excess = self.entries.len().saturating_sub(max.max(1));
        self.entries.drain(..excess);
        true
    }

    /// The entry of `run_id`, if recorded.
    pub fn entry(&self, run_id: &str) -> Option<&HistoryEntry> {
        self.entries.iter().rev().find(|e| e.run_id == run_id)
    }

    /// The newest `n` entries, oldest first.
    pub fn last(&self, n: usize) -> &[HistoryEntry] {
        &self.entries[self.entries.len().saturating_sub(n)..]
    }
}

/// Appends `entry` to the history at `key` (`layout::history_in(prefix)`) with a
/// compare-and-swap, creating the file when there is none; keeps [`MAX_ENTRIES`]. Returns
/// whether the file changed (false: the run was already recorded). A malformed file is an
/// error (never overwritten).
pub async fn append_history(
    storage: &Storage,
    key: &str,
    entry: &HistoryEntry,
) -> Result<bool, StorageError> {
    for _ in 0..ATTEMPTS {
        let (mut history, expect) = match storage.get_versioned(key).await? {
            Some((bytes, version)) => {
                let h = History::from_json(&bytes).map_err(|reason| StorageError::Malformed {
                    url: storage.url().to_owned(),
                    key: key.to_owned(),
                    reason,
                })?;
                (h, Expect::Version(version))
            }
            None => (History::default(), Expect::Absent),
        };
        if !history.append(entry.clone(), MAX_ENTRIES) {
            return Ok(false);
        }
        match storage.put_if(key, history.to_json(), &expect).await? {
            Conditional::Written | Conditional::WrittenUnguarded => return Ok(true),
            Conditional::Conflict => {
                tracing::debug!(
                    key,
                    "history.json changed while appending; reading it again"
                );
            }
        }
    }
    Err(StorageError::Malformed {
        url: storage.url().to_owned(),
        key: key.to_owned(),
        reason: format!(
            "kept changing during {ATTEMPTS} attempts to append run {}",
            entry.run_id
        ),
    })
}

/// Reads the history at `key`; `None` when there is none.
pub async fn read_history(storage: &Storage, key: &str) -> Result<Option<History>, StorageError> {
    match storage.get(key).await {
        Ok(bytes) => {
            History::from_json(&bytes)
                .map(Some)
                .map_err(|reason| StorageError::Malformed {
                    url: storage.url().to_owned(),
                    key: key.to_owned(),
                    reason,
                })
        }
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::layout;

    fn entry(run_id: &str, decision: &str) -> HistoryEntry {
        HistoryEntry {
            run_id: run_id.into(),
            finished_at: "2026-12-01T00:00:00Z".parse().unwrap(),
            decided_at: "2026-12-01T00:01:00Z".parse().unwrap(),
            test_accuracy: 0.9,
            served_accuracy: None,
            test_images: Some(64),
            champion_run_id: None,
            decision: decision.into(),
            promoted: decision != "Reject",
            summary: format!("{decision}: …"),
        }
    }

    #[test]
    fn append_is_bounded_and_keeps_the_first_decision_per_run() {
        let mut h = History::default();
        assert!(h.append(entry("r1", "FirstModel"), 3));
        assert!(h.append(entry("r2", "Reject"), 3));
        // The same run decided again (a retried Job): the first decision stands.
        assert!(!h.append(entry("r2", "Promote"), 3));
        assert_eq!(h.entry("r2").unwrap().decision, "Reject");
        assert!(h.append(entry("r3", "Promote"), 3));
        assert!(h.append(entry("r4", "Reject"), 3));
        let ids: Vec<_> = h.entries.iter().map(|e| e.run_id.as_str()).collect();
        assert_eq!(ids, ["r2", "r3", "r4"], "oldest dropped first");
        assert_eq!(h.last(2).len(), 2);
        assert_eq!(h.last(2)[0].run_id, "r3");
        assert_eq!(h.last(10).len(), 3);
        // max 0 still keeps the newest.
        let mut one = History::default();
        one.append(entry("a", "Promote"), 0);
        assert_eq!(one.entries.len(), 1);
    }

    #[test]
    fn json_round_trip_and_schema_check() {
        let mut h = History::default();
        h.append(entry("r1", "FirstModel"), MAX_ENTRIES);
        let back = History::from_json(&h.to_json()).unwrap();
        assert_eq!(back, h);
        let raw: serde_json::Value = serde_json::from_slice(&h.to_json()).unwrap();
        assert_eq!(raw["entries"][0]["decision"], "FirstModel");
        assert_eq!(raw["entries"][0]["promoted"], true);
        assert!(raw["entries"][0].get("served_accuracy").is_none());
        let newer = br#"{"schema_version": 2, "entries": []}"#;
        assert!(
            History::from_json(newer)
                .unwrap_err()
                .contains("schema_version")
        );
        assert!(History::from_json(b"[").is_err());
        // Optional fields may be missing (a minimal writer).
        let minimal = br#"{"schema_version": 1, "entries": [{"run_id": "x",
            "finished_at": "2026-12-01T00:00:00Z", "decided_at": "2026-12-01T00:00:00Z",
            "test_accuracy": 0.5, "decision": "InfraValidationFailed", "promoted": false,
            "summary": "InfraValidationFailed: model.onnx does not load"}]}"#;
        let h = History::from_json(minimal).unwrap();
        assert_eq!(h.entries[0].served_accuracy, None);
        assert_eq!(h.entries[0].champion_run_id, None);
    }

    #[tokio::test]
    async fn append_history_creates_then_appends_in_the_store() {
        let storage = Storage::open("memory:///").unwrap();
        let key = layout::history_in(&layout::model_runs("ns", "homer"));
        assert_eq!(key, "runs/ns/homer/history.json");
        assert_eq!(read_history(&storage, &key).await.unwrap(), None);
        assert!(
            append_history(&storage, &key, &entry("r1", "FirstModel"))
                .await
                .unwrap()
        );
        assert!(
            append_history(&storage, &key, &entry("r2", "Reject"))
                .await
                .unwrap()
        );
        assert!(
            !append_history(&storage, &key, &entry("r2", "Reject"))
                .await
                .unwrap()
        );
        let h = read_history(&storage, &key).await.unwrap().unwrap();
        assert_eq!(h.entries.len(), 2);
        assert_eq!(h.entries[1].decision, "Reject");
        // A malformed file is reported, never overwritten.
        storage.put(&key, b"{".to_vec()).await.unwrap();
        let err = append_history(&storage, &key, &entry("r3", "Promote")).await;
        assert!(err.is_err());
        assert_eq!(storage.get(&key).await.unwrap().as_ref(), b"{");
    }
}
