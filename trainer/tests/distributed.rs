//! Data-parallel training with two ranks on Gloo over 127.0.0.1, each its own process.
//!
//! * In lockstep: two processes of this test binary (the test re-runs itself as rank 0 and
//!   rank 1) take real training steps through the trainer's gradient averaging; their
//!   parameters hash the same after every step, and with batch norm in eval mode two ranks of
//!   batch 8 land where one process of batch 16 does on the same samples.
//! * The real binary, `train --workers 2`: a rank killed (or stuck) makes the other exit 5
//!   within the 5 s collective timeout; SIGTERM mid-epoch leaves a mid-epoch checkpoint and
//!   exit 143, and the pair started again resumes at that step and writes one metrics.json.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use artifacts::{RunMetrics, Storage};
use face2simpson_trainer::dist::{Dist, GradSync, World};
use face2simpson_trainer::torch::Classifier;
use face2simpson_trainer::torch::adam::Adam;
use face2simpson_trainer::train::{backward_and_step, rank_batches};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Reduction, Tensor};

const CHILD_RANK: &str = "F2S_TEST_CHILD_RANK";
const CHILD_PORT: &str = "F2S_TEST_CHILD_PORT";
const CHILD_OUT: &str = "F2S_TEST_CHILD_OUT";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn world(rank: usize, port: u16, timeout: Duration) -> World {
    World {
        workers: 2,
        rank,
        master_addr: "127.0.0.1".into(),
        master_port: port,
        timeout,
        ..World::single()
    }
}

/// sha256 of every trainable parameter's values, in name order.
fn parameter_hash(net: &Classifier) -> String {
    let mut named: Vec<(String, Tensor)> = net
        .var_store()
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    for (name, t) in named {
        h.update(name.as_bytes());
        let values = Vec::<f32>::try_from(t.contiguous().view([-1])).unwrap();
        for v in values {
            h.update(v.to_le_bytes());
        }
    }
    format!("{:x}", h.finalize())
}

/// 48 deterministic 64 px "images" (already normalised) and labels.
fn samples() -> (Tensor, Tensor) {
    let x = (Tensor::arange(48 * 3 * 64 * 64, (Kind::Float, Device::Cpu)).view([48, 3, 64, 64])
        * 0.001)
        .sin();
    let y = Tensor::arange(48, (Kind::Int64, Device::Cpu)).remainder(4);
    (x, y)
}

fn batch(indices: &[usize]) -> (Tensor, Tensor) {
    let (x, y) = samples();
    let idx = Tensor::from_slice(&indices.iter().map(|&i| i as i64).collect::<Vec<_>>());
    (x.index_select(0, &idx), y.index_select(0, &idx))
}

/// Trainable parameters in name order.
fn parameters(net: &Classifier) -> Vec<Tensor> {
    let mut named: Vec<(String, Tensor)> = net
        .var_store()
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.into_iter().map(|(_, t)| t).collect()
}

/// The gradients of the batch's mean loss with batch norm in eval mode (running statistics,
/// no dropout), in name order.
fn eval_mode_gradients(net: &Classifier, indices: &[usize]) -> Vec<Tensor> {
    let params = parameters(net);
    for p in &params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    let (x, y) = batch(indices);
    net.logits(&x, false)
        .cross_entropy_loss::<Tensor>(&y, None, Reduction::Mean, -100, 0.0)
        .backward();
    params.iter().map(Tensor::grad).collect()
}

