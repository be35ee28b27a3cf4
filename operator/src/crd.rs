//! The `SimpsonModel` custom resource: what a user asks for (spec) and what the operator
//! observed and decided (status).
//!
//! Every field carries a doc comment because kube-derive turns them into the schema's
//! descriptions, which is what `kubectl explain simpsonmodel.spec…` prints.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// API group of the CRD.
pub const GROUP: &str = "face2simpson.io";
/// A changed value of this annotation requests one training run now.
pub const TRAIN_REQUEST_ANNOTATION: &str = "face2simpson.io/train-requested-at";
/// A changed value of this annotation swaps champion and previous champion (a manual rollback).
pub const ROLLBACK_REQUEST_ANNOTATION: &str = "face2simpson.io/rollback-requested-at";
/// A changed value of this annotation, a run id, puts that already-evaluated run in service.
pub const PROMOTE_RUN_ANNOTATION: &str = "face2simpson.io/promote-run";

/// A continuously retrained Simpsons face classifier: where its data and models live, when
/// to retrain, when a new model may replace the one in service, and how to serve it.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "face2simpson.io",
    version = "v1alpha1",
    kind = "SimpsonModel",
    plural = "simpsonmodels",
    singular = "simpsonmodel",
    shortname = "sm",
    namespaced,
    status = "SimpsonModelStatus",
    derive = "PartialEq",
    doc = "A continuously retrained Simpsons face classifier served in-cluster.",
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Where the model is in its lifecycle"}"#,
    printcolumn = r#"{"name": "Champion-Acc", "type": "number", "jsonPath": ".status.champion.accuracy", "description": "Test accuracy of the model in service"}"#,
    printcolumn = r#"{"name": "Last-Run", "type": "string", "jsonPath": ".status.lastRun.runId", "description": "The most recent training run"}"#,
    printcolumn = r#"{"name": "Decision", "type": "string", "jsonPath": ".status.lastRun.decision", "description": "What the gate decided on the last run"}"#,
    printcolumn = r#"{"name": "Next-Run", "type": "date", "jsonPath": ".status.nextRunAt", "description": "When the next scheduled run is due"}"#,
    printcolumn = r#"{"name": "Summary", "type": "string", "priority": 1, "jsonPath": ".status.lastRun.summary", "description": "The last decision with its numbers: accuracy difference, 95% CI, McNemar p, test faces"}"#,
    printcolumn = r#"{"name": "Queued", "type": "date", "priority": 1, "jsonPath": ".status.lastRun.queuedSince", "description": "How long the run's Job has waited in its queue"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SimpsonModelSpec {
    /// Object store holding datasets and runs: s3://bucket/prefix, gs://…, az://…, or file:///path for local clusters.
    #[schemars(length(min = 1))]
    pub storage_uri: String,
    /// Secret (same namespace) whose keys become environment variables (AWS_*, GOOGLE_*, AZURE_*) of the training Job and the inference Deployment; the operator reads it to fetch metrics.json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_secret_ref: Option<SecretRef>,
    /// Dataset prefix inside the store, holding train/ and test/ class folders.
    #[serde(default = "default_dataset")]
    pub dataset: String,
    /// When to retrain.
    #[serde(default)]
    pub schedule: ScheduleSpec,
    /// The training Job.
    pub training: TrainingSpec,
    /// The gate a new model must pass to replace the champion.
    #[serde(default)]
    pub promotion: PromotionSpec,
    /// The Deployment and Service that serve the champion.
    pub inference: InferenceSpec,
    /// How many runs stay in the store.
    #[serde(default, skip_serializing_if = "RetentionSpec::is_default")]
    pub retention: RetentionSpec,
    /// Runs started by what happens to the data rather than by the clock.
    #[serde(default, skip_serializing_if = "TriggersSpec::is_default")]
    pub triggers: TriggersSpec,
}

/// Runs started by the data.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggersSpec {
    /// Start a run (trigger DatasetChange) when the dataset's listing differs from the one the latest run trained on and has stayed the same for settleSeconds. The operator lists the dataset prefix once per pollSeconds and fetches nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_change: Option<DatasetChangeTrigger>,
    /// Start a run (trigger Drift) when the champion's live verdicts, as the inference pods report them, drift from its test-set predictions: population stability index above maxPsi over the last windowSeconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction_drift: Option<PredictionDriftTrigger>,
}

/// When prediction drift starts a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PredictionDriftTrigger {
    /// Seconds of live verdicts compared (ending now).
    #[serde(default = "default_drift_window")]
    #[schemars(range(min = 60, max = 86400))]
    pub window_seconds: i64,
    /// Population stability index above which the verdicts count as drifted (0.25 is the usual "large shift").
    #[serde(default = "default_max_psi")]
    #[schemars(range(min = 0.0))]
    pub max_psi: f64,
    /// Live verdicts the window must hold before it is judged.
    #[serde(default = "default_min_verdicts")]
    #[schemars(with = "i64", range(min = 1))]
    pub min_verdicts: u64,
    /// Seconds between two looks at the pods' reports.
    #[serde(default = "default_poll_seconds")]
    #[schemars(range(min = 10))]
    pub poll_seconds: i64,
    /// Least time between the start of the previous run (of any trigger) and a run started by drift.
    #[serde(default = "default_min_interval_seconds")]
    #[schemars(range(min = 0))]
    pub min_interval_seconds: i64,
}

impl Default for PredictionDriftTrigger {
    fn default() -> Self {
        Self {
            window_seconds: default_drift_window(),
            max_psi: default_max_psi(),
            min_verdicts: default_min_verdicts(),
            poll_seconds: default_poll_seconds(),
            min_interval_seconds: default_min_interval_seconds(),
        }
    }
}

