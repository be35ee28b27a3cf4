//! `metrics.json` (one per run) and `champion.json` (embedded mode). See docs/metrics.md.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Bumped when a field changes meaning; readers refuse versions they do not know.
pub const METRICS_SCHEMA_VERSION: u32 = 1;

/// Everything needed to audit a run and the gate decision taken on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMetrics {
    pub schema_version: u32,
    pub run_id: String,
    /// `<namespace>/<name>` of the SimpsonModel the run was made for; absent in the
    /// cluster-free mode and in runs made before runs were keyed per model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// `<crate version>+<12 hex digits of the git revision>` (`0.1.0+unknown` when the build
    /// knew no revision); plain `0.1.0` in runs made before builds were stamped.
    pub trainer_version: String,
    /// How the trainer binary was built. Absent in older runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainer_build: Option<TrainerBuild>,
    /// Fraction of the test split classified correctly, 0–1.
    pub test_accuracy: f64,
    /// Mean cross-entropy (with the run's label smoothing) over the test split. Absent in older runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_loss: Option<f64>,
    /// The champion this run was compared with, if any.
    #[serde(default)]
    pub champion_run_id: Option<String>,
    /// The champion's accuracy re-measured by this run on this run's test split.
    #[serde(default)]
    pub champion_test_accuracy: Option<f64>,
    /// The champion's test loss in that re-scoring. Absent in older runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub champion_test_loss: Option<f64>,
    /// The image size the champion was re-scored at: its own `hyperparameters.image_size`
    /// (from its metrics.json), or this run's when the champion has no readable metrics.json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub champion_image_size: Option<u32>,
    /// Class names in the order of the model's outputs.
    pub classes: Vec<String>,
    pub per_class_accuracy: BTreeMap<String, f64>,
    /// Precision, recall, F1 and support per class on the test split. Absent in older runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_class: Option<BTreeMap<String, ClassScores>>,
    /// Unweighted mean of the per-class F1 scores. Absent in older runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macro_f1: Option<f64>,
    /// `confusion_matrix[true][predicted]`, indices into `classes`.
    pub confusion_matrix: Vec<Vec<u64>>,
    pub counts: SplitCounts,
    pub skipped_files: Vec<SkippedFile>,
    pub epochs_run: u32,
    /// 1-based epoch whose weights were kept (lowest validation loss).
    pub best_epoch: u32,
    pub history: Vec<EpochRecord>,
    pub hyperparameters: Hyperparameters,
    /// Dataset prefix inside the store.
    pub dataset: String,
    /// sha256 over every used image's key and content: equal fingerprints, equal data.
    pub dataset_fingerprint: String,
    /// `sha256:` over the test split's keys and content hashes alone: two runs with equal
    /// test fingerprints were scored on identical test images. Absent in older runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_fingerprint: Option<String>,
    /// `sha256:` over the key, size and ETag of every object listed under the dataset prefix:
    /// a cheap check, without fetching a byte, that a re-run sees the data this run saw.
    /// Absent in older runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listing_fingerprint: Option<String>,
    /// Per test image, in test order: what the challenger and the re-scored champion
    /// predicted. The gate's significance test pairs them. Absent in older runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_predictions: Option<TestPredictions>,
    /// Key of the weights this run wrote.
    pub weights_key: String,
    /// `sha256:<hex>` of `model.safetensors`. Absent in older runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_sha256: Option<String>,
    /// Key of the ONNX export of the same weights (`runs/<id>/model.onnx`), what the inference
    /// service and any ONNX runtime serve. Absent in runs from before the export existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx_key: Option<String>,
    /// `sha256:<hex>` of the ONNX file, so a server can check it loaded the bytes the run wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx_sha256: Option<String>,
    /// Where the ImageNet backbone came from, `None` when trained from scratch.
    #[serde(default)]
    pub pretrained: Option<String>,
    /// `sha256:<hex>` of the pretrained file's bytes; absent when trained from scratch and in
    /// older runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained_sha256: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// What convolutions computed in while training: `fp32`, `bf16` or `fp16` (fp32 master
    /// weights in every case). Absent in runs from before mixed precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// The photo → input pipeline every train, validation and test image went through (the
    /// service's own). Absent in runs from before the shared pipeline, which trained and tested
    /// on centre crops of whole images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineRecord>,
    /// How a data-parallel run's ranks trained, from rank 0's view; absent for a single
    /// process and in runs from before data-parallel training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distributed: Option<DistributedRecord>,
}

