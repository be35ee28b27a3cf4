//! etcd, kube-apiserver and kube-controller-manager on loopback, envtest-style.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

use crate::paths::{free_port, kube_bin};
use crate::pki::Pki;
use crate::process::{Env, Process};
use crate::wait::poll;

/// The controllers a cluster needs for what the operator creates: Jobs and their pods,
/// Deployments and their ReplicaSets, owner-reference garbage collection, namespace deletion,
/// ServiceAccounts with their tokens and CA bundle, and PodDisruptionBudgets.
const CONTROLLERS: &str = "job-controller,deployment-controller,replicaset-controller,\
garbage-collector-controller,namespace-controller,serviceaccount-controller,\
serviceaccount-token-controller,root-ca-certificate-publisher-controller,disruption-controller,\
clusterrole-aggregation-controller";

/// Records every request's user and response code (Metadata level, no bodies), so a test can
/// prove that the operator was never refused.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n";

/// A running control plane. Dropping it kills every process.
#[derive(Debug)]
pub struct ControlPlane {
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// Certificates and keys.
    pub pki: Pki,
    /// A kubeconfig with cluster-admin rights (group system:masters).
    pub admin_kubeconfig: PathBuf,
    dir: PathBuf,
    audit_log: PathBuf,
    // Field order is drop order: controllers first, etcd last.
    _controller_manager: Process,
    _apiserver: Process,
    _etcd: Process,
    _data: tempfile::TempDir,
}

fn kubeconfig_yaml(server: &str, ca: &Path, user: serde_json::Value) -> Result<String> {
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "user"}}],
        "current-context": "e2e",
    });
    Ok(serde_yaml::to_string(&config)?)
}

async fn start_etcd(dir: &Path, data: &Path) -> Result<(Process, String)> {
    let (client, peer) = (free_port()?, free_port()?);
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let etcd = Process::spawn(
        "etcd",
        &kube_bin("etcd")?,
        &[
            "--name=e2e".into(),
            format!("--data-dir={}", data.join("etcd").display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=e2e={peer_url}"),
            // A test cluster's data is thrown away: no fsync makes every write cheap.
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ],
        Env::Inherit(vec![]),
        dir,
    )?;
    let http = crate::paths::http();
    let health = format!("{client_url}/health");
    poll(
        "etcd /health",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let (http, health) = (http.clone(), health.clone());
            async move {
                let body = http.get(&health).send().await?.text().await?;
                Ok(body.contains("true").then_some(()))
            }
        },
    )
    .await
    .with_context(|| format!("etcd did not start; see {}", etcd.log().display()))?;
    Ok((etcd, client_url))
}

async fn wait_ready(admin_kubeconfig: &Path, apiserver: &Process) -> Result<()> {
    let client = client_from(admin_kubeconfig).await?;
    poll(
        "kube-apiserver /readyz",
        Duration::from_secs(90),
        Duration::from_millis(250),
        || {
            let client = client.clone();
            async move {
                let req = http::Request::get("/readyz").body(Vec::new())?;
                Ok(client
                    .request_text(req)
                    .await
                    .ok()
                    .filter(|body| body.trim() == "ok")
                    .map(|_| ()))
            }
        },
    )
    .await
    .with_context(|| {
        format!(
            "kube-apiserver did not become ready; see {}",
            apiserver.log().display()
        )
    })
}

fn start_controller_manager(dir: &Path, admin_kubeconfig: &Path, pki: &Pki) -> Result<Process> {
    Process::spawn(
        "kube-controller-manager",
        &kube_bin("kube-controller-manager")?,
        &[
            format!("--kubeconfig={}", admin_kubeconfig.display()),
            format!("--controllers={CONTROLLERS}"),
            format!(
                "--service-account-private-key-file={}",
                pki.service_account_key.display()
            ),
            format!("--root-ca-file={}", pki.ca_cert.display()),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
        ],
        Env::Inherit(vec![]),
        dir,
    )
}

/// The ServiceAccount controller creates `default` in every namespace; once it exists the
/// controller manager is up and pods can be admitted.
async fn wait_for_controllers(admin_kubeconfig: &Path, controller_manager: &Process) -> Result<()> {
    let accounts: Api<ServiceAccount> =
        Api::namespaced(client_from(admin_kubeconfig).await?, "default");
    poll(
        "kube-controller-manager (the default ServiceAccount)",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            let accounts = accounts.clone();
            async move { Ok(accounts.get_opt("default").await?.map(|_| ())) }
        },
    )
    .await
    .with_context(|| {
        format!(
            "kube-controller-manager did not start; see {}",
            controller_manager.log().display()
        )
    })
}