impl TriggersSpec {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// When a change of the dataset starts a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetChangeTrigger {
    /// Seconds between two listings of the dataset prefix (one LIST each).
    #[serde(default = "default_poll_seconds")]
    #[schemars(range(min = 10))]
    pub poll_seconds: i64,
    /// Seconds the new listing must stay unchanged before a run starts, so an upload in progress is trained on once it is complete, not file by file.
    #[serde(default = "default_settle_seconds")]
    #[schemars(range(min = 0))]
    pub settle_seconds: i64,
    /// Least time between the start of the previous run (of any trigger) and a run started by a data change.
    #[serde(default = "default_min_interval_seconds")]
    #[schemars(range(min = 0))]
    pub min_interval_seconds: i64,
}

impl Default for DatasetChangeTrigger {
    fn default() -> Self {
        Self {
            poll_seconds: default_poll_seconds(),
            settle_seconds: default_settle_seconds(),
            min_interval_seconds: default_min_interval_seconds(),
        }
    }
}

/// Retention of old runs under the model's runs prefix in the store.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Runs kept, newest first (at least 2); the champion's, the previous champion's and a run in flight are kept besides. Checked once after each decided run. Unset: every run is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i32>", range(min = 2))]
    pub keep_runs: Option<u32>,
    /// Only count what retention would delete (status.retention.wouldDelete); delete nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl RetentionSpec {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A reference to a Secret in the SimpsonModel's namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecretRef {
    /// Name of the Secret.
    pub name: String,
}

/// When training runs happen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSpec {
    /// Time between the starts of two runs, e.g. 72h or 3d 12h. Measured from the last run's start, so it is a true every-three-days, unlike a cron day-of-month step that resets each month. Ignored when cron is set.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = r"^\s*([Pp][0-9A-Za-z.,]+|[0-9][0-9A-Za-z .,]*)\s*$"))]
    pub interval: String,
    /// Standard five-field cron expression (optionally with a leading seconds field); takes precedence over interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^\s*(@[a-z]+|\S+(\s+\S+){4,6})\s*$"))]
    pub cron: Option<String>,
    /// IANA time zone the cron expression is evaluated in, e.g. Europe/Paris. Defaults to UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// When true no new training Job starts; a running one still finishes and is evaluated.
    #[serde(default)]
    pub suspend: bool,
    /// Succeeded training Jobs kept for inspection; older ones are deleted.
    #[serde(default = "default_successful_jobs")]
    #[schemars(with = "i32", range(min = 0))]
    pub successful_jobs_history_limit: u32,
    /// Failed training Jobs kept for inspection; older ones are deleted.
    #[serde(default = "default_failed_jobs")]
    #[schemars(with = "i32", range(min = 0))]
    pub failed_jobs_history_limit: u32,
    /// Decisions kept in status.history.
    #[serde(default = "default_history_limit")]
    #[schemars(with = "i32", range(min = 1))]
    pub history_limit: u32,
    /// Seconds after a failed run before the next attempt; doubles with each consecutive failure. A retry never waits longer than the schedule's next slot.
    #[serde(default = "default_retry_backoff")]
    #[schemars(range(min = 1))]
    pub retry_backoff_seconds: i64,
    /// Upper bound of the doubling retry backoff, in seconds.
    #[serde(default = "default_max_retry_backoff")]
    #[schemars(range(min = 1))]
    pub max_retry_backoff_seconds: i64,
    /// Retries after a failed run before the operator stops retrying until the spec changes (the next schedule slot, a manual or data-triggered run still start). Unset: retried for as long as runs fail, with the doubling backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i32>", range(min = 0))]
    pub max_retries: Option<u32>,
    /// Skip a schedule slot whose dataset listing is the one the champion trained on: no Job, a Skipped entry in status.history, and the next slot planned from the skipped one. Bootstrap, manual, retry and data-triggered runs are never skipped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_if_unchanged: bool,
}

impl Default for ScheduleSpec {
    fn default() -> Self {
        Self {
            interval: default_interval(),
            cron: None,
            time_zone: None,
            suspend: false,
            successful_jobs_history_limit: default_successful_jobs(),
            failed_jobs_history_limit: default_failed_jobs(),
            history_limit: default_history_limit(),
            retry_backoff_seconds: default_retry_backoff(),
            max_retry_backoff_seconds: default_max_retry_backoff(),
            max_retries: None,
            skip_if_unchanged: false,
        }
    }
}