/// A data-parallel run: how many ranks, over which backend, and what averaging the gradients
/// cost rank 0 (host wall-clock; with NCCL only the launch of the collective is counted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistributedRecord {
    /// Ranks (`--workers`); the global batch is `workers × batch_size`.
    pub workers: u32,
    /// `gloo` or `nccl`.
    pub backend: String,
    /// Optimizer steps rank 0 took in this process (a resumed run counts from the resume).
    pub steps: u64,
    /// Seconds spent averaging gradients over those steps (flatten, allreduce, copy back).
    pub allreduce_seconds: f64,
    /// Seconds of those steps in all (forward, backward, averaging, Adam).
    pub step_seconds: f64,
}

/// The input pipeline of a run (see the `pipeline` crate): a model is served through the same
/// one, and a server that implements another version refuses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineRecord {
    /// Version of the bytes → input contract.
    pub version: u32,
    /// `sha256:<hex>` of the face detector's model file.
    pub detector_sha256: String,
    /// A face's crop side over the face box's longer side.
    pub crop_margin: f32,
    /// Images per split whose input is a face's crop; the rest are whole images (no face found).
    pub faces_found: FacesFound,
}

/// Images with a face, per split (compare with `counts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FacesFound {
    pub train: u64,
    pub val: u64,
    pub test: u64,
}

/// Images per split after bad files were skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    pub train: u64,
    pub val: u64,
    pub test: u64,
    /// Train images (before validation was carved out) dropped because the same bytes are
    /// in the test split; each is also in `skipped_files`. 0 in older runs.
    #[serde(default)]
    pub duplicates_dropped: u64,
}

/// How the trainer binary that wrote a run was built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainerBuild {
    /// Full git revision the binary was built from, or `unknown`.
    pub revision: String,
    /// Cargo profile: `release` or `debug`.
    pub profile: String,
    /// Target triple.
    pub target: String,
    /// `rustc --version` of the compiler.
    pub rustc: String,
}

/// Scores of one class on the test split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    /// Of the images predicted as this class, the share that are (0 when none was predicted).
    pub precision: f64,
    /// Of the images of this class, the share predicted as it.
    pub recall: f64,
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub f1: f64,
    /// Test images of this class.
    pub support: u64,
}

/// Paired predictions on the test split, the input of the gate's McNemar test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestPredictions {
    /// The test split these are for (equals the run's `test_fingerprint`).
    pub test_fingerprint: String,
    /// Test image keys, sorted: the order of every vector below.
    pub keys: Vec<String>,
    /// True class index of each image.
    pub labels: Vec<u8>,
    /// The challenger's predicted class index per image.
    pub challenger: Vec<u8>,
    /// The re-scored champion's predicted class index per image; `None` without a champion.
    #[serde(default)]
    pub champion: Option<Vec<u8>>,
}

impl TestPredictions {
    /// McNemar's discordant pairs `(b, c)`: `b` images only the champion got right, `c` images
    /// only the challenger got right. `None` without champion predictions.
    pub fn discordant(&self) -> Option<(u64, u64)> {
        let champion = self.champion.as_ref()?;
        let (mut b, mut c) = (0, 0);
        for ((t, x), y) in self.labels.iter().zip(&self.challenger).zip(champion) {
            match (x == t, y == t) {
                (false, true) => b += 1,
                (true, false) => c += 1,
                _ => {}
            }
        }
        Some((b, c))
    }

    fn validate(&self, classes: usize, test: u64) -> Result<(), String> {
        let n = self.labels.len();
        let lengths_agree = self.keys.len() == n
            && self.challenger.len() == n
            && self.champion.as_ref().is_none_or(|c| c.len() == n);
        if !lengths_agree || n as u64 != test {
            return Err(format!(
                "test_predictions do not have one entry per test image ({test})"
            ));
        }
        let in_range = |v: &[u8]| v.iter().all(|&x| usize::from(x) < classes);
        if !in_range(&self.labels)
            || !in_range(&self.challenger)
            || !self.champion.as_deref().is_none_or(in_range)
        {
            return Err("test_predictions hold a class index outside classes".into());
        }
        Ok(())
    }
}

