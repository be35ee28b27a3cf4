//! The shadow stage against a scripted API server: a run the gate would promote is scored on
//! live traffic first; the pods' reports in the store decide it.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use artifacts::live::{self, ShadowAssignment, ShadowReport};
use common::*;
use face2simpson_operator::crd::{CandidateStatus, SimpsonModel, SimpsonModelStatus, Verdict};
use face2simpson_operator::reconcile;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn shadowed(mut sm: SimpsonModel) -> SimpsonModel {
    sm.spec.promotion.shadow.enabled = true;
    sm.spec.promotion.shadow.min_requests = 50;
    sm.spec.promotion.shadow.max_duration_seconds = 3600;
    sm
}

/// Serving FIRST, SECOND trained and not decided yet, with a shadow stage.
fn shadowed_second() -> SimpsonModel {
    shadowed(training_second())
}

fn jobs() -> Vec<serde_json::Value> {
    vec![
        job(FIRST, "2026-11-01T00:00:00Z", JobPhase::Succeeded),
        job(SECOND, "2026-11-04T00:00:00Z", JobPhase::Succeeded),
    ]
}

async fn assignment(h: &Harness) -> Option<ShadowAssignment> {
    match h
        .store
        .get_json::<ShadowAssignment>(&live::shadow_assignment_in(RUNS_PREFIX))
        .await
    {
        Ok(a) => Some(a),
        Err(e) if e.is_not_found() => None,
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn a_winner_is_shadowed_first_and_the_deployment_stays() {
    let h = Harness::new(
        "2026-11-04T02:00:00Z",
        vec![
            Step::list_jobs(jobs()),
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
    reconcile(Arc::new(shadowed_second()), h.ctx.clone())
        .await
        .unwrap();
    let published = assignment(&h).await;
    let seen = h.finish().await;
    let recorded = status_of(&seen[2]);
    let run = recorded.last_run.as_ref().unwrap();
    assert_eq!(run.decision, Some(Verdict::Shadowing));
    assert_eq!(recorded.champion.as_ref().unwrap().run_id, FIRST);
    let candidate = recorded.candidate.clone().unwrap();
    assert_eq!(
        (candidate.run_id.as_str(), candidate.model_uri.as_str()),
        (SECOND, SECOND_URI)
    );
    assert_eq!(candidate.champion_run_id, FIRST);
    assert!(
        recorded.history.iter().all(|h| h.run_id != SECOND),
        "not in the history until the stage decides"
    );
    assert_eq!(seen[3].body["reason"], "ShadowStarted");
    assert_eq!(
        env_value(&seen[4].body, "MODEL_URI").as_deref(),
        Some(FIRST_URI),
        "the champion keeps serving"
    );
    assert_eq!(
        env_value(&seen[4].body, "SHADOW_URI").as_deref(),
        Some("s3://bucket/models/runs/simpsons/homer/shadow.json"),
        "pods poll the assignment"
    );
    let published = published.expect("shadow.json names the candidate");
    assert_eq!(
        (published.run_id.as_str(), published.model_uri.as_str()),
        (SECOND, SECOND_URI)
    );
    let last = status_of(&seen[6]);
    assert_eq!(last.phase.as_ref().map(|p| p.as_str()), Some("Shadowing"));
    assert_eq!(condition(&last, "Training"), ("False", "Idle"));
}

/// The model in its shadow stage for SECOND, begun at 02:00.
fn shadowing(min_requests: u64) -> SimpsonModel {
    let mut sm = shadowed_second();
    sm.spec.promotion.shadow.min_requests = min_requests;
    let status = sm.status.as_mut().unwrap();
    let run = status.last_run.as_mut().unwrap();
    run.decision = Some(Verdict::Shadowing);
    run.finished_at = Some(Time(ts("2026-11-04T02:00:00Z")));
    run.accuracy = Some(0.9);
    status.candidate = Some(CandidateStatus {
        run_id: SECOND.into(),
        model_uri: SECOND_URI.into(),
        accuracy: 0.9,
        champion_run_id: FIRST.into(),
        started_at: Time(ts("2026-11-04T02:00:00Z")),
        shadow: None,
    });
    sm
}

async fn put_report(h: &Harness, pod: &str, scored: u64, disagreements: u64, slow: bool) {
    let mut r = ShadowReport {
        pod: pod.into(),
        candidate_run_id: SECOND.into(),
        champion_run_id: FIRST.into(),
        started_at: "2026-11-04T02:00:05Z".parse().unwrap(),
        updated_at: "2026-11-04T02:10:00Z".parse().unwrap(),
        sampled: scored,
        scored,
        faces: scored,
        disagreements,
        ..Default::default()
    };
    for _ in 0..scored {
        r.champion_latency.record(8.0);
        r.candidate_latency.record(if slow { 90.0 } else { 8.0 });
    }
    let dir = live::shadow_reports_in(live::run_dir_of(h.store.key_of(SECOND_URI).unwrap()));
    h.store
        .put_json(&live::pod_file(&dir, pod), &r)
        .await
        .unwrap();
}

#[tokio::test]
async fn too_few_requests_keep_the_stage_going_and_show_the_counts() {
    let h = Harness::new(
        "2026-11-04T02:10:00Z",
        vec![
            Step::list_jobs(jobs()),
            Step::get_secret(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    put_report(&h, "homer-inference-a", 10, 1, false).await;
    put_report(&h, "homer-inference-b", 10, 0, false).await;
    reconcile(Arc::new(shadowing(50)), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    let status = status_of(&seen[4]);
    let shadow = status.candidate.unwrap().shadow.unwrap();
    assert_eq!((shadow.pods, shadow.scored), (2, 20));
    assert_eq!(shadow.disagreement, 0.05);
    assert_eq!(status.last_run.unwrap().decision, Some(Verdict::Shadowing));
}

#[tokio::test]
async fn enough_agreeing_requests_promote_and_roll_once_recorded() {
    let h = Harness::new(
        "2026-11-04T02:10:00Z",
        vec![
            Step::list_jobs(jobs()),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    put_report(&h, "homer-inference-a", 30, 1, false).await;
    put_report(&h, "homer-inference-b", 30, 0, false).await;
    // shadow.json as the stage left it: removed once the decision is recorded.
    h.store
        .put_json(
            &live::shadow_assignment_in(RUNS_PREFIX),
            &ShadowAssignment {
                run_id: SECOND.into(),
                model_uri: SECOND_URI.into(),
                sample_rate: 1.0,
                started_at: "2026-11-04T02:00:00Z".parse().unwrap(),
            },
        )
        .await
        .unwrap();
    reconcile(Arc::new(shadowing(50)), h.ctx.clone())
        .await
        .unwrap();
    let gone = assignment(&h).await.is_none();
    let seen = h.finish().await;
    let recorded = status_of(&seen[2]);
    assert_eq!(recorded.champion.as_ref().unwrap().run_id, SECOND);
    assert_eq!(recorded.previous_champion.as_ref().unwrap().run_id, FIRST);
    assert!(recorded.candidate.is_none());
    let run = recorded.last_run.as_ref().unwrap();
    assert_eq!(run.decision, Some(Verdict::ShadowPromote));
    assert!(
        run.reason
            .as_deref()
            .unwrap()
            .starts_with("ShadowPromote: 60 live requests"),
        "{:?}",
        run.reason
    );
    assert_eq!(run.shadow.as_ref().unwrap().scored, 60);
    assert_eq!(recorded.history[0].decision, Verdict::ShadowPromote);
    assert_eq!(seen[3].body["reason"], "Promoted");
    assert_eq!(
        env_value(&seen[4].body, "MODEL_URI").as_deref(),
        Some(SECOND_URI),
        "recorded first, then rolled"
    );
    assert!(gone, "shadow.json removed");
}

#[tokio::test]
async fn a_slow_candidate_is_rejected_and_nothing_rolls() {
    let h = Harness::new(
        "2026-11-04T02:10:00Z",
        vec![
            Step::list_jobs(jobs()),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    put_report(&h, "homer-inference-a", 60, 0, true).await;
    reconcile(Arc::new(shadowing(50)), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    let recorded: SimpsonModelStatus = status_of(&seen[2]);
    assert_eq!(recorded.champion.as_ref().unwrap().run_id, FIRST);
    let run = recorded.last_run.as_ref().unwrap();
    assert_eq!(run.decision, Some(Verdict::ShadowReject));
    assert!(
        run.reason
            .as_deref()
            .unwrap()
            .starts_with("ShadowReject(Latency): "),
        "{:?}",
        run.reason
    );
    assert_eq!(seen[3].body["reason"], "ShadowRejected");
    assert_eq!(
        env_value(&seen[4].body, "MODEL_URI").as_deref(),
        Some(FIRST_URI)
    );
}

#[tokio::test]
async fn a_rollback_during_the_stage_supersedes_it() {
    let h = Harness::new(
        "2026-11-04T02:10:00Z",
        vec![
            Step::list_jobs(jobs()),
            Step::patch_status(),
            Step::event(),
            // shadow.json is removed once the end of the stage is recorded.
            Step::get_secret(),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    let mut sm = shadowing(50);
    // Someone promoted another run by hand while the stage ran.
    sm.status.as_mut().unwrap().champion = Some(champion("homer-manual", 0.85));
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let seen = h.finish().await;
    let recorded = status_of(&seen[1]);
    assert!(recorded.candidate.is_none());
    assert_eq!(
        recorded.last_run.as_ref().unwrap().decision,
        Some(Verdict::Superseded)
    );
    assert_eq!(seen[2].body["reason"], "Superseded");
}
