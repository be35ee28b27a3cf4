//! The reconciler. Level-triggered: every pass starts from what the API server says (the
//! SimpsonModel, its training Jobs) and from object storage, never from memory, so a
//! restarted operator converges to the same state and takes each decision exactly once.
//!
//! One pass, one module per step: [`observe`] (the Jobs, the store) → [`evaluate`] (decide
//! on a finished run) → [`record`] (history, status) → [`rollout`] (rollback request, serve
//! the champion) → [`schedule`] (start a run if one is due, with [`dataset`] for the
//! data-aware triggers) → [`housekeeping`] (old Jobs) →
//! [`retention`] (old runs in the store).

mod cache;
mod conditions;
mod dataset;
mod drift;
mod evaluate;
mod gang;
mod gates;
mod housekeeping;
mod invalid;
mod migrate;
mod observe;
mod queue;
mod record;
mod retention;
mod rollout;
mod schedule;
mod shadow;
mod validate;

pub use cache::{Caches, Lookup, Scope};
pub use conditions::{Concern, set_condition};
pub use gates::{StoreGates, share_of};
pub use invalid::{INVALID_SPEC, error_policy_guarded, reconcile_guarded};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use artifacts::{Storage, StorageError};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use tracing::{instrument, warn};

use crate::builders::{self, MissingMetadata};
use crate::crd::{Phase, RunStatus, SimpsonModel, SimpsonModelStatus};
use crate::metrics::{ErrorLabels, Metrics, ModelLabels};

/// Field manager of every server-side apply the operator makes.
pub const MANAGER: &str = "face2simpson-operator";
/// Upper bound on the time between two passes over a resource, whatever the schedule says.
const MAX_REQUEUE: Duration = Duration::from_secs(3600);
/// How soon a refused request is tried again when nothing changes (a fix to the spec, the RBAC
/// or a quota wakes the model through its watch sooner).
const REFUSED_REQUEUE: Duration = Duration::from_secs(600);
/// `ApplyFailed` reason: the API server refused the inference Deployment, Service, HPA or PDB.
pub const APPLY_FAILED: &str = "ApplyFailed";
/// `RunBlocked` reason: the API server refused a training or validation Job.
pub const JOB_REFUSED: &str = "JobRefused";
/// `StoreUnavailable` reason (and `RunFailed`'s for a run given up on): the store cannot be read.
pub const STORAGE_UNREACHABLE: &str = "StorageUnreachable";

/// The reconcile concurrency the operator runs with unless told otherwise.
pub const DEFAULT_CONCURRENCY: u16 = 16;

/// The longest a pass may take before it is given up and retried with backoff.
const PASS_DEADLINE: Duration = Duration::from_secs(120);
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
    /// Watch caches of the children (empty: every read and apply goes to the API server).
    pub caches: Caches,
    /// Each bucket's share of the reconcile slots.
    pub store_gates: StoreGates,
    /// Consecutive failures per resource, for the error policy's backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// When each model's polls (`<ns>/<name>#dataset`, `#drift`) last looked. Memory only: a
    /// restarted operator looks once more, which costs one look.
    looks: Mutex<HashMap<String, Timestamp>>,
    /// What each model's shadow.json was last made to say (a candidate's run id, or none), so
    /// it is written once per change, not on every pass. A restarted operator writes it once.
    shadow_published: Mutex<HashMap<String, Option<String>>>,
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
            caches: Caches::default(),
            store_gates: StoreGates::new(share_of(DEFAULT_CONCURRENCY)),
            failures: Mutex::default(),
            looks: Mutex::default(),
            shadow_published: Mutex::default(),
        }
    }

    /// The production context: wall clock and stores opened from their URLs.
    pub fn production(client: Client, recorder: Recorder, metrics: Arc<Metrics>) -> Self {
        Self::new(
            client,
            recorder,
            metrics,
            Arc::new(Timestamp::now),
            Arc::new(|url: &str, vars: Vec<(String, String)>| {
                open_store(url, vars, std::env::vars())
            }),
        )
    }

    /// Sizes each bucket's share of the slots for `concurrency` passes at a time.
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: u16) -> Self {
        self.store_gates = StoreGates::new(share_of(concurrency));
        self
    }

    /// Forgets a deleted model: its metrics and its failure count.
    pub fn forget_model(&self, namespace: &str, name: &str) {
        self.metrics.forget(&ModelLabels {
            namespace: namespace.to_owned(),
            model: name.to_owned(),
        });
        let key = format!("{namespace}/{name}");
        self.failures().remove(&key);
        let polls = format!("{key}#");
        lock(&self.looks).retain(|k, _| !k.starts_with(&polls));
        lock(&self.shadow_published).remove(&key);
        self.caches
            .forget(namespace, &builders::inference_name(name));
    }

    fn shadow_published(&self, key: &str) -> Option<Option<String>> {
        lock(&self.shadow_published).get(key).cloned()
    }

    fn shadow_publish(&self, key: String, run_id: Option<String>) {
        lock(&self.shadow_published).insert(key, run_id);
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        lock(&self.failures)
    }
}

