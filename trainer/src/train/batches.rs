//! From samples to batches on the model's device. Batches are prepared on other threads while
//! the model steps, travel as bytes (a quarter of floats; pinned host memory and an
//! asynchronous copy when the device is a GPU) and are converted and normalised on the device.

use std::io;
use std::sync::mpsc::sync_channel;

use model::preprocess::{IMAGENET_MEAN, IMAGENET_STD};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::dataset::Sample;

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
    rank_batches(n, batch_size, seed, epoch, 0, 1)
}

/// One rank's batches of an epoch, with PyTorch's `DistributedSampler` semantics: every rank
/// shuffles the same way (same seed and epoch), the order is padded with its own beginning to
/// a multiple of `world`, and rank `r` takes positions `r, r + world, r + 2·world, …`. Every
/// rank gets as many batches as the others (their collectives pair up), and batch `k` of all
/// ranks together is batch `k` of a single process with `world` times the batch size. A world
/// of one is [`epoch_batches`].
pub fn rank_batches(
    n: usize,
    batch_size: usize,
    seed: u64,
    epoch: u32,
    rank: usize,
    world: usize,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(sample_seed(
        seed,
        epoch,
        usize::MAX,
    )));
    let world = world.max(1);
    let padded = n.div_ceil(world) * world;
    let mine: Vec<usize> = (rank..padded)
        .step_by(world)
        .filter_map(|i| order.get(i % n.max(1)).copied())
        .collect();
    mine.chunks(batch_size)
        .filter(|c| c.len() >= 2)
        .map(<[usize]>::to_vec)
        .collect()
}

/// Consecutive batches in sample order, for evaluation.
pub fn ordered_batches(n: usize, batch_size: usize) -> Vec<Vec<usize>> {
    (0..n)
        .collect::<Vec<_>>()
        .chunks(batch_size)
        .map(<[usize]>::to_vec)
        .collect()
}

/// Images of one batch as packed HWC bytes, `[n, size, size, 3]`, and their labels, on the host.
#[derive(Debug)]
pub struct HostBatch {
    images: HostImages,
    side: i64,
    pub labels: Vec<i64>,
}

/// Where a batch's bytes wait for the training thread.
#[derive(Debug)]
enum HostImages {
    /// Plain memory, made a tensor on the libtorch thread: the threads that build batches never
    /// call libtorch, so they start no OpenMP team of their own (see `torch::thread`).
    Bytes(Vec<u8>),
    /// Page-locked memory bound for a GPU, so the copy there is asynchronous. Pinning is a
    /// libtorch call on the building thread; on a GPU the training thread barely uses OpenMP.
    Pinned(Tensor),
}

