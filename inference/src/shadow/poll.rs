//! The background task of the shadow stage: every report interval it reads the model's
//! `shadow.json` (skipping the parse when its ETag did not change), loads, keeps or drops the
//! candidate it names, and writes this pod's report on it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use artifacts::ObjectVersion;
use artifacts::live::{ShadowAssignment, shadow_report_of};
use chrono::Utc;

use super::Candidate;
use crate::report_store::{Outage, StoreFile};
use crate::{AppState, LoadError, RuntimeConfig, load_model};

/// Report intervals before a candidate that failed for a reason that may pass (the store, the
/// runtime) is loaded again. Not every interval: a load fetches the whole model.
const RETRY_INTERVALS: u32 = 6;

/// Polls one `shadow.json` for one pod.
#[derive(Debug)]
pub(crate) struct Poller {
    pub state: AppState,
    pub assignment: StoreFile,
    pub pod: String,
    pub interval: Duration,
    /// Where ONNX Runtime is; the candidate always gets one session with one thread.
    pub runtime: RuntimeConfig,
}

/// The candidate this task reports on, and where.
struct Reporting {
    candidate: Arc<Candidate>,
    file: Option<StoreFile>,
}

impl Poller {
    pub async fn run(self) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut read = Outage::new("shadow assignment");
        let mut write = Outage::new("shadow report");
        let mut seen: Option<ObjectVersion> = None;
        let mut reporting: Option<Reporting> = None;
        tracing::info!(url = %self.assignment.url(), pod = %self.pod, "polling the shadow assignment");
        loop {
            ticker.tick().await;
            self.poll(&mut seen, &mut reporting, &mut read, &mut write)
                .await;
            if let Some(r) = &reporting {
                self.flush(r, &mut write).await;
            }
        }
    }

    async fn poll(
        &self,
        seen: &mut Option<ObjectVersion>,
        reporting: &mut Option<Reporting>,
        read: &mut Outage,
        write: &mut Outage,
    ) {
        let storage = self.assignment.storage();
        let (bytes, version) = match storage.get_versioned(self.assignment.key()).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                read.succeeded();
                *seen = None;
                self.end(reporting, "shadow.json is gone");
                return;
            }
            // A store outage keeps the stage as it is: the candidate costs nothing unsampled,
            // and dropping it would reload it when the store is back.
            Err(e) => return read.failed(&e),
        };
        read.succeeded();
        let retry_due = reporting
            .as_ref()
            .is_some_and(|r| r.candidate.retry_due(Instant::now()));
        if version.e_tag.is_some() && seen.as_ref() == Some(&version) && !retry_due {
            return;
        }
        *seen = Some(version);
        match parse(&bytes) {
            Ok(Some(assignment)) => self.apply(assignment, reporting, write).await,
            Ok(None) => self.end(reporting, "shadow.json names no candidate"),
            Err(e) => {
                tracing::warn!(url = %self.assignment.url(), error = %e, "malformed shadow.json; no shadow stage");
                self.end(reporting, "malformed shadow.json");
            }
        }
    }

    /// Keeps the running stage (a new sample rate applies at once), or loads the new one.
    async fn apply(
        &self,
        assignment: ShadowAssignment,
        reporting: &mut Option<Reporting>,
        write: &mut Outage,
    ) {
        if let Some(r) = reporting.as_ref()
            && r.candidate.same_stage(&assignment)
            && !r.candidate.retry_due(Instant::now())
        {
            r.candidate.set_sample_rate(assignment.sample_rate);
            return;
        }
        // The last counts of the stage that ends, so the operator sees them whole.
        if let Some(r) = reporting.take() {
            self.flush(&r, write).await;
        }
        self.state.inner.shadow.clear();
        let file = StoreFile::open(&shadow_report_of(&assignment.model_uri, &self.pod))
            .map_err(|e| tracing::warn!(error = %e, "cannot open the store of the shadow reports"))
            .ok();
        let candidate = self.load(assignment).await;
        let r = Reporting { candidate, file };
        // Right away, so the operator sees this pod is shadowing (or why it cannot).
        self.flush(&r, write).await;
        *reporting = Some(r);
    }

    async fn load(&self, assignment: ShadowAssignment) -> Arc<Candidate> {
        let shadow = &self.state.inner.shadow;
        tracing::info!(run_id = %assignment.run_id, model_uri = %assignment.model_uri, sample_rate = assignment.sample_rate, "loading the shadow candidate");
        let champion_size = self.state.image_size().unwrap_or(0);
        let loaded = load_model(&assignment.model_uri, champion_size, &self.runtime).await;
        let retry_after = self.interval * RETRY_INTERVALS;
        match loaded {
            Ok((mut models, info)) => {
                if info
                    .run_id
                    .as_deref()
                    .is_some_and(|id| id != assignment.run_id)
                {
                    tracing::warn!(assigned = %assignment.run_id, loaded = info.run_id.as_deref(), "the candidate's metrics.json names another run");
                }
                if info.image_size != champion_size {
                    let e = format!(
                        "the candidate takes {} px inputs, the champion {champion_size} px: the shadow stage scores the champion's inputs",
                        info.image_size
                    );
                    return shadow.install_failed(assignment, e, None);
                }
                let Some(model) = models.workers.pop() else {
                    return shadow.install_failed(assignment, "no session".into(), None);
                };
                match shadow.install(assignment.clone(), model, info.image_size) {
                    Ok(c) => c,
                    Err(e) => shadow.install_failed(assignment, e.to_string(), Some(retry_after)),
                }
            }
            Err(e) => {
                let retry = transient(&e).then_some(retry_after);
                shadow.install_failed(assignment, e.to_string(), retry)
            }
        }
    }

    fn end(&self, reporting: &mut Option<Reporting>, why: &str) {
        if reporting.take().is_some() {
            tracing::info!(reason = why, "ending the shadow stage");
        }
        self.state.inner.shadow.clear();
    }

    async fn flush(&self, r: &Reporting, write: &mut Outage) {
        let Some(file) = &r.file else { return };
        let mut report = r.candidate.report();
        report.pod.clone_from(&self.pod);
        report.champion_run_id = self.state.champion_run_id().unwrap_or_default();
        report.updated_at = Utc::now();
        match file.put_json(&report).await {
            Ok(()) => {
                write.succeeded();
                tracing::debug!(url = %file.url(), scored = report.scored, dropped = report.dropped, "shadow report written");
            }
            Err(e) => write.failed(&e),
        }
    }
}

