//! One test's world: a control plane, an S3 store with a dataset, the node stand-in, the
//! chart installed by helm and the operator running under the chart's ServiceAccount.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use face2simpson_operator::SimpsonModel;
use face2simpson_operator::builders::inference_name;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::ControlPlane;
use crate::install::{Operator, helm_install, kubectl, kubectl_apply};
use crate::node::{Images, Node};
use crate::paths::{our_bin, test_dir, workspace};
use crate::process::{Env, Process};
use crate::store::S3Store;
use crate::wait::poll;

/// Where the SimpsonModels live; the chart's RBAC is granted here only.
pub const NAMESPACE: &str = "simpsons";
/// Where the chart is installed.
pub const RELEASE_NAMESPACE: &str = "face2simpson-system";
/// The helm release.
pub const RELEASE: &str = "face2simpson";
/// The SimpsonModel every scenario drives.
pub const MODEL: &str = "homer";
pub const TRAINER_IMAGE: &str = "face2simpson/trainer:e2e";
pub const INFERENCE_IMAGE: &str = "face2simpson/inference:e2e";
/// Prefix of the model's store inside the bucket.
pub const STORE_PREFIX: &str = "models";
const PRETRAINED_KEY: &str = "pretrained/mobilenet_v2-b0353104.pth";
/// Training a few epochs at 64 px on CPU, libtorch start-up included.
pub const TRAINING_TIMEOUT: Duration = Duration::from_secs(300);

/// Hyperparameters that decide whether a run is good or bad on the synthetic dataset.
#[derive(Debug, Clone, Copy)]
pub struct Recipe {
    pub epochs: u32,
    pub learning_rate: f64,
}

/// Learns the synthetic heads well.
pub const GOOD: Recipe = Recipe {
    epochs: 2,
    learning_rate: 1e-3,
};
/// Barely moves from the random head: near chance.
pub const BAD: Recipe = Recipe {
    epochs: 1,
    learning_rate: 1e-7,
};

/// Everything one scenario runs against. Dropping it stops every process.
pub struct World {
    pub dir: PathBuf,
    pub client: Client,
    pub operator: Operator,
    pub node: Node,
    pub store: S3Store,
    pub plane: ControlPlane,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("dir", &self.dir)
            .field("server", &self.plane.server)
            .field("store", &self.store.endpoint)
            .finish_non_exhaustive()
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // kube_client logs every refused connection while the API server starts.
                .unwrap_or_else(|_| "info,kube=warn,kube_client=off".into()),
        )
        .with_test_writer()
        .try_init();
}

impl World {
    /// Starts everything for the test `name` (logs in `target/e2e/<name>/`).
    pub async fn up(name: &str) -> Result<Self> {
        Self::up_with(name, &[]).await
    }

    /// [`World::up`] with more `helm install --set` values.
    pub async fn up_with(name: &str, values: &[(&str, &str)]) -> Result<Self> {
        Self::up_watching(name, &[], values).await
    }