impl HostBatch {
    /// Has `fill` write each image of the batch, in parallel, and keeps the bytes in
    /// page-locked memory when they are bound for a GPU.
    pub fn build(
        indices: &[usize],
        samples: &[Sample],
        size: u32,
        bound_for: Device,
        fill: &(impl Fn(usize, &Sample, &mut [u8]) -> io::Result<()> + Sync),
    ) -> io::Result<Self> {
        let per_image = 3 * (size as usize).pow(2);
        let mut bytes = vec![0u8; indices.len() * per_image];
        bytes
            .par_chunks_mut(per_image)
            .zip(indices.par_iter())
            .try_for_each(|(out, &i)| fill(i, &samples[i], out))?;
        let side = i64::from(size);
        let images = if bound_for.is_cuda() {
            HostImages::Pinned(
                Tensor::from_slice(&bytes)
                    .view([indices.len() as i64, side, side, 3])
                    .pin_memory(bound_for),
            )
        } else {
            HostImages::Bytes(bytes)
        };
        let labels = indices.iter().map(|&i| samples[i].label as i64).collect();
        Ok(Self {
            images,
            side,
            labels,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The batch on `device` as a normalised float NCHW tensor with channels-last strides (the
    /// layout the network computes in), and its labels.
    pub fn to_device(&self, device: Device) -> (Tensor, Tensor) {
        self.normalized(&Normalizer::new(device))
    }

    /// As [`HostBatch::to_device`], with the mean and standard deviation already on the
    /// device: what loops over many batches use.
    pub fn normalized(&self, norm: &Normalizer) -> (Tensor, Tensor) {
        let device = norm.device;
        let non_blocking = device.is_cuda();
        let x = match &self.images {
            HostImages::Bytes(bytes) => Tensor::from_slice(bytes)
                .view([self.len() as i64, self.side, self.side, 3])
                .to_device(device),
            HostImages::Pinned(t) => t.to_device_(device, Kind::Uint8, non_blocking, false),
        };
        let y =
            Tensor::from_slice(&self.labels).to_device_(device, Kind::Int64, non_blocking, false);
        (norm.normalize(&x), y)
    }
}

/// ImageNet's per-channel mean and standard deviation on one device, copied there once: a copy
/// per batch was a blocking host-to-device transfer at every step.
#[derive(Debug)]
pub struct Normalizer {
    device: Device,
    mean: Tensor,
    std: Tensor,
}

impl Normalizer {
    pub fn new(device: Device) -> Self {
        let channel = |v: [f32; 3]| Tensor::from_slice(&v).view([1, 3, 1, 1]).to_device(device);
        Self {
            device,
            mean: channel(IMAGENET_MEAN),
            std: channel(IMAGENET_STD),
        }
    }

    /// `ToTensor` + `Normalize` on the device: `(x / 255 - mean) / std` per channel, in the
    /// same order of operations as [`model::Preprocessor::eval`], so both give the same floats.
    pub fn normalize(&self, hwc: &Tensor) -> Tensor {
        let x = hwc.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0;
        (x - &self.mean) / &self.std
    }
}

/// [`Normalizer::normalize`] for one batch on its own device.
pub fn normalize(hwc: &Tensor) -> Tensor {
    Normalizer::new(hwc.device()).normalize(hwc)
}

/// Runs `step` on every batch of an epoch while the next batches are built on other threads,
/// so the model never waits for data it could have had.
pub fn for_each_batch<E: From<io::Error>>(
    samples: &[Sample],
    batches: &[Vec<usize>],
    size: u32,
    bound_for: Device,
    fill: impl Fn(usize, &Sample, &mut [u8]) -> io::Result<()> + Sync,
    mut step: impl FnMut(HostBatch) -> Result<(), E>,
) -> Result<(), E> {
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<io::Result<HostBatch>>(PREFETCH_BATCHES);
        let fill = &fill;
        scope.spawn(move || {
            for batch in batches {
                let built = HostBatch::build(batch, samples, size, bound_for, fill);
                if tx.send(built).is_err() {
                    return; // the consumer stopped early (error)
                }
            }
        });
        for batch in rx {
            step(batch?)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Crop;
    use image::RgbImage;
    use model::Preprocessor;

    #[test]
    fn batches_are_deterministic_and_drop_singletons() {
        let a = epoch_batches(65, 32, 1, 1);
        assert_eq!(a, epoch_batches(65, 32, 1, 1));
        assert_ne!(a, epoch_batches(65, 32, 1, 2));
        assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), vec![32, 32]);
        assert_eq!(epoch_batches(66, 32, 1, 1).len(), 3);
        assert_eq!(ordered_batches(5, 2), vec![vec![0, 1], vec![2, 3], vec![4]]);
    }

    /// DistributedSampler semantics: the ranks' shards are disjoint (but for the padding),
    /// cover the epoch, are equally long, and batch k of two ranks with batch b is batch k of
    /// one process with batch 2b.
    #[test]
    fn ranks_share_an_epoch_like_distributed_sampler() {
        let one = rank_batches(64, 16, 3, 2, 0, 1);
        assert_eq!(one, epoch_batches(64, 16, 3, 2));
        let r0 = rank_batches(64, 8, 3, 2, 0, 2);
        let r1 = rank_batches(64, 8, 3, 2, 1, 2);
        assert_eq!((r0.len(), r1.len()), (4, 4));
        for k in 0..4 {
            let mut both: Vec<usize> = r0[k].iter().chain(&r1[k]).copied().collect();
            let mut single = one[k].clone();
            both.sort_unstable();
            single.sort_unstable();
            assert_eq!(both, single, "batch {k}");
        }
        // 10 samples over 3 ranks: padded to 12 with the order's own beginning, 4 each.
        let shards: Vec<Vec<usize>> = (0..3)
            .map(|r| rank_batches(10, 100, 5, 1, r, 3).concat())
            .collect();
        assert!(shards.iter().all(|s| s.len() == 4));
        let mut all: Vec<usize> = shards.concat();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_ne!(
            rank_batches(64, 8, 3, 2, 0, 2),
            rank_batches(64, 8, 3, 3, 0, 2)
        );
    }

    /// Training and serving see the same floats: the device-side conversion of a byte batch
    /// equals the serving path's `Preprocessor::eval` of the same image.
    #[test]
    fn device_normalisation_matches_the_serving_preprocessor() {
        let size = 24u32;
        let images: Vec<RgbImage> = (0..3u8)
            .map(|k| {
                RgbImage::from_fn(size, size, |x, y| {
                    image::Rgb([(x * 10) as u8 ^ k, (y * 7) as u8, (x + y) as u8 * 3])
                })
            })
            .collect();
        let samples: Vec<Sample> = images
            .iter()
            .enumerate()
            .map(|(k, img)| Sample {
                key: format!("k{k}"),
                label: k,
                image: Crop::Memory(img.clone()),
                face: None,
            })
            .collect();
        let batch = HostBatch::build(&[2, 0], &samples, size, Device::Cpu, &|_, s, out| {
            s.image.read_into(out)
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(batch.labels, [2, 0]);
        let (x, y) = batch.to_device(Device::Cpu);
        assert_eq!(x.size(), [2, 3, 24, 24]);
        assert_eq!(Vec::<i64>::try_from(&y).unwrap(), [2, 0]);
        // Channels-last strides: the channel is the fastest-moving dimension.
        assert_eq!(x.stride()[1], 1);
        let ours = Vec::<f32>::try_from(x.contiguous().view(-1)).unwrap();
        let pre = Preprocessor::new(size);
        let expected: Vec<f32> = [2, 0].iter().flat_map(|&i| pre.eval(&images[i])).collect();
        let worst = ours
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-6, "max abs difference {worst}");
    }
}
