//! What the inference pods tell the operator about live traffic, through the store: no pod
//! exec, no Prometheus, no new RBAC. Each pod writes its own file every few seconds and never
//! reads another's; the operator lists and merges them.
//!
//! - `<runs prefix>/shadow.json` ([`ShadowAssignment`]): written by the operator while a
//!   candidate is shadowed; pods poll it (with its ETag) and hot-load the candidate.
//! - `<candidate run dir>/shadow/<pod>.json` ([`ShadowReport`]): what a pod saw scoring the
//!   candidate beside the champion on sampled live requests.
//! - `<champion run dir>/live/<pod>.json` ([`LiveVerdicts`]): the champion's verdicts per
//!   class and minute, for prediction drift.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The file of the model's runs prefix that names the candidate being shadowed.
pub const SHADOW_ASSIGNMENT: &str = "shadow.json";
/// Upper bounds (ms) of the latency histogram's buckets; the last bucket is everything above.
pub const LATENCY_BOUNDS_MS: [f64; 16] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 35.0, 50.0, 75.0, 100.0, 150.0, 250.0, 400.0, 600.0, 1000.0, 2500.0,
    10000.0,
];

/// `<runs prefix>/shadow.json`.
pub fn shadow_assignment_in(runs_prefix: &str) -> String {
    format!("{}/{SHADOW_ASSIGNMENT}", runs_prefix.trim_end_matches('/'))
}

/// The directory of the run whose weights are at `weights_key` (`…/<run>/model.safetensors`).
pub fn run_dir_of(weights_key: &str) -> &str {
    weights_key.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// `<run dir>/shadow/`: the pods' reports on the candidate in that run dir.
pub fn shadow_reports_in(run_dir: &str) -> String {
    format!("{}/shadow/", run_dir.trim_end_matches('/'))
}

/// `<run dir>/live/`: the pods' verdict counts for the champion in that run dir.
pub fn live_verdicts_in(run_dir: &str) -> String {
    format!("{}/live/", run_dir.trim_end_matches('/'))
}

/// Where a pod reports on the candidate whose weights are at `weights` (a key or a full URL;
/// the result is of the same kind): `<run dir>/shadow/<pod>.json`.
pub fn shadow_report_of(weights: &str, pod: &str) -> String {
    pod_file(&shadow_reports_in(run_dir_of(weights)), pod)
}

/// Where a pod counts the verdicts of the champion whose weights are at `weights` (a key or a
/// full URL): `<run dir>/live/<pod>.json`.
pub fn live_verdicts_of(weights: &str, pod: &str) -> String {
    pod_file(&live_verdicts_in(run_dir_of(weights)), pod)
}

/// A pod's file name: its name, reduced to what is safe in a key.
pub fn pod_file(dir: &str, pod: &str) -> String {
    let safe: String = pod
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{}/{safe}.json", dir.trim_end_matches('/'))
}

/// The candidate pods shadow, as the operator assigns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowAssignment {
    /// The candidate's run id.
    pub run_id: String,
    /// Full URL of its weights (its model.onnx and metrics.json lie beside them).
    pub model_uri: String,
    /// Share of answered requests (0–1) also scored by the candidate.
    pub sample_rate: f64,
    /// When the shadow stage began; reports from before it are ignored.
    pub started_at: DateTime<Utc>,
}

/// Request latencies in fixed buckets ([`LATENCY_BOUNDS_MS`]), mergeable across pods.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// Count per bucket: `counts[i]` holds latencies ≤ `LATENCY_BOUNDS_MS[i]` (and above the
    /// previous bound); the extra last bucket holds the rest.
    pub counts: Vec<u64>,
}

impl LatencyHistogram {
    pub fn record(&mut self, ms: f64) {
        if self.counts.len() != LATENCY_BOUNDS_MS.len() + 1 {
            self.counts.resize(LATENCY_BOUNDS_MS.len() + 1, 0);
        }
        let i = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.counts[i] += 1;
    }

    pub fn merge(&mut self, other: &Self) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The upper bound of the bucket holding quantile `q` (0–1): an over-estimate by at most
    /// one bucket. `None` when empty; infinite when it falls in the open last bucket.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }
}

/// What one pod saw shadowing a candidate, cumulative since it loaded it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ShadowReport {
    /// The pod that wrote it.
    pub pod: String,
    /// The candidate scored.
    pub candidate_run_id: String,
    /// The champion that answered.
    pub champion_run_id: String,
    /// When the pod loaded the candidate.
    pub started_at: DateTime<Utc>,
    /// When this file was written.
    pub updated_at: DateTime<Utc>,
    /// Answered requests sampled for the shadow (scored or dropped).
    pub sampled: u64,
    /// Sampled requests scored by the candidate.
    pub scored: u64,
    /// Sampled requests dropped unscored (the shadow queue was full or the pod under pressure).
    pub dropped: u64,
    /// Faces both models gave a verdict on.
    pub faces: u64,
    /// Faces whose top-1 verdict differs between champion and candidate.
    pub disagreements: u64,
    /// Requests the candidate failed on (an inference error, a bad output).
    pub errors: u64,
    /// Why the pod could not load the candidate (corrupt file, checksum, pipeline mismatch);
    /// it then scores nothing and keeps answering with the champion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_error: Option<String>,
    /// The champion's classification time per scored request.
    pub champion_latency: LatencyHistogram,
    /// The candidate's, on the same inputs.
    pub candidate_latency: LatencyHistogram,
}

