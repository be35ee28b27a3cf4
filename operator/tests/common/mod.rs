//! A scripted Kubernetes API server on tower-test, driving a real `kube::Client`.
//!
//! A scenario lists the requests it expects, in order, each with the response to give. The
//! server asserts method and path of every request and records bodies for the test to
//! inspect. Too few requests make `finish` time out; one too many finds no server and fails
//! the reconcile, so both directions are caught.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use artifacts::{EpochRecord, Hyperparameters, RunMetrics, SplitCounts, Storage, StorageError};
use face2simpson_operator::Context;
use face2simpson_operator::controller::{Clock, StorageOpener};
use face2simpson_operator::crd::{
    ChampionStatus, InferenceSpec, PromotionSpec, RunStatus, SecretRef, SimpsonModel,
    SimpsonModelSpec, SimpsonModelStatus, TrainingSpec, ValidationSpec,
};
use face2simpson_operator::metrics::Metrics;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use object_store::memory::InMemory;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

pub const NS: &str = "simpsons";
pub const NAME: &str = "homer";
pub const STORE_URL: &str = "s3://bucket/models";
pub const UID: &str = "0b9a1d3c-1111-4222-8333-444455556666";
/// The resourceVersion of the SimpsonModel a test hands to `reconcile`.
pub const RESOURCE_VERSION: &str = "100";
/// Where this model's runs live in the store.
pub const RUNS_PREFIX: &str = "runs/simpsons/homer";

/// The first run: the champion of most scenarios, trained before runs were keyed per model.
pub const FIRST: &str = "homer-20261101-000000";
/// The run of the slot 72 h later, under the model's own prefix.
pub const SECOND: &str = "homer-20261104-000000";
pub const FIRST_URI: &str = "s3://bucket/models/runs/homer-20261101-000000/model.safetensors";
pub const SECOND_URI: &str =
    "s3://bucket/models/runs/simpsons/homer/homer-20261104-000000/model.safetensors";

pub fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

/// The resource's creation time; schedules in tests are relative to it.
pub fn created() -> Timestamp {
    ts("2026-11-01T00:00:00Z")
}

pub fn model() -> SimpsonModel {
    let spec = SimpsonModelSpec {
        storage_uri: STORE_URL.into(),
        storage_secret_ref: Some(SecretRef {
            name: "store-creds".into(),
        }),
        dataset: "datasets/current".into(),
        schedule: Default::default(),
        training: serde_json::from_value::<TrainingSpec>(
            json!({"image": "ghcr.io/face2simpson/trainer:1"}),
        )
        .unwrap(),
        // Scenarios about the gate decide on metrics.json directly; the served-path validation
        // Job (on by default) is switched on by the scenarios about it (`validating()`).
        promotion: PromotionSpec {
            validation: ValidationSpec {
                enabled: false,
                ..Default::default()
            },
            ..Default::default()
        },
        inference: serde_json::from_value::<InferenceSpec>(
            json!({"image": "ghcr.io/face2simpson/inference:1"}),
        )
        .unwrap(),
        retention: Default::default(),
        triggers: Default::default(),
    };
    let mut sm = SimpsonModel::new(NAME, spec);
    sm.metadata.namespace = Some(NS.into());
    sm.metadata.uid = Some(UID.into());
    sm.metadata.generation = Some(1);
    sm.metadata.resource_version = Some(RESOURCE_VERSION.into());
    sm.metadata.creation_timestamp = Some(Time(created()));
    sm
}

pub fn champion(run_id: &str, accuracy: f64) -> ChampionStatus {
    ChampionStatus {
        run_id: run_id.into(),
        accuracy,
        model_uri: format!("{STORE_URL}/runs/{run_id}/model.safetensors"),
        promoted_at: Time(created()),
    }
}

