//! Prediction drift (`spec.triggers.predictionDrift`): when what people upload shifts, the
//! champion's verdicts shift with it, and no timer sees that.
//!
//! Each inference pod counts the champion's verdicts per class and minute and writes them to
//! `<champion run>/live/<pod>.json` (see `artifacts::live`). Once per poll the operator sums the
//! window over every pod and compares it with the champion's predictions on its own test set
//! (the columns of its confusion matrix) by the population stability index.

use std::time::Duration;

use artifacts::live::{self, LiveVerdicts};
use artifacts::{RunMetrics, Storage, StorageError};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tracing::{info, warn};

use super::{Error, Pass, chrono_of};
use crate::crd::{ChampionStatus, DriftStatus, PredictionDriftTrigger};

/// How soon a look that failed (store down) is tried again.
const LOOK_RETRY: Duration = Duration::from_secs(60);

/// What the champion predicted per class on its test set: the column sums of its confusion
/// matrix (rows are true classes, columns predictions).
pub fn test_prediction_counts(confusion: &[Vec<u64>], classes: usize) -> Vec<u64> {
    let mut counts = vec![0; classes];
    for row in confusion {
        for (c, n) in counts.iter_mut().zip(row) {
            *c += n;
        }
    }
    counts
}

/// Sums the pods' verdicts for `run_id` in `[from, to]`, per class in `classes`' order (a pod
/// of another model version with other classes is left out).
pub fn live_counts(
    files: &[LiveVerdicts],
    run_id: &str,
    classes: &[String],
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> Vec<u64> {
    let mut sum = vec![0; classes.len()];
    for f in files
        .iter()
        .filter(|f| f.run_id == run_id && f.classes == classes)
    {
        for (s, n) in sum.iter_mut().zip(f.window(from, to)) {
            *s += n;
        }
    }
    sum
}

/// Whether a measured drift calls for a run now.
pub fn drifted(
    trigger: &PredictionDriftTrigger,
    drift: &DriftStatus,
    last_start: Option<Timestamp>,
    now: Timestamp,
) -> Result<bool, Timestamp> {
    if drift.verdicts < trigger.min_verdicts || drift.psi <= trigger.max_psi {
        return Ok(false);
    }
    match last_start.map(|t| t + SignedDuration::from_secs(trigger.min_interval_seconds.max(0))) {
        Some(allowed) if now < allowed => Err(allowed),
        _ => Ok(true),
    }
}

impl Pass<'_> {
    /// With `triggers.predictionDrift`: measures the drift when its poll is due and says
    /// whether it calls for a run now.
    pub(super) async fn prediction_drift(
        &mut self,
        last_start: Option<Timestamp>,
    ) -> Result<bool, Error> {
        let Some(trigger) = self.sm.spec.triggers.prediction_drift.clone() else {
            return Ok(false);
        };
        let Some(champion) = self.status.champion.clone() else {
            return Ok(false);
        };
        let poll = Duration::from_secs(trigger.poll_seconds.max(10).unsigned_abs());
        if self.poll_due("drift", poll) {
            match self.measure_drift(&trigger, &champion).await? {
                Ok(Some(drift)) => self.record_drift(drift),
                Ok(None) => {}
                Err(e) => {
                    warn!(model = %self.name, error = %e, "cannot read the live verdicts; drift not measured");
                    self.requeue_within(LOOK_RETRY);
                    return Ok(false);
                }
            }
            self.looked("drift");
            self.requeue_within(poll);
        }
        let Some(drift) = self
            .status
            .drift
            .clone()
            .filter(|d| d.run_id == champion.run_id)
        else {
            return Ok(false);
        };
        Ok(match drifted(&trigger, &drift, last_start, self.now) {
            Ok(yes) => yes,
            Err(allowed) => {
                self.requeue_at(allowed);
                false
            }
        })
    }

    /// Keeps the measurement, but writes it only when the PSI (3 decimals) or the champion
    /// changed: traffic alone must not turn every poll into a status write.
    fn record_drift(&mut self, drift: DriftStatus) {
        let same = self
            .status
            .drift
            .as_ref()
            .is_some_and(|d| d.psi == drift.psi && d.run_id == drift.run_id);
        if !same {
            info!(model = %self.name, psi = drift.psi, verdicts = drift.verdicts, "prediction drift measured");
            self.status.drift = Some(drift);
        }
    }

    /// The drift of the champion's live verdicts over the window; `None` with fewer verdicts
    /// than `minVerdicts` or without a usable metrics.json.
    async fn measure_drift(
        &mut self,
        trigger: &PredictionDriftTrigger,
        champion: &ChampionStatus,
    ) -> Result<Result<Option<DriftStatus>, StorageError>, Error> {
        let store = match self.store().await? {
            Ok(store) => store,
            Err(e) => return Ok(Err(e)),
        };
        let Some(weights) = store.key_of(&champion.model_uri).map(str::to_owned) else {
            return Ok(Ok(None));
        };
        let metrics = match store
            .get_json::<RunMetrics>(&artifacts::layout::metrics_beside(&weights))
            .await
        {
            Ok(m) => m,
            Err(e) if e.is_not_found() => return Ok(Ok(None)),
            Err(e) => return Ok(Err(e)),
        };
        let files = match read_live(&store, live::run_dir_of(&weights)).await {
            Ok(files) => files,
            Err(e) => return Ok(Err(e)),
        };
        let window = SignedDuration::from_secs(trigger.window_seconds.max(60));
        let to = chrono_of(self.now);
        let from = chrono_of(self.now - window);
        let actual = live_counts(&files, &champion.run_id, &metrics.classes, from, to);
        let verdicts: u64 = actual.iter().sum();
        if verdicts < trigger.min_verdicts {
            return Ok(Ok(None));
        }
        let expected = test_prediction_counts(&metrics.confusion_matrix, metrics.classes.len());
        let Some(psi) = live::psi(&expected, &actual) else {
            return Ok(Ok(None));
        };
        Ok(Ok(Some(DriftStatus {
            psi: (psi * 1000.0).round() / 1000.0,
            verdicts,
            window_seconds: window.as_secs(),
            run_id: champion.run_id.clone(),
            observed_at: Time(self.now),
        })))
    }
}

