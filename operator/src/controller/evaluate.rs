//! Evaluate: turn a finished run into a decision, in memory. `record` persists it before
//! anything acts on it, and events and counts wait for that write.

use std::time::Duration;

use artifacts::{Decision, PromotionPolicy, RunMetrics, StorageError, layout};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::observe::run_id_of;
use super::validate::{Refusal, Served, served_metrics, served_summary};
use super::{
    Concern, Counted, Effect, Error, JobState, Pass, STORAGE_UNREACHABLE, failed_for_good,
};
use crate::builders::{self, RUNS_PREFIX_ANNOTATION};
use crate::crd::{
    CandidateStatus, ChampionStatus, ComparisonStatus, HistoryEntry, RunStatus, Verdict,
};

/// Clocks of the trainer's node and of the API server may disagree by this much before a
/// metrics.json counts as older than its Job.
const CLOCK_SKEW: SignedDuration = SignedDuration::from_secs(300);

/// What a finished run's artifacts say.
#[derive(Debug)]
enum Outcome {
    /// Valid metrics written for this run, compared with the current champion.
    Valid {
        metrics: Box<RunMetrics>,
        model_uri: String,
    },
    /// The run has no usable result: recorded as `Failed` with this reason.
    Unusable(&'static str, String),
    /// The store could not be read: retried until the deadline, then `Failed`.
    Unreachable(String),
    /// The served-path validation refused the candidate: a `Reject`, nothing rolls.
    Refused(Refusal),
    /// The champion changed while the run trained: `Superseded` with this reason.
    Superseded(String),
}

/// Why a finished run is not put before the gate.
enum Unfit {
    /// No usable result: `Failed` with this reason.
    Failed(&'static str, String),
    /// The served-path validation refused it: `Reject`.
    Refused(Refusal),
    /// Compared with a champion no longer in service: `Superseded`.
    Superseded(String),
}

/// When the Job finished, as the Job controller recorded it.
pub(super) fn finished_at(job: &Job) -> Option<Timestamp> {
    let status = job.status.as_ref()?;
    if let Some(t) = &status.completion_time {
        return Some(t.0);
    }
    status
        .conditions
        .as_ref()?
        .iter()
        .filter(|c| c.status == "True" && (c.type_ == "Complete" || c.type_ == "Failed"))
        .find_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

/// Wait before asking an unreachable store again: a quarter of the time it has been down,
/// between 30 s and 10 min, so a blip is retried quickly and a long outage is not hammered.
fn store_retry_delay(down_for: SignedDuration) -> Duration {
    let quarter = Duration::try_from(down_for / 4).unwrap_or(Duration::ZERO);
    quarter.clamp(Duration::from_secs(30), Duration::from_secs(600))
}

impl Pass<'_> {
    /// Decides on a finished run, exactly once. Returns false when no decision could be taken
    /// yet (the store is unreachable and the deadline has not passed): the run stays pending
    /// and no new run may start before it is decided.
    pub(super) async fn evaluate(&mut self, job: &Job, state: JobState) -> Result<bool, Error> {
        let run_id = run_id_of(job);
        let outcome = match state {
            JobState::Active => return Ok(false),
            JobState::Failed(why) => Outcome::Unusable(
                "JobFailed",
                format!("training Job {} failed: {why}", job.name_any()),
            ),
            JobState::Abandoned { reason, message } => Outcome::Unusable(reason, message),
            JobState::Succeeded => self.read_result(job, &run_id).await?,
        };
        // Before the gate: the served-path validation of a candidate with valid metrics.
        let (outcome, served, finished) = match outcome {
            Outcome::Valid { metrics, model_uri } => {
                match self.served(job, &run_id, &model_uri).await? {
                    Served::Off => (Outcome::Valid { metrics, model_uri }, None, None),
                    Served::Waiting => return Ok(false),
                    Served::Passed(report) => {
                        (Outcome::Valid { metrics, model_uri }, Some(report), None)
                    }
                    Served::Refused(refusal) => (Outcome::Refused(refusal), None, None),
                    Served::Unreachable { message, since } => {
                        (Outcome::Unreachable(message), None, Some(since))
                    }
                }
            }
            other => (other, None, None),
        };
        if !matches!(outcome, Outcome::Unreachable(_)) {
            self.clear(
                Concern::StoreUnavailable,
                "StoreReachable",
                &format!("the result of run {run_id} was read"),
            );
        }
        let result = match outcome {
            Outcome::Valid { metrics, model_uri } => Ok((metrics, model_uri)),
            Outcome::Refused(r) => Err(Unfit::Refused(r)),
            Outcome::Unusable(why, message) => Err(Unfit::Failed(why, message)),
            Outcome::Superseded(message) => Err(Unfit::Superseded(message)),
            Outcome::Unreachable(message) => {
                let finished = finished.or(finished_at(job)).unwrap_or(self.now);
                let limit =
                    SignedDuration::from_secs(self.sm.spec.promotion.metrics_deadline_seconds);
                let down_for = self.now.duration_since(finished);
                if down_for < limit {
                    self.await_store(&run_id, &message, down_for, limit);
                    return Ok(false);
                }
                // Nothing waits for the store any more: the run's failure says the rest.
                self.clear(
                    Concern::StoreUnavailable,
                    "RunGivenUp",
                    &format!(
                        "no run waits for the store: run {run_id} was given up (see RunFailed)"
                    ),
                );
                Err(Unfit::Failed(
                    STORAGE_UNREACHABLE,
                    format!(
                        "gave up reading the result of run {run_id} after {}s: {message}",
                        limit.as_secs()
                    ),
                ))
            }
        };

        let mut run = self.run_of(job, &run_id);
        run.finished_at = Some(Time(self.now));
        let (decision, reason) = match result {
            Err(Unfit::Refused(r)) => self.refuse(&mut run, &r),
            Err(Unfit::Superseded(message)) => {
                info!(model = %self.name, run = %run_id, %message, "run superseded");
                self.resolve(Concern::RunFailed, "RunSuperseded", &message);
                self.emit(EventType::Normal, "Superseded", "Evaluate", message.clone());
                (Verdict::Superseded, message)
            }
            Err(Unfit::Failed(why, message)) => {
                warn!(model = %self.name, run = %run_id, reason = why, %message, "run failed");
                let message = if failed_for_good(job) {
                    run.retry_after_generation = self.sm.metadata.generation;
                    message
                } else {
                    self.unless_out_of_retries(&mut run, message)
                };
                self.count(Counted::FailedRun);
                // Announced once per decision (below), whatever the condition said before.
                self.report(Concern::RunFailed, why, &message);
                self.emit(EventType::Warning, why, "Evaluate", message.clone());
                (Verdict::Failed, message)
            }
            Ok((metrics, model_uri)) => {
                self.trained_on(metrics.listing_fingerprint.as_deref());
                self.status.last_successful_run_at =
                    Some(Time(finished_at(job).unwrap_or(self.now)));
                run.model_uri = Some(model_uri.clone());
                match served.as_deref() {
                    None => self.decide(&mut run, &metrics, model_uri, None),
                    Some(report) => match served_metrics(&metrics, report) {
                        Some(m) => self.decide(&mut run, &m, model_uri, Some(&metrics)),
                        None => {
                            let why = report
                                .champion
                                .as_ref()
                                .and_then(|c| c.load_error.clone())
                                .unwrap_or_else(|| "not scored".into());
                            warn!(model = %self.name, run = %run_id, %why, "the champion was not scored served: the gate decides on the trainer's test accuracy");
                            self.decide(&mut run, &metrics, model_uri, None)
                        }
                    },
                }
            }
        };
        run.decision = Some(decision.clone());
        run.reason = Some(reason.clone());
        // A run in its shadow stage is decided when the stage ends; the history waits for it.
        if decision == Verdict::Shadowing {
            self.status.last_run = Some(run);
            return Ok(true);
        }
        self.record(HistoryEntry {
            run_id,
            decision,
            reason,
            accuracy: run.accuracy,
            champion_accuracy: run.champion_accuracy,
            dry_run: run.dry_run,
            decided_at: Time(self.now),
        });
        self.status.last_run = Some(run);
        Ok(true)
    }

    /// The store is down: say so once, keep the run pending and look again soon.
    fn await_store(
        &mut self,
        run_id: &str,
        message: &str,
        down_for: SignedDuration,
        limit: SignedDuration,
    ) {
        let message = format!(
            "cannot read the result of run {run_id} yet (retrying for up to {}s after the run finished): {message}",
            limit.as_secs()
        );
        warn!(model = %self.name, run = %run_id, %message, "store unreachable");
        // The first message stands for the whole outage: the store client's wording changes
        // with every try (elapsed time, retry count), and rewriting it would make each pass a
        // status write, and each write another pass.
        self.warn_once(
            Concern::StoreUnavailable,
            STORAGE_UNREACHABLE,
            "Evaluate",
            &message,
        );
        let left = Duration::try_from(limit - down_for).unwrap_or(Duration::ZERO);
        self.requeue_within(store_retry_delay(down_for).min(left.max(Duration::from_secs(1))));
    }

    /// Reads and checks the run's metrics.json.
    async fn read_result(&mut self, job: &Job, run_id: &str) -> Result<Outcome, Error> {
        let store = match self.store().await? {
            Ok(store) => store,
            Err(e) => return Ok(Outcome::Unreachable(e.to_string())),
        };
        // Jobs created before runs were keyed per model wrote to the shared prefix.
        let prefix = job.annotations().get(RUNS_PREFIX_ANNOTATION).cloned();
        let legacy = prefix.is_none();
        let prefix = prefix.unwrap_or_else(|| layout::RUNS.to_owned());
        let metrics = match store.get_metrics_in(&prefix, run_id).await {
            Ok(m) => m,
            Err(e) if e.is_not_found() => {
                return Ok(Outcome::Unusable(
                    "MetricsMissing",
                    format!("run {run_id} succeeded but wrote no metrics: {e}"),
                ));
            }
            Err(e @ StorageError::Malformed { .. }) => {
                return Ok(Outcome::Unusable("MetricsInvalid", e.to_string()));
            }
            Err(e) => return Ok(Outcome::Unreachable(e.to_string())),
        };
        if let Some(message) = self.superseded(&metrics, run_id) {
            return Ok(Outcome::Superseded(message));
        }
        if let Err(message) = self.check_metrics(&metrics, job, run_id, legacy) {
            return Ok(Outcome::Unusable("MetricsInvalid", message));
        }
        Ok(Outcome::Valid {
            model_uri: store.url_of(&layout::weights_in(&prefix, run_id)),
            metrics: Box::new(metrics),
        })
    }

    /// Whether the run was compared, as it should have been, with the champion of the day it
    /// started, and that champion has since been replaced (a rollback, a manual promotion):
    /// then its result decides nothing, and that is no failure of the run.
    fn superseded(&self, m: &RunMetrics, run_id: &str) -> Option<String> {
        let started_against = self
            .status
            .last_run
            .as_ref()
            .filter(|r| r.run_id == run_id)?
            .champion_run_id
            .as_deref()?;
        let champion = self.status.champion.as_ref()?;
        (m.run_id == run_id
            && m.champion_run_id.as_deref() == Some(started_against)
            && champion.run_id != started_against)
            .then(|| {
                format!(
                    "run {run_id} was compared with champion {started_against}, which was replaced by {} while it trained: its result decides nothing",
                    champion.run_id
                )
            })
    }

    /// Refuses metrics that would make the gate compare the wrong things: another run's or
    /// another model's file, a stale file from an earlier run with the same id, or a
    /// comparison with a model that is not the champion.
    fn check_metrics(
        &self,
        m: &RunMetrics,
        job: &Job,
        run_id: &str,
        legacy: bool,
    ) -> Result<(), String> {
        if m.run_id != run_id {
            return Err(format!("metrics of run {run_id} name run {:?}", m.run_id));
        }
        let owner = builders::owner_id(self.sm).map_err(|e| e.to_string())?;
        match (&m.owner, legacy) {
            (Some(o), _) if *o != owner => {
                return Err(format!(
                    "metrics.json of run {run_id} belongs to {o}, not to {owner}"
                ));
            }
            (None, false) => {
                return Err(format!(
                    "metrics.json of run {run_id} does not name its owner (expected {owner}); is the trainer image older than the operator?"
                ));
            }
            _ => {}
        }
        if let Some(created) = &job.metadata.creation_timestamp
            && m.started_at.timestamp() < created.0.as_second() - CLOCK_SKEW.as_secs()
        {
            return Err(format!(
                "metrics.json of run {run_id} is from a run started at {}, before its Job was created at {}: a stale file from an earlier run with the same id",
                m.started_at.to_rfc3339(),
                created.0
            ));
        }
        if let Some(champion) = &self.status.champion {
            let compared = m.champion_run_id.as_deref();
            if compared != Some(champion.run_id.as_str()) || m.champion_test_accuracy.is_none() {
                return Err(format!(
                    "run {run_id} was compared with {} but the champion is {}: its result cannot decide a promotion",
                    compared.map_or("no champion".to_owned(), |c| format!("champion {c}")),
                    champion.run_id
                ));
            }
        }
        Ok(())
    }

    /// A candidate the served-path validation refused: a `Reject` whose reason starts with
    /// the validation's (`InfraValidationFailed: …`, `TrainServeSkew: …`); the champion and
    /// the Deployment stay as they are.
    fn refuse(&mut self, run: &mut RunStatus, r: &Refusal) -> (Verdict, String) {
        let run_id = run.run_id.clone();
        let reason = format!("{}: {}", r.reason, r.message);
        let summary = format!("Reject: {reason}");
        run.summary = Some(summary.clone());
        run.comparison = None;
        run.dry_run = self.sm.spec.promotion.dry_run;
        self.resolve(
            Concern::RunFailed,
            "RunEvaluated",
            &format!("run {run_id}: refused by validation"),
        );
        self.count(Counted::Rejection);
        self.emit(
            EventType::Warning,
            r.reason,
            "Validate",
            format!("run {run_id} not rolled out: {reason}"),
        );
        warn!(model = %self.name, run = %run_id, reason = r.reason, message = %r.message, "candidate refused by served-path validation");
        (Verdict::Reject, reason)
    }

    /// Applies the gate to valid metrics; returns the decision's name and reason. With
    /// `trainer` set, `metrics` carry the served accuracies of a passed validation
    /// ([`served_metrics`]) and `trainer` the run's own metrics.json.
    fn decide(
        &mut self,
        run: &mut RunStatus,
        metrics: &RunMetrics,
        model_uri: String,
        trainer: Option<&RunMetrics>,
    ) -> (Verdict, String) {
        let run_id = run.run_id.clone();
        let p = &self.sm.spec.promotion;
        let dry_run = p.dry_run;
        let shadow = p.shadow.enabled;
        let policy = PromotionPolicy {
            min_improvement: p.min_improvement,
            min_accuracy: p.min_accuracy,
            min_test_images: p.min_test_images,
            min_significance: p.min_significance,
            max_class_recall_drop: Some(p.max_class_recall_drop),
        };
        let assessment = artifacts::gate::assess(&policy, metrics);
        let decision = assessment.decision;
        let summary = if trainer.is_some() {
            served_summary(&assessment.summary)
        } else {
            assessment.summary
        };
        let summary = if dry_run {
            format!("{summary} (dry run)")
        } else {
            summary
        };
        run.accuracy = Some(metrics.test_accuracy);
        run.champion_accuracy = metrics.champion_test_accuracy;
        run.champion_run_id = metrics.champion_run_id.clone();
        run.summary = Some(summary.clone());
        run.comparison = assessment.comparison.as_ref().map(ComparisonStatus::from);
        run.dry_run = dry_run;
        self.resolve(
            Concern::RunFailed,
            "RunEvaluated",
            &format!("run {run_id}: {decision}"),
        );
        let reason = if dry_run {
            format!("dry run, nothing rolled: {}", decision.reason())
        } else {
            decision.reason().to_owned()
        };
        match (&decision, dry_run) {
            (Decision::Reject(_), _) => {
                self.count(Counted::Rejection);
                self.emit(
                    EventType::Normal,
                    "Rejected",
                    "Evaluate",
                    format!("run {run_id}: {summary} — {reason}"),
                );
            }
            (Decision::Promote(_), false) if shadow => {
                let champion_run_id = self
                    .status
                    .champion
                    .as_ref()
                    .map(|c| c.run_id.clone())
                    .unwrap_or_default();
                self.begin_shadow(
                    CandidateStatus {
                        run_id: run_id.clone(),
                        model_uri,
                        accuracy: metrics.test_accuracy,
                        champion_run_id,
                        started_at: Time(self.now),
                        shadow: None,
                    },
                    &summary,
                );
                info!(model = %self.name, run = %run_id, %summary, "the gate would promote: shadow stage first");
                return (
                    Verdict::Shadowing,
                    format!("{reason}; in its shadow stage on live traffic"),
                );
            }
            (_, true) => {
                self.emit(
                    EventType::Normal,
                    "DryRun",
                    "Evaluate",
                    format!("run {run_id} would be promoted: {summary} — {reason}"),
                );
            }
            (_, false) => {
                let note = format!("run {run_id}: {summary} — {reason}");
                self.promote(&run_id, metrics.test_accuracy, model_uri, note);
            }
        }
        let mut entry = artifacts::HistoryEntry::new(
            trainer.unwrap_or(metrics),
            decision.kind(),
            decision.promotes() && !dry_run,
            &summary,
        );
        entry.served_accuracy = trainer.map(|_| metrics.test_accuracy);
        self.effects.push(Effect::History(Box::new(entry)));
        info!(model = %self.name, run = %run_id, decision = decision.kind(), %summary, %reason, "run evaluated");
        let verdict = match decision {
            Decision::FirstModel(_) => Verdict::FirstModel,
            Decision::Promote(_) => Verdict::Promote,
            Decision::Reject(_) => Verdict::Reject,
        };
        (verdict, reason)
    }

    /// A run wins: it becomes the champion, and the promotion is counted and announced once
    /// that is recorded.
    pub(super) fn promote(&mut self, run_id: &str, accuracy: f64, model_uri: String, note: String) {
        self.crown(ChampionStatus {
            run_id: run_id.to_owned(),
            accuracy,
            model_uri,
            promoted_at: Time(self.now),
        });
        self.count(Counted::Promotion);
        self.emit(EventType::Normal, "Promoted", "Promote", note);
    }

    /// Makes `champion` the model in service; the one it replaces becomes the rollback target.
    pub(super) fn crown(&mut self, champion: ChampionStatus) {
        // Re-deciding after a crash finds the same champion already in place: keep the older
        // previous champion instead of pointing it at itself.
        if self
            .status
            .champion
            .as_ref()
            .is_none_or(|c| c.run_id != champion.run_id)
        {
            self.status.previous_champion = self.status.champion.take();
        }
        self.status.champion = Some(champion);
    }

    /// With `schedule.maxRetries`: when this failure is one more than the retries allowed,
    /// no retry until the spec changes (as after a permanent failure), and the message says so.
    fn unless_out_of_retries(&self, run: &mut RunStatus, message: String) -> String {
        let Some(max) = self.sm.spec.schedule.max_retries else {
            return message;
        };
        let earlier = self
            .status
            .history
            .iter()
            .take_while(|h| h.decision == Verdict::Failed)
            .count();
        if earlier < usize::try_from(max).unwrap_or(usize::MAX) {
            return message;
        }
        run.retry_after_generation = self.sm.metadata.generation;
        format!(
            "{message} ({} failed runs in a row, schedule.maxRetries {max}: no retry until the spec changes; the next slot still runs)",
            earlier + 1
        )
    }

    /// A run recorded as started whose Job is gone (deleted by hand) will never report back.
    pub(super) fn job_missing(&mut self, jobs: &[(Job, JobState)]) {
        let Some(run) = self
            .status
            .last_run
            .as_ref()
            .filter(|r| r.decision.is_none())
            .filter(|r| !jobs.iter().any(|(j, _)| run_id_of(j) == r.run_id))
        else {
            return;
        };
        let message = format!(
            "training Job {} disappeared before it finished",
            run.job_name
        );
        let mut run = run.clone();
        let message = self.unless_out_of_retries(&mut run, message);
        run.finished_at = Some(Time(self.now));
        run.decision = Some(Verdict::Failed);
        run.reason = Some(message.clone());
        self.record(HistoryEntry {
            run_id: run.run_id.clone(),
            decision: Verdict::Failed,
            reason: message.clone(),
            accuracy: None,
            champion_accuracy: None,
            dry_run: false,
            decided_at: Time(self.now),
        });
        self.status.last_run = Some(run);
        self.count(Counted::FailedRun);
        self.report(Concern::RunFailed, "JobMissing", &message);
        self.emit(EventType::Warning, "JobMissing", "Evaluate", message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_retries_back_off_with_the_outage() {
        let secs = |s: i64| store_retry_delay(SignedDuration::from_secs(s)).as_secs();
        assert_eq!(secs(0), 30);
        assert_eq!(secs(600), 150);
        assert_eq!(secs(3600), 600);
    }
}