/// The training Job and the hyperparameters handed to `face2simpson-trainer train`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingSpec {
    /// Container image with the face2simpson-trainer binary.
    pub image: String,
    /// Compute resources of the training container. CPU and memory requests default to 2 and 8Gi when not given; GPUs come from `gpus`.
    #[serde(default)]
    pub resources: ResourceRequirements,
    /// NVIDIA GPUs of the training pod, merged into the limits as nvidia.com/gpu (unless `resources.limits` names nvidia.com/gpu itself). With one or more the trainer runs with --device cuda and fails at once when CUDA is missing; with 0 it trains on the CPU.
    #[serde(default = "default_gpus")]
    #[schemars(range(min = 0))]
    pub gpus: i32,
    /// Node labels the training pod must match, e.g. a GPU node pool.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the training pod, e.g. for tainted GPU nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Side of the square network input in pixels.
    #[serde(default = "default_image_size")]
    #[schemars(with = "i32", range(min = 32, max = 1024))]
    pub image_size: u32,
    /// Maximum number of epochs; early stopping may end sooner.
    #[serde(default = "default_epochs")]
    #[schemars(with = "i32", range(min = 1))]
    pub epochs: u32,
    /// Images per optimisation step.
    #[serde(default = "default_batch_size")]
    #[schemars(with = "i32", range(min = 2))]
    pub batch_size: u32,
    /// Initial learning rate of the cosine schedule.
    #[serde(default = "default_learning_rate")]
    #[schemars(extend("minimum" = 0.0, "exclusiveMinimum" = true))]
    pub learning_rate: f64,
    /// Label smoothing of the cross-entropy loss.
    #[serde(default = "default_label_smoothing")]
    #[schemars(range(min = 0.0, max = 0.99))]
    pub label_smoothing: f64,
    /// Dropout before the classifier.
    #[serde(default = "default_dropout")]
    #[schemars(range(min = 0.0, max = 0.99))]
    pub dropout: f64,
    /// Epochs without a lower validation loss before training stops.
    #[serde(default = "default_patience")]
    #[schemars(with = "i32", range(min = 1))]
    pub patience: u32,
    /// Seconds after which a training Job is killed and counted as failed.
    #[serde(default = "default_active_deadline")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: i64,
    /// Seconds a training Job may wait for its first pod to become ready (scheduling, a GPU node scaling up, the image pull). Past it, a Job whose pod never started (an image that cannot be pulled, a missing Secret) is deleted and its run counted as failed, instead of holding a GPU until activeDeadlineSeconds.
    #[serde(default = "default_startup_deadline")]
    #[schemars(range(min = 60))]
    pub startup_deadline_seconds: i64,
    /// Pod-level settings merged into the training pod: service account, placement, pull secrets, extra env and volumes.
    #[serde(default, skip_serializing_if = "PodOverrides::is_empty")]
    pub pod_overrides: PodOverrides,
    /// Pod retries before a training Job counts as failed. With workers > 1 the Job itself allows none: a rank that fails ends the Job, and the operator restarts the whole gang from the last checkpoint up to this many times (status.lastRun.restarts).
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0))]
    pub backoff_limit: i32,
    /// Data-parallel ranks (processes, one per pod) of a run. 1: one pod, today's trainer. More: an Indexed Job of that many pods and a headless Service for their rendezvous; rank 0 alone writes the run's artifacts and its success ends the Job.
    #[serde(default = "default_workers")]
    #[schemars(range(min = 1, max = 1000))]
    pub workers: i32,
    /// Kueue LocalQueue (in the model's namespace) the training Jobs are submitted to, as the label kueue.x-k8s.io/queue-name. The Jobs are created suspended and start when Kueue admits them; while they wait the model's phase is Queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub queue_name: Option<String>,
    /// PriorityClass of the training pods (Kueue orders and preempts workloads by it). Wins over podOverrides.priorityClassName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// Seconds a training Job may wait suspended in its queue (since it was last queued) before the run is given up: decision Failed with reason QueueTimeout, retried after the backoff. Unset: it waits as long as it takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_queued_seconds: Option<i64>,
}

/// The promotion gate, applied with the same function as the trainer's cluster-free mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromotionSpec {
    /// Absolute accuracy (0-1) a challenger must beat the re-scored champion by; 0 means strictly better.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_improvement: f64,
    /// Accuracy floor (0-1) below which no model is ever promoted, first model included.
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_accuracy: f64,
    /// Test images a run must have been scored on to be promoted, first model included; 0 means no minimum.
    #[serde(default)]
    #[schemars(with = "i64", range(min = 0))]
    pub min_test_images: u64,
    /// Significance level (e.g. 0.05): a challenger replaces a champion only if an exact two-sided McNemar test on their paired test predictions gives p below it. Unset: no test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1.0), extend("minimum" = 0.0, "exclusiveMinimum" = true))]
    pub min_significance: Option<f64>,
    /// Largest recall (0-1) any one class may lose against the champion on the same test images: a challenger that wins on average but whose recall on some class drops by more than this is rejected (ClassRegression). 1 switches the check off.
    #[serde(default = "default_max_class_recall_drop")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_class_recall_drop: f64,
    /// Decide and record, but never change the champion or the Deployment.
    #[serde(default)]
    pub dry_run: bool,
    /// Seconds after a run finished during which storage errors reading its metrics.json are retried; only then is the run recorded as Failed. A short store outage never throws a finished run away.
    #[serde(default = "default_metrics_deadline")]
    #[schemars(range(min = 0))]
    pub metrics_deadline_seconds: i64,
    /// Served-path validation: before anything rolls, a Job with the inference image (`face2simpson-inference validate`) loads the candidate as serving does, answers the test split through the request path, and scores the champion the same way; the gate then compares served accuracies. A candidate that fails is rejected (InfraValidationFailed, TrainServeSkew).
    #[serde(default)]
    pub validation: ValidationSpec,
    /// Shadow stage: a candidate the gate would promote is first hot-loaded by the inference pods beside the champion and scored on sampled live requests, off the response path; it is promoted only if it holds up there (ShadowPromote) and rejected otherwise (ShadowReject). No Deployment roll, no service mesh.
    #[serde(default, skip_serializing_if = "ShadowSpec::is_default")]
    pub shadow: ShadowSpec,
}

/// What to do when the shadow stage ends without enough live requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum OnInconclusive {
    /// Keep the champion (the safe default).
    #[default]
    Reject,
    /// Promote on the offline gate's word.
    Promote,
}

