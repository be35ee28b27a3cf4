//! ONNX Runtime: the one process-wide environment and the sessions built in it.
//!
//! The library is loaded at run time (`ort`'s load-dynamic) from the path given with
//! `--ort-library` / `ORT_DYLIB_PATH`, so the binary links nothing but system libraries and the
//! runtime version is whatever `make setup` pinned and the image copies in.

use std::path::Path;
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "cannot load ONNX Runtime from {path}: {reason} (set ORT_DYLIB_PATH; `make setup` fetches it)"
    )]
    Library { path: String, reason: String },
    #[error("ONNX Runtime: {0}")]
    Ort(String),
}

impl From<ort::Error> for RuntimeError {
    fn from(e: ort::Error) -> Self {
        RuntimeError::Ort(e.to_string())
    }
}

static ENV: OnceLock<Environment> = OnceLock::new();

/// Loads the library and creates the environment on the first call; later calls return the
/// same environment (ONNX Runtime allows one per process), whatever path they name.
pub fn environment(library: &Path) -> Result<&'static Environment, RuntimeError> {
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    let env = ort::init_from(library)
        .map_err(|e| RuntimeError::Library {
            path: library.display().to_string(),
            reason: e.to_string(),
        })?
        .with_name("face2simpson")
        .build()?;
    Ok(ENV.get_or_init(|| env))
}

/// A session for `model` with `threads` intra-op threads and no inter-op pool: the service
/// runs one session per worker thread and sizes parallelism itself.
pub fn session(env: &Environment, model: &[u8], threads: usize) -> Result<Session, RuntimeError> {
    Ok(Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(ort::Error::from)?
        .with_intra_threads(threads.max(1))
        .map_err(ort::Error::from)?
        // Idle pool threads would otherwise spin-wait for the next op, burning the CPU the
        // decoders beside them need on a pod with one or two cores.
        .with_intra_op_spinning(false)
        .map_err(ort::Error::from)?
        .with_inter_threads(1)
        .map_err(ort::Error::from)?
        .commit_from_memory(model)?)
}
