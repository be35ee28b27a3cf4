//! Defaults sized by the pod, not the node.
//!
//! Without a CPU limit `available_parallelism()` is the node's core count: a pod requesting
//! 250m on a 64-core node would start 64 decoders and 64 intra-op threads and spend its slice
//! of CPU switching between them. So the CPUs and memory the pod may use are read, in order,
//! from the cgroup v2 files (`cpu.max`, `memory.max`: what the kernel enforces), from the
//! `CPU_REQUEST` (millicores) and `MEMORY_LIMIT` (bytes) variables the operator sets through
//! the downward API, and only then from the machine.

use std::path::Path;

/// Where cgroup v2 is mounted in a container.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// What the process itself needs besides uploads, decoded pixels and classifier sessions:
/// ONNX Runtime, the detector sessions, the runtime. Kept out of the budgets.
pub const BASELINE_BYTES: u64 = 96 << 20;
/// Each classifier session of the 224 px MobileNetV2 export with its arena: measured at
/// 15 MiB for a one-thread session and 27 MiB for the two-thread solo session (resident, at
/// rest after a request); kept out of the budgets too.
pub const SESSION_BYTES: u64 = 28 << 20;

/// Budgets when the memory is unknown: per decode slot, a 40 MP photo's pixels (the largest
/// the decoder accepts, 120 MB as RGB8); uploads, a few maximal bodies.
const PIXELS_PER_DECODE_UNBOUNDED: u64 = 160 << 20;
const UPLOADS_UNBOUNDED: u64 = 256 << 20;

/// Where a figure came from, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cgroup,
    Env,
    Machine,
    Unknown,
}

/// The CPUs and memory this pod may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodResources {
    pub cpus: f64,
    pub cpus_from: Source,
    pub memory: Option<u64>,
    pub memory_from: Source,
}

/// Pool sizes and budgets derived from [`PodResources`].
///
/// The cores are split per request, not per stage: under load each core runs whole requests
/// (a decode slot with its single-threaded detector session, a classifier session with one
/// intra-op thread), so no thread waits at an intra-op barrier for one a decoder preempted;
/// a request alone in the pod gets the solo session, with a thread per core (measured in
/// docs/benchmarks.md, *Where the time goes*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// Uploads decoded at once, and BlazeFace sessions (one per decode).
    pub decodes: usize,
    /// What the process holds besides the budgets: [`BASELINE_BYTES`] and a [`SESSION_BYTES`]
    /// per classifier session.
    pub baseline: u64,
    /// Classifier sessions sharing the batch queue, one per core.
    pub model_workers: usize,
    /// ONNX Runtime intra-op threads per classifier session.
    pub ort_threads: usize,
    /// Intra-op threads of the solo session (a request alone gets every core); 0 on a pod with
    /// one core, where it would be one more copy of the same.
    pub solo_threads: usize,
    /// Upload bytes held at once (bodies being read or waiting to be decoded).
    pub upload_budget: u64,
    /// Decoded pixel bytes held at once.
    pub pixel_budget: u64,
}

