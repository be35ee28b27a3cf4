//! Child processes that cannot outlive the test.
//!
//! Each child is started through util-linux's `setpriv --pdeathsig KILL`, so the kernel kills
//! it when the test process dies, even by SIGKILL or a panic that skips destructors; `Drop`
//! kills it on every ordinary exit. `setpriv` execs the program, so the pid is the program's.
//! The parent-death signal follows the *thread* that forked, so processes are only ever
//! spawned from the test's own thread (the harness runs on a current-thread runtime).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// How a child's environment is built.
#[derive(Debug, Clone)]
pub enum Env {
    /// The test's environment plus these variables.
    Inherit(Vec<(String, String)>),
    /// Only these variables (and PATH), as a container would see them.
    Only(Vec<(String, String)>),
}

/// A running child whose stdout and stderr go to `<dir>/<name>.log`.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

fn log_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

impl Process {
    /// Starts `program args…`; its output is appended to `<log_dir>/<name>.log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: Env,
        log_dir: &Path,
    ) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let out = log_file(&log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("setpriv");
        cmd.arg("--pdeathsig")
            .arg("KILL")
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        match env {
            Env::Inherit(vars) => {
                cmd.envs(vars);
            }
            Env::Only(vars) => {
                cmd.env_clear()
                    .env("PATH", std::env::var("PATH").unwrap_or_default())
                    .envs(vars);
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        tracing::debug!(name, pid = child.id(), log = %log.display(), "started");
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// The log file.
    /// The child's pid while it runs (`setpriv` execs the program: it is the program's).
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The exit status once it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits for the exit.
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        Ok(self.child.wait().await?)
    }

    /// SIGKILL, as when a node dies or an OOM kill hits; waits for the exit.
    pub async fn kill(&mut self) -> Result<ExitStatus> {
        self.child.start_kill()?;
        self.wait().await
    }

    /// SIGTERM, then SIGKILL after `grace`, as the kubelet stops a container.
    pub async fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                tracing::warn!(name = %self.name, "did not stop on SIGTERM; killing");
                self.kill().await
            }
        }
    }

    /// The last `lines` lines of the log, for failure messages.
    pub fn tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Kills on drop too (kill_on_drop), but says so for the log reader.
impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            tracing::debug!(name = %self.name, "killed at teardown");
        }
    }
}
