//! Shadow stage: a candidate the offline gate would promote is scored on live traffic beside
//! the champion before it replaces it (`spec.promotion.shadow`).
//!
//! The operator names the candidate in the model's `shadow.json`; every inference pod loads
//! it beside the champion, scores sampled requests off the response path and writes what it
//! saw to `<candidate run>/shadow/<pod>.json` (see `artifacts::live`). Each pass merges those
//! files and judges them with [`judge`]; the decision is recorded in the status before the
//! Deployment rolls, as every other decision is.

use std::time::Duration;

use artifacts::live::{self, ShadowAssignment, ShadowReport};
use artifacts::{RunMetrics, StorageError};
use jiff::SignedDuration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::{Counted, Effect, Error, Pass, chrono_of};
use crate::crd::{
    CandidateStatus, HistoryEntry, OnInconclusive, ShadowSpec, ShadowStatus, Verdict,
};

/// How often a model in its shadow stage is looked at (pods flush every ~10 s).
const SHADOW_REQUEUE: Duration = Duration::from_secs(15);
/// A latency in the open last bucket (over 10 s), as a finite number for the status.
const OVER_LAST_BUCKET_MS: f64 = 100_000.0;

/// What the reports say now.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// Not enough live requests yet, and time left.
    Continue,
    /// Promote: it held up on live traffic (or the stage was inconclusive with
    /// `onInconclusive: Promote`).
    Promote(String),
    /// Keep the champion; the reason's name and its sentence.
    Reject(&'static str, String),
}

