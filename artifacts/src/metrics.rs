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
    pub trainer_version: String,
    /// Fraction of the test split classified correctly, 0–1.
    pub test_accuracy: f64,
    /// The champion this run was compared with, if any.
    #[serde(default)]
    pub champion_run_id: Option<String>,
    /// The champion's accuracy re-measured by this run on this run's test split.
    #[serde(default)]
    pub champion_test_accuracy: Option<f64>,
    /// Class names in the order of the model's outputs.
    pub classes: Vec<String>,
    pub per_class_accuracy: BTreeMap<String, f64>,
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
    /// Key of the weights this run wrote.
    pub weights_key: String,
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
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// What convolutions computed in while training: `fp32`, `bf16` or `fp16` (fp32 master
    /// weights in every case). Absent in runs from before mixed precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
}

/// Images per split after bad files were skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    pub train: u64,
    pub val: u64,
    pub test: u64,
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
        RunMetrics {
            schema_version: METRICS_SCHEMA_VERSION,
            run_id: "r2".into(),
            owner: Some("simpsons/homer".into()),
            trainer_version: "0.1.0".into(),
            test_accuracy: 0.9375,
            champion_run_id: Some("r1".into()),
            champion_test_accuracy: Some(0.875),
            per_class_accuracy: classes.iter().map(|c| (c.clone(), 0.9375)).collect(),
            classes,
            confusion_matrix: vec![
                vec![15, 1, 0, 0],
                vec![0, 16, 0, 0],
                vec![1, 0, 14, 1],
                vec![0, 0, 1, 15],
            ],
            counts: SplitCounts {
                train: 200,
                val: 40,
                test: 64,
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
            weights_key: "runs/r2/model.safetensors".into(),
            onnx_key: Some("runs/r2/model.onnx".into()),
            onnx_sha256: Some(format!("sha256:{}", "cd".repeat(32))),
            pretrained: Some("pretrained/mobilenet_v2-b0353104.pth".into()),
            started_at: "2026-11-29T10:00:00Z".parse().unwrap(),
            finished_at: "2026-11-29T10:05:00Z".parse().unwrap(),
            device: "cpu".into(),
            precision: None,
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