impl ControlPlane {
    /// Starts etcd, the API server and the controller manager; logs go to `dir`.
    pub async fn start(dir: &Path) -> Result<Self> {
        let data = tempfile::Builder::new().prefix("f2s-e2e-").tempdir()?;
        let pki = Pki::generate(&dir.join("pki"))?;
        let (etcd, etcd_url) = start_etcd(dir, data.path()).await?;

        let port = free_port()?;
        let server = format!("https://127.0.0.1:{port}");
        let audit_policy = dir.join("audit-policy.yaml");
        std::fs::write(&audit_policy, AUDIT_POLICY)?;
        let audit_log = dir.join("audit.log");
        let apiserver = Process::spawn(
            "kube-apiserver",
            &kube_bin("kube-apiserver")?,
            &[
                format!("--etcd-servers={etcd_url}"),
                format!("--secure-port={port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--cert-dir={}", data.path().join("certs").display()),
                format!("--tls-cert-file={}", pki.serving_cert.display()),
                format!("--tls-private-key-file={}", pki.serving_key.display()),
                format!("--client-ca-file={}", pki.ca_cert.display()),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!(
                    "--service-account-key-file={}",
                    pki.service_account_public_key.display()
                ),
                format!(
                    "--service-account-signing-key-file={}",
                    pki.service_account_key.display()
                ),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--authorization-mode=RBAC".into(),
                format!("--audit-policy-file={}", audit_policy.display()),
                format!("--audit-log-path={}", audit_log.display()),
                "--profiling=false".into(),
            ],
            Env::Inherit(vec![]),
            dir,
        )?;

        let admin_kubeconfig = dir.join("admin.kubeconfig");
        std::fs::write(
            &admin_kubeconfig,
            kubeconfig_yaml(
                &server,
                &pki.ca_cert,
                json!({"client-certificate": pki.admin_cert, "client-key": pki.admin_key}),
            )?,
        )?;

        wait_ready(&admin_kubeconfig, &apiserver).await?;
        let controller_manager = start_controller_manager(dir, &admin_kubeconfig, &pki)?;
        wait_for_controllers(&admin_kubeconfig, &controller_manager).await?;
        Ok(Self {
            server,
            pki,
            admin_kubeconfig,
            dir: dir.to_owned(),
            audit_log,
            _controller_manager: controller_manager,
            _apiserver: apiserver,
            _etcd: etcd,
            _data: data,
        })
    }

    /// A client with cluster-admin rights.
    pub async fn admin_client(&self) -> Result<Client> {
        client_from(&self.admin_kubeconfig).await
    }

    /// A kubeconfig authenticated as a ServiceAccount with a token from the TokenRequest API,
    /// valid for an hour.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        account: &str,
        path: &Path,
    ) -> Result<PathBuf> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin_client().await?, namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(3600),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        let token = accounts
            .create_token_request(account, &PostParams::default(), &request)
            .await
            .with_context(|| format!("TokenRequest for ServiceAccount {namespace}/{account}"))?
            .status
            .context("TokenRequest answered without a status")?
            .token;
        std::fs::write(
            path,
            kubeconfig_yaml(&self.server, &self.pki.ca_cert, json!({ "token": token }))?,
        )?;
        Ok(path.to_owned())
    }

    /// Every request of `username` the audit log holds so far, in order.
    pub fn requests_of(&self, username: &str) -> Result<Vec<AuditedRequest>> {
        let text = std::fs::read_to_string(&self.audit_log)
            .with_context(|| format!("cannot read {}", self.audit_log.display()))?;
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| event["user"]["username"] == username)
            .filter_map(|event| {
                Some(AuditedRequest {
                    verb: event["verb"].as_str()?.to_owned(),
                    uri: event["requestURI"].as_str()?.to_owned(),
                    at: event["requestReceivedTimestamp"].as_str()?.parse().ok()?,
                    code: event["responseStatus"]["code"].as_i64(),
                })
            })
            .collect())
    }

    /// Requests of `username` the API server refused with 403, from the audit log
    /// ("verb uri" each).
    pub fn forbidden_requests(&self, username: &str) -> Result<Vec<String>> {
        Ok(self
            .requests_of(username)?
            .into_iter()
            .filter(|r| r.code == Some(403))
            .map(|r| format!("{} {}", r.verb, r.uri))
            .collect())
    }

    /// The directory holding this cluster's logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// One request as the API server's audit log recorded it.
#[derive(Debug, Clone)]
pub struct AuditedRequest {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`…
    pub verb: String,
    pub uri: String,
    pub at: jiff::Timestamp,
    /// The HTTP status it was answered with.
    pub code: Option<i64>,
}

impl AuditedRequest {
    /// Whether it changes something (or asks to): what costs etcd a write.
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }
}

/// A client from a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}
