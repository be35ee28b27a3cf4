//! fp32 against mixed precision. A test binary of its own: no other test reseeds libtorch's
//! global generator while these two runs train, so they differ in precision alone.
#![allow(clippy::unwrap_used)]

mod common;

use artifacts::Storage;
use common::{config, dataset, train};

/// Mixed precision (bf16 convolutions, fp32 master weights) learns as well as fp32: on the same
/// synthetic data both reach 90 % and end within 2 points of each other. 100 test images, so
/// that one image is one point.
#[tokio::test(flavor = "multi_thread")]
async fn mixed_precision_reaches_the_accuracy_of_fp32() {
    let storage = Storage::open("memory:///").unwrap();
    dataset(&storage, 100, 96, 11).await;
    let mut accuracy = Vec::new();
    for (run, precision) in [("fp32", "fp32"), ("bf16", "bf16")] {
        let mut cfg = config(run, 64, 4);
        cfg.precision = precision.parse().unwrap();
        let m = train(&storage, &cfg).await.unwrap().metrics;
        assert_eq!(m.precision.as_deref(), Some(precision));
        accuracy.push(m.test_accuracy);
    }
    assert!(accuracy.iter().all(|&a| a >= 0.9), "{accuracy:?}");
    assert!(
        (accuracy[0] - accuracy[1]).abs() <= 0.02 + 1e-9,
        "{accuracy:?}"
    );
}
