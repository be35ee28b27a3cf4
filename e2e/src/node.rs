//! The node stand-in: plays the kubelet for every Pod the controllers create.
//!
//! There is no container runtime here, so a Pod's container runs as a local process of the
//! binary its image stands for, with the environment a kubelet would give it (`env`, `envFrom`,
//! Secret and ConfigMap references, the downward API, `$(VAR)` expansion). The stand-in binds
//! the Pod to its Node, reports it Running, probes readiness over HTTP and sets the `Ready`
//! condition only while the probe passes, restarts crashed containers of long-running Pods
//! with a back-off (CrashLoopBackOff), reports Succeeded/Failed with the exit code for
//! run-to-completion Pods, and finishes graceful deletion (SIGTERM, then the final delete),
//! so the real Job, ReplicaSet, Deployment and garbage-collector controllers see what they
//! would see on a real node.
//!
//! Pods share the loopback interface instead of having a network namespace each, so every
//! container port gets a free host port: an env value `0.0.0.0:<containerPort>` becomes
//! `127.0.0.1:<hostPort>` and probes go to that port.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Binding, Container, Node as NodeObject, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::paths::free_port;
use crate::process::{Env, Process};

/// Name of the one Node every Pod is bound to.
pub const NODE_NAME: &str = "e2e-node";
const CRASH_BACKOFF_MAX: Duration = Duration::from_secs(10);
const PROBE_PERIOD: Duration = Duration::from_millis(500);
/// Longest SIGTERM grace a stand-in container gets (real Pods default to 30 s; tests are impatient).
const MAX_GRACE: Duration = Duration::from_secs(5);

/// What runs where: images and command names mapped to local binaries.
#[derive(Debug, Clone, Default)]
pub struct Images {
    by_image: BTreeMap<String, PathBuf>,
    by_command: BTreeMap<String, PathBuf>,
    /// The `ENV` of each image: the lowest layer of a container's environment.
    env: BTreeMap<String, Vec<(String, String)>>,
}

impl Images {
    /// `image` runs `binary` when the container names no command; a command whose file name
    /// is `binary`'s runs it too. `env` is the image's own `ENV`, which the Pod's env overrides.
    pub fn with(mut self, image: &str, binary: &Path, env: &[(&str, &Path)]) -> Self {
        self.by_image.insert(image.to_owned(), binary.to_owned());
        if let Some(name) = binary.file_name().and_then(|n| n.to_str()) {
            self.by_command.insert(name.to_owned(), binary.to_owned());
        }
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.to_string_lossy().into_owned()))
            .collect();
        self.env.insert(image.to_owned(), env);
        self
    }

    fn env_of(&self, container: &Container) -> Vec<(String, String)> {
        container
            .image
            .as_ref()
            .and_then(|i| self.env.get(i))
            .cloned()
            .unwrap_or_default()
    }

    /// The program and arguments of a container, as an image's entrypoint would resolve them.
    pub(crate) fn resolve(&self, container: &Container) -> Option<(PathBuf, Vec<String>)> {
        let args = container.args.clone().unwrap_or_default();
        match container.command.as_deref() {
            Some([command, rest @ ..]) => {
                let name = Path::new(command).file_name()?.to_str()?;
                let binary = self.by_command.get(name)?.clone();
                Some((binary, rest.iter().cloned().chain(args).collect()))
            }
            _ => Some((
                self.by_image.get(container.image.as_deref()?)?.clone(),
                args,
            )),
        }
    }
}

/// Failures the test injects, as a real node produces them.
#[derive(Debug, Default)]
struct Faults {
    /// Pods whose annotation (key, value) matches crash at once, every time they start: a
    /// crash loop, as with weights the server cannot read.
    crash: Vec<(String, String)>,
    /// The next Pod with this label (key, value) is evicted as it starts: `Failed` with the
    /// `DisruptionTarget` condition, as after preemption or a node drain.
    evict_next: Vec<(String, String)>,
    /// Before the next Pod carrying all these labels starts, this hook runs: a store write at
    /// an exact point of the loop (e.g. between a run's training and its validation).
    before_pod: Vec<BeforePod>,
    /// The container of the next Pod carrying all these labels is SIGKILLed once its condition
    /// holds while it runs: a process that dies mid-work, as on a node failure or an OOM kill.
    kill_when: Vec<KillWhen>,
}

