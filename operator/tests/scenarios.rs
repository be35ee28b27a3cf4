//! Reconcile paths against a scripted API server: one test per path of the issue, each
//! asserting the method, path and body of every request the operator makes.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use face2simpson_operator::crd::{HistoryEntry, SimpsonModelStatus};
use face2simpson_operator::{error_policy, reconcile};
use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;

const FIRST: &str = "homer-20261101-000000";
const SECOND: &str = "homer-20261104-000000";
const FIRST_URI: &str = "s3://bucket/models/runs/homer-20261101-000000/model.safetensors";
const SECOND_URI: &str = "s3://bucket/models/runs/homer-20261104-000000/model.safetensors";

/// Serving FIRST, with SECOND started at its slot and not decided yet.
fn training_second() -> face2simpson_operator::SimpsonModel {
    let mut sm = serving(FIRST, "2026-11-01T00:00:00Z");
    sm.status.as_mut().unwrap().last_run = Some(run(SECOND, "2026-11-04T00:00:00Z", None));
    sm
}

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
            Step::event(),
            Step::patch_status(),
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
        "&labelSelector=face2simpson.io%2Fmodel%3Dhomer%2Capp.kubernetes.io%2Fcomponent%3Dtraining"
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
    assert_event(&seen[2], "Normal", "TrainingStarted");

    let status = status_of(&seen[3]);
    assert_eq!(seen[3].body["apiVersion"], "face2simpson.io/v1alpha1");
    assert_eq!(
        seen[3].body["metadata"]["resourceVersion"], "4711",
        "a status write from a stale cached copy must conflict, not overwrite"
    );
    assert_apply(&seen[3]);
    let last = status.last_run.as_ref().unwrap();
    assert_eq!(
        (
            last.run_id.as_str(),
            last.trigger.as_str(),
            last.decision.as_deref()
        ),
        (FIRST, "Bootstrap", None)
    );
    assert_eq!(status.phase.as_deref(), Some("Training"));
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
    assert_eq!(status.phase.as_deref(), Some("Serving"));
    assert_eq!(condition(&status, "Ready"), ("True", "Serving"));
    assert_eq!(condition(&status, "Degraded"), ("False", "AsExpected"));

    // Level-triggered and idempotent: the same world yields the same objects and no write.
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
            Step::create_job(),
            Step::event(),
            Step::patch_status(),
        ],
    );
    reconcile(
        Arc::new(serving(FIRST, "2026-11-01T00:00:00Z")),
        h.ctx.clone(),
    )
    .await
    .unwrap();
    let seen = h.finish().await;
    let job = &seen[3].body;
    assert_eq!(
        job["metadata"]["name"], SECOND,
        "the slot (last start + 72h), not the clock"
    );
    assert_eq!(
        arg_after(&args(job), "--champion").as_deref(),
        Some(FIRST),
        "the champion is re-scored by the run"
    );
    assert_event(&seen[4], "Normal", "TrainingStarted");
    let status = status_of(&seen[5]);
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
            Step::create_job(),
            Step::event(),
            Step::patch_status(),
        ],
    );
    reconcile(
        Arc::new(serving(FIRST, "2026-11-01T00:00:00Z")),
        h.ctx.clone(),
    )
    .await
    .unwrap();
    let seen = h.finish().await;
    assert_eq!(
        seen[3].body["metadata"]["name"], SECOND,
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
    assert_eq!(status.phase.as_deref(), Some("Training"));
    assert_eq!(condition(&status, "Training"), ("True", "JobRunning"));
    assert_eq!(status.last_run.unwrap().decision, None);
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
    let seen = h.finish().await;

    assert_eq!(
        opened,
        vec![vec![
            ("AWS_ACCESS_KEY_ID".to_owned(), "key".to_owned()),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), "secret".to_owned())
        ]],
        "the Secret's keys open the store"
    );
    assert_event(&seen[2], "Normal", "Promoted");
    assert!(
        seen[2].body["note"].as_str().unwrap().contains("90.00%"),
        "{:#}",
        seen[2].body
    );
    assert_eq!(
        env_value(&seen[3].body, "MODEL_URI").as_deref(),
        Some(SECOND_URI),
        "the new weights roll out"
    );
    assert_eq!(
        seen[3].body["spec"]["template"]["metadata"]["annotations"]["face2simpson.io/run-id"],
        SECOND
    );
    let status = status_of(&seen[5]);
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
            last.decision.as_deref(),
            last.accuracy,
            last.champion_accuracy
        ),
        (Some("Promote"), Some(0.9), Some(0.8))
    );
    assert_eq!(last.finished_at, Some(Time(ts("2026-11-04T02:00:00Z"))));
    assert_eq!(status.history.len(), 1);
    assert_eq!(
        (
            status.history[0].run_id.as_str(),
            status.history[0].decision.as_str()
        ),
        (SECOND, "Promote")
    );
    assert_eq!(status.phase.as_deref(), Some("Serving"));
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
    assert_event(&seen[2], "Normal", "Rejected");
    assert_eq!(
        env_value(&seen[3].body, "MODEL_URI").as_deref(),
        Some(FIRST_URI),
        "the champion stays in service"
    );
    let status = status_of(&seen[5]);
    assert_eq!(status.champion.as_ref().unwrap().run_id, FIRST);
    assert_eq!(status.previous_champion, None);
    let last = status.last_run.unwrap();
    assert_eq!(last.decision.as_deref(), Some("Reject"));
    assert!(last.reason.unwrap().contains("does not beat champion"));
    assert!(
        text.contains(
            r#"face2simpson_operator_rejections_total{namespace="simpsons",model="homer"} 1"#
        ),
        "{text}"
    );
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
    assert_event(&seen[2], "Normal", "DryRun");
    assert_eq!(
        env_value(&seen[3].body, "MODEL_URI").as_deref(),
        Some(FIRST_URI)
    );
    let status = status_of(&seen[5]);
    assert_eq!(status.champion.as_ref().unwrap().run_id, FIRST);
    let last = status.last_run.unwrap();
    assert_eq!(
        (last.decision.as_deref(), last.dry_run),
        (Some("Promote"), true)
    );
    assert!(last.reason.unwrap().starts_with("dry run"));
    assert!(status.history[0].dry_run);
}

