//! `face2simpson-operator`: watches SimpsonModels and the Jobs, Deployments and Services they
//! own, and serves /healthz, /readyz and /metrics on the admin port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use face2simpson_operator::admin::{self, AdminState};
use face2simpson_operator::metrics::{Metrics, ModelLabels};
use face2simpson_operator::{Context, SimpsonModel, error_policy, reconcile};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use prometheus_client::registry::Registry;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "face2simpson-operator",
    version,
    about = "Schedules training, gates new models and rolls the inference Deployment"
)]
struct Cli {
    /// Address of the admin server (/healthz, /readyz, /metrics).
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    admin_addr: SocketAddr,
    /// Only watch these namespaces (comma-separated); all namespaces when unset. With a list,
    /// the operator needs RBAC in those namespaces only.
    #[arg(long = "namespace", env = "WATCH_NAMESPACE", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// SimpsonModels reconciled at the same time.
    #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = 4)]
    concurrency: u16,
    /// Name of this pod, reported as the instance in events.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Log format: `text` for people, `json` for log collectors.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn init_tracing(format: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init()
    } else {
        builder.init()
    }
}

/// Resolves on SIGTERM (what the kubelet sends) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Drops the metrics of deleted models. Reconciles never see a deletion (there is no
/// finalizer), so this is the only place that learns of one.
async fn forget_deleted(models: Api<SimpsonModel>, metrics: Arc<Metrics>) {
    let events = watcher(models, watcher::Config::default().any_semantic()).default_backoff();
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        if let Ok(watcher::Event::Delete(sm)) = event {
            metrics.forget(&ModelLabels {
                namespace: sm.namespace().unwrap_or_default(),
                model: sm.name_any(),
            });
        }
    }
}

/// How often readiness looks at the watch caches again.
const READY_POLL: Duration = Duration::from_millis(250);

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let ready = Arc::new(AtomicBool::new(false));
    let state = AdminState {
        registry: Arc::new(registry),
        ready: ready.clone(),
    };
    let listener = tokio::net::TcpListener::bind(cli.admin_addr)
        .await
        .with_context(|| format!("cannot bind the admin port {}", cli.admin_addr))?;
    info!(addr = %cli.admin_addr, "admin server listening");
    let admin = tokio::spawn(async move {
        axum::serve(listener, admin::app(state))
            .with_graceful_shutdown(shutdown_signal())
            .await
    });

    let client = Client::try_default()
        .await
        .context("cannot configure a Kubernetes client")?;
    // One controller per watched namespace (or one for the whole cluster): each list and watch
    // stays inside what a namespaced Role allows.
    // Empty entries ("a,", "") and repeats are dropped: they would mean `namespaces//...` paths
    // or two controllers fighting over the same objects.
    let namespaces: std::collections::BTreeSet<String> = cli
        .namespaces
        .iter()
        .map(|ns| ns.trim().to_owned())
        .filter(|ns| !ns.is_empty())
        .collect();
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    for ns in &scopes {
        let models: Api<SimpsonModel> = api(&client, ns.as_deref());
        // Fail early and clearly when the CRD is missing instead of retrying a watch forever.
        models
            .list(&ListParams::default().limit(1))
            .await
            .with_context(|| format!(
                "cannot list SimpsonModels in {}: is the CRD installed (kubectl apply -f crds/simpsonmodel.yaml) and the RBAC granted?",
                ns.as_deref().unwrap_or("any namespace")
            ))?;
    }

    let reporter = Reporter {
        controller: "face2simpson-operator".into(),
        instance: cli.pod_name.clone(),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let ctx = Arc::new(Context::production(
        client.clone(),
        recorder,
        metrics.clone(),
    ));
    let mut stores = Vec::new();
    let mut controllers = Vec::new();
    let mut forgetters = Vec::new();
    for ns in scopes {
        let ns = ns.as_deref();
        // Only our own children wake us up, not every Job in the cluster.
        let owned =
            watcher::Config::default().labels("app.kubernetes.io/managed-by=face2simpson-operator");
        info!(namespace = ns.unwrap_or("<all>"), "controller starting");
        let controller = Controller::new(
            api::<SimpsonModel>(&client, ns),
            watcher::Config::default().any_semantic(),
        )
        .owns(api::<Job>(&client, ns), owned.clone())
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned)
        .with_config(controller::Config::default().concurrency(cli.concurrency))
        .graceful_shutdown_on(shutdown_signal());
        stores.push(controller.store());
        let ctx = ctx.clone();
        controllers.push(async move {
            controller
                .run(reconcile, error_policy, ctx)
                .for_each(|result| async move {
                    match result {
                        Ok((obj, _)) => tracing::debug!(model = %obj.name, "reconciled"),
                        Err(e) => tracing::debug!(error = %e, "reconcile did not complete"),
                    }
                })
                .await;
        });
        forgetters.push(tokio::spawn(forget_deleted(
            api::<SimpsonModel>(&client, ns),
            metrics.clone(),
        )));
    }
    // Ready once every watch has listed what it watches: before that the operator knows
    // only part of the cluster.
    let readiness = {
        let ready = ready.clone();
        tokio::spawn(async move {
            for store in stores {
                // The controller waits on the same store, and kube-runtime's readiness signal
                // wakes only the last task that polled it: a single await here can sleep
                // forever (the e2e suite caught /readyz never turning 200). Polling again
                // re-registers this task; once the store is ready every poll returns at once.
                loop {
                    match tokio::time::timeout(READY_POLL, store.wait_until_ready()).await {
                        Ok(Ok(())) => break,
                        Ok(Err(_)) => return,
                        Err(_) => {}
                    }
                }
            }
            info!("watches synced; ready");
            ready.store(true, Ordering::Relaxed);
        })
    };
    futures::future::join_all(controllers).await;
    readiness.abort();
    for f in forgetters {
        f.abort();
    }
    ready.store(false, Ordering::Relaxed);
    info!("controller stopped, shutting down");
    match tokio::time::timeout(Duration::from_secs(10), admin).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "admin server failed"),
        Ok(Err(e)) => warn!(error = %e, "admin server task failed"),
        Err(_) => warn!("admin server did not stop in time"),
    }
    Ok(())
}