/// The shadow stage on live traffic before a promotion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShadowSpec {
    /// Shadow every candidate the offline gate would promote before it replaces the champion.
    #[serde(default)]
    pub enabled: bool,
    /// Share (0-1) of answered requests the candidate also scores.
    #[serde(default = "default_sample_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample_rate: f64,
    /// Live requests the candidate must have scored before a decision.
    #[serde(default = "default_min_requests")]
    #[schemars(with = "i64", range(min = 1))]
    pub min_requests: u64,
    /// Seconds the stage may last; without minRequests by then it is inconclusive (see onInconclusive).
    #[serde(default = "default_max_shadow_seconds")]
    #[schemars(range(min = 10))]
    pub max_duration_seconds: i64,
    /// Largest share (0-1) of faces on which candidate and champion may give different verdicts.
    #[serde(default = "default_max_disagreement")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_disagreement: f64,
    /// Largest ratio of the candidate's p95 classification time to the champion's, on the same inputs in the same pods.
    #[serde(default = "default_max_latency_ratio")]
    #[schemars(range(min = 0.0))]
    pub max_latency_ratio: f64,
    /// Largest share (0-1) of scored requests on which the candidate failed.
    #[serde(default = "default_max_error_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: f64,
    /// Reject (keep the champion) or Promote when maxDurationSeconds passes before minRequests.
    #[serde(default)]
    pub on_inconclusive: OnInconclusive,
}

impl Default for ShadowSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            sample_rate: default_sample_rate(),
            min_requests: default_min_requests(),
            max_duration_seconds: default_max_shadow_seconds(),
            max_disagreement: default_max_disagreement(),
            max_latency_ratio: default_max_latency_ratio(),
            max_error_rate: default_max_error_rate(),
            on_inconclusive: OnInconclusive::Reject,
        }
    }
}

impl ShadowSpec {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Served-path validation of each candidate before the gate decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidationSpec {
    /// Run the validation Job after each successful training run; false: the gate decides on the trainer's test accuracy alone.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The candidate's p95 request latency, in milliseconds, at most (InfraValidationFailed above it). Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_p95_milliseconds: Option<f64>,
    /// Share (0-1) of test images whose served verdict equals the trainer's own prediction, at least (TrainServeSkew below it).
    #[serde(default = "default_min_agreement")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_agreement: f64,
}

impl Default for ValidationSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            max_p95_milliseconds: None,
            min_agreement: default_min_agreement(),
        }
    }
}

impl Default for PromotionSpec {
    fn default() -> Self {
        Self {
            min_improvement: 0.0,
            min_accuracy: 0.0,
            min_test_images: 0,
            min_significance: None,
            max_class_recall_drop: default_max_class_recall_drop(),
            dry_run: false,
            metrics_deadline_seconds: default_metrics_deadline(),
            validation: ValidationSpec::default(),
            shadow: ShadowSpec::default(),
        }
    }
}

/// How the champion is served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceSpec {
    /// Container image with the face2simpson-inference binary.
    pub image: String,
    /// Number of inference pods; ignored when autoscaling is set.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Compute resources of the inference container. CPU and memory requests default to 250m and 512Mi when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Port the inference server listens on and the Service exposes.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Service type: ClusterIP, NodePort or LoadBalancer.
    #[serde(default)]
    pub service_type: ServiceType,
    /// Scale the inference pods with a HorizontalPodAutoscaler (and protect them with a PodDisruptionBudget) instead of a fixed replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// Pod-level settings merged into the inference pods: service account, placement, pull secrets, extra env and volumes.
    #[serde(default, skip_serializing_if = "PodOverrides::is_empty")]
    pub pod_overrides: PodOverrides,
    /// Seconds a rollout may make no progress before it counts as failed and the previous champion is put back (the Deployment's progressDeadlineSeconds).
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: i32,
    /// The model's name on the Open Inference Protocol (KServe v2) routes, /v2/models/<modelName>/infer: what KServe, Triton and Seldon clients and gateways call it (the server's MODEL_NAME). Unset: face2simpson.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
    )]
    pub model_name: Option<String>,
}

/// A HorizontalPodAutoscaler for the inference Deployment. With neither target set, pods
/// are kept at 70% of their CPU requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// Fewest inference pods.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1))]
    pub min_replicas: i32,
    /// Most inference pods.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Average CPU utilisation to keep the pods at, in percent of their CPU requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: Option<i32>,
    /// Average requests per second per pod to keep the pods at, read from the per-pod custom metric `requestsPerSecondMetric` (needs a custom metrics adapter such as prometheus-adapter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_requests_per_second: Option<i32>,
    /// Name of the per-pod custom metric holding requests per second.
    #[serde(default = "default_rps_metric")]
    pub requests_per_second_metric: String,
}

fn default_min_replicas() -> i32 {
    1
}
fn default_rps_metric() -> String {
    "http_requests_per_second".to_owned()
}

/// Pod-level settings merged into a workload's pods, like KServe's and Stackable's pod
/// overrides. The operator's own settings win where they would clash (its env variables,
/// its labels, the hardened security context), so an override cannot break the rollout or
/// the selectors.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Service account of the pods, e.g. one bound to a cloud identity (IRSA, EKS Pod Identity, GKE or Azure Workload Identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Mount the service account's API token into the pods. Off unless set: neither the trainer nor the service talks to the Kubernetes API, and a token in a pod is a credential an attacker in it can use. Cloud identities (IRSA, EKS Pod Identity, GKE and Azure Workload Identity) do not need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automount_service_account_token: Option<bool>,
    /// Labels added to the pods (the operator's own labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Node labels the pods must match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the pods (core/v1 Toleration).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "tolerations")]
    pub tolerations: Vec<Toleration>,
    /// Affinity of the pods (core/v1 Affinity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub affinity: Option<Affinity>,
    /// Secrets for pulling the image from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "local_object_references")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Priority class of the pods, e.g. to let training be preempted before serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Runtime class of the pods, e.g. nvidia on clusters with several container runtimes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
    /// Extra environment variables of the container (core/v1 EnvVar); the operator's own variables win.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "env_vars")]
    pub env: Vec<EnvVar>,
    /// Extra volumes of the pods (core/v1 Volume).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "volumes")]
    pub volumes: Vec<Volume>,
    /// Extra volume mounts of the container (core/v1 VolumeMount).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "volume_mounts")]
    pub volume_mounts: Vec<VolumeMount>,
}

