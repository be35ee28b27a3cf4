//! Housekeeping: delete decided training Jobs beyond the history limits, and the validation
//! Jobs of runs whose training Job is gone.

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use tracing::info;

use super::observe::run_id_of;
use super::{Error, JobState, Pass};

/// Deletes a Job and, in the background, its pods; one already gone is fine.
pub(super) async fn delete_job(api: &Api<Job>, job: &Job) -> Result<(), Error> {
    match api
        .delete(&job.name_any(), &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::DeleteJob {
            name: job.name_any(),
            source,
        }),
    }
}

impl Pass<'_> {
    /// Deletes finished Jobs beyond the history limits, newest kept. Only decided runs go.
    pub(super) async fn housekeeping(&self, jobs: &[(Job, JobState)]) -> Result<(), Error> {
        let limits = &self.sm.spec.schedule;
        let (mut ok, mut failed) = (0u32, 0u32);
        let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let mut kept: Vec<String> = Vec::new();
        for (job, state) in jobs.iter().rev() {
            let keep = match state {
                JobState::Active => {
                    kept.push(run_id_of(job));
                    continue;
                }
                JobState::Succeeded => {
                    ok += 1;
                    ok <= limits.successful_jobs_history_limit
                }
                JobState::Failed(_) | JobState::Abandoned { .. } => {
                    failed += 1;
                    failed <= limits.failed_jobs_history_limit
                }
            };
            if keep || self.pending(job) {
                kept.push(run_id_of(job));
                continue;
            }
            info!(model = %self.name, job = %job.name_any(), "deleting old training Job");
            delete_job(&api, job).await?;
        }
        // A finished validation Job goes with its run's training Job.
        for (job, state) in &self.validations {
            if *state == JobState::Active || kept.contains(&run_id_of(job)) {
                continue;
            }
            info!(model = %self.name, job = %job.name_any(), "deleting old validation Job");
            delete_job(&api, job).await?;
        }
        Ok(())
    }
}