pub fn run(run_id: &str, started: &str, decision: Option<&str>) -> RunStatus {
    RunStatus {
        finished_at: decision.map(|_| Time(ts(started))),
        decision: decision.map(|d| serde_json::from_value(json!(d)).unwrap()),
        reason: decision.map(|d| format!("{d} for the test")),
        ..RunStatus::new(
            run_id,
            run_id.into(),
            face2simpson_operator::crd::Trigger::Schedule,
            Time(ts(started)),
        )
    }
}

/// A model serving `champ` whose last run started at `started` (decided).
pub fn serving(champ: &str, started: &str) -> SimpsonModel {
    let mut sm = model();
    sm.status = Some(SimpsonModelStatus {
        champion: Some(champion(champ, 0.8)),
        last_run: Some(run(champ, started, Some("FirstModel"))),
        ..Default::default()
    });
    sm
}

/// Serving FIRST, with SECOND started at its slot and not decided yet.
pub fn training_second() -> SimpsonModel {
    let mut sm = serving(FIRST, "2026-11-01T00:00:00Z");
    sm.status.as_mut().unwrap().last_run = Some(run(SECOND, "2026-11-04T00:00:00Z", None));
    sm
}

pub enum JobPhase {
    Active,
    Succeeded,
    Failed,
}

/// A training Job of this model as the operator creates it: its runs go to the model's prefix.
pub fn job(run_id: &str, created: &str, phase: JobPhase) -> Value {
    let mut job = legacy_job(run_id, created, phase);
    job["metadata"]["annotations"] = json!({"face2simpson.io/runs-prefix": RUNS_PREFIX});
    job
}

/// A Job created before runs were keyed per model (no runs-prefix annotation).
pub fn legacy_job(run_id: &str, created: &str, phase: JobPhase) -> Value {
    let finished = !matches!(phase, JobPhase::Active);
    let conditions = match phase {
        JobPhase::Active => json!([]),
        JobPhase::Succeeded => json!([{"type": "Complete", "status": "True"}]),
        JobPhase::Failed => {
            json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}])
        }
    };
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": run_id,
            "namespace": NS,
            "creationTimestamp": created,
            "labels": {
                "face2simpson.io/model": NAME,
                "face2simpson.io/run-id": run_id,
                "app.kubernetes.io/component": "training",
            },
            "ownerReferences": [{
                "apiVersion": "face2simpson.io/v1alpha1",
                "kind": "SimpsonModel",
                "name": NAME,
                "uid": UID,
                "controller": true,
            }],
        },
        "spec": {"template": {"spec": {"containers": [{"name": "trainer", "image": "t"}]}}},
        "status": if finished {
            // Finished two hours after it was created.
            let done = (ts(created) + jiff::SignedDuration::from_hours(2)).to_string();
            json!({"conditions": conditions, "completionTime": done})
        } else {
            // Its pod runs (status.ready, as the Job controller counts it).
            json!({"conditions": conditions, "active": 1, "ready": 1})
        },
    })
}

pub fn job_list(jobs: Vec<Value>) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "JobList", "metadata": {"resourceVersion": "1"}, "items": jobs})
}

pub fn secret() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "store-creds", "namespace": NS},
        "data": {"AWS_ACCESS_KEY_ID": "a2V5", "AWS_SECRET_ACCESS_KEY": "c2VjcmV0"},
    })
}

pub fn api_error(code: u16, reason: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": format!("{reason} for the test"), "reason": reason, "code": code})
}

