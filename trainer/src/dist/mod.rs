//! Data-parallel training over libtorch's c10d ([`c10d`], the workspace's shim crate): the
//! world a rank belongs to ([`World`], from flags and the variables Kubernetes and Kubeflow
//! set), the connected group ([`Dist`]) and what the training loop asks of it: rank 0's state
//! broadcast to every rank, gradients averaged in a few flat buckets ([`GradSync`]).
//!
//! A world of one never touches c10d: [`World::is_distributed`] is false and the trainer runs
//! as the single process it always was.

mod coalesce;
mod grads;

use std::net::ToSocketAddrs;
use std::time::Duration;

use c10d::{Backend, GlooBind, ProcessGroup, ReduceOp, Rendezvous};
use tch::{Device, Tensor};

pub use coalesce::{buckets, flatten, unflatten};
pub use grads::GradSync;

/// Bytes per flat buffer a collective moves at once: PyTorch DDP's default bucket size.
pub const BUCKET_BYTES: usize = 25 << 20;

/// Which collective library `--dist-backend` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// NCCL for CUDA devices when this build has it, else Gloo.
    #[default]
    Auto,
    Gloo,
    Nccl,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "gloo" => Ok(Self::Gloo),
            "nccl" => Ok(Self::Nccl),
            other => Err(format!(
                "unknown distributed backend {other:?}; use auto, gloo or nccl"
            )),
        }
    }
}

/// The ranks of one training and where they meet.
#[derive(Debug, Clone)]
pub struct World {
    /// Number of ranks (`--workers`); 1 is the single-process trainer.
    pub workers: usize,
    pub rank: usize,
    /// Rank 0's host, which serves the rendezvous store.
    pub master_addr: String,
    pub master_port: u16,
    /// The rendezvous and every collective fail after it (exit code 5).
    pub timeout: Duration,
    pub backend: BackendChoice,
}

impl World {
    /// One process, no peers.
    pub fn single() -> Self {
        Self {
            workers: 1,
            rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
            timeout: Duration::from_secs(300),
            backend: BackendChoice::Auto,
        }
    }

    pub fn is_distributed(&self) -> bool {
        self.workers > 1
    }

    /// Rank 0: the one that evaluates, checkpoints and writes artifacts.
    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.workers == 0 {
            return Err("--workers must be at least 1".into());
        }
        if self.rank >= self.workers {
            return Err(format!(
                "--rank {} is outside a world of {} workers (ranks 0..{})",
                self.rank,
                self.workers,
                self.workers - 1
            ));
        }
        if self.timeout.is_zero() {
            return Err("--collective-timeout-seconds must be at least 1".into());
        }
        Ok(())
    }

    /// The backend for tensors on `device`.
    pub fn backend_for(&self, device: Device) -> Result<Backend, String> {
        match (self.backend, device.is_cuda()) {
            (BackendChoice::Gloo, _) => Ok(Backend::Gloo),
            (BackendChoice::Nccl, false) => {
                Err("--dist-backend nccl needs a CUDA device; use gloo on the CPU".into())
            }
            (BackendChoice::Nccl, true) => Ok(Backend::Nccl),
            (BackendChoice::Auto, true) if Backend::Nccl.is_available() => Ok(Backend::Nccl),
            (BackendChoice::Auto, _) => Ok(Backend::Gloo),
        }
    }

    /// Where Gloo listens: the interface `GLOO_SOCKET_IFNAME` names (PyTorch's variable);
    /// loopback when rank 0 is on loopback (every rank on this machine); else the address
    /// this machine's hostname resolves to (a pod's IP).
    fn gloo_bind(&self) -> GlooBind {
        if let Ok(interface) = std::env::var("GLOO_SOCKET_IFNAME")
            && !interface.is_empty()
        {
            return GlooBind::Interface(interface);
        }
        let on_loopback = (self.master_addr.as_str(), self.master_port)
            .to_socket_addrs()
            .is_ok_and(|mut addrs| addrs.all(|a| a.ip().is_loopback()));
        if on_loopback {
            GlooBind::Address("127.0.0.1".into())
        } else {
            GlooBind::Hostname
        }
    }
}

/// This rank's membership of a connected world.
#[derive(Debug)]
pub struct Dist {
    group: ProcessGroup,
    /// Tensors live on a GPU but the group is Gloo's: buckets travel through host memory.
    staged: bool,
}