#[tokio::test]
async fn failed_job_degrades_without_promotion_and_waits_for_the_next_slot() {
    let h = Harness::new(
        "2026-11-04T02:00:00Z",
        vec![
            Step::list_jobs(vec![job(SECOND, "2026-11-04T00:00:00Z", JobPhase::Failed)]),
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
    assert_event(&seen[1], "Warning", "JobFailed");
    assert!(
        seen[1].body["note"]
            .as_str()
            .unwrap()
            .contains("backoff limit")
    );
    assert_eq!(
        env_value(&seen[2].body, "MODEL_URI").as_deref(),
        Some(FIRST_URI)
    );
    let status = status_of(&seen[4]);
    assert_eq!(condition(&status, "Degraded"), ("True", "JobFailed"));
    assert_eq!(status.phase.as_deref(), Some("Degraded"));
    assert_eq!(
        status.last_run.as_ref().unwrap().decision.as_deref(),
        Some("Failed")
    );
    assert_eq!(status.champion.as_ref().unwrap().run_id, FIRST);
    assert_eq!(
        status.next_run_at,
        Some(Time(ts("2026-11-07T00:00:00Z"))),
        "next attempt at the next slot"
    );
    assert!(
        text.contains(
            r#"face2simpson_operator_failed_runs_total{namespace="simpsons",model="homer"} 1"#
        ),
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
    assert_event(&seen[2], "Warning", "MetricsMissing");
    assert!(
        seen[2].body["note"]
            .as_str()
            .unwrap()
            .contains("runs/homer-20261104-000000/metrics.json")
    );
    let status = status_of(&seen[5]);
    assert_eq!(condition(&status, "Degraded"), ("True", "MetricsMissing"));
    assert_eq!(status.last_run.unwrap().decision.as_deref(), Some("Failed"));
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
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    h.store
        .put(
            &artifacts::layout::run_metrics(SECOND),
            b"{\"run_id\": \"homer-2026".to_vec(),
        )
        .await
        .unwrap();
    reconcile(Arc::new(training_second()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_event(&seen[2], "Warning", "MetricsInvalid");
    let status = status_of(&seen[5]);
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
    assert_event(&seen[2], "Normal", "Promoted");
    let status = status_of(&seen[5]);
    assert_eq!(status.phase.as_deref(), Some("Suspended"));
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
            Step::create_job(),
            Step::event(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    let name = seen[3].body["metadata"]["name"]
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

    // The same annotation value is not a new request.
    let h = Harness::new(
        "2026-11-02T10:00:00Z",
        vec![
            Step::list_jobs(vec![
                first_job,
                job(&name, "2026-11-02T10:00:00Z", JobPhase::Active),
            ]),
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
    let status = status_of(&seen[5]);
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
    let status = status_of(&h.finish().await[5]);
    let last = status.last_run.as_ref().unwrap();
    assert_eq!(
        (last.run_id.as_str(), last.decision.as_deref()),
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
            Step::event(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(model()), h.ctx.clone()).await.unwrap();
    let seen = h.finish().await;
    assert_eq!(seen[1].body["metadata"]["name"], FIRST);
    let status = status_of(&seen[3]);
    assert_eq!(
        status.last_run.unwrap().run_id,
        FIRST,
        "the existing Job is the run"
    );
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
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let seen = h.finish().await;
    assert_event(&seen[1], "Normal", "RolledBack");
    assert_eq!(
        env_value(&seen[2].body, "MODEL_URI").as_deref(),
        Some(FIRST_URI)
    );
    let status = status_of(&seen[4]);
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
            decision: "Reject".into(),
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
            decision: "Reject".into(),
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
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let status = status_of(&h.finish().await[4]);
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
            Step::event(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_event(&seen[3], "Warning", "InvalidSchedule");
    let status = status_of(&seen[4]);
    assert_eq!(condition(&status, "Degraded"), ("True", "InvalidSchedule"));
    assert_eq!(status.phase.as_deref(), Some("Degraded"));

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
            Step::create_job(),
            Step::event(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let seen = h.finish().await;
    assert_eq!(seen[3].body["metadata"]["name"], "homer-20261104-013000");
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
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let seen = h.finish().await;
    assert_event(&seen[1], "Warning", "RollbackImpossible");
    assert_eq!(
        env_value(&seen[2].body, "MODEL_URI").as_deref(),
        Some(FIRST_URI)
    );
    let status = status_of(&seen[4]);
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
    assert_event(&seen[1], "Warning", "JobMissing");
    let status = status_of(&seen[4]);
    assert_eq!(condition(&status, "Degraded"), ("True", "JobMissing"));
    assert_eq!(status.last_run.unwrap().decision.as_deref(), Some("Failed"));
    assert_eq!(status.history[0].run_id, SECOND);
    assert_eq!(
        status.next_run_at,
        Some(Time(ts("2026-11-07T00:00:00Z"))),
        "the next slot, not at once"
    );
}

#[tokio::test]
async fn unreachable_store_degrades_without_promotion() {
    let h = Harness::new(
        "2026-11-04T02:00:00Z",
        vec![
            Step::list_jobs(vec![job(
                SECOND,
                "2026-11-04T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::get_secret(),
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
    assert_event(&seen[2], "Warning", "StorageUnreachable");
    assert_eq!(
        env_value(&seen[3].body, "MODEL_URI").as_deref(),
        Some(FIRST_URI)
    );
    let status = status_of(&seen[5]);
    assert_eq!(
        condition(&status, "Degraded"),
        ("True", "StorageUnreachable")
    );
    assert_eq!(status.champion.unwrap().run_id, FIRST);
}