/// Metrics of a finished run, as the trainer writes them.
pub fn run_metrics(run_id: &str, accuracy: f64, champion: Option<(&str, f64)>) -> RunMetrics {
    let classes: Vec<String> = ["homer", "marge", "bart", "lisa"]
        .map(String::from)
        .to_vec();
    RunMetrics {
        schema_version: artifacts::metrics::METRICS_SCHEMA_VERSION,
        run_id: run_id.into(),
        owner: Some(format!("{NS}/{NAME}")),
        trainer_version: "0.1.0".into(),
        // The audit fields are left out, as in metrics.json files from before they existed:
        // the operator must decide on those as before.
        trainer_build: None,
        test_accuracy: accuracy,
        test_loss: None,
        champion_run_id: champion.map(|(id, _)| id.to_owned()),
        champion_test_accuracy: champion.map(|(_, acc)| acc),
        champion_image_size: None,
        champion_test_loss: None,
        per_class: None,
        macro_f1: None,
        per_class_accuracy: classes
            .iter()
            .map(|c| (c.clone(), accuracy))
            .collect::<BTreeMap<_, _>>(),
        confusion_matrix: vec![
            vec![4, 0, 0, 0],
            vec![0, 4, 0, 0],
            vec![0, 0, 4, 0],
            vec![0, 0, 0, 4],
        ],
        classes,
        counts: SplitCounts {
            train: 64,
            val: 16,
            test: 16,
            duplicates_dropped: 0,
        },
        skipped_files: vec![],
        epochs_run: 2,
        best_epoch: 2,
        history: vec![EpochRecord {
            epoch: 1,
            train_loss: 1.0,
            train_accuracy: 0.5,
            val_loss: 0.9,
            val_accuracy: 0.6,
            lr: 1e-3,
            seconds: 1.0,
        }],
        hyperparameters: Hyperparameters {
            image_size: 224,
            epochs: 15,
            batch_size: 32,
            learning_rate: 1e-3,
            label_smoothing: 0.1,
            dropout: 0.2,
            patience: 3,
            val_fraction: 0.15,
            seed: 42,
        },
        dataset: "datasets/current".into(),
        dataset_fingerprint: "cd".repeat(32),
        test_fingerprint: None,
        listing_fingerprint: None,
        test_predictions: None,
        weights_key: format!("{RUNS_PREFIX}/{run_id}/model.safetensors"),
        weights_sha256: None,
        onnx_key: None,
        onnx_sha256: None,
        pretrained: None,
        pretrained_sha256: None,
        // Any time after its Job was created (the tests' Jobs are from November 2026).
        started_at: "2026-11-30T00:00:00Z".parse().unwrap(),
        finished_at: "2026-11-30T01:00:00Z".parse().unwrap(),
        device: "cuda:0".into(),
        precision: None,
        pipeline: None,
        distributed: None,
    }
}

/// Credential variables as handed to the store opener.
pub type Vars = Vec<(String, String)>;

/// What a request looked like.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Value,
}

type Responder = Box<dyn FnOnce(&Value) -> (u16, Value) + Send>;

/// One expected request and how to answer it.
pub struct Step {
    method: Method,
    path: String,
    respond: Responder,
}

impl Step {
    pub fn new(
        method: Method,
        path: impl Into<String>,
        respond: impl FnOnce(&Value) -> (u16, Value) + Send + 'static,
    ) -> Self {
        Self {
            method,
            path: path.into(),
            respond: Box::new(respond),
        }
    }

    pub fn list_jobs(jobs: Vec<Value>) -> Self {
        Self::new(
            Method::GET,
            format!("/apis/batch/v1/namespaces/{NS}/jobs"),
            move |_| (200, job_list(jobs)),
        )
    }

    pub fn get_secret() -> Self {
        Self::new(
            Method::GET,
            format!("/api/v1/namespaces/{NS}/secrets/store-creds"),
            |_| (200, secret()),
        )
    }

    pub fn create_job() -> Self {
        Self::new(
            Method::POST,
            format!("/apis/batch/v1/namespaces/{NS}/jobs"),
            |b| (201, b.clone()),
        )
    }

    pub fn event() -> Self {
        Self::new(
            Method::POST,
            format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
            |b| (201, b.clone()),
        )
    }

