//! Pure builders for the objects the operator owns: the training Job, the inference
//! Deployment and its Service. No client here, so every field is checked by unit tests.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
    MetricIdentifier, MetricSpec, MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule, SuccessPolicy, SuccessPolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceFieldSelector, ResourceRequirements, SeccompProfile, SecretEnvSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{ChampionStatus, PodOverrides, SimpsonModel};

/// Label carrying the owning SimpsonModel's name on every object we create.
pub const MODEL_LABEL: &str = "face2simpson.io/model";
/// Label carrying the run id on training Jobs.
pub const RUN_ID_LABEL: &str = "face2simpson.io/run-id";
/// Annotation on training Jobs: the runs prefix the trainer writes to. Jobs without it were
/// created before runs were keyed per model and wrote to the shared `runs/` prefix.
pub const RUNS_PREFIX_ANNOTATION: &str = "face2simpson.io/runs-prefix";
/// Annotation on training Jobs: the champion the run is compared with.
pub const CHAMPION_ANNOTATION: &str = "face2simpson.io/champion-run-id";
/// Label telling training Jobs from inference pods.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// Label carrying the owning SimpsonModel's uid on the inference pods (and in every selector
/// of them): `instance` and `component` alone also match another release's pods, or those of
/// a model deleted and made again under the same name.
pub const MODEL_UID_LABEL: &str = "face2simpson.io/model-uid";
/// Label carrying the model's name in the standard set.
const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// `app.kubernetes.io/component` of the inference pods.
const INFERENCE: &str = "inference";
/// Annotation on training Jobs of a gang restart: which attempt of its run (1, 2, …) it is.
pub const ATTEMPT_ANNOTATION: &str = "face2simpson.io/attempt";
/// Label Kueue reads on a Job: the LocalQueue it is submitted to.
pub const KUEUE_QUEUE_LABEL: &str = "kueue.x-k8s.io/queue-name";
/// Label the API server gives every pod of a Job: the Job's name.
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// Where rank 0 of a distributed run hosts the rendezvous (the trainer's `--master-port`).
pub const RENDEZVOUS_PORT: i32 = 29500;
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "face2simpson-operator");
/// UID the hardened pods run as (distroless `nonroot`).
const NON_ROOT_UID: i64 = 65532;
/// Room left for `-YYYYMMDD-HHMMSS` in a 63-character Job name.
const NAME_PREFIX_MAX: usize = 47;

/// The GPU resource name of the NVIDIA device plugin.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Exit codes of `face2simpson-trainer` that no retry can fix (configuration or data error,
/// missing device): the Job fails at once instead of burning its backoffLimit. 3 (store
/// unreachable) and 1 are retried.
pub const TRAINER_PERMANENT_EXIT_CODES: [i32; 2] = [2, 4];
/// CPU and memory requested by a training pod when the spec does not say.
const TRAINING_REQUESTS: [(&str, &str); 2] = [("cpu", "2"), ("memory", "8Gi")];
/// CPU and memory requested by an inference pod when the spec does not say.
const INFERENCE_REQUESTS: [(&str, &str); 2] = [("cpu", "250m"), ("memory", "512Mi")];

/// The resource lacks something the API server always sets (name, namespace, uid).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("SimpsonModel lacks metadata.{0}")]
pub struct MissingMetadata(pub &'static str);

fn name_prefix(model: &str) -> &str {
    let cut = model.len().min(NAME_PREFIX_MAX);
    model[..cut].trim_end_matches(['-', '.'])
}

/// Run id (and Job name) of the run started for a schedule slot. Derived from the slot, not
/// from the clock, so an operator that restarts before recording a run computes the same
/// name and the API server's AlreadyExists stops a duplicate.
pub fn scheduled_run_id(model: &str, slot: Timestamp) -> String {
    format!("{}-{}", name_prefix(model), slot.strftime("%Y%m%d-%H%M%S"))
}

/// FNV-1a: tiny, dependency-free and stable across Rust versions, unlike DefaultHasher, so
/// names derived from it are the same in every operator process.
fn fnv32(s: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// Run id of a manual request: a hash of the annotation value, stable across restarts.
pub fn manual_run_id(model: &str, request: &str) -> String {
    let hash = fnv32(request);
    format!(
        "{}-manual-{hash:08x}",
        name_prefix(model)
            .chars()
            .take(NAME_PREFIX_MAX - 7)
            .collect::<String>()
    )
}

/// Run id of a run started by a change of the dataset: the new listing's fingerprint, so a
/// restarted operator that saw the same change computes the same name and adopts the Job.
pub fn data_run_id(model: &str, fingerprint: &str) -> String {
    let hex = fingerprint.strip_prefix("sha256:").unwrap_or(fingerprint);
    let short: String = hex
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(10)
        .collect::<String>()
        .to_ascii_lowercase();
    format!("{}-data-{short}", name_prefix(model))
}

/// Run id of a run started by prediction drift, from the time it was started. A restarted
/// operator cannot start a second one meanwhile: the first one's Job is active and blocks it.
pub fn drift_run_id(model: &str, at: Timestamp) -> String {
    format!(
        "{}-drift-{}",
        name_prefix(model)
            .chars()
            .take(NAME_PREFIX_MAX - 6)
            .collect::<String>(),
        at.strftime("%Y%m%d-%H%M%S")
    )
}

/// Name shared by the inference Deployment and Service.
pub fn inference_name(model: &str) -> String {
    format!("{model}-inference")
}

/// Metadata of an object the SimpsonModel owns: in its namespace, garbage-collected with it.
fn child_meta(
    sm: &SimpsonModel,
    name: String,
    labels: BTreeMap<String, String>,
) -> Result<ObjectMeta, MissingMetadata> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(namespace(sm)?),
        labels: Some(labels),
        owner_references: Some(vec![owner(sm)?]),
        ..Default::default()
    })
}

