//! `make bench-operator`: what N SimpsonModels cost the API server and the operator, on the
//! real control plane of the e2e harness (etcd, kube-apiserver, kube-controller-manager, the
//! chart's operator; requests counted from the API server's audit log).
//!
//! For each N (`BENCH_MODELS`, default `30,100,300`): one model trains for real and becomes
//! champion; N−1 more are created suspended, with no inference replicas, and promoted to a copy
//! of that run in their own prefix (`face2simpson.io/promote-run`), so no other training runs.
//! Once every model serves, the bench measures
//! - **at rest** (`BENCH_REST_SECONDS`, default 60): the operator's requests in that window,
//!   its CPU and RSS;
//! - **one pass per model with nothing to do**: every model woken by an annotation no step reads
//!   (what the hourly requeue of a model at rest amounts to), the requests that costs;
//! - **one pass per model**: a spec change on every model, the requests it costs per model,
//!   and the time from each change to the status that reflects it (p50/p99).
//!
//! - **a slow bucket**: `BENCH_SLOW_MODELS` models (default 32, twice the operator's reconcile
//!   concurrency; at most N−2) moved to a bucket behind a proxy that answers every request
//!   `BENCH_SLOW_SECONDS` late (default 20), each listing its dataset every 10 s
//!   (`triggers.datasetChange`), so their passes want every reconcile slot; meanwhile a model
//!   B on another bucket gets `BENCH_SLOW_TRIALS` spec changes (default 10). The delay is the
//!   slowest of them minus B's median with the proxy open;
//! - **a store outage**: the seed model trains once more through another proxy, which is cut
//!   the moment the run's metrics.json is stored, so the operator has a finished run to decide
//!   and cannot read its result. For `BENCH_OUTAGE_SECONDS` (default 60) the operator's
//!   requests and writes (all about that model: the others are at rest) and its attempts to
//!   reach the store are counted; then the store comes back and the run is decided once.
//!
//! At rest a model is looked at once an hour (`MAX_REQUEUE`) besides what wakes it, so its
//! hourly cost is the idle window's rate plus one pass with nothing to do.
//!
//! For development, a small N on the dev profile: `BENCH_MODELS=30 cargo bench -p
//! face2simpson-e2e --bench operator --profile dev` (after `cargo build --workspace --bins`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use face2simpson_e2e::cluster::AuditedRequest;
use face2simpson_e2e::proxy::{Mode, StoreProxy};
use face2simpson_e2e::wait::poll;
use face2simpson_e2e::world::{GOOD, MODEL, NAMESPACE, STORE_PREFIX, TRAINING_TIMEOUT, World};
use face2simpson_operator::SimpsonModel;
use face2simpson_operator::builders::manual_run_id;
use face2simpson_operator::crd::{PROMOTE_RUN_ANNOTATION, TRAIN_REQUEST_ANNOTATION};
use futures::StreamExt as _;
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

/// How often a model at rest is looked at without being woken (the operator's `MAX_REQUEUE`).
const PASSES_PER_HOUR_AT_REST: f64 = 1.0;

#[tokio::main]
async fn main() -> Result<()> {
    let sizes = env_list("BENCH_MODELS", &[30, 100, 300])?;
    let rest = Duration::from_secs(env_list("BENCH_REST_SECONDS", &[60])?[0]);
    let mut rows = Vec::new();
    for n in sizes {
        let row = measure(n as usize, rest)
            .await
            .with_context(|| format!("the bench at N={n}"))?;
        println!("{}", row.summary());
        rows.push(row);
    }
    print_table(&rows);
    Ok(())
}

/// What one N measured.
#[derive(Debug)]
struct Row {
    n: usize,
    settle_s: f64,
    /// Leader election's Lease reads and renews, per hour: the same whatever N.
    lease_requests_per_h: f64,
    idle_requests_per_model_h: f64,
    idle_writes_per_model_h: f64,
    /// A pass with nothing to do: the hourly look at a model at rest.
    noop_requests: f64,
    noop_writes: f64,
    pass_requests: f64,
    pass_writes: f64,
    rss_mib: f64,
    cpu_pct: f64,
    status_p50_s: f64,
    status_p99_s: f64,
    slow: SlowBucket,
    outage: Outage,
}