/// A reason that may pass by itself (the store, the runtime), unlike a corrupt or incompatible
/// model.
fn transient(e: &LoadError) -> bool {
    e.exit_code() == 1 && !matches!(e, LoadError::NoOnnx { .. })
}

/// The assignment in `shadow.json`; `None` when it names no candidate (`null`, `{}`, an empty
/// file or an empty run id: how an operator may end a stage without deleting the file).
fn parse(bytes: &[u8]) -> Result<Option<ShadowAssignment>, serde_json::Error> {
    let value: serde_json::Value = match bytes.iter().all(u8::is_ascii_whitespace) {
        true => return Ok(None),
        false => serde_json::from_slice(bytes)?,
    };
    let names_nothing = value.is_null()
        || value.as_object().is_some_and(|o| {
            o.get("run_id")
                .and_then(|v| v.as_str())
                .is_none_or(str::is_empty)
        });
    if names_nothing {
        return Ok(None);
    }
    serde_json::from_value(value).map(Some)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_assignment_may_name_nothing() {
        for nothing in ["", " \n", "null", "{}", r#"{"run_id": ""}"#] {
            assert!(parse(nothing.as_bytes()).unwrap().is_none(), "{nothing:?}");
        }
        let a = parse(
            br#"{"run_id": "r2", "model_uri": "s3://b/runs/r2/model.safetensors",
                "sample_rate": 0.25, "started_at": "2026-12-01T00:00:00Z"}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!((a.run_id.as_str(), a.sample_rate), ("r2", 0.25));
        assert!(parse(br#"{"run_id": "r2"}"#).is_err());
        assert!(parse(b"[1").is_err());
    }
}