fn owner(sm: &SimpsonModel) -> Result<OwnerReference, MissingMetadata> {
    sm.controller_owner_ref(&()).ok_or(MissingMetadata("uid"))
}

fn namespace(sm: &SimpsonModel) -> Result<String, MissingMetadata> {
    sm.namespace().ok_or(MissingMetadata("namespace"))
}

/// The runs prefix of a model (`runs/<namespace>/<name>`), so models sharing a bucket never
/// read each other's runs.
pub fn runs_prefix(sm: &SimpsonModel) -> Result<String, MissingMetadata> {
    Ok(artifacts::layout::model_runs(
        &namespace(sm)?,
        &sm.name_any(),
    ))
}

/// `<namespace>/<name>`, recorded by the trainer in metrics.json and checked by the gate.
pub fn owner_id(sm: &SimpsonModel) -> Result<String, MissingMetadata> {
    Ok(artifacts::layout::owner(&namespace(sm)?, &sm.name_any()))
}

/// Full URL of the weights a run of this model writes.
pub fn run_weights_uri(sm: &SimpsonModel, run_id: &str) -> Result<String, MissingMetadata> {
    Ok(format!(
        "{}/{}",
        sm.spec.storage_uri.trim_end_matches('/'),
        artifacts::layout::weights_in(&runs_prefix(sm)?, run_id)
    ))
}

/// Full URL of the model's `shadow.json`, which names the candidate the inference pods score
/// beside the champion during a shadow stage.
pub fn shadow_assignment_uri(sm: &SimpsonModel) -> Result<String, MissingMetadata> {
    Ok(format!(
        "{}/{}",
        sm.spec.storage_uri.trim_end_matches('/'),
        artifacts::live::shadow_assignment_in(&runs_prefix(sm)?)
    ))
}

/// Labels selecting the training Jobs of one model.
pub fn job_selector(model: &str) -> String {
    format!("{MODEL_LABEL}={model},{COMPONENT_LABEL}=training")
}

/// Labels selecting the training and validation Jobs of one model (one list per pass).
pub fn run_jobs_selector(model: &str) -> String {
    format!("{MODEL_LABEL}={model},{COMPONENT_LABEL} in ({TRAINING},{VALIDATION})")
}

/// Whether a Job of the model is a served-path validation Job (else a training Job).
/// Whether `job` is a training or validation Job of `model` (what `run_jobs_selector` selects).
pub fn is_run_job_of(job: &Job, model: &str) -> bool {
    let labels = job.labels();
    labels.get(MODEL_LABEL).map(String::as_str) == Some(model)
        && labels
            .get(COMPONENT_LABEL)
            .is_some_and(|c| c == TRAINING || c == VALIDATION)
}

pub fn is_validation_job(job: &Job) -> bool {
    job.labels().get(COMPONENT_LABEL).map(String::as_str) == Some(VALIDATION)
}

/// `app.kubernetes.io/component` of training Jobs.
pub const TRAINING: &str = "training";
/// `app.kubernetes.io/component` of served-path validation Jobs.
pub const VALIDATION: &str = "validation";
/// Exit codes of `face2simpson-inference validate` that end its Job at once: 1 is a verdict
/// (validated and failed, `validation.json` written; a retry gives the same answer), 2 a
/// configuration error no retry fixes. 3 (store unreachable) is retried.
pub const VALIDATOR_FINAL_EXIT_CODES: [i32; 2] = [1, 2];
/// Pod retries of a validation Job (store outages, evictions are not counted).
const VALIDATION_BACKOFF_LIMIT: i32 = 2;
/// A validation Job is killed (and the candidate refused) after this long.
const VALIDATION_DEADLINE_SECONDS: i64 = 3600;
/// The longest Job name: its pods carry it in the 63-character `job-name` label.
const MAX_JOB_NAME: usize = 63;

/// Name of the validation Job of a run: `<run id>-validate`, deterministic so a restarted
/// operator finds (409) the Job it created. A run id too long for the suffix is cut and a
/// hash of the whole id keeps names of different runs apart.
pub fn validation_job_name(run_id: &str) -> String {
    const SUFFIX: &str = "-validate";
    bounded_name(run_id, SUFFIX, MAX_JOB_NAME)
}

/// `<base><suffix>` when it fits in `max` characters; else `base` cut, an fnv32 of the whole
/// of it and the suffix, so names of different bases stay apart.
fn bounded_name(base: &str, suffix: &str, max: usize) -> String {
    if base.len() + suffix.len() <= max {
        return format!("{base}{suffix}");
    }
    let hash = fnv32(base);
    let keep = max.saturating_sub(suffix.len() + 9).min(base.len());
    let head = base[..keep].trim_end_matches(['-', '.']);
    format!("{head}-{hash:08x}{suffix}")
}