/// Three steps, each rank on its 8 samples of the step's 16, gradients averaged by the
/// trainer's [`GradSync`], then SGD. Rank 0 also computes, at the same weights, the gradient
/// of one process with all 16 samples, and returns the largest difference per step, relative
/// to the largest gradient when that exceeds 1 (fp32 sums of 8 and of 16 terms round
/// differently: the gradients here reach 10 and more). (Weights
/// are compared step by step rather than after three steps: from there on the two
/// trajectories would differ by rounding, which ReLU6's kinks amplify.)
fn eval_mode_steps(net: &Classifier, sync: &mut GradSync<'_>, rank: usize) -> Vec<f64> {
    let reference = (rank == 0).then(|| network(0.0));
    let mut worst = Vec::new();
    for step in 0..3 {
        let mine = &rank_batches(48, 8, 11, 1, rank, 2)[step];
        let grads = eval_mode_gradients(net, mine);
        sync.average(&grads, false).unwrap();
        if let Some(reference) = &reference {
            tch::no_grad(|| {
                for (r, p) in parameters(reference).iter().zip(parameters(net)) {
                    r.shallow_clone().copy_(&p);
                }
            });
            let all = &rank_batches(48, 16, 11, 1, 0, 1)[step];
            let single = eval_mode_gradients(reference, all);
            let diff = grads
                .iter()
                .zip(&single)
                .map(|(a, b)| (a - b).abs().max().double_value(&[]))
                .fold(0.0, f64::max);
            let scale = single
                .iter()
                .map(|g| g.abs().max().double_value(&[]))
                .fold(1.0, f64::max);
            worst.push(diff / scale);
        }
        tch::no_grad(|| {
            for (p, g) in parameters(net).iter().zip(&grads) {
                let _ = p.shallow_clone().g_sub_(&(g * 0.01));
            }
        });
    }
    worst
}

/// The network every rank starts from: ImageNet's backbone (its batch-norm statistics make
/// eval mode well-conditioned; from random weights a step of rounding noise grows into
/// visible differences within three steps) and a seeded head.
fn network(dropout: f64) -> Classifier {
    tch::manual_seed(5);
    let mut net = Classifier::new(Device::Cpu, dropout);
    net.load_backbone(&std::fs::read(common::PRETRAINED).unwrap())
        .unwrap();
    net
}

/// One rank of [`two_ranks_step_in_lockstep_and_match_one_process`], in a process of its own.
fn child(rank: usize) {
    let port: u16 = std::env::var(CHILD_PORT).unwrap().parse().unwrap();
    let out = std::path::PathBuf::from(std::env::var(CHILD_OUT).unwrap());
    tch::set_num_threads(1);
    let dist = Dist::connect(&world(rank, port, Duration::from_secs(30)), Device::Cpu).unwrap();

    // Training mode, the trainer's own step: ranks start from different weights (their own
    // seeds) and see different images, yet hash the same after the start and after each step.
    tch::manual_seed(100 + rank as i64);
    let net = Classifier::new(Device::Cpu, 0.2);
    let mut vars: Vec<(String, Tensor)> = net.var_store().variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let vars: Vec<Tensor> = vars.into_iter().map(|(_, t)| t).collect();
    dist.broadcast_from_leader(&vars).unwrap();
    let mut opt = Adam::new(net.var_store(), 1e-3);
    let mut sync = GradSync::new(&dist);
    let mut hashes = vec![parameter_hash(&net)];
    for step in 0..3 {
        let indices = &rank_batches(48, 8, 3, 1, rank, 2)[step];
        let (x, y) = batch(indices);
        let loss =
            net.logits(&x, true)
                .cross_entropy_loss::<Tensor>(&y, None, Reduction::Mean, -100, 0.1);
        let stop = backward_and_step(&mut opt, None, Some(&mut sync), &loss, false).unwrap();
        assert!(!stop, "nobody voted to stop");
        hashes.push(parameter_hash(&net));
    }
    std::fs::write(out.join(format!("hashes-{rank}")), hashes.join("\n")).unwrap();

    // Eval-mode batch norm, batch 8 per rank against one process with batch 16.
    let net = network(0.0);
    let start = parameter_hash(&net);
    let worst = eval_mode_steps(&net, &mut GradSync::new(&dist), rank);
    assert_ne!(parameter_hash(&net), start, "the steps changed nothing");
    if rank == 0 {
        let worst: Vec<String> = worst.iter().map(f64::to_string).collect();
        std::fs::write(out.join("eval-mode"), worst.join("\n")).unwrap();
    }
}