/// A poisoned map of the context only loses counts or times; keep going with what it holds.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Opens a model's store: with the keys of its Secret when it names one, else with the
/// operator's own environment, so the cloud identity of its pod (IRSA, EKS Pod Identity,
/// GKE or Azure Workload Identity, which inject AWS_*, GOOGLE_* or AZURE_* variables and
/// token files) reaches the store, as it does in the training and inference pods.
pub fn open_store(
    url: &str,
    secret_vars: Vec<(String, String)>,
    ambient: impl IntoIterator<Item = (String, String)>,
) -> Result<Storage, StorageError> {
    if secret_vars.is_empty() {
        Storage::open_with_env(url, ambient)
    } else {
        Storage::open_with_env(url, secret_vars)
    }
}

/// Why a pass failed. Run failures (a failed Job, bad metrics) are not errors: they are
/// recorded as decisions. These are the problems worth retrying with backoff; each API call
/// has its own variant so a log line says which call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot list the training Jobs: {0}")]
    ListJobs(#[source] kube::Error),
    #[error("cannot read the storage Secret {name}: {source}")]
    GetSecret { name: String, source: kube::Error },
    #[error("cannot create the training Job {name}: {source}")]
    CreateJob { name: String, source: kube::Error },
    #[error("cannot create the validation Job {name}: {source}")]
    CreateValidationJob { name: String, source: kube::Error },
    #[error("cannot read the existing training Job {name}: {source}")]
    GetJob { name: String, source: kube::Error },
    #[error("cannot delete the training Job {name}: {source}")]
    DeleteJob { name: String, source: kube::Error },
    #[error("cannot apply the Deployment {name}: {source}")]
    ApplyDeployment { name: String, source: kube::Error },
    #[error("cannot delete the Deployment {name} (to replace its selector): {source}")]
    DeleteDeployment { name: String, source: kube::Error },
    #[error("cannot list the ReplicaSets left by an old inference Deployment: {0}")]
    ListReplicaSets(#[source] kube::Error),
    #[error("cannot delete the ReplicaSet {name} left by an old inference Deployment: {source}")]
    DeleteReplicaSet { name: String, source: kube::Error },
    #[error("cannot apply the Service {name}: {source}")]
    ApplyService { name: String, source: kube::Error },
    #[error("cannot apply the {kind} {name}: {source}")]
    ApplyAutoscaling {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error("cannot delete the {kind} {name}: {source}")]
    DeleteAutoscaling {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error("cannot write the status: {0}")]
    PatchStatus(#[source] kube::Error),
    #[error("cannot read the SimpsonModel: {0}")]
    GetModel(#[source] kube::Error),
    #[error("cannot read the {kind} {name}: {source}")]
    GetChild {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error(transparent)]
    Metadata(#[from] MissingMetadata),
    #[error("the pass did not finish within {0:?} (a slow store or API server); it starts over")]
    PassDeadline(Duration),
    #[error(
        "the passes using {bucket} already hold their share of the reconcile slots (a slow store); this one comes back later"
    )]
    StoreBusy { bucket: String },
}

impl Error {
    /// The API error behind this one, if any.
    pub fn api(&self) -> Option<&kube::Error> {
        match self {
            Error::ListJobs(e)
            | Error::PatchStatus(e)
            | Error::GetModel(e)
            | Error::ListReplicaSets(e) => Some(e),
            Error::GetSecret { source, .. }
            | Error::CreateJob { source, .. }
            | Error::CreateValidationJob { source, .. }
            | Error::GetJob { source, .. }
            | Error::DeleteJob { source, .. }
            | Error::ApplyDeployment { source, .. }
            | Error::DeleteDeployment { source, .. }
            | Error::DeleteReplicaSet { source, .. }
            | Error::ApplyService { source, .. }
            | Error::ApplyAutoscaling { source, .. }
            | Error::DeleteAutoscaling { source, .. }
            | Error::GetChild { source, .. } => Some(source),
            Error::Metadata(_) | Error::PassDeadline(_) | Error::StoreBusy { .. } => None,
        }
    }

    /// The API server's reason when it refused the request for what it says (400 Bad Request,
    /// 403 Forbidden, 422 Invalid): retrying the same request cannot help, only a change of
    /// the spec, the chart's RBAC or a quota can. Conflicts, throttling, server and transport
    /// errors are not refusals: they are retried.
    pub fn refusal(&self) -> Option<&str> {
        match self.api() {
            Some(kube::Error::Api(s)) if matches!(s.code, 400 | 403 | 422) => Some(&s.message),
            _ => None,
        }
    }

    /// A fixed vocabulary for the `kind` label of the error metric.
    pub fn kind(&self) -> &'static str {
        match self.api() {
            Some(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Some(kube::Error::Api(s)) if s.code == 404 => "not_found",
            Some(kube::Error::Api(s)) if s.code == 403 || s.code == 401 => "forbidden",
            Some(kube::Error::Api(s)) if s.code >= 500 => "server_error",
            Some(kube::Error::Api(_)) => "api_error",
            Some(kube::Error::SerdeError(_)) => "decode",
            Some(_) => "transport",
            None if matches!(self, Error::PassDeadline(_)) => "deadline",
            None if matches!(self, Error::StoreBusy { .. }) => "store_busy",
            None => "invalid_object",
        }
    }
}

/// The same instant for the store's files, which speak chrono.
fn chrono_of(t: Timestamp) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().unsigned_abs())
        .unwrap_or_default()
}

