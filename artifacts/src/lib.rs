//! The contract between the three face2simpson programs.
//!
//! Trainer, operator and inference never talk to each other directly: they meet in object
//! storage. This crate owns that meeting point — where each object lives ([`layout`]), what
//! `metrics.json` and `champion.json` contain ([`metrics`]), the decisions taken about a model's
//! runs ([`history`]), whether a dataset changed ([`listing`]), what the inference pods report about live traffic ([`live`]), what the served-path validation of a run found ([`validation`]), how a
//! store URL is opened
//! ([`storage`]) and the rule that decides whether a new model replaces the champion
//! ([`gate`]). It depends on neither libtorch nor Kubernetes so the operator stays small.

pub mod gate;
pub mod history;
pub mod layout;
pub mod listing;
pub mod live;
pub mod metrics;
pub mod storage;
pub mod validation;

pub use gate::{Decision, PromotionPolicy, decide};
pub use history::{History, HistoryEntry, append_history, read_history};
pub use listing::{dataset_fingerprint, listing_fingerprint};
pub use metrics::{
    ChampionRecord, ClassScores, DistributedRecord, EpochRecord, FacesFound, Hyperparameters,
    PipelineRecord, RunMetrics, SkippedFile, SplitCounts, TestPredictions, TrainerBuild,
    class_scores,
};
pub use object_store::ObjectMeta;
pub use storage::{Conditional, Expect, ObjectVersion, Storage, StorageError};
