//! One path from photo bytes to model input: what the trainer trains and tests on is what the
//! service classifies, byte for byte, on photos with real faces.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use artifacts::Storage;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use face2simpson_inference::{AppState, Forward, ModelInfo, Probabilities, app};
use face2simpson_trainer::cache::CropCache;
use face2simpson_trainer::dataset::{self, LoadOptions};
use face2simpson_trainer::face_index::FaceIndex;
use image::imageops::FilterType;
use model::{CLASSES, Preprocessor};
use tower::ServiceExt;

const SIZE: u32 = 96;

/// A "model" that records every input it is given and answers a fixed verdict.
struct Recorder(Arc<Mutex<Vec<Vec<f32>>>>);

impl Forward for Recorder {
    fn forward(
        &mut self,
        batch: &[f32],
        n: usize,
        size: usize,
    ) -> Result<Vec<Probabilities>, String> {
        let per = 3 * size * size;
        let mut seen = self.0.lock().unwrap();
        for i in 0..n {
            seen.push(batch[i * per..(i + 1) * per].to_vec());
        }
        Ok(vec![[0.25; CLASSES.len()]; n])
    }
}

/// The astronaut as a phone stores a landscape snapshot: small in a wide frame, off centre,
/// JPEG, the pixels turned sideways and EXIF orientation 6 saying how to turn them back.
fn phone_photo() -> Vec<u8> {
    let portrait = image::load_from_memory(common::ASTRONAUT)
        .unwrap()
        .into_rgb8();
    let small = image::imageops::resize(&portrait, 440, 440, FilterType::Triangle);
    let mut scene = image::RgbImage::from_fn(880, 560, |x, y| {
        image::Rgb([(60 + x / 8) as u8, (90 + y / 6) as u8, 140])
    });
    image::imageops::overlay(&mut scene, &small, 400, 120);
    let stored = image::imageops::rotate270(&scene);
    common::with_exif_orientation(&common::jpeg(&stored), 6)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_training_input_is_the_served_input_byte_for_byte() {
    let storage = Storage::open("memory:///").unwrap();
    face2simpson_trainer::generate_dataset(&storage, "datasets/real", 2, 64, 3)
        .await
        .unwrap();
    let photos = [
        (
            "datasets/real/test/marge/astronaut.png",
            common::ASTRONAUT.to_vec(),
        ),
        ("datasets/real/test/lisa/phone.jpg", phone_photo()),
    ];
    for (key, bytes) in &photos {
        storage.put(key, bytes.clone()).await.unwrap();
    }

    // The trainer's side: the dataset loader, with the trainer's detector.
    let pre = Preprocessor::new(SIZE);
    let listing = dataset::list(&storage, "datasets/real").await.unwrap();
    let options = LoadOptions {
        cache: Arc::new(CropCache::new(u64::MAX, &std::env::temp_dir())),
        pre,
        detector: face2simpson_trainer::load_detector(
            common::ort_library(),
            std::path::Path::new(env!("FACE2SIMPSON_BLAZEFACE")),
        )
        .unwrap(),
        faces: Arc::new(FaceIndex::empty("cache/faces/test.json".into())),
        val_fraction: 0.0,
        seed: 1,
        concurrency: 4,
    };
    let data = dataset::load(&storage, "datasets/real", listing, options, || {})
        .await
        .unwrap();

    // The service's side: the real request path, with a model that records its inputs.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let state = AppState::new(common::limits(), common::detector(8));
    let info = ModelInfo {
        run_id: Some("recorder".into()),
        test_accuracy: None,
        per_class_accuracy: None,
        trained_at: None,
        image_size: SIZE,
        classes: CLASSES.iter().map(|c| c.to_string()).collect(),
        onnx_sha256: "sha256:00".into(),
        pipeline_version: Some(pipeline::PIPELINE_VERSION),
        card: Default::default(),
    };
    state
        .install(
            vec![Box::new(Recorder(seen.clone())) as Box<dyn Forward>],
            info,
            common::batch_config(),
        )
        .unwrap();

    for (key, bytes) in photos {
        let sample = data.test.iter().find(|s| s.key == key).unwrap();
        assert!(sample.face.is_some(), "{key}: the trainer found no face");
        let trained = pre.eval(&sample.image.to_image().unwrap());

        seen.lock().unwrap().clear();
        let req = Request::post("/v1/predict")
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(bytes))
            .unwrap();
        let resp = app(state.clone()).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{key}");
        let seen = seen.lock().unwrap();
        assert!(!seen.is_empty(), "{key}: the service classified nothing");
        // The service's headline verdict is its first (largest) face's.
        let served = &seen[0];
        assert_eq!(served.len(), trained.len(), "{key}");
        let differing = served
            .iter()
            .zip(&trained)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differing,
            0,
            "{key}: {differing} of {} input values differ between training and serving",
            trained.len()
        );
    }
}