/// Every pod's verdict file of the run in `run_dir`; one that does not parse is skipped.
async fn read_live(store: &Storage, run_dir: &str) -> Result<Vec<LiveVerdicts>, StorageError> {
    let mut files = Vec::new();
    for meta in store.list(&live::live_verdicts_in(run_dir)).await? {
        let key = meta.location.to_string();
        match store.get_json::<LiveVerdicts>(&key).await {
            Ok(f) => files.push(f),
            Err(e) if e.is_not_found() => {}
            Err(StorageError::Malformed { .. }) => {
                warn!(%key, "skipping a live verdict file that does not parse");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
        s.parse().unwrap()
    }

    fn classes() -> Vec<String> {
        ["homer", "marge", "bart", "lisa"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn live_counts_sum_the_window_of_this_champion_over_pods() {
        let mut a = LiveVerdicts {
            pod: "a".into(),
            run_id: "r1".into(),
            classes: classes(),
            ..Default::default()
        };
        a.record(2, at("2026-12-01T00:30:00Z"));
        a.record(2, at("2026-12-01T00:59:00Z"));
        a.record(0, at("2026-11-30T20:00:00Z"));
        let mut b = a.clone();
        b.pod = "b".into();
        let mut other = a.clone();
        other.run_id = "r0".into();
        let counts = live_counts(
            &[a, b, other],
            "r1",
            &classes(),
            at("2026-12-01T00:00:00Z"),
            at("2026-12-01T01:00:00Z"),
        );
        assert_eq!(counts, [0, 0, 4, 0]);
    }

    #[test]
    fn a_drift_starts_a_run_past_the_limit_and_the_interval() {
        let trigger = PredictionDriftTrigger {
            max_psi: 0.25,
            min_verdicts: 100,
            min_interval_seconds: 3600,
            ..Default::default()
        };
        let ts = |s: &str| s.parse::<Timestamp>().unwrap();
        let drift = |psi, verdicts| DriftStatus {
            psi,
            verdicts,
            window_seconds: 3600,
            run_id: "r1".into(),
            observed_at: Time(ts("2026-12-01T00:00:00Z")),
        };
        let now = ts("2026-12-01T02:00:00Z");
        let long_ago = Some(ts("2026-11-01T00:00:00Z"));
        assert_eq!(drifted(&trigger, &drift(0.3, 500), long_ago, now), Ok(true));
        assert_eq!(
            drifted(&trigger, &drift(0.2, 500), long_ago, now),
            Ok(false)
        );
        assert_eq!(drifted(&trigger, &drift(0.3, 99), long_ago, now), Ok(false));
        assert_eq!(
            drifted(
                &trigger,
                &drift(0.3, 500),
                Some(ts("2026-12-01T01:30:00Z")),
                now
            ),
            Err(ts("2026-12-01T02:30:00Z"))
        );
    }

    #[test]
    fn test_predictions_are_the_confusion_matrix_columns() {
        let confusion = [
            vec![5, 1, 0, 0],
            vec![0, 6, 0, 0],
            vec![0, 0, 4, 2],
            vec![0, 0, 0, 6],
        ];
        assert_eq!(test_prediction_counts(&confusion, 4), [5, 7, 4, 8]);
    }
}
