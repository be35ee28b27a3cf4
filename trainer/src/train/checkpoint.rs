//! Checkpoints in the store, so a preempted training Job that restarts with the same run id
//! continues where it stopped instead of starting over: one at the end of every epoch, and one
//! mid-epoch when the trainer is told to stop (SIGTERM), naming the steps of the epoch done.
//!
//! Layout under `<runs-prefix>/<run-id>/checkpoint/`: `<tag>/{weights,best,adam}.safetensors`
//! written first (`epoch-<n>` after epoch `n`, `epoch-<n>-step-<k>` after `k` steps of epoch
//! `n + 1`), then `state.json` naming the tag (its presence makes the checkpoint whole), then
//! every other tag's files are deleted. A run that completes deletes the whole prefix. A
//! checkpoint made from other data, hyperparameters, precision, backbone or number of workers
//! is ignored, not resumed. Only rank 0 writes.

use artifacts::{EpochRecord, Hyperparameters, Storage, StorageError};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::TrainError;
use crate::torch::adam::Adam;
use crate::torch::{Classifier, WeightsError, from_safetensors, to_safetensors};

/// What must be equal for a checkpoint to belong to this run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Guard {
    pub dataset_fingerprint: String,
    pub hyperparameters: Hyperparameters,
    pub precision: String,
    /// The photo→input pipeline the crops came from: a detector or crop change makes other
    /// inputs, and a resumed run must not train on a mix. Absent in checkpoints written before
    /// it was recorded, which therefore never match.
    #[serde(default)]
    pub pipeline: Option<pipeline::PipelineId>,
    /// `sha256:` of the pretrained backbone's bytes (`None`: trained from scratch). Absent in
    /// older checkpoints, which therefore never match a run with a backbone.
    #[serde(default)]
    pub pretrained_sha256: Option<String>,
    /// Ranks the checkpoint was trained with: the global batch and each rank's share of an
    /// epoch depend on it. 0 in older checkpoints, which therefore never match.
    #[serde(default)]
    pub workers: u32,
}

/// The training loop's progress, as saved after an epoch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// Last completed epoch (1-based); 0 before the first.
    pub epoch: u32,
    pub records: Vec<EpochRecord>,
    pub best_epoch: u32,
    pub best_score: f64,
    pub since_best: u32,
    /// Early stopping triggered: nothing is left to train.
    pub stopped: bool,
    /// Steps of epoch `epoch + 1` already done, when the checkpoint was taken mid-epoch.
    #[serde(default)]
    pub partial: Option<PartialEpoch>,
}

/// The part of an epoch done before a mid-epoch checkpoint: its steps (per rank) and the
/// epoch's running training sums over every rank, so the resumed epoch's record covers it all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    pub steps: u32,
    pub loss_sum: f64,
    pub correct: f64,
    pub seen: f64,
    pub seconds: f64,
}

impl LoopState {
    /// The checkpoint's directory name: `epoch-<n>` or `epoch-<n>-step-<k>`.
    fn tag(&self) -> String {
        match &self.partial {
            Some(p) => format!("epoch-{}-step-{}", self.epoch, p.steps),
            None => format!("epoch-{}", self.epoch),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    guard: Guard,
    state: LoopState,
    adam_steps: i64,
}

impl StateFile {
    fn tag(&self) -> String {
        self.state.tag()
    }
}

/// A resumed run: the loop state, and the best epoch's weights (on the model's device).
#[derive(Debug)]
pub struct Resumed {
    pub state: LoopState,
    pub best: Vec<(String, Tensor)>,
}

/// Reads and writes one run's checkpoints from the training thread, blocking on the store.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    storage: Storage,
    prefix: String,
    guard: Guard,
    runtime: tokio::runtime::Handle,
}

impl Checkpoints {
    /// `runtime` is the runtime the store's client belongs to; calls block a non-runtime thread.
    pub fn new(
        storage: Storage,
        run_dir: &str,
        guard: Guard,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            storage,
            prefix: format!("{run_dir}/checkpoint"),
            guard,
            runtime,
        }
    }

    fn state_key(&self) -> String {
        format!("{}/state.json", self.prefix)
    }

    fn file_key(&self, tag: &str, file: &str) -> String {
        format!("{}/{tag}/{file}.safetensors", self.prefix)
    }

    /// Saves the state after `state.epoch` (and `state.partial`'s steps of the next). A failure
    /// is logged, not fatal: a run that cannot checkpoint can still finish. Returns whether it
    /// was written.
    pub fn save(
        &self,
        state: &LoopState,
        net: &Classifier,
        best: &[(String, Tensor)],
        opt: &Adam,
    ) -> bool {
        let steps = state.partial.as_ref().map_or(0, |p| p.steps);
        match self.try_save(state, net, best, opt) {
            Err(e) => {
                tracing::warn!(epoch = state.epoch, steps, error = %e, "could not write the checkpoint; training goes on");
                false
            }
            Ok(()) => {
                tracing::info!(epoch = state.epoch, steps_into_next_epoch = steps, prefix = %self.prefix, "checkpoint written");
                true
            }
        }
    }

