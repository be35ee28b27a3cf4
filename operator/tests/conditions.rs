//! Issue 17 item 2: one condition per concern, each set and cleared by the step that owns it,
//! `Degraded` as their summary; against the scripted API server.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use face2simpson_operator::crd::SimpsonModelStatus;
use face2simpson_operator::reconcile;
use http::Method;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::controller::Action;

fn assert_event(seen: &Seen, type_: &str, reason: &str) {
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.body["type"], type_, "{:#}", seen.body);
    assert_eq!(seen.body["reason"], reason, "{:#}", seen.body);
}

fn get<'a>(status: &'a SimpsonModelStatus, type_: &str) -> &'a Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"))
}

fn finished_second() -> serde_json::Value {
    job(SECOND, "2026-11-04T00:00:00Z", JobPhase::Succeeded)
}

/// A store outage while a run's result waits and a Deployment the API server refuses are two
/// conditions, True at once; the store's return clears StoreUnavailable only, the accepted
/// apply clears ApplyFailed only, and Degraded follows them.
#[tokio::test]
async fn a_store_outage_and_a_refused_apply_are_two_conditions_each_cleared_by_its_own_step() {
    let mut sm = training_second();
    sm.spec.promotion.metrics_deadline_seconds = 7 * 24 * 3600;
    // Suspended: no new run starts, each pass is about the result and the serving alone.
    sm.spec.schedule.suspend = true;

    // Both fail.
    let h = Harness::new(
        "2026-11-04T03:00:00Z",
        vec![
            Step::list_jobs(vec![finished_second()]),
            Step::get_secret(),
            Step::apply_deployment().failing(422, "Invalid"),
            Step::patch_status(),
            Step::event(),
            Step::event(),
        ],
    );
    h.store_down.store(true, Ordering::Relaxed);
    reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_event(&seen[4], "Warning", "StorageUnreachable");
    assert_event(&seen[5], "Warning", "ApplyFailed");
    let both = status_of(&seen[3]);
    assert_eq!(
        condition(&both, "StoreUnavailable"),
        ("True", "StorageUnreachable")
    );
    assert_eq!(condition(&both, "ApplyFailed"), ("True", "ApplyFailed"));
    assert_eq!(condition(&both, "RunFailed"), ("False", "AsExpected"));
    let degraded = get(&both, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ApplyFailed"),
        "serving first"
    );
    assert!(
        degraded
            .message
            .starts_with("ApplyFailed: cannot apply the Deployment homer-inference")
            && degraded
                .message
                .contains("; StoreUnavailable: cannot read the result of run"),
        "{}",
        degraded.message
    );
    assert_eq!(both.phase.as_ref().map(|p| p.as_str()), Some("Degraded"));
    let refused_since = get(&both, "ApplyFailed").last_transition_time.clone();

    // The store is back: the run is decided and StoreUnavailable clears; the apply is refused
    // as before, so ApplyFailed stays as it was, and is not announced again.
    let h = Harness::new(
        "2026-11-04T03:10:00Z",
        vec![
            Step::list_jobs(vec![finished_second()]),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            // Refused as before: nothing new to record, no write.
            Step::apply_deployment().failing(422, "Invalid"),
        ],
    );
    h.put_metrics(&run_metrics(SECOND, 0.9, Some((FIRST, 0.8))))
        .await;
    reconcile(Arc::new(with_status(sm.clone(), both)), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_event(&seen[3], "Normal", "Promoted");
    let store_back = status_of(&seen[2]);
    assert_eq!(
        condition(&store_back, "StoreUnavailable"),
        ("False", "StoreReachable")
    );
    assert_eq!(
        condition(&store_back, "RunFailed"),
        ("False", "RunEvaluated")
    );
    let refused = get(&store_back, "ApplyFailed");
    assert_eq!(
        (refused.status.as_str(), refused.reason.as_str()),
        ("True", "ApplyFailed")
    );
    assert_eq!(refused.last_transition_time, refused_since);
    let degraded = get(&store_back, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ApplyFailed")
    );
    assert!(
        !degraded.message.contains("StoreUnavailable"),
        "{}",
        degraded.message
    );

    // The apply is accepted: ApplyFailed clears, and Degraded with it; StoreUnavailable keeps
    // what it said, without a write of its own.
    let h = Harness::new(
        "2026-11-04T03:20:00Z",
        vec![
            Step::list_jobs(vec![finished_second()]),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    reconcile(Arc::new(with_status(sm, store_back.clone())), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    let served = status_of(&seen[3]);
    assert_eq!(condition(&served, "ApplyFailed"), ("False", "Applied"));
    assert_eq!(condition(&served, "Degraded"), ("False", "AsExpected"));
    assert_eq!(condition(&served, "Ready"), ("True", "Serving"));
    assert_eq!(
        get(&served, "StoreUnavailable"),
        get(&store_back, "StoreUnavailable")
    );
}

/// A due run that cannot check the champion's weights waits for the store: StoreUnavailable
/// (one write, one event, whatever the store client says on each try), and once the store
/// answers it clears and the run starts.
#[tokio::test]
async fn a_due_run_waiting_for_the_store_is_reported_once_and_cleared_when_it_answers() {
    let sm = serving(FIRST, "2026-11-01T00:00:00Z");
    let at_rest = || {
        vec![
            Step::list_jobs(vec![job(
                FIRST,
                "2026-11-01T00:00:00Z",
                JobPhase::Succeeded,
            )]),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::get_secret(),
        ]
    };
    let mut steps = at_rest();
    steps.extend([Step::patch_status(), Step::event()]);
    let h = Harness::new("2026-11-04T01:00:00Z", steps);
    h.store_down.store(true, Ordering::Relaxed);
    let action = reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_event(&seen[5], "Warning", "StorageUnreachable");
    let waiting = status_of(&seen[4]);
    assert_eq!(
        condition(&waiting, "StoreUnavailable"),
        ("True", "StorageUnreachable")
    );
    assert!(
        get(&waiting, "StoreUnavailable")
            .message
            .starts_with("a due run waits for the store: the weights of champion homer-20261101-000000 cannot be checked"),
        "{}",
        get(&waiting, "StoreUnavailable").message
    );
    assert_eq!(condition(&waiting, "RunBlocked"), ("False", "AsExpected"));
    assert_eq!(condition(&waiting, "Ready"), ("True", "Serving"));
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));

    // Still down: the store client's words change, the status does not.
    let h = Harness::new("2026-11-04T01:01:00Z", at_rest());
    h.store_down.store(true, Ordering::Relaxed);
    reconcile(
        Arc::new(with_status(sm.clone(), waiting.clone())),
        h.ctx.clone(),
    )
    .await
    .unwrap();
    h.finish().await;

    // Back: cleared, and the run starts.
    let mut steps = at_rest();
    steps.extend([Step::create_job(), Step::patch_status(), Step::event()]);
    let h = Harness::new("2026-11-04T01:02:00Z", steps);
    h.put_weights(FIRST_URI).await;
    reconcile(Arc::new(with_status(sm, waiting)), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_event(&seen[6], "Normal", "TrainingStarted");
    let started = status_of(&seen[5]);
    assert_eq!(
        condition(&started, "StoreUnavailable"),
        ("False", "StoreReachable")
    );
    assert_eq!(condition(&started, "Degraded"), ("False", "AsExpected"));
    assert_eq!(started.last_run.as_ref().unwrap().run_id, SECOND);
}
