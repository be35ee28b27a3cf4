//! `make bench-serve`: the service against two Python peers, side by side, on the same machine,
//! models and uploads, with a real load generator (Debian's `wrk`).
//!
//! * The service: the real server (`serve` + `app`) on loopback, configured as `main.rs` sizes
//!   itself for the pod (`sizing::PodResources`: cgroup, else `CPU_REQUEST`, else the machine;
//!   on a 2-core machine 2 decode slots and detector sessions, 2 model workers with 1 ORT
//!   thread each and a solo session with 2 for a request alone), a 224 px MobileNetV2 ONNX model (seeded random weights: cost does not depend on
//!   their values), BlazeFace, the dynamic batcher.
//! * The strongest Python peer, `bench/peer_onnx.py`: our pipeline ported to Python (the same
//!   BlazeFace file and model.onnx on ONNX Runtime, OpenCV decode, the same crop rule), a sync
//!   FastAPI endpoint, uvicorn with uvloop + httptools, one worker per core, one ORT thread each.
//! * The afternoon peer, `bench/peer.py`: async endpoint, OpenCV Haar cascade, one process.
//!
//! Two uploads (`serve/uploads.rs`): the 256 px JPEG portrait (one face) and a 1280×886 JPEG
//! composite of four astronaut heads; the per-stage table adds a 12 MP JPEG phone photo. Before the load, the bench checks that the service and
//! peer_onnx.py find the same faces and classes, and times the service's stages in process
//! (`serve/stages.rs`) beside peer_onnx.py's. It also keeps the batching table (per-image
//! model cost at batch 1–8 with 1 and 2 threads), the measurement behind the batcher defaults.
//!
//! The clients behave like real ones: after a 503 a connection waits as long as Retry-After
//! says; the latencies reported are those of the 2xx answers and only 2xx answers count toward
//! req/s (`serve/wrk.rs`); the non-2xx answers are counted beside them.
//!
//! Tunables (env): BENCH_ONLY=stages (the per-stage table alone: no batching table, no load,
//! no peer servers; peer_onnx.py's stages still run when its Python is there), BENCH_ONLY=load
//! (the load tables alone: no batching or stage table),
//! BENCH_SECONDS (per level, default 10), BENCH_LEVELS (default 1,8,32),
//! BENCH_STAGE_RUNS (default 50), BENCH_WORKERS / BENCH_THREADS / BENCH_SOLO_THREADS / BENCH_MAX_BATCH /
//! BENCH_MAX_WAITING / BENCH_MAX_QUEUE_WAIT_MS / BENCH_MAX_WAIT_MS (override the service's sized configuration),
//! BENCH_PEER_PYTHON (default .deps/bench-venv/bin/python; set it empty to skip the peers),
//! CPU_REQUEST / MEMORY_LIMIT (as the service reads them).

#[path = "serve/peers.rs"]
mod peers;
#[path = "serve/stages.rs"]
mod stages;
#[path = "serve/uploads.rs"]
mod uploads;
#[path = "serve/wrk.rs"]
mod wrk;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use face2simpson_inference::serve::{ServeConfig, serve};
use face2simpson_inference::sizing::{self, PodResources, Sizing};
use face2simpson_inference::{
    AppState, BatchConfig, Forward, Limits, RuntimeConfig, app, load_detector, load_model,
};
use peers::Kind;
use pipeline::FaceDetector;
use uploads::Upload;
use wrk::WrkResult;

const IMAGE_SIZE: u32 = 224;
/// Faces per image at most, the service's default (`MAX_FACES`).
const MAX_FACES: usize = 8;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the run measures and how the service is configured.
struct Config {
    /// BENCH_ONLY=stages: the per-stage table alone.
    stages_only: bool,
    /// BENCH_ONLY=load: the load tables alone.
    load_only: bool,
    seconds: u64,
    levels: Vec<usize>,
    stage_runs: usize,
    cores: usize,
    /// The CPUs the service sized itself for, as `main.rs` reads them.
    pod_cpus: f64,
    sized: Sizing,
    workers: usize,
    threads: usize,
    solo_threads: usize,
    max_batch: usize,
    max_wait_ms: u64,
    max_waiting: usize,
    max_queue_wait_ms: u64,
    python: Option<PathBuf>,
}

