//! `face2simpson-operator`: watches SimpsonModels and the Jobs, Deployments and Services they
//! own, and serves /healthz, /readyz and /metrics on the admin port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use face2simpson_operator::admin::{self, AdminState};
use face2simpson_operator::controller::{DEFAULT_CONCURRENCY, Scope};
use face2simpson_operator::leader::{self, ElectionConfig, Elector, Lost};
use face2simpson_operator::metrics::Metrics;
use face2simpson_operator::watches;
use face2simpson_operator::{Context, SimpsonModel, error_policy_guarded, reconcile_guarded};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ListParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{Predicate as _, WatchStreamExt, predicates, reflector, watcher};
use kube::{Client, ResourceExt};
use prometheus_client::registry::Registry;
use tracing::{error, info, warn};
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
    /// SimpsonModels reconciled at the same time, whatever the number of watched namespaces. A
    /// pass mostly waits on the API server and the store: 16 keep a burst of 300 spec changes
    /// under 2 s at p99 (`make bench-operator`); the passes using one bucket hold at most a quarter of
    /// them, so a slow bucket cannot hold them all (controller::StoreGates).
    #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY)]
    concurrency: u16,
    /// Name of this pod, reported as the instance in events.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Log format: `text` for people, `json` for log collectors.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Elect a leader on a Lease before reconciling, so several replicas can run: the holder
    /// reconciles, the others stand by. Off by default for a single local process; the Helm
    /// chart turns it on.
    #[arg(
        long,
        env = "LEADER_ELECT",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "LEADER_ELECT_LEASE_NAME",
        default_value = "face2simpson-operator"
    )]
    leader_elect_lease_name: String,
    /// Namespace of the leader Lease; the kubeconfig's (in a pod: the pod's) when unset.
    #[arg(long, env = "POD_NAMESPACE")]
    leader_elect_namespace: Option<String>,
    /// How long standbys wait after the leader's last renew before taking over (`15s`, `1m`).
    #[arg(long, env = "LEADER_ELECT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    leader_elect_lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up and exits; shorter than
    /// the lease duration, so it stops before anyone may take over.
    #[arg(long, env = "LEADER_ELECT_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    leader_elect_renew_deadline: Duration,
    /// Time between renews of the leader and between tries of a standby.
    #[arg(long, env = "LEADER_ELECT_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    leader_elect_retry_period: Duration,
}

/// `15s`, `1m 30s`, `500ms` or ISO 8601 `PT15S`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .trim()
        .parse()
        .map_err(|e| format!("not a duration like 15s or 500ms: {e}"))?;
    Duration::try_from(d).map_err(|_| "a negative duration".to_owned())
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

