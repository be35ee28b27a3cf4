//! `make bench-train`: the trainer's steady training throughput against PyTorch on the same
//! images, interleaved and repeated (`BENCH_REPEATS` rounds) so a machine that slows down
//! mid-run slows every side alike. Two pairs, each at equal precision:
//!
//! 1. **ours `--precision fp32`** (the real `train::run`: fetch, decode and fit once, then per
//!    epoch augment bytes on other threads while MobileNetV2 steps) against **the seed's stack
//!    as written** (`bench/train_peer.py --setup seed`: ImageFolder with the seed's
//!    `train_transformer` re-decoding every image every epoch, DataLoader, NCHW fp32);
//! 2. **ours `--precision auto`** against **the strongest CPU PyTorch setup**
//!    (`--setup strong`: decode once, only the augmentations per epoch, channels-last, bf16
//!    autocast exactly when `auto` picks bf16 — CPUs with AVX512-BF16 or AMX);
//!
//! plus libtorch's raw model step at the `auto` precision on batches already built (the limit
//! the loop can approach: as many steps as the loop's steady epochs, on the same libtorch
//! thread), and `--workers 2` (two trainer processes on Gloo over loopback, the
//! same global batch): images/s and the share of a step spent averaging gradients. Same batch, torch threads and loader workers (our rayon pool's size
//! = the DataLoader's worker processes) on both sides. Steady throughput = training images /
//! mean epoch time after the first epoch. Ratios are medians over the rounds. This process
//! applies the trainer's allocator policy (`face2simpson_trainer::malloc`) and the strong peer
//! gets the same one through glibc's environment; the seed's stack runs as written.
//!
//! On a GPU (`BENCH_DEVICE=cuda`, or `auto` when libtorch sees one) both sides train there, at
//! batch 64 by default, and `nvidia-smi` is sampled while ours trains for the GPU's busy share.
//!
//! Env: BENCH_IMAGES (training images, default 400), BENCH_EPOCHS (default 3, at least 2),
//! BENCH_REPEATS (rounds, default 3), BENCH_THREADS (torch threads on both sides, default 2),
//! BENCH_LOADER_WORKERS (default: one per core), BENCH_DEVICE (auto, cpu, cuda), BENCH_BATCH
//! (default 32 on CPU, 64 on a GPU), BENCH_PEER=0 skips the peers, BENCH_RANKS (default 2; 1
//! skips the data-parallel run).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use artifacts::{Hyperparameters, PromotionPolicy, Storage};
use face2simpson_trainer::cache::CropCache;
use face2simpson_trainer::dataset::{self, LoadOptions};
use face2simpson_trainer::progress::Progress;
use face2simpson_trainer::torch::adam::Adam;
use face2simpson_trainer::torch::{Classifier, Precision, kind_name};
use face2simpson_trainer::train::{self, HostBatch, TrainConfig, epoch_batches, train_step};
use model::Preprocessor;
use tch::{Device, Kind, Tensor};

const IMAGE_SIZE: u32 = 224;
const DATASET: &str = "datasets/bench";

/// What the benchmark runs on.
#[derive(Debug, Clone, Copy)]
struct Setup {
    device: Device,
    batch: u32,
    epochs: u32,
    threads: usize,
    loader_workers: usize,
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn steady(epoch_seconds: &[f64]) -> f64 {
    let rest = &epoch_seconds[1..];
    rest.iter().sum::<f64>() / rest.len() as f64
}

fn config(run_id: &str, setup: Setup, precision: Precision) -> TrainConfig {
    let epochs = setup.epochs;
    TrainConfig {
        run_id: run_id.into(),
        dataset: DATASET.into(),
        champion: None,
        hyper: Hyperparameters {
            image_size: IMAGE_SIZE,
            epochs,
            batch_size: setup.batch,
            learning_rate: 1e-3,
            label_smoothing: 0.1,
            dropout: 0.2,
            // No early stop and no validation split: every epoch trains on every image.
            patience: epochs,
            val_fraction: 0.0,
            seed: 1,
        },
        device: setup.device,
        precision,
        pretrained: None,
        promote: false,
        policy: PromotionPolicy::default(),
        concurrency: 16,
        cache_mb: None,
        cache_dir: None,
        detector: detector(),
    }
}

/// The service's face detector (.cargo/config.toml names where `make setup` put it).
fn detector() -> std::sync::Arc<pipeline::FaceDetector> {
    static DETECTOR: std::sync::OnceLock<std::sync::Arc<pipeline::FaceDetector>> =
        std::sync::OnceLock::new();
    DETECTOR
        .get_or_init(|| {
            face2simpson_trainer::load_detector(
                std::path::Path::new(env!("ORT_DYLIB_PATH")),
                std::path::Path::new(env!("FACE2SIMPSON_BLAZEFACE")),
            )
            .unwrap_or_else(|e| panic!("{e}"))
        })
        .clone()
}

/// Our steady images/s and epoch times for one precision.
fn ours(
    rt: &tokio::runtime::Runtime,
    storage: &Storage,
    setup: Setup,
    precision: Precision,
    label: &str,
    round: usize,
) -> anyhow::Result<(f64, Vec<f64>, Option<f64>)> {
    // A run id per round: a run id that already has its metrics.json is not trained again.
    let cfg = config(&format!("bench-{label}-{round}"), setup, precision);
    let sampler = setup.device.is_cuda().then(GpuSampler::start);
    let outcome = rt.block_on(train::run(storage, &cfg, &Progress::logs()))?;
    let busy = sampler.and_then(GpuSampler::stop);
    let m = &outcome.metrics;
    let seconds: Vec<f64> = m.history.iter().map(|r| r.seconds).collect();
    let ips = m.counts.train as f64 / steady(&seconds);
    Ok((ips, seconds, busy))
}

/// Samples the GPU's utilisation (`nvidia-smi`, every 200 ms) on a thread while ours trains.
struct GpuSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<f64>>,
}

