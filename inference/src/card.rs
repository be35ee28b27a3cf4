//! The model card (`GET /v1/model/card` and the page's "About this model"): which run is
//! serving, how it did on its test split as the trainer measured it and as the production
//! request path served it (`validation.json`), the decision that put it there and the last
//! runs' accuracies with their decisions (`history.json` beside the runs). Built once, when the
//! model loads, from what the store holds beside the run; every part but `metrics.json` is
//! optional and read best effort.

use std::collections::BTreeMap;

use artifacts::{History, RunMetrics};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// History entries shown on the card (the file keeps up to `artifacts::history::MAX_ENTRIES`).
pub const CARD_HISTORY: usize = 20;

/// What the page shows under "About this model".
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ModelCard {
    /// The run being served; `None` when the model came without `metrics.json`.
    pub run_id: Option<String>,
    /// When the run finished training (RFC 3339).
    pub trained_at: Option<String>,
    /// Accuracy on the run's test split, as the trainer measured it.
    pub test_accuracy: Option<f64>,
    /// Test images behind `test_accuracy`.
    pub test_images: Option<u64>,
    /// Class names: the order of `confusion_matrix`'s rows and columns.
    pub classes: Vec<String>,
    /// Recall per class on the test split (the trainer's).
    pub per_class_recall: BTreeMap<String, f64>,
    /// `confusion_matrix[true][predicted]` on the test split (the trainer's); empty without
    /// metrics.
    pub confusion_matrix: Vec<Vec<u64>>,
    /// The same test split answered through the production request path
    /// (`face2simpson-inference validate`); `None` when the run was not validated, or the
    /// validated file is not the one served.
    pub served: Option<ServedCard>,
    /// The photo → input pipeline the run was trained and tested through.
    pub pipeline: Option<PipelineCard>,
    /// The decision that made this run the champion, from the history; `None` when unknown.
    pub decision: Option<DecisionCard>,
    /// The last runs of this model with their decisions, oldest first (at most 20).
    pub history: Vec<HistoryPoint>,
    /// The candidate being shadow-tested beside this model on live requests, while a shadow
    /// stage runs (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowCard>,
}

/// A shadow stage as the card shows it: every pod's report on the candidate, merged (or this
/// pod's own counts when the store cannot be read, `pods` 0).
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ShadowCard {
    /// The candidate's run.
    pub run_id: String,
    /// When the operator began the stage (RFC 3339).
    pub stage_started_at: String,
    /// Share of answered requests also scored by the candidate.
    pub sample_rate: f64,
    /// Pods whose reports are merged here; 0 when only this pod's counts are shown.
    pub pods: usize,
    /// Answered requests sampled (scored or dropped).
    pub sampled: u64,
    /// Sampled requests the candidate scored.
    pub scored: u64,
    /// Sampled requests dropped unscored (shadow queue full, pod under pressure).
    pub dropped: u64,
    /// Faces both models classified.
    pub faces: u64,
    /// Faces whose top verdict differs.
    pub disagreements: u64,
    /// `disagreements / faces`; `None` before any face was scored.
    pub disagreement_rate: Option<f64>,
    /// Sampled requests the candidate failed on.
    pub errors: u64,
    /// p95 of the champion's classification time on the scored requests (bucket upper bound).
    pub champion_p95_ms: Option<f64>,
    /// p95 of the candidate's, on the same inputs.
    pub candidate_p95_ms: Option<f64>,
    /// Why the candidate could not be loaded (it then scores nothing); storage URLs removed.
    pub load_error: Option<String>,
}

/// The served-path validation of the run (`validation.json`).
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ServedCard {
    /// Share of the test images the served headline verdict got right.
    pub accuracy: Option<f64>,
    /// Test images answered and scored.
    pub test_images: u64,
    /// Served recall per class.
    pub per_class_recall: BTreeMap<String, f64>,
    /// Served verdicts equal to the trainer's own predictions, as a share.
    pub agreement: Option<f64>,
    /// p95 request latency while validating, in milliseconds.
    pub p95_ms: Option<f64>,
    /// Whether the validation passed.
    pub passed: Option<bool>,
    /// When it ran (RFC 3339).
    pub validated_at: Option<String>,
}

/// The input pipeline a run went through (`metrics.json`'s `pipeline`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PipelineCard {
    pub version: u32,
    /// `sha256:<hex>` of the face detector.
    pub detector_sha256: String,
    /// A face crop's side over the face box's longer side.
    pub crop_margin: f32,
    /// Test images whose input was a face crop (the rest were whole images).
    pub test_faces_found: u64,
    /// Test images in all.
    pub test_images: u64,
}