/// Backoff after `failures` consecutive errors: 5 s doubling up to 5 min.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs(5 * (1u64 << exp)).min(Duration::from_secs(300))
}

/// One more consecutive failure of the model `key`; returns how many in a row.
fn count_failure(ctx: &Context, key: String) -> u32 {
    let mut failures = ctx.failures();
    let n = failures.entry(key).or_insert(0);
    *n += 1;
    *n
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
    let n = count_failure(&ctx, object_key(&sm));
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
    /// The operator gave up on the Job and deleted it (it waited too long in its queue): the
    /// run fails with `reason` (the Degraded reason) and `message`.
    Abandoned {
        reason: &'static str,
        message: String,
    },
}

/// Whether the Job was failed by its podFailurePolicy: the trainer's exit code said that no
/// retry can help (configuration, dataset, device).
pub fn failed_for_good(job: &Job) -> bool {
    failed_with(job, "PodFailurePolicy")
}

/// Whether the Job's `Failed` condition is true with `reason`.
pub(crate) fn failed_with(job: &Job, reason: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Failed" && c.status == "True" && c.reason.as_deref() == Some(reason))
}

/// The run `run_id` in `last_run` while it is undecided: what the gang and queue steps update.
pub(crate) fn undecided<'a>(
    last_run: &'a mut Option<crate::crd::RunStatus>,
    run_id: &str,
) -> Option<&'a mut crate::crd::RunStatus> {
    last_run
        .as_mut()
        .filter(|r| r.run_id == run_id && r.decision.is_none())
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