impl GpuSampler {
    fn start() -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let out = Command::new("nvidia-smi")
                    .args([
                        "--query-gpu=utilization.gpu",
                        "--format=csv,noheader,nounits",
                        "-i",
                        "0",
                    ])
                    .output();
                if let Some(v) = out.ok().and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .trim()
                        .parse::<f64>()
                        .ok()
                }) {
                    samples.push(v);
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            samples
        });
        Self { stop, thread }
    }

    /// Mean utilisation in percent over the samples, if `nvidia-smi` answered.
    fn stop(self) -> Option<f64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let samples = self.thread.join().ok()?;
        (!samples.is_empty()).then(|| samples.iter().sum::<f64>() / samples.len() as f64)
    }
}

/// Which Python stack a peer run is (`bench/train_peer.py --setup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerSetup {
    /// The seed's stack as written: decode, resize and crop every epoch, NCHW fp32.
    Seed,
    /// An expert's CPU setup: decode once, channels-last, bf16 autocast where native.
    Strong,
}

impl PeerSetup {
    fn arg(self) -> &'static str {
        match self {
            Self::Seed => "seed",
            Self::Strong => "strong",
        }
    }
}

#[derive(serde::Deserialize)]
struct PeerResult {
    epoch_seconds: Vec<f64>,
    images: u64,
    bf16: bool,
}

impl PeerResult {
    fn images_per_second(&self) -> f64 {
        self.images as f64 / steady(&self.epoch_seconds)
    }
}

