//! The reconciler. Level-triggered: every pass starts from what the API server says (the
//! SimpsonModel, its training Jobs) and from object storage, never from memory, so a
//! restarted operator converges to the same state and takes each decision exactly once.
//!
//! One pass: evaluate a finished run → handle a rollback request → serve the champion →
//! start a run if one is due → delete old Jobs → write status if it changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use artifacts::{Decision, PromotionPolicy, Storage, StorageError, layout};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::builders::{self, MissingMetadata, RUN_ID_LABEL};
use crate::crd::{
    ChampionStatus, HistoryEntry, ROLLBACK_REQUEST_ANNOTATION, RunStatus, SimpsonModel,
    SimpsonModelStatus, TRAIN_REQUEST_ANNOTATION,
};
use crate::metrics::{ErrorLabels, Metrics, ModelLabels};
use crate::schedule::Schedule;

/// Field manager of every server-side apply the operator makes.
pub const MANAGER: &str = "face2simpson-operator";
/// Upper bound on the time between two passes over a resource, whatever the schedule says.
const MAX_REQUEUE: Duration = Duration::from_secs(3600);
/// How often a model with a running Job is looked at even without a Job event.
const TRAINING_REQUEUE: Duration = Duration::from_secs(300);

/// Opens the model's store with the credential variables taken from its Secret. Injected so
/// tests can hand in an in-memory store shared with the test body.
pub type StorageOpener =
    Arc<dyn Fn(&str, Vec<(String, String)>) -> Result<Storage, StorageError> + Send + Sync>;
/// The current time. Injected so schedules are tested without waiting for them.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Everything a reconcile needs besides the resource itself.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    pub open_storage: StorageOpener,
    /// Consecutive failures per resource, for the error policy's backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        clock: Clock,
        open_storage: StorageOpener,
    ) -> Self {
        Self {
            client,
            recorder,
            metrics,
            clock,
            open_storage,
            failures: Mutex::default(),
        }
    }

    /// The production context: wall clock and stores opened from their URLs.
    pub fn production(client: Client, recorder: Recorder, metrics: Arc<Metrics>) -> Self {
        Self::new(
            client,
            recorder,
            metrics,
            Arc::new(Timestamp::now),
            Arc::new(|url: &str, vars: Vec<(String, String)>| Storage::open_with_env(url, vars)),
        )
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // A poisoned map only loses backoff counts; keep going with what it holds.
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Why a pass failed. Run failures (a failed Job, bad metrics) are not errors: they are
/// recorded as decisions. These are the problems worth retrying with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Metadata(#[from] MissingMetadata),
}

impl Error {
    /// A fixed vocabulary for the `kind` label of the error metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 404 => "not_found",
            Error::Kube(kube::Error::Api(s)) if s.code == 403 || s.code == 401 => "forbidden",
            Error::Kube(kube::Error::Api(s)) if s.code >= 500 => "server_error",
            Error::Kube(kube::Error::Api(_)) => "api_error",
            Error::Kube(kube::Error::SerdeError(_)) => "decode",
            Error::Kube(_) => "transport",
            Error::Metadata(_) => "invalid_object",
        }
    }
}

/// Backoff after `failures` consecutive errors: 5 s doubling up to 5 min.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs(5 * (1u64 << exp)).min(Duration::from_secs(300))
}

fn object_key(sm: &SimpsonModel) -> String {
    format!("{}/{}", sm.namespace().unwrap_or_default(), sm.name_any())
}

/// Called by the controller when `reconcile` fails: count it and retry later, longer each time.
pub fn error_policy(sm: Arc<SimpsonModel>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels { kind: err.kind() })
        .inc();
    let n = {
        let mut failures = ctx.failures();
        let n = failures.entry(object_key(&sm)).or_insert(0);
        *n += 1;
        *n
    };
    let delay = backoff(n);
    warn!(model = %object_key(&sm), error = %err, kind = err.kind(), attempt = n, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Where a training Job stands.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    Active,
    Succeeded,
    Failed(String),
}

