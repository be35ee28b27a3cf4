//! Helpers shared by the trainer's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use artifacts::{Hyperparameters, PromotionPolicy, Storage};
use face2simpson_trainer::progress::Progress;
use face2simpson_trainer::train::{self, Outcome, TrainConfig, TrainError};
use tch::Device;

pub const PRETRAINED: &str = env!("FACE2SIMPSON_PRETRAINED");

/// The service's face detector, as `make setup` leaves it (.cargo/config.toml names the paths).
pub fn detector() -> std::sync::Arc<pipeline::FaceDetector> {
    face2simpson_trainer::load_detector(
        std::path::Path::new(env!("ORT_DYLIB_PATH")),
        std::path::Path::new(env!("FACE2SIMPSON_BLAZEFACE")),
    )
    .unwrap()
}

pub fn config(run_id: &str, image_size: u32, epochs: u32) -> TrainConfig {
    TrainConfig {
        run_id: run_id.to_owned(),
        dataset: "datasets/test".to_owned(),
        champion: None,
        hyper: Hyperparameters {
            image_size,
            epochs,
            batch_size: 32,
            learning_rate: 1e-3,
            label_smoothing: 0.1,
            dropout: 0.2,
            patience: 3,
            val_fraction: 0.15,
            seed: 7,
        },
        device: Device::Cpu,
        precision: face2simpson_trainer::torch::Precision::Auto,
        pretrained: Some(PRETRAINED.to_owned()),
        promote: false,
        policy: PromotionPolicy::default(),
        concurrency: 8,
        cache_mb: None,
        cache_dir: None,
        detector: detector(),
    }
}

pub async fn train(storage: &Storage, cfg: &TrainConfig) -> Result<Outcome, TrainError> {
    train::run(storage, cfg, &Progress::logs()).await
}

/// A synthetic dataset under `datasets/test` with `per_class` training images per class.
pub async fn dataset(storage: &Storage, per_class: usize, size: u32, seed: u64) {
    face2simpson_trainer::generate_dataset(storage, "datasets/test", per_class, size, seed)
        .await
        .unwrap();
}

pub async fn keys(storage: &Storage, prefix: &str) -> Vec<String> {
    storage
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .collect()
}

/// A tiny PNG whose header claims 40000×40000 pixels.
pub fn png_bomb() -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::new(1, 1)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    let mut bomb = out.into_inner();
    bomb[16..20].copy_from_slice(&40_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&40_000u32.to_be_bytes());
    let crc = crc32fast::hash(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    bomb
}