/// How often readiness looks at the watch caches again.
const READY_POLL: Duration = Duration::from_millis(250);

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    if cli.leader_elect {
        // Bad timing is a flag error: refuse it before connecting to anything.
        leader::validate_timing(
            cli.leader_elect_lease_duration,
            cli.leader_elect_renew_deadline,
            cli.leader_elect_retry_period,
        )?;
    }

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
    // Each watched namespace (or the whole cluster) is listed and watched apart, so that each
    // list and watch stays inside what a namespaced Role allows.
    // Empty entries ("a,", "") and repeats are dropped: they would mean `namespaces//...` paths
    // or two watches of the same objects.
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
        // Guarded: one unreadable model must not stop the operator from starting.
        let models: Api<DeserializeGuard<SimpsonModel>> = api(&client, ns.as_deref());
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

    let mut elector = if cli.leader_elect {
        let mut elector = Elector::new(client.clone(), election_config(&cli, &client))?;
        if !stand_by(&mut elector, &ready, &metrics).await {
            info!("stopped while standing by");
            return stop_admin(admin, &ready).await;
        }
        // In the background: a slow event must not delay the controllers or the renews.
        tokio::spawn(announce_leadership(
            recorder.clone(),
            elector.config().clone(),
        ));
        Some(elector)
    } else {
        None
    };
    metrics.leader.set(1);
    let ctx = Arc::new(
        Context::production(client.clone(), recorder, metrics.clone())
            .with_concurrency(cli.concurrency),
    );
    // One controller for every watched namespace: one reconciler, one concurrency budget and
    // one set of caches. Each namespace is still listed and watched apart, within what a
    // namespaced Role allows; the streams are merged per kind (watches::merged).
    info!(
        namespaces = %scopes.iter().map(|ns| ns.as_deref().unwrap_or("<all>")).collect::<Vec<_>>().join(","),
        "controller starting"
    );
    // Only our own children wake us up, not every Job in the cluster.
    let owned =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=face2simpson-operator");
    // Guarded: an unreadable model is reported and skipped (controller::reconcile_guarded)
    // instead of failing the watch of every model in scope. Only a change of the spec
    // (generation) or of the annotations (run, promote and rollback requests) wakes a model:
    // the operator's own status writes do not, so a pass that records something does not cost
    // a second pass.
    let (models, models_writer) = reflector::store();
    let changes = watches::merged(
        scopes
            .iter()
            .map(|ns| {
                let api = api::<DeserializeGuard<SimpsonModel>>(&client, ns.as_deref());
                let watch = watcher(api, watcher::Config::default().any_semantic())
                    .default_backoff()
                    .boxed();
                (ns.clone(), watch)
            })
            .collect(),
        models.clone(),
    )
    .reflect(models_writer)
    .inspect({
        // Reconciles never see a deletion (there is no finalizer): the watch does.
        let ctx = ctx.clone();
        move |event| {
            if let Ok(watcher::Event::Delete(sm)) = event {
                ctx.forget_model(&sm.namespace().unwrap_or_default(), &sm.name_any());
            }
        }
    })
    .applied_objects()
    .predicate_filter(
        predicates::generation.combine(predicates::annotations),
        Default::default(),
    );
    // The children's watches wake their model and fill the caches a pass reads instead of the
    // API server (controller::Caches).
    let (jobs, jobs_writer) = reflector::store();
    let (deployments, deployments_writer) = reflector::store();
    let (services, services_writer) = reflector::store();
    ctx.caches.set(Scope {
        namespaces: scopes.iter().cloned().collect::<Option<Vec<_>>>(),
        jobs: jobs.clone(),
        deployments: deployments.clone(),
        services: services.clone(),
    });
    let controller = Controller::for_stream(changes, models)
        .owns_stream(cached(jobs_writer, jobs.clone(), &client, &scopes, &owned))
        .owns_stream(cached(
            deployments_writer,
            deployments.clone(),
            &client,
            &scopes,
            &owned,
        ))
        .owns_stream(cached(
            services_writer,
            services.clone(),
            &client,
            &scopes,
            &owned,
        ))
        .with_config(controller::Config::default().concurrency(cli.concurrency))
        .graceful_shutdown_on(shutdown_signal());
    let stores = [
        Ready::of(controller.store()),
        Ready::of(jobs),
        Ready::of(deployments),
        Ready::of(services),
    ];
    let running = controller
        .run(reconcile_guarded, error_policy_guarded, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(model = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile did not complete"),
            }
        });
    // Ready once every watch has listed every namespace: before that the operator knows only
    // part of the cluster.
    let readiness = {
        let ready = ready.clone();
        tokio::spawn(async move {
            for store in stores {
                if !store.wait().await {
                    return;
                }
            }
            info!("watches synced; ready");
            ready.store(true, Ordering::Relaxed);
        })
    };
    // The leader keeps renewing while the controllers run, their graceful shutdown included.
    let lost = tokio::select! {
        () = running => None,
        lost = hold(elector.as_mut()) => Some(lost),
    };
    if let Some(lost) = lost {
        // Another replica may take over any moment now: stop reconciling at once. Exiting
        // drops every reconcile in flight, which is safe (each pass starts from the API server
        // and writes with resourceVersion guards) and lets Kubernetes restart a clean standby.
        error!(error = %lost, "lost leadership; exiting");
        std::process::exit(1);
    }
    readiness.abort();
    metrics.leader.set(0);
    if let Some(elector) = elector.as_mut() {
        // Only now that no reconcile runs: a standby may take over at its next try.
        match elector.release().await {
            Ok(true) => info!("released the Lease"),
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "cannot release the Lease; a standby takes over once it expires")
            }
        }
    }
    info!("controller stopped, shutting down");
    stop_admin(admin, &ready).await
}