/// A decision, as `history.json` records it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DecisionCard {
    /// `FirstModel`, `Promote`, `Reject`, or the writer's own refusal kind.
    pub kind: String,
    pub promoted: bool,
    /// The decision in one line, e.g. `Promote: +2.3 pts (95% CI +0.6..+4.2, p=0.0094, 600 test faces)`.
    pub summary: String,
    /// RFC 3339.
    pub decided_at: String,
    /// The champion the run was compared with.
    pub champion_run_id: Option<String>,
}

/// One run in the chart of the last runs.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HistoryPoint {
    pub run_id: String,
    /// RFC 3339.
    pub finished_at: String,
    pub test_accuracy: f64,
    pub served_accuracy: Option<f64>,
    /// The decision's kind.
    pub decision: String,
    /// True when the run became the champion.
    pub promoted: bool,
    pub summary: String,
    /// True for the run this server is serving.
    pub serving: bool,
}

/// The parts of `validation.json` the card shows, read leniently (any field may be missing)
/// so that the card survives the validator's schema growing.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ValidationView {
    #[serde(default)]
    pub run_id: Option<String>,
    #[serde(default)]
    pub onnx_sha256: Option<String>,
    #[serde(default)]
    pub test_images: u64,
    #[serde(default)]
    pub served_accuracy: Option<f64>,
    #[serde(default)]
    pub per_class_recall: BTreeMap<String, f64>,
    #[serde(default)]
    pub agreement: Option<f64>,
    #[serde(default)]
    pub latency_ms: Option<LatencyView>,
    #[serde(default)]
    pub passed: Option<bool>,
    #[serde(default)]
    pub finished_at: Option<String>,
}

/// `validation.json`'s `latency_ms`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct LatencyView {
    #[serde(default)]
    pub p95_ms: Option<f64>,
}

