//! The two Python peers, each a process group of its own (uvicorn's workers are children of
//! its supervisor), stopped with the whole group when dropped.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which peer, and how it is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `bench/peer.py`: async endpoint, Haar cascade, one process.
    Afternoon,
    /// `bench/peer_onnx.py`: our pipeline ported, sync endpoint, one worker per core.
    Onnx,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Afternoon => "peer.py (async, Haar, 1 proc)",
            Kind::Onnx => "peer_onnx.py (BlazeFace, N workers)",
        }
    }

    fn script(self) -> PathBuf {
        let name = match self {
            Kind::Afternoon => "peer.py",
            Kind::Onnx => "peer_onnx.py",
        };
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../bench")
            .join(name)
    }
}

/// What both peers are given: the Python, the models and the model's input size.
pub struct Setup {
    pub python: PathBuf,
    pub model: PathBuf,
    pub detector: PathBuf,
    pub image_size: u32,
    pub workers: usize,
}

impl Setup {
    fn command(&self, kind: Kind) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.arg(kind.script())
            .arg("--model")
            .arg(&self.model)
            .args(["--image-size", &self.image_size.to_string()]);
        if kind == Kind::Onnx {
            cmd.arg("--detector")
                .arg(&self.detector)
                .args(["--workers", &self.workers.to_string()]);
        }
        cmd
    }

    /// Starts a peer on `port` and waits until it answers /healthz (with several workers the
    /// socket listens before the workers have loaded their models).
    pub fn start(&self, kind: Kind, port: u16) -> anyhow::Result<Peer> {
        let child = self
            .command(kind)
            .args(["--port", &port.to_string()])
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()?;
        let peer = Peer(child);
        let url = format!("http://127.0.0.1:{port}/healthz");
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let ok = Command::new("curl")
                .args(["-sf", "-o", "/dev/null", &url])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(peer);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        anyhow::bail!("{} did not answer on port {port}", kind.label())
    }

    /// `peer_onnx.py --predict`: its answer for `upload` (or, with `stage_runs` > 0, its
    /// per-stage medians), as JSON.
    pub fn onnx_offline(
        &self,
        upload: &Path,
        stage_runs: usize,
    ) -> anyhow::Result<serde_json::Value> {
        let out = self
            .command(Kind::Onnx)
            .arg("--predict")
            .arg(upload)
            .env("PEER_STAGE_TIMES", stage_runs.to_string())
            .output()?;
        if !out.status.success() {
            anyhow::bail!(
                "peer_onnx.py --predict failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

/// A running peer; dropping it stops its whole process group.
pub struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        // The group id is the child's pid (process_group(0)): SIGTERM reaches uvicorn's
        // supervisor and its workers alike, which a kill of the child alone would orphan.
        signal_group(self.0.id(), "TERM");
        // A peer that blocks its event loop (peer.py) may still be working through queued
        // requests; it gets a few seconds, then the whole group is killed.
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        signal_group(self.0.id(), "KILL");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kill -s SIG -- -PGID`: without the `--`, kill reads the negative group id as an option.
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pgid}")])
        .status();
}

/// A loopback port nobody listens on now: the OS picks it, and it is released at once for the
/// peer to bind (a fixed port could meet a peer left over from an interrupted run).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// POSTs `upload` to `url` once and returns the JSON answer.
pub fn post(url: &str, upload: &Path) -> anyhow::Result<serde_json::Value> {
    let out = Command::new("curl")
        .args(["-sf", "-H", "Content-Type: image/jpeg", "--data-binary"])
        .arg(format!("@{}", upload.display()))
        .arg(url)
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "POST {url} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}
