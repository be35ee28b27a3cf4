//! libtorch's own collective communication (c10d) for tch tensors: a `TCPStore` rendezvous, a
//! Gloo process group (CPU tensors) or an NCCL one (CUDA tensors, where the build had a CUDA
//! libtorch and NCCL's headers), and the collectives data-parallel training needs: allreduce,
//! broadcast and barrier. `tch` has no distributed API; the libtorch it links already has one,
//! reached through a small C++ shim (`csrc/shim.cpp`) that turns every C++ exception —
//! timeouts and peers that went away included — into an [`Error`].
//!
//! Every call blocks until the collective is done on this rank or failed. Each waits at most
//! the timeout given at [`ProcessGroup::new`], so a dead or stuck peer ends in an error, never
//! a hang.

// The one crate of the workspace that calls C: the shim's functions and tch's raw tensor
// pointers. Every unsafe block is a call into csrc/shim.cpp with pointers it only borrows.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::fmt;
use std::ptr::NonNull;
use std::time::Duration;

use tch::Tensor;

mod ffi {
    use std::ffi::c_char;

    use torch_sys::C_tensor;

    /// `F2sGroup` of csrc/shim.cpp.
    #[repr(C)]
    pub struct Group {
        _private: [u8; 0],
    }

    /// `F2sError`: kind 0 and no message on success.
    #[repr(C)]
    pub struct Status {
        pub kind: i32,
        pub message: *mut c_char,
    }

    pub const OK: i32 = 0;
    pub const TIMEOUT: i32 = 1;
    pub const NETWORK: i32 = 2;

    unsafe extern "C" {
        pub fn f2s_c10d_has_nccl() -> i32;
        pub fn f2s_c10d_free_message(message: *mut c_char);
        pub fn f2s_c10d_group_new(
            backend: i32,
            master_addr: *const c_char,
            master_port: u16,
            rank: i32,
            world: i32,
            timeout_ms: i64,
            gloo_interface: *const c_char,
            gloo_hostname: *const c_char,
            out: *mut *mut Group,
        ) -> Status;
        pub fn f2s_c10d_group_free(group: *mut Group);
        pub fn f2s_c10d_allreduce(
            group: *mut Group,
            tensors: *const *mut C_tensor,
            n: usize,
            op: i32,
        ) -> Status;
        pub fn f2s_c10d_broadcast(
            group: *mut Group,
            tensors: *const *mut C_tensor,
            n: usize,
            root: i32,
        ) -> Status;
        pub fn f2s_c10d_barrier(group: *mut Group) -> Status;
    }
}

/// Which collective library moves the tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Gloo, over TCP: CPU tensors.
    Gloo,
    /// NCCL: CUDA tensors, one GPU per rank. Only in builds against a CUDA libtorch with
    /// NCCL's headers ([`Backend::is_available`]).
    Nccl,
}

impl Backend {
    /// Whether this build can create a group of this backend.
    pub fn is_available(self) -> bool {
        match self {
            Self::Gloo => true,
            // SAFETY: a constant query, no arguments.
            Self::Nccl => unsafe { ffi::f2s_c10d_has_nccl() == 1 },
        }
    }

    fn code(self) -> i32 {
        match self {
            Self::Gloo => 0,
            Self::Nccl => 1,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Gloo => "gloo",
            Self::Nccl => "nccl",
        })
    }
}

/// How a rank's reduction combines the ranks' tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// The mean over ranks (Gloo: a sum divided by the world size).
    Avg,
    Max,
}

impl ReduceOp {
    fn code(self) -> i32 {
        match self {
            Self::Sum => 0,
            Self::Avg => 1,
            Self::Max => 2,
        }
    }
}

/// Which address Gloo's transport listens on for its peers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GlooBind {
    /// The address this machine's hostname resolves to (a pod's IP in Kubernetes).
    #[default]
    Hostname,
    /// A network interface, e.g. `eth0` (PyTorch's `GLOO_SOCKET_IFNAME`).
    Interface(String),
    /// An address or name, e.g. `127.0.0.1` when every rank runs on this machine.
    Address(String),
}