fn condition_is(conds: &[Condition], type_: &str, status: &str) -> bool {
    conds.iter().any(|c| c.type_ == type_ && c.status == status)
}

/// A counter of the metrics, bumped only once the decision it counts is recorded.
#[derive(Debug, Clone, Copy)]
enum Counted {
    TrainingStarted,
    Promotion,
    Rejection,
    FailedRun,
}

/// Something the pass tells the world about: held back until the status that records it is
/// written, so a pass that fails to record (a conflict, an outage) publishes nothing and the
/// retry cannot publish twice.
#[derive(Debug)]
enum Effect {
    Event {
        type_: EventType,
        reason: &'static str,
        action: &'static str,
        note: String,
    },
    Count(Counted),
    /// A gate decision for the model's `history.json` in the store (what the service's model
    /// card charts).
    History(Box<artifacts::HistoryEntry>),
}

/// One pass over one SimpsonModel.
struct Pass<'a> {
    sm: &'a SimpsonModel,
    ctx: &'a Context,
    ns: String,
    name: String,
    now: Timestamp,
    /// The status being built.
    status: SimpsonModelStatus,
    /// The status as the API server has it (read at the start, or last written).
    saved: SimpsonModelStatus,
    /// The resourceVersion every status write is guarded by.
    resource_version: Option<String>,
    effects: Vec<Effect>,
    /// The store, opened at most once per pass.
    store: Option<Storage>,
    /// This pass's place among those using its bucket, held from its first store call on.
    store_permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The soonest a step wants the next pass (a store outage, a rollout in progress).
    requeue: Option<Duration>,
    /// The model's served-path validation Jobs, oldest first.
    validations: Vec<(Job, JobState)>,
    /// A validation Job this pass decided to start: created once the status records it.
    create_validation: Option<Job>,
    /// The attempt of a gang restart this pass decided: its Job is created once the status
    /// records it.
    restart: Option<u32>,
    /// Why the run in flight does not train: its Job waits suspended in its queue.
    queued: Option<String>,
}