    /// The Deployment applied, answered as a Deployment whose rollout is complete.
    pub fn apply_deployment() -> Self {
        Self::apply_deployment_with(|replicas| {
            json!({
                "observedGeneration": 1,
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
                "conditions": [
                    {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
                ],
            })
        })
    }

    /// The Deployment applied, answered with the status `status(replicas)` builds.
    pub fn apply_deployment_with(status: fn(i64) -> Value) -> Self {
        Self::new(
            Method::PATCH,
            format!("/apis/apps/v1/namespaces/{NS}/deployments/{NAME}-inference"),
            move |b| {
                let mut d = b.clone();
                let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
                d["metadata"]["generation"] = json!(1);
                d["status"] = status(replicas);
                (200, d)
            },
        )
    }

    pub fn apply_hpa() -> Self {
        Self::new(
            Method::PATCH,
            format!(
                "/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers/{NAME}-inference"
            ),
            |b| (200, b.clone()),
        )
    }

    pub fn apply_pdb() -> Self {
        Self::new(
            Method::PATCH,
            format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/{NAME}-inference"),
            |b| (200, b.clone()),
        )
    }

    pub fn delete_hpa() -> Self {
        Self::new(
            Method::DELETE,
            format!(
                "/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers/{NAME}-inference"
            ),
            |_| (404, api_error(404, "NotFound")),
        )
    }

    pub fn delete_pdb() -> Self {
        Self::new(
            Method::DELETE,
            format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/{NAME}-inference"),
            |_| {
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "code": 200}),
                )
            },
        )
    }

    pub fn get_job(job: Value) -> Self {
        let name = job["metadata"]["name"].as_str().unwrap().to_owned();
        Self::new(
            Method::GET,
            format!("/apis/batch/v1/namespaces/{NS}/jobs/{name}"),
            move |_| (200, job),
        )
    }

    pub fn apply_service() -> Self {
        Self::new(
            Method::PATCH,
            format!("/api/v1/namespaces/{NS}/services/{NAME}-inference"),
            |b| (200, b.clone()),
        )
    }

    pub fn patch_status() -> Self {
        Self::new(
            Method::PATCH,
            format!("/apis/face2simpson.io/v1alpha1/namespaces/{NS}/simpsonmodels/{NAME}/status"),
            |b| {
                // A new resourceVersion for every write, as the API server gives.
                let rv: u64 = b["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut sm = serde_json::to_value(model()).unwrap();
                sm["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
                sm["status"] = b["status"].clone();
                (200, sm)
            },
        )
    }

    pub fn delete_job(name: &str) -> Self {
        Self::new(
            Method::DELETE,
            format!("/apis/batch/v1/namespaces/{NS}/jobs/{name}"),
            |_| {
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "code": 200}),
                )
            },
        )
    }

    /// Any expected request answered with an API error instead.
    pub fn failing(self, code: u16, reason: &'static str) -> Self {
        Self {
            respond: Box::new(move |_| (code, api_error(code, reason))),
            ..self
        }
    }
}

/// A mock API server and the test's view of the world.
pub struct Harness {
    pub ctx: Arc<Context>,
    pub registry: Registry,
    pub store: Storage,
    /// Credential variables the operator handed to the store opener.
    pub opened_with: Arc<Mutex<Vec<Vars>>>,
    /// When set, opening the store fails as an unreachable or misconfigured one would.
    pub store_down: Arc<AtomicBool>,
    server: JoinHandle<Vec<Seen>>,
}