/// What [`Node::kill_once_when`] waits for.
type Condition = Box<dyn Fn() -> bool + Send + Sync>;

/// A container to kill once `when` holds.
struct KillWhen {
    labels: Vec<(String, String)>,
    when: Condition,
}

impl std::fmt::Debug for KillWhen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KillWhen")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

fn owned(labels: &[(&str, &str)]) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn has_labels(pod: &Pod, wanted: &[(String, String)]) -> bool {
    let labels = pod.labels();
    wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// What [`Node::before_pod`] runs, once.
type Hook = Box<dyn FnOnce() -> Result<()> + Send>;

/// A hook to run before the next Pod with all these labels starts.
struct BeforePod {
    labels: Vec<(String, String)>,
    hook: Hook,
}

impl std::fmt::Debug for BeforePod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BeforePod")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// A container the stand-in runs.
#[derive(Debug, Clone)]
struct Running {
    namespace: String,
    name: String,
    /// containerPort → host port.
    ports: BTreeMap<i32, u16>,
    /// Set to ask the runner to stop the container.
    stop: Arc<watch::Sender<bool>>,
    /// Set (or closed) once the runner has stopped it.
    exited: watch::Receiver<bool>,
}

/// The node stand-in. Dropping it stops every container it runs.
#[derive(Debug)]
pub struct Node {
    pods: Arc<Mutex<HashMap<String, Running>>>,
    faults: Arc<Mutex<Faults>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
        if let Ok(pods) = self.pods.lock() {
            for running in pods.values() {
                let _ = running.stop.send(true);
            }
        }
    }
}

#[derive(Clone)]
struct Kubelet {
    client: Client,
    images: Images,
    log_dir: PathBuf,
    pods: Arc<Mutex<HashMap<String, Running>>>,
    faults: Arc<Mutex<Faults>>,
    /// `<namespace>/<subdomain>/<containerPort>` → the host port every pod behind that headless
    /// Service gets for it.
    service_ports: Arc<Mutex<HashMap<String, u16>>>,
}

