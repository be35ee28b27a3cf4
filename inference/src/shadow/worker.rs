//! The one thread that runs the candidate on sampled requests, one request per forward pass:
//! no batching, so it holds at most one request's inputs and one intra-op thread.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use artifacts::live::ShadowReport;

use super::{Job, lock};
use crate::batcher::{Forward, Probabilities, top1};
use crate::metrics::Metrics;

pub(super) fn spawn(
    model: Box<dyn Forward>,
    size: usize,
    rx: Receiver<Job>,
    report: Arc<Mutex<ShadowReport>>,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("shadow".into())
        .spawn(move || serve(model, size, &rx, &report, &metrics))?;
    Ok(())
}

/// What one forward pass of the candidate gave.
enum Outcome {
    Scored(Vec<Probabilities>),
    Failed(String),
    /// The model panicked: its state is unknown, so the worker stops (later samples are
    /// dropped as the queue is gone).
    Panicked(String),
}

/// Serves until the candidate is replaced or dropped (every sender gone).
fn serve(
    mut model: Box<dyn Forward>,
    size: usize,
    rx: &Receiver<Job>,
    report: &Mutex<ShadowReport>,
    metrics: &Metrics,
) {
    while let Ok(job) = rx.recv() {
        let started = Instant::now();
        let outcome = run(model.as_mut(), &job, size);
        let candidate_ms = started.elapsed().as_secs_f64() * 1e3;
        match outcome {
            Outcome::Scored(rows) => {
                metrics.shadow_scored.inc();
                score(&mut lock(report), &job, &rows, candidate_ms);
            }
            Outcome::Failed(e) => {
                tracing::debug!(error = %e, "the shadow candidate failed on a sample");
                metrics.shadow_errors.inc();
                lock(report).errors += 1;
            }
            Outcome::Panicked(e) => {
                tracing::error!(error = %e, "the shadow candidate panicked; it scores nothing more");
                metrics.shadow_errors.inc();
                lock(report).errors += 1;
                return;
            }
        }
    }
    tracing::debug!("shadow worker stopped");
}

fn run(model: &mut dyn Forward, job: &Job, size: usize) -> Outcome {
    let n = job.inputs.len();
    let per_image = 3 * size * size;
    if let Some(bad) = job.inputs.iter().find(|i| i.len() != per_image) {
        return Outcome::Failed(format!(
            "an input of {} values for a {size} px model",
            bad.len()
        ));
    }
    let flat = job.inputs.concat();
    match catch_unwind(AssertUnwindSafe(|| model.forward(&flat, n, size))) {
        Ok(Ok(rows)) if rows.len() == n && job.champion.len() == n => Outcome::Scored(rows),
        Ok(Ok(rows)) => Outcome::Failed(format!("{} rows for {n} inputs", rows.len())),
        Ok(Err(e)) => Outcome::Failed(e),
        Err(panic) => Outcome::Panicked(
            panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into()),
        ),
    }
}

fn score(report: &mut ShadowReport, job: &Job, rows: &[Probabilities], candidate_ms: f64) {
    report.scored += 1;
    report.faces += rows.len() as u64;
    report.disagreements += job
        .champion
        .iter()
        .zip(rows)
        .filter(|(champion, row)| **champion != top1(row))
        .count() as u64;
    report
        .champion_latency
        .record(job.champion_time.as_secs_f64() * 1e3);
    report.candidate_latency.record(candidate_ms);
}