impl Row {
    fn requests_per_model_h(&self) -> f64 {
        self.idle_requests_per_model_h + PASSES_PER_HOUR_AT_REST * self.noop_requests
    }

    fn writes_per_model_h(&self) -> f64 {
        self.idle_writes_per_model_h + PASSES_PER_HOUR_AT_REST * self.noop_writes
    }

    fn summary(&self) -> String {
        format!(
            "operator-bench: N={} writes/model/h={:.2} requests/model/h={:.2} rss_mib={:.1} cpu_pct={:.2} status_p99_s={:.2} slow_bucket_delay_s={:.2} outage_requests/model/min={:.2} outage_writes/model/min={:.2} outage_store_connections/min={:.1}",
            self.n,
            self.writes_per_model_h(),
            self.requests_per_model_h(),
            self.rss_mib,
            self.cpu_pct,
            self.status_p99_s,
            self.slow.delay_s,
            self.outage.requests_per_min,
            self.outage.writes_per_min,
            self.outage.store_connections_per_min,
        )
    }
}

async fn measure(n: usize, rest: Duration) -> Result<Row> {
    let world = World::up(&format!("bench-operator-{n}")).await?;
    let seed_run = seed_champion(&world).await?;
    let started = Instant::now();
    create_models(&world, n, &seed_run).await?;
    wait_all_serving(&world, n).await?;
    wait_quiet(&world, Duration::from_secs(5)).await?;
    let settle_s = started.elapsed().as_secs_f64();

    // At rest.
    let pid = world
        .operator
        .pid()
        .context("the operator is not running")?;
    let (cpu0, t0) = (cpu_ticks(pid)?, jiff::Timestamp::now());
    tokio::time::sleep(rest).await;
    let (cpu1, t1) = (cpu_ticks(pid)?, jiff::Timestamp::now());
    let idle = requests_between(&world, t0, t1)?;
    if !idle.is_empty() {
        println!(
            "N={n}: at rest the operator still made {}",
            breakdown(&idle, 1)
        );
    }
    let lease_per_h = lease_requests_between(&world, t0, t1)? as f64 * 3600.0 / rest.as_secs_f64();
    let hours = rest.as_secs_f64() / 3600.0;
    let per_model_h = |count: usize| count as f64 / n as f64 / hours;
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let cpu_pct = (cpu1 - cpu0) as f64 / ticks_per_s / rest.as_secs_f64() * 100.0;
    let rss_mib = rss_kib(pid)? as f64 / 1024.0;

    // One pass per model with nothing to do, then one woken by a spec change.
    let (noop_requests, noop_writes) = noop_pass_each(&world, n).await?;
    let (pass_requests, pass_writes, latencies) = one_pass_each(&world, n).await?;
    let slow = slow_bucket(&world, n).await?;
    println!("N={n}: {slow:?}");
    let outage = outage(&world).await?;
    println!("N={n}: {outage:?}");
    world.finish()?;
    Ok(Row {
        n,
        settle_s,
        lease_requests_per_h: lease_per_h,
        idle_requests_per_model_h: per_model_h(idle.len()),
        idle_writes_per_model_h: per_model_h(idle.iter().filter(|r| r.is_write()).count()),
        noop_requests,
        noop_writes,
        pass_requests,
        pass_writes,
        rss_mib,
        cpu_pct,
        status_p50_s: quantile(&latencies, 0.50),
        status_p99_s: quantile(&latencies, 0.99),
        slow,
        outage,
    })
}

/// The first model trains for real and becomes champion: the run the others are promoted to.
async fn seed_champion(world: &World) -> Result<String> {
    world
        .apply_model_with(GOOD, &json!({"spec": {"inference": {"replicas": 0}}}))
        .await?;
    let sm = world.wait_decision(None).await?;
    let champion = sm
        .status
        .and_then(|s| s.champion)
        .context("the seed model has no champion")?;
    Ok(champion.run_id)
}

fn model_name(i: usize) -> String {
    format!("m{i:04}")
}

