//! End-to-end training runs against real stores.
#![allow(clippy::unwrap_used)]

mod common;

use artifacts::{Storage, layout};
use common::{config, dataset, detector, keys, png_bomb, train};
use face2simpson_trainer::train::{TrainConfig, TrainError};

/// The acceptance bar: a dataset the trainer has never seen, 96 px, 6 CPU epochs, ≥ 90 %.
#[tokio::test(flavor = "multi_thread")]
async fn learns_an_unseen_synthetic_dataset_to_90_percent() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&format!("file://{}", dir.path().display())).unwrap();
    dataset(&storage, 40, 128, 9_001).await;
    let out = train(&storage, &config("accept-1", 96, 6)).await.unwrap();
    let m = &out.metrics;
    assert!(
        m.test_accuracy >= 0.9,
        "test accuracy {} < 0.9",
        m.test_accuracy
    );
    let first = m.history.first().unwrap().train_loss;
    let last = m.history.last().unwrap().train_loss;
    assert!(
        last < first,
        "training loss did not fall: {first} -> {last}"
    );
    assert_eq!(m.counts.test, 40);
    assert_eq!(m.counts.train + m.counts.val, 160);
    // Both artifacts landed, metrics last.
    assert!(dir.path().join("runs/accept-1/model.safetensors").exists());
    let on_disk = storage.get_metrics("accept-1").await.unwrap();
    assert_eq!(&on_disk, m);
    // The weights reproduce the reported accuracy when loaded afresh.
    let mut net = face2simpson_trainer::torch::Classifier::new(tch::Device::Cpu, 0.2);
    net.load_weights(&storage.get(&layout::run_weights("accept-1")).await.unwrap())
        .unwrap();
}

