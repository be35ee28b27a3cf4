//! `face2simpson-inference validate` against a model the trainer really trained: a good model
//! passes with the trainer's accuracy, a corrupted `model.onnx` is an infrastructure failure,
//! a model expecting another input normalisation is train/serve skew, and the exit codes tell a
//! verdict from a configuration error and from a store that cannot be reached.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use artifacts::{Hyperparameters, PromotionPolicy, RunMetrics, Storage};
use face2simpson_inference::validate::{
    self, FailureReason, Thresholds, ValidateConfig, Validation, exit,
};
use face2simpson_inference::{BatchConfig, load_model};
use face2simpson_trainer::progress::Progress;
use face2simpson_trainer::train::{self, TrainConfig};
use model::onnx::Weights;
use model::preprocess::{IMAGENET_MEAN, IMAGENET_STD};
use sha2::{Digest, Sha256};

const RUN: &str = "val-1";
const DATASET: &str = "datasets/val";

/// One small run, trained once for every test here (debug-profile training is slow): 96 px,
/// 4 epochs, 32 training and 8 test images per class.
fn trained() -> &'static Path {
    static TRAINED: OnceLock<tempfile::TempDir> = OnceLock::new();
    TRAINED
        .get_or_init(|| {
            std::thread::spawn(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(train_run())
            })
            .join()
            .unwrap()
        })
        .path()
}

async fn train_run() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&format!("file://{}", dir.path().display())).unwrap();
    face2simpson_trainer::generate_dataset(&storage, DATASET, 32, 128, 31)
        .await
        .unwrap();
    let cfg = TrainConfig {
        run_id: RUN.into(),
        dataset: DATASET.into(),
        champion: None,
        hyper: Hyperparameters {
            image_size: 96,
            epochs: 4,
            batch_size: 32,
            learning_rate: 1e-3,
            label_smoothing: 0.1,
            dropout: 0.2,
            patience: 3,
            val_fraction: 0.15,
            seed: 7,
        },
        device: tch::Device::Cpu,
        precision: face2simpson_trainer::torch::Precision::Auto,
        pretrained: Some(env!("FACE2SIMPSON_PRETRAINED").into()),
        promote: false,
        policy: PromotionPolicy::default(),
        concurrency: 4,
        cache_mb: None,
        cache_dir: None,
        detector: face2simpson_trainer::load_detector(
            common::ort_library(),
            Path::new(env!("FACE2SIMPSON_BLAZEFACE")),
        )
        .unwrap(),
    };
    train::run(&storage, &cfg, &Progress::logs()).await.unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A private copy of the trained store, free to be broken.
struct Store {
    _dir: tempfile::TempDir,
    root: PathBuf,
    storage: Storage,
}

impl Store {
    fn copy() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        copy_dir(trained(), &root);
        let storage = Storage::open(&format!("file://{}", root.display())).unwrap();
        Self {
            _dir: dir,
            root,
            storage,
        }
    }

    fn url(&self, key: &str) -> String {
        format!("file://{}/{key}", self.root.display())
    }

    fn model(&self) -> String {
        self.url(&format!("runs/{RUN}/model.safetensors"))
    }

    fn out(&self) -> String {
        self.url(&format!("runs/{RUN}/validation.json"))
    }

    fn config(&self) -> ValidateConfig {
        ValidateConfig {
            model: self.model(),
            dataset: self.url(DATASET),
            out: self.out(),
            champion: None,
            thresholds: Thresholds::default(),
            image_size: 224,
            runtime: common::runtime(),
            limits: common::limits(),
            batch: BatchConfig {
                max_batch: 8,
                max_wait: std::time::Duration::from_millis(2),
                queue_capacity: 64,
            },
            detector: common::detector(8),
        }
    }

    async fn metrics(&self) -> RunMetrics {
        self.storage.get_metrics(RUN).await.unwrap()
    }

    /// Replaces the run's model.onnx; with `update_checksum` metrics.json is made to vouch
    /// for the new bytes, so the model gets past the service's checksum check.
    async fn replace_onnx(&self, bytes: Vec<u8>, update_checksum: bool) {
        let sha = format!("sha256:{:x}", Sha256::digest(&bytes));
        self.storage
            .put(&format!("runs/{RUN}/model.onnx"), bytes)
            .await
            .unwrap();
        if update_checksum {
            let key = format!("runs/{RUN}/metrics.json");
            let mut m: serde_json::Value = self.storage.get_json(&key).await.unwrap();
            m["onnx_sha256"] = serde_json::Value::String(sha);
            self.storage.put_json(&key, &m).await.unwrap();
        }
    }

    async fn written(&self) -> Validation {
        let bytes = self
            .storage
            .get(&format!("runs/{RUN}/validation.json"))
            .await
            .unwrap();
        Validation::from_json(&bytes).unwrap()
    }
}

