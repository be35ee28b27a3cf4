//! `validation.json`: what `face2simpson-inference validate` found when the production binary
//! served a candidate (and the champion) on the test split through its request path. Written by
//! the inference binary, read by the operator's gate and by the service's model card: one schema
//! for all three (docs/inference.md, *Served-path validation*).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Bumped when a field of `validation.json` changes meaning; readers refuse versions they do not
/// know.
pub const VALIDATION_SCHEMA_VERSION: u32 = 1;
/// Agreement with the trainer's predictions below which a candidate is refused by default.
pub const DEFAULT_MIN_AGREEMENT: f64 = 0.99;

/// Why a candidate is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureReason {
    /// The model does not load, the golden request fails, test images are answered with a
    /// server error, or p95 latency / peak memory is over its budget.
    InfraValidationFailed,
    /// The served verdicts disagree with the trainer's own test predictions more often than
    /// `--min-agreement` allows (or agreement cannot be checked).
    TrainServeSkew,
}

/// One reason a candidate failed, with the numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub reason: FailureReason,
    pub message: String,
}

/// The budgets a candidate was held to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// `--max-p95-ms`: the p95 of the candidate's request latency at most; `None`: no limit.
    pub max_p95_ms: Option<f64>,
    /// `--min-agreement`: the share of test images whose served verdict equals the trainer's
    /// prediction, at least.
    pub min_agreement: f64,
    /// `--max-memory-bytes`: the process's peak resident memory (VmHWM) at most after scoring
    /// the candidate; `None`: no limit.
    pub max_memory_bytes: Option<u64>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            max_p95_ms: None,
            min_agreement: DEFAULT_MIN_AGREEMENT,
            max_memory_bytes: None,
        }
    }
}

/// Request latency over the scored test images (wall time of the in-process request, decode,
/// detection, preprocessing, batching and inference included).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
}

/// A test image the service did not answer 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedImage {
    /// Key relative to the dataset prefix (`test/<class>/<file>`).
    pub key: String,
    pub status: u16,
    /// The answer's `error`.
    pub error: String,
}

/// How one model did on the test split, served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServedScore {
    /// The URI the model was loaded from, as given.
    pub model: String,
    /// From the run's `metrics.json`; `None` without one.
    pub run_id: Option<String>,
    /// `sha256:<hex>` of the `model.onnx` loaded; `None` when it did not load.
    pub onnx_sha256: Option<String>,
    /// Input size served at; `None` when the model did not load.
    pub image_size: Option<u32>,
    /// Why the model did not load; `None` when it did.
    pub load_error: Option<String>,
    /// Test images answered 200 and scored.
    pub test_images: u64,
    /// Share of those the served headline verdict (`character`) got right; `None` when none
    /// was scored.
    pub served_accuracy: Option<f64>,
    /// Served recall per class (classes with test images only).
    pub per_class_recall: BTreeMap<String, f64>,
    /// `confusion_matrix[true][served]`, indices into `classes` order.
    pub confusion_matrix: Vec<Vec<u64>>,
    /// Test images answered something else than 200 (a 4xx is what the trainer skips as a bad
    /// file; a 5xx is an infrastructure failure).
    pub rejected_images: Vec<RejectedImage>,
    /// Request latency over the scored images.
    pub latency_ms: Option<Latency>,
    /// `test_accuracy` from the run's `metrics.json`, for comparison.
    pub trainer_test_accuracy: Option<f64>,
}

/// The golden request: a fixed generated image that must be answered 200 with probabilities
/// summing to 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldenCheck {
    pub status: u16,
    pub character: Option<String>,
    pub probability_sum: Option<f64>,
    pub latency_ms: f64,
}

/// A test image whose served verdict is not the trainer's prediction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disagreement {
    /// Key relative to the dataset prefix.
    pub key: String,
    /// The true class.
    pub label: String,
    /// What the trainer's weights predicted for it (`test_predictions.challenger`).
    pub trainer: String,
    /// What the service answered; `None` when it did not answer 200.
    pub served: Option<String>,
}

/// Served verdicts per test image, for paired tests (McNemar) on served predictions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedPredictions {
    /// Test image keys relative to the dataset prefix, sorted: the order of every vector below.
    pub keys: Vec<String>,
    /// True class index of each image.
    pub labels: Vec<u8>,
    /// The candidate's served class index; `null` where it did not answer 200.
    pub candidate: Vec<Option<u8>>,
    /// The champion's, scored the same way; `None` without `--champion` or when it did not load.
    pub champion: Option<Vec<Option<u8>>>,
}

/// `validation.json`, written next to the run (docs/inference.md, *Served-path validation*).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    pub schema_version: u32,
    /// Version of the `face2simpson-inference` binary that validated.
    pub validator_version: String,
    /// The dataset prefix URL whose `test/` split was scored.
    pub dataset: String,
    /// Class names in output order (the indices of `confusion_matrix` and `predictions`).
    pub classes: Vec<String>,
    /// The candidate: `model`, `run_id`, `onnx_sha256`, `test_images`, `served_accuracy`,
    /// `per_class_recall`, … at the top level.
    #[serde(flatten)]
    pub candidate: ServedScore,
    /// Served agreement with the trainer's own predictions (`metrics.json`'s
    /// `test_predictions.challenger`) over the test images both know; `None` when it could not
    /// be computed (no metrics.json, no `test_predictions`, no common image, or the model did not
    /// load).
    pub agreement: Option<f64>,
    /// Test images in both the dataset and the trainer's predictions (the agreement's
    /// denominator).
    pub agreement_images: u64,
    /// Every image of those whose served verdict differs from the trainer's.
    pub disagreements: Vec<Disagreement>,
    /// The golden request; `None` when the model did not load.
    pub golden: Option<GoldenCheck>,
    /// The process's peak resident memory (VmHWM) after loading and scoring the candidate,
    /// before any champion is loaded; `None` where /proc is not available.
    pub peak_rss_bytes: Option<u64>,
    /// The champion (`--champion`), scored by this process on the same images the same way.
    pub champion: Option<ServedScore>,
    /// Served verdicts per image, candidate and champion.
    pub predictions: ServedPredictions,
    pub thresholds: Thresholds,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// True exactly when `failures` is empty.
    pub passed: bool,
    pub failures: Vec<Failure>,
}

impl Validation {
    /// The failures with this reason.
    pub fn failed_with(&self, reason: FailureReason) -> impl Iterator<Item = &Failure> {
        self.failures.iter().filter(move |f| f.reason == reason)
    }

    /// Reads and checks a `validation.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let v: Self = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if v.schema_version != VALIDATION_SCHEMA_VERSION {
            return Err(format!(
                "validation.json schema_version {} is not {VALIDATION_SCHEMA_VERSION}",
                v.schema_version
            ));
        }
        if v.passed != v.failures.is_empty() {
            return Err("validation.json says passed but lists failures (or the reverse)".into());
        }
        Ok(v)
    }
}
