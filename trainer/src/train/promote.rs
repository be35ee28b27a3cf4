//! The cluster-free mode's promotion: apply the gate and move `champion.json` with a
//! compare-and-swap, so concurrent runs cannot overwrite each other's champion unseen. Every
//! decision is also appended to `history.json` beside the runs (`artifacts::history`).

use artifacts::gate::{Assessment, Comparison};
use artifacts::{
    ChampionRecord, Conditional, Decision, Expect, HistoryEntry, PromotionPolicy, RunMetrics,
    Storage, layout,
};
use chrono::Utc;
use serde::Serialize;

use super::TrainError;

/// Read-decide-write rounds before giving up; each lost round means another run promoted in
/// between, so more than a few means something keeps rewriting champion.json.
const ATTEMPTS: usize = 5;

/// Applies the gate to a run's metrics against the champion in `champion.json` and, when it
/// promotes, writes the run there — only if `champion.json` is still the version the decision
/// was made on (`PutMode::Create` when there was none, `PutMode::Update` otherwise); when
/// another run wrote it in between, reads it again and decides again. On a store that cannot
/// write conditionally (a local directory cannot `Update`) the version is re-checked just
/// before an ordinary write, which narrows the race to that moment (see docs/metrics.md).
pub(super) async fn promote(
    storage: &Storage,
    policy: &PromotionPolicy,
    metrics: &RunMetrics,
) -> Result<Decision, TrainError> {
    for attempt in 1..=ATTEMPTS {
        let current = storage.get_champion_versioned().await?;
        let assessment = decide_against(policy, metrics, current.as_ref().map(|(c, _)| c));
        tracing::info!(run_id = %metrics.run_id, summary = %assessment.summary, "decided");
        let decision = assessment.decision;
        let entry = HistoryEntry::for_decision(metrics, &decision, &assessment.summary);
        if !decision.promotes() {
            record_history(storage, metrics, &entry).await;
            return Ok(decision);
        }
        if current
            .as_ref()
            .is_some_and(|(c, _)| c.run_id == metrics.run_id)
        {
            // Promoted before a crash or by an earlier try: nothing to write.
            tracing::info!(run_id = %metrics.run_id, "already the champion");
            record_history(storage, metrics, &entry).await;
            return Ok(decision);
        }
        let record = ChampionFile {
            record: ChampionRecord {
                run_id: metrics.run_id.clone(),
                test_accuracy: metrics.test_accuracy,
                weights_key: metrics.weights_key.clone(),
                promoted_at: Utc::now(),
            },
            summary: assessment.summary,
            comparison: assessment.comparison,
        };
        let expect = match current {
            Some((_, version)) => Expect::Version(version),
            None => Expect::Absent,
        };
        let json = serde_json::to_vec_pretty(&record)
            .map_err(|e| TrainError::Worker(format!("serialising champion.json: {e}")))?;
        match storage.put_if(layout::CHAMPION, json, &expect).await? {
            Conditional::Written | Conditional::WrittenUnguarded => {
                record_history(storage, metrics, &entry).await;
                return Ok(decision);
            }
            Conditional::Conflict => {
                tracing::warn!(
                    attempt,
                    "champion.json changed while the gate was deciding; reading it again"
                );
            }
        }
    }
    Err(TrainError::Worker(format!(
        "champion.json kept changing during {ATTEMPTS} attempts to promote run {}",
        metrics.run_id
    )))
}

/// Appends the decision to `history.json` in the run's runs prefix (`runs/history.json` in the
/// cluster-free mode), once per run: a re-run that decides again leaves the first decision.
/// Best effort: the decision has taken effect (champion.json is the truth), so a history that
/// cannot be written is logged, not fatal.
async fn record_history(storage: &Storage, metrics: &RunMetrics, entry: &HistoryEntry) {
    let Some(key) = layout::history_beside_run(&metrics.weights_key) else {
        return;
    };
    match artifacts::append_history(storage, &key, entry).await {
        Ok(true) => tracing::info!(key, decision = %entry.decision, "recorded in the history"),
        Ok(false) => tracing::debug!(key, "the run is already in the history"),
        Err(e) => tracing::warn!(key, error = %e, "could not record the decision in the history"),
    }
}

/// `champion.json`: the record every reader parses, plus the decision that put the run there
/// in one line and its paired comparison with the champion it replaced (extra fields older
/// readers ignore).
#[derive(Serialize)]
struct ChampionFile {
    #[serde(flatten)]
    record: ChampionRecord,
    summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    comparison: Option<Comparison>,
}

