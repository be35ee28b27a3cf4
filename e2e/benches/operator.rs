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
//! At rest a model is looked at once an hour (`MAX_REQUEUE`) besides what wakes it, so its
//! hourly cost is the idle window's rate plus one pass with nothing to do.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use face2simpson_e2e::cluster::AuditedRequest;
use face2simpson_e2e::wait::poll;
use face2simpson_e2e::world::{GOOD, MODEL, NAMESPACE, STORE_PREFIX, World};
use face2simpson_operator::SimpsonModel;
use face2simpson_operator::crd::PROMOTE_RUN_ANNOTATION;
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
            "operator-bench: N={} writes/model/h={:.2} requests/model/h={:.2} rss_mib={:.1} cpu_pct={:.2} status_p99_s={:.2} slow_bucket_delay_s=n/a",
            self.n,
            self.writes_per_model_h(),
            self.requests_per_model_h(),
            self.rss_mib,
            self.cpu_pct,
            self.status_p99_s
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
    if let (Some(first), Some(last)) = (rows.first(), rows.last())
        && last.n > first.n
    {
        let growth = |a: f64, b: f64| if a > 0.0 { b / a } else { f64::NAN };
        println!(
            "\nfrom N={} to N={} ({:.0}x models): RSS x{:.2}, CPU at rest x{:.2}, requests per model per hour x{:.2}, status p99 x{:.2}",
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