fn peer(root: &Path, setup: Setup, which: PeerSetup, bf16: bool) -> anyhow::Result<PeerResult> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let deps = std::env::var_os("FACE2SIMPSON_DEPS")
        .map(Into::into)
        .unwrap_or_else(|| workspace.join(".deps"));
    let python = Path::new(&deps).join("train-bench-venv/bin/python");
    if !python.exists() {
        bail!(
            "{} is missing: run `scripts/setup-bench.sh train` (make bench-train does)",
            python.display()
        );
    }
    let mut cmd = Command::new(&python);
    cmd.arg(workspace.join("bench/train_peer.py"))
        .args([
            "--data",
            &root.join(DATASET).join("train").display().to_string(),
        ])
        .args(["--setup", which.arg()])
        .args(["--epochs", &setup.epochs.to_string()])
        .args(["--threads", &setup.threads.to_string()])
        .args(["--workers", &setup.loader_workers.to_string()])
        .args(["--image-size", &IMAGE_SIZE.to_string()])
        .args(["--batch-size", &setup.batch.to_string()])
        .args([
            "--device",
            if setup.device.is_cuda() {
                "cuda"
            } else {
                "cpu"
            },
        ]);
    if bf16 {
        cmd.arg("--bf16");
    }
    if which == PeerSetup::Strong {
        // The allocator policy our trainer applies to itself (`face2simpson_trainer::malloc`),
        // through glibc's environment: equal settings, as an expert's setup would have them.
        cmd.envs(face2simpson_trainer::malloc::GLIBC_ENV);
    }
    let out = cmd.output().context("running the PyTorch peer")?;
    if !out.status.success() {
        bail!("peer failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim().lines().last().unwrap_or_default())
        .with_context(|| format!("peer printed {line:?}"))
}

/// The training images decoded and fitted once, and one epoch of them as host batches.
fn load_batches(
    rt: &tokio::runtime::Runtime,
    storage: &Storage,
    setup: Setup,
) -> anyhow::Result<Vec<HostBatch>> {
    let pre = Preprocessor::new(IMAGE_SIZE);
    let t0 = Instant::now();
    let data = rt.block_on(async {
        let listing = dataset::list(storage, DATASET).await?;
        let options = LoadOptions {
            cache: Arc::new(CropCache::new(u64::MAX, &std::env::temp_dir())),
            pre,
            detector: detector(),
            faces: Arc::new(face2simpson_trainer::face_index::FaceIndex::empty(
                "cache/faces/bench.json".into(),
            )),
            val_fraction: 0.0,
            seed: 1,
            concurrency: 16,
        };
        dataset::load(storage, DATASET, listing, options, || {}).await
    })?;
    let n = data.train.len() + data.test.len();
    println!(
        "  fetch + decode + detect + crop/fit, once: {:8.1} images/s",
        n as f64 / t0.elapsed().as_secs_f64()
    );
    let batches = epoch_batches(data.train.len(), setup.batch as usize, 1, 1);
    let t1 = Instant::now();
    let built: Vec<HostBatch> = batches
        .iter()
        .map(|b| {
            HostBatch::build(b, &data.train, IMAGE_SIZE, setup.device, &|i, s, out| {
                s.image.read_into(out)?;
                pre.augment(out, i as u64);
                Ok(())
            })
        })
        .collect::<Result<_, _>>()?;
    let images: usize = built.iter().map(HostBatch::len).sum();
    println!(
        "  augment + pack bytes, per epoch:     {:8.1} images/s (on the data threads, overlapped)",
        images as f64 / t1.elapsed().as_secs_f64()
    );
    Ok(built)
}

/// libtorch's raw model step (forward, backward, Adam) on batches already on the device, with
/// nothing else running: the limit the whole training loop can approach. As many steps as the
/// loop's steady epochs take, on the process's libtorch thread like the loop's.
fn raw_step(
    batches: &Arc<std::sync::Mutex<Vec<HostBatch>>>,
    device: Device,
    kind: Kind,
    epochs: u32,
) -> anyhow::Result<f64> {
    let batches = batches.clone();
    face2simpson_trainer::torch::thread::run(move || -> anyhow::Result<f64> {
        tch::manual_seed(0);
        let mut net = Classifier::new(device, 0.2);
        net.set_train_kind(kind);
        let mut opt = Adam::new(net.var_store(), 1e-3);
        let batches = batches.lock().unwrap_or_else(|e| e.into_inner());
        let on_device: Vec<(Tensor, Tensor)> =
            batches.iter().map(|b| b.to_device(device)).collect();
        // One warm-up step: oneDNN picks and caches its kernels on the first call.
        let (x, y) = &on_device[0];
        let _ = train_step(&net, &mut opt, None, x, y, 0.1)?;
        let steady_epochs = epochs.saturating_sub(1).max(1) as usize;
        let images = steady_epochs * batches.iter().map(HostBatch::len).sum::<usize>();
        let t = Instant::now();
        for _ in 0..steady_epochs {
            for (x, y) in &on_device {
                train_step(&net, &mut opt, None, x, y, 0.1)?
                    .0
                    .double_value(&[]);
            }
        }
        Ok(images as f64 / t.elapsed().as_secs_f64())
    })
    .map_err(anyhow::Error::msg)?
}

/// What `--workers N` on Gloo over loopback gives: rank 0's `metrics.json`.
struct Ranks {
    workers: u32,
    images_per_second: f64,
    allreduce_share: f64,
    allreduce_ms_per_step: f64,
}

/// Trains `workers` trainer processes over Gloo on 127.0.0.1 at the `auto` precision, the
/// global batch equal to the single process's (`--batch-size` is per rank) and the torch
/// threads split between them, and reads throughput and the averaging's share of a step.
fn ranks(root: &Path, setup: Setup, workers: u32) -> anyhow::Result<Ranks> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let run_id = format!("bench-ranks-{workers}");
    let per_rank_batch = (setup.batch / workers).max(1);
    let threads = (setup.threads / workers as usize).max(1);
    let children = (0..workers)
        .map(|rank| {
            Command::new(env!("CARGO_BIN_EXE_face2simpson-trainer"))
                .args(["train", "--storage"])
                .arg(root)
                .args(["--dataset", DATASET, "--run-id", &run_id])
                .args(["--image-size", &IMAGE_SIZE.to_string()])
                .args(["--epochs", &setup.epochs.to_string()])
                .args(["--patience", &setup.epochs.to_string()])
                .args(["--batch-size", &per_rank_batch.to_string()])
                .args(["--val-fraction", "0", "--seed", "1", "--pretrained", "none"])
                .args(["--precision", "auto"])
                .args([
                    "--device",
                    if setup.device.is_cuda() {
                        "cuda"
                    } else {
                        "cpu"
                    },
                ])
                .args([
                    "--workers",
                    &workers.to_string(),
                    "--rank",
                    &rank.to_string(),
                ])
                .args([
                    "--master-addr",
                    "127.0.0.1",
                    "--master-port",
                    &port.to_string(),
                ])
                .env("ORT_DYLIB_PATH", env!("ORT_DYLIB_PATH"))
                .env("FACE_DETECTOR", env!("FACE2SIMPSON_BLAZEFACE"))
                .env("OMP_NUM_THREADS", threads.to_string())
                .env("RAYON_NUM_THREADS", threads.to_string())
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .spawn()
                .context("starting a trainer rank")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (rank, mut child) in children.into_iter().enumerate() {
        let status = child.wait()?;
        anyhow::ensure!(
            status.success(),
            "rank {rank} of {workers} failed: {status}"
        );
    }
    let path = root.join(artifacts::layout::metrics_in(
        artifacts::layout::RUNS,
        &run_id,
    ));
    let metrics: artifacts::RunMetrics = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    let dist = metrics
        .distributed
        .context("rank 0's metrics.json has no distributed record")?;
    let seconds: Vec<f64> = metrics.history.iter().map(|r| r.seconds).collect();
    Ok(Ranks {
        workers,
        images_per_second: metrics.counts.train as f64 / steady(&seconds),
        allreduce_share: dist.allreduce_seconds / dist.step_seconds,
        allreduce_ms_per_step: 1e3 * dist.allreduce_seconds / dist.steps.max(1) as f64,
    })
}

/// The CPU's name and the instruction sets that decide the precision and its speed.
fn cpu_flags() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let flags: Vec<&str> = info
        .lines()
        .find_map(|l| l.strip_prefix("flags"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).split(' ').collect())
        .unwrap_or_default();
    let has: Vec<&str> = ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]
        .into_iter()
        .filter(|f| flags.contains(f))
        .collect();
    format!("{model} [{}]", has.join(" "))
}