/// Where the ranks meet and how long anything may take.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    /// Host of rank 0, which serves the `TCPStore`.
    pub master_addr: String,
    pub master_port: u16,
    pub rank: usize,
    pub world_size: usize,
    /// Connecting to the store, waiting for every rank, and every collective fail after it.
    pub timeout: Duration,
    pub gloo_bind: GlooBind,
}

/// Why a rendezvous or a collective failed, as far as the C++ side tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing came within the timeout: a peer is stuck, slow, or was never started.
    Timeout,
    /// A connection was refused or closed: a peer is gone.
    Network,
    Other,
}

impl Failure {
    fn of(kind: i32) -> Self {
        match kind {
            ffi::TIMEOUT => Self::Timeout,
            ffi::NETWORK => Self::Network,
            _ => Self::Other,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the {0} backend is not in this build (it needs a CUDA libtorch and NCCL's headers at build time)"
    )]
    Unavailable(Backend),
    #[error("invalid process group: {0}")]
    Invalid(String),
    #[error("rendezvous at {addr} as rank {rank} of {world_size} failed ({failure:?}): {message}")]
    Rendezvous {
        addr: String,
        rank: usize,
        world_size: usize,
        failure: Failure,
        message: String,
    },
    #[error("{op} failed ({failure:?}): {message}")]
    Collective {
        op: &'static str,
        failure: Failure,
        message: String,
    },
}

impl Error {
    /// The failure's kind, for errors that came from the C++ side.
    pub fn failure(&self) -> Option<Failure> {
        match self {
            Self::Rendezvous { failure, .. } | Self::Collective { failure, .. } => Some(*failure),
            _ => None,
        }
    }
}

/// Takes the shim's status: `Ok` or the kind and message, freeing the C string.
fn check(status: ffi::Status) -> Result<(), (Failure, String)> {
    if status.kind == ffi::OK {
        return Ok(());
    }
    let message = if status.message.is_null() {
        "(no message: out of memory)".to_owned()
    } else {
        // SAFETY: a NUL-terminated string malloc'd by the shim, freed right after the copy.
        let m = unsafe { CStr::from_ptr(status.message) }
            .to_string_lossy()
            .into_owned();
        unsafe { ffi::f2s_c10d_free_message(status.message) };
        m
    };
    Err((Failure::of(status.kind), message))
}

fn c_string(what: &str, s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::Invalid(format!("{what} {s:?} contains a NUL byte")))
}

/// A process group: this rank's membership of the world, with the store it met it through.
#[derive(Debug)]
pub struct ProcessGroup {
    raw: NonNull<ffi::Group>,
    backend: Backend,
    rank: usize,
    world_size: usize,
}