    fn try_save(
        &self,
        state: &LoopState,
        net: &Classifier,
        best: &[(String, Tensor)],
        opt: &Adam,
    ) -> Result<(), TrainError> {
        let weights_err = |source| TrainError::Weights {
            what: "writing a checkpoint".into(),
            source,
        };
        let (moments, adam_steps) = opt.state();
        let files = [
            ("weights", net.to_safetensors().map_err(weights_err)?),
            ("best", to_safetensors(best).map_err(weights_err)?),
            ("adam", to_safetensors(&moments).map_err(weights_err)?),
        ];
        let file = StateFile {
            guard: self.guard.clone(),
            state: state.clone(),
            adam_steps,
        };
        let tag = file.tag();
        self.runtime.block_on(async {
            for (name, bytes) in files {
                self.storage.put(&self.file_key(&tag, name), bytes).await?;
            }
            self.storage.put_json(&self.state_key(), &file).await?;
            // Best effort: a leftover file costs space, never correctness.
            let keep = format!("{}/{tag}/", self.prefix);
            if let Ok(objects) = self.storage.list(&self.prefix).await {
                for o in objects {
                    let key = o.location.to_string();
                    if !key.starts_with(&keep) && key != self.state_key() {
                        let _ = self.storage.delete(&key).await;
                    }
                }
            }
            Ok::<_, TrainError>(())
        })
    }

    /// Loads the last checkpoint into `net` and `opt`, if there is one for this very run.
    pub fn resume(
        &self,
        net: &mut Classifier,
        opt: &mut Adam,
    ) -> Result<Option<Resumed>, TrainError> {
        // A store outage is an error (the Job is retried); a checkpoint that is missing a
        // file, truncated or corrupt is ignored with a warning and the run starts over.
        let unusable = |why: String| {
            tracing::warn!(prefix = %self.prefix, "ignoring an unusable checkpoint: {why}");
            Ok(None)
        };
        let found: Result<StateFile, StorageError> = self
            .runtime
            .block_on(self.storage.get_json(&self.state_key()));
        let file = match found {
            Ok(f) => f,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e @ StorageError::Malformed { .. }) => return unusable(e.to_string()),
            Err(e) => return Err(e.into()),
        };
        if file.guard != self.guard {
            return unusable(
                "it was made from other data, hyperparameters, precision, backbone or number of workers"
                    .into(),
            );
        }
        let epoch = file.state.epoch;
        let tag = file.tag();
        let mut files = Vec::with_capacity(3);
        for name in ["weights", "best", "adam"] {
            match self
                .runtime
                .block_on(self.storage.get(&self.file_key(&tag, name)))
            {
                Ok(bytes) => files.push(bytes),
                Err(e) if e.is_not_found() => return unusable(e.to_string()),
                Err(e) => return Err(e.into()),
            }
        }
        // Everything is parsed and checked before the model or the optimizer is touched.
        let parsed = (|| {
            let mut probe = Classifier::new(Device::Cpu, 0.0);
            probe.load_weights(&files[0])?;
            let best = from_safetensors(&files[1])?;
            let moments = from_safetensors(&files[2])?;
            opt.check(&moments)?;
            Ok::<_, WeightsError>((best, moments))
        })();
        let (best, moments) = match parsed {
            Ok(p) => p,
            Err(e) => return unusable(e.to_string()),
        };
        let weights_err = |source| TrainError::Weights {
            what: "resuming from the checkpoint".into(),
            source,
        };
        net.load_weights(&files[0]).map_err(weights_err)?;
        opt.restore(moments, file.adam_steps).map_err(weights_err)?;
        let device = net.device();
        let best = best
            .into_iter()
            .map(|(k, t)| (k, to_device(t, device)))
            .collect();
        let steps = file.state.partial.as_ref().map_or(0, |p| p.steps);
        tracing::info!(epoch, steps_into_next_epoch = steps, prefix = %self.prefix, "resuming from the checkpoint");
        Ok(Some(Resumed {
            state: file.state,
            best,
        }))
    }

    /// Deletes every checkpoint file of the run (after it completed). Best effort.
    pub async fn clear(&self) {
        let listed = self.storage.list(&self.prefix).await;
        match listed {
            Ok(objects) => {
                for o in objects {
                    let key = o.location.to_string();
                    if let Err(e) = self.storage.delete(&key).await {
                        tracing::warn!(%key, error = %e, "could not delete a checkpoint file");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(prefix = %self.prefix, error = %e, "could not list the checkpoint")
            }
        }
    }
}

fn to_device(t: Tensor, device: Device) -> Tensor {
    if device == Device::Cpu {
        t
    } else {
        t.to_device(device)
    }
}