impl ValidationView {
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

impl ModelCard {
    /// The card of the model being served (`onnx_sha256` of the bytes loaded), from its
    /// metrics, its served-path validation and the model's decision history, each when known.
    /// A validation of another run or another `model.onnx` is not shown.
    pub fn build(
        classes: &[String],
        onnx_sha256: &str,
        metrics: Option<&RunMetrics>,
        validation: Option<&ValidationView>,
        history: Option<&History>,
    ) -> Self {
        let run_id = metrics.map(|m| m.run_id.clone());
        let served = validation
            .filter(|v| {
                let same_run = v.run_id.is_none() || v.run_id == run_id;
                let same_file = v.onnx_sha256.as_deref().is_none_or(|s| s == onnx_sha256);
                if !(same_run && same_file) {
                    tracing::warn!(
                        validated_run = ?v.run_id,
                        validated_onnx = ?v.onnx_sha256,
                        "validation.json is not about the model served; not shown"
                    );
                }
                same_run && same_file
            })
            .map(|v| ServedCard {
                accuracy: v.served_accuracy,
                test_images: v.test_images,
                per_class_recall: v.per_class_recall.clone(),
                agreement: v.agreement,
                p95_ms: v.latency_ms.and_then(|l| l.p95_ms),
                passed: v.passed,
                validated_at: v.finished_at.clone(),
            });
        let decision = history
            .zip(run_id.as_deref())
            .and_then(|(h, id)| h.entry(id))
            .map(|e| DecisionCard {
                kind: e.decision.clone(),
                promoted: e.promoted,
                summary: e.summary.clone(),
                decided_at: e.decided_at.to_rfc3339(),
                champion_run_id: e.champion_run_id.clone(),
            });
        let history = history
            .map(|h| {
                h.last(CARD_HISTORY)
                    .iter()
                    .map(|e| HistoryPoint {
                        run_id: e.run_id.clone(),
                        finished_at: e.finished_at.to_rfc3339(),
                        test_accuracy: e.test_accuracy,
                        // The served accuracy of the run being served is the validation's
                        // when the history has none.
                        served_accuracy: e.served_accuracy.or_else(|| {
                            (Some(&e.run_id) == run_id.as_ref())
                                .then(|| served.as_ref().and_then(|s| s.accuracy))
                                .flatten()
                        }),
                        decision: e.decision.clone(),
                        promoted: e.promoted,
                        summary: e.summary.clone(),
                        serving: Some(&e.run_id) == run_id.as_ref(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            run_id,
            trained_at: metrics.map(|m| m.finished_at.to_rfc3339()),
            test_accuracy: metrics.map(|m| m.test_accuracy),
            test_images: metrics.map(|m| m.counts.test),
            classes: metrics.map_or_else(|| classes.to_vec(), |m| m.classes.clone()),
            per_class_recall: metrics
                .map(|m| m.per_class_accuracy.clone())
                .unwrap_or_default(),
            confusion_matrix: metrics
                .map(|m| m.confusion_matrix.clone())
                .unwrap_or_default(),
            served,
            pipeline: metrics.and_then(|m| {
                m.pipeline.as_ref().map(|p| PipelineCard {
                    version: p.version,
                    detector_sha256: p.detector_sha256.clone(),
                    crop_margin: p.crop_margin,
                    test_faces_found: p.faces_found.test,
                    test_images: m.counts.test,
                })
            }),
            decision,
            history,
            shadow: None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use artifacts::HistoryEntry;

    /// A run's metrics.json, trained through this server's pipeline version.
    pub(crate) fn metrics(run_id: &str) -> RunMetrics {
        let json = serde_json::json!({
            "schema_version": 1, "run_id": run_id, "trainer_version": "t",
            "test_accuracy": 0.75, "champion_run_id": "r0", "champion_test_accuracy": 0.5,
            "classes": ["homer", "marge"], "per_class_accuracy": {"homer": 1.0, "marge": 0.5},
            "confusion_matrix": [[2, 0], [1, 1]],
            "counts": {"train": 4, "val": 1, "test": 4}, "skipped_files": [],
            "epochs_run": 1, "best_epoch": 1, "history": [],
            "hyperparameters": {"image_size": 32, "epochs": 1, "batch_size": 2,
                "learning_rate": 0.001, "label_smoothing": 0.1, "dropout": 0.2, "patience": 3,
                "val_fraction": 0.15, "seed": 7},
            "dataset": "d", "dataset_fingerprint": "sha256:00",
            "weights_key": format!("runs/{run_id}/model.safetensors"),
            "started_at": "2026-12-01T00:00:00Z", "finished_at": "2026-12-01T00:01:00Z",
            "device": "cpu",
            "pipeline": {"version": pipeline::PIPELINE_VERSION, "detector_sha256": "sha256:ab", "crop_margin": 1.8,
                "faces_found": {"train": 1, "val": 0, "test": 3}}
        });
        RunMetrics::from_json(&serde_json::to_vec(&json).unwrap()).unwrap()
    }

    fn history() -> History {
        let mut h = History::default();
        for (id, kind) in [("r0", "FirstModel"), ("r1", "Promote"), ("r2", "Reject")] {
            let mut e =
                HistoryEntry::new(&metrics(id), kind, kind != "Reject", &format!("{kind}: x"));
            e.served_accuracy = (id == "r0").then_some(0.5);
            h.append(e, 50);
        }
        h
    }

    #[test]
    fn card_joins_metrics_validation_and_history() {
        let m = metrics("r1");
        let v = ValidationView::from_json(
            br#"{"run_id": "r1", "onnx_sha256": "sha256:ff", "test_images": 4,
                "served_accuracy": 0.75, "per_class_recall": {"homer": 1.0, "marge": 0.5},
                "agreement": 1.0, "latency_ms": {"p50_ms": 1.0, "p95_ms": 2.5, "max_ms": 3.0},
                "passed": true, "finished_at": "2026-12-01T00:05:00Z", "extra": [1]}"#,
        )
        .unwrap();
        let h = history();
        let card = ModelCard::build(&[], "sha256:ff", Some(&m), Some(&v), Some(&h));
        assert_eq!(card.run_id.as_deref(), Some("r1"));
        assert_eq!(card.test_images, Some(4));
        let served = card.served.as_ref().unwrap();
        assert_eq!(served.accuracy, Some(0.75));
        assert_eq!(served.p95_ms, Some(2.5));
        assert_eq!(card.decision.as_ref().unwrap().kind, "Promote");
        assert_eq!(card.history.len(), 3);
        assert!(card.history[1].serving && !card.history[0].serving);
        assert!(!card.history[2].promoted);
        // The serving run's served accuracy comes from the validation; others keep theirs.
        assert_eq!(card.history[1].served_accuracy, Some(0.75));
        assert_eq!(card.history[0].served_accuracy, Some(0.5));
        assert_eq!(card.history[2].served_accuracy, None);
        assert_eq!(card.pipeline.as_ref().unwrap().test_faces_found, 3);
        assert_eq!(card.confusion_matrix, vec![vec![2, 0], vec![1, 1]]);
    }

    #[test]
    fn a_validation_of_another_file_is_not_shown() {
        let m = metrics("r1");
        let other_file =
            ValidationView::from_json(br#"{"run_id": "r1", "onnx_sha256": "sha256:00"}"#).unwrap();
        let card = ModelCard::build(&[], "sha256:ff", Some(&m), Some(&other_file), None);
        assert!(card.served.is_none());
        let other_run = ValidationView::from_json(br#"{"run_id": "r9"}"#).unwrap();
        let card = ModelCard::build(&[], "sha256:ff", Some(&m), Some(&other_run), None);
        assert!(card.served.is_none());
        assert!(card.decision.is_none() && card.history.is_empty());
        // Nothing but the model: the classes, nothing else.
        let classes = vec!["a".to_owned()];
        let bare = ModelCard::build(&classes, "sha256:ff", None, None, None);
        assert_eq!(bare.classes, classes);
        assert!(bare.run_id.is_none() && bare.confusion_matrix.is_empty());
    }
}