// SAFETY: c10d's stores and process groups are used from several threads inside libtorch
// itself; this handle is only moved between threads, never shared (`&self` calls need no
// `Sync`, and ProcessGroup is not `Sync`).
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Meets the other ranks: rank 0 serves the store on `master_port` and waits for them
    /// all; the others connect, retrying, until the timeout.
    pub fn new(backend: Backend, at: &Rendezvous) -> Result<Self, Error> {
        if !backend.is_available() {
            return Err(Error::Unavailable(backend));
        }
        if at.world_size == 0 || at.rank >= at.world_size {
            return Err(Error::Invalid(format!(
                "rank {} of a world of {}",
                at.rank, at.world_size
            )));
        }
        let as_i32 = |what: &str, n: usize| {
            i32::try_from(n).map_err(|_| Error::Invalid(format!("{what} {n} is too large")))
        };
        let timeout_ms = i64::try_from(at.timeout.as_millis())
            .ok()
            .filter(|ms| *ms > 0)
            .ok_or_else(|| Error::Invalid(format!("timeout {:?}", at.timeout)))?;
        let addr = c_string("master address", &at.master_addr)?;
        let (interface, hostname) = match &at.gloo_bind {
            GlooBind::Hostname => (None, None),
            GlooBind::Interface(i) => (Some(c_string("interface", i)?), None),
            GlooBind::Address(a) => (None, Some(c_string("address", a)?)),
        };
        let ptr_or_null = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        let mut raw: *mut ffi::Group = std::ptr::null_mut();
        // SAFETY: the strings outlive the call; `raw` is written only on success.
        let status = unsafe {
            ffi::f2s_c10d_group_new(
                backend.code(),
                addr.as_ptr(),
                at.master_port,
                as_i32("rank", at.rank)?,
                as_i32("world size", at.world_size)?,
                timeout_ms,
                ptr_or_null(&interface),
                ptr_or_null(&hostname),
                &mut raw,
            )
        };
        let rendezvous = |(failure, message)| Error::Rendezvous {
            addr: format!("{}:{}", at.master_addr, at.master_port),
            rank: at.rank,
            world_size: at.world_size,
            failure,
            message,
        };
        check(status).map_err(rendezvous)?;
        let raw = NonNull::new(raw)
            .ok_or_else(|| rendezvous((Failure::Other, "the shim returned no group".to_owned())))?;
        Ok(Self {
            raw,
            backend,
            rank: at.rank,
            world_size: at.world_size,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Reduces each tensor over the ranks, in place: afterwards every rank holds the result.
    /// Every rank must pass tensors of the same shapes, kinds and order; each must be dense
    /// and contiguous (on the CPU for Gloo, on this rank's GPU for NCCL).
    pub fn allreduce(&self, tensors: &mut [Tensor], op: ReduceOp) -> Result<(), Error> {
        let ptrs = raw_tensors("allreduce", tensors)?;
        // SAFETY: the pointers are tch tensors that outlive the call; the shim takes its own
        // references and writes through them in place.
        let status = unsafe {
            ffi::f2s_c10d_allreduce(self.raw.as_ptr(), ptrs.as_ptr(), ptrs.len(), op.code())
        };
        check(status).map_err(|(failure, message)| Error::Collective {
            op: "allreduce",
            failure,
            message,
        })
    }

    /// Copies `root`'s tensors into every other rank's, in place.
    pub fn broadcast(&self, tensors: &mut [Tensor], root: usize) -> Result<(), Error> {
        if root >= self.world_size {
            return Err(Error::Invalid(format!(
                "broadcast root {root} outside a world of {}",
                self.world_size
            )));
        }
        let ptrs = raw_tensors("broadcast", tensors)?;
        // SAFETY: as in `allreduce`; `root` is below the world size, which fits an i32.
        let status = unsafe {
            ffi::f2s_c10d_broadcast(self.raw.as_ptr(), ptrs.as_ptr(), ptrs.len(), root as i32)
        };
        check(status).map_err(|(failure, message)| Error::Collective {
            op: "broadcast",
            failure,
            message,
        })
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<(), Error> {
        // SAFETY: the group is alive for `&self`.
        let status = unsafe { ffi::f2s_c10d_barrier(self.raw.as_ptr()) };
        check(status).map_err(|(failure, message)| Error::Collective {
            op: "barrier",
            failure,
            message,
        })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by f2s_c10d_group_new and freed once, here.
        unsafe { ffi::f2s_c10d_group_free(self.raw.as_ptr()) }
    }
}

/// tch's raw pointers of defined, contiguous tensors: an undefined one would crash the C++
/// side, and Gloo reduces a non-contiguous one's storage in memory order, not element order.
fn raw_tensors(
    op: &'static str,
    tensors: &mut [Tensor],
) -> Result<Vec<*mut torch_sys::C_tensor>, Error> {
    tensors
        .iter_mut()
        .enumerate()
        .map(|(i, t)| {
            if !t.defined() {
                Err(Error::Invalid(format!("{op}: tensor {i} is undefined")))
            } else if !t.is_contiguous() {
                Err(Error::Invalid(format!(
                    "{op}: tensor {i} is not contiguous"
                )))
            } else {
                Ok(t.as_mut_ptr())
            }
        })
        .collect()
}