impl PodOverrides {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One Kubernetes object validated by the API server when the pod is created, not spelled out
/// here: its full schema (core/v1 Affinity) would make the CRD too large to apply.
fn preserved_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

// The small core/v1 types are spelled out, so that the API server refuses a malformed entry
// when the SimpsonModel is applied: one the operator could not read would otherwise be stored,
// and only the operator would find out.

/// core/v1 EnvVar; `valueFrom` is validated when the pod is created.
fn env_vars(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "description": "Name of the variable."},
                "value": {"type": "string", "description": "Its value."},
                "valueFrom": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "description": "Where its value comes from (core/v1 EnvVarSource), checked when the pod is created."},
            },
        },
    })
}

/// core/v1 Volume: kept open (its sources are many and large), but with the fields an admission
/// policy reads declared, so that CEL can see them (`has(v.hostPath)`).
fn volumes(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "description": "Name of the volume, for volumeMounts."},
                "hostPath": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "description": "A directory of the node (core/v1 HostPathVolumeSource); the chart's admission policy refuses it."},
            },
        },
    })
}

/// core/v1 VolumeMount.
fn volume_mounts(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name", "mountPath"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "description": "The volume to mount (a name in volumes)."},
                "mountPath": {"type": "string", "minLength": 1, "description": "Where in the container."},
                "readOnly": {"type": "boolean", "description": "Mounted read-only."},
                "recursiveReadOnly": {"type": "string", "description": "Disabled, IfPossible or Enabled."},
                "subPath": {"type": "string", "description": "Path within the volume to mount instead of its root."},
                "subPathExpr": {"type": "string", "description": "subPath with $(VAR) expanded from the container's environment."},
                "mountPropagation": {"type": "string", "description": "None, HostToContainer or Bidirectional."},
            },
        },
    })
}

/// core/v1 Toleration.
fn tolerations(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "key": {"type": "string", "description": "Taint key tolerated; empty with Exists tolerates every taint."},
                "operator": {"type": "string", "enum": ["", "Exists", "Equal"], "description": "Exists or Equal (the default)."},
                "value": {"type": "string", "description": "Taint value, for Equal."},
                "effect": {"type": "string", "enum": ["", "NoSchedule", "PreferNoSchedule", "NoExecute"], "description": "Taint effect tolerated; empty for all."},
                "tolerationSeconds": {"type": "integer", "format": "int64", "description": "For NoExecute: how long the pod stays bound after the taint appears."},
            },
        },
    })
}

/// core/v1 LocalObjectReference.
fn local_object_references(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 1, "description": "Name of the Secret."}},
        },
    })
}