#[test]
fn two_ranks_step_in_lockstep_and_match_one_process() {
    if let Ok(rank) = std::env::var(CHILD_RANK) {
        return child(rank.parse().unwrap());
    }
    let out = tempfile::tempdir().unwrap();
    let port = free_port();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<Child> = (0..2)
        .map(|rank| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "two_ranks_step_in_lockstep_and_match_one_process",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_RANK, rank.to_string())
                .env(CHILD_PORT, port.to_string())
                .env(CHILD_OUT, out.path())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a rank failed");
    }
    let read =
        |rank: usize| std::fs::read_to_string(out.path().join(format!("hashes-{rank}"))).unwrap();
    let (h0, h1) = (read(0), read(1));
    let h0: Vec<&str> = h0.lines().collect();
    assert_eq!(h0.len(), 4, "start and three steps");
    assert_eq!(
        h0,
        h1.lines().collect::<Vec<_>>(),
        "the ranks' parameters differ"
    );
    for w in h0.windows(2) {
        assert_ne!(w[0], w[1], "a step changed nothing");
    }

    let worst: Vec<f64> = std::fs::read_to_string(out.path().join("eval-mode"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(worst.len(), 3);
    for (step, w) in worst.iter().enumerate() {
        assert!(
            *w <= 1e-5,
            "step {step}: 2 ranks × 8 differ from 1 × 16 by {w}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The binary.

const RUN: &str = "dist-1";

/// A `train --workers 2` rank whose log lines are collected as they come.
struct Rank {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Rank {
    fn spawn(
        store: &std::path::Path,
        run_id: &str,
        rank: usize,
        port: u16,
        extra: &[&str],
    ) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_face2simpson-trainer"));
        cmd.args(["train", "--storage"])
            .arg(store)
            .args([
                "--dataset",
                "datasets/test",
                "--run-id",
                run_id,
                "--image-size",
                "64",
                "--batch-size",
                "4",
                "--pretrained",
                "none",
                "--seed",
                "3",
                "--workers",
                "2",
                "--rank",
                &rank.to_string(),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                &port.to_string(),
                "--collective-timeout-seconds",
                "5",
            ])
            .args(extra)
            .env("ORT_DYLIB_PATH", env!("ORT_DYLIB_PATH"))
            .env("FACE_DETECTOR", env!("FACE2SIMPSON_BLAZEFACE"))
            .env("RUST_LOG", "info,face2simpson_trainer=debug")
            // One JSON object per line: fields are matched without terminal colours.
            .env("LOG_FORMAT", "json")
            // Two processes share the machine's cores.
            .env("OMP_NUM_THREADS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[rank {rank}] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, log }
    }

    fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Waits until a log line contains `needle`.
    fn wait_for(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.logged(needle) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the rank exited ({status}) before logging {needle:?}");
            }
            assert!(Instant::now() < deadline, "no {needle:?} within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the rank did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal} failed");
    }
}

impl Drop for Rank {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file store with the tiny synthetic dataset the other tests use.
async fn store(per_class: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&format!("file://{}", dir.path().display())).unwrap();
    common::dataset(&storage, per_class, 64, 21).await;
    dir
}

/// A rank that dies mid-training fails the other at once (its connection closes); a rank
/// that hangs (stopped) fails it after the collective timeout. Neither leaves it waiting.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_peer_makes_the_others_exit_5_within_the_timeout() {
    let dir = store(12).await;
    for (how, signal) in [("killed", "-KILL"), ("stuck", "-STOP")] {
        let port = free_port();
        let run_id = format!("lost-{how}");
        let long = ["--epochs", "50"];
        let mut r0 = Rank::spawn(dir.path(), &run_id, 0, port, &long);
        let mut r1 = Rank::spawn(dir.path(), &run_id, 1, port, &long);
        r1.wait_for("step done", Duration::from_secs(120));
        r1.signal(signal);
        let t = Instant::now();
        let status = r0.wait(Duration::from_secs(60));
        let took = t.elapsed();
        assert_eq!(status.code(), Some(5), "rank 0 with its peer {how}");
        assert!(
            r0.logged("data-parallel training"),
            "the error names the cause"
        );
        // The collective timeout is 5 s; a stuck peer takes that long, a dead one less.
        assert!(
            took < Duration::from_secs(20),
            "rank 0 took {took:?} with its peer {how}"
        );
        if how == "stuck" {
            assert!(
                took >= Duration::from_secs(4),
                "{took:?}: before the timeout?"
            );
        }
        r1.signal("-KILL");
        assert!(
            !dir.path()
                .join("runs")
                .join(&run_id)
                .join("metrics.json")
                .exists()
        );
    }
}

/// SIGTERM to both ranks mid-epoch: they agree on a step, rank 0 checkpoints it, both exit
/// 143. Started again, the pair resumes at that step (the steps done are not taken again),
/// finishes, and rank 0 writes the run's one metrics.json; the checkpoint is gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_pair_stopped_mid_epoch_resumes_there_and_writes_one_metrics_json() {
    let dir = store(16).await;
    let storage = Storage::open(&format!("file://{}", dir.path().display())).unwrap();
    let port = free_port();
    let epochs = ["--epochs", "2"];
    let mut r0 = Rank::spawn(dir.path(), RUN, 0, port, &epochs);
    let mut r1 = Rank::spawn(dir.path(), RUN, 1, port, &epochs);
    r0.wait_for("\"step\":2,", Duration::from_secs(120));
    r0.signal("-TERM");
    r1.signal("-TERM");
    assert_eq!(r0.wait(Duration::from_secs(60)).code(), Some(143));
    assert_eq!(r1.wait(Duration::from_secs(60)).code(), Some(143));
    let state: serde_json::Value = storage
        .get_json(&format!("runs/{RUN}/checkpoint/state.json"))
        .await
        .unwrap();
    assert_eq!(state["state"]["epoch"], 0, "{state}");
    let done = state["state"]["partial"]["steps"].as_u64().unwrap();
    assert!(done >= 2, "{state}");
    assert_eq!(state["guard"]["workers"], 2);

    let port = free_port();
    let mut r0 = Rank::spawn(dir.path(), RUN, 0, port, &epochs);
    let mut r1 = Rank::spawn(dir.path(), RUN, 1, port, &epochs);
    assert!(r1.wait(Duration::from_secs(300)).success());
    assert!(r0.wait(Duration::from_secs(300)).success());
    assert!(r0.logged(&format!("\"steps_into_next_epoch\":{done},")));
    assert!(r0.logged("resuming from the checkpoint"));

    let m: RunMetrics = storage.get_metrics(RUN).await.unwrap();
    assert_eq!(m.history.len(), 2);
    let d = m.distributed.as_ref().unwrap();
    assert_eq!((d.workers, d.backend.as_str()), (2, "gloo"));
    let per_epoch = rank_batches(m.counts.train as usize, 4, 3, 1, 0, 2).len() as u64;
    assert!(
        done < per_epoch,
        "the stop landed mid-epoch ({done} of {per_epoch})"
    );
    assert_eq!(
        d.steps,
        2 * per_epoch - done,
        "steps taken after the resume"
    );
    assert!(d.allreduce_seconds > 0.0 && d.allreduce_seconds < d.step_seconds);
    // Rank 0's artifacts and nothing else: no second metrics.json, no checkpoint left.
    let mut keys = common::keys(&storage, &format!("runs/{RUN}")).await;
    keys.sort();
    assert_eq!(
        keys,
        [
            format!("runs/{RUN}/metrics.json"),
            format!("runs/{RUN}/model.onnx"),
            format!("runs/{RUN}/model.safetensors"),
        ]
    );
}