fn reasons(v: &Validation) -> Vec<FailureReason> {
    v.failures.iter().map(|f| f.reason).collect()
}

fn binary() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_face2simpson-inference"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ORT_DYLIB_PATH", common::ort_library())
        .env("FACE_DETECTOR", env!("FACE2SIMPSON_BLAZEFACE"))
        .env("MODEL_THREADS", "1")
        .env("MAX_DECODES", "2")
        .env("RUST_LOG", "info");
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn a_good_model_passes_with_the_accuracy_the_trainer_reported() {
    let store = Store::copy();
    let metrics = store.metrics().await;
    let mut cfg = store.config();
    // The champion path: the same run scored again as the champion must score the same.
    cfg.champion = Some(store.model());
    let v = validate::run(&cfg).await.unwrap();
    assert!(v.passed, "failures: {:?}", v.failures);
    assert_eq!(validate::verdict_exit_code(&v), exit::PASSED);
    assert_eq!(
        v,
        store.written().await,
        "validation.json is what was returned"
    );

    let c = &v.candidate;
    assert_eq!(c.run_id.as_deref(), Some(RUN));
    assert_eq!(c.onnx_sha256, metrics.onnx_sha256);
    assert_eq!(c.image_size, Some(96));
    assert!(c.load_error.is_none());
    assert_eq!(
        c.test_images, metrics.counts.test,
        "{:?}",
        c.rejected_images
    );
    assert!(c.rejected_images.is_empty());
    let n = c.test_images as f64;
    let served_right = (c.served_accuracy.unwrap() * n).round() as i64;
    let trainer_right = (metrics.test_accuracy * n).round() as i64;
    assert!(
        (served_right - trainer_right).abs() <= 1,
        "served {served_right}/{n} right, the trainer reported {trainer_right}/{n}"
    );
    assert_eq!(c.trainer_test_accuracy, Some(metrics.test_accuracy));
    assert_eq!(c.per_class_recall.len(), 4);
    assert_eq!(
        c.confusion_matrix.iter().flatten().sum::<u64>(),
        c.test_images
    );
    assert_eq!(v.agreement_images, c.test_images);
    let agreement = v.agreement.unwrap();
    assert!(
        agreement >= 0.99,
        "agreement {agreement}: {:?}",
        v.disagreements
    );
    let golden = v.golden.as_ref().unwrap();
    assert_eq!(golden.status, 200);
    assert!((golden.probability_sum.unwrap() - 1.0).abs() < 1e-3);
    let lat = c.latency_ms.unwrap();
    assert!(0.0 < lat.p50_ms && lat.p50_ms <= lat.p95_ms && lat.p95_ms <= lat.max_ms);
    assert!(v.peak_rss_bytes.unwrap() > 50 << 20);

    let champion = v.champion.as_ref().unwrap();
    assert_eq!(champion.run_id.as_deref(), Some(RUN));
    assert_eq!(champion.served_accuracy, c.served_accuracy);
    assert_eq!(
        v.predictions.champion.as_ref(),
        Some(&v.predictions.candidate)
    );
    assert_eq!(v.predictions.keys.len(), c.test_images as usize);

    // The same model over budget: both budgets are infrastructure failures.
    let mut cfg = store.config();
    cfg.thresholds = Thresholds {
        max_p95_ms: Some(0.0),
        min_agreement: 0.99,
        max_memory_bytes: Some(1 << 20),
    };
    let v = validate::validate(&cfg).await.unwrap();
    assert!(!v.passed);
    assert_eq!(
        reasons(&v),
        [
            FailureReason::InfraValidationFailed,
            FailureReason::InfraValidationFailed
        ],
        "{:?}",
        v.failures
    );
    assert!(
        v.failures[0].message.contains("p95 latency"),
        "{:?}",
        v.failures
    );
    assert!(
        v.failures[1].message.contains("peak memory"),
        "{:?}",
        v.failures
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_model_onnx_fails_infra_validation_with_the_reason() {
    let store = Store::copy();
    let good = store
        .storage
        .get(&format!("runs/{RUN}/model.onnx"))
        .await
        .unwrap();
    let mut corrupt = good[..good.len() / 2].to_vec();
    corrupt[..64].fill(0xFF);

    // As the production binary runs it: metrics.json's checksum no longer matches.
    store.replace_onnx(corrupt.clone(), false).await;
    let out = binary()
        .arg("validate")
        .arg("--model")
        .arg(store.model())
        .arg("--dataset")
        .arg(store.url(DATASET))
        .arg("--out")
        .arg(store.out())
        .output()
        .await
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(i32::from(exit::FAILED)), "{log}");
    let v = store.written().await;
    assert!(!v.passed);
    assert_eq!(reasons(&v), [FailureReason::InfraValidationFailed]);
    let message = &v.failures[0].message;
    assert!(
        message.contains("does not load") && message.contains("metrics.json says"),
        "{message}"
    );
    assert!(v.candidate.load_error.is_some());
    assert_eq!(v.candidate.test_images, 0);
    assert!(v.candidate.onnx_sha256.is_none() && v.golden.is_none() && v.agreement.is_none());
    assert!(log.contains("InfraValidationFailed"), "{log}");

    // The same bytes with a checksum that vouches for them: ONNX Runtime refuses the file.
    store.replace_onnx(corrupt, true).await;
    let v = validate::run(&store.config()).await.unwrap();
    assert!(!v.passed);
    assert_eq!(reasons(&v), [FailureReason::InfraValidationFailed]);
    let message = &v.failures[0].message;
    assert!(
        message.contains("does not load") && !message.contains("metrics.json says"),
        "{message}"
    );
    assert_eq!(store.written().await, v);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_expecting_another_normalisation_is_train_serve_skew() {
    let store = Store::copy();
    let weights = store
        .storage
        .get(&format!("runs/{RUN}/model.safetensors"))
        .await
        .unwrap();
    // A graph that normalises by itself (it expects raw 0-1 RGB), served normalised input:
    // it sees every image normalised twice.
    let scale = IMAGENET_STD.map(|s| 1.0 / s);
    let shift = [0, 1, 2].map(|c| -IMAGENET_MEAN[c] / IMAGENET_STD[c]);
    let skewed = model::onnx::export_with_input_transform(
        &Weights::from_safetensors(&weights).unwrap(),
        96,
        scale,
        shift,
    )
    .unwrap();
    store.replace_onnx(skewed, true).await;
    // It loads and answers like any good model: only agreement can tell.
    let (_, info) = load_model(&store.model(), 224, &common::runtime())
        .await
        .unwrap();
    assert_eq!(info.run_id.as_deref(), Some(RUN));

    let v = validate::run(&store.config()).await.unwrap();
    assert!(!v.passed);
    assert_eq!(validate::verdict_exit_code(&v), exit::FAILED);
    assert_eq!(
        reasons(&v),
        [FailureReason::TrainServeSkew],
        "{:?}",
        v.failures
    );
    let agreement = v.agreement.unwrap();
    assert!(agreement < 0.99, "{agreement}");
    assert_eq!(
        v.disagreements.len() as u64,
        v.agreement_images - (agreement * v.agreement_images as f64).round() as u64
    );
    assert!(v.failures[0].message.contains("agree with the trainer"));
    assert_eq!(v.golden.as_ref().unwrap().status, 200);
    assert_eq!(store.written().await, v);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_configuration_and_an_unreachable_store_have_their_own_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::model_uri(dir.path()).await;
    let out = format!("file://{}/out/validation.json", dir.path().display());

    // No test images under the dataset prefix: configuration, nothing to validate.
    let empty = format!("file://{}/datasets/none", dir.path().display());
    let status = binary()
        .args([
            "validate",
            "--model",
            &model,
            "--dataset",
            &empty,
            "--out",
            &out,
        ])
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(i32::from(exit::CONFIG)));
    // A bad flag is clap's code, the same.
    let status = binary()
        .args([
            "validate",
            "--model",
            &model,
            "--dataset",
            &empty,
            "--out",
            &out,
        ])
        .args(["--min-agreement", "2"])
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(i32::from(exit::CONFIG)));

    // The dataset's store does not answer: a retry may pass.
    let status = binary()
        .args(["validate", "--model", &model, "--out", &out])
        .args(["--dataset", "s3://bucket/datasets/current"])
        .env("AWS_ENDPOINT", "http://127.0.0.1:9")
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(i32::from(exit::STORE)));
    assert!(!dir.path().join("out/validation.json").exists());
}
