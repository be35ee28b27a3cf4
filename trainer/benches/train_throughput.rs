//! `make bench-train`: the trainer's steady training throughput against the seed's stack, on
//! the same images, one after the other on the same machine.
//!
//! * **face2simpson**: the real `train::run` (fetch, decode and fit once, then per epoch augment
//!   bytes on other threads while MobileNetV2 steps), at fp32 and at the precision `auto` picks
//!   here. Steady throughput = training images / mean epoch time after the first epoch.
//! * **peer**: `bench/train_peer.py`, the seed's PyTorch + torchvision stack (ImageFolder, the
//!   seed's `train_transformer`, DataLoader, Adam, label-smoothed cross-entropy) on the same
//!   files, with 0 and 2 DataLoader workers; the better of the two is the reference.
//! * **where an epoch goes**: decode + fit (once), batch building alone, model step alone.
//!
//! On a GPU (`BENCH_DEVICE=cuda`, or `auto` when libtorch sees one) both sides train there, at
//! batch 64 by default, and `nvidia-smi` is sampled while ours trains for the GPU's busy share.
//!
//! Env: BENCH_IMAGES (training images, default 160), BENCH_EPOCHS (default 5, at least 2),
//! BENCH_THREADS (torch threads on both sides, default 2), BENCH_DEVICE (auto, cpu, cuda),
//! BENCH_BATCH (default 32 on CPU, 64 on a GPU), BENCH_PEER=0 skips the peer.

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
) -> anyhow::Result<(f64, Vec<f64>, Option<f64>)> {
    let cfg = config(&format!("bench-{label}"), setup, precision);
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

#[derive(serde::Deserialize)]
struct PeerResult {
    workers: u32,
    epoch_seconds: Vec<f64>,
    images: u64,
}

fn peer(root: &Path, setup: Setup, workers: u32) -> anyhow::Result<PeerResult> {
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
    let out = Command::new(&python)
        .arg(workspace.join("bench/train_peer.py"))
        .args([
            "--data",
            &root.join(DATASET).join("train").display().to_string(),
        ])
        .args(["--epochs", &setup.epochs.to_string()])
        .args(["--threads", &setup.threads.to_string()])
        .args(["--workers", &workers.to_string()])
        .args(["--image-size", &IMAGE_SIZE.to_string()])
        .args(["--batch-size", &setup.batch.to_string()])
        .args([
            "--device",
            if setup.device.is_cuda() {
                "cuda"
            } else {
                "cpu"
            },
        ])
        .output()
        .context("running the PyTorch peer")?;
    if !out.status.success() {
        bail!("peer failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim().lines().last().unwrap_or_default())
        .with_context(|| format!("peer printed {line:?}"))
}

/// Where an epoch goes on our side: decode + fit once, building batches alone, stepping alone.
fn breakdown(
    rt: &tokio::runtime::Runtime,
    storage: &Storage,
    setup: Setup,
    compute: Kind,
) -> anyhow::Result<()> {
    let device = setup.device;
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
    let load = t0.elapsed().as_secs_f64();
    println!(
        "  fetch + decode + detect + crop/fit, once: {:8.1} images/s",
        n as f64 / load
    );

    let batches = epoch_batches(data.train.len(), setup.batch as usize, 1, 1);
    let t1 = Instant::now();
    let built: Vec<HostBatch> = batches
        .iter()
        .map(|b| {
            HostBatch::build(b, &data.train, IMAGE_SIZE, device, &|i, s, out| {
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
    for kind in [Kind::Float, compute] {
        tch::manual_seed(0);
        let mut net = Classifier::new(device, 0.2);
        net.set_train_kind(kind);
        let mut opt = Adam::new(net.var_store(), 1e-3);
        let on_device: Vec<(Tensor, Tensor)> = built.iter().map(|b| b.to_device(device)).collect();
        // One warm-up step: oneDNN picks and caches its kernels on the first call.
        let (x, y) = &on_device[0];
        let _ = train_step(&net, &mut opt, None, x, y, 0.1)?;
        let t2 = Instant::now();
        for (x, y) in &on_device {
            train_step(&net, &mut opt, None, x, y, 0.1)?
                .0
                .double_value(&[]);
        }
        println!(
            "  model step alone, {:4}:             {:8.1} images/s",
            kind_name(kind),
            images as f64 / t2.elapsed().as_secs_f64()
        );
        if kind == compute {
            break;
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let images = env_or("BENCH_IMAGES", 160);
    let threads = env_or("BENCH_THREADS", 2);
    tch::set_num_threads(threads as i32);
    let device = face2simpson_trainer::torch::parse_device(
        &std::env::var("BENCH_DEVICE").unwrap_or_else(|_| "auto".into()),
    )
    .map_err(anyhow::Error::msg)?;
    let setup = Setup {
        device,
        batch: env_or("BENCH_BATCH", if device.is_cuda() { 64 } else { 32 }) as u32,
        epochs: env_or("BENCH_EPOCHS", 5).max(2) as u32,
        threads,
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
    println!(
        "training throughput: MobileNetV2 {IMAGE_SIZE} px, batch {}, Adam, {} training images \
         (256 px PNG/JPEG), {} epochs, {threads} torch threads, {}; auto precision here = {}",
        setup.batch,
        per_class * 4,
        setup.epochs,
        face2simpson_trainer::torch::device_name(device),
        kind_name(auto)
    );
    println!("where an epoch goes (ours):");
    breakdown(&rt, &storage, setup, auto)?;

    let (fp32_ips, fp32_s, fp32_busy) = ours(&rt, &storage, setup, Precision::Fp32, "fp32")?;
    let (auto_ips, auto_s, auto_busy) = ours(&rt, &storage, setup, Precision::Auto, "auto")?;
    let mut peers = Vec::new();
    if env_or("BENCH_PEER", 1) != 0 {
        for workers in [0, 2] {
            peers.push(peer(dir.path(), setup, workers)?);
        }
    }
    let fmt = |s: &[f64]| {
        s.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let busy = |b: Option<f64>| b.map_or_else(String::new, |b| format!(" (GPU busy {b:.0} %)"));
    println!();
    println!("| stack | epoch seconds | steady images/s |");
    println!("|---|---|---|");
    println!(
        "| face2simpson, fp32 | {} | {fp32_ips:.1}{} |",
        fmt(&fp32_s),
        busy(fp32_busy)
    );
    println!(
        "| face2simpson, auto ({}) | {} | {auto_ips:.1}{} |",
        kind_name(auto),
        fmt(&auto_s),
        busy(auto_busy)
    );
    let mut best_peer: Option<f64> = None;
    for p in &peers {
        let ips = p.images as f64 / steady(&p.epoch_seconds);
        println!(
            "| PyTorch + DataLoader ({} workers) | {} | {ips:.1} |",
            p.workers,
            fmt(&p.epoch_seconds)
        );
        best_peer = Some(best_peer.map_or(ips, |b: f64| b.max(ips)));
    }
    if let Some(peer_ips) = best_peer {
        println!();
        println!(
            "ratio vs the peer's best: fp32 {:.2}x, auto ({}) {:.2}x  (goal >= 1.3x)",
            fp32_ips / peer_ips,
            kind_name(auto),
            auto_ips / peer_ips
        );
    }
    Ok(())
}
