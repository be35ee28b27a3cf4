//! Mid-epoch checkpoints: a run stopped between two steps resumes at the next one and ends
//! exactly where an uninterrupted run ends. Alone in its test binary: the comparison is bit for
//! bit, and libtorch's global random generator (weight initialisation, dropout) would be
//! reseeded at any moment by tests running on other threads of the same process.
#![allow(clippy::unwrap_used)]

mod common;

use artifacts::Storage;
use common::{config, dataset, keys};
use face2simpson_trainer::dist::World;
use face2simpson_trainer::progress::Progress;
use face2simpson_trainer::train::{
    RankOutcome, RunTarget, StopSignal, TrainConfig, TrainError, run_rank,
};

/// Told to stop (SIGTERM in the binary) during the first epoch, a run checkpoints after the
/// step it is on and ends with `Interrupted`; started again it resumes at that step and ends
/// exactly where an uninterrupted run does (same weights, same curve). A checkpoint made with
/// another backbone is not resumed: that run trains from the start.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_stopped_mid_epoch_resumes_at_that_step() {
    let storage = Storage::open("memory:///").unwrap();
    dataset(&storage, 8, 48, 6).await;
    let run = |cfg: TrainConfig, stop: StopSignal| {
        let storage = storage.clone();
        async move {
            let target = RunTarget::default();
            let progress = Progress::logs();
            match run_rank(&storage, &cfg, &target, &progress, &World::single(), &stop).await {
                Ok(RankOutcome::Leader(out)) => Ok(*out),
                Ok(RankOutcome::Follower) => panic!("a single process is rank 0"),
                Err(e) => Err(e),
            }
        }
    };
    let cfg = |id: &str, pretrained: bool| {
        let mut c = config(id, 32, 2);
        c.hyper.batch_size = 4;
        if !pretrained {
            c.pretrained = None;
        }
        c
    };
    let stopped = || {
        let s = StopSignal::new();
        s.request();
        s
    };
    let reference = run(cfg("mid-ref", false), StopSignal::new()).await.unwrap();

    let err = run(cfg("mid-1", false), stopped()).await.unwrap_err();
    assert!(
        matches!(err, TrainError::Interrupted { epoch: 1, step: 1 }),
        "{err}"
    );
    let state: serde_json::Value = storage
        .get_json("runs/mid-1/checkpoint/state.json")
        .await
        .unwrap();
    assert_eq!(state["state"]["epoch"], 0);
    assert_eq!(state["state"]["partial"]["steps"], 1);
    assert!(
        storage
            .head("runs/mid-1/metrics.json")
            .await
            .unwrap()
            .is_none()
    );
    let resumed = run(cfg("mid-1", false), StopSignal::new()).await.unwrap();
    assert_eq!(
        resumed.metrics.weights_sha256, reference.metrics.weights_sha256,
        "the resumed run ended elsewhere"
    );
    let curve = |m: &artifacts::RunMetrics| -> Vec<(f64, f64, f64)> {
        m.history
            .iter()
            .map(|r| (r.train_loss, r.val_loss, r.lr))
            .collect()
    };
    assert_eq!(curve(&resumed.metrics), curve(&reference.metrics));
    assert!(keys(&storage, "runs/mid-1/checkpoint").await.is_empty());

    // Stopped with the ImageNet backbone, started again from scratch: the checkpoint is not
    // this run's, so it trains from the start, as the reference did.
    run(cfg("mid-2", true), stopped()).await.unwrap_err();
    let restarted = run(cfg("mid-2", false), StopSignal::new()).await.unwrap();
    assert_eq!(
        restarted.metrics.weights_sha256,
        reference.metrics.weights_sha256
    );
}