/// Name of the training Job of one attempt of a run: the run id for the first, and
/// `<run id>-r<n>` for the n-th gang restart. The pods of an Indexed Job are named (and get the
/// hostname) `<job>-<index>`, a 63-character DNS label, so with `workers` ranks the name leaves
/// room for the largest index; a run id too long for that is cut and hashed.
pub fn training_job_name(run_id: &str, attempt: u32, workers: i32) -> String {
    let suffix = if attempt == 0 {
        String::new()
    } else {
        format!("-r{attempt}")
    };
    let max = if workers > 1 {
        MAX_JOB_NAME - 1 - (workers - 1).to_string().len()
    } else {
        MAX_JOB_NAME
    };
    bounded_name(run_id, &suffix, max)
}

/// Bytes of a Kubernetes memory quantity (`512Mi`, `1G`, `1.5Gi`, `1e9`, `134217728`);
/// `None` for what it cannot read (then no memory budget is applied).
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let units: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Pi", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Ei", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let (number, factor) = units
        .iter()
        .find_map(|(suffix, f)| q.strip_suffix(suffix).map(|n| (n, *f)))
        .unwrap_or((q, 1.0));
    let value: f64 = number.parse().ok()?;
    let bytes = (value * factor).ceil();
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// The inference container's memory limit in bytes, the validator's memory budget.
pub fn inference_memory_limit(sm: &SimpsonModel) -> Option<u64> {
    let limits = sm.spec.inference.resources.as_ref()?.limits.as_ref()?;
    quantity_bytes(&limits.get("memory")?.0)
}

/// What a validation Job checks: the run's candidate weights, where its verdict goes, and
/// the champion to score beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationTarget<'a> {
    pub run_id: &'a str,
    /// The candidate's weights URI (its `model.onnx` is beside them).
    pub model_uri: &'a str,
    /// URL of the `validation.json` to write, beside the run's `metrics.json`.
    pub out_uri: &'a str,
    /// The champion's weights URI, when there is one.
    pub champion_uri: Option<&'a str>,
}

/// URL of the dataset prefix the model trains on (`<storageUri>/<dataset>`).
pub fn dataset_uri(sm: &SimpsonModel) -> String {
    format!(
        "{}/{}",
        sm.spec.storage_uri.trim_end_matches('/'),
        sm.spec.dataset.trim_matches('/')
    )
}

/// The served-path validation Job of one run: the inference image's
/// `face2simpson-inference validate`, with the inference pods' resources (its memory limit is
/// the budget), Secret, overrides and hardening, owned by the SimpsonModel.
pub fn validation_job(
    sm: &SimpsonModel,
    target: &ValidationTarget<'_>,
) -> Result<Job, MissingMetadata> {
    let model = sm.name_any();
    let inf = &sm.spec.inference;
    let v = &sm.spec.promotion.validation;
    let mut vars: Vec<(&str, String)> = vec![
        ("MODEL_URI", target.model_uri.to_owned()),
        ("DATASET_URI", dataset_uri(sm)),
        ("VALIDATION_URI", target.out_uri.to_owned()),
        ("MIN_AGREEMENT", v.min_agreement.to_string()),
    ];
    if let Some(champion) = target.champion_uri {
        vars.push(("CHAMPION_URI", champion.to_owned()));
    }
    if let Some(p95) = v.max_p95_milliseconds {
        vars.push(("MAX_P95_MS", p95.to_string()));
    }
    if let Some(bytes) = inference_memory_limit(sm) {
        vars.push(("MAX_MEMORY_BYTES", bytes.to_string()));
    }
    vars.extend([("HOME", "/tmp".into()), ("LOG_FORMAT", "json".into())]);
    let labels = BTreeMap::from([
        (MODEL_LABEL.to_owned(), model.clone()),
        (RUN_ID_LABEL.to_owned(), target.run_id.to_owned()),
        (COMPONENT_LABEL.to_owned(), VALIDATION.to_owned()),
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
    ]);
    let container = Container {
        name: "validator".into(),
        image: Some(inf.image.clone()),
        // The image's entrypoint is face2simpson-inference; ORT_DYLIB_PATH and FACE_DETECTOR
        // come from the image's ENV, as for the inference pods.
        args: Some(vec!["validate".into()]),
        // Sized like the inference pods: the latency it measures is the one they would give.
        env: Some(
            env(&vars)
                .into_iter()
                .chain(sizing_env("validator", &inference_resources(sm)))
                .collect(),
        ),
        env_from: env_from(sm),
        resources: Some(inference_resources(sm)),
        ..hardened_container()
    };
    let mut pod = hardened_pod(vec![container]);
    pod.restart_policy = Some("Never".into());
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            ..Default::default()
        }),
        spec: Some(pod),
    };
    apply_overrides(&mut template, &inf.pod_overrides);
    Ok(Job {
        metadata: child_meta(sm, validation_job_name(target.run_id), labels)?,
        spec: Some(JobSpec {
            // No ttlSecondsAfterFinished, as for training Jobs: the verdict is read first.
            backoff_limit: Some(VALIDATION_BACKOFF_LIMIT),
            active_deadline_seconds: Some(VALIDATION_DEADLINE_SECONDS),
            pod_failure_policy: Some(pod_failure_policy("validator", &VALIDATOR_FINAL_EXIT_CODES)),
            template,
            ..Default::default()
        }),
        status: None,
    })
}