/// Precision, recall and F1 per class, and their macro-F1, from `confusion[true][predicted]`.
pub fn class_scores(
    classes: &[String],
    confusion: &[Vec<u64>],
) -> (BTreeMap<String, ClassScores>, f64) {
    let ratio = |num: u64, den: u64| {
        if den == 0 {
            0.0
        } else {
            num as f64 / den as f64
        }
    };
    let scores: BTreeMap<String, ClassScores> = classes
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let tp = confusion[i][i];
            let support: u64 = confusion[i].iter().sum();
            let predicted: u64 = confusion.iter().map(|row| row[i]).sum();
            let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
            let f1 = if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            };
            let s = ClassScores {
                precision,
                recall,
                f1,
                support,
            };
            (name.clone(), s)
        })
        .collect();
    let macro_f1 = if scores.is_empty() {
        0.0
    } else {
        scores.values().map(|s| s.f1).sum::<f64>() / scores.len() as f64
    };
    (scores, macro_f1)
}

/// A file the trainer could not use, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    pub path: String,
    pub reason: String,
}

/// One line of the training curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: u32,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub lr: f64,
    pub seconds: f64,
}

/// The knobs a run was trained with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hyperparameters {
    pub image_size: u32,
    pub epochs: u32,
    pub batch_size: u32,
    pub learning_rate: f64,
    pub label_smoothing: f64,
    pub dropout: f64,
    pub patience: u32,
    pub val_fraction: f64,
    pub seed: u64,
}

/// The embedded mode's pointer to the model currently in service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChampionRecord {
    pub run_id: String,
    pub test_accuracy: f64,
    pub weights_key: String,
    pub promoted_at: DateTime<Utc>,
}

