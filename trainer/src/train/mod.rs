//! One training run, end to end: dataset → fine-tuning → evaluation → artifacts → gate.
//!
//! [`run`] orchestrates; [`config`] checks what the run was told; [`fit`] is the training loop;
//! [`evaluate`] scores a network on a split; [`batches`] turns samples into device batches.

pub mod batches;
pub mod checkpoint;
mod completed;
pub mod config;
pub mod evaluate;
pub mod fit;
mod promote;
pub mod run;
pub mod stop;

use artifacts::{Decision, Hyperparameters, PromotionPolicy, RunMetrics, StorageError, layout};
use tch::Device;

use crate::dataset::DatasetError;
use crate::torch::{Precision, WeightsError};

pub use batches::{
    HostBatch, Normalizer, epoch_batches, for_each_batch, rank_batches, sample_seed,
};
pub use evaluate::{Evaluation, evaluate};
pub use fit::{LossScaler, backward_and_step, scheduled_lr, train_step};
pub use run::{RankOutcome, run, run_in, run_rank};
pub use stop::StopSignal;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// Weights the run made that cannot be written or read back: a bug, not bad input.
    #[error("{what}: {source}")]
    Weights { what: String, source: WeightsError },
    /// Weights the run was given (the pretrained backbone, the champion) that cannot be used:
    /// bad input no retry fixes.
    #[error("{what}: {source}")]
    UnusableWeights { what: String, source: WeightsError },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("training worker failed: {0}")]
    Worker(String),
    #[error("decoded-image cache: {0}")]
    Cache(#[from] std::io::Error),
    #[error("exporting the model to ONNX: {0}")]
    Export(#[from] model::onnx::ExportError),
    /// A peer rank is gone, or the rendezvous or a collective timed out. (Not a `source`:
    /// the message already carries it, and error chains would print it twice.)
    #[error("data-parallel training: {0}")]
    Distributed(c10d::Error),
    /// Told to stop (SIGTERM) during the training loop; rank 0 checkpointed first.
    #[error(
        "stopped as asked after step {step} of epoch {epoch}; a run with the same id resumes there"
    )]
    Interrupted { epoch: u32, step: u32 },
}

impl From<c10d::Error> for TrainError {
    fn from(e: c10d::Error) -> Self {
        Self::Distributed(e)
    }
}

pub(crate) fn weights_err(what: &str) -> impl FnOnce(WeightsError) -> TrainError + '_ {
    move |source| TrainError::Weights {
        what: what.to_owned(),
        source,
    }
}

pub(crate) fn input_weights_err(what: &str) -> impl FnOnce(WeightsError) -> TrainError + '_ {
    move |source| TrainError::UnusableWeights {
        what: what.to_owned(),
        source,
    }
}

/// Everything `face2simpson-trainer train` is told.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub run_id: String,
    pub dataset: String,
    pub champion: Option<String>,
    pub hyper: Hyperparameters,
    pub device: Device,
    /// What convolutions compute in while training.
    pub precision: Precision,
    /// Key in the store, a URL, a local path, or `None` to train from scratch.
    pub pretrained: Option<String>,
    pub promote: bool,
    pub policy: PromotionPolicy,
    pub concurrency: usize,
    /// Megabytes of decoded images kept in memory; `None` sizes it from the memory limit.
    pub cache_mb: Option<u64>,
    /// Where images beyond the budget go; `None` is the temporary directory.
    pub cache_dir: Option<std::path::PathBuf>,
    /// The service's face detector: every image goes through the service's pipeline.
    pub detector: std::sync::Arc<pipeline::FaceDetector>,
}

/// Where a run's artifacts go and whom it is for. The operator keys runs per model
/// (`runs/<namespace>/<name>`) and passes the champion's weights as a full URL; the defaults
/// are the shared `runs/` prefix of the cluster-free mode.
#[derive(Debug, Clone)]
pub struct RunTarget {
    /// Prefix the run's directory is created under.
    pub runs_prefix: String,
    /// `<namespace>/<name>` recorded in metrics.json.
    pub owner: Option<String>,
    /// Full URL of the champion's weights; by default `<runs_prefix>/<champion>/model.safetensors`.
    pub champion_uri: Option<String>,
}

impl Default for RunTarget {
    fn default() -> Self {
        Self {
            runs_prefix: layout::RUNS.to_owned(),
            owner: None,
            champion_uri: None,
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    pub metrics: RunMetrics,
    /// Set with `--promote`.
    pub decision: Option<Decision>,
    /// The run had already completed earlier; nothing was retrained.
    pub already_complete: bool,
}