/// Models 1..n: a copy of the seed run in each one's prefix (its owner rewritten, as if it had
/// trained it), then the model itself, suspended, promoted to that copy, without replicas.
async fn create_models(world: &World, n: usize, run: &str) -> Result<()> {
    let runs = |name: &str| {
        world
            .store
            .bucket_dir()
            .join(STORE_PREFIX)
            .join(artifacts::layout::model_runs(NAMESPACE, name))
            .join(run)
    };
    let seed = runs(MODEL);
    for i in 1..n {
        let name = model_name(i);
        let dir = runs(&name);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&seed)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::copy(entry.path(), dir.join(entry.file_name()))?;
            }
        }
        let metrics_path = dir.join("metrics.json");
        let mut metrics: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&metrics_path)?)?;
        metrics["owner"] = json!(artifacts::layout::owner(NAMESPACE, &name));
        std::fs::write(&metrics_path, serde_json::to_vec(&metrics)?)?;

        let manifest = world.manifest_with(
            GOOD,
            &json!({
                "metadata": {"name": name, "annotations": {PROMOTE_RUN_ANNOTATION: run}},
                "spec": {"schedule": {"suspend": true}, "inference": {"replicas": 0}},
            }),
        )?;
        let sm: SimpsonModel = serde_yaml::from_str(&manifest)?;
        world.models().create(&PostParams::default(), &sm).await?;
    }
    Ok(())
}

async fn wait_all_serving(world: &World, n: usize) -> Result<()> {
    let models = world.models();
    poll(
        "every model to have its champion",
        Duration::from_secs(60 + n as u64),
        Duration::from_millis(500),
        || {
            let models = models.clone();
            async move {
                let list = models.list(&ListParams::default()).await?;
                let done = list
                    .items
                    .iter()
                    .filter(|sm| {
                        sm.status.as_ref().is_some_and(|s| {
                            s.champion.is_some() && s.observed_generation.is_some()
                        })
                    })
                    .count();
                Ok((done == n).then_some(()))
            }
        },
    )
    .await
    .with_context(|| world.context())
}

/// Waits until the operator has made no request about models for `quiet` (rollouts settled,
/// every pass they set off done): the rest window starts then.
async fn wait_quiet(world: &World, quiet: Duration) -> Result<()> {
    poll(
        "the operator to go quiet",
        Duration::from_secs(300),
        Duration::from_millis(500),
        || async move {
            let since = jiff::Timestamp::now() - jiff::SignedDuration::try_from(quiet)?;
            let recent = requests_between(world, since, jiff::Timestamp::now())?;
            Ok(recent.is_empty().then_some(()))
        },
    )
    .await
}

/// The models' names: the seed model, then m0001…
fn names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i == 0 {
                MODEL.to_owned()
            } else {
                model_name(i)
            }
        })
        .collect()
}

/// Wakes every model with an annotation no step reads (a pass that finds nothing to do, as
/// the hourly requeue of a model at rest does) and counts the requests that costs per model.
async fn noop_pass_each(world: &World, n: usize) -> Result<(f64, f64)> {
    let models = world.models();
    let from = jiff::Timestamp::now();
    for name in names(n) {
        let patch =
            json!({"metadata": {"annotations": {"bench.face2simpson.io/poke": from.to_string()}}});
        models
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    // Every pass is done once nothing more comes (or, with caches, nothing comes at all).
    tokio::time::sleep(Duration::from_secs(5)).await;
    wait_quiet(world, Duration::from_secs(3)).await?;
    let requests = requests_between(world, from, jiff::Timestamp::now())?;
    // The bench's own annotation patches are not the operator's: requests_between counts
    // the operator's user only.
    let writes = requests.iter().filter(|r| r.is_write()).count();
    println!(
        "N={n}: one pass per model with nothing to do costs {}",
        if requests.is_empty() {
            "nothing".to_owned()
        } else {
            breakdown(&requests, n)
        }
    );
    Ok((requests.len() as f64 / n as f64, writes as f64 / n as f64))
}

/// Changes every model's spec once (a gate threshold: nothing rolls) and measures the
/// requests that costs per model and, per model, the time until its status reflects it.
async fn one_pass_each(world: &World, n: usize) -> Result<(f64, f64, Vec<f64>)> {
    let models = world.models();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = tokio::spawn({
        let models = models.clone();
        async move {
            let stream = watcher(models, watcher::Config::default()).applied_objects();
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(sm)) = stream.next().await {
                let caught_up = sm.status.as_ref().and_then(|s| s.observed_generation)
                    == sm.metadata.generation;
                if caught_up {
                    let _ = seen_tx.send((sm.name_any(), sm.metadata.generation, Instant::now()));
                }
            }
        }
    });
    let from = jiff::Timestamp::now();
    let mut changed: BTreeMap<String, (i64, Instant)> = BTreeMap::new();
    for name in &names(n) {
        let patch = json!({"spec": {"promotion": {"minAccuracy": 0.01}}});
        let sm = models
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        changed.insert(
            name.clone(),
            (sm.metadata.generation.unwrap_or(0), Instant::now()),
        );
    }
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60 + n as u64);
    while latencies.len() < n {
        let Ok(Some((name, generation, at))) =
            tokio::time::timeout_at(deadline.into(), seen_rx.recv()).await
        else {
            break;
        };
        if let Some((want, sent)) = changed.get(&name)
            && generation == Some(*want)
        {
            latencies.push(at.saturating_duration_since(*sent).as_secs_f64());
            changed.remove(&name);
        }
    }
    watch.abort();
    ensure!(
        latencies.len() == n,
        "{} models never reflected their change",
        n - latencies.len()
    );
    // Whatever the passes set off settles within a few seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let requests = requests_between(world, from, jiff::Timestamp::now())?;
    let writes = requests.iter().filter(|r| r.is_write()).count();
    println!(
        "N={n}: one pass per model costs {}",
        breakdown(&requests, n)
    );
    Ok((
        requests.len() as f64 / n as f64,
        writes as f64 / n as f64,
        latencies,
    ))
}