fn election_config(cli: &Cli, client: &Client) -> ElectionConfig {
    ElectionConfig {
        lease_name: cli.leader_elect_lease_name.clone(),
        namespace: cli
            .leader_elect_namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| client.default_namespace().to_owned()),
        // The pod name: a container restarted in the same pod resumes its own Lease at once.
        identity: cli
            .pod_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(leader::fallback_identity),
        lease_duration: cli.leader_elect_lease_duration,
        renew_deadline: cli.leader_elect_renew_deadline,
        retry_period: cli.leader_elect_retry_period,
    }
}

/// Waits for the Lease. A standby is ready as soon as it has read the Lease: it is healthy and
/// able to take over, and a Deployment's rolling update and a PodDisruptionBudget need it to
/// count as available (a never-ready standby would stall every rollout behind the leader).
/// Returns false when asked to stop first.
async fn stand_by(elector: &mut Elector, ready: &AtomicBool, metrics: &Metrics) -> bool {
    let config = elector.config().clone();
    info!(
        lease = %format!("{}/{}", config.namespace, config.lease_name),
        identity = %config.identity,
        "leader election: trying to acquire the Lease"
    );
    metrics.leader.set(0);
    let acquired = async {
        elector
            .acquire(|leader| {
                ready.store(true, Ordering::Relaxed);
                info!(leader, "another replica leads; standing by (ready)");
            })
            .await
    };
    tokio::select! {
        () = acquired => {
            // Not ready again until this replica's watches have synced.
            ready.store(false, Ordering::Relaxed);
            true
        }
        () = shutdown_signal() => false,
    }
}

/// Renews the Lease until it is lost; never resolves without leader election.
async fn hold(elector: Option<&mut Elector>) -> Lost {
    match elector {
        Some(e) => e.hold().await,
        None => std::future::pending().await,
    }
}

/// A `LeaderElection` event on the Lease, as client-go's leader election records one.
async fn announce_leadership(recorder: Recorder, config: ElectionConfig) {
    let reference = ObjectReference {
        api_version: Some("coordination.k8s.io/v1".into()),
        kind: Some("Lease".into()),
        name: Some(config.lease_name.clone()),
        namespace: Some(config.namespace.clone()),
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Normal,
        reason: "LeaderElection".into(),
        note: Some(format!("{} became leader", config.identity)),
        action: "Acquire".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &reference).await {
        warn!(error = %e, "cannot publish the LeaderElection event");
    }
}

async fn stop_admin(
    admin: tokio::task::JoinHandle<std::io::Result<()>>,
    ready: &AtomicBool,
) -> Result<()> {
    ready.store(false, Ordering::Relaxed);
    match tokio::time::timeout(Duration::from_secs(10), admin).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "admin server failed"),
        Ok(Err(e)) => warn!(error = %e, "admin server task failed"),
        Err(_) => warn!("admin server did not stop in time"),
    }
    Ok(())
}

/// The watches of the children of kind `K` in every scope, merged, filling `writer`'s cache
/// (read back through `store`) and yielding what changed.
fn cached<K>(
    writer: reflector::store::Writer<K>,
    store: reflector::Store<K>,
    client: &Client,
    scopes: &[Option<String>],
    config: &watcher::Config,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let streams = scopes
        .iter()
        .map(|ns| {
            let watch = watcher(api::<K>(client, ns.as_deref()), config.clone())
                .default_backoff()
                .boxed();
            (ns.clone(), watch)
        })
        .collect();
    watches::merged(streams, store)
        .reflect(writer)
        .touched_objects()
}

/// A store whose readiness `/readyz` waits for.
struct Ready(std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>);

impl Ready {
    fn of<K>(store: reflector::Store<K>) -> Self
    where
        K: kube::Resource + Clone + Send + Sync + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
    {
        Self(Box::pin(async move {
            // The controller waits on the same store, and kube-runtime's readiness signal
            // wakes only the last task that polled it: a single await here can sleep forever
            // (the e2e suite caught /readyz never turning 200). Polling again re-registers
            // this task; once the store is ready every poll returns at once.
            loop {
                match tokio::time::timeout(READY_POLL, store.wait_until_ready()).await {
                    Ok(Ok(())) => return true,
                    Ok(Err(_)) => return false,
                    Err(_) => {}
                }
            }
        }))
    }

    /// Whether the store became ready (false: its writer is gone, the operator is stopping).
    async fn wait(self) -> bool {
        self.0.await
    }
}