impl Config {
    fn from_env() -> Self {
        // The service's own defaults (main.rs): sized from the cgroup, CPU_REQUEST, the machine.
        let pod = PodResources::detect(
            Path::new(sizing::CGROUP_ROOT),
            std::env::var("CPU_REQUEST")
                .ok()
                .and_then(|v| v.parse().ok()),
            std::env::var("MEMORY_LIMIT")
                .ok()
                .and_then(|v| v.parse().ok()),
        );
        let sized = pod.sizing();
        let levels = std::env::var("BENCH_LEVELS")
            .unwrap_or_else(|_| "1,8,32".into())
            .split(',')
            .filter_map(|c| c.trim().parse().ok())
            .collect();
        let python = std::env::var("BENCH_PEER_PYTHON").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../.deps/bench-venv/bin/python"
            )
            .to_owned()
        });
        Self {
            stages_only: std::env::var("BENCH_ONLY").is_ok_and(|v| v == "stages"),
            load_only: std::env::var("BENCH_ONLY").is_ok_and(|v| v == "load"),
            seconds: env_or("BENCH_SECONDS", 10),
            levels,
            stage_runs: env_or("BENCH_STAGE_RUNS", 50),
            cores: std::thread::available_parallelism().map_or(2, |n| n.get()),
            pod_cpus: pod.cpus,
            sized,
            workers: env_or("BENCH_WORKERS", sized.model_workers),
            threads: env_or("BENCH_THREADS", sized.ort_threads),
            solo_threads: env_or("BENCH_SOLO_THREADS", sized.solo_threads),
            max_batch: env_or("BENCH_MAX_BATCH", 8),
            max_wait_ms: env_or(
                "BENCH_MAX_WAIT_MS",
                face2simpson_inference::DEFAULT_MAX_WAIT_MS,
            ),
            max_waiting: env_or("BENCH_MAX_WAITING", 64),
            max_queue_wait_ms: env_or(
                "BENCH_MAX_QUEUE_WAIT_MS",
                face2simpson_inference::DEFAULT_MAX_QUEUE_WAIT_MS,
            ),
            python: Some(PathBuf::from(&python)).filter(|p| !python.is_empty() && p.exists()),
        }
    }

    fn batch(&self) -> BatchConfig {
        BatchConfig {
            max_batch: self.max_batch,
            max_wait: Duration::from_millis(self.max_wait_ms),
            queue_capacity: 64,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_decodes: self.sized.decodes,
            max_waiting: self.max_waiting,
            upload_budget_bytes: self.sized.upload_budget,
            pixel_budget_bytes: self.sized.pixel_budget,
            max_queue_wait: (self.max_queue_wait_ms > 0)
                .then(|| Duration::from_millis(self.max_queue_wait_ms)),
            ..Limits::default()
        }
    }
}

/// Per-image model cost at each batch size and thread count.
fn batching_table(onnx: &[u8], library: &Path) -> anyhow::Result<()> {
    let env = face2simpson_inference::runtime::environment(library)?;
    let size = IMAGE_SIZE as usize;
    println!("batching: ms per image, {IMAGE_SIZE} px MobileNetV2 on ONNX Runtime");
    println!(
        "  {:>8} {:>9} {:>9} {:>9} {:>9}",
        "threads", "batch 1", "batch 2", "batch 4", "batch 8"
    );
    for threads in [1, 2] {
        let session = face2simpson_inference::runtime::session(env, onnx, threads)?;
        let mut model = face2simpson_inference::batcher::OnnxClassifier::new(session);
        let mut row = Vec::new();
        for batch in [1usize, 2, 4, 8] {
            let x = vec![0.1f32; batch * 3 * size * size];
            model.forward(&x, batch, size).map_err(anyhow::Error::msg)?;
            let start = Instant::now();
            let mut images = 0;
            while start.elapsed() < Duration::from_millis(1500) || images < 8 {
                model.forward(&x, batch, size).map_err(anyhow::Error::msg)?;
                images += batch;
            }
            row.push(start.elapsed().as_secs_f64() * 1e3 / images as f64);
        }
        println!(
            "  {threads:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            row[0], row[1], row[2], row[3]
        );
    }
    Ok(())
}

