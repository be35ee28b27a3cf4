//! Gradients averaged over the ranks after every backward pass, a few flat buckets at a time,
//! with the ranks' vote on stopping (a SIGTERM seen by any of them) riding along.

use std::ops::Range;
use std::time::{Duration, Instant};

use c10d::ReduceOp;
use tch::Tensor;

use super::{BUCKET_BYTES, Dist, buckets, flatten, unflatten};

/// Steps between reads of the stop vote when a read waits for the device (NCCL): the vote
/// still rides every step's last bucket, but only every this many steps does the host look.
const DEVICE_VOTE_EVERY: u64 = 16;

/// Averages gradients across the ranks; created once per training, its bucket plan made on
/// the first step.
#[derive(Debug)]
pub struct GradSync<'a> {
    dist: &'a Dist,
    plan: Option<(usize, Vec<Range<usize>>)>,
    steps: u64,
    /// Time spent flattening, reducing and copying back, summed over the steps.
    allreduce: Duration,
}

impl<'a> GradSync<'a> {
    pub fn new(dist: &'a Dist) -> Self {
        Self {
            dist,
            plan: None,
            steps: 0,
            allreduce: Duration::ZERO,
        }
    }

    /// Replaces every rank's gradients with their mean over the ranks, and returns whether
    /// the ranks agreed to stop after this step: `stop` is this rank's vote, and the answer is
    /// the same on every rank (a rank that wants to stop stops all of them at the same step).
    /// Every rank must pass gradients of the same shapes in the same order (the optimizer's
    /// parameters, sorted by name).
    pub fn average(&mut self, grads: &[Tensor], stop: bool) -> Result<bool, c10d::Error> {
        let started = Instant::now();
        let (count, plan) = self
            .plan
            .get_or_insert_with(|| (grads.len(), buckets(grads, BUCKET_BYTES)));
        if grads.is_empty() || *count != grads.len() {
            return Err(c10d::Error::Invalid(format!(
                "the step has {} gradients, the first had {count} (there must be some)",
                grads.len()
            )));
        }
        self.steps += 1;
        let read_vote = self.dist.results_on_host() || self.steps.is_multiple_of(DEVICE_VOTE_EVERY);
        let mut agreed = false;
        let last = plan.len().saturating_sub(1);
        tch::no_grad(|| -> Result<(), c10d::Error> {
            for (i, range) in plan.iter().enumerate() {
                let part = &grads[range.clone()];
                let mut flat = flatten(part);
                let n = flat.numel() as i64;
                if i == last {
                    let vote = Tensor::from_slice(&[if stop { 1.0f32 } else { 0.0 }])
                        .to_kind(flat.kind())
                        .to_device(flat.device());
                    flat = Tensor::cat(&[flat, vote], 0);
                }
                self.dist
                    .on_host(&flat, |t| self.dist.group().allreduce(t, ReduceOp::Avg))?;
                unflatten(&flat.narrow(0, 0, n), part);
                if i == last && read_vote {
                    agreed = flat.double_value(&[n]) > 0.0;
                }
            }
            Ok(())
        })?;
        self.allreduce += started.elapsed();
        Ok(agreed)
    }

    /// Steps averaged so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Host time spent averaging so far. With NCCL the collective runs on the device's stream
    /// and this counts only launching it.
    pub fn allreduce_time(&self) -> Duration {
        self.allreduce
    }
}
