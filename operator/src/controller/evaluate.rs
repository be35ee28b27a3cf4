//! Evaluate: turn a finished run into a decision (in memory; `record` persists it).

use artifacts::{Decision, PromotionPolicy, StorageError, layout};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::observe::run_id_of;
use super::{Error, JobState, Pass};
use crate::crd::{ChampionStatus, HistoryEntry, RunStatus};

impl Pass<'_> {
    /// Records the outcome of a finished run, exactly once per run.
    pub(super) async fn evaluate(&mut self, job: &Job, state: JobState) -> Result<(), Error> {
        let run_id = run_id_of(job);
        let mut run = match self.status.last_run.clone() {
            Some(r) if r.run_id == run_id => r,
            // Status was lost or never written (operator crashed right after creating the Job).
            _ => RunStatus {
                run_id: run_id.clone(),
                job_name: job.name_any(),
                trigger: "Unknown".into(),
                started_at: job
                    .metadata
                    .creation_timestamp
                    .clone()
                    .unwrap_or(Time(self.now)),
                finished_at: None,
                accuracy: None,
                champion_accuracy: None,
                decision: None,
                reason: None,
                dry_run: false,
            },
        };
        run.finished_at = Some(Time(self.now));
        let outcome = match state {
            JobState::Failed(why) => Err((
                "JobFailed",
                format!("training Job {} failed: {why}", job.name_any()),
            )),
            JobState::Active => return Ok(()),
            JobState::Succeeded => match self.storage().await? {
                Err(e) => Err(("StorageUnreachable", e.to_string())),
                Ok(storage) => match storage.get_metrics(&run_id).await {
                    Err(e) if e.is_not_found() => Err((
                        "MetricsMissing",
                        format!("run {run_id} succeeded but wrote no metrics: {e}"),
                    )),
                    Err(e @ StorageError::Malformed { .. }) => {
                        Err(("MetricsInvalid", e.to_string()))
                    }
                    Err(e) => Err(("StorageUnreachable", e.to_string())),
                    Ok(m) if m.run_id != run_id => Err((
                        "MetricsInvalid",
                        format!("metrics of run {run_id} name run {:?}", m.run_id),
                    )),
                    Ok(m) => Ok((m, storage)),
                },
            },
        };
        let (decision, reason) = match outcome {
            Err((why, message)) => {
                warn!(model = %self.name, run = %run_id, reason = why, %message, "run failed");
                self.ctx
                    .metrics
                    .failed_runs
                    .get_or_create(&self.labels())
                    .inc();
                self.degraded(why, &message);
                self.event(EventType::Warning, why, "Evaluate", message.clone())
                    .await;
                ("Failed".to_owned(), message)
            }
            Ok((metrics, storage)) => {
                let p = &self.sm.spec.promotion;
                let policy = PromotionPolicy {
                    min_improvement: p.min_improvement,
                    min_accuracy: p.min_accuracy,
                };
                let decision = artifacts::decide(&policy, &metrics);
                run.accuracy = Some(metrics.test_accuracy);
                run.champion_accuracy = metrics.champion_test_accuracy;
                run.dry_run = p.dry_run;
                self.healthy("RunEvaluated", &format!("run {run_id}: {decision}"));
                let reason = if p.dry_run {
                    format!("dry run, nothing rolled: {}", decision.reason())
                } else {
                    decision.reason().to_owned()
                };
                match (&decision, p.dry_run) {
                    (Decision::Reject(_), _) => {
                        self.ctx
                            .metrics
                            .rejections
                            .get_or_create(&self.labels())
                            .inc();
                        self.event(
                            EventType::Normal,
                            "Rejected",
                            "Evaluate",
                            format!("run {run_id}: {reason}"),
                        )
                        .await;
                    }
                    (_, true) => {
                        self.event(
                            EventType::Normal,
                            "DryRun",
                            "Evaluate",
                            format!("run {run_id} would be promoted: {reason}"),
                        )
                        .await;
                    }
                    (_, false) => {
                        let champion = ChampionStatus {
                            run_id: run_id.clone(),
                            accuracy: metrics.test_accuracy,
                            model_uri: storage.url_of(&layout::run_weights(&run_id)),
                            promoted_at: Time(self.now),
                        };
                        // Re-deciding after a crash finds the same champion already in place:
                        // keep the older previous champion instead of pointing it at itself.
                        if self
                            .status
                            .champion
                            .as_ref()
                            .is_none_or(|c| c.run_id != run_id)
                        {
                            self.status.previous_champion = self.status.champion.take();
                        }
                        self.status.champion = Some(champion);
                        self.ctx
                            .metrics
                            .promotions
                            .get_or_create(&self.labels())
                            .inc();
                        self.event(
                            EventType::Normal,
                            "Promoted",
                            "Promote",
                            format!("run {run_id}: {reason}"),
                        )
                        .await;
                    }
                }
                info!(model = %self.name, run = %run_id, decision = decision.kind(), %reason, "run evaluated");
                (decision.kind().to_owned(), reason)
            }
        };
        run.decision = Some(decision.clone());
        run.reason = Some(reason.clone());
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
        Ok(())
    }

    /// A run recorded as started whose Job is gone (deleted by hand) will never report back.
    pub(super) async fn job_missing(&mut self, jobs: &[(Job, JobState)]) {
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
        run.finished_at = Some(Time(self.now));
        run.decision = Some("Failed".into());
        run.reason = Some(message.clone());
        self.record(HistoryEntry {
            run_id: run.run_id.clone(),
            decision: "Failed".into(),
            reason: message.clone(),
            accuracy: None,
            champion_accuracy: None,
            dry_run: false,
            decided_at: Time(self.now),
        });
        self.status.last_run = Some(run);
        self.degraded("JobMissing", &message);
        self.event(EventType::Warning, "JobMissing", "Evaluate", message)
            .await;
    }
}
