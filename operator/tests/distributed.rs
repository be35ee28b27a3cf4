//! Issue 19: distributed runs (a gang of ranks as one Indexed Job, restarted whole from its
//! checkpoint when a rank fails) and queued runs (Kueue: created suspended, phase Queued, a
//! preemption is a pause, `maxQueuedSeconds` ends the wait), against the scripted API server.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use face2simpson_operator::SimpsonModel;
use face2simpson_operator::crd::SimpsonModelStatus;
use face2simpson_operator::reconcile;
use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

fn assert_event(seen: &Seen, type_: &str, reason: &str) {
    assert_eq!(seen.method, Method::POST);
    assert_eq!(
        (&seen.body["type"], &seen.body["reason"]),
        (&json!(type_), &json!(reason)),
        "{:#}",
        seen.body
    );
}

fn phase(status: &SimpsonModelStatus) -> &str {
    status.phase.as_ref().map_or("", |p| p.as_str())
}

/// The Job created, answered as the API server would: with a uid and a creation time.
fn create_job_at(created: &'static str) -> Step {
    Step::new(
        Method::POST,
        format!("/apis/batch/v1/namespaces/{NS}/jobs"),
        move |b| {
            let mut job = b.clone();
            job["metadata"]["uid"] = json!("job-uid");
            job["metadata"]["creationTimestamp"] = json!(created);
            (201, job)
        },
    )
}

/// The rendezvous Service of the Job `name`, applied.
fn apply_rendezvous(name: &str) -> Step {
    Step::new(
        Method::PATCH,
        format!("/api/v1/namespaces/{NS}/services/{name}"),
        |b| (200, b.clone()),
    )
}

// ---------------------------------------------------------------------------------------------
// Distributed runs

fn with_workers(mut sm: SimpsonModel, workers: i32, restarts: i32) -> SimpsonModel {
    sm.spec.training.workers = workers;
    sm.spec.training.backoff_limit = restarts;
    sm
}

/// A training Job of two ranks, as the Job controller reports it.
fn gang_job(name: &str, created: &str, phase: JobPhase, failure: Option<&str>) -> Value {
    let mut job = job(SECOND, created, phase);
    job["metadata"]["name"] = json!(name);
    job["metadata"]["uid"] = json!(format!("{name}-uid"));
    if let Some(attempt) = name.strip_prefix(&format!("{SECOND}-r")) {
        job["metadata"]["annotations"]["face2simpson.io/attempt"] = json!(attempt);
    }
    job["spec"]["completionMode"] = json!("Indexed");
    job["spec"]["completions"] = json!(2);
    job["spec"]["parallelism"] = json!(2);
    if let Some(reason) = failure {
        job["status"]["conditions"][0]["reason"] = json!(reason);
        job["status"]["conditions"][0]["message"] = json!(format!("{reason} for the test"));
    }
    job
}