/// The gate, after checking the run was compared with the champion that is in place now: a
/// win over a champion that has since been replaced says nothing about the new one.
fn decide_against(
    policy: &PromotionPolicy,
    metrics: &RunMetrics,
    current: Option<&ChampionRecord>,
) -> Assessment {
    if let Some(c) = current
        && c.run_id != metrics.run_id
        && metrics.champion_run_id.as_deref() != Some(c.run_id.as_str())
    {
        let decision = Decision::Reject(format!(
            "run {} was compared with {} but the champion is now {}; train again to compare with it",
            metrics.run_id,
            metrics
                .champion_run_id
                .as_deref()
                .map_or("no champion".to_owned(), |r| format!("champion {r}")),
            c.run_id
        ));
        let cause = format!("the champion is now {}", c.run_id);
        let summary = artifacts::gate::summarize(&decision, metrics, None, Some(&cause));
        return Assessment {
            decision,
            comparison: None,
            summary,
        };
    }
    artifacts::gate::assess(policy, metrics)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn champion(run_id: &str) -> ChampionRecord {
        ChampionRecord {
            run_id: run_id.into(),
            test_accuracy: 0.5,
            weights_key: format!("runs/{run_id}/model.safetensors"),
            promoted_at: Utc::now(),
        }
    }

    /// Metrics of a run `r2` that beat champion `champion` (or was the first model).
    fn metrics(champion: Option<&str>) -> RunMetrics {
        let json = serde_json::json!({
            "schema_version": 1, "run_id": "r2", "trainer_version": "0.1.0+test",
            "test_accuracy": 0.9, "champion_run_id": champion,
            "champion_test_accuracy": champion.map(|_| 0.5),
            "classes": ["homer", "marge"], "per_class_accuracy": {},
            "confusion_matrix": [[9, 1], [1, 9]],
            "counts": {"train": 40, "val": 8, "test": 20}, "skipped_files": [],
            "epochs_run": 1, "best_epoch": 1, "history": [],
            "hyperparameters": {"image_size": 32, "epochs": 1, "batch_size": 32,
                "learning_rate": 0.001, "label_smoothing": 0.1, "dropout": 0.2, "patience": 3,
                "val_fraction": 0.15, "seed": 7},
            "dataset": "datasets/test", "dataset_fingerprint": "sha256:00",
            "weights_key": "runs/r2/model.safetensors",
            "started_at": "2026-12-01T00:00:00Z", "finished_at": "2026-12-01T00:01:00Z",
            "device": "cpu"
        });
        RunMetrics::from_json(&serde_json::to_vec(&json).unwrap()).unwrap()
    }

    #[test]
    fn a_win_over_a_replaced_champion_does_not_count() {
        let p = PromotionPolicy::default();
        let decide = |m: &RunMetrics, c: Option<&ChampionRecord>| decide_against(&p, m, c).decision;
        let d = decide(&metrics(Some("r1")), Some(&champion("r1")));
        assert_eq!(d.kind(), "Promote", "{d}");
        let a = decide_against(&p, &metrics(Some("r1")), Some(&champion("r9")));
        assert_eq!(a.decision.kind(), "Reject", "{}", a.decision);
        assert!(
            a.decision.reason().contains("champion is now r9"),
            "{}",
            a.decision
        );
        assert_eq!(
            a.summary,
            "Reject: +40.0 pts (20 test faces, no paired predictions); the champion is now r9"
        );
        // A first model when, meanwhile, another run became the first.
        let d = decide(&metrics(None), Some(&champion("r9")));
        assert!(d.reason().contains("compared with no champion"), "{d}");
        // Nobody in place: the comparison cannot be stale.
        assert_eq!(decide(&metrics(None), None).kind(), "FirstModel");
        assert_eq!(decide(&metrics(Some("r1")), None).kind(), "Promote");
        // The run itself is the champion (promoted before a crash): decided as before.
        assert_eq!(
            decide(&metrics(Some("r1")), Some(&champion("r2"))).kind(),
            "Promote"
        );
    }

    #[tokio::test]
    async fn promotes_with_compare_and_swap_and_is_idempotent() {
        let storage = Storage::open("memory:///").unwrap();
        let p = PromotionPolicy::default();
        let first = promote(&storage, &p, &metrics(None)).await.unwrap();
        assert_eq!(first.kind(), "FirstModel");
        let written = storage.get_champion().await.unwrap().unwrap();
        assert_eq!(written.run_id, "r2");
        // The file also says why, in one line.
        let raw: serde_json::Value = storage.get_json(layout::CHAMPION).await.unwrap();
        assert_eq!(raw["summary"], "FirstModel: 90.0% on 20 test faces");
        // Again (a retried Job): nothing rewritten.
        promote(&storage, &p, &metrics(None)).await.unwrap();
        assert_eq!(storage.get_champion().await.unwrap().unwrap(), written);
        // The decision is in the history beside the runs, once.
        let history = artifacts::read_history(&storage, "runs/history.json")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(history.entries.len(), 1);
        let e = &history.entries[0];
        assert_eq!(
            (e.run_id.as_str(), e.decision.as_str(), e.promoted),
            ("r2", "FirstModel", true)
        );
        assert_eq!(e.summary, "FirstModel: 90.0% on 20 test faces");
        assert_eq!(e.test_images, Some(20));
    }

    #[tokio::test]
    async fn rejections_are_recorded_in_the_history_too() {
        let storage = Storage::open("memory:///").unwrap();
        let p = PromotionPolicy {
            min_accuracy: 0.95,
            ..PromotionPolicy::default()
        };
        let d = promote(&storage, &p, &metrics(None)).await.unwrap();
        assert_eq!(d.kind(), "Reject");
        assert!(storage.get_champion().await.unwrap().is_none());
        let history = artifacts::read_history(&storage, "runs/history.json")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(history.entries[0].decision, "Reject");
        assert!(!history.entries[0].promoted);
        assert!(
            history.entries[0].summary.starts_with("Reject:"),
            "{}",
            history.entries[0].summary
        );
    }
}
