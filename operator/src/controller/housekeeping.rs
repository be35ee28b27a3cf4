//! Housekeeping: delete decided training Jobs beyond the history limits.

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use tracing::info;

use super::{Error, JobState, Pass};

impl Pass<'_> {
    /// Deletes finished Jobs beyond the history limits, newest kept. Only decided runs go.
    pub(super) async fn housekeeping(&self, jobs: &[(Job, JobState)]) -> Result<(), Error> {
        let limits = &self.sm.spec.schedule;
        let (mut ok, mut failed) = (0u32, 0u32);
        let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        for (job, state) in jobs.iter().rev() {
            let keep = match state {
                JobState::Active => continue,
                JobState::Succeeded => {
                    ok += 1;
                    ok <= limits.successful_jobs_history_limit
                }
                JobState::Failed(_) => {
                    failed += 1;
                    failed <= limits.failed_jobs_history_limit
                }
            };
            if keep || self.pending(job) {
                continue;
            }
            info!(model = %self.name, job = %job.name_any(), "deleting old training Job");
            match api
                .delete(&job.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => {
                    return Err(Error::DeleteJob {
                        name: job.name_any(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }
}