impl Harness {
    /// Starts a server that expects exactly `steps`, at time `now`.
    pub fn new(now: &str, steps: Vec<Step>) -> Self {
        let (client, server) = mock_api(steps);
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "face2simpson-operator".into(),
                instance: Some("test".into()),
            },
        );
        let memory = Arc::new(InMemory::new());
        let store = Storage::from_store(memory.clone(), "", STORE_URL);
        let opened_with = Arc::new(Mutex::new(Vec::new()));
        let seen = opened_with.clone();
        let store_down = Arc::new(AtomicBool::new(false));
        let down = store_down.clone();
        let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let opener: StorageOpener = Arc::new(move |url: &str, vars: Vec<(String, String)>| {
            assert_eq!(url, STORE_URL);
            seen.lock().unwrap().push(vars);
            if down.load(Ordering::Relaxed) {
                // Different every time, as a real client's "after N retries, Xs elapsed" is.
                let attempt = attempts.fetch_add(1, Ordering::Relaxed) + 1;
                return Err(StorageError::InvalidUrl {
                    url: url.to_owned(),
                    reason: format!("store down for the test (attempt {attempt})"),
                });
            }
            Ok(Storage::from_store(memory.clone(), "", STORE_URL))
        });
        let now = ts(now);
        let clock: Clock = Arc::new(move || now);
        let ctx = Arc::new(Context::new(client, recorder, metrics, clock, opener));
        Self {
            ctx,
            registry,
            store,
            opened_with,
            store_down,
            server,
        }
    }

    /// Waits for the server to have answered every expected request, and returns them.
    pub async fn finish(self) -> Vec<Seen> {
        tokio::time::timeout(Duration::from_secs(5), self.server)
            .await
            .expect("the expected requests were not all made")
            .unwrap()
    }

    /// Writes a run's metrics.json where the model's runs live.
    pub async fn put_metrics(&self, m: &RunMetrics) {
        self.store
            .put(
                &artifacts::layout::metrics_in(RUNS_PREFIX, &m.run_id),
                m.to_json(),
            )
            .await
            .unwrap();
    }

    /// Writes a run's metrics.json in the shared prefix runs used before they were per model.
    pub async fn put_legacy_metrics(&self, m: &RunMetrics) {
        self.store
            .put(&artifacts::layout::run_metrics(&m.run_id), m.to_json())
            .await
            .unwrap();
    }

    /// Writes (dummy) weights at a full URL of the store.
    pub async fn put_weights(&self, uri: &str) {
        let key = self.store.key_of(uri).unwrap().to_owned();
        self.store.put(&key, vec![1u8, 2, 3]).await.unwrap();
    }

    pub fn metrics_text(&self) -> String {
        face2simpson_operator::metrics::encode(&self.registry).unwrap()
    }
}

/// A client whose API server expects exactly `steps`; the handle returns what it saw.
pub fn mock_api(steps: Vec<Step>) -> (Client, JoinHandle<Vec<Seen>>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    (client, tokio::spawn(serve(handle, steps)))
}

async fn serve(
    handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    steps: Vec<Step>,
) -> Vec<Seen> {
    let mut handle = Box::pin(handle);
    let mut seen = Vec::new();
    for (i, step) in steps.into_iter().enumerate() {
        let (request, send) = tokio::time::timeout(Duration::from_secs(2), handle.next_request())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "request #{i} ({} {}) never came; seen so far: {:#?}",
                    step.method,
                    step.path,
                    summary(&seen)
                )
            })
            .expect("client gone");
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let bytes = request.into_body().collect().await.unwrap().to_bytes();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        assert_eq!(
            (&method, &path),
            (&step.method, &step.path),
            "request #{i}; before it: {:#?}",
            summary(&seen)
        );
        let (code, response) = (step.respond)(&body);
        seen.push(Seen {
            method,
            path,
            query,
            body,
        });
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&response).unwrap()))
                .unwrap(),
        );
    }
    // Nothing more may come: the test calls `finish` after the reconcile returned.
    if let Ok(Some((request, _))) =
        tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await
    {
        panic!(
            "unexpected request {} {} after {:#?}",
            request.method(),
            request.uri(),
            summary(&seen)
        );
    }
    seen
}

fn summary(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect()
}

/// The status a status patch carried.
pub fn status_of(seen: &Seen) -> SimpsonModelStatus {
    serde_json::from_value(seen.body["status"].clone()).unwrap()
}

/// The SimpsonModel as it is after the status patch, for a second pass.
pub fn with_status(mut sm: SimpsonModel, status: SimpsonModelStatus) -> SimpsonModel {
    sm.status = Some(status);
    sm
}

pub fn condition<'a>(status: &'a SimpsonModelStatus, type_: &str) -> (&'a str, &'a str) {
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"));
    (c.status.as_str(), c.reason.as_str())
}

pub fn env_value(deployment: &Value, name: &str) -> Option<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_owned))
}
