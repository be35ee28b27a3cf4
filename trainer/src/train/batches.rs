//! From samples to batches on the model's device, prepared on other threads while the model
//! steps.

use std::sync::mpsc::sync_channel;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tch::Tensor;

use crate::dataset::Sample;
use crate::torch::Classifier;

/// Batches prepared ahead of the model step. Two keep the device fed while bounding memory.
const PREFETCH_BATCHES: usize = 2;
pub(super) const EVAL_BATCH: usize = 64;

/// A seed per (run, epoch, image): augmentation does not depend on which thread runs it.
pub fn sample_seed(seed: u64, epoch: u32, index: usize) -> u64 {
    let mut z = seed ^ (u64::from(epoch) << 40) ^ index as u64;
    // splitmix64 finaliser
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Batches of indices for one epoch; a trailing batch of one is dropped (batch norm cannot
/// train on it) and comes back reshuffled next epoch.
pub fn epoch_batches(n: usize, batch_size: usize, seed: u64, epoch: u32) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(sample_seed(
        seed,
        epoch,
        usize::MAX,
    )));
    order
        .chunks(batch_size)
        .filter(|c| c.len() >= 2)
        .map(<[usize]>::to_vec)
        .collect()
}

type Batch = (Vec<f32>, Vec<i64>);

/// Runs `step` on every batch of an epoch while the next batches are decoded and augmented
/// on other threads, so the model never waits for data it could have had.
pub fn for_each_batch<E>(
    samples: &[Sample],
    batches: &[Vec<usize>],
    make: impl Fn(usize, &Sample) -> Vec<f32> + Sync,
    mut step: impl FnMut(Batch) -> Result<(), E>,
) -> Result<(), E> {
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<Batch>(PREFETCH_BATCHES);
        let make = &make;
        scope.spawn(move || {
            for batch in batches {
                let parts: Vec<Vec<f32>> =
                    batch.par_iter().map(|&i| make(i, &samples[i])).collect();
                let labels = batch.iter().map(|&i| samples[i].label as i64).collect();
                if tx.send((parts.concat(), labels)).is_err() {
                    return; // the consumer stopped early (error)
                }
            }
        });
        for batch in rx {
            step(batch)?;
        }
        Ok(())
    })
}

/// Moves a prepared batch to the model's device as an NCHW tensor and its labels.
pub fn to_batch(net: &Classifier, xs: &[f32], labels: &[i64], size: u32) -> (Tensor, Tensor) {
    let s = i64::from(size);
    let x = Tensor::from_slice(xs)
        .view([labels.len() as i64, 3, s, s])
        .to_device(net.device());
    let y = Tensor::from_slice(labels).to_device(net.device());
    (x, y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_deterministic_and_drop_singletons() {
        let a = epoch_batches(65, 32, 1, 1);
        assert_eq!(a, epoch_batches(65, 32, 1, 1));
        assert_ne!(a, epoch_batches(65, 32, 1, 2));
        assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), vec![32, 32]);
        assert_eq!(epoch_batches(66, 32, 1, 1).len(), 3);
    }
}