impl Node {
    /// Registers the Node object and starts watching Pods in every namespace. Containers' logs
    /// go to `<log_dir>/pods/<namespace>_<pod>.log`.
    pub async fn start(client: Client, images: Images, log_dir: &Path) -> Result<Self> {
        let nodes: Api<NodeObject> = Api::all(client.clone());
        let node = NodeObject {
            metadata: ObjectMeta {
                name: Some(NODE_NAME.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        nodes
            .create(&PostParams::default(), &node)
            .await
            .context("cannot register the Node")?;
        let log_dir = log_dir.join("pods");
        std::fs::create_dir_all(&log_dir)?;
        let pods = Arc::new(Mutex::new(HashMap::new()));
        let faults = Arc::new(Mutex::new(Faults::default()));
        let kubelet = Kubelet {
            client,
            images,
            log_dir,
            pods: pods.clone(),
            faults: faults.clone(),
            service_ports: Arc::default(),
        };
        let task = tokio::spawn(async move {
            if let Err(e) = kubelet.watch().await {
                tracing::error!(error = %format!("{e:#}"), "node stand-in stopped");
            }
        });
        Ok(Self { pods, faults, task })
    }

    /// From now on, containers of Pods annotated `key: value` exit with code 1 as soon as they
    /// start, every time: they never become ready.
    pub fn crash_pods_annotated(&self, key: &str, value: &str) {
        if let Ok(mut faults) = self.faults.lock() {
            faults.crash.push((key.to_owned(), value.to_owned()));
        }
    }

    /// The next Pod labelled `key: value` is evicted as it starts.
    pub fn evict_next_pod_labelled(&self, key: &str, value: &str) {
        if let Ok(mut faults) = self.faults.lock() {
            faults.evict_next.push((key.to_owned(), value.to_owned()));
        }
    }

    /// Before the next Pod carrying all of `labels` starts, `path` is overwritten with `bytes`.
    pub fn clobber_before_pod(&self, labels: &[(&str, &str)], path: &Path, bytes: &[u8]) {
        let (path, bytes) = (path.to_owned(), bytes.to_owned());
        self.before_pod(labels, move || {
            std::fs::write(&path, bytes)
                .with_context(|| format!("cannot overwrite {}", path.display()))
        });
    }

    /// Before the next Pod carrying all of `labels` starts, `hook` runs (once): it sees what
    /// the previous steps left in the store, e.g. a run's trained model, and may rewrite it.
    pub fn before_pod(
        &self,
        labels: &[(&str, &str)],
        hook: impl FnOnce() -> Result<()> + Send + 'static,
    ) {
        if let Ok(mut faults) = self.faults.lock() {
            faults.before_pod.push(BeforePod {
                labels: owned(labels),
                hook: Box::new(hook),
            });
        }
    }

    /// The container of the next Pod carrying all of `labels` is SIGKILLed (exit code 137, no
    /// `DisruptionTarget`) as soon as `when` holds while it runs, once: a rank whose process
    /// dies mid-training. A matching Pod that ends before `when` holds leaves it armed.
    pub fn kill_once_when(
        &self,
        labels: &[(&str, &str)],
        when: impl Fn() -> bool + Send + Sync + 'static,
    ) {
        if let Ok(mut faults) = self.faults.lock() {
            faults.kill_when.push(KillWhen {
                labels: owned(labels),
                when: Box::new(when),
            });
        }
    }

    /// `http://127.0.0.1:<port>` of a Pod's container port, while the stand-in runs it.
    pub fn endpoint(&self, pod: &Pod, container_port: i32) -> Option<String> {
        let pods = self.pods.lock().ok()?;
        let port = pods.get(&pod.uid()?)?.ports.get(&container_port).copied()?;
        Some(format!("http://127.0.0.1:{port}"))
    }

    /// How many containers the stand-in runs right now.
    pub fn running(&self) -> usize {
        self.pods.lock().map(|p| p.len()).unwrap_or(0)
    }
}

fn now() -> String {
    Timestamp::now().to_string()
}

fn is_ours(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_none_or(|n| n == NODE_NAME)
}

fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

impl Kubelet {
    async fn watch(self) -> Result<()> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let mut events = watcher::watcher(pods, watcher::Config::default()).boxed();
        while let Some(event) = events.try_next().await? {
            match event {
                Event::Apply(pod) | Event::InitApply(pod) => self.observe(pod).await,
                Event::Delete(pod) => self.forget(&pod),
                Event::Init | Event::InitDone => {}
            }
        }
        Ok(())
    }

    async fn observe(&self, pod: Pod) {
        if !is_ours(&pod) {
            return;
        }
        let result = if pod.metadata.deletion_timestamp.is_some() {
            self.delete(&pod).await
        } else if finished(&pod) || self.knows(&pod) {
            Ok(())
        } else {
            self.admit(pod.clone()).await
        };
        if let Err(e) = result {
            tracing::warn!(pod = %pod.name_any(), error = %format!("{e:#}"), "node stand-in");
        }
    }

    fn knows(&self, pod: &Pod) -> bool {
        let uid = pod.uid().unwrap_or_default();
        self.pods.lock().is_ok_and(|p| p.contains_key(&uid))
    }

    fn forget(&self, pod: &Pod) {
        let uid = pod.uid().unwrap_or_default();
        if let Some(running) = self.pods.lock().ok().and_then(|mut p| p.remove(&uid)) {
            let _ = running.stop.send(true);
        }
    }

    /// Graceful deletion: stop the container, then remove the object as the kubelet does.
    async fn delete(&self, pod: &Pod) -> Result<()> {
        let uid = pod.uid().unwrap_or_default();
        let running = self.pods.lock().ok().and_then(|mut p| p.remove(&uid));
        if let Some(mut running) = running {
            let _ = running.stop.send(true);
            // The runner sends SIGTERM and waits up to the grace period; the object goes last.
            let _ = tokio::time::timeout(
                MAX_GRACE + Duration::from_secs(1),
                running.exited.wait_for(|e| *e),
            )
            .await;
        }
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(kube::api::Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&pod.name_any(), &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Binds a new Pod, resolves its container and starts running it.
    async fn admit(&self, pod: Pod) -> Result<()> {
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let uid = pod.uid().unwrap_or_default();
        let Some(container) = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .cloned()
        else {
            return Ok(());
        };
        let Some((program, args)) = self.images.resolve(&container) else {
            // An image we have no binary for (the operator's own Deployment): it stays Pending,
            // as it would on a node that cannot pull it.
            return Ok(());
        };
        let subdomain = pod.spec.as_ref().and_then(|s| s.subdomain.as_deref());
        let ports: BTreeMap<i32, u16> = container
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let host = self.host_port(&namespace, subdomain, p.container_port)?;
                Ok((p.container_port, host))
            })
            .collect::<Result<_>>()?;
        let (stop, _) = watch::channel(false);
        let (exited_tx, exited) = watch::channel(false);
        let running = Running {
            namespace: namespace.clone(),
            name: name.clone(),
            ports,
            stop: Arc::new(stop),
            exited,
        };
        {
            let mut pods = self.pods.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            if pods.contains_key(&uid) {
                return Ok(());
            }
            pods.insert(uid, running.clone());
        }
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_none()
        {
            self.bind(&namespace, &name).await?;
        }
        self.run_before_pod_hooks(&pod)?;
        if self.take_eviction(&pod) {
            let evicted = self.evict(&running, &container).await;
            self.forget(&pod);
            return evicted;
        }
        let kubelet = self.clone();
        tokio::spawn(async move {
            let restart = pod
                .spec
                .as_ref()
                .and_then(|s| s.restart_policy.clone())
                .unwrap_or_else(|| "Always".into());
            let result = if restart == "Always" {
                kubelet
                    .serve(&pod, &container, program, args, &running)
                    .await
            } else {
                kubelet
                    .run_to_completion(&pod, &container, program, args, &running)
                    .await
            };
            if let Err(e) = result {
                tracing::warn!(pod = %running.name, error = %format!("{e:#}"), "container runner");
            }
            let _ = exited_tx.send(true);
        });
        Ok(())
    }

    /// A free host port for a container port; the same one for every pod behind the same
    /// headless Service (`subdomain`), as the same port on each pod's own address would be.
    fn host_port(&self, namespace: &str, subdomain: Option<&str>, port: i32) -> Result<u16> {
        let Some(subdomain) = subdomain else {
            return free_port();
        };
        let mut shared = self
            .service_ports
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        let key = format!("{namespace}/{subdomain}/{port}");
        if let Some(port) = shared.get(&key) {
            return Ok(*port);
        }
        let host = free_port()?;
        shared.insert(key, host);
        Ok(host)
    }

    /// The kill armed for this Pod by [`Node::kill_once_when`], taken out of the faults.
    fn take_kill(&self, pod: &Pod) -> Option<KillWhen> {
        let mut faults = self.faults.lock().ok()?;
        let i = faults
            .kill_when
            .iter()
            .position(|k| has_labels(pod, &k.labels))?;
        Some(faults.kill_when.remove(i))
    }

    /// Puts back a kill whose Pod ended before its condition held.
    fn rearm(&self, kill: KillWhen) {
        if let Ok(mut faults) = self.faults.lock() {
            faults.kill_when.push(kill);
        }
    }

    fn take_eviction(&self, pod: &Pod) -> bool {
        let Ok(mut faults) = self.faults.lock() else {
            return false;
        };
        let labels = pod.labels();
        let hit = faults
            .evict_next
            .iter()
            .position(|(k, v)| labels.get(k) == Some(v));
        hit.map(|i| faults.evict_next.remove(i)).is_some()
    }

    /// Runs the hooks registered for this Pod by [`Node::before_pod`].
    fn run_before_pod_hooks(&self, pod: &Pod) -> Result<()> {
        let labels = pod.labels();
        let hooks: Vec<BeforePod> = {
            let Ok(mut faults) = self.faults.lock() else {
                return Ok(());
            };
            let (hit, kept) = std::mem::take(&mut faults.before_pod)
                .into_iter()
                .partition(|h| h.labels.iter().all(|(k, v)| labels.get(k) == Some(v)));
            faults.before_pod = kept;
            hit
        };
        for BeforePod { hook, .. } in hooks {
            tracing::info!(pod = %pod.name_any(), "changing the store before the pod starts (injected fault)");
            hook()?;
        }
        Ok(())
    }

    fn crashes(&self, pod: &Pod) -> bool {
        let annotations = pod.annotations();
        self.faults
            .lock()
            .is_ok_and(|f| f.crash.iter().any(|(k, v)| annotations.get(k) == Some(v)))
    }

    /// What the kubelet reports for a Pod it killed to honour an eviction or a preemption.
    async fn evict(&self, running: &Running, container: &Container) -> Result<()> {
        tracing::info!(pod = %running.name, "evicting (injected fault)");
        let at = now();
        let state = json!({"terminated": {"exitCode": 137, "reason": "Error", "startedAt": at, "finishedAt": at}});
        let mut conditions = conditions(false);
        if let Some(list) = conditions.as_array_mut() {
            list.push(json!({"type": "DisruptionTarget", "status": "True",
                "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting",
                "lastTransitionTime": at}));
        }
        self.patch_status(
            running,
            json!({
                "phase": "Failed",
                "reason": "Evicted",
                "conditions": conditions,
                "containerStatuses": [container_status(container, false, 0, state)],
            }),
        )
        .await
    }

    async fn bind(&self, namespace: &str, name: &str) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(NODE_NAME.into()),
                ..Default::default()
            },
        };
        api.create_subresource::<_, Value>("binding", name, &PostParams::default(), &binding)
            .await
            .with_context(|| format!("cannot bind {namespace}/{name}"))?;
        Ok(())
    }

    async fn patch_status(&self, running: &Running, status: Value) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &running.namespace);
        api.patch_status(
            &running.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .with_context(|| {
            format!(
                "cannot update the status of {}/{}",
                running.namespace, running.name
            )
        })?;
        Ok(())
    }

    /// A container whose configuration cannot be resolved waits, as with a missing Secret.
    async fn start(
        &self,
        pod: &Pod,
        container: &Container,
        program: &Path,
        args: &[String],
        running: &Running,
    ) -> Result<Process> {
        loop {
            match crate::node_env::resolve(&self.client, pod, container, &running.ports).await {
                Ok(pod_env) => {
                    let mut env = self.images.env_of(container);
                    env.retain(|(k, _)| !pod_env.iter().any(|(p, _)| p == k));
                    env.extend(pod_env);
                    let args = crate::node_env::expand_all(args, &env);
                    let log = format!("{}_{}", running.namespace, running.name);
                    let program = if self.crashes(pod) {
                        Path::new("/bin/false")
                    } else {
                        program
                    };
                    return Process::spawn(&log, program, &args, Env::Only(env), &self.log_dir);
                }
                Err(e) => {
                    let status = container_status(
                        container,
                        false,
                        0,
                        json!({"waiting": {
                        "reason": "CreateContainerConfigError", "message": format!("{e:#}")}}),
                    );
                    self.patch_status(
                        running,
                        json!({"phase": "Pending", "containerStatuses": [status]}),
                    )
                    .await?;
                    let mut stop = running.stop.subscribe();
                    tokio::select! {
                        () = stopped(&mut stop) => anyhow::bail!("stopped before it started"),
                        () = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
            }
        }
    }

    /// restartPolicy Never/OnFailure (Jobs): run once, report the exit code.
    async fn run_to_completion(
        &self,
        pod: &Pod,
        container: &Container,
        program: PathBuf,
        args: Vec<String>,
        running: &Running,
    ) -> Result<()> {
        let mut process = self.start(pod, container, &program, &args, running).await?;
        let started = now();
        self.patch_status(running, running_status(container, &started, 0, false))
            .await?;
        let mut stop = running.stop.subscribe();
        let mut kill = self.take_kill(pod);
        let status = tokio::select! {
            status = process.wait() => status?,
            () = stopped(&mut stop) => {
                if let Some(kill) = kill {
                    self.rearm(kill);
                }
                process.terminate(MAX_GRACE).await?;
                return Ok(());
            }
            () = holds(kill.as_ref()) => {
                tracing::info!(pod = %running.name, "killing the container (injected fault)");
                kill = None;
                process.kill().await?
            }
        };
        if let Some(kill) = kill {
            self.rearm(kill);
        }
        let code = exit_code(status);
        let state = json!({"terminated": {
            "exitCode": code,
            "reason": if code == 0 { "Completed" } else { "Error" },
            "startedAt": started,
            "finishedAt": now(),
        }});
        self.patch_status(
            running,
            json!({
                "phase": if code == 0 { "Succeeded" } else { "Failed" },
                "conditions": conditions(false),
                "containerStatuses": [container_status(container, false, 0, state)],
            }),
        )
        .await
    }

    /// restartPolicy Always (Deployments): keep the container running, probe readiness,
    /// restart it with a back-off when it exits.
    async fn serve(
        &self,
        pod: &Pod,
        container: &Container,
        program: PathBuf,
        args: Vec<String>,
        running: &Running,
    ) -> Result<()> {
        let probe = readiness_url(container, &running.ports);
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let mut stop = running.stop.subscribe();
        let mut restarts = 0_u32;
        loop {
            let mut process = self.start(pod, container, &program, &args, running).await?;
            let started = now();
            let mut ready = false;
            self.patch_status(
                running,
                running_status(container, &started, restarts, false),
            )
            .await?;
            let exit = loop {
                tokio::select! {
                    status = process.wait() => break status?,
                    () = stopped(&mut stop) => {
                        process.terminate(MAX_GRACE).await?;
                        return Ok(());
                    }
                    () = tokio::time::sleep(PROBE_PERIOD) => {
                        let now_ready = match &probe {
                            Some(url) => http.get(url).send().await.is_ok_and(|r| r.status().is_success()),
                            None => true,
                        };
                        if now_ready != ready {
                            ready = now_ready;
                            self.patch_status(running, running_status(container, &started, restarts, ready)).await?;
                        }
                    }
                }
            };
            restarts += 1;
            let backoff = Duration::from_secs(1 << restarts.min(4)).min(CRASH_BACKOFF_MAX);
            let state = json!({"waiting": {"reason": "CrashLoopBackOff",
                "message": format!("back-off {}s restarting failed container (exit code {})", backoff.as_secs(), exit_code(exit))}});
            self.patch_status(
                running,
                json!({
                    "phase": "Running",
                    "conditions": conditions(false),
                    "containerStatuses": [container_status(container, false, restarts, state)],
                }),
            )
            .await?;
            tokio::select! {
                () = stopped(&mut stop) => return Ok(()),
                () = tokio::time::sleep(backoff) => {}
            }
        }
    }
}

/// Resolves once the kill's condition holds; never without a kill.
async fn holds(kill: Option<&KillWhen>) {
    let Some(kill) = kill else {
        return std::future::pending().await;
    };
    while !(kill.when)() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Resolves once the runner is asked to stop (or the Node is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(9))
}

fn readiness_url(container: &Container, ports: &BTreeMap<i32, u16>) -> Option<String> {
    let get = container.readiness_probe.as_ref()?.http_get.as_ref()?;
    let container_port = match &get.port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => *p,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))?
                .container_port
        }
    };
    let port = ports.get(&container_port)?;
    Some(format!(
        "http://127.0.0.1:{port}{}",
        get.path.as_deref().unwrap_or("/")
    ))
}

fn conditions(ready: bool) -> Value {
    let ready = if ready { "True" } else { "False" };
    let at = now();
    json!([
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": at},
        {"type": "Initialized", "status": "True", "lastTransitionTime": at},
        {"type": "ContainersReady", "status": ready, "lastTransitionTime": at},
        {"type": "Ready", "status": ready, "lastTransitionTime": at},
    ])
}

fn container_status(container: &Container, ready: bool, restarts: u32, state: Value) -> Value {
    json!({
        "name": container.name,
        "image": container.image,
        "imageID": "",
        "ready": ready,
        "restartCount": restarts,
        "started": state.get("running").is_some(),
        "state": state,
    })
}

fn running_status(container: &Container, started: &str, restarts: u32, ready: bool) -> Value {
    json!({
        "phase": "Running",
        "hostIP": "127.0.0.1",
        "podIP": "127.0.0.1",
        "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": started,
        "conditions": conditions(ready),
        "containerStatuses": [container_status(container, ready, restarts, json!({"running": {"startedAt": started}}))],
    })
}