/// Reads a Job's outcome from its conditions, which the Job controller sets once and for all.
pub fn job_state(job: &Job) -> JobState {
    let status = job.status.as_ref();
    for c in status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
    {
        if c.status != "True" {
            continue;
        }
        match c.type_.as_str() {
            "Complete" => return JobState::Succeeded,
            "Failed" => {
                let why = c
                    .message
                    .clone()
                    .or_else(|| c.reason.clone())
                    .unwrap_or_else(|| "Job failed".into());
                return JobState::Failed(why);
            }
            _ => {}
        }
    }
    JobState::Active
}

fn run_id_of(job: &Job) -> String {
    job.labels()
        .get(RUN_ID_LABEL)
        .cloned()
        .unwrap_or_else(|| job.name_any())
}

/// Sets a condition, keeping its transition time when the status did not flip.
pub fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_owned();
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = Time(now);
        }
        c.status = status;
        c.reason = reason.to_owned();
        c.message = message.to_owned();
        c.observed_generation = generation;
        return;
    }
    conds.push(Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: Time(now),
    });
}

fn condition_is(conds: &[Condition], type_: &str, status: &str) -> bool {
    conds.iter().any(|c| c.type_ == type_ && c.status == status)
}

/// One pass over one SimpsonModel.
struct Pass<'a> {
    sm: &'a SimpsonModel,
    ctx: &'a Context,
    ns: String,
    name: String,
    now: Timestamp,
    status: SimpsonModelStatus,
}

