//! End-of-epoch checkpoints in the store, so a preempted training Job that restarts with the
//! same run id continues where it stopped instead of starting over.
//!
//! Layout under `<runs-prefix>/<run-id>/checkpoint/`: `epoch-<n>/{weights,best,adam}.safetensors`
//! written first, then `state.json` naming epoch `n` (its presence makes the checkpoint whole),
//! then the previous epoch's files are deleted. A run that completes deletes the whole prefix.
//! A checkpoint made from other data, hyperparameters or precision is ignored, not resumed.

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
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    guard: Guard,
    state: LoopState,
    adam_steps: i64,
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

    fn file_key(&self, epoch: u32, file: &str) -> String {
        format!("{}/epoch-{epoch}/{file}.safetensors", self.prefix)
    }

    /// Saves the state after `state.epoch`. A failure is logged, not fatal: a run that cannot
    /// checkpoint can still finish.
    pub fn save(&self, state: &LoopState, net: &Classifier, best: &[(String, Tensor)], opt: &Adam) {
        if let Err(e) = self.try_save(state, net, best, opt) {
            tracing::warn!(epoch = state.epoch, error = %e, "could not write the checkpoint; training goes on");
        } else {
            tracing::info!(epoch = state.epoch, prefix = %self.prefix, "checkpoint written");
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
        self.runtime.block_on(async {
            for (name, bytes) in files {
                self.storage
                    .put(&self.file_key(state.epoch, name), bytes)
                    .await?;
            }
            self.storage.put_json(&self.state_key(), &file).await?;
            if state.epoch > 1 {
                for name in ["weights", "best", "adam"] {
                    // Best effort: a leftover file costs space, never correctness.
                    let _ = self
                        .storage
                        .delete(&self.file_key(state.epoch - 1, name))
                        .await;
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
            return unusable("it was made from other data, hyperparameters or precision".into());
        }
        let epoch = file.state.epoch;
        let mut files = Vec::with_capacity(3);
        for name in ["weights", "best", "adam"] {
            match self
                .runtime
                .block_on(self.storage.get(&self.file_key(epoch, name)))
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
        tracing::info!(epoch, prefix = %self.prefix, "resuming from the checkpoint");
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
