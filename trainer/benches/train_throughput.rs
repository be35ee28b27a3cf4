//! Training throughput at 224 px, batch 32, on this machine.
//!
//! * **pipeline**: the real data path — list a `file://` store, fetch, decode, resize and crop
//!   every image, then per epoch augment and normalise batches on other threads while the model
//!   steps — timed from the first list request to the last optimiser step.
//! * **compute limit**: the same optimiser step on batches already in memory as tensors.
//!
//! The ratio pipeline / compute is what the data path costs; 1.0 means it is free.
//! Tunables (env): BENCH_IMAGES (train images, default 128), BENCH_EPOCHS (default 2).

use std::time::Instant;

use artifacts::Storage;
use face2simpson_trainer::dataset;
use face2simpson_trainer::torch::Classifier;
use face2simpson_trainer::train::{epoch_batches, for_each_batch, to_batch, train_step};
use model::Preprocessor;
use tch::nn::OptimizerConfig;
use tch::{Device, Kind, Tensor};

const IMAGE_SIZE: u32 = 224;
const BATCH: usize = 32;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn new_model() -> (Classifier, tch::nn::Optimizer) {
    tch::manual_seed(0);
    let net = Classifier::new(Device::cuda_if_available(), 0.2);
    let opt = tch::nn::Adam::default()
        .build(net.var_store(), 1e-3)
        .expect("optimizer");
    (net, opt)
}

fn main() -> anyhow::Result<()> {
    let images = env_or("BENCH_IMAGES", 128);
    let epochs = env_or("BENCH_EPOCHS", 2) as u32;
    let rt = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let storage = Storage::open(&format!("file://{}", dir.path().display()))?;
    // 256 px sources so every image is really resized and cropped, like photos would be.
    let per_class = images / 4;
    rt.block_on(face2simpson_trainer::generate_dataset(
        &storage,
        "datasets/bench",
        per_class,
        256,
        1,
    ))?;
    let pre = Preprocessor::new(IMAGE_SIZE);
    println!(
        "training throughput, {IMAGE_SIZE} px, batch {BATCH}, {epochs} epochs over {} images, device {:?}, {} torch threads",
        per_class * 4,
        Device::cuda_if_available(),
        tch::get_num_threads()
    );

    // Warm-up so neither measurement pays for first-call allocations.
    {
        let (net, mut opt) = new_model();
        let x = Tensor::randn([BATCH as i64, 3, 224, 224], (Kind::Float, net.device()));
        let y = Tensor::zeros([BATCH as i64], (Kind::Int64, net.device()));
        train_step(&net, &mut opt, &x, &y, 0.1)?;
    }

    // Real pipeline.
    let (net, mut opt) = new_model();
    let t0 = Instant::now();
    let data = rt.block_on(async {
        let listing = dataset::list(&storage, "datasets/bench").await?;
        let options = dataset::LoadOptions {
            pre,
            val_fraction: 0.0,
            seed: 1,
            concurrency: 16,
        };
        dataset::load(&storage, "datasets/bench", listing, options, || {}).await
    })?;
    let load_secs = t0.elapsed().as_secs_f64();
    let mut steps = 0usize;
    let mut seen = 0usize;
    for epoch in 1..=epochs {
        let batches = epoch_batches(data.train.len(), BATCH, 1, epoch);
        for_each_batch(
            &data.train,
            &batches,
            |i, s| pre.train(&s.image, i as u64 ^ u64::from(epoch)),
            |(xs, labels)| {
                let (x, y) = to_batch(&net, &xs, &labels, IMAGE_SIZE);
                train_step(&net, &mut opt, &x, &y, 0.1)?;
                steps += 1;
                seen += labels.len();
                Ok::<_, face2simpson_trainer::train::TrainError>(())
            },
        )?;
    }
    let pipeline_secs = t0.elapsed().as_secs_f64();
    let pipeline_ips = seen as f64 / pipeline_secs;

    // Compute limit: identical steps on tensors already in memory.
    let (net, mut opt) = new_model();
    let batches: Vec<(Tensor, Tensor)> = (0..steps)
        .map(|_| {
            let x = Tensor::randn([BATCH as i64, 3, 224, 224], (Kind::Float, net.device()));
            let y = Tensor::arange(BATCH as i64, (Kind::Int64, net.device())).remainder(4);
            (x, y)
        })
        .collect();
    let t1 = Instant::now();
    for (x, y) in &batches {
        train_step(&net, &mut opt, x, y, 0.1)?;
    }
    let compute_secs = t1.elapsed().as_secs_f64();
    let compute_ips = (steps * BATCH) as f64 / compute_secs;

    println!(
        "  data loading (fetch+decode+fit, once): {load_secs:8.2} s  ({:.1} images/s)",
        data.train.len() as f64 / load_secs
    );
    println!(
        "  pipeline:      {seen:5} images in {pipeline_secs:8.2} s = {pipeline_ips:8.2} images/s  (loading included)"
    );
    println!(
        "  compute limit: {:5} images in {compute_secs:8.2} s = {compute_ips:8.2} images/s",
        steps * BATCH
    );
    println!(
        "  ratio pipeline / compute limit = {:.3}  (target >= 0.9)",
        pipeline_ips / compute_ips
    );
    Ok(())
}