    /// [`World::up_with`], the operator watching `more` namespaces besides [`NAMESPACE`],
    /// each made with its own store Secret before the chart is installed.
    pub async fn up_watching(name: &str, more: &[&str], values: &[(&str, &str)]) -> Result<Self> {
        init_tracing();
        let dir = test_dir(name)?;
        let plane = ControlPlane::start(&dir).await?;
        let client = plane.admin_client().await?;
        let store = S3Store::start(&dir.join("s3"))?;
        seed_store(&store, &dir).await?;
        // What the Dockerfile's images set with ENV.
        let deps = crate::paths::deps();
        // Both carry ONNX Runtime and the face detector: one input pipeline.
        let pipeline_env = [
            ("ORT_DYLIB_PATH", deps.join("onnxruntime/libonnxruntime.so")),
            (
                "FACE_DETECTOR",
                deps.join("blazeface/face_detection_front_128x128.onnx"),
            ),
        ];
        let pipeline_env: Vec<(&str, &std::path::Path)> = pipeline_env
            .iter()
            .map(|(k, v)| (*k, v.as_path()))
            .collect();
        let images = Images::default()
            .with(
                TRAINER_IMAGE,
                &our_bin("face2simpson-trainer")?,
                &pipeline_env,
            )
            .with(
                INFERENCE_IMAGE,
                &our_bin("face2simpson-inference")?,
                &pipeline_env,
            );
        let node = Node::start(client.clone(), images, &dir).await?;

        // As a user would: the namespaces and their store Secrets, then the chart.
        let namespaces: Vec<&str> = std::iter::once(NAMESPACE)
            .chain(more.iter().copied())
            .collect();
        for ns in &namespaces {
            kubectl_ok(&plane, &["create", "namespace", ns]).await?;
            create_secret(&plane, ns, "store-creds", &store.secret_data()).await?;
        }
        let keys: Vec<String> = (0..namespaces.len())
            .map(|i| format!("watchNamespaces[{i}]"))
            .collect();
        let mut all: Vec<(&str, &str)> = keys
            .iter()
            .map(String::as_str)
            .zip(namespaces.iter().copied())
            .collect();
        all.extend_from_slice(&[
            ("image.tag", "e2e"),
            ("logFormat", "text"),
            ("logLevel", "info\\,kube=warn\\,face2simpson_operator=debug"),
        ]);
        all.extend_from_slice(values);
        helm_install(&plane, RELEASE, RELEASE_NAMESPACE, &all).await?;
        let operator = Operator::from_release(&plane, RELEASE_NAMESPACE, RELEASE).await?;
        Ok(Self {
            dir,
            client,
            operator,
            node,
            store,
            plane,
        })
    }

    /// The SimpsonModel as a user writes it: examples/minimal.yaml with this store, the
    /// e2e images, and a small CPU-only recipe.
    pub fn manifest(&self, recipe: Recipe) -> Result<String> {
        self.manifest_with(recipe, &json!({}))
    }

    /// [`World::manifest`] with `extra` merged in (JSON merge patch semantics).
    pub fn manifest_with(&self, recipe: Recipe, extra: &Value) -> Result<String> {
        let example = std::fs::read_to_string(workspace().join("examples/minimal.yaml"))?;
        let mut sm: Value = serde_yaml::from_str(&example)?;
        sm["metadata"] = json!({"name": MODEL, "namespace": NAMESPACE});
        sm["spec"]["storageUri"] = json!(self.store.url(STORE_PREFIX));
        sm["spec"]["training"] = json!({
            "image": TRAINER_IMAGE,
            "imageSize": 64,
            "batchSize": 16,
            "epochs": recipe.epochs,
            "learningRate": recipe.learning_rate,
            "patience": 1,
            "backoffLimit": 0,
            "gpus": 0,
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
        });
        sm["spec"]["inference"]["image"] = json!(INFERENCE_IMAGE);
        merge(&mut sm, extra);
        Ok(serde_yaml::to_string(&sm)?)
    }

    /// `kubectl apply` of the model with `recipe`.
    pub async fn apply_model(&self, recipe: Recipe) -> Result<()> {
        self.apply_model_with(recipe, &json!({})).await
    }

    /// `kubectl apply` of the model with `recipe` and `extra` merged in.
    pub async fn apply_model_with(&self, recipe: Recipe, extra: &Value) -> Result<()> {
        kubectl_apply(&self.plane, &self.manifest_with(recipe, extra)?).await?;
        Ok(())
    }

    pub fn models(&self) -> Api<SimpsonModel> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    pub fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    /// Waits until a training pod exists: from then on a run is certainly under way and
    /// undecided (the trainer needs seconds).
    pub async fn wait_training_pod(&self) -> Result<()> {
        let pods = self.pods();
        poll(
            "the training pod",
            Duration::from_secs(60),
            Duration::from_millis(50),
            || {
                let pods = pods.clone();
                async move {
                    let list = pods
                        .list(&ListParams::default().labels("app.kubernetes.io/component=training"))
                        .await?;
                    Ok((!list.items.is_empty()).then_some(()))
                }
            },
        )
        .await
    }

    pub async fn model(&self) -> Result<SimpsonModel> {
        Ok(self.models().get(MODEL).await?)
    }