/// The labels of the inference pods made before they carried the model's uid (operators up to
/// 0.1): what the inference Service selects while a Deployment of that time is replaced
/// (`controller::migrate`), since both the old pods and the new ones carry them.
pub fn legacy_inference_labels(model: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "face2simpson-inference".to_owned(),
        ),
        (INSTANCE_LABEL.to_owned(), model.to_owned()),
        (COMPONENT_LABEL.to_owned(), INFERENCE.to_owned()),
        (MODEL_LABEL.to_owned(), model.to_owned()),
    ])
}

/// The model's uid, which the inference pods carry and every selector of them names.
fn model_uid(sm: &SimpsonModel) -> Result<String, MissingMetadata> {
    sm.metadata.uid.clone().ok_or(MissingMetadata("uid"))
}

/// The labels of the inference pods (and of the objects around them).
fn inference_labels(sm: &SimpsonModel) -> Result<BTreeMap<String, String>, MissingMetadata> {
    let mut labels = legacy_inference_labels(&sm.name_any());
    labels.insert(MODEL_UID_LABEL.to_owned(), model_uid(sm)?);
    Ok(labels)
}

/// What the Deployment, Service and PodDisruptionBudget select the inference pods by: the
/// model's name, the component and the model's uid.
pub fn inference_selector_labels(
    sm: &SimpsonModel,
) -> Result<BTreeMap<String, String>, MissingMetadata> {
    Ok(BTreeMap::from([
        (INSTANCE_LABEL.to_owned(), sm.name_any()),
        (COMPONENT_LABEL.to_owned(), INFERENCE.to_owned()),
        (MODEL_UID_LABEL.to_owned(), model_uid(sm)?),
    ]))
}

/// The label selector (for a LIST) of the ReplicaSets an operator of before the uid label left
/// behind: the model's instance and component, without the uid label.
pub fn legacy_replica_sets_selector(model: &str) -> String {
    format!("{INSTANCE_LABEL}={model},{COMPONENT_LABEL}={INFERENCE},!{MODEL_UID_LABEL}")
}

fn env_from(sm: &SimpsonModel) -> Option<Vec<EnvFromSource>> {
    sm.spec.storage_secret_ref.as_ref().map(|s| {
        vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: s.name.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }]
    })
}

fn env(pairs: &[(&str, String)]) -> Vec<EnvVar> {
    pairs
        .iter()
        .map(|(k, v)| EnvVar {
            name: (*k).to_owned(),
            value: Some(v.clone()),
            ..Default::default()
        })
        .collect()
}

