//! A real (randomly initialised, 32 px) model served from a `file://` store.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use artifacts::Storage;
use face2simpson_inference::batcher::BatchConfig;
use face2simpson_inference::{AppState, Limits, load_model};
use model::Classifier;

pub const IMAGE_SIZE: u32 = 32;
pub const ASTRONAUT: &[u8] = include_bytes!("../fixtures/astronaut.png");

pub fn metrics_json(run_id: &str) -> serde_json::Value {
    serde_json::json!({
        "schema_version": 1, "run_id": run_id, "trainer_version": "test", "test_accuracy": 0.75,
        "champion_run_id": null, "champion_test_accuracy": null,
        "classes": ["homer", "marge", "bart", "lisa"],
        "per_class_accuracy": {"homer": 0.75, "marge": 0.75, "bart": 0.75, "lisa": 0.75},
        "confusion_matrix": [[3,1,0,0],[0,3,1,0],[0,0,3,1],[1,0,0,3]],
        "counts": {"train": 10, "val": 2, "test": 16}, "skipped_files": [],
        "epochs_run": 1, "best_epoch": 1, "history": [],
        "hyperparameters": {"image_size": IMAGE_SIZE, "epochs": 1, "batch_size": 32, "learning_rate": 0.001,
            "label_smoothing": 0.1, "dropout": 0.2, "patience": 3, "val_fraction": 0.15, "seed": 1},
        "dataset": "datasets/test", "dataset_fingerprint": "sha256:00", "weights_key": format!("runs/{run_id}/model.safetensors"),
        "pretrained": null, "started_at": "2026-11-29T10:00:00Z", "finished_at": "2026-11-29T10:01:00Z", "device": "cpu"
    })
}

/// Writes a model and its metrics into a temporary store and returns the weights' URL.
pub async fn model_uri(dir: &std::path::Path) -> String {
    let storage = Storage::open(&format!("file://{}", dir.display())).unwrap();
    tch::manual_seed(3);
    let net = Classifier::new(tch::Device::Cpu, 0.0);
    storage
        .put("runs/r1/model.safetensors", net.to_safetensors().unwrap())
        .await
        .unwrap();
    storage
        .put(
            "runs/r1/metrics.json",
            serde_json::to_vec(&metrics_json("r1")).unwrap(),
        )
        .await
        .unwrap();
    format!("file://{}/runs/r1/model.safetensors", dir.display())
}

pub fn batch_config() -> BatchConfig {
    BatchConfig {
        max_batch: 8,
        max_wait: Duration::from_millis(20),
        queue_capacity: 32,
    }
}

/// A ready service with the test model.
pub async fn ready_state(dir: &std::path::Path, limits: Limits) -> AppState {
    let uri = model_uri(dir).await;
    let (net, info) = load_model(&uri, tch::Device::Cpu, 224).await.unwrap();
    let state = AppState::new(limits);
    state.install(net, info, batch_config());
    state
}

pub fn png(img: &image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A tiny PNG whose header claims 40000×40000 pixels.
pub fn png_bomb() -> Vec<u8> {
    let mut bomb = png(&image::RgbImage::new(1, 1));
    bomb[16..20].copy_from_slice(&40_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&40_000u32.to_be_bytes());
    let mut crc = 0xffff_ffffu32;
    for &b in &bomb[12..29] {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    bomb[29..33].copy_from_slice(&(!crc).to_be_bytes());
    bomb
}
