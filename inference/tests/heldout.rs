//! The acceptance loop: the trainer fits a synthetic dataset, the service loads that model from
//! the store and classifies held-out uploads it has never seen.
#![allow(clippy::unwrap_used)]

use artifacts::{Hyperparameters, PromotionPolicy, Storage};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
mod common;

use face2simpson_inference::{AppState, BatchConfig, app, load_model};
use face2simpson_trainer::datagen;
use face2simpson_trainer::progress::Progress;
use face2simpson_trainer::train::{self, TrainConfig};
use http_body_util::BodyExt;
use model::CLASSES;
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread")]
async fn serves_a_trained_model_that_gets_held_out_uploads_right() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let storage = Storage::open(&url).unwrap();
    face2simpson_trainer::generate_dataset(&storage, "datasets/serve", 40, 128, 77)
        .await
        .unwrap();
    let cfg = TrainConfig {
        run_id: "serve-1".into(),
        dataset: "datasets/serve".into(),
        champion: None,
        hyper: Hyperparameters {
            image_size: 96,
            epochs: 6,
            batch_size: 32,
            learning_rate: 1e-3,
            label_smoothing: 0.1,
            dropout: 0.2,
            patience: 3,
            val_fraction: 0.15,
            seed: 5,
        },
        device: tch::Device::Cpu,
        precision: face2simpson_trainer::torch::Precision::Auto,
        pretrained: Some(env!("FACE2SIMPSON_PRETRAINED").into()),
        promote: false,
        policy: PromotionPolicy::default(),
        concurrency: 8,
        cache_mb: None,
        cache_dir: None,
        detector: face2simpson_trainer::load_detector(
            common::ort_library(),
            std::path::Path::new(env!("FACE2SIMPSON_BLAZEFACE")),
        )
        .unwrap(),
    };
    train::run(&storage, &cfg, &Progress::logs()).await.unwrap();

    // The service is handed the weights' URI, as the operator does, and runs the ONNX export
    // the trainer wrote beside them.
    let (models, info) = load_model(
        &format!("{url}/runs/serve-1/model.safetensors"),
        224,
        &common::runtime(),
    )
    .await
    .unwrap();
    assert_eq!(
        info.image_size, 96,
        "the image size comes from the run's metrics.json"
    );
    // metrics.json names the ONNX artifact and its checksum; the service loaded exactly it.
    let metrics = storage.get_metrics("serve-1").await.unwrap();
    assert_eq!(metrics.onnx_key.as_deref(), Some("runs/serve-1/model.onnx"));
    assert_eq!(
        metrics.onnx_sha256.as_deref(),
        Some(info.onnx_sha256.as_str())
    );
    let state = AppState::new(common::limits(), common::detector(8));
    state
        .install(
            models,
            info,
            BatchConfig {
                max_batch: 8,
                max_wait: std::time::Duration::from_millis(5),
                queue_capacity: 64,
            },
        )
        .unwrap();

    // Every test image of the run, uploaded as a user would: the service gets them right as
    // often as the run's metrics say (one image of slack for ONNX Runtime and libtorch
    // rounding a near-tie differently).
    let mut served_right = 0usize;
    let test_keys = &metrics.test_predictions.as_ref().unwrap().keys;
    for key in test_keys {
        let class = key.split('/').nth(3).unwrap();
        let bytes = storage.get(key).await.unwrap();
        let req = Request::post("/v1/predict")
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(bytes))
            .unwrap();
        let resp = app(state.clone()).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let v: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        if v["character"] == class {
            served_right += 1;
        }
    }
    let trainer_right = (metrics.test_accuracy * test_keys.len() as f64).round() as usize;
    assert!(
        served_right.abs_diff(trainer_right) <= 1,
        "served {served_right}/{n} right, the run reports {trainer_right}/{n}",
        n = test_keys.len()
    );
    let pipeline = metrics.pipeline.as_ref().unwrap();
    assert_eq!(pipeline.version, pipeline::PIPELINE_VERSION);
    assert_eq!(pipeline.crop_margin, pipeline::CROP_MARGIN);

    // Held-out: seeds the dataset generator never used, JPEG like a phone upload.
    let per_class = 15;
    let mut correct = 0;
    for (class, name) in CLASSES.iter().enumerate() {
        for i in 0..per_class {
            let img = datagen::draw(class, 160, 9_000_000 + (class * 1000 + i) as u64);
            let bytes = datagen::encode(&img, image::ImageFormat::Jpeg);
            let req = Request::post("/v1/predict")
                .header(header::CONTENT_TYPE, "image/jpeg")
                .body(Body::from(bytes))
                .unwrap();
            let resp = app(state.clone()).oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let v: serde_json::Value =
                serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes())
                    .unwrap();
            assert_eq!(v["model"]["run_id"], "serve-1");
            if v["character"] == *name {
                correct += 1;
            }
        }
    }
    let total = per_class * CLASSES.len();
    let accuracy = f64::from(correct) / total as f64;
    assert!(
        accuracy >= 0.85,
        "{correct}/{total} held-out uploads right ({accuracy:.3})"
    );
}
