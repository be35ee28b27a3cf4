//! Observe: what the API server and the store say, before anything is decided.

use std::time::Duration;

use artifacts::{Storage, StorageError};
use jiff::SignedDuration;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use tracing::warn;

use super::{Error, JobState, Pass, job_state};
use crate::builders::{self, RUN_ID_LABEL};

/// The run id a Job carries in its label (its name for Jobs created before the label existed).
pub(super) fn run_id_of(job: &Job) -> String {
    job.labels()
        .get(RUN_ID_LABEL)
        .cloned()
        .unwrap_or_else(|| job.name_any())
}

impl Pass<'_> {
    /// The model's training and validation Jobs, oldest first: the truth about runs in flight.
    pub(super) async fn list_jobs(&self) -> Result<Vec<(Job, JobState)>, Error> {
        let items = match self.cached_jobs() {
            Some(jobs) => jobs,
            None => {
                let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.ns);
                api.list(&ListParams::default().labels(&builders::run_jobs_selector(&self.name)))
                    .await
                    .map_err(Error::ListJobs)?
                    .items
            }
        };
        // The label names the model; only the owner reference says it is this incarnation of
        // it (a model deleted and created again under the same name must not inherit the old
        // one's Jobs while the garbage collector removes them).
        let mut jobs: Vec<(Job, JobState)> = items
            .into_iter()
            .filter(|j| self.owns(j))
            .map(|j| {
                let state = job_state(&j);
                (j, state)
            })
            .collect();
        // A gang restart is created after the attempt it replaces, possibly within the same
        // second: the attempt orders them.
        jobs.sort_by_key(|(j, _)| {
            (
                j.metadata.creation_timestamp.as_ref().map(|t| t.0),
                builders::attempt_of(j),
                j.name_any(),
            )
        });
        Ok(jobs)
    }

    /// The model's Jobs from the watch cache, when it has listed and holds the Job of the run
    /// in progress (of its latest attempt, after a gang restart). A Job this operator created a
    /// moment ago may not have reached the cache yet: then the API server is asked, so a fresh
    /// Job is never taken for a vanished one.
    fn cached_jobs(&self) -> Option<Vec<Job>> {
        let jobs = self
            .ctx
            .caches
            .jobs(&self.ns, |j| builders::is_run_job_of(j, &self.name))?;
        let in_progress = self
            .status
            .last_run
            .as_ref()
            .filter(|r| r.decision.is_none());
        in_progress
            .is_none_or(|r| {
                jobs.iter()
                    .any(|j| run_id_of(j) == r.run_id && j.name_any() == r.job_name)
            })
            .then_some(jobs)
    }

    /// Whether `obj` has this SimpsonModel (by uid) among its owners.
    pub(super) fn owns(&self, obj: &impl ResourceExt) -> bool {
        obj.owner_references()
            .iter()
            .any(|o| Some(&o.uid) == self.sm.metadata.uid.as_ref())
    }

    /// The startup deadline of the running training Job: records when its pod first became
    /// ready, and if none did within `training.startupDeadlineSeconds` (an image that cannot
    /// be pulled, a missing Secret, no node that fits), deletes the Job and turns `state`
    /// into its failure, to be decided like any other.
    pub(super) async fn watch_startup(
        &mut self,
        job: &Job,
        state: &mut JobState,
    ) -> Result<(), Error> {
        let run_id = run_id_of(job);
        let Some(run) = self.status.last_run.as_mut().filter(|r| r.run_id == run_id) else {
            return Ok(());
        };
        if run.pod_started_at.is_some() {
            return Ok(());
        }
        if job.status.as_ref().and_then(|s| s.ready).unwrap_or(0) > 0 {
            run.pod_started_at = Some(Time(self.now));
            return Ok(());
        }
        let deadline = self.sm.spec.training.startup_deadline_seconds;
        // From the latest of: the run's start, this Job's creation (a gang restart), the
        // Job's start (reset when its queue admits it again).
        let since = [
            job.metadata.creation_timestamp.as_ref(),
            job.status.as_ref().and_then(|s| s.start_time.as_ref()),
        ]
        .into_iter()
        .flatten()
        .fold(run.started_at.0, |latest, t| latest.max(t.0));
        let waited = self.now.duration_since(since);
        if waited < SignedDuration::from_secs(deadline) {
            let left = Duration::try_from(SignedDuration::from_secs(deadline) - waited)
                .unwrap_or(Duration::ZERO);
            self.requeue_within(left.max(Duration::from_secs(1)));
            return Ok(());
        }
        let name = job.name_any();
        let message = format!(
            "no pod of Job {name} became ready within startupDeadlineSeconds ({deadline}s): see kubectl -n {} describe pods -l job-name={name}",
            self.ns
        );
        warn!(model = %self.name, job = %name, "{message}; deleting the Job");
        let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        super::housekeeping::delete_job(&api, job).await?;
        *state = JobState::Failed(message);
        Ok(())
    }

    pub(super) fn already_decided(&self, run_id: &str) -> bool {
        let in_last = self
            .status
            .last_run
            .as_ref()
            .is_some_and(|r| r.run_id == run_id && r.decision.is_some());
        in_last || self.status.history.iter().any(|h| h.run_id == run_id)
    }

    /// Whether a finished Job still awaits its decision: not decided yet, and not older than
    /// the last recorded run (an older one was decided long ago, even if its history entry
    /// has since been dropped, or was superseded).
    pub(super) fn pending(&self, job: &Job) -> bool {
        let id = run_id_of(job);
        if self.already_decided(&id) {
            return false;
        }
        match &self.status.last_run {
            None => true,
            Some(r) if r.run_id == id => true,
            Some(r) => job
                .metadata
                .creation_timestamp
                .as_ref()
                .is_none_or(|t| t.0 >= r.started_at.0),
        }
    }

    /// The model's store, opened with the keys of the Secret named in the spec; at most once
    /// per pass. A missing Secret is an API error (retried with backoff); a store that cannot
    /// be opened is the caller's to judge, usually as an outage to retry. A bucket whose passes
    /// already hold their share of the reconcile slots stops this pass ([`Error::StoreBusy`],
    /// retried with backoff): see `gates`.
    pub(super) async fn store(&mut self) -> Result<Result<Storage, StorageError>, Error> {
        if let Some(store) = &self.store {
            return Ok(Ok(store.clone()));
        }
        let mut vars = Vec::new();
        if let Some(secret) = &self.sm.spec.storage_secret_ref {
            let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.ns);
            let s = secrets
                .get(&secret.name)
                .await
                .map_err(|source| Error::GetSecret {
                    name: secret.name.clone(),
                    source,
                })?;
            for (k, v) in s.data.unwrap_or_default() {
                vars.push((k, String::from_utf8_lossy(&v.0).into_owned()));
            }
        }
        if self.store_permit.is_none() {
            let bucket = super::gates::bucket_key(&self.sm.spec.storage_uri, &vars);
            match self.ctx.store_gates.try_enter(&bucket) {
                Some(permit) => self.store_permit = Some(permit),
                None => return Err(Error::StoreBusy { bucket }),
            }
        }
        let opened = (self.ctx.open_storage)(&self.sm.spec.storage_uri, vars);
        if let Ok(store) = &opened {
            self.store = Some(store.clone());
        }
        Ok(opened)
    }

    /// Whether the weights at `uri` exist. Weights outside the model's store cannot be
    /// checked here and count as present; the trainer reports them if they are not.
    pub(super) async fn weights_present(&mut self, uri: &str) -> Result<Presence, Error> {
        let store = match self.store().await? {
            Ok(store) => store,
            Err(e) => return Ok(Presence::Unknown(e.to_string())),
        };
        let Some(key) = store.key_of(uri) else {
            return Ok(Presence::Present);
        };
        Ok(match store.head(key).await {
            Ok(Some(_)) => Presence::Present,
            Ok(None) => Presence::Missing,
            Err(e) => Presence::Unknown(e.to_string()),
        })
    }
}

/// What the store says about an object.
#[derive(Debug)]
pub(super) enum Presence {
    Present,
    Missing,
    /// The store could not be asked (an outage): try again later.
    Unknown(String),
}
