//! Dynamic batching: equivalence with single-image inference, a bounded queue, batches split at
//! `max_batch`, and failures that stay contained — or, when a worker dies, show in health.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{IMAGE_SIZE, batch_config, detector, limits, model_uri, png, runtime};
use face2simpson_inference::metrics::Metrics;
use face2simpson_inference::{
    AppState, BatchConfig, BatchError, Batcher, Forward, Probabilities, app, load_model,
};
use model::Preprocessor;
use tower::ServiceExt;

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

async fn real_models(n: usize) -> Vec<Box<dyn Forward>> {
    let dir = tempfile::tempdir().unwrap();
    let mut rt = runtime();
    rt.workers = n;
    load_model(&model_uri(dir.path()).await, 224, &rt)
        .await
        .unwrap()
        .0
        .workers
}

fn bucket(text: &str, le: &str) -> u64 {
    text.lines()
        .find(|l| {
            l.starts_with(&format!(
                "face2simpson_inference_batch_size_bucket{{le=\"{le}\"}}"
            ))
        })
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap()
}

fn count(text: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with("face2simpson_inference_batch_size_count"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_results_equal_single_results() {
    let metrics = Arc::new(Metrics::default());
    let batcher = Batcher::spawn(
        real_models(2).await,
        IMAGE_SIZE,
        batch_config(),
        metrics.clone(),
    )
    .unwrap();
    assert_eq!(batcher.alive(), 2);
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
    assert!(
        bucket(&text, "1.0") < count(&text),
        "no batch held more than one image:\n{text}"
    );
}

/// Records the size of every forward pass; `fail_on` makes passes of that size fail, `panic_on`
/// makes them panic.
struct Fake {
    sizes: Arc<std::sync::Mutex<Vec<usize>>>,
    fail_on: Option<usize>,
    panic_on: Option<usize>,
    calls: Arc<AtomicUsize>,
}

impl Forward for Fake {
    fn forward(&mut self, _: &[f32], n: usize, _: usize) -> Result<Vec<Probabilities>, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sizes.lock().unwrap().push(n);
        if self.panic_on == Some(n) {
            panic!("simulated runtime crash");
        }
        if self.fail_on == Some(n) {
            return Err("simulated runtime error".into());
        }
        Ok(vec![[0.25; 4]; n])
    }
}

fn fake(
    fail_on: Option<usize>,
    panic_on: Option<usize>,
) -> (Box<dyn Forward>, Arc<std::sync::Mutex<Vec<usize>>>) {
    let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let f = Fake {
        sizes: sizes.clone(),
        fail_on,
        panic_on,
        calls: Arc::new(AtomicUsize::new(0)),
    };
    (Box::new(f), sizes)
}

#[tokio::test]
async fn large_requests_are_split_at_max_batch() {
    let (model, sizes) = fake(None, None);
    let config = BatchConfig {
        max_batch: 4,
        max_wait: Duration::ZERO,
        queue_capacity: 8,
    };
    let batcher = Batcher::spawn(vec![model], 2, config, Arc::new(Metrics::default())).unwrap();
    let out = batcher.classify(vec![vec![0.0; 12]; 10]).await.unwrap();
    assert_eq!(out.len(), 10);
    assert_eq!(*sizes.lock().unwrap(), vec![4, 4, 2]);
}

#[tokio::test]
async fn a_failed_pass_fails_only_its_requests() {
    let (model, _) = fake(Some(3), None);
    let config = BatchConfig {
        max_batch: 8,
        max_wait: Duration::ZERO,
        queue_capacity: 8,
    };
    let batcher = Batcher::spawn(vec![model], 2, config, Arc::new(Metrics::default())).unwrap();
    assert!(matches!(
        batcher.classify(vec![vec![0.0; 12]; 3]).await,
        Err(BatchError::Failed(_))
    ));
    // The worker lives on and serves the next request.
    assert_eq!(batcher.alive(), 1);
    assert_eq!(
        batcher
            .classify(vec![vec![0.0; 12]; 2])
            .await
            .unwrap()
            .len(),
        2
    );
}

/// A worker whose model panicked stops; with none left, /healthz and /readyz go red so that
/// Kubernetes restarts the pod, and predictions get 503 instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_turns_health_red() {
    let (model, _) = fake(None, Some(1));
    let state = AppState::new(limits(), detector(8));
    let info = {
        let dir = tempfile::tempdir().unwrap();
        load_model(&model_uri(dir.path()).await, 224, &runtime())
            .await
            .unwrap()
            .1
    };
    state.install(vec![model], info, batch_config()).unwrap();
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    let status = |req: Request<Body>| {
        let state = state.clone();
        async move { app(state).oneshot(req).await.unwrap().status() }
    };
    assert_eq!(status(get("/healthz")).await, StatusCode::OK);
    let upload = || {
        Request::post("/v1/predict")
            .header("content-type", "image/png")
            .body(Body::from(png(&image::RgbImage::from_pixel(
                64,
                48,
                image::Rgb([9, 90, 200]),
            ))))
            .unwrap()
    };
    assert_eq!(status(upload()).await, StatusCode::INTERNAL_SERVER_ERROR);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        status(get("/healthz")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        status(get("/readyz")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(status(upload()).await, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_turns_callers_away() {
    // 224 px makes each pass slow enough that the queue of one fills up.
    let config = BatchConfig {
        max_batch: 1,
        max_wait: Duration::ZERO,
        queue_capacity: 1,
    };
    let batcher = Batcher::spawn(
        real_models(1).await,
        224,
        config,
        Arc::new(Metrics::default()),
    )
    .unwrap();
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
