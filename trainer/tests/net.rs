//! The libtorch network: shapes, dropout, weight round trips.
#![allow(clippy::unwrap_used)]

use face2simpson_trainer::torch::Classifier;
use tch::{Device, Kind, Tensor};

#[test]
fn shapes() {
    let net = Classifier::new(Device::Cpu, 0.2);
    let vars = net.var_store().variables();
    assert_eq!(vars["features.0.0.weight"].size(), [32, 3, 3, 3]);
    assert_eq!(vars["features.18.0.weight"].size(), [1280, 320, 1, 1]);
    assert_eq!(vars["classifier.1.weight"].size(), [4, 1280]);
    assert_eq!(vars["classifier.1.bias"].size(), [4]);
    let x = Tensor::randn([3, 3, 64, 64], (Kind::Float, Device::Cpu));
    assert_eq!(net.logits(&x, false).size(), [3, 4]);
    assert_eq!(net.net().embed(&x, false).size(), [3, 1280]);
    let p = net.predict(&x);
    let sums = Vec::<f32>::try_from(p.sum_dim_intlist(Some([1i64].as_slice()), false, Kind::Float))
        .unwrap();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");
}

#[test]
fn dropout_is_active_only_in_training() {
    let net = Classifier::with_classes(Device::Cpu, 4, 0.9);
    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let eval_a = net.logits(&x, false);
    assert!(eval_a.equal(&net.logits(&x, false)));
    tch::manual_seed(1);
    let train_a = tch::no_grad(|| net.logits(&x, true));
    let train_b = tch::no_grad(|| net.logits(&x, true));
    assert!(!train_a.equal(&train_b));
}

#[test]
fn safetensors_round_trip_preserves_outputs() {
    let a = Classifier::new(Device::Cpu, 0.2);
    let bytes = a.to_safetensors().unwrap();
    let mut b = Classifier::new(Device::Cpu, 0.2);
    b.load_weights(&bytes).unwrap();
    let x = Tensor::randn([2, 3, 48, 48], (Kind::Float, Device::Cpu));
    assert!(
        a.logits(&x, false)
            .allclose(&b.logits(&x, false), 1e-6, 1e-6, false)
    );
    assert!(b.load_weights(&bytes[..bytes.len() / 2]).is_err());
}
