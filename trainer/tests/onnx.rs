//! The ONNX export computes what the libtorch network computes: the same inputs through tch and
//! through ONNX Runtime give the same probabilities to 1e-4, at 96 and 224 px, for random
//! tensors and real photos, with ImageNet batch-norm statistics (so the folding is exercised
//! with non-trivial means and variances) and several batch sizes (the batch is dynamic).
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use face2simpson_trainer::torch::Classifier;
use model::{Preprocessor, decode};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use tch::{Device, Kind, Tensor};

fn environment() -> &'static ort::environment::Environment {
    static ENV: OnceLock<ort::environment::Environment> = OnceLock::new();
    ENV.get_or_init(|| {
        let lib = env!("ORT_DYLIB_PATH");
        ort::init_from(lib)
            .unwrap_or_else(|e| panic!("{lib}: {e}; run `make setup` first"))
            .build()
            .unwrap()
    })
}

/// ImageNet backbone (real batch-norm statistics) and a seeded random 4-class head.
fn network() -> Classifier {
    tch::manual_seed(11);
    let mut net = Classifier::new(Device::Cpu, 0.2);
    let pth = std::fs::read(env!("FACE2SIMPSON_PRETRAINED")).unwrap();
    net.load_backbone(&pth).unwrap();
    net
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn photos(size: u32) -> Vec<f32> {
    let pre = Preprocessor::new(size);
    let mut out = Vec::new();
    for png in [
        &include_bytes!("fixtures/chelsea.png")[..],
        &include_bytes!("fixtures/coffee.png")[..],
    ] {
        out.extend(pre.eval(&pre.fit(&decode(png).unwrap())));
    }
    out
}

#[test]
fn onnx_runtime_agrees_with_libtorch() {
    let net = network();
    let onnx = model::onnx::export_safetensors(&net.to_safetensors().unwrap(), 224).unwrap();
    let mut session = Session::builder(environment())
        .unwrap()
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .unwrap()
        .with_intra_threads(2)
        .unwrap()
        .commit_from_memory(&onnx)
        .unwrap();
    for size in [96usize, 224] {
        let random = Tensor::randn([3, 3, size as i64, size as i64], (Kind::Float, Device::Cpu));
        let random = Vec::<f32>::try_from(random.view([-1])).unwrap();
        for (what, x) in [("random", random), ("photos", photos(size as u32))] {
            let n = x.len() / (3 * size * size);
            let torch =
                net.predict(&Tensor::from_slice(&x).view([n as i64, 3, size as i64, size as i64]));
            let torch = Vec::<f32>::try_from(torch.view([-1])).unwrap();
            let input = TensorRef::from_array_view(([n, 3, size, size], &x[..])).unwrap();
            let outputs = session
                .run(ort::inputs![model::onnx::INPUT => input])
                .unwrap();
            let (shape, probs) = outputs[model::onnx::OUTPUT]
                .try_extract_tensor::<f32>()
                .unwrap();
            assert_eq!(&shape[..], &[n as i64, 4]);
            let diff = max_abs_diff(&torch, probs);
            assert!(
                diff <= 1e-4,
                "{what} at {size} px: max |tch - onnx| = {diff:e}\ntch  {torch:?}\nonnx {probs:?}"
            );
            eprintln!("{what} at {size} px, batch {n}: max |tch - onnx| = {diff:e}");
        }
    }
}