/// The Secret of the models moved to the slow bucket, and of the model whose store is cut.
const SLOW_SECRET: &str = "slow-store-creds";
const OUTAGE_SECRET: &str = "outage-store-creds";

/// How long model B waited while a slow bucket wanted every reconcile slot.
#[derive(Debug)]
struct SlowBucket {
    /// Models on the slow bucket.
    models: usize,
    /// How late the slow bucket answered each request.
    delay_per_request_s: f64,
    /// B's spec change → status, median, with the bucket answering at once.
    open_p50_s: f64,
    /// The slowest of B's spec changes while the bucket was slow.
    slow_max_s: f64,
    /// `slow_max_s − open_p50_s`, at least 0.
    delay_s: f64,
}

async fn slow_bucket(world: &World, n: usize) -> Result<SlowBucket> {
    let k = usize::try_from(env_list("BENCH_SLOW_MODELS", &[32])?[0])?.min(n.saturating_sub(2));
    let delay = Duration::from_secs(env_list("BENCH_SLOW_SECONDS", &[20])?[0]);
    let trials = usize::try_from(env_list("BENCH_SLOW_TRIALS", &[10])?[0])?.max(1);
    let b = if n > 1 {
        model_name(n - 1)
    } else {
        MODEL.to_owned()
    };
    let proxy = StoreProxy::start(&world.store.endpoint)?;
    world.store_secret_via(SLOW_SECRET, &proxy.endpoint).await?;
    let slow_models: Vec<String> = (1..=k).map(model_name).collect();
    let models = world.models();
    // Listing the dataset every 10 s (a change would start nothing: it never settles, and they
    // are suspended), so every pass of theirs waits on the slow bucket.
    let poll_often = json!({"spec": {
        "storageSecretRef": {"name": SLOW_SECRET},
        "triggers": {"datasetChange": {"pollSeconds": 10, "settleSeconds": 86400, "minIntervalSeconds": 86400}},
    }});
    for name in &slow_models {
        models
            .patch(name, &PatchParams::default(), &Patch::Merge(&poll_often))
            .await?;
    }
    poll(
        "the slow bucket's models to list their dataset",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || {
            let models = models.clone();
            let slow_models = &slow_models;
            async move {
                let list = models.list(&ListParams::default()).await?;
                let listed = list
                    .items
                    .iter()
                    .filter(|sm| slow_models.contains(&sm.name_any()))
                    .filter(|sm| sm.status.as_ref().is_some_and(|s| s.dataset.is_some()))
                    .count();
                Ok((listed == slow_models.len()).then_some(()))
            }
        },
    )
    .await
    .with_context(|| world.context())?;
    let open = spec_to_status(world, &b, trials).await?;
    proxy.set(Mode::Slow(delay));
    // Every poll that comes due meanwhile is in flight by then.
    tokio::time::sleep(delay + Duration::from_secs(10)).await;
    let slow = spec_to_status(world, &b, trials).await?;
    proxy.set(Mode::Open);
    let back = json!({"spec": {"storageSecretRef": {"name": "store-creds"}, "triggers": null}});
    let mut reverted = BTreeMap::new();
    for name in &slow_models {
        let sm = models
            .patch(name, &PatchParams::default(), &Patch::Merge(&back))
            .await?;
        reverted.insert(name.clone(), sm.metadata.generation);
    }
    // Back at rest once each has had the pass its change asked for (passes held up by the slow
    // bucket may come late), and the operator has gone quiet.
    poll(
        "the slow bucket's models back at rest",
        Duration::from_secs(300),
        Duration::from_millis(500),
        || {
            let models = models.clone();
            let reverted = &reverted;
            async move {
                let list = models.list(&ListParams::default()).await?;
                let behind = list
                    .items
                    .iter()
                    .filter(|sm| {
                        reverted.get(&sm.name_any()).is_some_and(|generation| {
                            sm.status.as_ref().and_then(|s| s.observed_generation) != *generation
                        })
                    })
                    .count();
                Ok((behind == 0).then_some(()))
            }
        },
    )
    .await
    .with_context(|| world.context())?;
    wait_quiet(world, Duration::from_secs(5)).await?;
    let open_p50_s = quantile(&open, 0.5);
    let slow_max_s = quantile(&slow, 1.0);
    Ok(SlowBucket {
        models: k,
        delay_per_request_s: delay.as_secs_f64(),
        open_p50_s,
        slow_max_s,
        delay_s: (slow_max_s - open_p50_s).max(0.0),
    })
}