    /// Waits until the model satisfies `done`, and returns it then.
    pub async fn wait_model(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&SimpsonModel) -> bool,
    ) -> Result<SimpsonModel> {
        let done = &done;
        poll(what, timeout, Duration::from_millis(200), || async move {
            let sm = self.model().await?;
            Ok(done(&sm).then_some(sm))
        })
        .await
        .with_context(|| self.context())
    }

    /// Suspends or resumes a Job, as Kueue does when it preempts or admits it.
    pub async fn suspend_job(&self, name: &str, suspend: bool) -> Result<()> {
        self.jobs()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"suspend": suspend}})),
            )
            .await?;
        Ok(())
    }

    /// The pods of the Job `name`.
    pub async fn job_pods(&self, name: &str) -> Result<Vec<Pod>> {
        Ok(self
            .pods()
            .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}")))
            .await?
            .items)
    }

    /// The logs the stand-in node kept of the containers of the pods whose names start with
    /// `prefix` (deleted pods included), by pod name.
    pub fn pod_logs(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let prefix = format!("{NAMESPACE}_{prefix}");
        let mut logs = Vec::new();
        for entry in std::fs::read_dir(self.dir.join("pods"))? {
            let entry = entry?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with(&prefix)
                && let Some(pod) = file.strip_suffix(".log")
            {
                let pod = pod[NAMESPACE.len() + 1..].to_owned();
                logs.push((pod, std::fs::read_to_string(entry.path())?));
            }
        }
        logs.sort();
        Ok(logs)
    }

    /// Whether a run of the model has a complete checkpoint in the store (its `state.json`,
    /// which the trainer writes last), found by walking the bucket's files: callable from the
    /// node stand-in's fault hooks.
    pub fn checkpoint_written(bucket_dir: &std::path::Path) -> bool {
        fn has_state(dir: &std::path::Path) -> bool {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        has_state(&path)
                    } else {
                        e.file_name() == "state.json"
                    }
                })
        }
        let runs = bucket_dir
            .join(STORE_PREFIX)
            .join(artifacts::layout::model_runs(NAMESPACE, MODEL));
        std::fs::read_dir(runs)
            .into_iter()
            .flatten()
            .flatten()
            .any(|run| has_state(&run.path().join("checkpoint")))
    }

    /// Changes the recipe and asks for a run now, as `kubectl annotate` would.
    pub async fn request_run(&self, recipe: Recipe, request: &str) -> Result<()> {
        let patch = json!({
            "metadata": {"annotations": {face2simpson_operator::crd::TRAIN_REQUEST_ANNOTATION: request}},
            "spec": {"training": {"epochs": recipe.epochs, "learningRate": recipe.learning_rate}},
        });
        self.models()
            .patch(MODEL, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        Ok(())
    }

    /// Waits until a run other than `after` has a decision, and returns the model then.
    pub async fn wait_decision(&self, after: Option<&str>) -> Result<SimpsonModel> {
        let models = self.models();
        poll(
            "a training run's decision",
            TRAINING_TIMEOUT,
            Duration::from_millis(500),
            || {
                let models = models.clone();
                async move {
                    let sm = models.get(MODEL).await?;
                    let decided = sm
                        .status
                        .as_ref()
                        .and_then(|s| s.last_run.as_ref())
                        .is_some_and(|r| Some(r.run_id.as_str()) != after && r.decision.is_some());
                    Ok(decided.then_some(sm))
                }
            },
        )
        .await
        .with_context(|| self.context())
    }

    /// Waits until the inference Deployment has rolled out completely to `run_id` and every
    /// serving pod answers `/v1/model` with it; returns those pods' endpoints.
    pub async fn wait_serving(&self, run_id: &str) -> Result<Vec<String>> {
        let name = inference_name(MODEL);
        let timeout = Duration::from_secs(120);
        poll(
            &format!("the Deployment to serve {run_id}"),
            timeout,
            Duration::from_millis(500),
            || {
                let name = name.clone();
                async move {
                    let Some(d) = self.deployments().get_opt(&name).await? else {
                        return Ok(None);
                    };
                    let (spec, status) = (
                        d.spec.clone().unwrap_or_default(),
                        d.status.clone().unwrap_or_default(),
                    );
                    let want = spec.replicas.unwrap_or(1);
                    let rolled = status.observed_generation == d.metadata.generation
                        && status.updated_replicas == Some(want)
                        && status.available_replicas == Some(want)
                        && status.replicas == Some(want);
                    if !rolled {
                        return Ok(None);
                    }
                    let endpoints = self.serving_endpoints().await?;
                    if endpoints.len() != usize::try_from(want)? {
                        return Ok(None);
                    }
                    for endpoint in &endpoints {
                        if self.served_run(endpoint).await?.as_deref() != Some(run_id) {
                            return Ok(None);
                        }
                    }
                    Ok(Some(endpoints))
                }
            },
        )
        .await
        .with_context(|| self.context())
    }

    /// Endpoints of the inference pods that are Ready and not terminating.
    pub async fn serving_endpoints(&self) -> Result<Vec<String>> {
        let selector =
            format!("app.kubernetes.io/instance={MODEL},app.kubernetes.io/component=inference");
        let pods = self
            .pods()
            .list(&ListParams::default().labels(&selector))
            .await?;
        Ok(pods
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
            .filter_map(|p| self.node.endpoint(p, 8080))
            .collect())
    }

    /// The run id a pod's `/v1/model` names.
    pub async fn served_run(&self, endpoint: &str) -> Result<Option<String>> {
        let info: Value = crate::paths::http()
            .get(format!("{endpoint}/v1/model"))
            .send()
            .await?
            .json()
            .await?;
        Ok(info["run_id"].as_str().map(str::to_owned))
    }

    /// A real prediction over HTTP: the verdicts for a synthetic head from the dataset.
    pub async fn predict(&self, endpoint: &str) -> Result<Value> {
        self.predict_image(endpoint, "test/homer/00000.png").await
    }

    /// Uploads the dataset image `image` (relative to the dataset) as a user would: the
    /// service's answer.
    pub async fn predict_image(&self, endpoint: &str, image: &str) -> Result<Value> {
        let path = self
            .store
            .bucket_dir()
            .join(STORE_PREFIX)
            .join("datasets/current")
            .join(image);
        let image = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
        let response = crate::paths::http()
            .post(format!("{endpoint}/v1/predict"))
            .header("content-type", "image/png")
            .body(image)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        ensure!(status.is_success(), "/v1/predict answered {status}: {body}");
        Ok(body)
    }

    /// `n` uploads of the test images of `class`, spread over the serving pods, one at a time
    /// (the live traffic the shadow stage and drift detection see).
    pub async fn upload_photos(&self, n: usize, class: &str) -> Result<()> {
        let endpoints = self.serving_endpoints().await?;
        ensure!(!endpoints.is_empty(), "no serving pod");
        let dir = self
            .store
            .bucket_dir()
            .join(STORE_PREFIX)
            .join("datasets/current/test")
            .join(class);
        let mut images: Vec<String> = std::fs::read_dir(&dir)
            .with_context(|| format!("{}", dir.display()))?
            .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .filter(|name| !name.starts_with('.'))
            .collect();
        images.sort();
        ensure!(!images.is_empty(), "no test image of {class}");
        for i in 0..n {
            let endpoint = &endpoints[i % endpoints.len()];
            let image = format!("test/{class}/{}", images[i % images.len()]);
            self.predict_image(endpoint, &image).await?;
        }
        Ok(())
    }

    /// A run's metrics.json where the operator keys the model's runs; `None` when absent.
    pub async fn metrics(&self, run_id: &str) -> Result<Option<artifacts::RunMetrics>> {
        let store = self.store.storage(STORE_PREFIX)?;
        match store
            .get_metrics_in(&artifacts::layout::model_runs(NAMESPACE, MODEL), run_id)
            .await
        {
            Ok(metrics) => Ok(Some(metrics)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// How often the operator reported `reason` about the model: kube's event recorder folds
    /// repeats into one Event with a series count.
    /// [`World::events`] once there are at least `at_least` of them (or after 15 s): the
    /// operator publishes an event right after the status write that records it, so a test
    /// that saw the status may look a moment too early.
    pub async fn wait_events(&self, reason: &str, at_least: i32) -> Result<i32> {
        let counted = poll(
            "the events",
            Duration::from_secs(15),
            Duration::from_millis(200),
            || async move {
                let n = self.events(reason).await?;
                Ok((n >= at_least).then_some(n))
            },
        )
        .await;
        match counted {
            Ok(n) => Ok(n),
            Err(_) => self.events(reason).await,
        }
    }

    pub async fn events(&self, reason: &str) -> Result<i32> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), NAMESPACE);
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(MODEL)
            })
            .map(|e| e.series.as_ref().map_or(1, |s| s.count))
            .sum())
    }

    /// ReplicaSets of the inference Deployment, by name.
    pub async fn replica_sets(&self) -> Result<Vec<String>> {
        let rs: Api<ReplicaSet> = Api::namespaced(self.client.clone(), NAMESPACE);
        let mut names: Vec<String> = rs
            .list(&ListParams::default().labels("app.kubernetes.io/component=inference"))
            .await?
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        names.sort();
        Ok(names)
    }

    /// A Secret `name` in [`NAMESPACE`] with the store's credentials, reaching it through
    /// `endpoint` (a [`crate::proxy::StoreProxy`]'s).
    pub async fn store_secret_via(&self, name: &str, endpoint: &str) -> Result<()> {
        create_secret(
            &self.plane,
            NAMESPACE,
            name,
            &self.store.secret_data_via(endpoint),
        )
        .await
    }

    /// `kubectl` as admin, failing on a non-zero exit.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String> {
        kubectl_ok(&self.plane, args).await
    }

    /// The end of every scenario: the operator was never refused by RBAC and never panicked.
    pub fn finish(self) -> Result<()> {
        let forbidden = self.plane.forbidden_requests(&self.operator.username)?;
        ensure!(
            forbidden.is_empty(),
            "the API server refused the operator (chart RBAC too narrow): {forbidden:?}"
        );
        let log = std::fs::read_to_string(self.operator.log())?.to_lowercase();
        for needle in ["panicked", "forbidden"] {
            ensure!(
                !log.contains(needle),
                "the operator log contains {needle:?}; see {}",
                self.operator.log().display()
            );
        }
        Ok(())
    }

    /// What to look at when a wait times out.
    pub fn context(&self) -> String {
        format!(
            "logs in {}; operator log tail:\n{}",
            self.dir.display(),
            self.operator.tail(15)
        )
    }
}