/// The restricted Pod Security Standard, plus a writable /tmp since the root is read-only.
fn hardened_pod(containers: Vec<Container>) -> PodSpec {
    PodSpec {
        containers,
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NON_ROOT_UID),
            run_as_group: Some(NON_ROOT_UID),
            fs_group: Some(NON_ROOT_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volumes: Some(vec![Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

fn hardened_container() -> Container {
    Container {
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// Merges a spec's pod overrides into a pod template. Additive: what the operator sets
/// (labels the selectors use, its env variables, the hardened security context) is kept.
fn apply_overrides(template: &mut PodTemplateSpec, o: &PodOverrides) {
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    if !o.labels.is_empty() {
        let labels = meta.labels.get_or_insert_with(BTreeMap::new);
        for (k, v) in &o.labels {
            labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    if !o.annotations.is_empty() {
        let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
        for (k, v) in &o.annotations {
            annotations.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let Some(pod) = template.spec.as_mut() else {
        return;
    };
    if o.service_account_name.is_some() {
        pod.service_account_name.clone_from(&o.service_account_name);
    }
    pod.automount_service_account_token = Some(o.automount_service_account_token.unwrap_or(false));
    if !o.node_selector.is_empty() {
        pod.node_selector
            .get_or_insert_with(BTreeMap::new)
            .extend(o.node_selector.clone());
    }
    if !o.tolerations.is_empty() {
        pod.tolerations
            .get_or_insert_with(Vec::new)
            .extend(o.tolerations.iter().cloned());
    }
    if o.affinity.is_some() {
        pod.affinity.clone_from(&o.affinity);
    }
    if !o.image_pull_secrets.is_empty() {
        pod.image_pull_secrets = Some(o.image_pull_secrets.clone());
    }
    if o.priority_class_name.is_some() {
        pod.priority_class_name.clone_from(&o.priority_class_name);
    }
    if o.runtime_class_name.is_some() {
        pod.runtime_class_name.clone_from(&o.runtime_class_name);
    }
    if !o.volumes.is_empty() {
        pod.volumes
            .get_or_insert_with(Vec::new)
            .extend(o.volumes.iter().cloned());
    }
    for c in &mut pod.containers {
        let env = c.env.get_or_insert_with(Vec::new);
        for var in &o.env {
            if !env.iter().any(|e| e.name == var.name) {
                env.push(var.clone());
            }
        }
        if !o.volume_mounts.is_empty() {
            c.volume_mounts
                .get_or_insert_with(Vec::new)
                .extend(o.volume_mounts.iter().cloned());
        }
    }
}

/// `resources` with the default requests filled in where the spec names none, so the
/// scheduler places pods by what they really use.
fn with_default_requests(
    resources: Option<&ResourceRequirements>,
    defaults: &[(&str, &str)],
) -> ResourceRequirements {
    let mut r = resources.cloned().unwrap_or_default();
    let requests = r.requests.get_or_insert_with(BTreeMap::new);
    for (name, value) in defaults {
        // A limit without a request makes the request equal to the limit: keep that meaning.
        let limited = r.limits.as_ref().is_some_and(|l| l.contains_key(*name));
        if !limited {
            requests
                .entry((*name).to_owned())
                .or_insert_with(|| Quantity((*value).to_owned()));
        }
    }
    r
}

/// The training container's resources: default requests, plus `gpus` as nvidia.com/gpu
/// limits unless the spec's limits name the GPU resource themselves.
pub fn training_resources(sm: &SimpsonModel) -> ResourceRequirements {
    let t = &sm.spec.training;
    let mut r = with_default_requests(Some(&t.resources), &TRAINING_REQUESTS);
    let limits = r.limits.get_or_insert_with(BTreeMap::new);
    if t.gpus > 0 && !limits.contains_key(GPU_RESOURCE) {
        limits.insert(GPU_RESOURCE.to_owned(), Quantity(t.gpus.to_string()));
    }
    if limits.is_empty() {
        r.limits = None;
    }
    r
}

/// Whether the training pod gets GPUs, and so must train on one.
fn requests_gpus(resources: &ResourceRequirements) -> bool {
    resources
        .limits
        .as_ref()
        .and_then(|l| l.get(GPU_RESOURCE))
        .is_some_and(|q| q.0.trim() != "0")
}

/// Evictions and preemptions do not count against the backoff limit; the trainer's
/// permanent failures end the Job at once.
fn pod_failure_policy(container: &str, final_exit_codes: &[i32]) -> PodFailurePolicy {
    PodFailurePolicy {
        rules: vec![
            PodFailurePolicyRule {
                action: "Ignore".into(),
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".into(),
                    status: "True".into(),
                }]),
                on_exit_codes: None,
            },
            PodFailurePolicyRule {
                action: "FailJob".into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some(container.into()),
                    operator: "In".into(),
                    values: final_exit_codes.to_vec(),
                }),
                on_pod_conditions: None,
            },
        ],
    }
}

/// The training Job of one run. `champion` is re-scored by the trainer on the run's test
/// split so the gate compares like with like; its weights are passed as a full URL so a
/// champion from the old shared layout (or another prefix) is always found.
pub fn training_job(
    sm: &SimpsonModel,
    run_id: &str,
    champion: Option<&ChampionStatus>,
) -> Result<Job, MissingMetadata> {
    training_job_attempt(sm, run_id, 0, champion)
}

/// The training Job of attempt `attempt` of a run (0 the first; each gang restart of a
/// distributed run adds one). Every attempt trains the same run id, so it resumes from the
/// checkpoints the previous one left in the store.
pub fn training_job_attempt(
    sm: &SimpsonModel,
    run_id: &str,
    attempt: u32,
    champion: Option<&ChampionStatus>,
) -> Result<Job, MissingMetadata> {
    let model = sm.name_any();
    let t = &sm.spec.training;
    let workers = t.workers.max(1);
    let name = training_job_name(run_id, attempt, workers);
    let args = trainer_args(sm, run_id, champion)?;
    let labels = BTreeMap::from([
        (MODEL_LABEL.to_owned(), model.clone()),
        (RUN_ID_LABEL.to_owned(), run_id.to_owned()),
        (COMPONENT_LABEL.to_owned(), TRAINING.to_owned()),
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
    ]);
    let mut vars = vec![("HOME", "/tmp".to_owned()), ("LOG_FORMAT", "json".into())];
    let mut ports = None;
    if workers > 1 {
        // RANK comes from JOB_COMPLETION_INDEX, which the Job controller sets on each pod.
        vars.extend([
            ("WORKERS", workers.to_string()),
            ("MASTER_ADDR", rendezvous_address(&name)),
            ("MASTER_PORT", RENDEZVOUS_PORT.to_string()),
        ]);
        ports = Some(vec![ContainerPort {
            name: Some("rendezvous".into()),
            container_port: RENDEZVOUS_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]);
    }
    let container = Container {
        name: "trainer".into(),
        image: Some(t.image.clone()),
        command: Some(vec!["face2simpson-trainer".into()]),
        args: Some(args),
        env: Some(env(&vars)),
        env_from: env_from(sm),
        ports,
        resources: Some(training_resources(sm)),
        ..hardened_container()
    };
    let mut pod = hardened_pod(vec![container]);
    pod.restart_policy = Some("Never".into());
    pod.node_selector = (!t.node_selector.is_empty()).then(|| t.node_selector.clone());
    pod.tolerations = (!t.tolerations.is_empty()).then(|| t.tolerations.clone());
    // Pod `<job>-<index>` answers as `<job>-<index>.<job>` through the headless Service.
    pod.subdomain = (workers > 1).then(|| name.clone());
    let mut annotations = BTreeMap::from([(RUNS_PREFIX_ANNOTATION.to_owned(), runs_prefix(sm)?)]);
    if let Some(champion) = champion {
        annotations.insert(CHAMPION_ANNOTATION.to_owned(), champion.run_id.clone());
    }
    if attempt > 0 {
        annotations.insert(ATTEMPT_ANNOTATION.to_owned(), attempt.to_string());
    }
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            ..Default::default()
        }),
        spec: Some(pod),
    };
    apply_overrides(&mut template, &t.pod_overrides);
    if let (Some(pod), Some(class)) = (template.spec.as_mut(), &t.priority_class_name) {
        pod.priority_class_name = Some(class.clone());
    }
    let mut job_labels = labels;
    if let Some(queue) = &t.queue_name {
        job_labels.insert(KUEUE_QUEUE_LABEL.to_owned(), queue.clone());
    }
    let mut spec = JobSpec {
        // No ttlSecondsAfterFinished: a Job must outlive operator downtime until its result
        // is recorded; housekeeping deletes it afterwards.
        backoff_limit: Some(t.backoff_limit),
        active_deadline_seconds: Some(t.active_deadline_seconds),
        pod_failure_policy: Some(pod_failure_policy("trainer", &TRAINER_PERMANENT_EXIT_CODES)),
        // Queued Jobs start suspended: Kueue admits them by setting suspend to false (its
        // webhook would suspend them anyway; created so, no pod starts before admission).
        suspend: t.queue_name.is_some().then_some(true),
        template,
        ..Default::default()
    };
    if workers > 1 {
        gang(&mut spec, workers);
    }
    Ok(Job {
        metadata: ObjectMeta {
            annotations: Some(annotations),
            labels: Some(job_labels),
            ..child_meta(sm, name, BTreeMap::new())?
        },
        spec: Some(spec),
        status: None,
    })
}

/// An Indexed Job of `workers` ranks. The Job retries no pod: a rank that fails leaves its
/// peers stuck in a collective, so the operator restarts the whole gang instead (up to
/// `backoffLimit` times, `status.lastRun.restarts`). Rank 0 writes everything; its success
/// ends the Job and stops the others.
fn gang(spec: &mut JobSpec, workers: i32) {
    spec.completion_mode = Some("Indexed".into());
    spec.completions = Some(workers);
    spec.parallelism = Some(workers);
    spec.backoff_limit = Some(0);
    spec.success_policy = Some(SuccessPolicy {
        rules: vec![SuccessPolicyRule {
            succeeded_indexes: Some("0".into()),
            succeeded_count: None,
        }],
    });
}

/// `MASTER_ADDR` of a distributed run: rank 0's pod through the Job's headless Service.
pub fn rendezvous_address(job_name: &str) -> String {
    format!("{job_name}-0.{job_name}")
}

/// Whether a training Job runs several ranks (an Indexed Job with more than one completion).
pub fn is_gang(job: &Job) -> bool {
    job.spec.as_ref().is_some_and(|s| {
        s.completion_mode.as_deref() == Some("Indexed") && s.completions.unwrap_or(1) > 1
    })
}

/// The attempt of its run a training Job is (0 for the first).
pub fn attempt_of(job: &Job) -> u32 {
    job.annotations()
        .get(ATTEMPT_ANNOTATION)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0)
}

/// The headless Service through which the ranks of a distributed training Job find rank 0
/// (`<job>-0.<job>`). Owned by the Job, so it goes with it. Its addresses are published before
/// the pods are ready: the ranks rendezvous while they start.
pub fn rendezvous_service(job: &Job) -> Result<Service, MissingMetadata> {
    let name = job.metadata.name.clone().ok_or(MissingMetadata("name"))?;
    let uid = job.metadata.uid.clone().ok_or(MissingMetadata("uid"))?;
    let mut labels: BTreeMap<String, String> = job
        .labels()
        .iter()
        .filter(|(k, _)| [MODEL_LABEL, RUN_ID_LABEL, COMPONENT_LABEL].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned());
    Ok(Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: job.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name: name.clone(),
                uid,
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(BTreeMap::from([(JOB_NAME_LABEL.to_owned(), name)])),
            ports: Some(vec![ServicePort {
                name: Some("rendezvous".into()),
                port: RENDEZVOUS_PORT,
                target_port: Some(IntOrString::Int(RENDEZVOUS_PORT)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    })
}

/// `face2simpson-trainer train` and its flags for one run.
fn trainer_args(
    sm: &SimpsonModel,
    run_id: &str,
    champion: Option<&ChampionStatus>,
) -> Result<Vec<String>, MissingMetadata> {
    let t = &sm.spec.training;
    let mut args: Vec<String> = vec![
        "train".into(),
        "--storage".into(),
        sm.spec.storage_uri.clone(),
        "--dataset".into(),
        sm.spec.dataset.clone(),
        "--run-id".into(),
        run_id.to_owned(),
        "--runs-prefix".into(),
        runs_prefix(sm)?,
        "--owner".into(),
        owner_id(sm)?,
    ];
    if let Some(champion) = champion {
        args.extend([
            "--champion".into(),
            champion.run_id.clone(),
            "--champion-uri".into(),
            champion.model_uri.clone(),
        ]);
    }
    args.extend([
        "--image-size".into(),
        t.image_size.to_string(),
        "--epochs".into(),
        t.epochs.to_string(),
        "--batch-size".into(),
        t.batch_size.to_string(),
        "--lr".into(),
        t.learning_rate.to_string(),
        "--label-smoothing".into(),
        t.label_smoothing.to_string(),
        "--dropout".into(),
        t.dropout.to_string(),
        "--patience".into(),
        t.patience.to_string(),
    ]);
    // With GPUs requested, a broken CUDA setup must fail fast (exit code 4) instead of
    // training on the CPU for hours.
    let device = if requests_gpus(&training_resources(sm)) {
        "cuda"
    } else {
        "cpu"
    };
    args.extend(["--device".into(), device.into()]);
    Ok(args)
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// A hash of an inference pod template with the model left out (its run-id annotation and its
/// MODEL_URI): two templates with equal hashes differ by the model alone. Computed on the
/// template the API server returns, so server-side defaults count the same on both sides.
pub fn template_hash_without_model(template: &PodTemplateSpec) -> String {
    use sha2::{Digest, Sha256};
    let mut t = template.clone();
    if let Some(annotations) = t.metadata.as_mut().and_then(|m| m.annotations.as_mut()) {
        annotations.remove(RUN_ID_LABEL);
    }
    for container in t.spec.iter_mut().flat_map(|s| s.containers.iter_mut()) {
        if let Some(env) = container.env.as_mut() {
            env.retain(|e| e.name != "MODEL_URI");
        }
    }
    // Maps are BTreeMaps: the serialization, and so the hash, is deterministic.
    let json = serde_json::to_vec(&t).unwrap_or_default();
    let hex = format!("{:x}", Sha256::digest(&json));
    format!("sha256:{}", &hex[..16])
}

/// The inference container's environment. Each pod names its report files after itself
/// (`POD_NAME`), polls `SHADOW_URI` only when the model has a shadow stage, and answers the
/// Open Inference Protocol under `MODEL_NAME` when the spec names the model.
fn inference_env(
    sm: &SimpsonModel,
    champion: &ChampionStatus,
) -> Result<Vec<EnvVar>, MissingMetadata> {
    let mut pairs = vec![
        ("MODEL_URI", champion.model_uri.clone()),
        ("LISTEN_ADDR", format!("0.0.0.0:{}", sm.spec.inference.port)),
        ("HOME", "/tmp".into()),
    ];
    if sm.spec.promotion.shadow.enabled {
        pairs.push(("SHADOW_URI", shadow_assignment_uri(sm)?));
    }
    if let Some(name) = &sm.spec.inference.model_name {
        pairs.push(("MODEL_NAME", name.clone()));
    }
    let mut vars = env(&pairs);
    vars.push(EnvVar {
        name: "POD_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    vars.extend(sizing_env("inference", &inference_resources(sm)));
    Ok(vars)
}

/// The inference container's resources: the spec's, with default requests.
fn inference_resources(sm: &SimpsonModel) -> ResourceRequirements {
    with_default_requests(sm.spec.inference.resources.as_ref(), &INFERENCE_REQUESTS)
}

/// `CPU_REQUEST` (millicores) and `MEMORY_LIMIT` (bytes) from the downward API: without a CPU
/// limit the server would see the node's cores and size its pools for them, so it is told what
/// the pod was given. The memory limit is what the kernel enforces; without one the request is
/// the best guess of what the pod may use.
fn sizing_env(container: &str, resources: &ResourceRequirements) -> Vec<EnvVar> {
    let has_memory_limit = resources
        .limits
        .as_ref()
        .is_some_and(|l| l.contains_key("memory"));
    let memory = if has_memory_limit {
        "limits.memory"
    } else {
        "requests.memory"
    };
    vec![
        resource_env(container, "CPU_REQUEST", "requests.cpu", "1m"),
        resource_env(container, "MEMORY_LIMIT", memory, "1"),
    ]
}

fn resource_env(container: &str, name: &str, resource: &str, divisor: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            resource_field_ref: Some(ResourceFieldSelector {
                container_name: Some(container.into()),
                resource: resource.into(),
                divisor: Some(Quantity(divisor.into())),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The inference Deployment serving `champion`. Changing MODEL_URI changes the pod template,
/// which is what makes Kubernetes roll the pods.
pub fn inference_deployment(
    sm: &SimpsonModel,
    champion: &ChampionStatus,
) -> Result<Deployment, MissingMetadata> {
    let model = sm.name_any();
    let inf = &sm.spec.inference;
    let selector = inference_selector_labels(sm)?;
    let mut labels = inference_labels(sm)?;
    let container = Container {
        name: "inference".into(),
        image: Some(inf.image.clone()),
        env: Some(inference_env(sm, champion)?),
        env_from: env_from(sm),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: inf.port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(inference_resources(sm)),
        // Loading weights from object storage can take a while: readiness gates traffic,
        // liveness only restarts a pod that stopped answering at all.
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(30),
            ..http_probe("/healthz", 10, 6)
        }),
        ..hardened_container()
    };
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([(
                RUN_ID_LABEL.to_owned(),
                champion.run_id.clone(),
            )])),
            ..Default::default()
        }),
        spec: Some(hardened_pod(vec![container])),
    };
    apply_overrides(&mut template, &inf.pod_overrides);
    labels.insert(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned());
    Ok(Deployment {
        metadata: child_meta(sm, inference_name(&model), labels)?,
        spec: Some(DeploymentSpec {
            // With autoscaling the HPA owns the replica count: the field is left out of the
            // apply, so the operator and the autoscaler never fight over it.
            replicas: inf.autoscaling.is_none().then_some(inf.replicas),
            // Without a deadline a rollout that never becomes available is never reported
            // as failed, and the operator could not roll back on its own.
            progress_deadline_seconds: Some(inf.progress_deadline_seconds),
            // The operator rolls back by applying the previous champion, not with the
            // Deployment's history: three old ReplicaSets are plenty (the default keeps ten,
            // for every model).
            revision_history_limit: Some(3),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                // Never below the requested capacity while a new model rolls out.
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template,
            ..Default::default()
        }),
        status: None,
    })
}

/// The HorizontalPodAutoscaler of the inference Deployment, when the spec asks for one.
pub fn inference_hpa(
    sm: &SimpsonModel,
) -> Result<Option<HorizontalPodAutoscaler>, MissingMetadata> {
    let Some(a) = &sm.spec.inference.autoscaling else {
        return Ok(None);
    };
    let model = sm.name_any();
    let mut metrics = Vec::new();
    let cpu = match (a.target_cpu_utilization, a.target_requests_per_second) {
        (None, None) => Some(70),
        (cpu, _) => cpu,
    };
    if let Some(cpu) = cpu {
        metrics.push(MetricSpec {
            type_: "Resource".into(),
            resource: Some(ResourceMetricSource {
                name: "cpu".into(),
                target: MetricTarget {
                    type_: "Utilization".into(),
                    average_utilization: Some(cpu),
                    ..Default::default()
                },
            }),
            ..Default::default()
        });
    }
    if let Some(rps) = a.target_requests_per_second {
        metrics.push(MetricSpec {
            type_: "Pods".into(),
            pods: Some(PodsMetricSource {
                metric: MetricIdentifier {
                    name: a.requests_per_second_metric.clone(),
                    selector: None,
                },
                target: MetricTarget {
                    type_: "AverageValue".into(),
                    average_value: Some(Quantity(rps.to_string())),
                    ..Default::default()
                },
            }),
            ..Default::default()
        });
    }
    let mut labels = inference_labels(sm)?;
    labels.insert(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned());
    Ok(Some(HorizontalPodAutoscaler {
        metadata: child_meta(sm, inference_name(&model), labels)?,
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: inference_name(&model),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas.max(a.min_replicas),
            metrics: Some(metrics),
            behavior: None,
        }),
        status: None,
    }))
}

/// The PodDisruptionBudget of the inference pods, with autoscaling: node drains take one pod
/// at a time, never the whole service.
pub fn inference_pdb(sm: &SimpsonModel) -> Result<Option<PodDisruptionBudget>, MissingMetadata> {
    if sm.spec.inference.autoscaling.is_none() {
        return Ok(None);
    }
    let model = sm.name_any();
    let mut labels = inference_labels(sm)?;
    labels.insert(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned());
    Ok(Some(PodDisruptionBudget {
        metadata: child_meta(sm, inference_name(&model), labels)?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(inference_selector_labels(sm)?),
                ..Default::default()
            }),
            // A crash-looping pod must not block a drain.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..Default::default()
        }),
        status: None,
    }))
}

/// Which inference pods the Service sends traffic to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodSelection {
    /// This model's, by its uid ([`inference_selector_labels`]).
    Model,
    /// While a Deployment made before the uid label is replaced: its pods and the new ones
    /// alike ([`legacy_inference_labels`]), so that traffic always has a ready pod to go to.
    Legacy,
}

/// The Service in front of the inference pods.
pub fn inference_service(sm: &SimpsonModel) -> Result<Service, MissingMetadata> {
    inference_service_selecting(sm, PodSelection::Model)
}

/// The Service in front of the inference pods, selecting them as `selection` says.
pub fn inference_service_selecting(
    sm: &SimpsonModel,
    selection: PodSelection,
) -> Result<Service, MissingMetadata> {
    let model = sm.name_any();
    let inf = &sm.spec.inference;
    let mut labels = inference_labels(sm)?;
    labels.insert(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned());
    let selector = match selection {
        PodSelection::Model => inference_selector_labels(sm)?,
        PodSelection::Legacy => legacy_inference_labels(&model),
    };
    Ok(Service {
        metadata: child_meta(sm, inference_name(&model), labels)?,
        spec: Some(ServiceSpec {
            type_: Some(inf.service_type.as_str().to_owned()),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: inf.port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    })
}
