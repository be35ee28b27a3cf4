//! Installing the way users install: `helm install` the chart, `kubectl apply` manifests, and
//! the operator run as the chart's Deployment would run it, under the chart's ServiceAccount.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;

use crate::cluster::ControlPlane;
use crate::paths::{free_port, kube_bin, our_bin, workspace};
use crate::process::{Env, Process};
use crate::wait::poll;

/// Output of a command-line tool.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

async fn run_tool(
    plane: &ControlPlane,
    tool: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<Output> {
    use tokio::io::AsyncWriteExt as _;
    let home = plane.dir().join("tool-home");
    let mut cmd = tokio::process::Command::new(kube_bin(tool)?);
    cmd.args(args)
        .env("KUBECONFIG", &plane.admin_kubeconfig)
        // Helm keeps a cache and a registry config under these; keep them out of $HOME.
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("cannot run {tool}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).await?;
    }
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .with_context(|| format!("{tool} {} did not finish in 2 minutes", args.join(" ")))??;
    Ok(Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `kubectl <args>` as cluster admin; `stdin` is piped in (for `-f -`).
pub async fn kubectl(plane: &ControlPlane, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    run_tool(plane, "kubectl", args, stdin).await
}

/// `kubectl apply -f -` of a manifest; fails with kubectl's message when refused.
pub async fn kubectl_apply(plane: &ControlPlane, manifest: &str) -> Result<String> {
    let out = kubectl(plane, &["apply", "-f", "-"], Some(manifest)).await?;
    if !out.success {
        bail!("kubectl apply refused it: {}", out.stderr.trim());
    }
    Ok(out.stdout)
}

/// The chart as a user installs it: `helm install <release> charts/face2simpson`.
pub async fn helm_install(
    plane: &ControlPlane,
    release: &str,
    namespace: &str,
    values: &[(&str, &str)],
) -> Result<Output> {
    let chart = workspace().join("charts/face2simpson");
    let chart = chart.to_string_lossy();
    let sets: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut args = vec![
        "install",
        release,
        &chart,
        "--namespace",
        namespace,
        "--create-namespace",
    ];
    for set in &sets {
        args.extend(["--set", set]);
    }
    let out = run_tool(plane, "helm", &args, None).await?;
    if !out.success {
        bail!("helm install failed: {}{}", out.stdout, out.stderr);
    }
    Ok(out)
}

/// The operator, run as a local process exactly as the chart's Deployment would run it: its
/// container's args and env (downward API included), authenticated as the Deployment's
/// ServiceAccount with a token from the TokenRequest API.
#[derive(Debug)]
pub struct Operator {
    process: Process,
    /// Log name: `operator` for the first, `operator-<suffix>` for others.
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: PathBuf,
    /// The identity every API call is made with, `system:serviceaccount:<ns>:<name>`.
    pub username: String,
    /// `http://127.0.0.1:<port>` of the admin server (/healthz, /readyz, /metrics).
    pub admin: String,
    /// The name of the Pod it stands in for: its identity in the leader Lease.
    pub pod_name: String,
}

impl Operator {
    /// The operator process's pid, for resource figures (`/proc/<pid>`).
    pub fn pid(&self) -> Option<u32> {
        self.process.id()
    }

    /// Finds the Deployment the helm release `release` created in `namespace` and starts its
    /// container.
    pub async fn from_release(
        plane: &ControlPlane,
        namespace: &str,
        release: &str,
    ) -> Result<Self> {
        Self::replica_of_release(plane, namespace, release, None).await
    }

    /// Another replica of the same Deployment, as the ReplicaSet's second Pod: its own pod
    /// name (`<deployment>-<suffix>`, so its own identity in the leader Lease), admin port and
    /// log (`operator-<suffix>.log`), the same ServiceAccount.
    pub async fn another_replica(
        plane: &ControlPlane,
        namespace: &str,
        release: &str,
        suffix: &str,
    ) -> Result<Self> {
        Self::replica_of_release(plane, namespace, release, Some(suffix)).await
    }

    async fn replica_of_release(
        plane: &ControlPlane,
        namespace: &str,
        release: &str,
        suffix: Option<&str>,
    ) -> Result<Self> {
        let admin = plane.admin_client().await?;
        let selector = format!("app.kubernetes.io/instance={release}");
        let mut found = Api::<Deployment>::namespaced(admin.clone(), namespace)
            .list(&kube::api::ListParams::default().labels(&selector))
            .await?
            .items;
        anyhow::ensure!(
            found.len() == 1,
            "expected one Deployment labelled {selector} in {namespace}, found {}",
            found.len()
        );
        let deployment = found.remove(0);
        let name = deployment.metadata.name.clone().unwrap_or_default();
        let spec = deployment
            .spec
            .and_then(|s| s.template.spec)
            .context("the operator Deployment has no pod spec")?;
        let account = spec
            .service_account_name
            .clone()
            .context("the operator Deployment names no ServiceAccount")?;
        let container = spec
            .containers
            .iter()
            .find(|c| c.name == "operator")
            .cloned()
            .context("the operator Deployment has no `operator` container")?;
        // The Pod the ReplicaSet would create, for the downward API.
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(format!("{name}-{}", suffix.unwrap_or("e2e-local"))),
                namespace: Some(namespace.to_owned()),
                uid: Some("00000000-0000-4000-8000-0000000e2e00".into()),
                ..Default::default()
            },
            spec: Some(spec.clone()),
            status: None,
        };
        let port = free_port()?;
        let ports: BTreeMap<i32, u16> = container
            .ports
            .iter()
            .flatten()
            .map(|p| (p.container_port, port))
            .collect();
        let mut env = crate::node_env::resolve(&admin, &pod, &container, &ports).await?;
        let dir = plane.dir().to_owned();
        let log_name = suffix.map_or_else(|| "operator".to_owned(), |s| format!("operator-{s}"));
        let kubeconfig = plane
            .service_account_kubeconfig(
                namespace,
                &account,
                &dir.join(format!("{log_name}.kubeconfig")),
            )
            .await?;
        env.push((
            "KUBECONFIG".into(),
            kubeconfig.to_string_lossy().into_owned(),
        ));
        // The operator image's entrypoint is the operator binary, as for any stand-in image.
        let image = container.image.clone().unwrap_or_default();
        let (program, args) = crate::node::Images::default()
            .with(&image, &our_bin("face2simpson-operator")?, &[])
            .resolve(&container)
            .context("the operator container runs a command the harness has no binary for")?;
        let args = crate::node_env::expand_all(&args, &env);
        let process = Process::spawn(&log_name, &program, &args, Env::Only(env.clone()), &dir)?;
        let operator = Self {
            process,
            name: log_name,
            pod_name: pod.metadata.name.clone().unwrap_or_default(),
            program,
            args,
            env,
            dir,
            username: format!("system:serviceaccount:{namespace}:{account}"),
            admin: format!("http://127.0.0.1:{port}"),
        };
        operator.wait_ready().await?;
        Ok(operator)
    }

    async fn wait_ready(&self) -> Result<()> {
        let http = crate::paths::http();
        let url = format!("{}/readyz", self.admin);
        poll(
            "the operator's /readyz",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    Ok(http
                        .get(&url)
                        .send()
                        .await?
                        .status()
                        .is_success()
                        .then_some(()))
                }
            },
        )
        .await
        .with_context(|| format!("operator log:\n{}", self.process.tail(30)))
    }

    /// SIGKILL, as when its node dies.
    pub async fn kill(&mut self) -> Result<()> {
        self.process.kill().await?;
        Ok(())
    }

    /// Starts it again with the same args, env and identity.
    pub async fn restart(&mut self) -> Result<()> {
        self.process.terminate(Duration::from_secs(5)).await?;
        self.process = Process::spawn(
            &self.name,
            &self.program,
            &self.args,
            Env::Only(self.env.clone()),
            &self.dir,
        )?;
        self.wait_ready().await
    }

    /// SIGTERM, as the kubelet stops a container, and waits up to 10 s for the exit.
    pub async fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        self.process.terminate(Duration::from_secs(10)).await
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        Ok(crate::paths::http()
            .get(format!("{}/metrics", self.admin))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// The operator's log file.
    pub fn log(&self) -> &Path {
        self.process.log()
    }

    /// The last lines of its log.
    pub fn tail(&self, lines: usize) -> String {
        self.process.tail(lines)
    }
}
