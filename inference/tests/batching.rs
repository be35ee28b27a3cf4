//! Dynamic batching: equivalence with single-image inference, and a bounded queue.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{IMAGE_SIZE, batch_config, model_uri};
use face2simpson_inference::batcher::{BatchConfig, BatchError, Batcher};
use face2simpson_inference::load_model;
use face2simpson_inference::metrics::Metrics;
use model::Preprocessor;

fn inputs(n: usize, size: u32) -> Vec<Vec<f32>> {
    let pre = Preprocessor::new(size);
    (0..n)
        .map(|i| {
            let img = image::RgbImage::from_fn(size, size, |x, y| {
                image::Rgb([
                    (x * 7 + i as u32 * 31) as u8,
                    (y * 5 + i as u32 * 17) as u8,
                    (x ^ y) as u8,
                ])
            });
            pre.eval(&img)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_results_equal_single_results() {
    let dir = tempfile::tempdir().unwrap();
    let (net, _) = load_model(&model_uri(dir.path()).await, tch::Device::Cpu, 224)
        .await
        .unwrap();
    let metrics = Arc::new(Metrics::default());
    let batcher = Batcher::spawn(net, IMAGE_SIZE, batch_config(), metrics.clone());
    let xs = inputs(8, IMAGE_SIZE);
    let mut singles = Vec::new();
    for x in &xs {
        singles.push(batcher.classify(vec![x.clone()]).await.unwrap()[0]);
    }
    // Concurrent callers land in shared batches …
    let handles: Vec<_> = xs
        .iter()
        .map(|x| {
            let b = batcher.clone();
            let x = x.clone();
            tokio::spawn(async move { b.classify(vec![x]).await.unwrap()[0] })
        })
        .collect();
    let mut concurrent = Vec::new();
    for h in handles {
        concurrent.push(h.await.unwrap());
    }
    // … and one caller's several images in one.
    let together = batcher.classify(xs.clone()).await.unwrap();
    for i in 0..xs.len() {
        for c in 0..4 {
            assert!(
                (singles[i][c] - concurrent[i][c]).abs() < 1e-5,
                "image {i}: {:?} vs {:?}",
                singles[i],
                concurrent[i]
            );
            assert!(
                (singles[i][c] - together[i][c]).abs() < 1e-5,
                "image {i}: {:?} vs {:?}",
                singles[i],
                together[i]
            );
        }
    }
    // Some forward passes really carried more than one image.
    let text = metrics.encode();
    let line = text
        .lines()
        .find(|l| l.starts_with("face2simpson_inference_batch_size_bucket{le=\"1.0\"}"))
        .unwrap();
    let ones: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let count_line = text
        .lines()
        .find(|l| l.starts_with("face2simpson_inference_batch_size_count"))
        .unwrap();
    let total: u64 = count_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(ones < total, "no batch held more than one image:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_turns_callers_away() {
    let dir = tempfile::tempdir().unwrap();
    let (net, _) = load_model(&model_uri(dir.path()).await, tch::Device::Cpu, 224)
        .await
        .unwrap();
    // 224 px makes each pass slow enough that the queue of one fills up.
    let config = BatchConfig {
        max_batch: 1,
        max_wait: Duration::ZERO,
        queue_capacity: 1,
    };
    let batcher = Batcher::spawn(net, 224, config, Arc::new(Metrics::default()));
    let x = inputs(1, 224).remove(0);
    let calls: Vec<_> = (0..24).map(|_| batcher.classify(vec![x.clone()])).collect();
    let results = futures::future::join_all(calls).await;
    let busy = results
        .iter()
        .filter(|r| matches!(r, Err(BatchError::Busy)))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!(busy > 0, "the queue never filled");
    assert!(ok > 0);
    assert_eq!(busy + ok, 24);
}