/// Defines a string-valued state enum of the status: the variants are their wire names,
/// `as_str` and `Display` give them back, and they compare with a plain `&str` (a status read
/// by a human or a test speaks in those names).
///
/// A status written by a newer operator may hold a value this one does not know (a rollback of
/// the chart, a standby of the old version taking over during an upgrade). Failing on it would
/// make the whole SimpsonModel unreadable (Degraded=InvalidSpec, nothing reconciled), so such a
/// value is read as `Unrecognized` with its text, which is written back as it came: the
/// newer version's CRD, which knows it, accepts it again. The schema lists the known values
/// only.
macro_rules! state_enum {
    ($(#[doc = $doc:literal])* $name:ident { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A value written by a newer version of the operator, kept as it is.
            #[serde(untagged)]
            Unrecognized(String),
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => stringify!($variant),)+
                    $name::Unrecognized(s) => s,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            /// The schema of the known values, as derived for a plain enum of them.
            fn json_schema(generator: &mut SchemaGenerator) -> Schema {
                $(#[doc = $doc])*
                #[derive(JsonSchema)]
                #[allow(dead_code)]
                enum Known {
                    $($(#[$vmeta])* $variant,)+
                }
                Known::json_schema(generator)
            }
        }
    };
}

state_enum! {
    /// Where a model is in its lifecycle: Pending (no model yet), Training, Queued (its Job waits in a queue), Shadowing (a candidate is scored on live traffic), RollingOut (a new champion is not yet available), Serving, Suspended or Degraded.
    Phase {
        /// No model has been served yet.
        Pending,
        /// A training Job runs.
        Training,
        /// The training Job waits suspended in its queue (spec.training.queueName): not admitted yet, or preempted.
        Queued,
        /// A champion exists but its pods are not all updated and available yet.
        RollingOut,
        /// The champion's rollout is complete.
        Serving,
        /// A candidate is scored on live traffic beside the champion (spec.promotion.shadow).
        Shadowing,
        /// No new runs start.
        Suspended,
        /// Something needs attention: the Degraded condition is True (it names the concern conditions that are).
        Degraded,
    }
}

state_enum! {
    /// Why a run started.
    Trigger {
        /// The first run of a model without a champion.
        Bootstrap,
        /// An interval or cron slot.
        Schedule,
        /// The backoff after a failed run.
        Retry,
        /// The face2simpson.io/train-requested-at annotation.
        Manual,
        /// The dataset's listing changed and settled (spec.triggers.datasetChange).
        DatasetChange,
        /// The champion's live verdicts drifted from its test-set predictions (spec.triggers.predictionDrift).
        Drift,
        /// A Job adopted after the operator lost its status.
        Unknown,
    }
}

state_enum! {
    /// A recorded decision: the gate's (FirstModel, Promote, Reject), a run without a usable result (Failed), or a change of champion not made by the gate (Rollback, ManualPromote, RolloutFailed; history only). Unset in lastRun while the run is in progress.
    Verdict {
        FirstModel,
        Promote,
        Reject,
        Failed,
        /// The rollback annotation put the previous champion back.
        Rollback,
        /// The promote-run annotation put a named run in service.
        ManualPromote,
        /// The run's rollout never became available; the previous champion was put back.
        RolloutFailed,
        /// The champion changed while the run trained (a rollback, a manual promotion): it was compared with a model no longer in service, so it decides nothing. Not a failure: no retry, no Degraded.
        Superseded,
        /// The offline gate would promote the run; it is being scored on live traffic (status.candidate). Not final.
        Shadowing,
        /// The shadow stage on live traffic confirmed the candidate: it replaced the champion.
        ShadowPromote,
        /// The shadow stage found the candidate worse on live traffic (disagreement, latency, errors, or inconclusive); the champion stays.
        ShadowReject,
        /// A schedule slot that started no run: spec.schedule.skipIfUnchanged found the dataset the champion trained on (history only).
        Skipped,
    }
}

/// How the inference Service is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// What the operator observed and decided.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SimpsonModelStatus {
    /// Standard conditions: Ready (the champion's rollout is complete and available), Training (a Job runs), Validated (the last candidate's served-path validation), and one condition per concern, each set and cleared by the step that owns it: RunFailed (the last run ended without a usable result: JobFailed, JobMissing, MetricsMissing, MetricsInvalid, StorageUnreachable, QueueTimeout), RunBlocked (a run cannot start or go on: InvalidSchedule, ChampionMissing, JobConflict, JobRefused), StoreUnavailable (a run's result or a due run waits for the store: StorageUnreachable), RolloutFailed (the inference pods do not become available), ApplyFailed (the API server refused an inference object: ApplyFailed; or one belongs to someone else: ObjectNotOwned), SpecInvalid (the operator cannot read the spec: InvalidSpec). Degraded summarizes them: True when any is, with the reason of the first in that order (SpecInvalid, ApplyFailed, RolloutFailed, StoreUnavailable, RunBlocked, RunFailed) and a message naming each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Pending (no model yet), Training, Queued, Shadowing, RollingOut (a new champion is not yet available), Serving, Suspended or Degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The model in service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub champion: Option<ChampionStatus>,
    /// The model served before the champion, the target of a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_champion: Option<ChampionStatus>,
    /// The most recent training run, running or finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<RunStatus>,
    /// When the next scheduled run is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_at: Option<Time>,
    /// The latest decisions, newest first, bounded by spec.schedule.historyLimit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    /// The metadata.generation this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The last handled value of the face2simpson.io/train-requested-at annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_train_request: Option<String>,
    /// The last handled value of the face2simpson.io/rollback-requested-at annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollback_request: Option<String>,
    /// True while the operator owns a HorizontalPodAutoscaler and PodDisruptionBudget for the inference pods; they are deleted when spec.inference.autoscaling is removed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub autoscaled: bool,
    /// The last handled value of the face2simpson.io/promote-run annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_promote_request: Option<String>,
    /// When the last run that produced a usable model finished, whatever it was decided (anything but Failed). Exported as face2simpson_last_successful_run_timestamp_seconds on every pass, so the alert on it holds across restarts and failovers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_run_at: Option<Time>,
    /// What retention found the last time it looked (after each decided run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionStatus>,
    /// The run being scored on live traffic beside the champion (spec.promotion.shadow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<CandidateStatus>,
    /// The champion's live verdicts against its test-set predictions (spec.triggers.predictionDrift).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftStatus>,
    /// The dataset's listing as the operator last saw it, with spec.triggers.datasetChange or spec.schedule.skipIfUnchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetStatus>,
    /// The last inference rollout that became available. A stalled rollout demotes the champion only when its pod template differs from this one by the model alone; any other change that stalls leaves the champion in place and reports RolloutFailed=True (and so Degraded) until a rollout completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

/// What retention found the last time it looked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionStatus {
    /// The run after whose decision it looked; it looks again after the next one.
    pub after_run: String,
    /// Runs under the model's prefix when it looked, before deleting.
    #[schemars(with = "i32", range(min = 0))]
    pub stored_runs: u32,
    /// Runs it deleted then.
    #[schemars(with = "i32", range(min = 0))]
    pub deleted_runs: u32,
    /// With dryRun: the runs it would have deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub would_delete: Vec<String>,
}

/// A candidate in its shadow stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CandidateStatus {
    /// Its run.
    pub run_id: String,
    /// Full URL of its weights.
    pub model_uri: String,
    /// Its accuracy as the offline gate measured it (served, when validated).
    pub accuracy: f64,
    /// The champion it is compared with; another champion (a rollback, a manual promotion) supersedes the stage.
    pub champion_run_id: String,
    /// When the stage began.
    pub started_at: Time,
    /// What the pods reported so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowStatus>,
}

/// The pods' shadow reports, merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShadowStatus {
    /// Pods that reported.
    #[schemars(with = "i64", range(min = 0))]
    pub pods: u64,
    /// Answered requests sampled for the candidate.
    #[schemars(with = "i64", range(min = 0))]
    pub sampled: u64,
    /// Sampled requests the candidate scored.
    #[schemars(with = "i64", range(min = 0))]
    pub scored: u64,
    /// Sampled requests dropped under load (shadow work goes first).
    #[schemars(with = "i64", range(min = 0))]
    pub dropped: u64,
    /// Share (0-1) of faces where the two verdicts differ.
    pub disagreement: f64,
    /// Share (0-1) of scored requests the candidate failed on.
    pub error_rate: f64,
    /// The champion's p95 classification time (ms) on the scored requests; a bucket's upper bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub champion_p95_ms: Option<f64>,
    /// The candidate's, on the same inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_p95_ms: Option<f64>,
    /// Why a pod could not load the candidate, if one could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_error: Option<String>,
}