impl ShadowReport {
    /// Adds another pod's counts (for the operator's aggregate).
    pub fn merge(&mut self, other: &Self) {
        self.sampled += other.sampled;
        self.scored += other.scored;
        self.dropped += other.dropped;
        self.faces += other.faces;
        self.disagreements += other.disagreements;
        self.errors += other.errors;
        if self.load_error.is_none() {
            self.load_error.clone_from(&other.load_error);
        }
        self.champion_latency.merge(&other.champion_latency);
        self.candidate_latency.merge(&other.candidate_latency);
        self.updated_at = self.updated_at.max(other.updated_at);
    }
}

/// The champion's verdicts in one pod, per minute: `minutes[unix minute][class]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LiveVerdicts {
    /// The pod that wrote it.
    pub pod: String,
    /// The champion's run id.
    pub run_id: String,
    /// The model's classes, in its output order.
    pub classes: Vec<String>,
    /// When this file was written.
    pub updated_at: DateTime<Utc>,
    /// Verdicts per class, per minute since the epoch (minutes older than a day are dropped).
    pub minutes: BTreeMap<i64, Vec<u64>>,
}

/// How long a pod keeps per-minute verdict counts.
pub const LIVE_RETENTION_MINUTES: i64 = 24 * 60;

impl LiveVerdicts {
    /// Counts one verdict of class `class` at `at`, and forgets minutes past retention.
    pub fn record(&mut self, class: usize, at: DateTime<Utc>) {
        let minute = at.timestamp().div_euclid(60);
        let n = self.classes.len().max(class + 1);
        let counts = self.minutes.entry(minute).or_insert_with(|| vec![0; n]);
        if counts.len() < n {
            counts.resize(n, 0);
        }
        counts[class] += 1;
        let oldest = minute - LIVE_RETENTION_MINUTES;
        self.minutes.retain(|m, _| *m > oldest);
    }

    /// Counts the verdicts `classes` (one per face) at `at`. Unlike calling [`Self::record`]
    /// per face, it forgets old minutes only when a new minute starts, so the request path
    /// pays for the retention sweep once a minute instead of on every verdict.
    pub fn record_all(&mut self, classes: &[usize], at: DateTime<Utc>) {
        let Some(&top) = classes.iter().max() else {
            return;
        };
        let minute = at.timestamp().div_euclid(60);
        let n = self.classes.len().max(top + 1);
        let new_minute = !self.minutes.contains_key(&minute);
        let counts = self.minutes.entry(minute).or_insert_with(|| vec![0; n]);
        if counts.len() < n {
            counts.resize(n, 0);
        }
        for &c in classes {
            counts[c] += 1;
        }
        if new_minute {
            let oldest = minute - LIVE_RETENTION_MINUTES;
            self.minutes.retain(|m, _| *m > oldest);
        }
    }