impl Dist {
    /// Meets the other ranks (blocking, up to the world's timeout).
    pub fn connect(world: &World, device: Device) -> Result<Self, DistError> {
        let backend = world.backend_for(device).map_err(DistError::Config)?;
        let at = Rendezvous {
            master_addr: world.master_addr.clone(),
            master_port: world.master_port,
            rank: world.rank,
            world_size: world.workers,
            timeout: world.timeout,
            gloo_bind: world.gloo_bind(),
        };
        let group = ProcessGroup::new(backend, &at).map_err(|e| match e {
            c10d::Error::Unavailable(_) | c10d::Error::Invalid(_) => {
                DistError::Config(e.to_string())
            }
            e => DistError::Collective(e),
        })?;
        let staged = backend == Backend::Gloo && device.is_cuda();
        if staged {
            tracing::warn!(
                "training on a GPU with Gloo (this build has no NCCL): gradients travel through host memory"
            );
        }
        tracing::info!(
            rank = world.rank,
            workers = world.workers,
            backend = %backend,
            master = %format!("{}:{}", world.master_addr, world.master_port),
            "joined the process group"
        );
        Ok(Self { group, staged })
    }

    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    pub fn world_size(&self) -> usize {
        self.group.world_size()
    }

    pub fn is_leader(&self) -> bool {
        self.rank() == 0
    }

    pub fn backend(&self) -> Backend {
        self.group.backend()
    }

    /// Whether a value a collective produced can be read on the host without waiting for the
    /// device (Gloo works on host memory; NCCL's results stay on the GPU).
    pub fn results_on_host(&self) -> bool {
        self.staged || self.group.backend() == Backend::Gloo
    }

    /// Copies rank 0's values of `tensors` (any layout, any device) into every rank's, a few
    /// flat buckets at a time.
    pub fn broadcast_from_leader(&self, tensors: &[Tensor]) -> Result<(), c10d::Error> {
        tch::no_grad(|| {
            for range in buckets(tensors, BUCKET_BYTES) {
                let part = &tensors[range];
                let flat = flatten(part);
                self.on_host(&flat, |host| self.group.broadcast(host, 0))?;
                unflatten(&flat, part);
            }
            Ok(())
        })
    }

    /// Sums `tensors` over the ranks, in place.
    pub fn allreduce_sum(&self, tensors: &[Tensor]) -> Result<(), c10d::Error> {
        tch::no_grad(|| {
            for range in buckets(tensors, BUCKET_BYTES) {
                let part = &tensors[range];
                let flat = flatten(part);
                self.on_host(&flat, |host| self.group.allreduce(host, ReduceOp::Sum))?;
                unflatten(&flat, part);
            }
            Ok(())
        })
    }

    /// Runs a collective on a flat buffer, through host memory when the group cannot reach
    /// the device it lives on.
    fn on_host(
        &self,
        flat: &Tensor,
        op: impl FnOnce(&mut [Tensor]) -> Result<(), c10d::Error>,
    ) -> Result<(), c10d::Error> {
        if self.staged {
            let mut host = [flat.to_device(Device::Cpu)];
            op(&mut host)?;
            flat.shallow_clone().copy_(&host[0]);
            Ok(())
        } else {
            op(&mut [flat.shallow_clone()])
        }
    }

    fn group(&self) -> &ProcessGroup {
        &self.group
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Collective(#[from] c10d::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_world_is_checked_and_picks_its_backend() {
        let mut w = World::single();
        assert!(w.validate().is_ok() && !w.is_distributed() && w.is_leader());
        w.workers = 2;
        w.rank = 2;
        assert!(w.validate().unwrap_err().contains("outside a world of 2"));
        w.rank = 1;
        assert!(w.validate().is_ok() && w.is_distributed() && !w.is_leader());
        assert_eq!(w.backend_for(Device::Cpu), Ok(Backend::Gloo));
        w.backend = BackendChoice::Nccl;
        assert!(w.backend_for(Device::Cpu).is_err());
        assert_eq!(w.backend_for(Device::Cuda(0)), Ok(Backend::Nccl));
        w.backend = BackendChoice::Auto;
        let expected = if Backend::Nccl.is_available() {
            Backend::Nccl
        } else {
            Backend::Gloo
        };
        assert_eq!(w.backend_for(Device::Cuda(0)), Ok(expected));
        assert_eq!("gloo".parse(), Ok(BackendChoice::Gloo));
        assert!("mpi".parse::<BackendChoice>().is_err());
        assert_eq!(w.gloo_bind(), GlooBind::Address("127.0.0.1".into()));
    }
}
