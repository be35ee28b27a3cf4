//! The process's one libtorch thread: every training and scoring computation runs on it.
//!
//! Why one: libtorch's CPU kernels run on OpenMP, and every OS thread that starts a parallel
//! libtorch op gets its own team of OpenMP threads. Once the process holds more OpenMP threads
//! than it has cores, libgomp stops spin-waiting between parallel regions (its "throttled" spin
//! count) and parks every worker on a futex instead, so each of the thousands of ops in a
//! training step pays a wake-up. Measured on the 2-core reference machine (MobileNetV2, 224 px,
//! batch 32, bf16): PyTorch's own step drops from 43.1 to 39.3 images/s when a second thread
//! has merely created a tensor. Training, the benchmark's raw step and anything else that
//! computes with libtorch therefore go through [`run`] or [`spawn`], and the threads that build
//! batches hand over plain bytes.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;
use std::sync::mpsc::{Sender, channel};
use std::thread::ThreadId;

use tokio::sync::oneshot;

/// Deep enough for libtorch's autograd and oneDNN's kernel generation.
const STACK_BYTES: usize = 16 << 20;

type Job = Box<dyn FnOnce() + Send>;

/// The job queue of the libtorch thread, and the thread's id.
struct TorchThread {
    jobs: Sender<Job>,
    id: ThreadId,
}

/// A job that panicked on the libtorch thread; the thread itself lives on.
#[derive(Debug, thiserror::Error)]
#[error("the libtorch thread's job panicked: {0}")]
pub struct Panicked(pub String);

fn torch_thread() -> &'static TorchThread {
    static THREAD: OnceLock<TorchThread> = OnceLock::new();
    THREAD.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        let handle = std::thread::Builder::new()
            .name("libtorch".into())
            .stack_size(STACK_BYTES)
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .unwrap_or_else(|e| panic!("cannot start the libtorch thread: {e}"));
        TorchThread {
            jobs: tx,
            id: handle.thread().id(),
        }
    })
}

/// Whether the caller is the libtorch thread.
pub fn is_current() -> bool {
    std::thread::current().id() == torch_thread().id
}

/// Queues `f` on the libtorch thread; the receiver gets its result, or its panic's message.
fn submit<T, F>(f: F) -> oneshot::Receiver<Result<T, Panicked>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)).map_err(panic_message));
    });
    // The thread only ends with the process, so the queue is always open.
    let _ = torch_thread().jobs.send(job);
    rx
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> Panicked {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    Panicked(text)
}

/// Runs `f` on the libtorch thread and waits for it, from a thread that is not an async
/// runtime's. On the libtorch thread itself `f` runs in place (a job that waited for a job
/// queued behind it would wait forever).
pub fn run<T, F>(f: F) -> Result<T, Panicked>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if is_current() {
        return catch_unwind(AssertUnwindSafe(f)).map_err(panic_message);
    }
    submit(f)
        .blocking_recv()
        .unwrap_or_else(|_| Err(Panicked("the libtorch thread dropped the job".into())))
}

/// [`run`] for async callers: the runtime's threads stay free while `f` computes.
pub async fn spawn<T, F>(f: F) -> Result<T, Panicked>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    submit(f)
        .await
        .unwrap_or_else(|_| Err(Panicked("the libtorch thread dropped the job".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_runs_on_the_same_thread_and_nested_jobs_run_in_place() {
        let a = run(|| std::thread::current().id()).unwrap();
        let b = std::thread::spawn(|| run(|| std::thread::current().id()).unwrap())
            .join()
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, std::thread::current().id());
        let nested = run(|| run(|| std::thread::current().id()).unwrap()).unwrap();
        assert_eq!(nested, a);
    }

    #[test]
    fn a_panicking_job_is_an_error_and_the_thread_lives_on() {
        let e = run(|| -> u32 { panic!("boom") }).unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
        assert_eq!(run(|| 7).unwrap(), 7);
    }

    #[tokio::test]
    async fn async_callers_get_the_result() {
        let name = spawn(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("libtorch"));
    }
}