    /// Verdicts per class in the minutes of `[from, to]`.
    pub fn window(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<u64> {
        let (a, b) = (
            from.timestamp().div_euclid(60),
            to.timestamp().div_euclid(60),
        );
        let mut sum = vec![0; self.classes.len()];
        for counts in self.minutes.range(a..=b).map(|(_, c)| c) {
            if sum.len() < counts.len() {
                sum.resize(counts.len(), 0);
            }
            for (s, c) in sum.iter_mut().zip(counts) {
                *s += c;
            }
        }
        sum
    }
}

/// Population stability index of `actual` against `expected` counts per class:
/// Σ (a − e) · ln(a / e) over the classes' shares. Both are smoothed with half a count per
/// class so an empty class does not make it infinite. 0 for identical shares; by the usual
/// rule of thumb < 0.1 is stable, 0.1–0.25 a moderate shift, > 0.25 a large one. `None` when
/// either side is empty or they have different classes.
pub fn psi(expected: &[u64], actual: &[u64]) -> Option<f64> {
    if expected.len() != actual.len() || expected.is_empty() {
        return None;
    }
    let (te, ta): (u64, u64) = (expected.iter().sum(), actual.iter().sum());
    if te == 0 || ta == 0 {
        return None;
    }
    let k = expected.len() as f64;
    let share = |c: u64, total: u64| (c as f64 + 0.5) / (total as f64 + 0.5 * k);
    Some(
        expected
            .iter()
            .zip(actual)
            .map(|(&e, &a)| {
                let (e, a) = (share(e, te), share(a, ta));
                (a - e) * (a / e).ln()
            })
            .sum(),
    )
}

/// Counts per class of `predictions` (class indices) over `classes` classes.
pub fn class_counts(predictions: &[u8], classes: usize) -> Vec<u64> {
    let mut counts = vec![0; classes];
    for &p in predictions {
        if let Some(c) = counts.get_mut(usize::from(p)) {
            *c += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn psi_is_zero_for_the_same_shares_and_large_for_one_class() {
        assert!(psi(&[25, 25, 25, 25], &[50, 50, 50, 50]).unwrap().abs() < 1e-12);
        // A known value: shares (0.25 ×4) against (0.4, 0.3, 0.2, 0.1), without smoothing
        // it is 0.2282; half a count on 1000 changes the third decimal at most.
        let moderate = psi(&[250, 250, 250, 250], &[400, 300, 200, 100]).unwrap();
        assert!((moderate - 0.2282).abs() < 2e-3, "{moderate}");
        let one_class = psi(&[25, 25, 25, 25], &[0, 0, 100, 0]).unwrap();
        assert!(one_class > 2.0, "{one_class}");
        assert_eq!(psi(&[1, 2], &[0, 0]), None);
        assert_eq!(psi(&[1, 2], &[1, 2, 3]), None);
    }

    #[test]
    fn latency_quantiles_are_bucket_upper_bounds_and_merge_across_pods() {
        let mut a = LatencyHistogram::default();
        for ms in [0.5, 3.0, 4.0, 30.0] {
            a.record(ms);
        }
        assert_eq!(a.quantile_ms(0.5), Some(5.0));
        assert_eq!(a.quantile_ms(1.0), Some(35.0));
        let mut b = LatencyHistogram::default();
        b.record(20_000.0);
        a.merge(&b);
        assert_eq!(a.total(), 5);
        assert_eq!(a.quantile_ms(1.0), Some(f64::INFINITY));
        assert_eq!(LatencyHistogram::default().quantile_ms(0.5), None);
    }

    #[test]
    fn live_verdicts_sum_a_window_of_minutes_and_forget_old_ones() {
        let mut v = LiveVerdicts {
            classes: vec!["homer".into(), "marge".into()],
            ..Default::default()
        };
        v.record(0, at("2026-12-01T00:00:10Z"));
        v.record(1, at("2026-12-01T00:00:50Z"));
        v.record(1, at("2026-12-01T00:05:00Z"));
        assert_eq!(
            v.window(at("2026-12-01T00:00:00Z"), at("2026-12-01T00:01:00Z")),
            [1, 1]
        );
        assert_eq!(
            v.window(at("2026-12-01T00:00:00Z"), at("2026-12-01T01:00:00Z")),
            [1, 2]
        );
        v.record(0, at("2026-12-02T00:04:00Z"));
        assert_eq!(v.minutes.len(), 2, "a day later the first minute is gone");
    }

    #[test]
    fn record_all_counts_every_face_like_record() {
        let classes = vec!["homer".into(), "marge".into(), "bart".into()];
        let (mut one, mut all) = (
            LiveVerdicts {
                classes: classes.clone(),
                ..Default::default()
            },
            LiveVerdicts {
                classes,
                ..Default::default()
            },
        );
        for (faces, t) in [
            (vec![0, 2, 2], "2026-12-01T00:00:10Z"),
            (vec![], "2026-12-01T00:00:20Z"),
            (vec![1], "2026-12-01T00:03:00Z"),
            (vec![0], "2026-12-02T00:04:00Z"),
        ] {
            for &f in &faces {
                one.record(f, at(t));
            }
            all.record_all(&faces, at(t));
        }
        assert_eq!(one.minutes, all.minutes);
        assert_eq!(
            all.minutes.len(),
            1,
            "a day later the first minutes are gone"
        );
    }

    #[test]
    fn reports_merge_and_keys_are_safe() {
        let mut a = ShadowReport {
            scored: 2,
            disagreements: 1,
            ..Default::default()
        };
        let b = ShadowReport {
            scored: 3,
            dropped: 4,
            updated_at: at("2026-12-01T00:00:00Z"),
            ..Default::default()
        };
        a.merge(&b);
        assert_eq!((a.scored, a.dropped, a.disagreements), (5, 4, 1));
        assert_eq!(a.updated_at, at("2026-12-01T00:00:00Z"));
        assert_eq!(
            pod_file("runs/ns/m/r1/shadow/", "homer-inference-7d9/x"),
            "runs/ns/m/r1/shadow/homer-inference-7d9_x.json"
        );
        assert_eq!(run_dir_of("runs/ns/m/r1/model.safetensors"), "runs/ns/m/r1");
        assert_eq!(shadow_assignment_in("runs/ns/m/"), "runs/ns/m/shadow.json");
        assert_eq!(
            shadow_report_of("s3://b/runs/ns/m/r2/model.safetensors", "pod-1"),
            "s3://b/runs/ns/m/r2/shadow/pod-1.json"
        );
        assert_eq!(
            live_verdicts_of("runs/ns/m/r1/model.safetensors", "pod-1"),
            "runs/ns/m/r1/live/pod-1.json"
        );
    }
}