impl Pass<'_> {
    fn labels(&self) -> ModelLabels {
        ModelLabels {
            namespace: self.ns.clone(),
            model: self.name.clone(),
        }
    }

    async fn event(&self, type_: EventType, reason: &str, action: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        // An event is a courtesy to humans: failing to publish one must not fail the pass.
        if let Err(e) = self
            .ctx
            .recorder
            .publish(&ev, &self.sm.object_ref(&()))
            .await
        {
            warn!(model = %self.name, reason, error = %e, "cannot publish event");
        }
    }

    fn degraded(&mut self, reason: &str, message: &str) {
        let generation = self.sm.metadata.generation;
        set_condition(
            &mut self.status.conditions,
            "Degraded",
            true,
            reason,
            message,
            generation,
            self.now,
        );
    }

    fn healthy(&mut self, reason: &str, message: &str) {
        let generation = self.sm.metadata.generation;
        set_condition(
            &mut self.status.conditions,
            "Degraded",
            false,
            reason,
            message,
            generation,
            self.now,
        );
    }

    fn already_decided(&self, run_id: &str) -> bool {
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
    fn pending(&self, job: &Job) -> bool {
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

    /// Credentials for the store, from the Secret named in the spec.
    async fn storage(&self) -> Result<Result<Storage, StorageError>, Error> {
        let mut vars = Vec::new();
        if let Some(secret) = &self.sm.spec.storage_secret_ref {
            let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.ns);
            let s = secrets.get(&secret.name).await?;
            for (k, v) in s.data.unwrap_or_default() {
                vars.push((k, String::from_utf8_lossy(&v.0).into_owned()));
            }
        }
        Ok((self.ctx.open_storage)(&self.sm.spec.storage_uri, vars))
    }

    /// Records the outcome of a finished run, exactly once per run.
    async fn evaluate(&mut self, job: &Job, state: JobState) -> Result<(), Error> {
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

    fn record(&mut self, entry: HistoryEntry) {
        self.status.history.insert(0, entry);
        self.status
            .history
            .truncate(self.sm.spec.schedule.history_limit as usize);
    }

    /// A changed rollback annotation puts the previous champion back in service.
    async fn rollback(&mut self) {
        let Some(request) = self
            .sm
            .annotations()
            .get(ROLLBACK_REQUEST_ANNOTATION)
            .cloned()
        else {
            return;
        };
        if self.status.last_rollback_request.as_deref() == Some(request.as_str()) {
            return;
        }
        self.status.last_rollback_request = Some(request);
        let (Some(current), Some(previous)) = (
            self.status.champion.clone(),
            self.status.previous_champion.clone(),
        ) else {
            let message =
                "rollback requested but there is no previous champion to go back to".to_owned();
            self.event(
                EventType::Warning,
                "RollbackImpossible",
                "Rollback",
                message,
            )
            .await;
            return;
        };
        let reason = format!(
            "manual rollback from {} to {}",
            current.run_id, previous.run_id
        );
        self.record(HistoryEntry {
            run_id: previous.run_id.clone(),
            decision: "Rollback".into(),
            reason: reason.clone(),
            accuracy: Some(previous.accuracy),
            champion_accuracy: Some(current.accuracy),
            dry_run: false,
            decided_at: Time(self.now),
        });
        self.status.champion = Some(ChampionStatus {
            promoted_at: Time(self.now),
            ..previous
        });
        self.status.previous_champion = Some(current);
        info!(model = %self.name, %reason, "rolled back");
        self.event(EventType::Normal, "RolledBack", "Rollback", reason)
            .await;
    }

    /// Server-side applies the Deployment and Service of the current champion.
    async fn serve(&mut self) -> Result<(), Error> {
        let generation = self.sm.metadata.generation;
        let Some(champion) = self.status.champion.clone() else {
            set_condition(
                &mut self.status.conditions,
                "Ready",
                false,
                "NoChampion",
                "no model has passed the gate yet",
                generation,
                self.now,
            );
            return Ok(());
        };
        let pp = PatchParams::apply(MANAGER).force();
        let deployment = builders::inference_deployment(self.sm, &champion)?;
        let name = builders::inference_name(&self.name);
        Api::<Deployment>::namespaced(self.ctx.client.clone(), &self.ns)
            .patch(&name, &pp, &Patch::Apply(&deployment))
            .await?;
        let service = builders::inference_service(self.sm)?;
        Api::<Service>::namespaced(self.ctx.client.clone(), &self.ns)
            .patch(&name, &pp, &Patch::Apply(&service))
            .await?;
        self.ctx
            .metrics
            .champion_accuracy
            .get_or_create(&self.labels())
            .set(champion.accuracy);
        let message = format!(
            "serving run {} ({:.2}% test accuracy)",
            champion.run_id,
            champion.accuracy * 100.0
        );
        set_condition(
            &mut self.status.conditions,
            "Ready",
            true,
            "Serving",
            &message,
            generation,
            self.now,
        );
        Ok(())
    }

    /// Starts the training Job for `run_id`, or adopts it when it already exists.
    async fn start(&mut self, run_id: String, trigger: &str) -> Result<(), Error> {
        let champion = self.status.champion.as_ref().map(|c| c.run_id.clone());
        let job = builders::training_job(self.sm, &run_id, champion.as_deref())?;
        let jobs: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        match jobs.create(&PostParams::default(), &job).await {
            Ok(_) => {}
            // Deterministic names make a second create for the same slot a no-op.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                info!(model = %self.name, run = %run_id, "training Job already exists; adopting it")
            }
            Err(e) => return Err(e.into()),
        }
        self.ctx
            .metrics
            .trainings_started
            .get_or_create(&self.labels())
            .inc();
        info!(model = %self.name, run = %run_id, trigger, "training started");
        let note = format!("started training run {run_id} ({trigger})");
        self.status.last_run = Some(RunStatus {
            run_id: run_id.clone(),
            job_name: run_id,
            trigger: trigger.to_owned(),
            started_at: Time(self.now),
            finished_at: None,
            accuracy: None,
            champion_accuracy: None,
            decision: None,
            reason: None,
            dry_run: false,
        });
        self.event(EventType::Normal, "TrainingStarted", "Train", note)
            .await;
        Ok(())
    }

    /// Deletes finished Jobs beyond the history limits, newest kept. Only decided runs go.
    async fn housekeeping(&self, jobs: &[(Job, JobState)]) -> Result<(), Error> {
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
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Reconciles one SimpsonModel. See the module docs for the order of the steps.
#[instrument(skip_all, fields(model = %object_key(&sm)))]
pub async fn reconcile(sm: Arc<SimpsonModel>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let action = reconcile_inner(&sm, &ctx).await?;
    ctx.failures().remove(&object_key(&sm));
    Ok(action)
}

async fn reconcile_inner(sm: &SimpsonModel, ctx: &Context) -> Result<Action, Error> {
    let now = (ctx.clock)();
    let ns = sm.namespace().ok_or(MissingMetadata("namespace"))?;
    let old = sm.status.clone().unwrap_or_default();
    let mut pass = Pass {
        sm,
        ctx,
        ns: ns.clone(),
        name: sm.name_any(),
        now,
        status: old.clone(),
    };
    let generation = sm.metadata.generation;
    if !pass.status.conditions.iter().any(|c| c.type_ == "Degraded") {
        pass.healthy("AsExpected", "");
    }

    // 1. The model's training Jobs, oldest first: the truth about runs in flight.
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let list = api
        .list(&ListParams::default().labels(&builders::job_selector(&pass.name)))
        .await?;
    let mut jobs: Vec<(Job, JobState)> = list
        .items
        .into_iter()
        .map(|j| (j.clone(), job_state(&j)))
        .collect();
    jobs.sort_by(|(a, _), (b, _)| {
        (
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
            a.name_any(),
        )
            .cmp(&(
                b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                b.name_any(),
            ))
    });

    // 2. Only the newest Job can hold an undecided result: no run starts before the
    //    previous one is decided, so older Jobs were decided (or superseded) already.
    //    It may be newer than status.lastRun when the operator died right after creating it.
    if let Some((job, state)) = jobs.last()
        && *state != JobState::Active
        && pass.pending(job)
    {
        pass.evaluate(job, state.clone()).await?;
    }

    // A run recorded as started whose Job is gone (deleted by hand) will never report back.
    if let Some(run) = pass
        .status
        .last_run
        .as_ref()
        .filter(|r| r.decision.is_none())
        && !jobs.iter().any(|(j, _)| run_id_of(j) == run.run_id)
    {
        let message = format!(
            "training Job {} disappeared before it finished",
            run.job_name
        );
        let mut run = run.clone();
        run.finished_at = Some(Time(now));
        run.decision = Some("Failed".into());
        run.reason = Some(message.clone());
        pass.record(HistoryEntry {
            run_id: run.run_id.clone(),
            decision: "Failed".into(),
            reason: message.clone(),
            accuracy: None,
            champion_accuracy: None,
            dry_run: false,
            decided_at: Time(now),
        });
        pass.status.last_run = Some(run);
        pass.degraded("JobMissing", &message);
        pass.event(EventType::Warning, "JobMissing", "Evaluate", message)
            .await;
    }

    // 3. Manual rollback, then serve whoever is champion now.
    pass.rollback().await;
    pass.serve().await?;

    // 4. Schedule.
    let schedule = Schedule::from_spec(&sm.spec.schedule);
    let active = jobs.iter().any(|(_, s)| *s == JobState::Active);
    let anchor = sm.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    let last_start = pass.status.last_run.as_ref().map(|r| r.started_at.0);
    let suspended = sm.spec.schedule.suspend;
    let mut next_run_at = None;
    let mut started = false;
    match &schedule {
        Err(e) => {
            let message = e.to_string();
            // Warn once when the schedule turns invalid, not on every pass while it stays so.
            let already = pass.status.conditions.iter().any(|c| {
                c.type_ == "Degraded" && c.status == "True" && c.reason == "InvalidSchedule"
            });
            if !already {
                pass.event(
                    EventType::Warning,
                    "InvalidSchedule",
                    "Schedule",
                    message.clone(),
                )
                .await;
            }
            pass.degraded("InvalidSchedule", &message);
        }
        Ok(schedule) => {
            if pass
                .status
                .conditions
                .iter()
                .any(|c| c.type_ == "Degraded" && c.reason == "InvalidSchedule")
            {
                pass.healthy("ScheduleValid", "the schedule is valid again");
            }
            let plan = schedule.plan(last_start, anchor, now);
            let plan = match plan {
                Ok(p) => Some(p),
                Err(e) => {
                    pass.degraded("InvalidSchedule", &e.to_string());
                    None
                }
            };
            let request = sm
                .annotations()
                .get(TRAIN_REQUEST_ANNOTATION)
                .filter(|v| !v.is_empty())
                .cloned();
            let manual = request
                .clone()
                .filter(|r| pass.status.last_train_request.as_ref() != Some(r));
            let trigger = if active || suspended {
                None
            } else if let Some(r) = &manual {
                Some((builders::manual_run_id(&pass.name, r), "Manual"))
            } else if pass.status.champion.is_none() && pass.status.last_run.is_none() {
                Some((builders::scheduled_run_id(&pass.name, anchor), "Bootstrap"))
            } else {
                plan.as_ref()
                    .and_then(|p| p.due_slot)
                    .map(|slot| (builders::scheduled_run_id(&pass.name, slot), "Schedule"))
            };
            next_run_at = plan.as_ref().map(|p| p.next_run_at);
            if let Some((run_id, trigger)) = trigger {
                pass.start(run_id, trigger).await?;
                started = true;
                if trigger == "Manual" {
                    pass.status.last_train_request = manual;
                }
                next_run_at = schedule
                    .plan(Some(now), anchor, now)
                    .ok()
                    .map(|p| p.next_run_at);
            }
        }
    }
    let training = active || started;
    let (reason, message) = match (&pass.status.last_run, training) {
        (Some(r), true) => (
            "JobRunning",
            format!("training run {} is in progress", r.run_id),
        ),
        _ => ("Idle", String::new()),
    };
    set_condition(
        &mut pass.status.conditions,
        "Training",
        training,
        reason,
        &message,
        generation,
        now,
    );
    pass.status.next_run_at = if suspended {
        None
    } else {
        next_run_at.map(Time)
    };

    // 5. Old Jobs.
    pass.housekeeping(&jobs).await?;

    // 6. Status, only when something changed: an unchanged write would wake us up again.
    let degraded = condition_is(&pass.status.conditions, "Degraded", "True");
    pass.status.phase = Some(
        match () {
            () if training => "Training",
            () if degraded => "Degraded",
            () if suspended => "Suspended",
            () if pass.status.champion.is_some() => "Serving",
            () => "Pending",
        }
        .to_owned(),
    );
    pass.status.observed_generation = generation;
    if pass.status != old {
        // The resourceVersion makes the apply conditional: a pass that worked from a cached
        // copy older than the last status write gets 409 and is retried from a fresh one,
        // instead of dropping fields that write added (a handled manual request, say).
        let body = json!({
            "apiVersion": SimpsonModel::api_version(&()),
            "kind": SimpsonModel::kind(&()),
            "metadata": {"resourceVersion": sm.resource_version()},
            "status": pass.status,
        });
        let models: Api<SimpsonModel> = Api::namespaced(ctx.client.clone(), &ns);
        models
            .patch_status(
                &pass.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await?;
    }

    Ok(Action::requeue(if training {
        TRAINING_REQUEUE
    } else {
        pass.status
            .next_run_at
            .as_ref()
            .map(|t| Duration::try_from(t.0.duration_since(now)).unwrap_or(Duration::ZERO))
            .map_or(MAX_REQUEUE, |d| {
                d.clamp(Duration::from_secs(1), MAX_REQUEUE)
            })
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn job_state_reads_conditions() {
        let job = |conditions: serde_json::Value| -> Job {
            serde_json::from_value(
                json!({"metadata": {"name": "j"}, "status": {"conditions": conditions}}),
            )
            .unwrap()
        };
        assert_eq!(job_state(&job(json!([]))), JobState::Active);
        assert_eq!(
            job_state(&job(json!([{"type": "Complete", "status": "True"}]))),
            JobState::Succeeded
        );
        assert_eq!(
            job_state(&job(json!([{"type": "Complete", "status": "False"}]))),
            JobState::Active
        );
        assert_eq!(
            job_state(&job(
                json!([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}])
            )),
            JobState::Failed("DeadlineExceeded".into())
        );
    }

    #[test]
    fn conditions_keep_their_transition_time_until_they_flip() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-02T00:00:00Z".parse().unwrap();
        let mut conds = Vec::new();
        set_condition(&mut conds, "Degraded", true, "JobFailed", "a", Some(1), t0);
        set_condition(
            &mut conds,
            "Degraded",
            true,
            "MetricsMissing",
            "b",
            Some(2),
            t1,
        );
        assert_eq!(
            (conds[0].last_transition_time.0, conds[0].reason.as_str()),
            (t0, "MetricsMissing")
        );
        set_condition(
            &mut conds,
            "Degraded",
            false,
            "RunEvaluated",
            "",
            Some(2),
            t1,
        );
        assert_eq!(
            (
                conds.len(),
                conds[0].last_transition_time.0,
                conds[0].status.as_str()
            ),
            (1, t1, "False")
        );
    }
}
