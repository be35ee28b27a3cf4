//! Schedule: start a run when one is due (bootstrap, manual request, schedule slot, a change
//! of the dataset, a retry), or skip a slot whose data did not change.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::events::EventType;
use tracing::info;

use super::observe::Presence;
use super::{
    Concern, Counted, Error, JOB_REFUSED, JobState, Pass, STORAGE_UNREACHABLE, job_state,
    set_condition,
};

/// `RunBlocked` reasons of this step.
const INVALID_SCHEDULE: &str = "InvalidSchedule";
const CHAMPION_MISSING: &str = "ChampionMissing";
const JOB_CONFLICT: &str = "JobConflict";
use crate::builders;
use crate::crd::{RunStatus, TRAIN_REQUEST_ANNOTATION, Trigger, Verdict};
use crate::schedule::Schedule;

/// What became of a run that was due.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Start {
    /// Its Job was created, or found running.
    Running,
    /// Its Job was found finished (created by an earlier pass that could not record it): it
    /// is recorded as the last run and decided on the next pass.
    Finished,
    /// It cannot start now (champion missing, store unreachable, a foreign Job in the way).
    Blocked,
}

impl Pass<'_> {
    /// Starts a run when one is due, no Job is `active` and no finished run is still
    /// `awaiting` its result; sets `nextRunAt` and the Training condition. Returns whether a
    /// run is in progress after this step.
    pub(super) async fn schedule(&mut self, active: bool, awaiting: bool) -> Result<bool, Error> {
        let sm = self.sm;
        let now = self.now;
        let schedule = Schedule::from_spec(&sm.spec.schedule);
        let anchor = sm.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
        let last_run_start = self.status.last_run.as_ref().map(|r| r.started_at.0);
        // A skipped slot counts as a start: the schedule goes on from it.
        let skipped = self
            .status
            .dataset
            .as_ref()
            .and_then(|d| d.skipped_slot.as_ref())
            .map(|t| t.0);
        let last_start = last_run_start.max(skipped);
        let suspended = sm.spec.schedule.suspend;
        let mut next_run_at: Option<Timestamp> = None;
        let mut started = false;
        match &schedule {
            Err(e) => {
                self.warn(
                    Concern::RunBlocked,
                    INVALID_SCHEDULE,
                    "Schedule",
                    &e.to_string(),
                );
            }
            Ok(schedule) => {
                let plan = match schedule.plan(last_start, anchor, now) {
                    Ok(p) => {
                        self.clear_from(
                            Concern::RunBlocked,
                            &[INVALID_SCHEDULE],
                            "ScheduleValid",
                            "the schedule is valid again",
                        );
                        Some(p)
                    }
                    Err(e) => {
                        self.warn(
                            Concern::RunBlocked,
                            INVALID_SCHEDULE,
                            "Schedule",
                            &e.to_string(),
                        );
                        None
                    }
                };
                let request = sm
                    .annotations()
                    .get(TRAIN_REQUEST_ANNOTATION)
                    .filter(|v| !v.is_empty())
                    .cloned();
                let manual = request.filter(|r| self.status.last_train_request.as_ref() != Some(r));
                // A due slot that cannot start yet (a Job runs, a result is pending) is the next
                // run, overdue: a stable time, where `now + interval` would change, and be
                // written, on every blocked pass.
                next_run_at = plan.as_ref().map(|p| p.due_slot.unwrap_or(p.next_run_at));
                // A failed run is retried after a backoff, unless the schedule comes sooner.
                let retry_at = self
                    .retry_at()
                    .filter(|at| next_run_at.is_none_or(|next| *at < next));
                if let Some(at) = retry_at {
                    next_run_at = Some(at);
                }
                // A model being deleted (foreground deletion, or a finalizer of someone else's
                // holding it) starts nothing that the garbage collector would have to stop.
                let deleting = sm.metadata.deletion_timestamp.is_some();
                // Looked at whatever else happens, so the settle clock runs while a Job does.
                let data = self.dataset_change(last_run_start).await?;
                let drift = self.prediction_drift(last_run_start).await?;
                let trigger = if active || awaiting || suspended || deleting {
                    None
                } else if let Some(r) = &manual {
                    Some((builders::manual_run_id(&self.name, r), Trigger::Manual))
                } else if self.status.champion.is_none() && self.status.last_run.is_none() {
                    Some((
                        builders::scheduled_run_id(&self.name, anchor),
                        Trigger::Bootstrap,
                    ))
                } else if let Some(slot) = plan.as_ref().and_then(|p| p.due_slot) {
                    Some((
                        builders::scheduled_run_id(&self.name, slot),
                        Trigger::Schedule,
                    ))
                } else if let Some(fingerprint) = data {
                    Some((
                        builders::data_run_id(&self.name, &fingerprint),
                        Trigger::DatasetChange,
                    ))
                } else if drift {
                    Some((builders::drift_run_id(&self.name, now), Trigger::Drift))
                } else {
                    retry_at
                        .filter(|at| *at <= now)
                        .map(|at| (builders::scheduled_run_id(&self.name, at), Trigger::Retry))
                };
                let trigger = match (trigger, plan.as_ref().and_then(|p| p.due_slot)) {
                    (Some((run_id, Trigger::Schedule)), Some(slot))
                        if sm.spec.schedule.skip_if_unchanged =>
                    {
                        match self.skip_unchanged_slot(slot, &run_id).await? {
                            Some(false) => Some((run_id, Trigger::Schedule)),
                            Some(true) => {
                                next_run_at = schedule
                                    .plan(Some(slot), anchor, now)
                                    .ok()
                                    .map(|p| p.next_run_at);
                                None
                            }
                            // The store cannot say: the slot waits for it (a minute).
                            None => None,
                        }
                    }
                    (trigger, _) => trigger,
                };
                if let Some((run_id, trigger)) = trigger {
                    let outcome = self.start(run_id, trigger.clone()).await?;
                    started = outcome == Start::Running;
                    if outcome != Start::Blocked {
                        self.training_on_seen_listing();
                        if trigger == Trigger::Manual {
                            self.status.last_train_request = manual;
                        }
                        let start = self.status.last_run.as_ref().map(|r| r.started_at.0);
                        next_run_at = schedule
                            .plan(start, anchor, now)
                            .ok()
                            .map(|p| p.next_run_at);
                    }
                }
            }
        }
        let training = active || started;
        // A run whose Job waits in its queue is in flight but does not train.
        let (running, reason, message) = match (&self.status.last_run, training, &self.queued) {
            (_, true, Some(queued)) => (false, "Queued", queued.clone()),
            (Some(r), true, None) => (
                true,
                "JobRunning",
                format!("training run {} is in progress", r.run_id),
            ),
            _ => (false, "Idle", String::new()),
        };
        set_condition(
            &mut self.status.conditions,
            "Training",
            running,
            reason,
            &message,
            sm.metadata.generation,
            now,
        );
        self.status.next_run_at = if suspended {
            None
        } else {
            next_run_at.map(Time)
        };
        Ok(training)
    }

    /// When a failed last run is retried: `retryBackoffSeconds` after it was decided,
    /// doubling with each consecutive failure up to `maxRetryBackoffSeconds`; never while the
    /// spec is the one a permanent failure (podFailurePolicy) ran with.
    fn retry_at(&self) -> Option<Timestamp> {
        let last = self
            .status
            .last_run
            .as_ref()
            .filter(|r| r.decision == Some(Verdict::Failed))?;
        // A failure no retry can fix waits for a change of the spec (or the next slot).
        if last.retry_after_generation.is_some()
            && last.retry_after_generation == self.sm.metadata.generation
        {
            return None;
        }
        let failed_at = last.finished_at.as_ref()?.0;
        let failures = self
            .status
            .history
            .iter()
            .take_while(|h| h.decision == Verdict::Failed)
            .count()
            .max(1);
        let spec = &self.sm.spec.schedule;
        let base = spec.retry_backoff_seconds.max(1);
        let exponent = u32::try_from(failures - 1).unwrap_or(u32::MAX).min(20);
        let delay = base
            .saturating_mul(1 << exponent)
            .min(spec.max_retry_backoff_seconds.max(base));
        failed_at.checked_add(SignedDuration::from_secs(delay)).ok()
    }

    /// Whether the champion's weights can be re-scored by a new run. A run started without
    /// them would fail after its GPU was scheduled; better to say so and wait.
    async fn champion_ready(&mut self) -> Result<bool, Error> {
        let Some(champion) = self.status.champion.clone() else {
            return Ok(true);
        };
        match self.weights_present(&champion.model_uri).await? {
            Presence::Present => {
                self.clear(
                    Concern::StoreUnavailable,
                    "StoreReachable",
                    "the champion's weights were found in the store",
                );
                self.clear_from(
                    Concern::RunBlocked,
                    &[CHAMPION_MISSING],
                    "ChampionFound",
                    "the champion's weights are back",
                );
                Ok(true)
            }
            Presence::Missing => {
                let message = format!(
                    "the weights of champion {} are missing at {}: no run can be compared with it; put them back, promote another run ({}) or roll back",
                    champion.run_id,
                    champion.model_uri,
                    crate::crd::PROMOTE_RUN_ANNOTATION
                );
                self.clear(
                    Concern::StoreUnavailable,
                    "StoreReachable",
                    "the store answered: the champion's weights are not there",
                );
                self.warn(Concern::RunBlocked, CHAMPION_MISSING, "Train", &message);
                Ok(false)
            }
            Presence::Unknown(e) => {
                info!(model = %self.name, error = %e, "cannot check the champion's weights; run postponed");
                // The first message stands for the outage (the store client's wording changes
                // with every try).
                let message = format!(
                    "a due run waits for the store: the weights of champion {} cannot be checked ({e})",
                    champion.run_id
                );
                self.warn_once(
                    Concern::StoreUnavailable,
                    STORAGE_UNREACHABLE,
                    "Train",
                    &message,
                );
                self.requeue_within(Duration::from_secs(60));
                Ok(false)
            }
        }
    }

    /// Starts the training Job for `run_id`, or adopts it when it already exists.
    async fn start(&mut self, run_id: String, trigger: Trigger) -> Result<Start, Error> {
        if !self.champion_ready().await? {
            return Ok(Start::Blocked);
        }
        let champion = self.status.champion.clone();
        let job = builders::training_job(self.sm, &run_id, champion.as_ref())?;
        // The run id, unless a distributed run's id is too long for its pods' hostnames.
        let name = job.name_any();
        let jobs: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let mut started_at = self.now;
        let running = match jobs.create(&PostParams::default(), &job).await {
            Ok(created) => created,
            // Deterministic names make a second create for the same slot a no-op; the Job that
            // exists says what really happened.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let existing = jobs.get(&name).await.map_err(|source| Error::GetJob {
                    name: name.clone(),
                    source,
                })?;
                if !self.owns(&existing) {
                    let message = format!(
                        "a Job named {name} exists that this SimpsonModel does not own; delete it to let the run start"
                    );
                    self.warn(Concern::RunBlocked, JOB_CONFLICT, "Train", &message);
                    return Ok(Start::Blocked);
                }
                if let Some(t) = &existing.metadata.creation_timestamp {
                    started_at = t.0;
                }
                let state = job_state(&existing);
                info!(model = %self.name, run = %run_id, ?state, "training Job already exists; adopting it");
                if state != JobState::Active {
                    // Finished already: record it as the run and decide it on the next pass.
                    self.status.last_run =
                        Some(self.run_status(&run_id, name, trigger, started_at));
                    self.requeue_within(Duration::from_secs(1));
                    return Ok(Start::Finished);
                }
                existing
            }
            Err(source) => {
                let error = Error::CreateJob { name, source };
                // A Job the API server refuses (an invalid override, a quota, an admission
                // policy) is refused again until something changes: report it, do not retry.
                self.refused(Concern::RunBlocked, JOB_REFUSED, "Train", error)?;
                return Ok(Start::Blocked);
            }
        };
        self.ensure_rendezvous(&running).await?;
        self.clear_from(
            Concern::RunBlocked,
            &[CHAMPION_MISSING, JOB_CONFLICT, JOB_REFUSED],
            "TrainingStarted",
            &format!("training run {run_id} started"),
        );
        self.count(Counted::TrainingStarted);
        info!(model = %self.name, run = %run_id, %trigger, "training started");
        let note = format!("started training run {run_id} ({trigger})");
        self.status.last_run = Some(self.run_status(&run_id, name, trigger, started_at));
        self.emit(EventType::Normal, "TrainingStarted", "Train", note);
        // Created suspended (a queue), or adopted waiting: queued from the start.
        self.watch_queue(&running, &mut JobState::Active, true)
            .await?;
        Ok(Start::Running)
    }

    fn run_status(
        &self,
        run_id: &str,
        job_name: String,
        trigger: Trigger,
        started_at: Timestamp,
    ) -> RunStatus {
        RunStatus {
            champion_run_id: self.status.champion.as_ref().map(|c| c.run_id.clone()),
            model_uri: builders::run_weights_uri(self.sm, run_id).ok(),
            ..RunStatus::new(run_id, job_name, trigger, Time(started_at))
        }
    }
}