/// `cpu.max` is `"<quota> <period>"`, or `"max <period>"` without a limit.
fn cgroup_cpus(root: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(root.join("cpu.max")).ok()?;
    let mut parts = text.split_whitespace();
    let quota: f64 = parts.next()?.parse().ok()?;
    let period: f64 = parts.next()?.parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// `memory.max` is a byte count, or `"max"` without a limit.
fn cgroup_memory(root: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(root.join("memory.max")).ok()?;
    text.trim().parse().ok().filter(|&b| b > 0)
}

fn machine_cpus() -> f64 {
    std::thread::available_parallelism().map_or(2, |n| n.get()) as f64
}

impl PodResources {
    /// Reads the pod's CPUs and memory: cgroup files under `root`, else `cpu_request`
    /// (millicores) and `memory_limit` (bytes), else the machine's cores and no memory bound.
    pub fn detect(root: &Path, cpu_request: Option<u64>, memory_limit: Option<u64>) -> Self {
        let (cpus, cpus_from) = match (cgroup_cpus(root), cpu_request) {
            (Some(c), _) => (c, Source::Cgroup),
            (None, Some(m)) => (m as f64 / 1000.0, Source::Env),
            (None, None) => (machine_cpus(), Source::Machine),
        };
        let (memory, memory_from) = match (cgroup_memory(root), memory_limit) {
            (Some(b), _) => (Some(b), Source::Cgroup),
            (None, Some(b)) => (Some(b), Source::Env),
            (None, None) => (None, Source::Unknown),
        };
        Self {
            // Never more than the machine has, whatever a request says.
            cpus: cpus.min(machine_cpus()),
            cpus_from,
            memory,
            memory_from,
        }
    }

    /// Whole cores to run on: a fraction still gets one thread, and 1.5 CPUs get one, not two
    /// that would be throttled half the time.
    pub fn cores(&self) -> usize {
        (self.cpus.floor() as usize).max(1)
    }

    /// Pools and budgets for these resources. With a known memory, what is left after the
    /// baseline (the process and its sessions) is split: half for decoded pixels, a quarter
    /// for upload bodies, a quarter headroom (preprocessed inputs, responses, allocator slack).
    pub fn sizing(&self) -> Sizing {
        let cores = self.cores();
        let solo_threads = if cores > 1 { cores } else { 0 };
        let sessions = cores + usize::from(solo_threads > 0);
        let baseline = BASELINE_BYTES + SESSION_BYTES * sessions as u64;
        let (upload_budget, pixel_budget) = match self.memory {
            Some(memory) => {
                let usable = memory.saturating_sub(baseline).max(32 << 20);
                (usable / 4, usable / 2)
            }
            None => (
                UPLOADS_UNBOUNDED,
                PIXELS_PER_DECODE_UNBOUNDED * cores as u64,
            ),
        };
        Sizing {
            decodes: cores,
            baseline,
            model_workers: cores,
            ort_threads: 1,
            solo_threads,
            upload_budget,
            pixel_budget,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cgroup(cpu: &str, memory: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.max"), cpu).unwrap();
        std::fs::write(dir.path().join("memory.max"), memory).unwrap();
        dir
    }

    #[test]
    fn the_cgroup_wins_then_the_env_then_the_machine() {
        let dir = cgroup("50000 100000\n", "536870912\n");
        let r = PodResources::detect(dir.path(), Some(4000), Some(1 << 40));
        assert_eq!((r.cpus, r.cpus_from), (0.5, Source::Cgroup));
        assert_eq!((r.memory, r.memory_from), (Some(512 << 20), Source::Cgroup));

        let unlimited = cgroup("max 100000\n", "max\n");
        let r = PodResources::detect(unlimited.path(), Some(1000), Some(256 << 20));
        assert_eq!((r.cpus, r.cpus_from), (1.0, Source::Env));
        assert_eq!((r.memory, r.memory_from), (Some(256 << 20), Source::Env));

        let r = PodResources::detect(Path::new("/nonexistent"), None, None);
        assert_eq!(r.cpus_from, Source::Machine);
        assert_eq!(r.memory, None);
    }

    #[test]
    fn budgets_fit_the_memory() {
        let r = PodResources {
            cpus: 1.5,
            cpus_from: Source::Env,
            memory: Some(1 << 30),
            memory_from: Source::Env,
        };
        let s = r.sizing();
        assert_eq!((s.decodes, s.model_workers, s.ort_threads), (1, 1, 1));
        assert_eq!(
            s.solo_threads, 0,
            "one core: no second copy of the same session"
        );
        let four = PodResources { cpus: 4.0, ..r }.sizing();
        assert_eq!(
            (four.decodes, four.model_workers, four.ort_threads),
            (4, 4, 1)
        );
        assert_eq!(four.solo_threads, 4);
        assert_eq!(four.baseline, BASELINE_BYTES + 5 * SESSION_BYTES);
        assert!(s.upload_budget + s.pixel_budget + s.baseline < 1 << 30);
        assert_eq!(s.baseline, BASELINE_BYTES + SESSION_BYTES);
    }
}