impl RunMetrics {
    /// Parses and sanity-checks a `metrics.json`, so a truncated or hand-edited file is
    /// reported instead of steering a promotion.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let metrics: Self =
            serde_json::from_slice(bytes).map_err(|e| format!("not a valid metrics.json: {e}"))?;
        metrics.validate()?;
        Ok(metrics)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.schema_version != METRICS_SCHEMA_VERSION {
            return Err(format!(
                "metrics.json schema_version {} is not supported (expected {METRICS_SCHEMA_VERSION})",
                self.schema_version
            ));
        }
        let in_unit = |x: f64| x.is_finite() && (0.0..=1.0).contains(&x);
        if !in_unit(self.test_accuracy) {
            return Err(format!(
                "test_accuracy {} is outside 0..=1",
                self.test_accuracy
            ));
        }
        if let Some(acc) = self.champion_test_accuracy {
            if !in_unit(acc) {
                return Err(format!("champion_test_accuracy {acc} is outside 0..=1"));
            }
            if self.champion_run_id.is_none() {
                return Err("champion_test_accuracy is set but champion_run_id is not".into());
            }
        }
        if self.champion_run_id.is_some() && self.champion_test_accuracy.is_none() {
            return Err("champion_run_id is set but champion_test_accuracy is not".into());
        }
        let n = self.classes.len();
        if self.confusion_matrix.len() != n
            || self.confusion_matrix.iter().any(|row| row.len() != n)
        {
            return Err(format!("confusion_matrix is not {n}x{n}"));
        }
        if let Some(p) = &self.test_predictions {
            p.validate(n, self.counts.test)?;
            if p.champion.is_some() != self.champion_run_id.is_some() {
                return Err(
                    "test_predictions.champion must be set exactly when champion_run_id is".into(),
                );
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain data with string keys cannot fail.
        #[allow(clippy::unwrap_used)]
        serde_json::to_vec_pretty(self).unwrap()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> RunMetrics {
        let classes: Vec<String> = ["homer", "marge", "bart", "lisa"]
            .map(String::from)
            .to_vec();
        let confusion = vec![
            vec![15, 1, 0, 0],
            vec![0, 16, 0, 0],
            vec![1, 0, 14, 1],
            vec![0, 0, 1, 15],
        ];
        // 64 test images: the challenger right on 60, the champion on 56 of them.
        let labels: Vec<u8> = (0..64).map(|i| (i / 16) as u8).collect();
        let mut challenger = labels.clone();
        let mut champion = labels.clone();
        for i in 0..4 {
            challenger[i] = (labels[i] + 1) % 4;
        }
        for i in 4..12 {
            champion[i] = (labels[i] + 1) % 4;
        }
        RunMetrics {
            schema_version: METRICS_SCHEMA_VERSION,
            run_id: "r2".into(),
            owner: Some("simpsons/homer".into()),
            trainer_version: "0.1.0+0123456789ab".into(),
            trainer_build: Some(TrainerBuild {
                revision: "0123456789ab".repeat(4)[..40].to_owned(),
                profile: "release".into(),
                target: "x86_64-unknown-linux-gnu".into(),
                rustc: "rustc 1.95.0".into(),
            }),
            test_accuracy: 0.9375,
            test_loss: Some(0.31),
            champion_run_id: Some("r1".into()),
            champion_test_accuracy: Some(0.875),
            champion_test_loss: Some(0.42),
            champion_image_size: Some(96),
            per_class_accuracy: classes.iter().map(|c| (c.clone(), 0.9375)).collect(),
            per_class: Some(class_scores(&classes, &confusion).0),
            macro_f1: Some(class_scores(&classes, &confusion).1),
            classes,
            confusion_matrix: confusion,
            counts: SplitCounts {
                train: 200,
                val: 40,
                test: 64,
                duplicates_dropped: 1,
            },
            skipped_files: vec![SkippedFile {
                path: "datasets/x/train/homer/bad.jpg".into(),
                reason: "truncated".into(),
            }],
            epochs_run: 3,
            best_epoch: 2,
            history: vec![EpochRecord {
                epoch: 1,
                train_loss: 1.2,
                train_accuracy: 0.5,
                val_loss: 0.9,
                val_accuracy: 0.7,
                lr: 1e-3,
                seconds: 12.5,
            }],
            hyperparameters: Hyperparameters {
                image_size: 96,
                epochs: 6,
                batch_size: 32,
                learning_rate: 1e-3,
                label_smoothing: 0.1,
                dropout: 0.2,
                patience: 3,
                val_fraction: 0.15,
                seed: 7,
            },
            dataset: "datasets/current".into(),
            dataset_fingerprint: "ab".repeat(32),
            test_fingerprint: Some(format!("sha256:{}", "ef".repeat(32))),
            listing_fingerprint: Some(format!("sha256:{}", "12".repeat(32))),
            test_predictions: Some(TestPredictions {
                test_fingerprint: format!("sha256:{}", "ef".repeat(32)),
                keys: (0..64)
                    .map(|i| format!("datasets/current/test/x/{i:05}.png"))
                    .collect(),
                labels,
                challenger,
                champion: Some(champion),
            }),
            weights_key: "runs/r2/model.safetensors".into(),
            weights_sha256: Some(format!("sha256:{}", "34".repeat(32))),
            onnx_key: Some("runs/r2/model.onnx".into()),
            onnx_sha256: Some(format!("sha256:{}", "cd".repeat(32))),
            pretrained: Some("pretrained/mobilenet_v2-b0353104.pth".into()),
            pretrained_sha256: Some(format!("sha256:{}", "56".repeat(32))),
            started_at: "2026-11-29T10:00:00Z".parse().unwrap(),
            finished_at: "2026-11-29T10:05:00Z".parse().unwrap(),
            device: "cpu".into(),
            precision: None,
            pipeline: Some(PipelineRecord {
                version: 2,
                detector_sha256: "sha256:99".into(),
                crop_margin: 1.8,
                faces_found: FacesFound {
                    train: 120,
                    val: 20,
                    test: 30,
                },
            }),
            distributed: Some(DistributedRecord {
                workers: 2,
                backend: "gloo".into(),
                steps: 40,
                allreduce_seconds: 1.5,
                step_seconds: 20.0,
            }),
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let back = RunMetrics::from_json(&m.to_json()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn documented_keys_are_present() {
        let v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        for key in [
            "run_id",
            "owner",
            "test_accuracy",
            "champion_run_id",
            "champion_test_accuracy",
            "classes",
            "per_class_accuracy",
            "confusion_matrix",
            "counts",
            "skipped_files",
            "epochs_run",
            "best_epoch",
            "history",
            "hyperparameters",
            "dataset_fingerprint",
            "started_at",
            "finished_at",
            "device",
            "trainer_version",
            "onnx_key",
            "onnx_sha256",
            "trainer_build",
            "test_loss",
            "champion_image_size",
            "champion_test_loss",
            "per_class",
            "macro_f1",
            "test_fingerprint",
            "listing_fingerprint",
            "test_predictions",
            "weights_sha256",
            "pretrained_sha256",
        ] {
            assert!(v.get(key).is_some(), "metrics.json lacks {key}");
        }
        assert!(
            v["skipped_files"][0].get("path").is_some()
                && v["skipped_files"][0].get("reason").is_some()
        );
    }

    #[test]
    fn runs_without_an_onnx_export_still_parse() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        let obj = v.as_object_mut().unwrap();
        obj.remove("onnx_key");
        obj.remove("onnx_sha256");
        let m = RunMetrics::from_json(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!((m.onnx_key, m.onnx_sha256), (None, None));
    }

    /// The operator and `--promote` must keep reading metrics.json files written before the
    /// audit fields existed: every one of them is optional.
    #[test]
    fn runs_without_the_audit_fields_still_parse() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        let obj = v.as_object_mut().unwrap();
        for key in [
            "trainer_build",
            "test_loss",
            "champion_image_size",
            "champion_test_loss",
            "per_class",
            "macro_f1",
            "test_fingerprint",
            "listing_fingerprint",
            "test_predictions",
            "weights_sha256",
            "pretrained_sha256",
        ] {
            obj.remove(key).unwrap();
        }
        obj["counts"]
            .as_object_mut()
            .unwrap()
            .remove("duplicates_dropped");
        let m = RunMetrics::from_json(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(m.test_predictions, None);
        assert_eq!(m.counts.duplicates_dropped, 0);
        assert_eq!(m.test_loss, None);
    }

    #[test]
    fn class_scores_from_a_confusion_matrix() {
        let classes = ["a", "b"].map(String::from).to_vec();
        // 8 a: 6 right, 2 called b; 4 b: 3 right, 1 called a.
        let (s, macro_f1) = class_scores(&classes, &[vec![6, 2], vec![1, 3]]);
        let a = s["a"];
        assert_eq!((a.precision, a.recall, a.support), (6.0 / 7.0, 0.75, 8));
        assert!((a.f1 - 0.8).abs() < 1e-12, "{a:?}");
        let b = s["b"];
        assert_eq!((b.precision, b.recall, b.support), (0.6, 0.75, 4));
        assert!((b.f1 - 2.0 / 3.0).abs() < 1e-12, "{b:?}");
        assert!((macro_f1 - (0.8 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        // A class never predicted and never present scores 0, not NaN.
        let (s, _) = class_scores(&classes, &[vec![4, 0], vec![0, 0]]);
        assert_eq!(
            (s["b"].precision, s["b"].recall, s["b"].f1),
            (0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn discordant_pairs_count_who_alone_was_right() {
        let p = sample().test_predictions.unwrap();
        assert_eq!(p.discordant(), Some((4, 8)));
        let mut solo = p.clone();
        solo.champion = None;
        assert_eq!(solo.discordant(), None);
    }

    #[test]
    fn rejects_inconsistent_predictions() {
        let mut m = sample();
        m.test_predictions.as_mut().unwrap().challenger.pop();
        assert!(
            RunMetrics::from_json(&m.to_json())
                .unwrap_err()
                .contains("test_predictions")
        );
        let mut m = sample();
        m.test_predictions.as_mut().unwrap().labels[0] = 7;
        assert!(RunMetrics::from_json(&m.to_json()).is_err());
        let mut m = sample();
        m.test_predictions.as_mut().unwrap().champion = None;
        assert!(RunMetrics::from_json(&m.to_json()).is_err());
    }

    #[test]
    fn rejects_malformed() {
        assert!(RunMetrics::from_json(b"{\"run_id\": 3").is_err());
        assert!(RunMetrics::from_json(b"[]").is_err());
        let mut m = sample();
        m.test_accuracy = 1.5;
        assert!(
            RunMetrics::from_json(&m.to_json())
                .unwrap_err()
                .contains("test_accuracy")
        );
        let mut m = sample();
        m.champion_test_accuracy = None;
        assert!(RunMetrics::from_json(&m.to_json()).is_err());
        let mut m = sample();
        m.confusion_matrix.pop();
        assert!(
            RunMetrics::from_json(&m.to_json())
                .unwrap_err()
                .contains("confusion")
        );
        let mut m = sample();
        m.schema_version = 99;
        assert!(
            RunMetrics::from_json(&m.to_json())
                .unwrap_err()
                .contains("schema_version")
        );
    }
}