/// One round of the interleaved comparison.
struct Round {
    fp32: f64,
    seed: Option<f64>,
    auto: f64,
    strong: Option<f64>,
    raw: f64,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn main() -> anyhow::Result<()> {
    // As the trainer's binary does, before any thread starts.
    face2simpson_trainer::malloc::keep_freed_memory();
    let images = env_or("BENCH_IMAGES", 400);
    let threads = env_or("BENCH_THREADS", 2);
    let repeats = env_or("BENCH_REPEATS", 3).max(1);
    tch::set_num_threads(threads as i32);
    let device = face2simpson_trainer::torch::parse_device(
        &std::env::var("BENCH_DEVICE").unwrap_or_else(|_| "auto".into()),
    )
    .map_err(anyhow::Error::msg)?;
    let setup = Setup {
        device,
        batch: env_or("BENCH_BATCH", if device.is_cuda() { 64 } else { 32 }) as u32,
        epochs: env_or("BENCH_EPOCHS", 3).max(2) as u32,
        threads,
        // Our batches are built on rayon's pool (one thread per core); the peers' DataLoaders
        // get as many worker processes.
        loader_workers: env_or("BENCH_LOADER_WORKERS", rayon::current_num_threads()),
    };
    let rt = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let storage = Storage::open(&format!("file://{}", dir.path().display()))?;
    // 256 px sources, so every image is really resized and cropped, as photos would be.
    let per_class = images / 4;
    rt.block_on(face2simpson_trainer::generate_dataset(
        &storage, DATASET, per_class, 256, 1,
    ))?;
    let auto = Precision::Auto
        .resolve(device)
        .map_err(anyhow::Error::msg)?;
    let bf16 = auto == Kind::BFloat16;
    println!(
        "training throughput: MobileNetV2 {IMAGE_SIZE} px, batch {}, Adam, {} training images \
         (256 px PNG/JPEG), {} epochs, {threads} torch threads, {} loader workers, {}; {} round(s)",
        setup.batch,
        per_class * 4,
        setup.epochs,
        setup.loader_workers,
        face2simpson_trainer::torch::device_name(device),
        repeats,
    );
    println!(
        "CPU: {}; auto precision here = {}",
        cpu_flags(),
        kind_name(auto)
    );
    println!("where an epoch goes (ours):");
    // Behind a mutex: tensors may move to the libtorch thread but not be shared.
    let batches = Arc::new(std::sync::Mutex::new(load_batches(&rt, &storage, setup)?));

    let with_peers = env_or("BENCH_PEER", 1) != 0;
    let mut rounds = Vec::new();
    for round in 1..=repeats {
        // Interleaved, so a machine that slows down mid-run slows every side alike.
        let (fp32, _, fp32_busy) = ours(&rt, &storage, setup, Precision::Fp32, "fp32", round)?;
        let seed = with_peers
            .then(|| peer(dir.path(), setup, PeerSetup::Seed, false))
            .transpose()?;
        let (auto_ips, _, auto_busy) = ours(&rt, &storage, setup, Precision::Auto, "auto", round)?;
        let strong = with_peers
            .then(|| peer(dir.path(), setup, PeerSetup::Strong, bf16))
            .transpose()?;
        if let Some(s) = &strong {
            anyhow::ensure!(s.bf16 == bf16, "the strong peer ran at another precision");
        }
        let raw = raw_step(&batches, device, auto, setup.epochs)?;
        let busy = |b: Option<f64>| b.map_or_else(String::new, |b| format!(", GPU busy {b:.0} %"));
        println!(
            "round {round}: ours fp32 {fp32:.1}{}, seed stack {}, ours auto {auto_ips:.1}{}, \
             strong PyTorch {}, raw {} step {raw:.1} images/s",
            busy(fp32_busy),
            seed.as_ref()
                .map_or("-".into(), |p| format!("{:.1}", p.images_per_second())),
            busy(auto_busy),
            strong
                .as_ref()
                .map_or("-".into(), |p| format!("{:.1}", p.images_per_second())),
            kind_name(auto),
        );
        rounds.push(Round {
            fp32,
            seed: seed.map(|p| p.images_per_second()),
            auto: auto_ips,
            strong: strong.map(|p| p.images_per_second()),
            raw,
        });
    }
    summary(&rounds, auto);
    let workers = env_or("BENCH_RANKS", 2) as u32;
    if workers > 1 {
        let r = ranks(dir.path(), setup, workers)?;
        let single = median(rounds.iter().map(|r| r.auto).collect());
        println!(
            "ranks:  --workers {} on Gloo over loopback ({} torch thread(s) each, global batch {}): \
             {:.1} images/s = {:.2}x one process; averaging {:.1} ms per step = {:.1} % of a step",
            r.workers,
            (setup.threads / workers as usize).max(1),
            (setup.batch / workers).max(1) * workers,
            r.images_per_second,
            r.images_per_second / single,
            r.allreduce_ms_per_step,
            100.0 * r.allreduce_share,
        );
    }
    Ok(())
}

/// The table of every round and the median ratios against the targets.
fn summary(rounds: &[Round], auto: Kind) {
    let cell = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.1}"));
    println!();
    println!(
        "| round | ours fp32 | seed stack (fp32 NCHW) | ours auto ({0}) | strong PyTorch (channels-last{1}) | raw {0} step |",
        kind_name(auto),
        if auto == Kind::BFloat16 {
            ", bf16 autocast"
        } else {
            ", fp32"
        }
    );
    println!("|---|---|---|---|---|---|");
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "| {} | {:.1} | {} | {:.1} | {} | {:.1} |",
            i + 1,
            r.fp32,
            cell(r.seed),
            r.auto,
            cell(r.strong),
            r.raw
        );
    }
    let ratios = |f: &dyn Fn(&Round) -> Option<f64>| -> Option<f64> {
        let xs: Vec<f64> = rounds.iter().filter_map(f).collect();
        (!xs.is_empty()).then(|| median(xs))
    };
    println!();
    if let Some(r) = ratios(&|r| r.seed.map(|s| r.fp32 / s)) {
        println!(
            "pair 1: ours fp32 / seed stack        = {r:.2}x (median of rounds; goal >= 1.3x)"
        );
    }
    if let Some(r) = ratios(&|r| r.strong.map(|s| r.auto / s)) {
        println!(
            "pair 2: ours auto / strong PyTorch    = {r:.2}x (median of rounds; goal >= 1.0x)"
        );
    }
    if let Some(r) = ratios(&|r| Some(r.auto / r.raw)) {
        println!(
            "limit:  ours auto / raw {} step        = {:.0} % (median of rounds; goal >= 95 %)",
            kind_name(auto),
            r * 100.0
        );
    }
}