#[tokio::test]
async fn a_distributed_run_starts_with_its_rendezvous_service() {
    let h = Harness::new(
        "2026-11-04T01:00:00Z",
        vec![
            Step::list_jobs(vec![job(
                FIRST,
                "2026-11-01T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::get_secret(),
            create_job_at("2026-11-04T01:00:00Z"),
            apply_rendezvous(SECOND),
            Step::patch_status(),
            Step::event(),
        ],
    );
    h.put_weights(FIRST_URI).await;
    let sm = with_workers(serving(FIRST, "2026-11-01T00:00:00Z"), 2, 1);
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let seen = h.finish().await;
    let job = &seen[4].body;
    assert_eq!(job["metadata"]["name"], SECOND);
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    assert_eq!(job["spec"]["backoffLimit"], 0);
    let svc = &seen[5].body;
    assert!(
        seen[5].query.contains("fieldManager=face2simpson-operator"),
        "{}",
        seen[5].query
    );
    assert_eq!(svc["spec"]["clusterIP"], "None");
    assert_eq!(svc["metadata"]["ownerReferences"][0]["kind"], "Job");
    assert_eq!(svc["metadata"]["ownerReferences"][0]["uid"], "job-uid");
    let status = status_of(&seen[6]);
    assert_eq!(phase(&status), "Training");
    let run = status.last_run.unwrap();
    assert_eq!((run.job_name.as_str(), run.restarts), (SECOND, None));
}

/// A rank failed (the Job failed on its backoff limit of 0): the restart is recorded first, then
/// the gang's new Job is created for the same run, with its own Service.
#[tokio::test]
async fn a_failed_rank_restarts_the_gang_once_then_the_run_fails() {
    let failed = gang_job(
        SECOND,
        "2026-11-04T00:00:00Z",
        JobPhase::Failed,
        Some("BackoffLimitExceeded"),
    );
    let h = Harness::new(
        "2026-11-04T00:30:00Z",
        vec![
            Step::list_jobs(vec![failed.clone()]),
            Step::patch_status(),
            Step::event(),
            create_job_at("2026-11-04T00:30:00Z"),
            apply_rendezvous(&format!("{SECOND}-r1")),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    let sm = with_workers(training_second(), 2, 1);
    let action = reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let text = h.metrics_text();
    let seen = h.finish().await;
    let recorded = status_of(&seen[1]);
    let run = recorded.last_run.as_ref().unwrap();
    assert_eq!(
        (run.restarts, run.job_name.as_str(), run.decision.clone()),
        (Some(1), "homer-20261104-000000-r1", None),
        "recorded before the new Job exists"
    );
    assert_event(&seen[2], "Warning", "GangRestarted");
    let job = &seen[3].body;
    assert_eq!(job["metadata"]["name"], "homer-20261104-000000-r1");
    assert_eq!(job["metadata"]["labels"]["face2simpson.io/run-id"], SECOND);
    assert_eq!(
        job["metadata"]["annotations"]["face2simpson.io/attempt"],
        "1"
    );
    let status = status_of(&seen[7]);
    assert_eq!(phase(&status), "Training");
    assert_eq!(condition(&status, "Degraded").0, "False");
    assert!(status.history.is_empty(), "nothing decided");
    assert!(!text.contains("failed_runs_total{"), "{text}");

    // The restarted gang fails too: no restart left, the run fails.
    let again = gang_job(
        &format!("{SECOND}-r1"),
        "2026-11-04T00:30:00Z",
        JobPhase::Failed,
        Some("BackoffLimitExceeded"),
    );
    let h = Harness::new(
        "2026-11-04T01:00:00Z",
        vec![
            Step::list_jobs(vec![failed, again]),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            // Decided: the first attempt's Job goes beyond failedJobsHistoryLimit (1).
            Step::delete_job(SECOND),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(with_status(sm, status)), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_event(&seen[2], "Warning", "JobFailed");
    let status = status_of(&seen[6]);
    let run = status.last_run.unwrap();
    assert_eq!(run.decision.as_ref().map(|d| d.as_str()), Some("Failed"));
    assert_eq!(run.restarts, Some(1));
    assert!(
        run.reason.unwrap().contains("homer-20261104-000000-r1"),
        "the last attempt's failure"
    );
}

/// The operator died after recording a restart and before creating its Job: the next pass
/// creates it (an AlreadyExists would adopt it) without counting a second restart.
#[tokio::test]
async fn a_recorded_restart_is_carried_out_once() {
    let failed = gang_job(
        SECOND,
        "2026-11-04T00:00:00Z",
        JobPhase::Failed,
        Some("BackoffLimitExceeded"),
    );
    let mut sm = with_workers(training_second(), 2, 3);
    let run = sm.status.as_mut().unwrap().last_run.as_mut().unwrap();
    run.restarts = Some(1);
    run.job_name = format!("{SECOND}-r1");
    let h = Harness::new(
        "2026-11-04T00:31:00Z",
        vec![
            Step::list_jobs(vec![failed]),
            Step::new(
                Method::POST,
                format!("/apis/batch/v1/namespaces/{NS}/jobs"),
                |_| (409, api_error(409, "AlreadyExists")),
            ),
            Step::get_job(gang_job(
                &format!("{SECOND}-r1"),
                "2026-11-04T00:30:00Z",
                JobPhase::Active,
                None,
            )),
            apply_rendezvous(&format!("{SECOND}-r1")),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let seen = h.finish().await;
    let run = status_of(&seen[6]).last_run.unwrap();
    assert_eq!((run.restarts, run.decision), (Some(1), None));
}

/// A permanent failure (the trainer's exit code, through the podFailurePolicy) or the Job's
/// deadline is the run's failure: no gang restart.
#[tokio::test]
async fn a_permanent_failure_of_a_gang_is_not_restarted() {
    for reason in ["PodFailurePolicy", "DeadlineExceeded"] {
        let h = Harness::new(
            "2026-11-04T00:30:00Z",
            vec![
                Step::list_jobs(vec![gang_job(
                    SECOND,
                    "2026-11-04T00:00:00Z",
                    JobPhase::Failed,
                    Some(reason),
                )]),
                Step::patch_status(),
                Step::event(),
                Step::apply_deployment(),
                Step::apply_service(),
                Step::patch_status(),
            ],
        );
        let sm = with_workers(training_second(), 2, 3);
        reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
        let seen = h.finish().await;
        let run = status_of(&seen[5]).last_run.unwrap();
        assert_eq!(
            (run.decision.as_ref().map(|d| d.as_str()), run.restarts),
            (Some("Failed"), None),
            "{reason}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Queued runs

fn queued(mut sm: SimpsonModel, max_queued_seconds: Option<i64>) -> SimpsonModel {
    sm.spec.training.queue_name = Some("gpu".into());
    sm.spec.training.max_queued_seconds = max_queued_seconds;
    sm
}

/// The Job as the Job controller shows it while it waits suspended since `since`.
fn suspended_job(since: &str) -> Value {
    let mut job = job(SECOND, "2026-11-04T00:00:00Z", JobPhase::Active);
    job["spec"]["suspend"] = json!(true);
    job["status"] = json!({"conditions": [
        {"type": "Suspended", "status": "True", "reason": "JobSuspended", "lastTransitionTime": since},
    ]});
    job
}

/// The Job as the Job controller shows it once resumed at `at`, its pod ready.
fn resumed_job(at: &str) -> Value {
    let mut job = job(SECOND, "2026-11-04T00:00:00Z", JobPhase::Active);
    job["spec"]["suspend"] = json!(false);
    job["status"]["startTime"] = json!(at);
    job["status"]["conditions"] = json!([
        {"type": "Suspended", "status": "False", "reason": "JobResumed", "lastTransitionTime": at},
    ]);
    job
}

/// Bootstrap with a queue: the Job is created suspended, the model is Queued (not Training)
/// from the first pass, waits without writes, and trains once admitted; the wait is recorded.
#[tokio::test]
async fn a_queued_run_waits_suspended_then_trains_once_admitted() {
    let h = Harness::new(
        "2026-11-01T00:05:00Z",
        vec![
            Step::list_jobs(vec![]),
            create_job_at("2026-11-01T00:05:00Z"),
            Step::patch_status(),
            Step::event(),
        ],
    );
    let sm = queued(model(), Some(3600));
    reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_eq!(seen[1].body["spec"]["suspend"], true);
    assert_eq!(
        seen[1].body["metadata"]["labels"]["kueue.x-k8s.io/queue-name"],
        "gpu"
    );
    let status = status_of(&seen[2]);
    assert_eq!(phase(&status), "Queued");
    assert_eq!(condition(&status, "Training"), ("False", "Queued"));
    assert_eq!(
        status.last_run.as_ref().unwrap().queued_since,
        Some(Time(ts("2026-11-01T00:05:00Z")))
    );

    // Still waiting: nothing to write; looked at again when maxQueuedSeconds ends, or sooner.
    let mut waiting = suspended_job("2026-11-01T00:05:01Z");
    waiting["metadata"]["name"] = json!(FIRST);
    waiting["metadata"]["labels"]["face2simpson.io/run-id"] = json!(FIRST);
    let h = Harness::new("2026-11-01T01:02:00Z", vec![Step::list_jobs(vec![waiting])]);
    let action = reconcile(
        Arc::new(with_status(sm.clone(), status.clone())),
        h.ctx.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(3 * 60)),
        "at the queue deadline (00:05 + 1 h)"
    );
    h.finish().await;

    // Admitted at 00:35: it trains, and the 30 minutes it waited are recorded.
    let mut running = resumed_job("2026-11-01T00:35:00Z");
    running["metadata"]["name"] = json!(FIRST);
    running["metadata"]["labels"]["face2simpson.io/run-id"] = json!(FIRST);
    let h = Harness::new(
        "2026-11-01T00:36:00Z",
        vec![Step::list_jobs(vec![running]), Step::patch_status()],
    );
    reconcile(Arc::new(with_status(sm, status)), h.ctx.clone())
        .await
        .unwrap();
    let status = status_of(&h.finish().await[1]);
    let run = status.last_run.as_ref().unwrap();
    assert_eq!(
        (
            run.queued_since.as_ref(),
            run.queued_seconds,
            run.preemptions
        ),
        (None, Some(30 * 60), None)
    );
    assert_eq!(phase(&status), "Training");
    assert_eq!(condition(&status, "Training"), ("True", "JobRunning"));
}

/// Preempted (suspended again after its pod had started): a pause. Counted and announced,
/// Queued, no decision, no failure; resumed, it trains again and its startup deadline applies
/// again from the resumption.
#[tokio::test]
async fn a_preempted_run_is_paused_not_failed() {
    let mut sm = queued(training_second(), None);
    let run = sm.status.as_mut().unwrap().last_run.as_mut().unwrap();
    run.pod_started_at = Some(Time(ts("2026-11-04T00:10:00Z")));
    run.queued_seconds = Some(60);
    let h = Harness::new(
        "2026-11-04T01:00:30Z",
        vec![
            Step::list_jobs(vec![suspended_job("2026-11-04T01:00:00Z")]),
            Step::apply_deployment(),
            Step::apply_service(),
            // An observation: one write at the end of the pass, then its event.
            Step::patch_status(),
            Step::event(),
        ],
    );
    reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    let text = h.metrics_text();
    let seen = h.finish().await;
    assert_event(&seen[4], "Normal", "Preempted");
    let status = status_of(&seen[3]);
    let run = status.last_run.as_ref().unwrap();
    assert_eq!(run.decision, None, "a pause, not a decision");
    assert_eq!(run.preemptions, Some(1));
    assert_eq!(run.queued_since, Some(Time(ts("2026-11-04T01:00:00Z"))));
    assert_eq!(run.pod_started_at, None, "its pods must start again");
    assert_eq!(phase(&status), "Queued");
    assert_eq!(condition(&status, "Degraded").0, "False");
    assert!(status.history.is_empty());
    assert!(!text.contains("failed_runs_total{"), "{text}");
    assert!(
        status
            .next_run_at
            .as_ref()
            .is_some_and(|t| t.0 > ts("2026-11-05T00:00:00Z")),
        "no retry backoff: {:?}",
        status.next_run_at
    );

    // Admitted again at 01:20, its pod not ready yet: 20 more minutes waited; the startup
    // deadline (30 min) counts from the resumption, so at 01:40 it is not yet due.
    let mut resumed = resumed_job("2026-11-04T01:20:00Z");
    resumed["status"]["ready"] = json!(0);
    let h = Harness::new(
        "2026-11-04T01:40:00Z",
        vec![
            Step::list_jobs(vec![resumed]),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(with_status(sm, status)), h.ctx.clone())
        .await
        .unwrap();
    let status = status_of(&h.finish().await[3]);
    let run = status.last_run.as_ref().unwrap();
    assert_eq!(
        (run.queued_seconds, run.preemptions, run.decision.clone()),
        (Some(60 + 20 * 60), Some(1), None)
    );
    assert_eq!(phase(&status), "Training");
}

/// Past `maxQueuedSeconds` the Job is deleted and the run fails with QueueTimeout, retried after
/// the usual backoff.
#[tokio::test]
async fn a_run_queued_past_its_limit_fails_with_queue_timeout() {
    let mut sm = queued(training_second(), Some(600));
    sm.status
        .as_mut()
        .unwrap()
        .last_run
        .as_mut()
        .unwrap()
        .queued_since = Some(Time(ts("2026-11-04T00:00:00Z")));
    let h = Harness::new(
        "2026-11-04T00:10:00Z",
        vec![
            Step::list_jobs(vec![suspended_job("2026-11-04T00:00:00Z")]),
            Step::delete_job(SECOND),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let seen = h.finish().await;
    assert_event(&seen[3], "Warning", "QueueTimeout");
    let status = status_of(&seen[6]);
    let run = status.last_run.as_ref().unwrap();
    assert_eq!(run.decision.as_ref().map(|d| d.as_str()), Some("Failed"));
    let reason = run.reason.as_deref().unwrap();
    assert!(
        reason.starts_with("QueueTimeout: ") && reason.contains("queue gpu"),
        "{reason}"
    );
    assert_eq!(condition(&status, "Degraded"), ("True", "QueueTimeout"));
    assert_eq!(status.history[0].decision.as_str(), "Failed");
    assert_eq!(
        status.next_run_at,
        Some(Time(ts("2026-11-04T00:25:00Z"))),
        "retried after the backoff"
    );
}
