//! Many tensors as a few flat buffers: one collective per ~25 MB instead of one per tensor
//! (MobileNetV2 has 300 of them, most tiny), and contiguous memory whatever the tensors'
//! layout (the network's convolution weights are channels-last).

use std::ops::Range;

use tch::Tensor;

/// Consecutive runs of `tensors` of one kind and device, each at most `cap_bytes` (a tensor
/// larger than that gets a run of its own).
pub fn buckets(tensors: &[Tensor], cap_bytes: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, t) in tensors.iter().enumerate() {
        let size = t.numel() * t.kind().elt_size_in_bytes();
        let same =
            i > start && t.kind() == tensors[start].kind() && t.device() == tensors[start].device();
        if i > start && (!same || bytes + size > cap_bytes) {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < tensors.len() {
        out.push(start..tensors.len());
    }
    out
}

/// The tensors' elements, each in logical (row-major) order, one after the other in a new
/// contiguous 1-D tensor.
pub fn flatten(tensors: &[Tensor]) -> Tensor {
    let parts: Vec<Tensor> = tensors.iter().map(|t| t.reshape([-1])).collect();
    Tensor::cat(&parts, 0)
}

/// Copies `flat` (as [`flatten`] laid it out) back into `tensors`, in place and in their own
/// layout.
pub fn unflatten(flat: &Tensor, tensors: &[Tensor]) {
    let mut offset = 0;
    for t in tensors {
        let n = t.numel() as i64;
        t.shallow_clone()
            .copy_(&flat.narrow(0, offset, n).view(t.size().as_slice()));
        offset += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn buckets_respect_the_cap_and_the_kind() {
        let f = |n: i64| Tensor::zeros([n], (Kind::Float, Device::Cpu));
        let d = |n: i64| Tensor::zeros([n], (Kind::Double, Device::Cpu));
        // 4 bytes per float: 10 + 10 fit in 80 bytes, the third starts a new bucket; a tensor
        // larger than the cap is a bucket of its own; a change of kind starts one too.
        let ts = [f(10), f(10), f(10), f(100), f(1), d(1), d(1)];
        assert_eq!(buckets(&ts, 80), vec![0..2, 2..3, 3..4, 4..5, 5..7]);
        assert!(buckets(&[], 80).is_empty());
    }

    #[test]
    fn flatten_and_unflatten_round_trip_any_layout() {
        let a = Tensor::arange(24, (Kind::Float, Device::Cpu)).view([1, 2, 3, 4]);
        // Channels-last strides, as the network's convolution weights have.
        let b = crate::torch::net::channels_last(
            &(Tensor::arange(8, (Kind::Float, Device::Cpu)).view([1, 2, 2, 2]) + 100.0),
        );
        assert!(!b.is_contiguous());
        let c = Tensor::from_slice(&[7.0f32]);
        let ts = [a.copy(), b.copy(), c.copy()];
        let flat = flatten(&ts);
        assert_eq!(flat.size(), [33]);
        let targets = [a.zeros_like(), b.zeros_like(), c.zeros_like()];
        unflatten(&(&flat * 2.0), &targets);
        for (t, original) in targets.iter().zip([&a, &b, &c]) {
            assert!(t.equal(&(original * 2.0)));
        }
        assert_eq!(targets[1].stride(), b.stride(), "the layout is kept");
    }
}