/// Prediction drift as last measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriftStatus {
    /// Population stability index of the live verdicts against the champion's test-set predictions (3 decimals).
    pub psi: f64,
    /// Live verdicts in the window.
    #[schemars(with = "i64", range(min = 0))]
    pub verdicts: u64,
    /// The window, in seconds, ending at observedAt.
    pub window_seconds: i64,
    /// The champion it was measured for.
    pub run_id: String,
    /// When it was measured.
    pub observed_at: Time,
}

/// The dataset as the operator saw it. Written when the listing changes, not on every look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetStatus {
    /// Fingerprint of the listing last seen: sha256 over every object's key, size and ETag, as the trainer records it in metrics.json (listing_fingerprint).
    pub fingerprint: String,
    /// When that listing was first seen; a change starts a run once it is settleSeconds old.
    pub seen_since: Time,
    /// The listing the latest run trained on: from its metrics.json once decided, as listed when it started before that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained: Option<String>,
    /// The latest schedule slot skipped because the data had not changed; the schedule counts from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_slot: Option<Time>,
}

/// An inference rollout that became available.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The run its pods served.
    pub run_id: String,
    /// Hash of its pod template without the model (run-id annotation and MODEL_URI).
    pub template_hash: String,
    /// When the operator saw it complete.
    pub available_at: Time,
}

/// A model that is or was in service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChampionStatus {
    /// The run that trained it.
    pub run_id: String,
    /// Its test accuracy (0-1) when it was promoted.
    pub accuracy: f64,
    /// Full URL of its weights, the MODEL_URI of the inference pods.
    pub model_uri: String,
    /// When it went into service.
    pub promoted_at: Time,
}

/// One training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunStatus {
    /// Run id; artifacts live under runs/<namespace>/<name>/<runId>/.
    pub run_id: String,
    /// Name of the training Job.
    pub job_name: String,
    /// Why it started: Bootstrap, Schedule, Retry (after a failed run), Manual, DatasetChange, or Unknown (a Job adopted after the operator lost its status).
    pub trigger: Trigger,
    /// When the Job was created.
    pub started_at: Time,
    /// The champion this run is compared with (re-scored on the run's test split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub champion_run_id: Option<String>,
    /// Full URL of the weights this run writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_uri: Option<String>,
    /// When the operator saw it finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The run's test accuracy (0-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// The champion's accuracy re-measured by this run on the same test set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub champion_accuracy: Option<f64>,
    /// FirstModel, Promote, Reject or Failed; unset while the run is in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Verdict>,
    /// A sentence explaining the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The decision in one line with its numbers, e.g. "Promote: +2.1 pts (95% CI +0.4..+3.8, p=0.01, 600 test faces)" or "FirstModel: 97.5% on 600 test faces".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The paired comparison with the champion behind the decision; unset without a champion or when the run's metrics.json has no paired test predictions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<ComparisonStatus>,
    /// True when the decision was taken in dry-run mode and nothing rolled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// The served-path validation of this run (spec.promotion.validation): its Job, and once it finished, the served accuracies the gate compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<RunValidation>,
    /// Set when the run failed for a reason a retry cannot fix (the trainer's exit code said configuration, dataset or device, and the Job's podFailurePolicy ended it), or when it was the last failure schedule.maxRetries allows: the spec's generation then. No retry until the spec changes; the schedule's next slot still runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_generation: Option<i64>,
    /// When the operator first saw a pod of the run's Job ready: from then on the startup deadline no longer applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_started_at: Option<Time>,
    /// What the shadow stage measured on live traffic, once it decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowStatus>,
    /// Times the whole gang of ranks (workers > 1) was restarted from the last checkpoint after a rank failed; jobName is the Job of the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub restarts: Option<i32>,
    /// Since when the run's Job waits suspended in its queue; unset while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_since: Option<Time>,
    /// Seconds the run waited in its queue before it was last admitted, all waits together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub queued_seconds: Option<i64>,
    /// Times the run's Job was suspended again after it had been admitted, or had run (a preemption): a pause, not a failure; the run resumes from its checkpoint once admitted again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub preemptions: Option<i32>,
}

impl RunStatus {
    /// A run that has started and has no result yet.
    pub fn new(run_id: &str, job_name: String, trigger: Trigger, started_at: Time) -> Self {
        Self {
            run_id: run_id.to_owned(),
            job_name,
            trigger,
            started_at,
            champion_run_id: None,
            model_uri: None,
            finished_at: None,
            accuracy: None,
            champion_accuracy: None,
            decision: None,
            reason: None,
            summary: None,
            comparison: None,
            dry_run: false,
            validation: None,
            retry_after_generation: None,
            pod_started_at: None,
            shadow: None,
            restarts: None,
            queued_since: None,
            queued_seconds: None,
            preemptions: None,
        }
    }
}

/// A run's served-path validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunValidation {
    /// Name of the validation Job.
    pub job_name: String,
    /// When the operator decided to start it.
    pub started_at: Time,
    /// Whether the candidate passed; unset while the Job runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    /// The candidate's accuracy (0-1) on the test split answered through the request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_accuracy: Option<f64>,
    /// The champion's, scored the same way in the same Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub champion_served_accuracy: Option<f64>,
    /// The trainer's own test accuracy of the candidate, for comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainer_accuracy: Option<f64>,
    /// Share of test images whose served verdict equals the trainer's prediction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<f64>,
}