/// A tiny run on a store with every kind of broken file: they are skipped, listed with a reason,
/// and the model still learns.
#[tokio::test(flavor = "multi_thread")]
async fn skips_and_reports_bad_files_and_still_learns() {
    let storage = Storage::open("memory:///").unwrap();
    dataset(&storage, 12, 64, 5).await;
    let good = storage
        .get("datasets/test/train/homer/00000.png")
        .await
        .unwrap();
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("datasets/test/train/homer/zero.jpg", vec![]),
        (
            "datasets/test/train/marge/truncated.png",
            good[..good.len() / 3].to_vec(),
        ),
        (
            "datasets/test/train/bart/corrupt.jpg",
            b"\xff\xd8\xff\xe0garbage-not-a-jpeg".to_vec(),
        ),
        (
            "datasets/test/train/lisa/notes.webp",
            b"just some text".to_vec(),
        ),
        ("datasets/test/test/lisa/bomb.png", png_bomb()),
        ("datasets/test/train/bart/README.txt", b"hello".to_vec()),
    ];
    for (key, bytes) in &bad {
        storage.put(key, bytes.clone()).await.unwrap();
    }
    // Four epochs: two (four Adam steps on 40 images) sometimes stayed at chance.
    let out = train(&storage, &config("tiny-1", 48, 4)).await.unwrap();
    let m = &out.metrics;
    let skipped: Vec<&str> = m.skipped_files.iter().map(|s| s.path.as_str()).collect();
    let mut expected: Vec<&str> = bad.iter().map(|(k, _)| *k).collect();
    expected.sort();
    assert_eq!(skipped, expected);
    assert!(m.skipped_files.iter().all(|s| !s.reason.is_empty()));
    let reason = |k: &str| {
        m.skipped_files
            .iter()
            .find(|s| s.path.ends_with(k))
            .unwrap()
            .reason
            .clone()
    };
    assert!(
        reason("zero.jpg").contains("empty"),
        "{}",
        reason("zero.jpg")
    );
    assert!(
        reason("bomb.png").contains("40000x40000"),
        "{}",
        reason("bomb.png")
    );
    assert!(
        reason("notes.webp").contains("not a supported image"),
        "{}",
        reason("notes.webp")
    );
    // Learned something: the loss fell and accuracy beats chance (25 %).
    assert!(
        m.history[1].train_loss < m.history[0].train_loss,
        "{:?}",
        m.history
    );
    assert!(m.test_accuracy > 0.25, "test accuracy {}", m.test_accuracy);
    assert_eq!(m.epochs_run, 4);
    assert_eq!(
        m.confusion_matrix.iter().flatten().sum::<u64>(),
        m.counts.test
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn champion_is_rescored_on_the_same_test_set_and_gated() {
    let storage = Storage::open("memory:///").unwrap();
    dataset(&storage, 12, 64, 11).await;
    let mut first = config("gate-1", 48, 2);
    first.promote = true;
    let out1 = train(&storage, &first).await.unwrap();
    assert_eq!(out1.decision.as_ref().unwrap().kind(), "FirstModel");
    let champion = storage.get_champion().await.unwrap().unwrap();
    assert_eq!(champion.run_id, "gate-1");
    assert_eq!(champion.weights_key, "runs/gate-1/model.safetensors");

    // Without --champion, --promote compares against champion.json's run.
    let mut second = config("gate-2", 48, 2);
    second.promote = true;
    second.hyper.seed = 8;
    let out2 = train(&storage, &second).await.unwrap();
    let m = &out2.metrics;
    assert_eq!(m.champion_run_id.as_deref(), Some("gate-1"));
    let rescored = m.champion_test_accuracy.unwrap();
    assert!(
        (rescored - out1.metrics.test_accuracy).abs() <= 0.02,
        "champion re-scored at {rescored}, its own run said {}",
        out1.metrics.test_accuracy
    );
    let decision = out2.decision.unwrap();
    let now = storage.get_champion().await.unwrap().unwrap();
    if decision.promotes() {
        assert_eq!(now.run_id, "gate-2");
        assert!(m.test_accuracy > rescored);
    } else {
        assert_eq!(
            now.run_id, "gate-1",
            "a rejected run must not move the champion"
        );
        assert!(m.test_accuracy <= rescored);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_completed_run_is_not_trained_again() {
    let storage = Storage::open("memory:///").unwrap();
    dataset(&storage, 6, 48, 3).await;
    let cfg = config("once", 32, 1);
    let first = train(&storage, &cfg).await.unwrap();
    assert!(!first.already_complete);
    let again = train(&storage, &cfg).await.unwrap();
    assert!(again.already_complete);
    assert_eq!(again.metrics, first.metrics);

    // Identical bytes uploaded again (new ETags, so a new listing fingerprint): the content
    // fingerprint says it is the same data, and the run is still the same run.
    let key = "datasets/test/train/homer/00000.png";
    let bytes = storage.get(key).await.unwrap();
    storage.put(key, bytes.clone()).await.unwrap();
    let reuploaded = train(&storage, &cfg).await.unwrap();
    assert!(reuploaded.already_complete);

    // Other hyperparameters under the same run id: refused, not answered with the old metrics.
    let mut other = cfg.clone();
    other.hyper.learning_rate = 3e-4;
    let err = train(&storage, &other).await.unwrap_err();
    assert!(matches!(err, TrainError::Config(_)), "{err}");
    assert!(
        err.to_string().contains("learning_rate 0.001 (now 0.0003)"),
        "{err}"
    );

    // Another precision asked explicitly, or another backbone: refused as well (`auto` is
    // whatever it resolved to on the machine the run had).
    let mut other = cfg.clone();
    other.precision = match first.metrics.precision.as_deref() {
        Some("bf16") => face2simpson_trainer::torch::Precision::Fp32,
        _ => face2simpson_trainer::torch::Precision::Bf16,
    };
    let err = train(&storage, &other).await.unwrap_err();
    assert!(matches!(err, TrainError::Config(_)), "{err}");
    assert!(err.to_string().contains("precision"), "{err}");
    let mut other = cfg.clone();
    other.pretrained = None;
    let err = train(&storage, &other).await.unwrap_err();
    assert!(err.to_string().contains("pretrained backbone"), "{err}");

    // Other data under the same run id: refused too.
    storage
        .put("datasets/test/train/homer/new.png", bytes)
        .await
        .unwrap();
    let err = train(&storage, &cfg).await.unwrap_err();
    assert!(matches!(err, TrainError::Config(_)), "{err}");
    assert!(err.to_string().contains("another dataset content"), "{err}");
    // Neither attempt touched the stored result.
    assert_eq!(storage.get_metrics("once").await.unwrap(), first.metrics);
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// A training image whose bytes are in the test split is dropped (the model would be scored
/// on a picture it learned), listed with the test file it copies; and metrics.json carries
/// what an audit needs: build stamp, digests of every input and output, per-class scores,
/// predictions per test image.
#[tokio::test(flavor = "multi_thread")]
async fn test_duplicates_are_dropped_and_the_run_is_auditable() {
    let storage = Storage::open("memory:///").unwrap();
    dataset(&storage, 6, 48, 21).await;
    let copy = storage
        .get("datasets/test/test/homer/00001.jpg")
        .await
        .unwrap();
    for key in [
        "datasets/test/train/homer/copy.jpg",
        "datasets/test/train/bart/mislabelled-copy.jpg",
    ] {
        storage.put(key, copy.clone()).await.unwrap();
    }
    let out = train(&storage, &config("dedup", 32, 1)).await.unwrap();
    let m = &out.metrics;
    let dropped: Vec<(&str, &str)> = m
        .skipped_files
        .iter()
        .map(|s| (s.path.as_str(), s.reason.as_str()))
        .collect();
    assert_eq!(
        dropped,
        [
            (
                "datasets/test/train/bart/mislabelled-copy.jpg",
                "duplicate of test/homer/00001.jpg"
            ),
            (
                "datasets/test/train/homer/copy.jpg",
                "duplicate of test/homer/00001.jpg"
            ),
        ]
    );
    assert_eq!(m.counts.duplicates_dropped, 2);
    assert_eq!(m.counts.train + m.counts.val, 24, "{:?}", m.counts);
    assert_eq!(m.counts.test, 8);

    // The audit fields.
    assert!(
        m.trainer_version
            .starts_with(concat!(env!("CARGO_PKG_VERSION"), "+")),
        "{}",
        m.trainer_version
    );
    assert_eq!(
        m.trainer_build.as_ref().unwrap().revision,
        face2simpson_trainer::build_info::REVISION
    );
    let weights = storage.get("runs/dedup/model.safetensors").await.unwrap();
    assert_eq!(m.weights_sha256.as_deref(), Some(sha256(&weights).as_str()));
    let onnx = storage.get("runs/dedup/model.onnx").await.unwrap();
    assert_eq!(m.onnx_sha256.as_deref(), Some(sha256(&onnx).as_str()));
    let pretrained = std::fs::read(common::PRETRAINED).unwrap();
    assert_eq!(
        m.pretrained_sha256.as_deref(),
        Some(sha256(&pretrained).as_str())
    );
    assert!(m.test_loss.unwrap() > 0.0);
    let per_class = m.per_class.as_ref().unwrap();
    assert_eq!(per_class.len(), 4);
    assert!(per_class.values().all(|c| c.support == 2));
    let macro_f1 = m.macro_f1.unwrap();
    assert!((0.0..=1.0).contains(&macro_f1));
    let p = m.test_predictions.as_ref().unwrap();
    assert_eq!(Some(&p.test_fingerprint), m.test_fingerprint.as_ref());
    assert_ne!(m.test_fingerprint.as_ref(), Some(&m.dataset_fingerprint));
    assert!(m.listing_fingerprint.is_some());
    assert_eq!(p.keys.len(), 8);
    assert!(p.keys.windows(2).all(|w| w[0] < w[1]), "keys in test order");
    assert!(p.champion.is_none());
    let correct = p
        .labels
        .iter()
        .zip(&p.challenger)
        .filter(|(a, b)| a == b)
        .count();
    assert_eq!(correct as f64 / 8.0, m.test_accuracy);
}

/// A champion trained at 32 px is re-scored on 32 px inputs by a 48 px challenger: the same
/// loss and predictions its own run measured. Without its metrics.json (older runs) the run's
/// own size is used.
#[tokio::test(flavor = "multi_thread")]
async fn champion_is_rescored_at_its_own_image_size() {
    let storage = Storage::open("memory:///").unwrap();
    dataset(&storage, 6, 64, 31).await;
    let champion = train(&storage, &config("small", 32, 1))
        .await
        .unwrap()
        .metrics;

    let mut cfg = config("larger", 48, 1);
    cfg.champion = Some("small".into());
    let m = train(&storage, &cfg).await.unwrap().metrics;
    assert_eq!(m.champion_image_size, Some(32));
    assert_eq!(m.champion_test_accuracy, Some(champion.test_accuracy));
    let (own, rescored) = (champion.test_loss.unwrap(), m.champion_test_loss.unwrap());
    assert!(
        (own - rescored).abs() < 1e-5,
        "champion's own test loss {own}, re-scored {rescored}"
    );
    assert_eq!(
        m.test_predictions.as_ref().unwrap().champion.as_ref(),
        Some(&champion.test_predictions.as_ref().unwrap().challenger)
    );

    storage.delete("runs/small/metrics.json").await.unwrap();
    let mut cfg = config("fallback", 48, 1);
    cfg.champion = Some("small".into());
    let m = train(&storage, &cfg).await.unwrap().metrics;
    assert_eq!(m.champion_image_size, Some(48));
}

/// `--promote` on a run that already completed applies the gate again: a crash between
/// metrics.json and champion.json (here: a policy that rejected, then one that accepts) does
/// not lose the promotion; and a minimum test-set size holds back a first model.
#[tokio::test(flavor = "multi_thread")]
async fn promote_on_a_completed_run_reapplies_the_gate() {
    let storage = Storage::open("memory:///").unwrap();
    dataset(&storage, 6, 48, 41).await;
    let mut cfg = config("regate", 32, 1);
    cfg.promote = true;
    cfg.policy.min_test_images = 9;
    let out = train(&storage, &cfg).await.unwrap();
    let d = out.decision.unwrap();
    assert_eq!(d.kind(), "Reject", "{d}");
    assert!(d.reason().contains("8 test images"), "{d}");
    assert!(storage.get_champion().await.unwrap().is_none());

    cfg.policy.min_test_images = 8;
    let again = train(&storage, &cfg).await.unwrap();
    assert!(again.already_complete);
    assert_eq!(again.decision.unwrap().kind(), "FirstModel");
    let champion = storage.get_champion().await.unwrap().unwrap();
    assert_eq!(champion.run_id, "regate");
    // Once more: already the champion, nothing rewritten.
    train(&storage, &cfg).await.unwrap();
    assert_eq!(storage.get_champion().await.unwrap().unwrap(), champion);
}

async fn assert_fails_before_training(storage: &Storage, cfg: &TrainConfig, needle: &str) {
    let err = train(storage, cfg).await.unwrap_err();
    assert!(
        err.to_string().contains(needle),
        "expected {needle:?} in: {err}"
    );
    assert!(
        keys(storage, "runs").await.is_empty(),
        "a failed run left objects behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn layout_errors_stop_the_run_before_training() {
    let cfg = config("layout", 32, 1);
    let empty = Storage::open("memory:///").unwrap();
    assert_fails_before_training(&empty, &cfg, "holds no objects").await;

    let unknown = Storage::open("memory:///").unwrap();
    dataset(&unknown, 4, 32, 1).await;
    unknown
        .put("datasets/test/train/milhouse/1.png", vec![1])
        .await
        .unwrap();
    assert_fails_before_training(&unknown, &cfg, "unknown class folder train/milhouse").await;

    let no_lisa = Storage::open("memory:///").unwrap();
    dataset(&no_lisa, 4, 32, 1).await;
    for key in keys(&no_lisa, "datasets/test/test/lisa").await {
        no_lisa.delete(&key).await.unwrap();
    }
    assert_fails_before_training(&no_lisa, &cfg, "class lisa of split test").await;

    let no_test = Storage::open("memory:///").unwrap();
    dataset(&no_test, 4, 32, 1).await;
    for key in keys(&no_test, "datasets/test/test").await {
        no_test.delete(&key).await.unwrap();
    }
    assert_fails_before_training(&no_test, &cfg, "split test of datasets/test is empty").await;

    // A class whose only images are broken is empty too.
    let broken = Storage::open("memory:///").unwrap();
    dataset(&broken, 4, 32, 1).await;
    for key in keys(&broken, "datasets/test/train/bart").await {
        broken.put(&key, b"broken".to_vec()).await.unwrap();
    }
    assert_fails_before_training(&broken, &cfg, "class bart of split train").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_leave_no_metrics() {
    let storage = Storage::open("memory:///").unwrap();
    dataset(&storage, 4, 32, 1).await;

    let mut missing_champion = config("r-champ", 32, 1);
    missing_champion.champion = Some("nope".into());
    assert_fails_before_training(
        &storage,
        &missing_champion,
        "champion nope cannot be re-scored",
    )
    .await;

    let mut missing_pretrained = config("r-pre", 32, 1);
    missing_pretrained.pretrained = Some("pretrained/absent.pth".into());
    assert_fails_before_training(&storage, &missing_pretrained, "--pretrained none").await;

    storage
        .put("pretrained/garbage.pth", b"\x80\x02garbage".to_vec())
        .await
        .unwrap();
    let mut bad_pretrained = config("r-bad", 32, 1);
    bad_pretrained.pretrained = Some("pretrained/garbage.pth".into());
    assert_fails_before_training(&storage, &bad_pretrained, "pretrained backbone").await;

    // Weights the run was given that cannot be read are bad input (exit 2), told apart from
    // weights the run made itself.
    let err = train(&storage, &bad_pretrained).await.unwrap_err();
    assert!(matches!(err, TrainError::UnusableWeights { .. }), "{err}");
    storage
        .put("runs/garbage/model.safetensors", b"not weights".to_vec())
        .await
        .unwrap();
    let mut bad_champion = config("r-bad-champ", 32, 1);
    bad_champion.champion = Some("garbage".into());
    let err = train(&storage, &bad_champion).await.unwrap_err();
    assert!(matches!(err, TrainError::UnusableWeights { .. }), "{err}");

    let mut bad_run_id = config("../escape", 32, 1);
    bad_run_id.pretrained = None;
    let err = train(&storage, &bad_run_id).await.unwrap_err();
    assert!(matches!(err, TrainError::Config(_)), "{err}");
}

/// A run that dies after training (here: metrics.json cannot be written, a directory sits where
/// it goes) leaves its last checkpoint; the same run id restarted resumes from it instead of
/// training again (the epoch records, timings included, are the saved ones), and the
/// checkpoint is deleted once the run completes.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_run_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&format!("file://{}", dir.path().display())).unwrap();
    dataset(&storage, 8, 48, 3).await;
    let mut cfg = config("resume-1", 48, 2);
    cfg.pretrained = None;
    let blocker = dir.path().join("runs/resume-1/metrics.json");
    std::fs::create_dir_all(blocker.join("in-the-way")).unwrap();
    train(&storage, &cfg).await.unwrap_err();
    let state: serde_json::Value = storage
        .get_json("runs/resume-1/checkpoint/state.json")
        .await
        .unwrap();
    assert_eq!(state["state"]["epoch"], 2);
    let saved: Vec<artifacts::EpochRecord> =
        serde_json::from_value(state["state"]["records"].clone()).unwrap();
    assert_eq!(saved.len(), 2);

    std::fs::remove_dir_all(&blocker).unwrap();
    let out = train(&storage, &cfg).await.unwrap();
    assert_eq!(out.metrics.history, saved, "the run trained again");
    assert!(
        keys(&storage, "runs/resume-1/checkpoint").await.is_empty(),
        "the checkpoint outlived the run"
    );
}

/// With a memory budget of zero every decoded image goes to the local-disk cache: the samples
/// read back byte for byte as the in-memory ones, and a whole run trains from them and leaves
/// nothing behind in the cache directory (the spill file is unlinked).
#[tokio::test(flavor = "multi_thread")]
async fn a_run_over_its_image_memory_budget_trains_from_local_disk() {
    use face2simpson_trainer::cache::CropCache;
    use face2simpson_trainer::dataset::{self as ds, LoadOptions};
    use std::sync::Arc;

    let storage = Storage::open("memory:///").unwrap();
    dataset(&storage, 8, 48, 4).await;
    let spill_dir = tempfile::tempdir().unwrap();
    let load = |budget: u64| {
        let storage = storage.clone();
        let cache = Arc::new(CropCache::new(budget, spill_dir.path()));
        async move {
            let listing = ds::list(&storage, "datasets/test").await.unwrap();
            let options = LoadOptions {
                cache: cache.clone(),
                pre: model::Preprocessor::new(48),
                detector: detector(),
                faces: Arc::new(face2simpson_trainer::face_index::FaceIndex::empty(
                    "cache/faces/test.json".into(),
                )),
                val_fraction: 0.15,
                seed: 7,
                concurrency: 4,
            };
            let data = ds::load(&storage, "datasets/test", listing, options, || {})
                .await
                .unwrap();
            (data, cache.usage())
        }
    };
    let (in_memory, _) = load(u64::MAX).await;
    let (on_disk, usage) = load(0).await;
    assert_eq!(usage.memory_bytes, 0);
    assert_eq!(
        usage.disk_bytes,
        40 * 3 * 48 * 48,
        "32 train + 8 test images"
    );
    let bytes = |s: &ds::Sample| s.image.to_image().unwrap().into_raw();
    for (a, b) in in_memory
        .train
        .iter()
        .chain(&in_memory.test)
        .zip(on_disk.train.iter().chain(&on_disk.test))
    {
        assert_eq!(a.key, b.key);
        assert!(!b.image.in_memory());
        assert_eq!(bytes(a), bytes(b), "{}", a.key);
    }

    let mut cfg = config("cache-disk", 48, 1);
    cfg.pretrained = None;
    cfg.cache_mb = Some(0);
    cfg.cache_dir = Some(spill_dir.path().to_path_buf());
    train(&storage, &cfg).await.unwrap();
    assert_eq!(std::fs::read_dir(spill_dir.path()).unwrap().count(), 0);
}

/// A checkpoint that cannot be used (here a truncated `state.json`) is ignored with a warning:
/// the run trains from the start, completes, and clears it.
#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_checkpoint_is_ignored() {
    let storage = Storage::open("memory:///").unwrap();
    dataset(&storage, 8, 48, 5).await;
    storage
        .put(
            "runs/corrupt-1/checkpoint/state.json",
            b"{\"guard\": {".to_vec(),
        )
        .await
        .unwrap();
    let mut cfg = config("corrupt-1", 48, 1);
    cfg.pretrained = None;
    let out = train(&storage, &cfg).await.unwrap();
    assert_eq!(out.metrics.history.len(), 1);
    assert!(keys(&storage, "runs/corrupt-1/checkpoint").await.is_empty());
}
