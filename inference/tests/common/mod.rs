//! A real (randomly initialised, 32 px) ONNX model served from a `file://` store, and the real
//! BlazeFace detector.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use artifacts::Storage;
use face2simpson_inference::faces::FaceDetector;
use face2simpson_inference::{
    AppState, BatchConfig, Limits, RuntimeConfig, load_detector, load_model,
};
use model::onnx::Weights;

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
        "pretrained": "s3://internal-bucket/pretrained/mobilenet_v2.pth",
        "started_at": "2026-11-29T10:00:00Z", "finished_at": "2026-11-29T10:01:00Z", "device": "cpu"
    })
}

/// Writes an ONNX model (no safetensors: the service must not need them) and its metrics into a
/// temporary store and returns the weights' URL, as the operator hands it over.
pub async fn model_uri(dir: &Path) -> String {
    let storage = Storage::open(&format!("file://{}", dir.display())).unwrap();
    let onnx = model::onnx::export(&Weights::random(3, 4), IMAGE_SIZE).unwrap();
    storage.put("runs/r1/model.onnx", onnx).await.unwrap();
    storage
        .put(
            "runs/r1/metrics.json",
            serde_json::to_vec(&metrics_json("r1")).unwrap(),
        )
        .await
        .unwrap();
    format!("file://{}/runs/r1/model.safetensors", dir.display())
}

pub fn ort_library() -> &'static Path {
    Path::new(env!("ORT_DYLIB_PATH"))
}

pub fn runtime() -> RuntimeConfig {
    RuntimeConfig {
        library: ort_library().to_owned(),
        workers: 1,
        threads: 1,
    }
}

pub fn detector(max_faces: usize) -> Arc<FaceDetector> {
    Arc::new(
        load_detector(
            ort_library(),
            Path::new(env!("FACE2SIMPSON_BLAZEFACE")),
            2,
            max_faces,
        )
        .unwrap(),
    )
}

pub fn batch_config() -> BatchConfig {
    BatchConfig {
        max_batch: 8,
        max_wait: Duration::from_millis(20),
        queue_capacity: 32,
    }
}

pub fn limits() -> Limits {
    Limits {
        max_decodes: 4,
        max_waiting: 16,
        // Debug builds are slow enough that a few concurrent requests exceed the default
        // queue-wait budget; tests of other behaviour must not depend on that. The budget has
        // its own tests (src/admission.rs, tests/api.rs).
        max_queue_wait: None,
        ..Limits::default()
    }
}

/// A ready service with the test model.
pub async fn ready_state(dir: &Path, limits: Limits) -> AppState {
    ready_state_with(dir, limits, detector(8)).await
}

pub async fn ready_state_with(dir: &Path, limits: Limits, detector: Arc<FaceDetector>) -> AppState {
    let uri = model_uri(dir).await;
    let (models, info) = load_model(&uri, 224, &runtime()).await.unwrap();
    let state = AppState::new(limits, detector);
    state.install(models, info, batch_config()).unwrap();
    state
}

pub fn png(img: &image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub fn jpeg(img: &image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

/// `jpeg` with an EXIF APP1 segment carrying `orientation` inserted after the SOI marker.
pub fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes());
    tiff.extend_from_slice(&0x0112u16.to_be_bytes());
    tiff.extend_from_slice(&3u16.to_be_bytes());
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes());
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A tiny PNG whose header claims `width`×`height` pixels (a decompression bomb's header).
pub fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut bomb = png(&image::RgbImage::new(1, 1));
    bomb[16..20].copy_from_slice(&width.to_be_bytes());
    bomb[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32fast::hash(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    bomb
}

/// A tiny PNG whose header claims 40000×40000 pixels.
pub fn png_bomb() -> Vec<u8> {
    png_claiming(40_000, 40_000)
}
