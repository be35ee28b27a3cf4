//! Gang: the ranks of a distributed run (`training.workers` > 1) live and die together. Their
//! Indexed Job retries no pod, since a rank that fails leaves its peers stuck in a collective:
//! the first counted failure ends the Job. The operator then starts the run again as a new Job
//! (`<run id>-r<n>`), whose ranks resume from the last checkpoint rank 0 wrote, up to
//! `training.backoffLimit` times (`lastRun.restarts`). The ranks find rank 0 through a
//! headless Service that their Job owns.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::observe::run_id_of;
use super::{Concern, Error, JOB_REFUSED, JobState, MANAGER, Pass, failed_with, undecided};
use crate::builders::{self, attempt_of, is_gang};

/// Whether a finished Job failed because a rank failed, which a new gang may not: not a
/// permanent exit code (its podFailurePolicy), not its deadline, not a Job the operator gave
/// up on.
fn rank_failed(job: &Job, state: &JobState) -> bool {
    matches!(state, JobState::Failed(_)) && failed_with(job, "BackoffLimitExceeded")
}

impl Pass<'_> {
    /// Whether the failure of the finished training Job `job` restarts its gang: a
    /// distributed Job whose rank failed, with restarts left. Records the restart in
    /// `lastRun` (one more restart, the new Job's name); the Job is created once the status
    /// says so ([`Pass::restart_gang`]). A restart recorded by an earlier pass whose Job was
    /// never created (the operator died in between) is carried out again, not counted again.
    pub(super) fn gang_restart(&mut self, job: &Job, state: &JobState) -> bool {
        if !is_gang(job) || !rank_failed(job, state) {
            return false;
        }
        let run_id = run_id_of(job);
        let limit = self.sm.spec.training.backoff_limit;
        let workers = self.sm.spec.training.workers;
        let attempt = attempt_of(job) + 1;
        let champion = self.status.champion.as_ref().map(|c| c.run_id.clone());
        let Some(run) = undecided(&mut self.status.last_run, &run_id) else {
            return false;
        };
        if run.job_name == job.name_any() {
            let restarts = run.restarts.unwrap_or(0);
            if restarts >= limit {
                return false;
            }
            run.restarts = Some(restarts + 1);
            run.job_name = builders::training_job_name(&run_id, attempt, workers);
            // The new Job is compared with the champion of today, as a new run would be.
            run.champion_run_id = champion;
            run.pod_started_at = None;
            let why = match state {
                JobState::Failed(why) => why.as_str(),
                _ => "",
            };
            let note = format!(
                "a rank of run {run_id} failed ({why}): the gang of {workers} restarts from the last checkpoint as Job {} (restart {} of {limit})",
                run.job_name,
                restarts + 1
            );
            warn!(model = %self.name, run = %run_id, job = %job.name_any(), "{note}");
            self.emit(EventType::Warning, "GangRestarted", "Train", note);
        }
        self.restart = Some(attempt);
        true
    }

    /// Creates the Job of the gang restart this pass recorded, and its rendezvous Service.
    pub(super) async fn restart_gang(&mut self) -> Result<(), Error> {
        let Some(attempt) = self.restart.take() else {
            return Ok(());
        };
        let Some(run_id) = self.status.last_run.as_ref().map(|r| r.run_id.clone()) else {
            return Ok(());
        };
        let champion = self.status.champion.clone();
        let job = builders::training_job_attempt(self.sm, &run_id, attempt, champion.as_ref())?;
        let name = job.name_any();
        let jobs: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let created = match jobs.create(&PostParams::default(), &job).await {
            Ok(created) => created,
            // Created by an earlier pass that could not finish: that Job is this attempt.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                jobs.get(&name).await.map_err(|source| Error::GetJob {
                    name: name.clone(),
                    source,
                })?
            }
            Err(source) => {
                let error = Error::CreateJob { name, source };
                self.refused(Concern::RunBlocked, JOB_REFUSED, "Train", error)?;
                return Ok(());
            }
        };
        info!(model = %self.name, run = %run_id, job = %name, attempt, "gang restarted");
        self.clear_from(
            Concern::RunBlocked,
            &[JOB_REFUSED],
            "JobAccepted",
            &format!("the Job {name} was created"),
        );
        self.ensure_rendezvous(&created).await?;
        // With a queue the new Job waits for admission like the first one did.
        self.watch_queue(&created, &mut JobState::Active, true)
            .await?;
        Ok(())
    }

    /// Applies the headless Service of a distributed training Job, unless the watch cache
    /// shows it exists already (a pass while the Job runs then costs nothing).
    pub(super) async fn ensure_rendezvous(&mut self, job: &Job) -> Result<(), Error> {
        if !is_gang(job) || self.ctx.caches.has_service(&self.ns, &job.name_any()) {
            return Ok(());
        }
        let service = builders::rendezvous_service(job)?;
        let name = service.name_any();
        let api: Api<Service> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&service),
        )
        .await
        .map_err(|source| Error::ApplyService { name, source })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn failed(reason: &str) -> (Job, JobState) {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "j"},
            "status": {"conditions": [{"type": "Failed", "status": "True", "reason": reason}]},
        }))
        .unwrap();
        let state = super::super::job_state(&job);
        (job, state)
    }

    #[test]
    fn only_a_rank_failure_restarts_the_gang() {
        let (job, state) = failed("BackoffLimitExceeded");
        assert!(rank_failed(&job, &state));
        // A permanent exit code, the deadline: the run fails.
        for reason in ["PodFailurePolicy", "DeadlineExceeded"] {
            let (job, state) = failed(reason);
            assert!(!rank_failed(&job, &state), "{reason}");
        }
        let abandoned = JobState::Abandoned {
            reason: "QueueTimeout",
            message: String::new(),
        };
        assert!(!rank_failed(&job, &abandoned));
    }
}