/// Starts the real server on a free loopback port.
fn start_service(
    rt: &tokio::runtime::Runtime,
    cfg: &Config,
    dir: &Path,
    detector: Arc<FaceDetector>,
) -> anyhow::Result<std::net::SocketAddr> {
    rt.block_on(async {
        let runtime = RuntimeConfig {
            library: PathBuf::from(env!("ORT_DYLIB_PATH")),
            workers: cfg.workers,
            threads: cfg.threads,
            solo_threads: cfg.solo_threads,
        };
        let uri = format!("file://{}/runs/bench/model.safetensors", dir.display());
        let (models, info) = load_model(&uri, IMAGE_SIZE, &runtime).await?;
        let state = AppState::new(cfg.limits(), detector);
        state.install(models, info, cfg.batch())?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(serve(
            listener,
            app(state.clone()),
            state,
            ServeConfig::default(),
            std::future::pending(),
        ));
        anyhow::Ok(addr)
    })
}

/// Boxes and top-1 classes of an answer, `(x,y,w,h) class` per face, for the check below.
fn faces_of(answer: &serde_json::Value) -> Vec<(Vec<i64>, String)> {
    let faces = answer["faces"].as_array().cloned().unwrap_or_default();
    faces
        .iter()
        .map(|f| {
            let b = &f["box"];
            let xywh = ["x", "y", "w", "h"].map(|k| b[k].as_i64().unwrap_or(-1));
            (
                xywh.to_vec(),
                f["character"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

/// The service's answer and peer_onnx.py's for one upload, side by side; the service must find
/// the faces the upload was built with (at least 3 on the composite).
fn verify(
    upload: &Upload,
    ours: &serde_json::Value,
    peer: Option<&serde_json::Value>,
) -> anyhow::Result<()> {
    let show = |who: &str, a: &serde_json::Value| {
        println!(
            "  {who:<13} headline {:<6} faces {:?}",
            a["character"].as_str().unwrap_or("?"),
            faces_of(a)
        );
    };
    let (w, h) = upload.dimensions;
    println!(
        "check: {} ({w}x{h}, {} bytes)",
        upload.name,
        upload.bytes.len()
    );
    show("face2simpson", ours);
    if let Some(p) = peer {
        show("peer_onnx.py", p);
        let top = |a: &serde_json::Value| a["probabilities"].clone();
        println!("  probabilities ours {} / peer {}", top(ours), top(p));
    }
    let want = if upload.name.contains("composite") {
        3
    } else {
        1
    };
    let found = faces_of(ours).len();
    if found < want {
        anyhow::bail!(
            "the service found {found} face(s) on the {}, expected >= {want}",
            upload.name
        );
    }
    Ok(())
}

/// One server's results at every level for one upload.
type Row = Vec<WrkResult>;

fn load(url: &str, upload: &Upload, cfg: &Config) -> anyhow::Result<Row> {
    eprintln!("load: {url}, {}", upload.name);
    let script = wrk::script_for(&upload.path)?;
    cfg.levels
        .iter()
        .map(|&c| wrk::run(&script, url, c, cfg.seconds))
        .collect()
}

fn cell(r: Option<&WrkResult>) -> String {
    match r {
        Some(r) => format!(
            "{:.1} | {:.1} | {:.1} | {}",
            r.rps, r.p50_ms, r.p99_ms, r.non_2xx
        ),
        None => "— | — | — | —".into(),
    }
}

fn ratio(ours: &WrkResult, peer: Option<&WrkResult>) -> String {
    peer.map_or("—".into(), |p| format!("**{:.2}×**", ours.rps / p.rps))
}

/// One markdown table per upload: every server at every level, and our req/s over each peer's.
fn print_load_table(cfg: &Config, upload: &Upload, ours: &Row, onnx: &Row, afternoon: &Row) {
    println!(
        "\nserving: {}, {IMAGE_SIZE} px model, {} s per level, {} cores; 2xx only (req/s, p50/p99 ms of 2xx), clients honour Retry-After",
        upload.name, cfg.seconds, cfg.cores
    );
    println!(
        "| c | face2simpson req/s | p50 | p99 | non-2xx | peer_onnx req/s | p50 | p99 | non-2xx | peer.py req/s | p50 | p99 | non-2xx | ours / peer_onnx | ours / peer.py |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, c) in cfg.levels.iter().enumerate() {
        let o = &ours[i];
        println!(
            "| {c} | {} | {} | {} | {} | {} |",
            cell(Some(o)),
            cell(onnx.get(i)),
            cell(afternoon.get(i)),
            ratio(o, onnx.get(i)),
            ratio(o, afternoon.get(i))
        );
    }
}

/// peer_onnx.py's median for the stage the service's row `name` corresponds to.
fn peer_stage(peer: Option<&serde_json::Value>, name: &str) -> String {
    let key = match name {
        "decode + orient (pipeline::decode)" => "decode+orient",
        "detect (BlazeFace)" => "detect",
        "crop + fit + normalise" => "crop+fit",
        "  of which forward pass" => "classify",
        "serialize" => "serialize",
        _ => return "—".into(),
    };
    peer.and_then(|p| p[key].as_f64())
        .map_or("—".into(), |ms| format!("{ms:.2}"))
}

/// The per-stage table: the service's stages on both uploads, peer_onnx.py's beside them, and
/// what the stages leave out of a c=1 request (HTTP, admission, hand-offs).
fn print_stage_table(
    cfg: &Config,
    uploads: &[&Upload],
    ours: &[stages::Stages],
    peer: &[Option<serde_json::Value>],
    c1_p50: &[Option<f64>],
) {
    println!(
        "\nstages: one request at a time, in process, median of {} runs, ms (peer_onnx.py: its own stages, timed inside it; its classify is the forward pass)",
        cfg.stage_runs
    );
    print!("| stage |");
    for u in uploads {
        print!(" ours, {} | peer_onnx |", u.name);
    }
    println!("\n|---|{}", "---|---|".repeat(uploads.len()));
    let passes: Vec<String> = ours
        .iter()
        .zip(peer)
        .map(|(o, p)| {
            let pp = p.as_ref().map_or("—".into(), |p| {
                format!("{} / {}", p["faces"], p["detector_passes"])
            });
            format!(" {} / {} | {pp} |", o.faces, o.passes)
        })
        .collect();
    println!("| faces / detector passes |{}", passes.concat());
    for (i, row) in ours[0].rows.iter().enumerate() {
        print!("| {} |", row.name.replace("  ", "… "));
        for (o, p) in ours.iter().zip(peer) {
            print!(
                " {:.2} | {} |",
                o.rows[i].ms,
                peer_stage(p.as_ref(), row.name)
            );
        }
        println!();
    }
    print!("| sum of the stages |");
    for (o, p) in ours.iter().zip(peer) {
        let peer_sum = p.as_ref().map_or("—".into(), |p| {
            let keys = [
                "decode+orient",
                "detect",
                "crop+fit",
                "classify",
                "serialize",
            ];
            format!(
                "{:.2}",
                keys.iter().filter_map(|k| p[*k].as_f64()).sum::<f64>()
            )
        });
        print!(" {:.2} | {peer_sum} |", o.total_ms());
    }
    print!("\n| c=1 p50 over HTTP (load table) |");
    for p50 in c1_p50 {
        let p50 = p50.map_or("—".into(), |v| format!("{v:.2}"));
        print!(" {p50} | |");
    }
    print!("\n| … HTTP, admission, hand-offs (difference) |");
    for (o, p50) in ours.iter().zip(c1_p50) {
        let d = p50.map_or("—".into(), |v| format!("{:.2}", v - o.total_ms()));
        print!(" {d} | |");
    }
    println!();
}

fn main() -> anyhow::Result<()> {
    let cfg = Config::from_env();
    wrk::check_installed()?;
    let library = PathBuf::from(env!("ORT_DYLIB_PATH"));
    let blazeface = PathBuf::from(env!("FACE2SIMPSON_BLAZEFACE"));

    let dir = tempfile::tempdir()?;
    let onnx = model::onnx::export(&model::onnx::Weights::random(0, 4), IMAGE_SIZE)?;
    let onnx_path = dir.path().join("runs/bench/model.onnx");
    std::fs::create_dir_all(onnx_path.parent().unwrap_or(dir.path()))?;
    std::fs::write(&onnx_path, &onnx)?;
    if !cfg.stages_only && !cfg.load_only {
        batching_table(&onnx, &library)?;
    }

    let uploads = [uploads::portrait(dir.path())?, uploads::group(dir.path())?];
    // Timed stage by stage only: at ~100 ms a request it would take the load tables' time.
    let phone = uploads::phone(dir.path())?;
    let staged = [&uploads[0], &uploads[1], &phone];
    let detector = Arc::new(load_detector(
        &library,
        &blazeface,
        cfg.sized.decodes,
        MAX_FACES,
    )?);
    let rt = tokio::runtime::Runtime::new()?;
    let addr = start_service(&rt, &cfg, dir.path(), detector.clone())?;
    let url = format!("http://{addr}/v1/predict");
    let setup = cfg.python.as_ref().map(|python| peers::Setup {
        python: python.clone(),
        model: onnx_path.clone(),
        detector: blazeface.clone(),
        image_size: IMAGE_SIZE,
        workers: cfg.cores,
    });
    if setup.is_none() {
        println!("(peers skipped: no Python; `make bench-serve` creates .deps/bench-venv)");
    }

    // Same faces, same classes, before anything is timed.
    for u in staged {
        let peer = setup
            .as_ref()
            .map(|s| s.onnx_offline(&u.path, 0))
            .transpose()?;
        verify(u, &peers::post(&url, &u.path)?, peer.as_ref())?;
    }

    let bench = stages::Bench {
        detector: &detector,
        onnx: &onnx,
        library: &library,
        // One request at a time: the lone request's session, the solo one when there is one.
        ort_threads: cfg.threads.max(cfg.solo_threads),
        pre: model::Preprocessor::new(IMAGE_SIZE),
        runs: cfg.stage_runs,
    };
    let mut our_stages = Vec::new();
    let mut peer_stages = Vec::new();
    for u in staged.into_iter().filter(|_| !cfg.load_only) {
        eprintln!("stages: {}", u.name);
        our_stages.push(bench.measure(&rt, &u.bytes, cfg.batch())?);
        let peer = setup
            .as_ref()
            .map(|s| s.onnx_offline(&u.path, cfg.stage_runs));
        peer_stages.push(peer.transpose()?);
    }
    if cfg.stages_only {
        print_stage_table(
            &cfg,
            &staged,
            &our_stages,
            &peer_stages,
            &[None, None, None],
        );
        rt.shutdown_timeout(Duration::from_secs(2));
        return Ok(());
    }

    let mut ours = Vec::new();
    for u in &uploads {
        ours.push(load(&url, u, &cfg)?);
    }
    let mut peer_rows: Vec<[Row; 2]> = uploads.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    if let Some(setup) = &setup {
        for (k, kind) in [Kind::Onnx, Kind::Afternoon].into_iter().enumerate() {
            // One peer at a time: both uploads against it, then it is stopped.
            eprintln!("starting {}", kind.label());
            let port = peers::free_port()?;
            let _peer = setup.start(kind, port)?;
            let peer_url = format!("http://127.0.0.1:{port}/v1/predict");
            for (i, u) in uploads.iter().enumerate() {
                peer_rows[i][k] = load(&peer_url, u, &cfg)?;
            }
        }
    }

    println!(
        "\nface2simpson: {} model worker(s) x {} ORT thread(s) + solo session x {} thread(s) (0: none), {} decode slot(s) and detector sessions (sized from {:?} CPUs), max batch {}, batch wait {} ms, max queue wait {} ms; peer_onnx.py: {} uvicorn worker(s) x 1 ORT thread, sync endpoint; peer.py: 1 process, async endpoint",
        cfg.workers,
        cfg.threads,
        cfg.solo_threads,
        cfg.sized.decodes,
        cfg.pod_cpus,
        cfg.max_batch,
        cfg.max_wait_ms,
        cfg.max_queue_wait_ms,
        cfg.cores
    );
    for (i, u) in uploads.iter().enumerate() {
        print_load_table(&cfg, u, &ours[i], &peer_rows[i][0], &peer_rows[i][1]);
    }
    if cfg.load_only {
        rt.shutdown_timeout(Duration::from_secs(2));
        return Ok(());
    }
    let mut c1: Vec<Option<f64>> = ours
        .iter()
        .map(|r| cfg.levels.iter().position(|&c| c == 1).map(|i| r[i].p50_ms))
        .collect();
    c1.push(None);
    print_stage_table(&cfg, &staged, &our_stages, &peer_stages, &c1);
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}