impl Pass<'_> {
    fn labels(&self) -> ModelLabels {
        ModelLabels {
            namespace: self.ns.clone(),
            model: self.name.clone(),
        }
    }

    /// Queues an event; published once the status is recorded.
    fn emit(
        &mut self,
        type_: EventType,
        reason: &'static str,
        action: &'static str,
        mut note: String,
    ) {
        // The API server refuses an Event whose note is over 1 kB.
        const MAX_NOTE: usize = 1024;
        if note.len() > MAX_NOTE {
            let mut cut = MAX_NOTE - '…'.len_utf8();
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
            note.push('…');
        }
        self.effects.push(Effect::Event {
            type_,
            reason,
            action,
            note,
        });
    }

    /// Queues a counter increment; applied once the status is recorded.
    fn count(&mut self, counted: Counted) {
        self.effects.push(Effect::Count(counted));
    }

    /// Appends a decision to `runs/<ns>/<name>/history.json`. Best effort: the decision is in
    /// the status already, and the first entry recorded for a run stands, so a retry that
    /// appends again changes nothing.
    async fn append_history(&mut self, entry: &artifacts::HistoryEntry) {
        let key =
            artifacts::layout::history_in(&artifacts::layout::model_runs(&self.ns, &self.name));
        let appended = match self.store().await {
            Ok(Ok(store)) => artifacts::append_history(&store, &key, entry)
                .await
                .map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = appended {
            warn!(model = %self.name, run = %entry.run_id, %key, %error, "cannot append the decision to history.json; the model card will not show it");
        }
    }

    fn requeue_within(&mut self, delay: Duration) {
        self.requeue = Some(self.requeue.map_or(delay, |d| d.min(delay)));
    }

    /// Asks for a pass at `at` (at least a second from now).
    fn requeue_at(&mut self, at: Timestamp) {
        let left = Duration::try_from(at.duration_since(self.now)).unwrap_or(Duration::ZERO);
        self.requeue_within(left.max(Duration::from_secs(1)));
    }

    fn poll_key(&self, what: &str) -> String {
        format!("{}/{}#{what}", self.ns, self.name)
    }

    /// Whether this model's poll `what` is due, `every` after its last look; when it is not,
    /// asks for the pass at which it will be.
    fn poll_due(&mut self, what: &str, every: Duration) -> bool {
        let last = lock(&self.ctx.looks).get(&self.poll_key(what)).copied();
        let Some(next) = last.and_then(|at| {
            SignedDuration::try_from(every)
                .ok()
                .and_then(|d| at.checked_add(d).ok())
        }) else {
            return true;
        };
        if self.now >= next {
            return true;
        }
        self.requeue_at(next);
        false
    }

    /// Records that this model's poll `what` looked now.
    fn looked(&self, what: &str) {
        lock(&self.ctx.looks).insert(self.poll_key(what), self.now);
    }

    /// Publishes the queued events and counts.
    async fn flush(&mut self) {
        // From the status, on every pass: a restarted or newly elected operator exports it too.
        if let Some(at) = &self.status.last_successful_run_at {
            self.ctx
                .metrics
                .last_successful_run
                .get_or_create(&self.labels())
                .set(at.0.as_second());
        }
        for effect in std::mem::take(&mut self.effects) {
            match effect {
                Effect::History(entry) => self.append_history(&entry).await,
                Effect::Count(counted) => {
                    let m = &self.ctx.metrics;
                    let family = match counted {
                        Counted::TrainingStarted => &m.trainings_started,
                        Counted::Promotion => &m.promotions,
                        Counted::Rejection => &m.rejections,
                        Counted::FailedRun => &m.failed_runs,
                    };
                    family.get_or_create(&self.labels()).inc();
                }
                Effect::Event {
                    type_,
                    reason,
                    action,
                    note,
                } => self.publish_event(type_, reason, action, note).await,
            }
        }
    }

    /// Publishes an event now. An event is a courtesy to humans: failing to publish one must
    /// not fail the pass.
    async fn publish_event(
        &self,
        type_: EventType,
        reason: &'static str,
        action: &'static str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self
            .ctx
            .recorder
            .publish(&ev, &self.sm.object_ref(&()))
            .await
        {
            warn!(model = %self.name, reason, error = %e, "cannot publish event");
        }
    }

    /// Writes the status if it changed, then publishes what it records.
    async fn commit(&mut self) -> Result<(), Error> {
        self.write_status().await?;
        self.flush().await;
        Ok(())
    }

    /// Whether this pass took a decision not yet written: a new champion, a run's result, a
    /// handled request. Those are recorded before anything acts on them.
    fn decided(&self) -> bool {
        let (a, b) = (&self.status, &self.saved);
        // When a pod started and how the run waits in its queue are observations, not
        // decisions: they wait for the pass's end.
        let observed = |r: &Option<RunStatus>| {
            r.clone().map(|r| RunStatus {
                pod_started_at: None,
                queued_since: None,
                queued_seconds: None,
                preemptions: None,
                ..r
            })
        };
        a.champion != b.champion
            || a.previous_champion != b.previous_champion
            || observed(&a.last_run) != observed(&b.last_run)
            || a.history != b.history
            || a.last_rollback_request != b.last_rollback_request
            || a.last_promote_request != b.last_promote_request
            || a.last_train_request != b.last_train_request
            || a.candidate.as_ref().map(|c| &c.run_id) != b.candidate.as_ref().map(|c| &c.run_id)
    }

    /// `error`, when the API server refused a request of this pass for what it says (see
    /// [`Error::refusal`]: it is refused again until something changes): reported in `concern`
    /// with [`Pass::warn`], and a look again in a while (a fix wakes the model sooner). Returns
    /// the reported message; any other error comes back as it is, for the pass to fail with.
    fn refused(
        &mut self,
        concern: Concern,
        reason: &'static str,
        action: &'static str,
        error: Error,
    ) -> Result<String, Error> {
        let Some(why) = error.refusal() else {
            return Err(error);
        };
        let message = format!("{error} ({why})");
        warn!(model = %self.name, reason, %message, "the API server refused a request");
        self.warn(concern, reason, action, &message);
        self.requeue_within(REFUSED_REQUEUE);
        Ok(message)
    }

    fn ready(&mut self, ready: bool, reason: &str, message: &str) {
        let generation = self.sm.metadata.generation;
        set_condition(
            &mut self.status.conditions,
            "Ready",
            ready,
            reason,
            message,
            generation,
            self.now,
        );
    }
}