/// Merges the pods' reports on `run_id` written since the stage began (an older file is a
/// pod's report from an earlier stage of the same run). Returns the sum and how many pods.
pub fn merge_reports(
    reports: &[ShadowReport],
    run_id: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> (ShadowReport, u64) {
    let mut merged = ShadowReport::default();
    let mut pods = 0;
    for r in reports
        .iter()
        .filter(|r| r.candidate_run_id == run_id && r.updated_at >= since)
    {
        merged.merge(r);
        pods += 1;
    }
    (merged, pods)
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn p95(h: &live::LatencyHistogram) -> Option<f64> {
    h.quantile_ms(0.95).map(|ms| {
        if ms.is_finite() {
            ms
        } else {
            OVER_LAST_BUCKET_MS
        }
    })
}

/// The status form of merged reports.
pub fn shadow_status(merged: &ShadowReport, pods: u64) -> ShadowStatus {
    ShadowStatus {
        pods,
        sampled: merged.sampled,
        scored: merged.scored,
        dropped: merged.dropped,
        disagreement: round3(share(merged.disagreements, merged.faces)),
        error_rate: round3(share(merged.errors, merged.scored)),
        champion_p95_ms: p95(&merged.champion_latency),
        candidate_p95_ms: p95(&merged.candidate_latency),
        load_error: merged.load_error.clone(),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The decision table of the shadow stage: a candidate no pod can load is rejected at once;
/// with `minRequests` scored, errors, disagreement and latency are checked in that order; past
/// `maxDurationSeconds` without them the stage is inconclusive.
pub fn judge(spec: &ShadowSpec, s: &ShadowStatus, elapsed: SignedDuration) -> Judgement {
    if let Some(e) = &s.load_error {
        return Judgement::Reject(
            "CandidateUnloadable",
            format!("an inference pod cannot load the candidate: {e}"),
        );
    }
    let requests = format!("{} live requests", s.scored);
    if s.scored >= spec.min_requests {
        if s.error_rate > spec.max_error_rate {
            return Judgement::Reject(
                "Errors",
                format!(
                    "the candidate failed on {:.1}% of {requests} (at most {:.1}%)",
                    s.error_rate * 100.0,
                    spec.max_error_rate * 100.0
                ),
            );
        }
        if s.disagreement > spec.max_disagreement {
            return Judgement::Reject(
                "Disagreement",
                format!(
                    "candidate and champion disagree on {:.1}% of the faces in {requests} (at most {:.1}%)",
                    s.disagreement * 100.0,
                    spec.max_disagreement * 100.0
                ),
            );
        }
        if let (Some(cand), Some(champ)) = (s.candidate_p95_ms, s.champion_p95_ms)
            && champ > 0.0
            && cand / champ > spec.max_latency_ratio
        {
            return Judgement::Reject(
                "Latency",
                format!(
                    "the candidate's p95 of {cand} ms is {:.2}× the champion's {champ} ms on {requests} (at most {}×)",
                    cand / champ,
                    spec.max_latency_ratio
                ),
            );
        }
        return Judgement::Promote(format!(
            "{requests}, {:.1}% disagreement, p95 {} vs {} ms, {:.1}% errors",
            s.disagreement * 100.0,
            s.candidate_p95_ms.map_or("-".into(), |v| v.to_string()),
            s.champion_p95_ms.map_or("-".into(), |v| v.to_string()),
            s.error_rate * 100.0
        ));
    }
    if elapsed >= SignedDuration::from_secs(spec.max_duration_seconds) {
        let why = format!(
            "inconclusive: {} of the {} live requests needed in {}s",
            s.scored, spec.min_requests, spec.max_duration_seconds
        );
        return match spec.on_inconclusive {
            OnInconclusive::Reject => Judgement::Reject("Inconclusive", why),
            OnInconclusive::Promote => Judgement::Promote(format!(
                "{why}; promoted on the offline gate (onInconclusive: Promote)"
            )),
        };
    }
    Judgement::Continue
}

impl Pass<'_> {
    /// The gate would promote `candidate`: it goes to its shadow stage instead. The pods learn
    /// about it from `shadow.json`, written once this is recorded ([`Pass::publish_shadow`]).
    pub(super) fn begin_shadow(&mut self, candidate: CandidateStatus, summary: &str) {
        let note = format!(
            "run {}: {summary} — scored on live traffic beside champion {} before it may replace it",
            candidate.run_id, candidate.champion_run_id
        );
        info!(model = %self.name, run = %candidate.run_id, "shadow stage begins");
        self.emit(EventType::Normal, "ShadowStarted", "Shadow", note);
        self.status.candidate = Some(candidate);
        self.requeue_within(SHADOW_REQUEUE);
    }

    /// The shadow step of a pass: merges the pods' reports and decides when they allow it.
    pub(super) async fn shadow(&mut self) -> Result<(), Error> {
        let Some(candidate) = self.status.candidate.clone() else {
            return Ok(());
        };
        let serving = self.status.champion.as_ref().map(|c| c.run_id.as_str());
        if serving != Some(candidate.champion_run_id.as_str()) {
            let reason = format!(
                "the champion changed to {} while run {} was shadowed against {}: nothing to decide",
                serving.unwrap_or("none"),
                candidate.run_id,
                candidate.champion_run_id
            );
            self.end_shadow(&candidate, Verdict::Superseded, reason, None)
                .await;
            return Ok(());
        }
        let spec = self.sm.spec.promotion.shadow.clone();
        if !spec.enabled {
            let reason = "the shadow stage was switched off: promoted on the offline gate".into();
            self.end_shadow(&candidate, Verdict::ShadowPromote, reason, None)
                .await;
            return Ok(());
        }
        let reports = match self.shadow_reports(&candidate).await? {
            Ok(reports) => reports,
            Err(e) => {
                warn!(model = %self.name, run = %candidate.run_id, error = %e, "cannot read the shadow reports; the stage goes on");
                self.requeue_within(SHADOW_REQUEUE);
                return Ok(());
            }
        };
        let (merged, pods) = merge_reports(
            &reports,
            &candidate.run_id,
            chrono_of(candidate.started_at.0),
        );
        let status = shadow_status(&merged, pods);
        let elapsed = self.now.duration_since(candidate.started_at.0);
        match judge(&spec, &status, elapsed) {
            Judgement::Continue => {
                if let Some(c) = self.status.candidate.as_mut() {
                    c.shadow = Some(status);
                }
                self.requeue_within(SHADOW_REQUEUE);
            }
            Judgement::Promote(why) => {
                let reason = format!("ShadowPromote: {why}");
                self.end_shadow(&candidate, Verdict::ShadowPromote, reason, Some(status))
                    .await;
            }
            Judgement::Reject(name, why) => {
                let reason = format!("ShadowReject({name}): {why}");
                self.end_shadow(&candidate, Verdict::ShadowReject, reason, Some(status))
                    .await;
            }
        }
        Ok(())
    }

    /// Every pod's report on the candidate. A report that cannot be parsed is skipped: one
    /// pod's bad file must not stall the stage.
    async fn shadow_reports(
        &mut self,
        candidate: &CandidateStatus,
    ) -> Result<Result<Vec<ShadowReport>, StorageError>, Error> {
        let store = match self.store().await? {
            Ok(store) => store,
            Err(e) => return Ok(Err(e)),
        };
        let Some(key) = store.key_of(&candidate.model_uri) else {
            return Ok(Ok(Vec::new()));
        };
        let dir = live::shadow_reports_in(live::run_dir_of(key));
        let listed = match store.list(&dir).await {
            Ok(listed) => listed,
            Err(e) => return Ok(Err(e)),
        };
        let mut reports = Vec::new();
        for meta in listed {
            let file = meta.location.to_string();
            match store.get_json::<ShadowReport>(&file).await {
                Ok(r) => reports.push(r),
                Err(e) if e.is_not_found() => {}
                Err(StorageError::Malformed { .. }) => {
                    warn!(model = %self.name, %file, "skipping a shadow report that does not parse");
                }
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(reports))
    }

    /// Records the end of the stage: the run's decision, the history, the champion when it
    /// won, and what is announced and counted once that is written.
    async fn end_shadow(
        &mut self,
        candidate: &CandidateStatus,
        verdict: Verdict,
        reason: String,
        shadow: Option<ShadowStatus>,
    ) {
        let run_id = candidate.run_id.clone();
        info!(model = %self.name, run = %run_id, %verdict, %reason, "shadow stage decided");
        let mut champion_accuracy = None;
        if let Some(run) = self.status.last_run.as_mut().filter(|r| r.run_id == run_id) {
            run.decision = Some(verdict.clone());
            run.reason = Some(reason.clone());
            run.summary = Some(reason.clone());
            run.shadow.clone_from(&shadow);
            champion_accuracy = run.champion_accuracy;
        }
        self.record(HistoryEntry {
            run_id: run_id.clone(),
            decision: verdict.clone(),
            reason: reason.clone(),
            accuracy: Some(candidate.accuracy),
            champion_accuracy,
            dry_run: false,
            decided_at: Time(self.now),
        });
        self.status.candidate = None;
        match &verdict {
            Verdict::ShadowPromote => {
                let note = format!("run {run_id}: {reason}");
                self.promote(
                    &run_id,
                    candidate.accuracy,
                    candidate.model_uri.clone(),
                    note,
                );
            }
            Verdict::ShadowReject => {
                self.count(Counted::Rejection);
                self.emit(
                    EventType::Normal,
                    "ShadowRejected",
                    "Shadow",
                    format!("run {run_id}: {reason}"),
                );
            }
            _ => {
                self.emit(EventType::Normal, "Superseded", "Shadow", reason.clone());
            }
        }
        if verdict != Verdict::Superseded {
            self.store_history(candidate, verdict, &reason).await;
        }
    }

    /// The decision for the model card's history.json, from the candidate's metrics.json.
    async fn store_history(&mut self, candidate: &CandidateStatus, verdict: Verdict, reason: &str) {
        let Ok(Ok(store)) = self.store().await else {
            return;
        };
        let Some(key) = store
            .key_of(&candidate.model_uri)
            .map(artifacts::layout::metrics_beside)
        else {
            return;
        };
        match store.get_json::<RunMetrics>(&key).await {
            Ok(m) => {
                let entry = artifacts::HistoryEntry::new(
                    &m,
                    verdict.as_str(),
                    verdict == Verdict::ShadowPromote,
                    reason,
                );
                self.effects.push(Effect::History(Box::new(entry)));
            }
            Err(e) => {
                warn!(model = %self.name, %key, error = %e, "cannot read the candidate's metrics for history.json");
            }
        }
    }

    /// Makes `shadow.json` say what the recorded status says: the candidate while there is
    /// one, nothing otherwise. Written after the status records the stage, so pods never
    /// shadow a candidate the operator has not committed to. Best effort: a store error is
    /// logged and tried again on the next pass.
    pub(super) async fn publish_shadow(&mut self) {
        let wanted = self.saved.candidate.clone();
        let key = format!("{}/{}", self.ns, self.name);
        let wanted_id = wanted.as_ref().map(|c| c.run_id.clone());
        if !self.sm.spec.promotion.shadow.enabled && wanted.is_none()
            || self.ctx.shadow_published(&key) == Some(wanted_id.clone())
        {
            return;
        }
        let Ok(Ok(store)) = self.store().await else {
            self.requeue_within(SHADOW_REQUEUE);
            return;
        };
        let Ok(runs) = crate::builders::runs_prefix(self.sm) else {
            return;
        };
        let file = live::shadow_assignment_in(&runs);
        let written = match &wanted {
            Some(c) => {
                let assignment = ShadowAssignment {
                    run_id: c.run_id.clone(),
                    model_uri: c.model_uri.clone(),
                    sample_rate: self.sm.spec.promotion.shadow.sample_rate,
                    started_at: chrono_of(c.started_at.0),
                };
                store.put_json(&file, &assignment).await
            }
            None => match store.delete(&file).await {
                Err(e) if e.is_not_found() => Ok(()),
                other => other,
            },
        };
        match written {
            Ok(()) => self.ctx.shadow_publish(key, wanted_id),
            Err(e) => {
                warn!(model = %self.name, %file, error = %e, "cannot update shadow.json; trying again");
                self.requeue_within(SHADOW_REQUEUE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn status(scored: u64, disagreement: f64, error_rate: f64, p95: (f64, f64)) -> ShadowStatus {
        ShadowStatus {
            pods: 2,
            sampled: scored,
            scored,
            dropped: 0,
            disagreement,
            error_rate,
            champion_p95_ms: Some(p95.0),
            candidate_p95_ms: Some(p95.1),
            load_error: None,
        }
    }

    fn spec() -> ShadowSpec {
        ShadowSpec {
            enabled: true,
            min_requests: 50,
            max_duration_seconds: 600,
            ..ShadowSpec::default()
        }
    }

    #[test]
    fn the_decision_table() {
        let early = SignedDuration::from_secs(60);
        let late = SignedDuration::from_secs(600);
        let ok = status(50, 0.05, 0.0, (10.0, 10.0));
        assert!(matches!(judge(&spec(), &ok, early), Judgement::Promote(_)));
        assert_eq!(
            judge(&spec(), &status(49, 0.05, 0.0, (10.0, 10.0)), early),
            Judgement::Continue
        );
        let reject = |s: &ShadowStatus| match judge(&spec(), s, early) {
            Judgement::Reject(name, _) => name,
            other => panic!("{other:?}"),
        };
        assert_eq!(reject(&status(50, 0.05, 0.02, (10.0, 10.0))), "Errors");
        assert_eq!(reject(&status(50, 0.21, 0.0, (10.0, 10.0))), "Disagreement");
        assert_eq!(reject(&status(50, 0.05, 0.0, (10.0, 20.0))), "Latency");
        // Errors come first: a failing candidate is reported as such, whatever else.
        assert_eq!(reject(&status(50, 0.9, 0.5, (10.0, 90.0))), "Errors");
        let unloadable = ShadowStatus {
            load_error: Some("checksum mismatch".into()),
            ..status(0, 0.0, 0.0, (1.0, 1.0))
        };
        assert_eq!(reject(&unloadable), "CandidateUnloadable");
        // Out of time without enough requests: what the spec says.
        let few = status(3, 0.0, 0.0, (10.0, 10.0));
        assert!(matches!(
            judge(&spec(), &few, late),
            Judgement::Reject("Inconclusive", _)
        ));
        let lenient = ShadowSpec {
            on_inconclusive: OnInconclusive::Promote,
            ..spec()
        };
        assert!(matches!(judge(&lenient, &few, late), Judgement::Promote(_)));
    }

    #[test]
    fn reports_of_other_runs_and_earlier_stages_are_ignored() {
        let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
        let report = |run: &str, updated: &str, scored: u64| ShadowReport {
            candidate_run_id: run.into(),
            updated_at: at(updated),
            scored,
            faces: scored,
            disagreements: 1,
            ..Default::default()
        };
        let reports = [
            report("r2", "2026-12-01T00:01:00Z", 10),
            report("r2", "2026-12-01T00:02:00Z", 20),
            report("r2", "2026-11-30T00:00:00Z", 500),
            report("r1", "2026-12-01T00:02:00Z", 700),
        ];
        let (merged, pods) = merge_reports(&reports, "r2", at("2026-12-01T00:00:00Z"));
        assert_eq!((merged.scored, pods), (30, 2));
        let s = shadow_status(&merged, pods);
        assert_eq!(s.disagreement, round3(2.0 / 30.0));
        assert_eq!(s.champion_p95_ms, None, "no latencies recorded");
    }
}