/// JSON merge patch (RFC 7386) of `patch` into `base`.
pub fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// Whether the pod is Ready, as the kubelet (here the node stand-in) reports it.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `kubectl create secret generic` with `data` as literals.
async fn create_secret(
    plane: &ControlPlane,
    namespace: &str,
    name: &str,
    data: &std::collections::BTreeMap<String, String>,
) -> Result<()> {
    let literals: Vec<String> = data
        .iter()
        .map(|(k, v)| format!("--from-literal={k}={v}"))
        .collect();
    let mut args = vec!["-n", namespace, "create", "secret", "generic", name];
    args.extend(literals.iter().map(String::as_str));
    kubectl_ok(plane, &args).await?;
    Ok(())
}

async fn kubectl_ok(plane: &ControlPlane, args: &[&str]) -> Result<String> {
    let out = kubectl(plane, args, None).await?;
    if !out.success {
        bail!("kubectl {} failed: {}", args.join(" "), out.stderr.trim());
    }
    Ok(out.stdout)
}

/// The synthetic dataset (drawn by the real trainer's `datagen`, through S3) and the ImageNet
/// backbone where the trainer looks for it.
async fn seed_store(store: &S3Store, dir: &std::path::Path) -> Result<()> {
    let env: Vec<(String, String)> = store.secret_data().into_iter().collect();
    let args: Vec<String> = [
        "datagen",
        "--storage",
        &store.url(STORE_PREFIX),
        "--dataset",
        "datasets/current",
        "--per-class",
        "20",
        "--size",
        "64",
        "--seed",
        "1",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut datagen = Process::spawn(
        "datagen",
        &our_bin("face2simpson-trainer")?,
        &args,
        Env::Only(env),
        dir,
    )?;
    let status = datagen.wait().await?;
    ensure!(status.success(), "datagen failed:\n{}", datagen.tail(20));
    let pretrained = crate::paths::deps().join("pretrained/mobilenet_v2-b0353104.pth");
    let bytes = std::fs::read(&pretrained)
        .with_context(|| format!("{} is missing: run `make setup`", pretrained.display()))?;
    store
        .storage(STORE_PREFIX)?
        .put(PRETRAINED_KEY, bytes)
        .await?;
    Ok(())
}
