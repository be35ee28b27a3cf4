//! Reconcile paths against a scripted API server: one test per path of the issue, each
//! asserting the method, path and body of every request the operator makes.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use face2simpson_operator::crd::{ChampionStatus, HistoryEntry, SimpsonModelStatus, Verdict};
use face2simpson_operator::{error_policy, reconcile};
use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;

fn args(job: &serde_json::Value) -> Vec<String> {
    serde_json::from_value(job["spec"]["template"]["spec"]["containers"][0]["args"].clone())
        .unwrap()
}

fn arg_after(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .map(|i| args[i + 1].clone())
}

fn assert_event(seen: &Seen, type_: &str, reason: &str) {
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.body["type"], type_, "{:#}", seen.body);
    assert_eq!(seen.body["reason"], reason, "{:#}", seen.body);
    assert_eq!(seen.body["regarding"]["kind"], "SimpsonModel");
    assert_eq!(seen.body["regarding"]["name"], NAME);
}

fn assert_apply(seen: &Seen) {
    assert!(
        seen.query.contains("fieldManager=face2simpson-operator")
            && seen.query.contains("force=true"),
        "{}",
        seen.query
    );
}

#[tokio::test]
async fn bootstrap_starts_the_first_run_at_once() {
    let h = Harness::new(
        "2026-11-01T00:05:00Z",
        vec![
            Step::list_jobs(vec![]),
            Step::create_job(),
            Step::patch_status(),
            Step::event(),
        ],
    );
    let action = reconcile(Arc::new(model()), h.ctx.clone()).await.unwrap();
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(300)),
        "a running Job is looked at every 5 minutes"
    );
    let text = h.metrics_text();
    let seen = h.finish().await;

    assert_eq!(
        seen[0].query,
        "&labelSelector=face2simpson.io%2Fmodel%3Dhomer%2Capp.kubernetes.io%2Fcomponent+in+%28training%2Cvalidation%29"
    );
    let job = &seen[1].body;
    assert_eq!(
        job["metadata"]["name"], FIRST,
        "named after the creation slot"
    );
    assert_eq!(
        job["metadata"]["ownerReferences"][0]["kind"],
        "SimpsonModel"
    );
    assert_eq!(job["metadata"]["ownerReferences"][0]["controller"], true);
    let a = args(job);
    assert_eq!(a[0], "train");
    assert_eq!(arg_after(&a, "--run-id").as_deref(), Some(FIRST));
    assert_eq!(arg_after(&a, "--storage").as_deref(), Some(STORE_URL));
    assert!(
        !a.contains(&"--champion".to_owned()),
        "no champion to re-score: {a:?}"
    );
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["secretRef"]["name"],
        "store-creds"
    );
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
        "1"
    );
    assert_eq!(
        arg_after(&a, "--runs-prefix").as_deref(),
        Some("runs/simpsons/homer"),
        "runs are keyed per model"
    );
    assert_eq!(arg_after(&a, "--owner").as_deref(), Some("simpsons/homer"));
    assert_eq!(
        arg_after(&a, "--device").as_deref(),
        Some("cuda"),
        "a GPU is requested: no silent CPU fallback"
    );
    assert_eq!(
        job["metadata"]["annotations"]["face2simpson.io/runs-prefix"],
        "runs/simpsons/homer"
    );
    assert_event(&seen[3], "Normal", "TrainingStarted");

    let status = status_of(&seen[2]);
    assert_eq!(seen[2].body["apiVersion"], "face2simpson.io/v1alpha1");
    assert_eq!(
        seen[2].body["metadata"]["resourceVersion"], RESOURCE_VERSION,
        "status writes are guarded by the resourceVersion the pass read"
    );
    assert_apply(&seen[2]);
    let last = status.last_run.as_ref().unwrap();
    assert_eq!(
        (
            last.run_id.as_str(),
            last.trigger.as_str(),
            last.decision.as_ref().map(|d| d.as_str())
        ),
        (FIRST, "Bootstrap", None)
    );
    assert_eq!(
        last.model_uri.as_deref(),
        Some("s3://bucket/models/runs/simpsons/homer/homer-20261101-000000/model.safetensors"),
        "the store URI of the run is recorded"
    );
    assert_eq!(status.phase.as_ref().map(|p| p.as_str()), Some("Training"));
    assert_eq!(condition(&status, "Training"), ("True", "JobRunning"));
    assert_eq!(condition(&status, "Ready"), ("False", "NoChampion"));
    assert_eq!(status.next_run_at, Some(Time(ts("2026-11-04T00:05:00Z"))));
    assert_eq!(status.observed_generation, Some(1));
    assert!(
        text.contains(
            r#"face2simpson_operator_trainings_started_total{namespace="simpsons",model="homer"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn not_due_serves_and_waits_then_a_second_pass_writes_nothing() {
    let sm = serving(FIRST, "2026-11-01T00:00:00Z");
    let jobs = vec![job(FIRST, "2026-11-01T00:00:00Z", JobPhase::Succeeded)];
    let h = Harness::new(
        "2026-11-02T00:00:00Z",
        vec![
            Step::list_jobs(jobs.clone()),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    let action = reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(3600)),
        "48h away: capped at an hour"
    );
    let seen = h.finish().await;
    assert_apply(&seen[1]);
    assert_eq!(seen[1].body["kind"], "Deployment");
    assert_eq!(
        env_value(&seen[1].body, "MODEL_URI").as_deref(),
        Some(FIRST_URI)
    );
    assert_eq!(seen[2].body["kind"], "Service");
    let status = status_of(&seen[3]);
    assert_eq!(
        status.next_run_at,
        Some(Time(ts("2026-11-04T00:00:00Z"))),
        "72h after the last start"
    );
    assert_eq!(status.phase.as_ref().map(|p| p.as_str()), Some("Serving"));
    assert_eq!(condition(&status, "Ready"), ("True", "Serving"));
    assert_eq!(condition(&status, "Degraded"), ("False", "AsExpected"));

    // Level-triggered and idempotent: the same world yields the same objects and no write.
    // The operator restarted in between (a fresh harness): the alerting gauge comes back from
    // status.lastSuccessfulRunAt, without waiting for the next run.
    let mut status = status;
    status.last_successful_run_at = Some(Time(ts("2026-11-01T01:00:00Z")));
    let h = Harness::new(
        "2026-11-02T00:00:00Z",
        vec![
            Step::list_jobs(jobs),
            Step::apply_deployment(),
            Step::apply_service(),
        ],
    );
    reconcile(Arc::new(with_status(sm, status)), h.ctx.clone())
        .await
        .unwrap();
    let text = h.metrics_text();
    h.finish().await;
    assert!(
        text.contains(&format!(
            r#"face2simpson_last_successful_run_timestamp_seconds{{namespace="simpsons",model="homer"}} {}"#,
            ts("2026-11-01T01:00:00Z").as_second()
        )),
        "{text}"
    );
}

/// Issue 17: a Deployment the API server refuses (a 422 from a bad override, say) is reported
/// where users look, and does not stop the schedule: the due run still starts.
#[tokio::test]
async fn a_refused_deployment_is_reported_and_the_schedule_goes_on() {
    let h = Harness::new(
        "2026-11-04T01:00:00Z",
        vec![
            Step::list_jobs(vec![job(
                FIRST,
                "2026-11-01T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::apply_deployment().failing(422, "Invalid"),
            Step::get_secret(),
            Step::create_job(),
            Step::patch_status(),
            Step::event(),
            Step::event(),
        ],
    );
    h.put_weights(FIRST_URI).await;
    let action = reconcile(
        Arc::new(serving(FIRST, "2026-11-01T00:00:00Z")),
        h.ctx.clone(),
    )
    .await
    .unwrap();
    let seen = h.finish().await;
    assert_eq!(seen[3].body["metadata"]["name"], SECOND, "the run started");
    let status = status_of(&seen[4]);
    assert_eq!(condition(&status, "Degraded"), ("True", "ApplyFailed"));
    assert_eq!(condition(&status, "ApplyFailed"), ("True", "ApplyFailed"));
    assert_eq!(condition(&status, "Ready"), ("False", "ApplyFailed"));
    // Serving failed, scheduling did not: nothing blocks the run.
    assert_eq!(condition(&status, "RunBlocked"), ("False", "AsExpected"));
    let message = &status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap()
        .message;
    assert!(
        message.contains("homer-inference") && message.contains("Invalid for the test"),
        "{message}"
    );
    assert_event(&seen[5], "Warning", "ApplyFailed");
    assert_event(&seen[6], "Normal", "TrainingStarted");
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(300)),
        "a running Job's pace, sooner than the refusal's ten minutes"
    );
}

/// Issue 17: a training Job the API server refuses is reported once and not retried on every
/// pass: the next pass, with nothing changed, writes nothing.
#[tokio::test]
async fn a_refused_job_is_reported_once_and_not_hammered() {
    let steps = |refused_again: bool| {
        let mut steps = vec![
            Step::list_jobs(vec![job(
                FIRST,
                "2026-11-01T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::get_secret(),
            Step::create_job().failing(422, "Invalid"),
        ];
        if !refused_again {
            steps.extend([Step::patch_status(), Step::event()]);
        }
        steps
    };
    let h = Harness::new("2026-11-04T01:00:00Z", steps(false));
    h.put_weights(FIRST_URI).await;
    let sm = serving(FIRST, "2026-11-01T00:00:00Z");
    let action = reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    let status = status_of(&seen[5]);
    assert_eq!(condition(&status, "Degraded"), ("True", "JobRefused"));
    assert_eq!(condition(&status, "RunBlocked"), ("True", "JobRefused"));
    // Scheduling failed, serving did not.
    assert_eq!(condition(&status, "ApplyFailed"), ("False", "AsExpected"));
    assert_eq!(condition(&status, "Ready"), ("True", "Serving"));
    assert_eq!(condition(&status, "Training"), ("False", "Idle"));
    assert_eq!(status.last_run.as_ref().unwrap().run_id, FIRST);
    assert_event(&seen[6], "Warning", "JobRefused");
    assert_eq!(action, Action::requeue(Duration::from_secs(600)));

    let h = Harness::new("2026-11-04T01:10:00Z", steps(true));
    h.put_weights(FIRST_URI).await;
    reconcile(Arc::new(with_status(sm, status)), h.ctx.clone())
        .await
        .unwrap();
    h.finish().await;
}

#[tokio::test]
async fn due_starts_one_run_named_after_its_slot() {
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
            Step::create_job(),
            Step::patch_status(),
            Step::event(),
        ],
    );
    h.put_weights(FIRST_URI).await;
    reconcile(
        Arc::new(serving(FIRST, "2026-11-01T00:00:00Z")),
        h.ctx.clone(),
    )
    .await
    .unwrap();
    let seen = h.finish().await;
    let job = &seen[4].body;
    assert_eq!(
        job["metadata"]["name"], SECOND,
        "the slot (last start + 72h), not the clock"
    );
    assert_eq!(
        arg_after(&args(job), "--champion").as_deref(),
        Some(FIRST),
        "the champion is re-scored by the run"
    );
    assert_eq!(
        arg_after(&args(job), "--champion-uri").as_deref(),
        Some(FIRST_URI),
        "its weights are found by full URL, whatever layout they were written in"
    );
    assert_event(&seen[6], "Normal", "TrainingStarted");
    let status = status_of(&seen[5]);
    assert_eq!(
        status.last_run.as_ref().unwrap().champion_run_id.as_deref(),
        Some(FIRST)
    );
    assert_eq!(status.last_run.as_ref().unwrap().trigger, "Schedule");
    assert_eq!(
        status.last_run.as_ref().unwrap().started_at,
        Time(ts("2026-11-04T01:00:00Z"))
    );
    assert_eq!(status.next_run_at, Some(Time(ts("2026-11-07T01:00:00Z"))));
}

#[tokio::test]
async fn missed_slots_after_downtime_start_a_single_run() {
    // Three weeks of downtime: one run, and the next one a full interval after it.
    let h = Harness::new(
        "2026-11-22T12:00:00Z",
        vec![
            Step::list_jobs(vec![job(
                FIRST,
                "2026-11-01T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::get_secret(),
            Step::create_job(),
            Step::patch_status(),
            Step::event(),
        ],
    );
    h.put_weights(FIRST_URI).await;
    reconcile(
        Arc::new(serving(FIRST, "2026-11-01T00:00:00Z")),
        h.ctx.clone(),
    )
    .await
    .unwrap();
    let seen = h.finish().await;
    assert_eq!(
        seen[4].body["metadata"]["name"], SECOND,
        "the first missed slot names the one run"
    );
    assert_eq!(
        status_of(&seen[5]).next_run_at,
        Some(Time(ts("2026-11-25T12:00:00Z")))
    );
}

#[tokio::test]
async fn a_running_job_blocks_a_second_one() {
    let h = Harness::new(
        "2026-11-09T00:00:00Z", // long overdue, but a run is in flight
        vec![
            Step::list_jobs(vec![
                job(FIRST, "2026-11-01T00:00:00Z", JobPhase::Succeeded),
                job(SECOND, "2026-11-04T00:00:00Z", JobPhase::Active),
            ]),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    let action = reconcile(Arc::new(training_second()), h.ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let status = status_of(&h.finish().await[3]);
    assert_eq!(status.phase.as_ref().map(|p| p.as_str()), Some("Training"));
    assert_eq!(condition(&status, "Training"), ("True", "JobRunning"));
    assert_eq!(status.last_run.unwrap().decision, None);
}

/// A model whose deletion is under way starts no run, even when one is due.
#[tokio::test]
async fn a_model_being_deleted_starts_nothing() {
    let mut sm = serving(FIRST, "2026-11-01T00:00:00Z");
    sm.metadata.deletion_timestamp = Some(Time(ts("2026-11-09T00:00:00Z")));
    let h = Harness::new(
        "2026-11-09T00:00:01Z", // long overdue
        vec![
            Step::list_jobs(vec![job(
                FIRST,
                "2026-11-01T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let status = status_of(&h.finish().await[3]);
    assert_eq!(condition(&status, "Training"), ("False", "Idle"));
    assert_eq!(status.last_run.as_ref().unwrap().run_id, FIRST);
}

/// A Job that carries the model's labels but another owner (a model deleted and created again
/// under the same name, its old Jobs not yet collected) is not this model's run.
#[tokio::test]
async fn a_job_owned_by_another_incarnation_is_not_ours() {
    let mut foreign = job(SECOND, "2026-11-01T12:00:00Z", JobPhase::Active);
    foreign["metadata"]["ownerReferences"][0]["uid"] = serde_json::json!("another-uid");
    let h = Harness::new(
        "2026-11-02T00:00:00Z",
        vec![
            Step::list_jobs(vec![foreign]),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    reconcile(
        Arc::new(serving(FIRST, "2026-11-01T00:00:00Z")),
        h.ctx.clone(),
    )
    .await
    .unwrap();
    let status = status_of(&h.finish().await[3]);
    assert_eq!(condition(&status, "Training"), ("False", "Idle"));
    assert_eq!(status.phase.as_ref().map(|p| p.as_str()), Some("Serving"));
}

/// Issue 17: a training Job whose pod never became ready within the startup deadline (an
/// image that cannot be pulled, a missing Secret) is deleted and its run failed, instead of
/// holding a GPU until activeDeadlineSeconds.
#[tokio::test]
async fn a_job_whose_pod_never_starts_is_failed_at_the_startup_deadline() {
    let mut stuck = job(SECOND, "2026-11-04T00:00:00Z", JobPhase::Active);
    stuck["status"]["ready"] = serde_json::json!(0);
    // 20 minutes in: still within the 30-minute deadline.
    let h = Harness::new(
        "2026-11-04T00:20:00Z",
        vec![
            Step::list_jobs(vec![stuck.clone()]),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    let action = reconcile(Arc::new(training_second()), h.ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let status = status_of(&h.finish().await[3]);
    assert_eq!(status.last_run.as_ref().unwrap().decision, None);
    assert_eq!(status.last_run.as_ref().unwrap().pod_started_at, None);

    // Past the deadline: the Job goes, the run is failed and says why.
    let h = Harness::new(
        "2026-11-04T00:31:00Z",
        vec![
            Step::list_jobs(vec![stuck]),
            Step::delete_job(SECOND),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    reconcile(
        Arc::new(with_status(training_second(), status)),
        h.ctx.clone(),
    )
    .await
    .unwrap();
    let seen = h.finish().await;
    assert_event(&seen[3], "Warning", "JobFailed");
    let status = status_of(&seen[6]);
    let last = status.last_run.unwrap();
    assert_eq!(last.decision.as_ref().map(|d| d.as_str()), Some("Failed"));
    assert!(
        last.reason
            .as_deref()
            .unwrap()
            .contains("startupDeadlineSeconds"),
        "{:?}",
        last.reason
    );
}

/// A running Job's pod was seen ready once: the startup deadline no longer applies to it.
#[tokio::test]
async fn a_started_pod_is_recorded_and_the_deadline_stops() {
    let h = Harness::new(
        "2026-11-04T00:05:00Z",
        vec![
            Step::list_jobs(vec![job(SECOND, "2026-11-04T00:00:00Z", JobPhase::Active)]),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(training_second()), h.ctx.clone())
        .await
        .unwrap();
    let status = status_of(&h.finish().await[3]);
    assert_eq!(
        status.last_run.unwrap().pod_started_at,
        Some(Time(ts("2026-11-04T00:05:00Z")))
    );
}

#[tokio::test]
async fn succeeded_and_better_promotes_and_rolls_the_deployment() {
    let h = Harness::new(
        "2026-11-04T02:00:00Z",
        vec![
            Step::list_jobs(vec![
                job(FIRST, "2026-11-01T00:00:00Z", JobPhase::Succeeded),
                job(SECOND, "2026-11-04T00:00:00Z", JobPhase::Succeeded),
            ]),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    h.put_metrics(&run_metrics(SECOND, 0.9, Some((FIRST, 0.8))))
        .await;
    reconcile(Arc::new(training_second()), h.ctx.clone())
        .await
        .unwrap();
    let text = h.metrics_text();
    let opened = h.opened_with.lock().unwrap().clone();
    // The decision also goes to the model's history.json, what the service's model card charts.
    let history = artifacts::History::from_json(
        &h.store
            .get(&artifacts::layout::history_in(RUNS_PREFIX))
            .await
            .unwrap(),
    )
    .unwrap();
    let seen = h.finish().await;
    let entry = history.entry(SECOND).unwrap();
    assert!(entry.promoted && entry.decision == "Promote", "{entry:?}");
    assert!(entry.summary.starts_with("Promote: +10.0 pts"), "{entry:?}");

    assert_eq!(
        opened,
        vec![vec![
            ("AWS_ACCESS_KEY_ID".to_owned(), "key".to_owned()),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), "secret".to_owned())
        ]],
        "the Secret's keys open the store"
    );
    assert_event(&seen[3], "Normal", "Promoted");
    assert!(
        seen[3].body["note"]
            .as_str()
            .unwrap()
            .contains("Promote: +10.0 pts (16 test faces, no paired predictions) — "),
        "{:#}",
        seen[3].body
    );
    assert!(
        seen[3].body["note"].as_str().unwrap().contains("90.00%"),
        "{:#}",
        seen[3].body
    );
    assert_eq!(
        env_value(&seen[4].body, "MODEL_URI").as_deref(),
        Some(SECOND_URI),
        "the new weights roll out"
    );
    assert_eq!(
        seen[4].body["spec"]["template"]["metadata"]["annotations"]["face2simpson.io/run-id"],
        SECOND
    );
    let recorded = status_of(&seen[2]);
    assert_eq!(
        recorded.champion.as_ref().unwrap().run_id,
        SECOND,
        "the decision is recorded before the Deployment changes"
    );
    assert_eq!(
        seen[2].body["metadata"]["resourceVersion"],
        RESOURCE_VERSION
    );
    assert_eq!(
        seen[6].body["metadata"]["resourceVersion"], "101",
        "the second write is guarded by the version the first one produced"
    );
    let status = status_of(&seen[6]);
    let champion = status.champion.as_ref().unwrap();
    assert_eq!(
        (
            champion.run_id.as_str(),
            champion.accuracy,
            champion.model_uri.as_str()
        ),
        (SECOND, 0.9, SECOND_URI)
    );
    assert_eq!(status.previous_champion.as_ref().unwrap().run_id, FIRST);
    let last = status.last_run.as_ref().unwrap();
    assert_eq!(
        (
            last.decision.as_ref().map(|d| d.as_str()),
            last.accuracy,
            last.champion_accuracy
        ),
        (Some("Promote"), Some(0.9), Some(0.8))
    );
    assert_eq!(last.finished_at, Some(Time(ts("2026-11-04T02:00:00Z"))));
    assert_eq!(
        last.summary.as_deref(),
        Some("Promote: +10.0 pts (16 test faces, no paired predictions)")
    );
    assert_eq!(last.comparison, None);
    assert_eq!(status.history.len(), 1);
    assert_eq!(
        (
            status.history[0].run_id.as_str(),
            status.history[0].decision.as_str()
        ),
        (SECOND, "Promote")
    );
    assert_eq!(status.phase.as_ref().map(|p| p.as_str()), Some("Serving"));
    assert!(
        text.contains(
            r#"face2simpson_operator_promotions_total{namespace="simpsons",model="homer"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"face2simpson_operator_champion_accuracy{namespace="simpsons",model="homer"} 0.9"#
        ),
        "{text}"
    );
    // Item 16: when the Job finished (created 00:00, complete two hours later).
    assert_eq!(
        status.last_successful_run_at.map(|t| t.0.as_second()),
        Some(1793757600)
    );
    assert!(
        text.contains(
            r#"face2simpson_last_successful_run_timestamp_seconds{namespace="simpsons",model="homer"} 1793757600"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn succeeded_but_not_better_is_rejected() {
    let h = Harness::new(
        "2026-11-04T02:00:00Z",
        vec![
            Step::list_jobs(vec![job(
                SECOND,
                "2026-11-04T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    h.put_metrics(&run_metrics(SECOND, 0.78, Some((FIRST, 0.8))))
        .await;
    reconcile(Arc::new(training_second()), h.ctx.clone())
        .await
        .unwrap();
    let text = h.metrics_text();
    let seen = h.finish().await;
    assert_event(&seen[3], "Normal", "Rejected");
    assert_eq!(
        env_value(&seen[4].body, "MODEL_URI").as_deref(),
        Some(FIRST_URI),
        "the champion stays in service"
    );
    let status = status_of(&seen[6]);
    assert_eq!(status.champion.as_ref().unwrap().run_id, FIRST);
    assert_eq!(status.previous_champion, None);
    let last = status.last_run.unwrap();
    assert_eq!(last.decision.as_ref().map(|d| d.as_str()), Some("Reject"));
    assert!(last.reason.unwrap().contains("does not beat champion"));
    assert!(
        text.contains(
            r#"face2simpson_operator_rejections_total{namespace="simpsons",model="homer"} 1"#
        ),
        "{text}"
    );
}

/// A run that wins on average by sacrificing one class is rejected (`ClassRegression`, with
/// the default `promotion.maxClassRecallDrop` of 0.10), and the decision is explained: the
/// paired comparison and its one-line summary in `status.lastRun`, the summary in the Event.
#[tokio::test]
async fn a_win_that_sacrifices_lisa_is_a_class_regression_and_explained() {
    let h = Harness::new(
        "2026-11-04T02:00:00Z",
        vec![
            Step::list_jobs(vec![job(
                SECOND,
                "2026-11-04T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    // 16 test images, 4 per class: the champion misses three homers and three marges, the
    // challenger one lisa. 93.75% against 62.5%, but lisa's recall falls from 100% to 75%.
    let mut m = run_metrics(SECOND, 0.9375, Some((FIRST, 0.625)));
    let labels: Vec<u8> = (0..16).map(|i| i / 4).collect();
    let mut challenger = labels.clone();
    challenger[15] = 0;
    let mut champion = labels.clone();
    for i in [0, 1, 2, 4, 5, 6] {
        champion[i] = 3;
    }
    m.test_fingerprint = Some("sha256:test".into());
    m.test_predictions = Some(artifacts::TestPredictions {
        test_fingerprint: "sha256:test".into(),
        keys: (0..16).map(|i| format!("test/{i}.png")).collect(),
        labels,
        challenger,
        champion: Some(champion),
    });
    h.put_metrics(&m).await;
    reconcile(Arc::new(training_second()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_event(&seen[3], "Normal", "Rejected");
    let summary = "Reject: +31.3 pts (95% CI -0.6..+56.6, p=0.12, 16 test faces); ClassRegression: lisa -25.0 pts";
    let note = seen[3].body["note"].as_str().unwrap();
    assert!(
        note.starts_with(&format!("run {SECOND}: {summary} — ClassRegression: lisa")),
        "{note}"
    );
    let status = status_of(&seen[6]);
    assert_eq!(status.champion.as_ref().unwrap().run_id, FIRST);
    let last = status.last_run.unwrap();
    assert_eq!(last.decision.as_ref().map(|d| d.as_str()), Some("Reject"));
    assert!(
        last.reason
            .as_deref()
            .unwrap()
            .starts_with("ClassRegression: lisa recall 75.0%"),
        "{:?}",
        last.reason
    );
    assert_eq!(last.summary.as_deref(), Some(summary));
    let c = last.comparison.unwrap();
    assert_eq!(
        (c.test_images, c.challenger_only, c.champion_only),
        (16, 6, 1)
    );
    let lisa = c.classes.iter().find(|r| r.class == "lisa").unwrap();
    assert_eq!(
        (lisa.support, lisa.recall, lisa.champion_recall),
        (4, 0.75, 1.0)
    );
    assert_eq!(lisa.delta, -0.25);
    // A 31-point gain on 16 images is not even significant: the interval includes 0.
    assert!(c.ci_low < 0.0 && c.ci_high > 0.5 && (c.mcnemar_p - 0.125).abs() < 1e-9);
}

/// `promotion.minTestImages` and `promotion.minSignificance` reach the gate: a better run
/// scored on too few images, or without the paired predictions the McNemar test needs, is
/// rejected and the champion stays.
#[tokio::test]
async fn the_cluster_gate_applies_the_test_size_and_significance_policy() {
    use face2simpson_operator::crd::PromotionSpec;
    let few = PromotionSpec {
        min_test_images: 17,
        ..model().spec.promotion
    };
    let alpha = PromotionSpec {
        min_significance: Some(0.05),
        ..model().spec.promotion
    };
    for (promotion, needle) in [
        (few, "scored on 16 test images, fewer than the 17"),
        (alpha, "significance cannot be tested"),
    ] {
        let mut sm = training_second();
        sm.spec.promotion = promotion;
        let h = Harness::new(
            "2026-11-04T02:00:00Z",
            vec![
                Step::list_jobs(vec![job(
                    SECOND,
                    "2026-11-04T00:00:00Z",
                    JobPhase::Succeeded,
                )]),
                Step::get_secret(),
                Step::patch_status(),
                Step::event(),
                Step::apply_deployment(),
                Step::apply_service(),
                Step::patch_status(),
            ],
        );
        // Better than the champion, so only the new knobs can reject it.
        h.put_metrics(&run_metrics(SECOND, 0.95, Some((FIRST, 0.8))))
            .await;
        reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
        let seen = h.finish().await;
        assert_event(&seen[3], "Normal", "Rejected");
        let status = status_of(&seen[6]);
        assert_eq!(status.champion.as_ref().unwrap().run_id, FIRST);
        let reason = status.last_run.unwrap().reason.unwrap();
        assert!(reason.contains(needle), "{reason}");
    }
}

#[tokio::test]
async fn dry_run_records_the_decision_and_rolls_nothing() {
    let mut sm = training_second();
    sm.spec.promotion.dry_run = true;
    let h = Harness::new(
        "2026-11-04T02:00:00Z",
        vec![
            Step::list_jobs(vec![job(
                SECOND,
                "2026-11-04T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    h.put_metrics(&run_metrics(SECOND, 0.95, Some((FIRST, 0.8))))
        .await;
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let seen = h.finish().await;
    assert_event(&seen[3], "Normal", "DryRun");
    assert_eq!(
        env_value(&seen[4].body, "MODEL_URI").as_deref(),
        Some(FIRST_URI)
    );
    let status = status_of(&seen[6]);
    assert_eq!(status.champion.as_ref().unwrap().run_id, FIRST);
    let last = status.last_run.unwrap();
    assert_eq!(
        (last.decision.as_ref().map(|d| d.as_str()), last.dry_run),
        (Some("Promote"), true)
    );
    assert!(last.reason.unwrap().starts_with("dry run"));
    assert!(status.history[0].dry_run);
}

/// Issue 17: a run its Job's podFailurePolicy ended (the trainer's exit code said configuration,
/// dataset or device) is not retried with the same spec: the next slot still comes, and a
/// change of the spec brings the retry back.
#[tokio::test]
async fn a_permanent_failure_is_not_retried_until_the_spec_changes() {
    let mut failed = job(SECOND, "2026-11-04T00:00:00Z", JobPhase::Failed);
    failed["status"]["conditions"][0]["reason"] = serde_json::json!("PodFailurePolicy");
    failed["status"]["conditions"][0]["message"] = serde_json::json!(
        "Container trainer for pod simpsons/x failed with exit code 2 matching FailJob rule at index 0"
    );
    let h = Harness::new(
        "2026-11-04T02:00:00Z",
        vec![
            Step::list_jobs(vec![failed.clone()]),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    let mut sm = training_second();
    sm.metadata.generation = Some(4);
    reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    let status = status_of(&h.finish().await[5]);
    let last = status.last_run.clone().unwrap();
    assert_eq!(last.decision.as_ref().map(|d| d.as_str()), Some("Failed"));
    assert_eq!(last.retry_after_generation, Some(4));
    assert_eq!(
        status.next_run_at,
        Some(Time(ts("2026-11-07T00:00:00Z"))),
        "the next slot, not a retry in 15 minutes"
    );

    // The spec changes (say the dataset is fixed): the retry is back.
    sm.metadata.generation = Some(5);
    let h = Harness::new(
        "2026-11-04T02:05:00Z",
        vec![
            Step::list_jobs(vec![failed]),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(with_status(sm, status)), h.ctx.clone())
        .await
        .unwrap();
    let status = status_of(&h.finish().await[3]);
    assert_eq!(status.next_run_at, Some(Time(ts("2026-11-04T02:15:00Z"))));
}

#[tokio::test]
async fn failed_job_degrades_without_promotion_and_is_retried_after_a_backoff() {
    let h = Harness::new(
        "2026-11-04T02:00:00Z",
        vec![
            Step::list_jobs(vec![job(SECOND, "2026-11-04T00:00:00Z", JobPhase::Failed)]),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(training_second()), h.ctx.clone())
        .await
        .unwrap();
    let text = h.metrics_text();
    let seen = h.finish().await;
    assert_event(&seen[2], "Warning", "JobFailed");
    assert!(
        seen[2].body["note"]
            .as_str()
            .unwrap()
            .contains("backoff limit")
    );
    assert_eq!(
        env_value(&seen[3].body, "MODEL_URI").as_deref(),
        Some(FIRST_URI)
    );
    let status = status_of(&seen[5]);
    assert_eq!(condition(&status, "Degraded"), ("True", "JobFailed"));
    assert_eq!(condition(&status, "RunFailed"), ("True", "JobFailed"));
    assert_eq!(status.phase.as_ref().map(|p| p.as_str()), Some("Degraded"));
    assert_eq!(
        status
            .last_run
            .as_ref()
            .unwrap()
            .decision
            .as_ref()
            .map(|d| d.as_str()),
        Some("Failed")
    );
    assert_eq!(status.champion.as_ref().unwrap().run_id, FIRST);
    assert_eq!(
        status.next_run_at,
        Some(Time(ts("2026-11-04T02:15:00Z"))),
        "retried 15 minutes after the failure, not at the next slot three days later"
    );
    assert!(
        text.contains(
            r#"face2simpson_operator_failed_runs_total{namespace="simpsons",model="homer"} 1"#
        ),
        "{text}"
    );
    assert!(
        !text.contains("last_successful_run_timestamp_seconds{"),
        "{text}"
    );
}

#[tokio::test]
async fn missing_metrics_degrade() {
    let h = Harness::new(
        "2026-11-04T02:00:00Z",
        vec![
            Step::list_jobs(vec![job(
                SECOND,
                "2026-11-04T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(training_second()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_event(&seen[3], "Warning", "MetricsMissing");
    assert!(
        seen[3].body["note"]
            .as_str()
            .unwrap()
            .contains("runs/simpsons/homer/homer-20261104-000000/metrics.json")
    );
    let status = status_of(&seen[6]);
    assert_eq!(condition(&status, "Degraded"), ("True", "MetricsMissing"));
    assert_eq!(
        status
            .last_run
            .unwrap()
            .decision
            .as_ref()
            .map(|d| d.as_str()),
        Some("Failed")
    );
    assert_eq!(status.champion.unwrap().run_id, FIRST);
}

#[tokio::test]
async fn corrupt_metrics_degrade() {
    let h = Harness::new(
        "2026-11-04T02:00:00Z",
        vec![
            Step::list_jobs(vec![job(
                SECOND,
                "2026-11-04T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    h.store
        .put(
            &artifacts::layout::metrics_in(RUNS_PREFIX, SECOND),
            b"{\"run_id\": \"homer-2026".to_vec(),
        )
        .await
        .unwrap();
    reconcile(Arc::new(training_second()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_event(&seen[3], "Warning", "MetricsInvalid");
    let status = status_of(&seen[6]);
    assert_eq!(condition(&status, "Degraded"), ("True", "MetricsInvalid"));
    assert_eq!(status.champion.unwrap().run_id, FIRST);
}

#[tokio::test]
async fn suspend_starts_nothing_but_still_evaluates_the_running_job() {
    let mut sm = training_second();
    sm.spec.schedule.suspend = true;
    let h = Harness::new(
        "2026-11-20T00:00:00Z", // overdue
        vec![
            Step::list_jobs(vec![job(
                SECOND,
                "2026-11-04T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    h.put_metrics(&run_metrics(SECOND, 0.9, Some((FIRST, 0.8))))
        .await;
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let seen = h.finish().await;
    assert_event(&seen[3], "Normal", "Promoted");
    let status = status_of(&seen[6]);
    assert_eq!(status.phase.as_ref().map(|p| p.as_str()), Some("Suspended"));
    assert_eq!(status.next_run_at, None);
    assert_eq!(status.champion.unwrap().run_id, SECOND);
}

#[tokio::test]
async fn manual_request_runs_once_and_is_echoed() {
    let mut sm = serving(FIRST, "2026-11-01T00:00:00Z");
    let request = "2026-11-02T09:30:00Z";
    sm.metadata.annotations = Some(BTreeMap::from([(
        "face2simpson.io/train-requested-at".to_owned(),
        request.to_owned(),
    )]));
    let first_job = job(FIRST, "2026-11-01T00:00:00Z", JobPhase::Succeeded);
    let h = Harness::new(
        "2026-11-02T10:00:00Z",
        vec![
            Step::list_jobs(vec![first_job.clone()]),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::get_secret(),
            Step::create_job(),
            Step::patch_status(),
            Step::event(),
        ],
    );
    h.put_weights(FIRST_URI).await;
    reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    let name = seen[4].body["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(name.starts_with("homer-manual-"), "{name}");
    let status = status_of(&seen[5]);
    assert_eq!(status.last_train_request.as_deref(), Some(request));
    assert_eq!(status.last_run.as_ref().unwrap().trigger, "Manual");
    assert_eq!(
        status.next_run_at,
        Some(Time(ts("2026-11-05T10:00:00Z"))),
        "the interval restarts from the manual run"
    );

    // The same annotation value is not a new request: no second Job. The one status write
    // records that the run's pod started (once per run).
    let h = Harness::new(
        "2026-11-02T10:00:00Z",
        vec![
            Step::list_jobs(vec![
                first_job,
                job(&name, "2026-11-02T10:00:00Z", JobPhase::Active),
            ]),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(with_status(sm, status)), h.ctx.clone())
        .await
        .unwrap();
    let status = status_of(&h.finish().await[3]);
    assert_eq!(status.last_train_request.as_deref(), Some(request));
    assert!(status.last_run.unwrap().pod_started_at.is_some());
}

#[tokio::test]
async fn restart_after_the_job_finished_decides_once_and_never_promotes_twice() {
    let jobs = vec![
        job(FIRST, "2026-11-01T00:00:00Z", JobPhase::Succeeded),
        job(SECOND, "2026-11-04T00:00:00Z", JobPhase::Succeeded),
    ];
    // The operator died after the Job finished: status still says the run is in progress.
    let h = Harness::new(
        "2026-11-05T00:00:00Z",
        vec![
            Step::list_jobs(jobs.clone()),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    h.put_metrics(&run_metrics(SECOND, 0.9, Some((FIRST, 0.8))))
        .await;
    let sm = training_second();
    reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    let status = status_of(&seen[6]);
    assert_eq!(status.champion.as_ref().unwrap().run_id, SECOND);

    // Restarted again once the decision is recorded: the finished Job is still there, yet
    // nothing is re-decided: no event, no status write, the same Deployment.
    let h = Harness::new(
        "2026-11-05T00:00:00Z",
        vec![
            Step::list_jobs(jobs),
            Step::apply_deployment(),
            Step::apply_service(),
        ],
    );
    h.put_metrics(&run_metrics(SECOND, 0.9, Some((FIRST, 0.8))))
        .await;
    reconcile(Arc::new(with_status(sm, status.clone())), h.ctx.clone())
        .await
        .unwrap();
    let text = h.metrics_text();
    let seen = h.finish().await;
    assert_eq!(
        env_value(&seen[1].body, "MODEL_URI").as_deref(),
        Some(SECOND_URI)
    );
    assert!(
        !text.contains("promotions_total{"),
        "no second promotion: {text}"
    );
    assert_eq!(status.history.len(), 1);
}

#[tokio::test]
async fn restart_before_the_run_was_recorded_adopts_and_decides_it() {
    // The operator died right after creating SECOND's Job: status still shows FIRST as the
    // last run. The Job is found by its labels and decided like any other.
    let h = Harness::new(
        "2026-11-05T00:00:00Z",
        vec![
            Step::list_jobs(vec![
                job(FIRST, "2026-11-01T00:00:00Z", JobPhase::Succeeded),
                job(SECOND, "2026-11-04T00:00:00Z", JobPhase::Succeeded),
            ]),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    h.put_metrics(&run_metrics(SECOND, 0.9, Some((FIRST, 0.8))))
        .await;
    reconcile(
        Arc::new(serving(FIRST, "2026-11-01T00:00:00Z")),
        h.ctx.clone(),
    )
    .await
    .unwrap();
    let status = status_of(&h.finish().await[6]);
    let last = status.last_run.as_ref().unwrap();
    assert_eq!(
        (
            last.run_id.as_str(),
            last.decision.as_ref().map(|d| d.as_str())
        ),
        (SECOND, Some("Promote"))
    );
    assert_eq!(
        last.started_at,
        Time(ts("2026-11-04T00:00:00Z")),
        "taken from the Job"
    );
    assert_eq!(status.champion.unwrap().run_id, SECOND);
    assert_eq!(status.previous_champion.unwrap().run_id, FIRST);
    assert_eq!(status.history.len(), 1);
    assert_eq!(status.next_run_at, Some(Time(ts("2026-11-07T00:00:00Z"))));
}

#[tokio::test]
async fn conflict_on_job_create_adopts_the_existing_job() {
    let h = Harness::new(
        "2026-11-01T00:05:00Z",
        vec![
            Step::list_jobs(vec![]),
            Step::create_job().failing(409, "AlreadyExists"),
            Step::get_job(job(FIRST, "2026-11-01T00:00:00Z", JobPhase::Active)),
            Step::patch_status(),
            Step::event(),
        ],
    );
    reconcile(Arc::new(model()), h.ctx.clone()).await.unwrap();
    let seen = h.finish().await;
    assert_eq!(seen[1].body["metadata"]["name"], FIRST);
    let status = status_of(&seen[3]);
    let last = status.last_run.unwrap();
    assert_eq!(last.run_id, FIRST, "the existing Job is the run");
    assert_eq!(
        last.started_at,
        Time(ts("2026-11-01T00:00:00Z")),
        "started when the Job was created, not now"
    );
    assert_event(&seen[4], "Normal", "TrainingStarted");
}

#[tokio::test]
async fn server_errors_go_through_the_error_policy_with_backoff() {
    let steps = || {
        vec![
            Step::list_jobs(vec![job(
                FIRST,
                "2026-11-01T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status().failing(500, "InternalError"),
        ]
    };
    let sm = Arc::new(serving(FIRST, "2026-11-01T00:00:00Z"));
    let h = Harness::new("2026-11-02T00:00:00Z", steps());
    let err = reconcile(sm.clone(), h.ctx.clone()).await.unwrap_err();
    assert_eq!(err.kind(), "server_error");
    assert_eq!(
        error_policy(sm.clone(), &err, h.ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        error_policy(sm.clone(), &err, h.ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    let text = h.metrics_text();
    assert!(
        text.contains(r#"face2simpson_operator_reconcile_errors_total{kind="server_error"} 2"#),
        "{text}"
    );
    h.finish().await;

    // A 409 from the API is retried the same way, under its own label.
    let h = Harness::new(
        "2026-11-02T00:00:00Z",
        vec![
            Step::list_jobs(vec![]),
            Step::apply_deployment().failing(409, "Conflict"),
        ],
    );
    let err = reconcile(sm.clone(), h.ctx.clone()).await.unwrap_err();
    assert_eq!(err.kind(), "conflict");
    assert_eq!(
        error_policy(sm, &err, h.ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    h.finish().await;
}

#[tokio::test]
async fn rollback_annotation_puts_the_previous_champion_back() {
    let mut sm = serving(SECOND, "2026-11-04T00:00:00Z");
    let st = sm.status.as_mut().unwrap();
    st.champion = Some(champion(SECOND, 0.9));
    st.previous_champion = Some(champion(FIRST, 0.8));
    sm.metadata.annotations = Some(BTreeMap::from([(
        "face2simpson.io/rollback-requested-at".to_owned(),
        "now".to_owned(),
    )]));
    let h = Harness::new(
        "2026-11-05T00:00:00Z",
        vec![
            Step::list_jobs(vec![job(
                SECOND,
                "2026-11-04T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let seen = h.finish().await;
    assert_event(&seen[2], "Normal", "RolledBack");
    assert_eq!(
        env_value(&seen[3].body, "MODEL_URI").as_deref(),
        Some(FIRST_URI)
    );
    let status = status_of(&seen[5]);
    assert_eq!(status.champion.unwrap().run_id, FIRST);
    assert_eq!(status.previous_champion.unwrap().run_id, SECOND);
    assert_eq!(status.last_rollback_request.as_deref(), Some("now"));
    assert_eq!(
        (
            status.history[0].run_id.as_str(),
            status.history[0].decision.as_str()
        ),
        (FIRST, "Rollback")
    );
}

#[tokio::test]
async fn housekeeping_deletes_decided_jobs_beyond_the_limit() {
    let runs = [
        "homer-20261101-000000",
        "homer-20261104-000000",
        "homer-20261107-000000",
        "homer-20261110-000000",
        "homer-20261113-000000",
    ];
    let mut sm = serving(runs[4], "2026-11-13T00:00:00Z");
    let st: &mut SimpsonModelStatus = sm.status.as_mut().unwrap();
    st.history = runs
        .iter()
        .rev()
        .map(|r| HistoryEntry {
            run_id: (*r).into(),
            decision: Verdict::Reject,
            reason: "test".into(),
            accuracy: None,
            champion_accuracy: None,
            dry_run: false,
            decided_at: Time(created()),
        })
        .collect();
    let jobs = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            job(
                r,
                &format!("2026-11-{:02}T00:00:00Z", 1 + 3 * i),
                JobPhase::Succeeded,
            )
        })
        .collect();
    let h = Harness::new(
        "2026-11-14T00:00:00Z",
        vec![
            Step::list_jobs(jobs),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::delete_job(runs[1]),
            Step::delete_job(runs[0]),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let seen = h.finish().await;
    assert_eq!(
        seen[3].body["propagationPolicy"], "Background",
        "the Job's pods go too"
    );
}

#[tokio::test]
async fn history_stays_bounded() {
    let mut sm = training_second();
    sm.spec.schedule.history_limit = 2;
    let st = sm.status.as_mut().unwrap();
    st.history = (0..2)
        .map(|i| HistoryEntry {
            run_id: format!("old-{i}"),
            decision: Verdict::Reject,
            reason: "test".into(),
            accuracy: None,
            champion_accuracy: None,
            dry_run: false,
            decided_at: Time(created()),
        })
        .collect();
    let h = Harness::new(
        "2026-11-04T02:00:00Z",
        vec![
            Step::list_jobs(vec![job(SECOND, "2026-11-04T00:00:00Z", JobPhase::Failed)]),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let status = status_of(&h.finish().await[5]);
    let ids: Vec<&str> = status.history.iter().map(|h| h.run_id.as_str()).collect();
    assert_eq!(ids, [SECOND, "old-0"], "newest first, oldest dropped");
}

#[tokio::test]
async fn invalid_schedule_degrades_with_a_warning() {
    let mut sm = serving(FIRST, "2026-11-01T00:00:00Z");
    sm.spec.schedule.interval = "every now and then".into();
    let h = Harness::new(
        "2026-11-09T00:00:00Z",
        vec![
            Step::list_jobs(vec![job(
                FIRST,
                "2026-11-01T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
            Step::event(),
        ],
    );
    reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_event(&seen[4], "Warning", "InvalidSchedule");
    let status = status_of(&seen[3]);
    assert_eq!(condition(&status, "Degraded"), ("True", "InvalidSchedule"));
    assert_eq!(
        condition(&status, "RunBlocked"),
        ("True", "InvalidSchedule")
    );
    assert_eq!(status.phase.as_ref().map(|p| p.as_str()), Some("Degraded"));

    // The warning is given once: the next pass neither warns again nor writes.
    let h = Harness::new(
        "2026-11-09T00:00:00Z",
        vec![
            Step::list_jobs(vec![job(
                FIRST,
                "2026-11-01T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::apply_deployment(),
            Step::apply_service(),
        ],
    );
    reconcile(Arc::new(with_status(sm, status)), h.ctx.clone())
        .await
        .unwrap();
    h.finish().await;
}

#[tokio::test]
async fn cron_in_a_time_zone_starts_the_run_of_the_local_slot() {
    // 02:30 in Paris is 01:30 UTC in November.
    let mut sm = serving(FIRST, "2026-11-03T01:30:00Z");
    sm.spec.schedule.cron = Some("30 2 * * *".into());
    sm.spec.schedule.time_zone = Some("Europe/Paris".into());
    let h = Harness::new(
        "2026-11-04T02:00:00Z",
        vec![
            Step::list_jobs(vec![job(
                FIRST,
                "2026-11-03T01:30:00Z",
                JobPhase::Succeeded,
            )]),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::get_secret(),
            Step::create_job(),
            Step::patch_status(),
            Step::event(),
        ],
    );
    h.put_weights(FIRST_URI).await;
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let seen = h.finish().await;
    assert_eq!(seen[4].body["metadata"]["name"], "homer-20261104-013000");
    assert_eq!(
        status_of(&seen[5]).next_run_at,
        Some(Time(ts("2026-11-05T01:30:00Z")))
    );
}

#[tokio::test]
async fn rollback_without_a_previous_champion_warns_and_keeps_serving() {
    let mut sm = serving(FIRST, "2026-11-01T00:00:00Z");
    sm.metadata.annotations = Some(BTreeMap::from([(
        "face2simpson.io/rollback-requested-at".to_owned(),
        "1".to_owned(),
    )]));
    let h = Harness::new(
        "2026-11-02T00:00:00Z",
        vec![
            Step::list_jobs(vec![job(
                FIRST,
                "2026-11-01T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let seen = h.finish().await;
    assert_event(&seen[2], "Warning", "RollbackImpossible");
    assert_eq!(
        env_value(&seen[3].body, "MODEL_URI").as_deref(),
        Some(FIRST_URI)
    );
    let status = status_of(&seen[5]);
    assert_eq!(status.champion.unwrap().run_id, FIRST);
    assert_eq!(
        status.last_rollback_request.as_deref(),
        Some("1"),
        "handled, not retried forever"
    );
}

#[tokio::test]
async fn a_job_deleted_before_it_finished_is_recorded_as_failed() {
    let h = Harness::new(
        "2026-11-05T00:00:00Z",
        vec![
            Step::list_jobs(vec![job(
                FIRST,
                "2026-11-01T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(training_second()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_event(&seen[2], "Warning", "JobMissing");
    let status = status_of(&seen[5]);
    assert_eq!(condition(&status, "Degraded"), ("True", "JobMissing"));
    assert_eq!(
        status
            .last_run
            .unwrap()
            .decision
            .as_ref()
            .map(|d| d.as_str()),
        Some("Failed")
    );
    assert_eq!(status.history[0].run_id, SECOND);
    assert_eq!(
        status.next_run_at,
        Some(Time(ts("2026-11-05T00:15:00Z"))),
        "after the retry backoff, not at once"
    );
}

#[tokio::test]
async fn unreachable_store_is_retried_and_blocks_new_runs() {
    // Long overdue for the next slot, but the finished run must be decided first.
    let h = Harness::new(
        "2026-11-09T02:00:00Z",
        vec![
            Step::list_jobs(vec![job(
                SECOND,
                "2026-11-04T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::get_secret(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
            Step::event(),
        ],
    );
    h.put_metrics(&run_metrics(SECOND, 0.9, Some((FIRST, 0.8))))
        .await;
    h.store_down
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sm = training_second();
    sm.spec.promotion.metrics_deadline_seconds = 7 * 24 * 3600;
    let action = reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    let text = h.metrics_text();
    let seen = h.finish().await;
    assert_eq!(
        env_value(&seen[2].body, "MODEL_URI").as_deref(),
        Some(FIRST_URI)
    );
    assert_event(&seen[5], "Warning", "StorageUnreachable");
    let status = status_of(&seen[4]);
    assert_eq!(
        condition(&status, "Degraded"),
        ("True", "StorageUnreachable")
    );
    assert_eq!(
        condition(&status, "StoreUnavailable"),
        ("True", "StorageUnreachable")
    );
    assert_eq!(condition(&status, "RunFailed"), ("False", "AsExpected"));
    assert_eq!(
        status.last_run.as_ref().unwrap().decision,
        None,
        "a store outage is not the run's failure"
    );
    assert!(status.history.is_empty());
    assert!(!text.contains("failed_runs_total{"), "{text}");
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(600)),
        "down for five days: looked at again in ten minutes at most"
    );

    // Still down a minute later: the pass looks again but writes nothing and warns no more,
    // so an outage costs the API server no status writes (and no passes they would wake).
    let h = Harness::new(
        "2026-11-09T02:01:00Z",
        vec![
            Step::list_jobs(vec![job(
                SECOND,
                "2026-11-04T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::get_secret(),
            Step::apply_deployment(),
            Step::apply_service(),
        ],
    );
    h.store_down
        .store(true, std::sync::atomic::Ordering::Relaxed);
    reconcile(
        Arc::new(with_status(sm.clone(), status.clone())),
        h.ctx.clone(),
    )
    .await
    .unwrap();
    h.finish().await;

    // The store is back: the run is decided as if nothing happened, and no warning repeats.
    h_store_back(sm, status).await;
}

async fn h_store_back(mut sm: face2simpson_operator::SimpsonModel, status: SimpsonModelStatus) {
    // Suspended, so the pass ends with the decision instead of starting the overdue run.
    sm.spec.schedule.suspend = true;
    let h = Harness::new(
        "2026-11-09T02:10:00Z",
        vec![
            Step::list_jobs(vec![job(
                SECOND,
                "2026-11-04T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    h.put_metrics(&run_metrics(SECOND, 0.9, Some((FIRST, 0.8))))
        .await;
    reconcile(Arc::new(with_status(sm, status)), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_event(&seen[3], "Normal", "Promoted");
    let status = status_of(&seen[6]);
    assert_eq!(status.champion.as_ref().unwrap().run_id, SECOND);
    assert_eq!(condition(&status, "Degraded"), ("False", "AsExpected"));
    assert_eq!(
        condition(&status, "StoreUnavailable"),
        ("False", "StoreReachable")
    );
    assert_eq!(condition(&status, "RunFailed"), ("False", "RunEvaluated"));
}

#[tokio::test]
async fn unreachable_store_past_the_deadline_fails_the_run() {
    let h = Harness::new(
        // The Job finished at 02:00; the default deadline is four hours.
        "2026-11-04T06:00:01Z",
        vec![
            Step::list_jobs(vec![job(
                SECOND,
                "2026-11-04T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    h.store_down
        .store(true, std::sync::atomic::Ordering::Relaxed);
    reconcile(Arc::new(training_second()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_event(&seen[3], "Warning", "StorageUnreachable");
    let status = status_of(&seen[6]);
    assert_eq!(
        condition(&status, "Degraded"),
        ("True", "StorageUnreachable")
    );
    // The run's failure, not an outage anything still waits on.
    assert_eq!(
        condition(&status, "RunFailed"),
        ("True", "StorageUnreachable")
    );
    assert_eq!(condition(&status, "StoreUnavailable").0, "False");
    assert_eq!(
        status
            .last_run
            .unwrap()
            .decision
            .as_ref()
            .map(|d| d.as_str()),
        Some("Failed")
    );
    assert_eq!(status.champion.unwrap().run_id, FIRST);
}

// ---- Issue 10: decisions that cannot be wrong ----

/// A finished SECOND whose metrics are `m`, evaluated against champion FIRST: the run is
/// refused as MetricsInvalid and the champion stays.
async fn assert_refused(m: artifacts::RunMetrics, job: serde_json::Value, needle: &str) {
    let h = Harness::new(
        "2026-11-04T02:00:00Z",
        vec![
            Step::list_jobs(vec![job]),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    h.put_metrics(&m).await;
    reconcile(Arc::new(training_second()), h.ctx.clone())
        .await
        .unwrap();
    let text = h.metrics_text();
    let seen = h.finish().await;
    assert_event(&seen[3], "Warning", "MetricsInvalid");
    let note = seen[3].body["note"].as_str().unwrap();
    assert!(note.contains(needle), "{note}");
    let status = status_of(&seen[6]);
    assert_eq!(condition(&status, "Degraded"), ("True", "MetricsInvalid"));
    assert_eq!(
        status
            .last_run
            .unwrap()
            .decision
            .as_ref()
            .map(|d| d.as_str()),
        Some("Failed")
    );
    assert_eq!(status.champion.unwrap().run_id, FIRST, "nothing promoted");
    assert!(!text.contains("promotions_total{"), "{text}");
}

fn second_job() -> serde_json::Value {
    job(SECOND, "2026-11-04T00:00:00Z", JobPhase::Succeeded)
}

/// Item 1: a run compared with another model than the champion cannot promote.
#[tokio::test]
async fn metrics_compared_with_another_champion_are_refused() {
    // 0.9 against 0.5 would win, but 0.5 is not FIRST's accuracy: it is some other model's.
    assert_refused(
        run_metrics(SECOND, 0.9, Some(("homer-20261020-000000", 0.5))),
        second_job(),
        "was compared with champion homer-20261020-000000 but the champion is homer-20261101-000000",
    )
    .await;
}

/// Issue 17: the champion changed while the run trained (here a manual promotion): the run
/// was rightly compared with the champion of its start, so it is `Superseded`, not failed:
/// no Degraded, no failure counted, no retry.
#[tokio::test]
async fn a_run_whose_champion_was_replaced_is_superseded_not_failed() {
    const MANUAL: &str = "homer-manual-0000abcd";
    let h = Harness::new(
        "2026-11-04T02:00:00Z",
        vec![
            Step::list_jobs(vec![second_job()]),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    h.put_metrics(&run_metrics(SECOND, 0.9, Some((FIRST, 0.8))))
        .await;
    let mut sm = training_second();
    let status = sm.status.as_mut().unwrap();
    status.last_run.as_mut().unwrap().champion_run_id = Some(FIRST.into());
    status.previous_champion = status.champion.take();
    status.champion = Some(champion(MANUAL, 0.85));
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let text = h.metrics_text();
    let seen = h.finish().await;
    assert_event(&seen[3], "Normal", "Superseded");
    let status = status_of(&seen[6]);
    let last = status.last_run.as_ref().unwrap();
    assert_eq!(
        last.decision.as_ref().map(|d| d.as_str()),
        Some("Superseded")
    );
    assert!(
        last.reason.as_deref().unwrap().contains(MANUAL),
        "{:?}",
        last.reason
    );
    assert_eq!(status.champion.as_ref().unwrap().run_id, MANUAL);
    assert_eq!(condition(&status, "Degraded"), ("False", "AsExpected"));
    assert_eq!(condition(&status, "RunFailed"), ("False", "RunSuperseded"));
    assert_eq!(status.history[0].decision.as_str(), "Superseded");
    assert!(!text.contains("failed_runs_total{"), "{text}");
    assert_eq!(
        status.next_run_at,
        Some(Time(ts("2026-11-07T00:00:00Z"))),
        "the next slot, no retry"
    );
}

/// Item 1: with a champion in service, metrics without a comparison cannot promote either
/// (the gate would take them for a first model).
#[tokio::test]
async fn metrics_without_the_champion_are_refused() {
    assert_refused(
        run_metrics(SECOND, 0.9, None),
        second_job(),
        "was compared with no champion",
    )
    .await;
}

/// Item 1: a metrics.json older than its Job is a leftover of an earlier run with that id.
#[tokio::test]
async fn metrics_older_than_the_job_are_refused() {
    let mut m = run_metrics(SECOND, 0.9, Some((FIRST, 0.8)));
    m.started_at = "2026-10-01T00:00:00Z".parse().unwrap();
    assert_refused(m, second_job(), "stale file").await;
}

/// Item 2: another model's metrics (a shared bucket, a copied file) cannot decide for this one.
#[tokio::test]
async fn metrics_of_another_model_are_refused() {
    let mut m = run_metrics(SECOND, 0.9, Some((FIRST, 0.8)));
    m.owner = Some("springfield/bart".into());
    assert_refused(m, second_job(), "belongs to springfield/bart").await;
    let mut m = run_metrics(SECOND, 0.9, Some((FIRST, 0.8)));
    m.owner = None;
    assert_refused(m, second_job(), "does not name its owner").await;
}

/// Item 2: runs live under runs/<namespace>/<name>/; a Job from before that (no runs-prefix
/// annotation) is still read from the shared runs/ prefix.
#[tokio::test]
async fn runs_are_keyed_per_model_and_the_old_layout_is_still_read() {
    let h = Harness::new(
        "2026-11-04T02:00:00Z",
        vec![
            Step::list_jobs(vec![legacy_job(
                SECOND,
                "2026-11-04T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    let mut m = run_metrics(SECOND, 0.9, Some((FIRST, 0.8)));
    m.owner = None;
    h.put_legacy_metrics(&m).await;
    reconcile(Arc::new(training_second()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_event(&seen[3], "Normal", "Promoted");
    assert_eq!(
        env_value(&seen[4].body, "MODEL_URI").as_deref(),
        Some("s3://bucket/models/runs/homer-20261104-000000/model.safetensors"),
        "the old layout's weights are served"
    );

    // The same metrics in the old place do not count for a Job of the new layout.
    let h = Harness::new(
        "2026-11-04T02:00:00Z",
        vec![
            Step::list_jobs(vec![second_job()]),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    h.put_legacy_metrics(&run_metrics(SECOND, 0.9, Some((FIRST, 0.8))))
        .await;
    reconcile(Arc::new(training_second()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_event(&seen[3], "Warning", "MetricsMissing");
    assert!(
        seen[3].body["note"]
            .as_str()
            .unwrap()
            .contains("runs/simpsons/homer/homer-20261104-000000/metrics.json")
    );
}

/// Items 3 and 4: the decision is written first, guarded by the resourceVersion the pass read.
/// A stale copy gets a 409 and acts on nothing: no Deployment change, no event, no count.
#[tokio::test]
async fn a_decision_that_cannot_be_recorded_is_not_acted_on() {
    let h = Harness::new(
        "2026-11-04T02:00:00Z",
        vec![
            Step::list_jobs(vec![second_job()]),
            Step::get_secret(),
            Step::patch_status().failing(409, "Conflict"),
        ],
    );
    h.put_metrics(&run_metrics(SECOND, 0.9, Some((FIRST, 0.8))))
        .await;
    let err = reconcile(Arc::new(training_second()), h.ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "conflict");
    assert!(err.to_string().contains("cannot write the status"), "{err}");
    let text = h.metrics_text();
    let seen = h.finish().await;
    assert_eq!(
        seen[2].body["metadata"]["resourceVersion"], RESOURCE_VERSION,
        "the write names the version it was computed from"
    );
    assert!(!text.contains("promotions_total{"), "{text}");
}

/// Item 4: a 409 on create reads the Job that exists. One this model does not own is not
/// adopted; one that already finished is recorded (and decided next pass), not "started".
#[tokio::test]
async fn conflict_on_job_create_reads_the_real_job() {
    let mut foreign = job(FIRST, "2026-10-30T00:00:00Z", JobPhase::Active);
    foreign["metadata"]["ownerReferences"][0]["uid"] = "someone-else".into();
    let h = Harness::new(
        "2026-11-01T00:05:00Z",
        vec![
            Step::list_jobs(vec![]),
            Step::create_job().failing(409, "AlreadyExists"),
            Step::get_job(foreign),
            Step::patch_status(),
            Step::event(),
        ],
    );
    reconcile(Arc::new(model()), h.ctx.clone()).await.unwrap();
    let text = h.metrics_text();
    let seen = h.finish().await;
    let status = status_of(&seen[3]);
    assert_eq!(condition(&status, "Degraded"), ("True", "JobConflict"));
    assert_eq!(status.last_run, None, "not our run");
    assert_eq!(condition(&status, "Training"), ("False", "Idle"));
    assert_event(&seen[4], "Warning", "JobConflict");
    assert!(!text.contains("trainings_started_total{"), "{text}");

    let h = Harness::new(
        "2026-11-01T00:05:00Z",
        vec![
            Step::list_jobs(vec![]),
            Step::create_job().failing(409, "AlreadyExists"),
            Step::get_job(job(FIRST, "2026-11-01T00:00:00Z", JobPhase::Succeeded)),
            Step::patch_status(),
        ],
    );
    let action = reconcile(Arc::new(model()), h.ctx.clone()).await.unwrap();
    let seen = h.finish().await;
    let status = status_of(&seen[3]);
    let last = status.last_run.as_ref().unwrap();
    assert_eq!(
        (
            last.run_id.as_str(),
            last.decision.as_ref().map(|d| d.as_str())
        ),
        (FIRST, None)
    );
    assert_eq!(last.started_at, Time(ts("2026-11-01T00:00:00Z")));
    assert_eq!(condition(&status, "Training"), ("False", "Idle"));
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(1)),
        "decided on the next pass"
    );
}

// ---- Issue 10: outages do not lose work ----

/// Item 6: a failed run is retried after 15 minutes, doubling with each consecutive failure.
#[tokio::test]
async fn failed_runs_are_retried_with_a_doubling_backoff() {
    let failed = |id: &str| HistoryEntry {
        run_id: id.into(),
        decision: Verdict::Failed,
        reason: "test".into(),
        accuracy: None,
        champion_accuracy: None,
        dry_run: false,
        decided_at: Time(ts("2026-11-04T02:00:00Z")),
    };
    let mut sm = serving(FIRST, "2026-11-01T00:00:00Z");
    let st = sm.status.as_mut().unwrap();
    let mut last = run(SECOND, "2026-11-04T00:00:00Z", Some("Failed"));
    last.finished_at = Some(Time(ts("2026-11-04T02:00:00Z")));
    st.last_run = Some(last);
    st.history = vec![failed(SECOND), failed("homer-20261104-014500")];
    let jobs = vec![job(SECOND, "2026-11-04T00:00:00Z", JobPhase::Failed)];

    // Two failures in a row: 30 minutes, not 15. Not yet due at 02:29.
    let h = Harness::new(
        "2026-11-04T02:29:00Z",
        vec![
            Step::list_jobs(jobs.clone()),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    let action = reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    let status = status_of(&h.finish().await[3]);
    assert_eq!(status.next_run_at, Some(Time(ts("2026-11-04T02:30:00Z"))));
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));

    // Due at 02:30: one retry, named after its slot.
    let h = Harness::new(
        "2026-11-04T02:30:00Z",
        vec![
            Step::list_jobs(jobs),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::get_secret(),
            Step::create_job(),
            Step::patch_status(),
            Step::event(),
        ],
    );
    h.put_weights(FIRST_URI).await;
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let seen = h.finish().await;
    assert_eq!(seen[4].body["metadata"]["name"], "homer-20261104-023000");
    let status = status_of(&seen[5]);
    assert_eq!(status.last_run.as_ref().unwrap().trigger, "Retry");
}

/// Item 6: a failed bootstrap is retried soon too, instead of leaving the model without a
/// champion for three days.
#[tokio::test]
async fn a_failed_bootstrap_is_retried_soon() {
    let mut sm = model();
    let mut last = run(FIRST, "2026-11-01T00:00:00Z", Some("Failed"));
    last.finished_at = Some(Time(ts("2026-11-01T01:00:00Z")));
    sm.status = Some(SimpsonModelStatus {
        last_run: Some(last),
        ..Default::default()
    });
    let h = Harness::new(
        "2026-11-01T01:15:00Z",
        vec![
            Step::list_jobs(vec![job(FIRST, "2026-11-01T00:00:00Z", JobPhase::Failed)]),
            Step::create_job(),
            Step::patch_status(),
            Step::event(),
        ],
    );
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let seen = h.finish().await;
    assert_eq!(seen[1].body["metadata"]["name"], "homer-20261101-011500");
}

/// Item 7: no run starts against a champion whose weights are gone; it would fail after its
/// GPU was scheduled. The model says why instead.
#[tokio::test]
async fn a_missing_champion_blocks_new_runs() {
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
            Step::patch_status(),
            Step::event(),
        ],
    );
    reconcile(
        Arc::new(serving(FIRST, "2026-11-01T00:00:00Z")),
        h.ctx.clone(),
    )
    .await
    .unwrap();
    let seen = h.finish().await;
    let status = status_of(&seen[4]);
    assert_eq!(condition(&status, "Degraded"), ("True", "ChampionMissing"));
    assert_eq!(
        condition(&status, "RunBlocked"),
        ("True", "ChampionMissing")
    );
    assert_eq!(condition(&status, "Training"), ("False", "Idle"));
    assert_event(&seen[5], "Warning", "ChampionMissing");
    assert!(
        seen[5].body["note"].as_str().unwrap().contains(FIRST_URI),
        "{:#}",
        seen[5].body
    );
}

/// Item 7: the promote-run annotation puts a named, evaluated run in service.
#[tokio::test]
async fn promote_run_annotation_puts_a_named_run_in_service() {
    let mut sm = serving(FIRST, "2026-11-04T00:00:00Z");
    sm.metadata.annotations = Some(BTreeMap::from([(
        "face2simpson.io/promote-run".to_owned(),
        SECOND.to_owned(),
    )]));
    let h = Harness::new(
        "2026-11-05T00:00:00Z",
        vec![
            Step::list_jobs(vec![]),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    h.put_metrics(&run_metrics(SECOND, 0.7, Some((FIRST, 0.8))))
        .await;
    h.put_weights(SECOND_URI).await;
    reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    let text = h.metrics_text();
    let seen = h.finish().await;
    assert_event(&seen[3], "Normal", "Promoted");
    assert_eq!(
        env_value(&seen[4].body, "MODEL_URI").as_deref(),
        Some(SECOND_URI)
    );
    let status = status_of(&seen[6]);
    assert_eq!(status.champion.as_ref().unwrap().run_id, SECOND);
    assert_eq!(status.previous_champion.as_ref().unwrap().run_id, FIRST);
    assert_eq!(status.last_promote_request.as_deref(), Some(SECOND));
    assert_eq!(status.history[0].decision, "ManualPromote");
    assert!(text.contains("promotions_total{"), "{text}");

    // A run without weights is refused, once.
    sm.metadata.annotations = Some(BTreeMap::from([(
        "face2simpson.io/promote-run".to_owned(),
        "homer-20261103-000000".to_owned(),
    )]));
    let h = Harness::new(
        "2026-11-05T00:00:00Z",
        vec![
            Step::list_jobs(vec![]),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let seen = h.finish().await;
    assert_event(&seen[3], "Warning", "PromoteImpossible");
    let status = status_of(&seen[6]);
    assert_eq!(status.champion.unwrap().run_id, FIRST);
    assert_eq!(
        status.last_promote_request.as_deref(),
        Some("homer-20261103-000000")
    );
}

// ---- Issue 10: the rollout is real ----

fn rolling(replicas: i64) -> serde_json::Value {
    serde_json::json!({
        "observedGeneration": 1,
        "replicas": replicas + 1,
        "updatedReplicas": 1,
        "availableReplicas": replicas,
        "conditions": [
            {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"},
        ],
    })
}

fn stuck(replicas: i64) -> serde_json::Value {
    serde_json::json!({
        "observedGeneration": 1,
        "replicas": replicas + 1,
        "updatedReplicas": 1,
        "availableReplicas": replicas,
        "conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": "ReplicaSet \"homer-inference-7d9\" has timed out progressing."},
        ],
    })
}

/// Item 8: Ready means the new pods serve, not that the Deployment was applied.
#[tokio::test]
async fn ready_waits_for_the_rollout() {
    let h = Harness::new(
        "2026-11-02T00:00:00Z",
        vec![
            Step::list_jobs(vec![job(
                FIRST,
                "2026-11-01T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::apply_deployment_with(rolling),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    let action = reconcile(
        Arc::new(serving(FIRST, "2026-11-01T00:00:00Z")),
        h.ctx.clone(),
    )
    .await
    .unwrap();
    let seen = h.finish().await;
    assert_eq!(
        seen[1].body["spec"]["progressDeadlineSeconds"], 600,
        "without a deadline a stuck rollout is never reported"
    );
    let status = status_of(&seen[3]);
    assert_eq!(condition(&status, "Ready"), ("False", "RollingOut"));
    assert_eq!(
        status.phase.as_ref().map(|p| p.as_str()),
        Some("RollingOut")
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
}

/// Item 9: a rollout past its progress deadline puts the previous champion back on its own.
#[tokio::test]
async fn a_failed_rollout_rolls_back_on_its_own() {
    let mut sm = serving(SECOND, "2026-11-04T00:00:00Z");
    let st = sm.status.as_mut().unwrap();
    st.champion = Some(ChampionStatus {
        model_uri: SECOND_URI.into(),
        ..champion(SECOND, 0.9)
    });
    st.previous_champion = Some(champion(FIRST, 0.8));
    let h = Harness::new(
        "2026-11-04T03:00:00Z",
        vec![
            Step::list_jobs(vec![second_job()]),
            Step::apply_deployment_with(stuck),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let seen = h.finish().await;
    assert_eq!(
        env_value(&seen[1].body, "MODEL_URI").as_deref(),
        Some(SECOND_URI)
    );
    let recorded = status_of(&seen[2]);
    assert_eq!(
        recorded.champion.as_ref().unwrap().run_id,
        FIRST,
        "recorded before the Deployment changes back"
    );
    assert_event(&seen[3], "Warning", "RolloutFailed");
    assert_eq!(
        env_value(&seen[4].body, "MODEL_URI").as_deref(),
        Some(FIRST_URI),
        "the previous champion is back"
    );
    let status = status_of(&seen[6]);
    assert_eq!(status.champion.as_ref().unwrap().run_id, FIRST);
    assert_eq!(
        status.previous_champion, None,
        "the failed model is no rollback target and no champion to compare with"
    );
    assert_eq!(
        (
            status.history[0].run_id.as_str(),
            status.history[0].decision.as_str()
        ),
        (SECOND, "RolloutFailed")
    );
    assert_eq!(condition(&status, "Degraded"), ("True", "RolloutFailed"));
    assert_eq!(condition(&status, "Ready"), ("True", "Serving"));
}

/// Item 10: with autoscaling the operator applies an HPA and a PDB and leaves `replicas` to
/// the autoscaler; once autoscaling is removed it deletes both and owns replicas again.
#[tokio::test]
async fn autoscaling_hands_replicas_to_an_hpa_and_takes_them_back() {
    let mut sm = serving(FIRST, "2026-11-01T00:00:00Z");
    sm.spec.inference.autoscaling = Some(
        serde_json::from_value(serde_json::json!({
            "minReplicas": 2, "maxReplicas": 10, "targetRequestsPerSecond": 20,
        }))
        .unwrap(),
    );
    let jobs = vec![job(FIRST, "2026-11-01T00:00:00Z", JobPhase::Succeeded)];
    let h = Harness::new(
        "2026-11-02T00:00:00Z",
        vec![
            Step::list_jobs(jobs.clone()),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::apply_hpa(),
            Step::apply_pdb(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert!(
        seen[1].body["spec"].get("replicas").is_none(),
        "no fight with the autoscaler: {:#}",
        seen[1].body["spec"]
    );
    let hpa = &seen[3].body;
    assert_apply(&seen[3]);
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "homer-inference");
    assert_eq!(
        (&hpa["spec"]["minReplicas"], &hpa["spec"]["maxReplicas"]),
        (&serde_json::json!(2), &serde_json::json!(10))
    );
    assert_eq!(hpa["spec"]["metrics"][0]["type"], "Pods");
    assert_eq!(
        hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"],
        "20"
    );
    let pdb = &seen[4].body;
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
        NAME
    );
    let status = status_of(&seen[5]);
    assert!(status.autoscaled);

    sm.spec.inference.autoscaling = None;
    let h = Harness::new(
        "2026-11-02T00:00:00Z",
        vec![
            Step::list_jobs(jobs),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::delete_hpa(),
            Step::delete_pdb(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(with_status(sm, status)), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_eq!(seen[1].body["spec"]["replicas"], 2);
    assert!(!status_of(&seen[5]).autoscaled);
}

/// Item 9: with nothing to go back to, a failed rollout is reported once and the champion
/// stays (there is no better model to serve).
#[tokio::test]
async fn a_failed_first_rollout_is_reported_once() {
    let sm = serving(FIRST, "2026-11-01T00:00:00Z");
    let jobs = vec![job(FIRST, "2026-11-01T00:00:00Z", JobPhase::Succeeded)];
    let h = Harness::new(
        "2026-11-02T00:00:00Z",
        vec![
            Step::list_jobs(jobs.clone()),
            Step::apply_deployment_with(stuck),
            Step::apply_service(),
            Step::patch_status(),
            Step::event(),
        ],
    );
    reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_event(&seen[4], "Warning", "RolloutFailed");
    let status = status_of(&seen[3]);
    assert_eq!(status.champion.as_ref().unwrap().run_id, FIRST);
    assert_eq!(condition(&status, "Ready"), ("False", "RolloutFailed"));
    assert_eq!(condition(&status, "Degraded"), ("True", "RolloutFailed"));
    assert!(status.history.is_empty(), "nothing was rolled back");

    // Still stuck on the next pass: no second warning, no write.
    let h = Harness::new(
        "2026-11-02T00:00:00Z",
        vec![
            Step::list_jobs(jobs),
            Step::apply_deployment_with(stuck),
            Step::apply_service(),
        ],
    );
    reconcile(Arc::new(with_status(sm, status)), h.ctx.clone())
        .await
        .unwrap();
    h.finish().await;
}

// --- Served-path validation (issue 16, item 2) ---------------------------------------------

const SECOND_VALIDATION: &str = "homer-20261104-000000-validate";
const SECOND_VALIDATION_KEY: &str = "runs/simpsons/homer/homer-20261104-000000/validation.json";

/// Serving FIRST, SECOND trained, with the served-path validation switched on (the default).
fn validating_second(validation_recorded: bool) -> face2simpson_operator::SimpsonModel {
    let mut sm = training_second();
    sm.spec.promotion.validation.enabled = true;
    if validation_recorded {
        let last = sm.status.as_mut().unwrap().last_run.as_mut().unwrap();
        last.validation = Some(face2simpson_operator::crd::RunValidation {
            job_name: SECOND_VALIDATION.into(),
            started_at: Time(ts("2026-11-04T02:00:00Z")),
            passed: None,
            served_accuracy: None,
            champion_served_accuracy: None,
            trainer_accuracy: None,
            agreement: None,
        });
    }
    sm
}

/// The validation Job of a run as the operator creates it.
fn validation_job(run_id: &str, created: &str, phase: JobPhase) -> serde_json::Value {
    let mut j = job(run_id, created, phase);
    j["metadata"]["name"] = serde_json::json!(format!("{run_id}-validate"));
    j["metadata"]["labels"]["app.kubernetes.io/component"] = serde_json::json!("validation");
    j
}

/// A validation.json of SECOND: 8 test images, 2 per class, the candidate right on all of them
/// served, the champion (scored in the same process) wrong on a homer and a marge.
fn validation_json(failures: serde_json::Value) -> serde_json::Value {
    let passed = failures.as_array().unwrap().is_empty();
    serde_json::json!({
        "schema_version": 1,
        "validator_version": "0.1.0",
        "dataset": "s3://bucket/models/datasets/current",
        "classes": ["homer", "marge", "bart", "lisa"],
        "model": SECOND_URI,
        "run_id": SECOND,
        "onnx_sha256": "sha256:00",
        "image_size": 224,
        "load_error": null,
        "test_images": 8,
        "served_accuracy": 1.0,
        "per_class_recall": {"homer": 1.0, "marge": 1.0, "bart": 1.0, "lisa": 1.0},
        "confusion_matrix": [[2,0,0,0],[0,2,0,0],[0,0,2,0],[0,0,0,2]],
        "rejected_images": [],
        "latency_ms": {"p50_ms": 10.0, "p95_ms": 12.0, "max_ms": 13.0},
        "trainer_test_accuracy": 0.9,
        "agreement": if passed { 1.0 } else { 0.5 },
        "agreement_images": 8,
        "disagreements": [],
        "golden": {"status": 200, "character": "homer", "probability_sum": 1.0, "latency_ms": 5.0},
        "peak_rss_bytes": 100_000_000,
        "champion": {
            "model": FIRST_URI, "run_id": FIRST, "onnx_sha256": "sha256:01", "image_size": 224,
            "load_error": null, "test_images": 8, "served_accuracy": 0.75,
            "per_class_recall": {}, "confusion_matrix": [], "rejected_images": [],
            "latency_ms": null, "trainer_test_accuracy": 0.8
        },
        "predictions": {
            "keys": (0..8).map(|i| format!("test/{i}.png")).collect::<Vec<_>>(),
            "labels": [0, 0, 1, 1, 2, 2, 3, 3],
            "candidate": [0, 0, 1, 1, 2, 2, 3, 3],
            "champion": [0, 1, 1, 0, 2, 2, 3, 3]
        },
        "thresholds": {"max_p95_ms": null, "min_agreement": 0.99, "max_memory_bytes": null},
        "started_at": "2026-11-04T02:00:30Z",
        "finished_at": "2026-11-04T02:01:00Z",
        "passed": passed,
        "failures": failures
    })
}

fn env_of(job: &serde_json::Value) -> BTreeMap<String, String> {
    job["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// After the training Job succeeded with valid metrics, nothing is decided yet: the
/// validation Job is recorded in status.lastRun.validation, then created with the inference
/// image, and the run stays undecided while it runs.
#[tokio::test]
async fn a_succeeded_run_is_validated_on_the_served_path_before_the_gate() {
    let h = Harness::new(
        "2026-11-04T02:00:00Z",
        vec![
            Step::list_jobs(vec![job(
                SECOND,
                "2026-11-04T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::get_secret(),
            Step::patch_status(),
            Step::create_job(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    h.put_metrics(&run_metrics(SECOND, 0.9, Some((FIRST, 0.8))))
        .await;
    let action = reconcile(Arc::new(validating_second(false)), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert!(
        seen[0].query.contains("validation"),
        "one list for training and validation Jobs: {}",
        seen[0].query
    );
    let recorded = status_of(&seen[2]);
    let last = recorded.last_run.as_ref().unwrap();
    assert_eq!(last.decision, None, "nothing decided before the validation");
    assert_eq!(
        last.validation.as_ref().unwrap().job_name,
        SECOND_VALIDATION,
        "the validation Job is recorded before it is created"
    );
    let vjob = &seen[3].body;
    assert_eq!(vjob["metadata"]["name"], SECOND_VALIDATION);
    assert_eq!(
        vjob["metadata"]["labels"]["app.kubernetes.io/component"],
        "validation"
    );
    assert_eq!(vjob["metadata"]["labels"]["face2simpson.io/run-id"], SECOND);
    assert_eq!(vjob["metadata"]["ownerReferences"][0]["uid"], UID);
    let container = &vjob["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "ghcr.io/face2simpson/inference:1");
    assert_eq!(container["args"], serde_json::json!(["validate"]));
    let env = env_of(vjob);
    assert_eq!(env["MODEL_URI"], SECOND_URI);
    assert_eq!(env["CHAMPION_URI"], FIRST_URI);
    assert_eq!(env["DATASET_URI"], "s3://bucket/models/datasets/current");
    assert_eq!(
        env["VALIDATION_URI"],
        format!("s3://bucket/models/{SECOND_VALIDATION_KEY}")
    );
    assert_eq!(env["MIN_AGREEMENT"], "0.99");
    assert_eq!(
        vjob["spec"]["podFailurePolicy"]["rules"][1]["onExitCodes"],
        serde_json::json!({"containerName": "validator", "operator": "In", "values": [1, 2]})
    );
    assert_eq!(
        env_value(&seen[4].body, "MODEL_URI").as_deref(),
        Some(FIRST_URI),
        "the champion keeps serving while the candidate is validated"
    );
    let status = status_of(&seen[6]);
    assert_eq!(status.phase.as_ref().map(|p| p.as_str()), Some("Training"));
    assert_eq!(condition(&status, "Validated"), ("Unknown", "Validating"));
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

/// A passed validation: the gate decides on the served accuracies (1.0 against the
/// champion's 0.75, both scored by the validator), not the trainer's (0.9 against 0.8), and
/// the summary says so.
#[tokio::test]
async fn a_passed_validation_promotes_on_served_accuracy() {
    let h = Harness::new(
        "2026-11-04T05:00:00Z",
        vec![
            Step::list_jobs(vec![
                job(SECOND, "2026-11-04T00:00:00Z", JobPhase::Succeeded),
                validation_job(SECOND, "2026-11-04T02:00:00Z", JobPhase::Succeeded),
            ]),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    h.put_metrics(&run_metrics(SECOND, 0.9, Some((FIRST, 0.8))))
        .await;
    h.store
        .put(
            SECOND_VALIDATION_KEY,
            validation_json(serde_json::json!([]))
                .to_string()
                .into_bytes(),
        )
        .await
        .unwrap();
    reconcile(Arc::new(validating_second(true)), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_event(&seen[3], "Normal", "Promoted");
    let note = seen[3].body["note"].as_str().unwrap();
    assert!(note.contains("8 served test faces"), "{note}");
    assert_eq!(
        env_value(&seen[4].body, "MODEL_URI").as_deref(),
        Some(SECOND_URI)
    );
    let status = status_of(&seen[6]);
    assert_eq!(status.champion.as_ref().unwrap().run_id, SECOND);
    assert_eq!(status.champion.as_ref().unwrap().accuracy, 1.0);
    let last = status.last_run.as_ref().unwrap();
    assert_eq!(
        (last.decision.clone(), last.accuracy, last.champion_accuracy),
        (Some(Verdict::Promote), Some(1.0), Some(0.75))
    );
    let summary = last.summary.as_deref().unwrap();
    assert!(
        summary.starts_with("Promote: +25.0 pts (95% CI ")
            && summary.ends_with(", 8 served test faces)"),
        "{summary}"
    );
    let c = last.comparison.as_ref().unwrap();
    assert_eq!(
        (c.test_images, c.challenger_only, c.champion_only),
        (8, 2, 0)
    );
    let v = last.validation.as_ref().unwrap();
    assert_eq!(
        (
            v.passed,
            v.served_accuracy,
            v.champion_served_accuracy,
            v.trainer_accuracy
        ),
        (Some(true), Some(1.0), Some(0.75), Some(0.9))
    );
    assert_eq!(condition(&status, "Validated"), ("True", "Passed"));
}

/// A failed validation is a Reject whose reason is the validator's first failure; the
/// champion and the Deployment stay, a Warning Event and Validated=False say why. A Job that
/// completed without a verdict, or failed without one, is InfraValidationFailed.
#[tokio::test]
async fn a_failed_validation_rejects_and_leaves_the_champion_alone() {
    let skew = serde_json::json!([
        {"reason": "TrainServeSkew", "message": "served verdicts agree with the trainer's on 50.0% of 8 test images, below 99.0%"},
        {"reason": "InfraValidationFailed", "message": "p95 too slow"}
    ]);
    for (phase, file, reason, needle) in [
        (
            JobPhase::Failed,
            Some(skew),
            "TrainServeSkew",
            "agree with the trainer's on 50.0%",
        ),
        (
            JobPhase::Succeeded,
            None,
            "InfraValidationFailed",
            "wrote no validation.json",
        ),
        (
            JobPhase::Failed,
            None,
            "InfraValidationFailed",
            "failed without a verdict",
        ),
    ] {
        let h = Harness::new(
            "2026-11-04T05:00:00Z",
            vec![
                Step::list_jobs(vec![
                    job(SECOND, "2026-11-04T00:00:00Z", JobPhase::Succeeded),
                    validation_job(SECOND, "2026-11-04T02:00:00Z", phase),
                ]),
                Step::get_secret(),
                Step::patch_status(),
                Step::event(),
                Step::apply_deployment(),
                Step::apply_service(),
                Step::patch_status(),
            ],
        );
        h.put_metrics(&run_metrics(SECOND, 0.9, Some((FIRST, 0.8))))
            .await;
        if let Some(failures) = file {
            h.store
                .put(
                    SECOND_VALIDATION_KEY,
                    validation_json(failures).to_string().into_bytes(),
                )
                .await
                .unwrap();
        }
        reconcile(Arc::new(validating_second(true)), h.ctx.clone())
            .await
            .unwrap();
        let text = h.metrics_text();
        let seen = h.finish().await;
        assert_event(&seen[3], "Warning", reason);
        assert!(
            seen[3].body["note"].as_str().unwrap().contains(needle),
            "{:#}",
            seen[3].body
        );
        assert_eq!(
            env_value(&seen[4].body, "MODEL_URI").as_deref(),
            Some(FIRST_URI),
            "the champion stays in service"
        );
        let status = status_of(&seen[6]);
        assert_eq!(status.champion.as_ref().unwrap().run_id, FIRST);
        assert_eq!(status.previous_champion, None);
        let last = status.last_run.as_ref().unwrap();
        assert_eq!(last.decision, Some(Verdict::Reject));
        let why = last.reason.as_deref().unwrap();
        assert!(
            why.starts_with(&format!("{reason}: ")) && why.contains(needle),
            "{why}"
        );
        assert_eq!(
            last.summary.as_deref(),
            Some(format!("Reject: {why}").as_str())
        );
        assert_eq!(last.validation.as_ref().unwrap().passed, Some(false));
        assert_eq!(condition(&status, "Validated"), ("False", reason));
        assert_eq!(condition(&status, "Degraded").0, "False");
        assert_eq!(status.history[0].decision, Verdict::Reject);
        assert!(
            text.contains(
                r#"face2simpson_operator_rejections_total{namespace="simpsons",model="homer"} 1"#
            ),
            "{text}"
        );
    }
}

/// While the validation Job runs the run stays undecided, no new run starts, the champion
/// keeps serving, and a second pass over the same state writes nothing.
#[tokio::test]
async fn a_running_validation_keeps_the_run_pending_without_writes() {
    let jobs = || {
        vec![
            job(SECOND, "2026-11-04T00:00:00Z", JobPhase::Succeeded),
            validation_job(SECOND, "2026-11-04T02:00:00Z", JobPhase::Active),
        ]
    };
    let h = Harness::new(
        "2026-11-04T02:30:00Z",
        vec![
            Step::list_jobs(jobs()),
            Step::get_secret(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    h.put_metrics(&run_metrics(SECOND, 0.9, Some((FIRST, 0.8))))
        .await;
    reconcile(Arc::new(validating_second(true)), h.ctx.clone())
        .await
        .unwrap();
    let store = h.store.clone();
    let seen = h.finish().await;
    let status = status_of(&seen[4]);
    assert_eq!(status.last_run.as_ref().unwrap().decision, None);
    assert_eq!(status.champion.as_ref().unwrap().run_id, FIRST);
    assert_eq!(status.phase.as_ref().map(|p| p.as_str()), Some("Training"));
    assert_eq!(condition(&status, "Validated"), ("Unknown", "Validating"));

    let h = Harness::new(
        "2026-11-04T02:35:00Z",
        vec![
            Step::list_jobs(jobs()),
            Step::get_secret(),
            Step::apply_deployment(),
            Step::apply_service(),
        ],
    );
    let m = run_metrics(SECOND, 0.9, Some((FIRST, 0.8)));
    h.put_metrics(&m).await;
    drop(store);
    let mut sm = with_status(validating_second(true), status);
    sm.metadata.resource_version = Some("101".into());
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    h.finish().await;
}

/// Issue 17: once after a decided run, retention deletes the oldest runs under the model's
/// prefix beyond `keepRuns`, never the champion's; the next pass does not look again. With
/// `dryRun` it only says what it would delete.
#[tokio::test]
async fn retention_deletes_old_runs_once_per_decision_and_keeps_the_champion() {
    let runs = [
        FIRST,
        "homer-20261104-000000",
        "homer-20261107-000000",
        "homer-20261110-000000",
        "homer-20261113-000000",
    ];
    let prefix = artifacts::layout::model_runs("simpsons", "homer");
    let seed = |h: &Harness| {
        let store = h.store.clone();
        let prefix = prefix.clone();
        async move {
            for run in runs {
                for file in ["metrics.json", "model.safetensors"] {
                    store
                        .put(&format!("{prefix}/{run}/{file}"), vec![1u8])
                        .await
                        .unwrap();
                }
                // Distinct write times, oldest first.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            store
                .put(&format!("{prefix}/history.json"), b"{}".to_vec())
                .await
                .unwrap();
        }
    };
    let remaining = |h: &Harness| {
        let store = h.store.clone();
        let prefix = prefix.clone();
        async move {
            let mut runs: Vec<String> = store
                .list(&prefix)
                .await
                .unwrap()
                .iter()
                .filter_map(|m| {
                    let key = m.location.to_string();
                    let rest = key.strip_prefix(&format!("{prefix}/"))?.to_owned();
                    Some(rest.split_once('/')?.0.to_owned())
                })
                .collect();
            runs.dedup();
            runs
        }
    };
    let steps = |looks: bool| {
        let mut steps = vec![
            Step::list_jobs(vec![job(
                FIRST,
                "2026-11-01T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::apply_deployment(),
            Step::apply_service(),
        ];
        if looks {
            steps.extend([Step::get_secret(), Step::patch_status()]);
        }
        steps
    };
    let mut sm = serving(FIRST, "2026-11-01T00:00:00Z");
    sm.spec.retention.keep_runs = Some(2);

    let h = Harness::new("2026-11-02T00:00:00Z", steps(true));
    seed(&h).await;
    reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    let kept = remaining(&h).await;
    let status = status_of(&h.finish().await[4]);
    assert_eq!(
        kept,
        [FIRST, "homer-20261110-000000", "homer-20261113-000000"],
        "the two newest and the champion"
    );
    let retention = status.retention.clone().unwrap();
    assert_eq!((retention.stored_runs, retention.deleted_runs), (5, 2));
    assert_eq!(retention.after_run, FIRST);

    // The next pass, with nothing decided since, does not list the store again.
    let h = Harness::new("2026-11-02T01:00:00Z", steps(false));
    reconcile(Arc::new(with_status(sm.clone(), status)), h.ctx.clone())
        .await
        .unwrap();
    h.finish().await;

    // Dry run: nothing deleted, the doomed runs named.
    sm.spec.retention.dry_run = true;
    let h = Harness::new("2026-11-02T00:00:00Z", steps(true));
    seed(&h).await;
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    assert_eq!(remaining(&h).await.len(), 5);
    let status = status_of(&h.finish().await[4]);
    assert_eq!(
        status.retention.unwrap().would_delete,
        ["homer-20261104-000000", "homer-20261107-000000"]
    );
}

/// Issue 17: a status written by a newer operator (a phase, a decision this version does not
/// know) does not make the model unreadable: the pass goes on, the phase it computes replaces
/// the unknown one, and the decisions it cannot interpret are kept as they were, counted as
/// decided (no run is taken for undecided, none is retried as failed).
#[tokio::test]
async fn a_status_from_a_newer_operator_is_reconciled_and_its_unknown_values_kept() {
    let mut raw = serde_json::to_value(serving(FIRST, "2026-11-01T00:00:00Z")).unwrap();
    raw["status"]["phase"] = serde_json::json!("SomethingNew");
    raw["status"]["lastRun"]["decision"] = serde_json::json!("NewKind");
    raw["status"]["history"] = serde_json::json!([{
        "runId": FIRST, "decision": "NewKind", "reason": "from the future",
        "decidedAt": "2026-11-01T01:00:00Z",
    }]);
    let guard: kube::core::DeserializeGuard<face2simpson_operator::SimpsonModel> =
        serde_json::from_value(raw).unwrap();
    let h = Harness::new(
        "2026-11-02T00:00:00Z",
        vec![
            Step::list_jobs(vec![job(
                FIRST,
                "2026-11-01T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    let action = face2simpson_operator::reconcile_guarded(Arc::new(guard), h.ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(3600)));
    let seen = h.finish().await;
    let written = &seen[3].body["status"];
    assert_eq!(written["phase"], "Serving");
    assert_eq!(written["lastRun"]["decision"], "NewKind");
    assert_eq!(written["history"][0]["decision"], "NewKind");
    assert_eq!(written["nextRunAt"], "2026-11-04T00:00:00Z");
    let status = status_of(&seen[3]);
    assert_eq!(condition(&status, "Degraded"), ("False", "AsExpected"));
    assert_eq!(condition(&status, "Training"), ("False", "Idle"));
}

/// Issue 17: the passes using one bucket hold at most a quarter of the reconcile slots. While
/// a slow bucket's share is taken, a pass that needs it stops at once (retried with backoff,
/// no write, no warning on the model) instead of holding one more slot; a pass that needs no
/// store goes on as usual; once a place frees, the run is decided as if nothing happened.
#[tokio::test]
async fn a_bucket_whose_share_of_the_slots_is_taken_stops_the_pass_without_waiting() {
    let h = Harness::new(
        "2026-11-04T03:00:00Z",
        vec![
            Step::list_jobs(vec![job(
                SECOND,
                "2026-11-04T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::get_secret(),
        ],
    );
    h.put_metrics(&run_metrics(SECOND, 0.9, Some((FIRST, 0.8))))
        .await;
    // Slow passes of other models on the same bucket hold its whole share (16 / 4 = 4).
    let bucket = "s3://bucket";
    let held: Vec<_> = (0..4)
        .map(|_| h.ctx.store_gates.try_enter(bucket).unwrap())
        .collect();
    let err = tokio::time::timeout(
        Duration::from_secs(1),
        reconcile(Arc::new(training_second()), h.ctx.clone()),
    )
    .await
    .expect("the pass must not wait for a place")
    .unwrap_err();
    assert_eq!(err.kind(), "store_busy");
    let action = error_policy(Arc::new(training_second()), &err, h.ctx.clone());
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    assert!(
        h.metrics_text()
            .contains(r#"face2simpson_operator_reconcile_errors_total{kind="store_busy"} 1"#)
    );
    // Another bucket is not affected: its share is its own.
    assert!(h.ctx.store_gates.try_enter("s3://other").is_some());
    h.finish().await;

    // A place frees: the next pass decides the run.
    drop(held);
    let h2 = Harness::new(
        "2026-11-04T03:00:10Z",
        vec![
            Step::list_jobs(vec![job(
                SECOND,
                "2026-11-04T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    h2.put_metrics(&run_metrics(SECOND, 0.9, Some((FIRST, 0.8))))
        .await;
    let mut sm = training_second();
    sm.spec.schedule.suspend = true;
    reconcile(Arc::new(sm), h2.ctx.clone()).await.unwrap();
    let seen = h2.finish().await;
    let status = status_of(&seen[6]);
    assert_eq!(status.champion.unwrap().run_id, SECOND);
}

/// Issue 17: a model at rest needs no store, so a full bucket does not stop its pass.
#[tokio::test]
async fn a_pass_without_store_calls_ignores_a_full_bucket() {
    let sm = serving(FIRST, "2026-11-01T00:00:00Z");
    let h = Harness::new(
        "2026-11-02T00:00:00Z",
        vec![
            Step::list_jobs(vec![job(
                FIRST,
                "2026-11-01T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    let _held: Vec<_> = (0..4)
        .map(|_| h.ctx.store_gates.try_enter("s3://bucket").unwrap())
        .collect();
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    h.finish().await;
}

/// Issue 17: `schedule.maxRetries` bounds the retries of a failing run: the failure that uses
/// up the last retry stops them until the spec changes (the next slot still runs), and says so.
#[tokio::test]
async fn retries_stop_after_max_retries_until_the_spec_changes() {
    let failing = |max: Option<u32>| {
        let mut sm = training_second();
        sm.spec.schedule.max_retries = max;
        // One failure (the bootstrap's retry) already before this one.
        sm.status.as_mut().unwrap().history.insert(
            0,
            HistoryEntry {
                run_id: "homer-20261103-000000".into(),
                decision: Verdict::Failed,
                reason: "test".into(),
                accuracy: None,
                champion_accuracy: None,
                dry_run: false,
                decided_at: Time(ts("2026-11-03T02:00:00Z")),
            },
        );
        sm
    };
    let pass = |sm: face2simpson_operator::SimpsonModel| async move {
        let h = Harness::new(
            "2026-11-04T02:00:00Z",
            vec![
                Step::list_jobs(vec![job(SECOND, "2026-11-04T00:00:00Z", JobPhase::Failed)]),
                Step::patch_status(),
                Step::event(),
                Step::apply_deployment(),
                Step::apply_service(),
                Step::patch_status(),
            ],
        );
        reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
        let seen = h.finish().await;
        (
            seen[2].body["note"].as_str().unwrap().to_owned(),
            status_of(&seen[5]),
        )
    };

    // One retry allowed, one used: this second failure ends them.
    let (note, status) = pass(failing(Some(1))).await;
    assert!(note.contains("schedule.maxRetries 1"), "{note}");
    let last = status.last_run.as_ref().unwrap();
    assert_eq!(last.retry_after_generation, Some(1));
    assert_eq!(
        status.next_run_at,
        Some(Time(ts("2026-11-07T00:00:00Z"))),
        "no retry: the next slot, 72 h after the run started"
    );

    // Two allowed: retried after the doubled backoff (two failures in a row: 30 min).
    let (note, status) = pass(failing(Some(2))).await;
    assert!(!note.contains("maxRetries"), "{note}");
    assert_eq!(
        status.last_run.as_ref().unwrap().retry_after_generation,
        None
    );
    assert_eq!(status.next_run_at, Some(Time(ts("2026-11-04T02:30:00Z"))));

    // Unset: retried as before.
    let (_, status) = pass(failing(None)).await;
    assert_eq!(status.next_run_at, Some(Time(ts("2026-11-04T02:30:00Z"))));
}
