//! Queue: a training Job that waits suspended, because Kueue has not admitted it yet
//! (`training.queueName`: Jobs are created suspended) or because it was preempted (suspended
//! again, its pods deleted). The run is paused, not failed: the wait is recorded
//! (`lastRun.queuedSince`, then `queuedSeconds`), a preemption is counted, and
//! `training.maxQueuedSeconds` bounds the wait.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::observe::run_id_of;
use super::{Error, JobState, Pass, undecided};

/// `Degraded` reason, and the start of the run's reason, when a Job waited past
/// `training.maxQueuedSeconds`.
pub const QUEUE_TIMEOUT: &str = "QueueTimeout";

/// Whether the Job is suspended (not admitted by its queue, or preempted).
pub(super) fn is_suspended(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.suspend) == Some(true)
}

/// When the Job controller last flipped the Job's `Suspended` condition to `status`.
fn suspended_condition(job: &Job, status: &str) -> Option<Timestamp> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Suspended" && c.status == status)?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

/// Since when a suspended Job waits: its `Suspended` condition's time, or its creation when
/// the Job controller has not looked at it yet (created suspended a moment ago).
fn waiting_since(job: &Job) -> Option<Timestamp> {
    suspended_condition(job, "True").or_else(|| {
        suspended_condition(job, "False")
            .is_none()
            .then(|| job.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .flatten()
    })
}

impl Pass<'_> {
    /// Looks at the running training Job's place in its queue. While it is suspended: records
    /// since when (a preemption when it ran before) and, past `training.maxQueuedSeconds`,
    /// deletes it and turns `state` into the run's failure (`QueueTimeout`). Once it is
    /// admitted, adds the wait to `queuedSeconds`. `created`: the Job was just created (or
    /// adopted) by this pass, so a suspension is its first wait. Returns whether the Job waits
    /// in its queue.
    pub(super) async fn watch_queue(
        &mut self,
        job: &Job,
        state: &mut JobState,
        created: bool,
    ) -> Result<bool, Error> {
        let suspended = is_suspended(job);
        let run_id = run_id_of(job);
        if !suspended {
            self.admitted(job, &run_id);
            return Ok(false);
        }
        let since = self.queued_since(job, &run_id, created);
        let queue = self.sm.spec.training.queue_name.as_deref();
        self.queued = Some(match queue {
            Some(q) => format!("run {run_id} waits in queue {q} since {since}"),
            None => format!("the Job of run {run_id} is suspended since {since}"),
        });
        let Some(max) = self.sm.spec.training.max_queued_seconds else {
            return Ok(true);
        };
        let deadline = since
            .checked_add(SignedDuration::from_secs(max))
            .unwrap_or(Timestamp::MAX);
        if self.now < deadline {
            self.requeue_at(deadline);
            return Ok(true);
        }
        let name = job.name_any();
        let message = format!(
            "{QUEUE_TIMEOUT}: the Job {name} of run {run_id} waited {}s in queue {} since {since}, more than maxQueuedSeconds ({max}s); it was deleted",
            self.now.duration_since(since).as_secs(),
            queue.unwrap_or("(none: suspended by hand)"),
        );
        warn!(model = %self.name, job = %name, "{message}");
        let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        super::housekeeping::delete_job(&api, job).await?;
        self.queued = None;
        *state = JobState::Abandoned {
            reason: QUEUE_TIMEOUT,
            message,
        };
        Ok(false)
    }

    /// Since when the run waits, recorded the first pass that sees it suspended. A Job created
    /// suspended is recorded waiting by the pass that creates it, and `queuedSince` is cleared
    /// only when it is seen admitted: a suspended Job of an undecided run without `queuedSince`
    /// ran since, and was preempted. That is counted and announced, and its pods must start
    /// again after the next admission (the startup deadline applies again).
    fn queued_since(&mut self, job: &Job, run_id: &str, created: bool) -> Timestamp {
        let now = self.now;
        let Some(run) = undecided(&mut self.status.last_run, run_id) else {
            return waiting_since(job).unwrap_or(now);
        };
        if let Some(since) = &run.queued_since {
            return since.0;
        }
        let since = waiting_since(job).unwrap_or(now).min(now);
        run.queued_since = Some(Time(since));
        run.pod_started_at = None;
        if created {
            return since;
        }
        let preemptions = run.preemptions.unwrap_or(0) + 1;
        run.preemptions = Some(preemptions);
        let note = format!(
            "run {run_id} was suspended while it trained (preemption {preemptions}); it resumes from its last checkpoint once admitted again"
        );
        info!(model = %self.name, run = %run_id, preemptions, "training Job preempted");
        self.emit(EventType::Normal, "Preempted", "Queue", note);
        since
    }

    /// The Job runs: a wait recorded for it ends, and counts in `queuedSeconds`.
    fn admitted(&mut self, job: &Job, run_id: &str) {
        let now = self.now;
        let Some(run) = undecided(&mut self.status.last_run, run_id) else {
            return;
        };
        let Some(since) = run.queued_since.take() else {
            return;
        };
        let at = suspended_condition(job, "False")
            .unwrap_or(now)
            .clamp(since.0, now.max(since.0));
        let waited = at.duration_since(since.0).as_secs().max(0);
        run.queued_seconds = Some(run.queued_seconds.unwrap_or(0) + waited);
        info!(model = %self.name, run = %run_id, waited_seconds = waited, "training Job admitted");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn job(suspend: bool, conditions: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "j", "creationTimestamp": "2026-11-04T00:00:00Z"},
            "spec": {"suspend": suspend, "template": {}},
            "status": {"conditions": conditions},
        }))
        .unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_suspended_job_waits_since_its_condition_or_its_creation() {
        // Created suspended, not yet seen by the Job controller: since its creation.
        let fresh = job(true, json!([]));
        assert!(is_suspended(&fresh));
        assert_eq!(waiting_since(&fresh), Some(at("2026-11-04T00:00:00Z")));
        // Suspended (again): since the condition flipped.
        let preempted = job(
            true,
            json!([{"type": "Suspended", "status": "True", "lastTransitionTime": "2026-11-04T01:00:00Z"}]),
        );
        assert_eq!(waiting_since(&preempted), Some(at("2026-11-04T01:00:00Z")));
        // Suspended again by the spec, but the controller still shows it resumed: not the
        // creation (it ran), the caller's clock.
        let resuming = job(
            true,
            json!([{"type": "Suspended", "status": "False", "lastTransitionTime": "2026-11-04T00:30:00Z"}]),
        );
        assert_eq!(waiting_since(&resuming), None);
        assert_eq!(
            suspended_condition(&resuming, "False"),
            Some(at("2026-11-04T00:30:00Z"))
        );
        assert!(!is_suspended(&job(false, json!([]))));
    }
}