/// Reconciles one SimpsonModel. See the module docs for the order of the steps.
#[instrument(skip_all, fields(model = %object_key(&sm)))]
pub async fn reconcile(sm: Arc<SimpsonModel>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let action = within(PASS_DEADLINE, reconcile_inner(&sm, &ctx)).await?;
    ctx.failures().remove(&object_key(&sm));
    Ok(action)
}

/// `pass`, given up after `deadline`: one slow store or API call must not hold a reconcile
/// slot, which other models wait for, for minutes. Giving up mid-pass is as safe as a crash
/// there: every decision is recorded before anything acts on it, and the next pass starts
/// from what the API server and the store say.
async fn within<T>(
    deadline: Duration,
    pass: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(deadline, pass)
        .await
        .unwrap_or(Err(Error::PassDeadline(deadline)))
}

async fn reconcile_inner(sm: &SimpsonModel, ctx: &Context) -> Result<Action, Error> {
    let now = (ctx.clock)();
    let ns = sm.namespace().ok_or(MissingMetadata("namespace"))?;
    let old = sm.status.clone().unwrap_or_default();
    let mut pass = Pass {
        sm,
        ctx,
        ns,
        name: sm.name_any(),
        now,
        status: old.clone(),
        saved: old,
        resource_version: sm.metadata.resource_version.clone(),
        effects: Vec::new(),
        store: None,
        store_permit: None,
        requeue: None,
        validations: Vec::new(),
        create_validation: None,
        restart: None,
        queued: None,
    };
    conditions::init_concerns(&mut pass.status.conditions, sm.metadata.generation, now);
    pass.clear(
        Concern::SpecInvalid,
        "SpecValid",
        "the operator can read the spec again",
    );

    // Observe: the training Jobs, and the validation Jobs apart.
    let (jobs, validations): (Vec<_>, Vec<_>) = pass
        .list_jobs()
        .await?
        .into_iter()
        .partition(|(j, _)| !builders::is_validation_job(j));
    pass.validations = validations;

    // Evaluate. Only the newest Job can hold an undecided result: no run starts before the
    // previous one is decided, so older Jobs were decided (or superseded) already. It may be
    // newer than status.lastRun when the operator died right after creating it.
    let mut jobs = jobs;
    if let Some((job, state)) = jobs.last_mut()
        && *state == JobState::Active
    {
        // A Job waiting in its queue is paused, not starting: no startup deadline meanwhile.
        if !pass.watch_queue(job, state, false).await? && *state == JobState::Active {
            pass.watch_startup(job, state).await?;
        }
        if *state == JobState::Active {
            pass.ensure_rendezvous(job).await?;
        }
    }
    let mut awaiting_result = false;
    if let Some((job, state)) = jobs.last()
        && *state != JobState::Active
        && pass.pending(job)
        // A rank that failed restarts the gang: the run goes on, nothing is decided.
        && !pass.gang_restart(job, state)
    {
        awaiting_result = !pass.evaluate(job, state.clone()).await?;
    }
    pass.job_missing(&jobs);
    pass.promote_run().await?;
    pass.rollback();
    // Shadow: judge a candidate on what the pods saw of live traffic.
    pass.shadow().await?;

    // Record: a decision is in status before anything acts on it, so a failure after this
    // point can never decide (or announce, or count) a second time.
    if pass.decided() {
        pass.commit().await?;
    }
    pass.publish_shadow().await;
    // Restart: the gang's new Job the status now names.
    let restarting = pass.restart.is_some();
    pass.restart_gang().await?;
    // Validate: the validation Job the status now names.
    let validating = pass.create_validation.is_some()
        || pass.validations.iter().any(|(_, s)| *s == JobState::Active);
    pass.start_validation().await?;

    // Roll out whoever the recorded champion is. A refused apply is reported (ApplyFailed) and
    // does not stop the pass: scheduling goes on whatever serving does. Serving clears it once
    // everything applies.
    let ready = match pass.serve().await {
        Ok(ready) => ready,
        Err(e) => {
            let message = pass.refused(Concern::ApplyFailed, APPLY_FAILED, "Serve", e)?;
            pass.ready(false, APPLY_FAILED, &message);
            false
        }
    };

    // Schedule.
    let active = validating || restarting || jobs.iter().any(|(_, s)| *s == JobState::Active);
    // A candidate in its shadow stage is a run not yet decided: nothing new starts meanwhile.
    let shadowing = pass.status.candidate.is_some();
    let training = pass.schedule(active, awaiting_result || shadowing).await?;

    // Housekeeping: old Jobs, and old runs in the store.
    pass.housekeeping(&jobs).await?;
    pass.retention().await?;

    // Record what the pass observed.
    pass.summarize();
    let degraded = condition_is(&pass.status.conditions, conditions::DEGRADED, "True");
    pass.status.phase = Some(match () {
        () if training && pass.queued.is_some() => Phase::Queued,
        () if training => Phase::Training,
        () if pass.status.candidate.is_some() => Phase::Shadowing,
        () if degraded => Phase::Degraded,
        () if sm.spec.schedule.suspend => Phase::Suspended,
        () if pass.status.champion.is_some() && ready => Phase::Serving,
        () if pass.status.champion.is_some() => Phase::RollingOut,
        () => Phase::Pending,
    });
    pass.status.observed_generation = sm.metadata.generation;
    pass.commit().await?;

    let scheduled = if training {
        TRAINING_REQUEUE
    } else {
        // An overdue run waits on what blocks it (a Job, the store, a missing champion), each
        // of which wakes the model or sets `pass.requeue`; its time is no reason to look again.
        pass.status
            .next_run_at
            .as_ref()
            .filter(|t| t.0 > now)
            .map(|t| Duration::try_from(t.0.duration_since(now)).unwrap_or(Duration::ZERO))
            .map_or(MAX_REQUEUE, |d| {
                d.clamp(Duration::from_secs(1), MAX_REQUEUE)
            })
    };
    Ok(Action::requeue(
        pass.requeue.map_or(scheduled, |d| d.min(scheduled)),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    /// Item 14: without a Secret the operator's own (workload identity) environment is used;
    /// a Secret's keys replace it entirely.
    #[test]
    fn stores_open_with_the_secret_or_the_ambient_identity() {
        let ambient = || {
            vec![
                ("AWS_REGION".to_owned(), "eu-west-1".to_owned()),
                (
                    "AWS_VIRTUAL_HOSTED_STYLE_REQUEST".to_owned(),
                    "maybe".to_owned(),
                ),
            ]
        };
        // The ambient variables are used (and this one refused) when no Secret is named…
        assert!(open_store("s3://bucket/x", vec![], ambient()).is_err());
        // …and ignored when one is.
        let secret = vec![("AWS_REGION".to_owned(), "us-east-1".to_owned())];
        assert!(open_store("s3://bucket/x", secret, ambient()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_that_hangs_is_given_up_at_its_deadline() {
        let hung = within(
            Duration::from_secs(120),
            std::future::pending::<Result<(), Error>>(),
        );
        let err = hung.await.unwrap_err();
        assert!(matches!(err, Error::PassDeadline(d) if d == Duration::from_secs(120)));
        assert_eq!(err.kind(), "deadline");
        let quick = within(Duration::from_secs(1), async { Ok::<_, Error>(7) });
        assert_eq!(quick.await.unwrap(), 7);
    }

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
}