/// How a run compared with the champion on the same test images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComparisonStatus {
    /// Test images both models were scored on.
    #[schemars(with = "i64", range(min = 0))]
    pub test_images: u64,
    /// Accuracy difference, run minus champion (-1 to 1).
    pub difference: f64,
    /// Lower bound of the difference's 95% confidence interval (Newcombe's hybrid score interval for paired proportions).
    pub ci_low: f64,
    /// Upper bound of that interval.
    pub ci_high: f64,
    /// Exact two-sided McNemar p-value of the discordant images.
    pub mcnemar_p: f64,
    /// Test images only the run classified correctly.
    #[schemars(with = "i64", range(min = 0))]
    pub challenger_only: u64,
    /// Test images only the champion classified correctly.
    #[schemars(with = "i64", range(min = 0))]
    pub champion_only: u64,
    /// Recall of run and champion per class, in the model's class order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<ClassRecallStatus>,
}

/// One class's recall for the run and the champion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassRecallStatus {
    /// Class name.
    pub class: String,
    /// Test images of the class.
    #[schemars(with = "i64", range(min = 0))]
    pub support: u64,
    /// The run's recall (0-1).
    pub recall: f64,
    /// The champion's recall (0-1).
    pub champion_recall: f64,
    /// Recall minus the champion's: negative when the class lost.
    pub delta: f64,
}

impl From<&artifacts::gate::Comparison> for ComparisonStatus {
    fn from(c: &artifacts::gate::Comparison) -> Self {
        Self {
            test_images: c.test_images,
            difference: c.difference,
            ci_low: c.ci_low,
            ci_high: c.ci_high,
            mcnemar_p: c.mcnemar_p,
            challenger_only: c.challenger_only,
            champion_only: c.champion_only,
            classes: c
                .classes
                .iter()
                .map(|r| ClassRecallStatus {
                    class: r.class.clone(),
                    support: r.support,
                    recall: r.recall,
                    champion_recall: r.champion_recall,
                    delta: r.delta,
                })
                .collect(),
        }
    }
}

/// One recorded decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// The run decided on (for a rollback: the run put back in service).
    pub run_id: String,
    /// FirstModel, Promote, Reject, Failed, Superseded, Rollback, ManualPromote, RolloutFailed or Skipped.
    pub decision: Verdict,
    /// A sentence explaining the decision.
    pub reason: String,
    /// The run's test accuracy, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// The champion's re-measured accuracy, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub champion_accuracy: Option<f64>,
    /// True when recorded in dry-run mode.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// When the decision was taken.
    pub decided_at: Time,
}

fn default_sample_rate() -> f64 {
    1.0
}
fn default_min_requests() -> u64 {
    200
}
fn default_max_shadow_seconds() -> i64 {
    24 * 3600
}
fn default_max_disagreement() -> f64 {
    0.2
}
fn default_max_latency_ratio() -> f64 {
    1.5
}
fn default_max_error_rate() -> f64 {
    0.01
}
fn default_poll_seconds() -> i64 {
    300
}
fn default_settle_seconds() -> i64 {
    300
}
fn default_min_interval_seconds() -> i64 {
    6 * 3600
}
fn default_drift_window() -> i64 {
    3600
}
fn default_max_psi() -> f64 {
    0.25
}
fn default_min_verdicts() -> u64 {
    200
}
fn default_dataset() -> String {
    artifacts::layout::DEFAULT_DATASET.to_owned()
}
fn default_interval() -> String {
    "72h".to_owned()
}
fn default_successful_jobs() -> u32 {
    3
}
fn default_failed_jobs() -> u32 {
    1
}
fn default_history_limit() -> u32 {
    10
}
fn default_gpus() -> i32 {
    1
}
fn default_retry_backoff() -> i64 {
    15 * 60
}
fn default_max_retry_backoff() -> i64 {
    6 * 3600
}
fn default_max_class_recall_drop() -> f64 {
    0.10
}
fn default_true() -> bool {
    true
}
fn default_min_agreement() -> f64 {
    0.99
}
fn default_metrics_deadline() -> i64 {
    4 * 3600
}
fn default_progress_deadline() -> i32 {
    600
}
fn default_image_size() -> u32 {
    224
}
fn default_epochs() -> u32 {
    15
}
fn default_batch_size() -> u32 {
    32
}
fn default_learning_rate() -> f64 {
    1e-3
}
fn default_label_smoothing() -> f64 {
    0.1
}
fn default_dropout() -> f64 {
    0.2
}
fn default_patience() -> u32 {
    3
}
fn default_active_deadline() -> i64 {
    6 * 3600
}
fn default_startup_deadline() -> i64 {
    30 * 60
}
fn default_backoff_limit() -> i32 {
    1
}
fn default_workers() -> i32 {
    1
}
fn default_replicas() -> i32 {
    2
}
fn default_port() -> i32 {
    8080
}

/// Longest SimpsonModel name: `<name>-inference` names the Deployment and Service, and a
/// Service name is a 63-character DNS label.
pub const MAX_NAME_LEN: usize = 53;

/// The CRD, with the admission rules the derive cannot express: the name must make valid
/// child names (a DNS label of at most 53 characters), checked by the API server (CEL).
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule;
    use kube::CustomResourceExt;
    let mut crd = SimpsonModel::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema.x_kubernetes_validations = Some(vec![ValidationRule {
                rule: format!(
                    "self.metadata.name.size() <= {MAX_NAME_LEN} && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')"
                ),
                message: Some(format!(
                    "metadata.name must be a DNS label of at most {MAX_NAME_LEN} characters: <name>-inference names the Deployment and Service"
                )),
                ..Default::default()
            }]);
        }
    }
    crd
}

/// The CRD as YAML, exactly what `crdgen` prints and `crds/simpsonmodel.yaml` holds.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&crd())
}