/// `trials` spec changes of model `name`, a second apart: the time from each to the status
/// that reflects it.
async fn spec_to_status(world: &World, name: &str, trials: usize) -> Result<Vec<f64>> {
    let models = world.models();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = tokio::spawn({
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let models = models.clone();
        async move {
            let stream = watcher(models, config).applied_objects();
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(sm)) = stream.next().await {
                if let Some(observed) = sm.status.as_ref().and_then(|s| s.observed_generation) {
                    let _ = seen_tx.send((observed, Instant::now()));
                }
            }
        }
    });
    let mut latencies = Vec::new();
    for i in 0..trials {
        let patch = json!({"spec": {"promotion": {"minAccuracy": 0.02 + i as f64 / 1000.0}}});
        let sent = Instant::now();
        let generation = models
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await?
            .metadata
            .generation
            .unwrap_or(0);
        let deadline = sent + Duration::from_secs(120);
        loop {
            let Ok(Some((observed, at))) =
                tokio::time::timeout_at(deadline.into(), seen_rx.recv()).await
            else {
                watch.abort();
                anyhow::bail!("{name} never reflected generation {generation}");
            };
            if observed >= generation {
                latencies.push(at.saturating_duration_since(sent).as_secs_f64());
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    watch.abort();
    Ok(latencies)
}

/// What the operator did while a model's store was unreachable with a run to decide.
#[derive(Debug)]
struct Outage {
    seconds: f64,
    requests_per_min: f64,
    writes_per_min: f64,
    /// The operator's attempts to connect to the store.
    store_connections_per_min: f64,
    /// From the store's return to the run's decision.
    decided_after_s: f64,
}

async fn outage(world: &World) -> Result<Outage> {
    let window = Duration::from_secs(env_list("BENCH_OUTAGE_SECONDS", &[60])?[0]);
    let proxy = StoreProxy::start(&world.store.endpoint)?;
    world
        .store_secret_via(OUTAGE_SECRET, &proxy.endpoint)
        .await?;
    let request = jiff::Timestamp::now().to_string();
    let run_id = manual_run_id(MODEL, &request);
    let patch = json!({
        "metadata": {"annotations": {TRAIN_REQUEST_ANNOTATION: request}},
        // Decided on metrics.json alone: the served-path validation Job would read the
        // store too, and only lengthen the wait after it.
        "spec": {
            "storageSecretRef": {"name": OUTAGE_SECRET},
            "promotion": {"validation": {"enabled": false}},
        },
    });
    world
        .models()
        .patch(MODEL, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    // Cut the moment the trainer has stored the run's result (s3s-fs renames a complete
    // file into place): its Job then completes with a result the operator cannot read.
    let metrics = world
        .store
        .bucket_dir()
        .join(STORE_PREFIX)
        .join(artifacts::layout::model_runs(NAMESPACE, MODEL))
        .join(&run_id)
        .join("metrics.json");
    poll(
        "the run's metrics.json",
        TRAINING_TIMEOUT,
        Duration::from_millis(20),
        || {
            let metrics = metrics.clone();
            async move { Ok(metrics.is_file().then_some(())) }
        },
    )
    .await
    .with_context(|| world.context())?;
    // The trainer's upload is answered through the proxy: let the answer through first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.set(Mode::Down);
    let (refused0, t0, cut) = (proxy.refused(), jiff::Timestamp::now(), Instant::now());
    let jobs = world.jobs();
    poll(
        "the run's Job to complete",
        Duration::from_secs(120),
        Duration::from_millis(100),
        || {
            let jobs = jobs.clone();
            let run_id = run_id.clone();
            async move {
                let job = jobs.get(&run_id).await?;
                let state = face2simpson_operator::controller::job_state(&job);
                match state {
                    face2simpson_operator::controller::JobState::Active => Ok(None),
                    face2simpson_operator::controller::JobState::Succeeded => Ok(Some(())),
                    face2simpson_operator::controller::JobState::Failed(why) => {
                        anyhow::bail!("the run failed when the store was cut: {why}")
                    }
                    face2simpson_operator::controller::JobState::Abandoned { message, .. } => {
                        anyhow::bail!("the run was abandoned when the store was cut: {message}")
                    }
                }
            }
        },
    )
    .await
    .with_context(|| world.context())?;
    tokio::time::sleep(window.saturating_sub(cut.elapsed())).await;
    let (refused1, t1) = (proxy.refused(), jiff::Timestamp::now());
    let sm = world.model().await?;
    let last = sm.status.and_then(|s| s.last_run);
    ensure!(
        last.as_ref()
            .is_some_and(|r| r.run_id == run_id && r.decision.is_none()),
        "the run was decided during the outage (the store was cut too late): {last:?}"
    );
    // About this model only (Events name no object in their path: nothing else is emitting).
    let requests: Vec<AuditedRequest> = requests_between(world, t0, t1)?
        .into_iter()
        .filter(|r| is_about(r, MODEL, OUTAGE_SECRET))
        .collect();
    println!(
        "outage of {:.0} s: the operator made {}",
        window.as_secs_f64(),
        breakdown(&requests, 1)
    );
    let minutes = t1.duration_since(t0).as_secs_f64() / 60.0;
    let writes = requests.iter().filter(|r| r.is_write()).count();
    proxy.set(Mode::Open);
    let back = Instant::now();
    let sm = world.wait_decision(None).await?;
    let decided_after_s = back.elapsed().as_secs_f64();
    let history = sm.status.map(|s| s.history).unwrap_or_default();
    ensure!(
        history.iter().filter(|h| h.run_id == run_id).count() == 1,
        "the run was not decided exactly once: {history:?}"
    );
    Ok(Outage {
        seconds: minutes * 60.0,
        requests_per_min: requests.len() as f64 / minutes,
        writes_per_min: writes as f64 / minutes,
        store_connections_per_min: (refused1 - refused0) as f64 / minutes,
        decided_after_s,
    })
}

/// The operator's requests about models received in [from, to). Left out: long-running
/// watches (streams opened once, not requests per model) and leader election's Lease renews
/// (a fixed cost whatever N, counted by [`lease_requests_between`]).
fn requests_between(
    world: &World,
    from: jiff::Timestamp,
    to: jiff::Timestamp,
) -> Result<Vec<AuditedRequest>> {
    Ok(operator_requests(world, from, to)?
        .into_iter()
        .filter(|r| !is_lease(r))
        .collect())
}

/// Whether `r` is about the model `name`: the model, its children, the Secret it names, or an
/// Event.
fn is_about(r: &AuditedRequest, name: &str, secret: &str) -> bool {
    let path = r.uri.split('?').next().unwrap_or(&r.uri);
    path.contains(&format!("/simpsonmodels/{name}"))
        || path.contains(&format!("/{name}-"))
        || path.ends_with(&format!("/{secret}"))
        || path.ends_with("/events")
        || path.contains("/events/")
}

fn lease_requests_between(
    world: &World,
    from: jiff::Timestamp,
    to: jiff::Timestamp,
) -> Result<usize> {
    Ok(operator_requests(world, from, to)?
        .iter()
        .filter(|r| is_lease(r))
        .count())
}

fn is_lease(r: &AuditedRequest) -> bool {
    r.uri.starts_with("/apis/coordination.k8s.io/")
}

fn operator_requests(
    world: &World,
    from: jiff::Timestamp,
    to: jiff::Timestamp,
) -> Result<Vec<AuditedRequest>> {
    Ok(world
        .plane
        .requests_of(&world.operator.username)?
        .into_iter()
        .filter(|r| r.at >= from && r.at < to && r.verb != "watch")
        .collect())
}

/// "list jobs 1.00, patch deployments 1.00, …": requests by verb and resource, per `per`.
fn breakdown(requests: &[AuditedRequest], per: usize) -> String {
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for r in requests {
        *kinds
            .entry(format!("{} {}", r.verb, resource_of(&r.uri)))
            .or_default() += 1;
    }
    kinds
        .iter()
        .map(|(k, v)| format!("{k} {:.2}", *v as f64 / per as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `deployments`, `simpsonmodels/status`…: the resource (and subresource) a request names.
fn resource_of(uri: &str) -> String {
    let path = uri.split('?').next().unwrap_or(uri);
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match parts.iter().position(|p| *p == "namespaces") {
        Some(i) if parts.len() > i + 2 => parts[i + 2..]
            .iter()
            .enumerate()
            .filter(|(j, _)| j % 2 == 0)
            .map(|(_, p)| *p)
            .collect::<Vec<_>>()
            .join("/"),
        _ => parts.last().copied().unwrap_or("?").to_owned(),
    }
}

fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat
        .rsplit_once(')')
        .context("malformed /proc/<pid>/stat")?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("malformed VmRSS")?
        .parse()?)
}

fn env_list(name: &str, default: &[u64]) -> Result<Vec<u64>> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<u64>()
                    .with_context(|| format!("{name}={v}"))
            })
            .collect(),
        Err(_) => Ok(default.to_vec()),
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| N | settle s | requests/model/h at rest | writes/model/h at rest | requests per spec-change pass | writes per spec-change pass | Lease requests/h (all models) | RSS MiB | CPU % at rest | spec→status p50 s | p99 s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.2} (idle {:.2} + hourly pass {:.2}) | {:.2} | {:.1} | {:.1} | {:.0} | {:.1} | {:.2} | {:.2} | {:.2} |",
            r.n,
            r.settle_s,
            r.requests_per_model_h(),
            r.idle_requests_per_model_h,
            r.noop_requests,
            r.writes_per_model_h(),
            r.pass_requests,
            r.pass_writes,
            r.lease_requests_per_h,
            r.rss_mib,
            r.cpu_pct,
            r.status_p50_s,
            r.status_p99_s
        );
    }
    println!();
    println!(
        "| N | slow-bucket models | s late per request | B spec→status p50, bucket open, s | B slowest, bucket slow, s | slow_bucket_delay_s | outage s | requests/min | writes/min | store connections/min | decided s after the store returned |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let (s, o) = (&r.slow, &r.outage);
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} |",
            r.n,
            s.models,
            s.delay_per_request_s,
            s.open_p50_s,
            s.slow_max_s,
            s.delay_s,
            o.seconds,
            o.requests_per_min,
            o.writes_per_min,
            o.store_connections_per_min,
            o.decided_after_s
        );
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last())
        && last.n > first.n
    {
        // A ratio where it means one; from zero to zero is no growth, and says so.
        let growth = |a: f64, b: f64| match (a > 0.0, b > 0.0) {
            (true, _) => format!("x{:.2}", b / a),
            (false, false) => "unchanged at 0".to_owned(),
            (false, true) => format!("from 0 to {b:.2}"),
        };
        println!(
            "\nfrom N={} to N={} ({:.0}x models): RSS {}, CPU at rest {}, requests per model per hour {}, status p99 {}",
            first.n,
            last.n,
            last.n as f64 / first.n as f64,
            growth(first.rss_mib, last.rss_mib),
            growth(first.cpu_pct, last.cpu_pct),
            growth(first.requests_per_model_h(), last.requests_per_model_h()),
            growth(first.status_p99_s, last.status_p99_s)
        );
    }
}
