//! Data-aware triggers against a scripted API server: a schedule slot skipped when the data
//! did not change (`schedule.skipIfUnchanged`), and a run started when it changed and
//! settled (`triggers.datasetChange`).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use face2simpson_operator::crd::{
    DatasetChangeTrigger, DatasetStatus, SimpsonModel, SimpsonModelStatus, Verdict,
};
use face2simpson_operator::reconcile;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;

const DATASET: &str = "datasets/current";

/// Puts the images of the dataset in the harness's store; returns its listing fingerprint.
async fn put_dataset(h: &Harness, files: &[&str]) -> String {
    for f in files {
        h.store
            .put(&format!("{DATASET}/{f}"), f.as_bytes().to_vec())
            .await
            .unwrap();
    }
    artifacts::dataset_fingerprint(&h.store, DATASET)
        .await
        .unwrap()
}

const IMAGES: [&str; 2] = ["train/homer/1.jpg", "test/homer/2.jpg"];

/// The champion FIRST, with its weights and a metrics.json that says it trained on `listing`.
async fn put_champion(h: &Harness, listing: &str) {
    h.put_weights(FIRST_URI).await;
    let mut m = run_metrics(FIRST, 0.8, None);
    m.listing_fingerprint = Some(listing.to_owned());
    h.put_legacy_metrics(&m).await;
}

fn skipping() -> SimpsonModel {
    let mut sm = serving(FIRST, "2026-11-01T00:00:00Z");
    sm.spec.schedule.skip_if_unchanged = true;
    sm
}

fn jobs() -> Vec<serde_json::Value> {
    vec![job(FIRST, "2026-11-01T00:00:00Z", JobPhase::Succeeded)]
}

#[tokio::test]
async fn a_slot_whose_data_did_not_change_starts_no_run_and_the_schedule_moves_on() {
    let h = Harness::new(
        "2026-11-04T01:00:00Z",
        vec![
            Step::list_jobs(jobs()),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
        ],
    );
    let listing = put_dataset(&h, &IMAGES).await;
    put_champion(&h, &listing).await;
    let sm = skipping();
    reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    let status = status_of(&seen[4]);
    let skip = &status.history[0];
    assert_eq!(skip.decision, Verdict::Skipped);
    assert_eq!(skip.run_id, "homer-20261104-000000", "named after its slot");
    assert!(
        skip.reason.starts_with("DataUnchanged: "),
        "{}",
        skip.reason
    );
    assert_eq!(seen[5].body["reason"], "RunSkipped");
    let dataset = status.dataset.clone().unwrap();
    assert_eq!(dataset.fingerprint, listing);
    assert_eq!(dataset.skipped_slot, Some(Time(ts("2026-11-04T00:00:00Z"))));
    assert_eq!(
        status.next_run_at,
        Some(Time(ts("2026-11-07T00:00:00Z"))),
        "the next slot counts from the skipped one"
    );
    assert_eq!(status.last_run.as_ref().unwrap().run_id, FIRST, "no run");

    // The next pass, before the next slot: nothing listed, nothing written.
    let h = Harness::new(
        "2026-11-05T00:00:00Z",
        vec![
            Step::list_jobs(jobs()),
            Step::apply_deployment(),
            Step::apply_service(),
        ],
    );
    reconcile(
        Arc::new(with_status(sm.clone(), status.clone())),
        h.ctx.clone(),
    )
    .await
    .unwrap();
    h.finish().await;

    // At the next slot, still unchanged: skipped again, and the two skips are one entry.
    let h = Harness::new(
        "2026-11-07T00:00:01Z",
        vec![
            Step::list_jobs(jobs()),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::get_secret(),
            Step::patch_status(),
            Step::event(),
        ],
    );
    put_dataset(&h, &IMAGES).await;
    put_champion(&h, &listing).await;
    reconcile(Arc::new(with_status(sm, status.clone())), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    let again = status_of(&seen[4]);
    assert_eq!(again.history.len(), status.history.len());
    assert_eq!(again.history[0].run_id, "homer-20261107-000000");
    assert_eq!(again.next_run_at, Some(Time(ts("2026-11-10T00:00:00Z"))));
}

#[tokio::test]
async fn a_slot_whose_data_changed_runs() {
    let h = Harness::new(
        "2026-11-04T01:00:00Z",
        vec![
            Step::list_jobs(jobs()),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::get_secret(),
            Step::create_job(),
            Step::patch_status(),
            Step::event(),
        ],
    );
    let before = put_dataset(&h, &IMAGES).await;
    put_champion(&h, &before).await;
    put_dataset(&h, &["train/bart/3.jpg"]).await;
    reconcile(Arc::new(skipping()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_eq!(seen[4].body["metadata"]["name"], "homer-20261104-000000");
    let status = status_of(&seen[5]);
    assert_eq!(status.last_run.unwrap().trigger, "Schedule");
    assert_ne!(
        status.history.first().map(|h| h.decision.clone()),
        Some(Verdict::Skipped)
    );
}

/// A champion older than listing fingerprints (or without metrics.json) cannot be compared:
/// the slot runs.
#[tokio::test]
async fn a_champion_without_a_recorded_listing_never_skips() {
    let h = Harness::new(
        "2026-11-04T01:00:00Z",
        vec![
            Step::list_jobs(jobs()),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::get_secret(),
            Step::create_job(),
            Step::patch_status(),
            Step::event(),
        ],
    );
    put_dataset(&h, &IMAGES).await;
    h.put_weights(FIRST_URI).await;
    h.put_legacy_metrics(&run_metrics(FIRST, 0.8, None)).await;
    reconcile(Arc::new(skipping()), h.ctx.clone())
        .await
        .unwrap();
    h.finish().await;
}

fn watching(trained: &str, seen: DatasetStatus) -> SimpsonModel {
    let mut sm = serving(FIRST, "2026-11-01T00:00:00Z");
    sm.spec.triggers.dataset_change = Some(DatasetChangeTrigger {
        poll_seconds: 60,
        settle_seconds: 300,
        min_interval_seconds: 3600,
    });
    let status = sm.status.as_mut().unwrap();
    status.dataset = Some(DatasetStatus {
        trained: Some(trained.to_owned()),
        ..seen
    });
    sm
}

fn seen(fingerprint: &str, since: &str) -> DatasetStatus {
    DatasetStatus {
        fingerprint: fingerprint.to_owned(),
        seen_since: Time(ts(since)),
        trained: None,
        skipped_slot: None,
    }
}

#[tokio::test]
async fn a_data_change_settles_then_starts_one_run_named_after_the_data() {
    // First look after an upload: the change is recorded, the settle clock starts.
    let h = Harness::new(
        "2026-11-02T00:00:00Z",
        vec![
            Step::list_jobs(jobs()),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::get_secret(),
            Step::patch_status(),
        ],
    );
    let trained = put_dataset(&h, &IMAGES).await;
    let changed = put_dataset(&h, &["train/lisa/4.jpg"]).await;
    let sm = watching(&trained, seen(&trained, "2026-11-01T00:00:00Z"));
    let action = reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        action,
        Action::requeue(Duration::from_secs(60)),
        "the next poll"
    );
    let seen_now = status_of(&h.finish().await[4]);
    let dataset = seen_now.dataset.clone().unwrap();
    assert_eq!(
        (dataset.fingerprint.as_str(), dataset.seen_since.0),
        (changed.as_str(), ts("2026-11-02T00:00:00Z"))
    );
    assert_eq!(dataset.trained.as_deref(), Some(trained.as_str()));

    // Polled again while settling, unchanged: nothing to write.
    let h = Harness::new(
        "2026-11-02T00:02:00Z",
        vec![
            Step::list_jobs(jobs()),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::get_secret(),
        ],
    );
    put_dataset(&h, &IMAGES).await;
    put_dataset(&h, &["train/lisa/4.jpg"]).await;
    let action = reconcile(
        Arc::new(with_status(sm.clone(), seen_now.clone())),
        h.ctx.clone(),
    )
    .await
    .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    h.finish().await;

    // Settled: one run, named after the listing, trigger DatasetChange.
    let h = Harness::new(
        "2026-11-02T00:05:00Z",
        vec![
            Step::list_jobs(jobs()),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::get_secret(),
            Step::create_job(),
            Step::patch_status(),
            Step::event(),
        ],
    );
    put_dataset(&h, &IMAGES).await;
    put_dataset(&h, &["train/lisa/4.jpg"]).await;
    h.put_weights(FIRST_URI).await;
    reconcile(Arc::new(with_status(sm, seen_now)), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    let name = face2simpson_operator::builders::data_run_id("homer", &changed);
    assert!(name.starts_with("homer-data-") && name.len() == "homer-data-".len() + 10);
    assert_eq!(seen[4].body["metadata"]["name"], name.as_str());
    let status = status_of(&seen[5]);
    let run = status.last_run.clone().unwrap();
    assert_eq!(
        (run.run_id.as_str(), run.trigger.as_str()),
        (name.as_str(), "DatasetChange")
    );
    assert_eq!(
        status.dataset.unwrap().trained.as_deref(),
        Some(changed.as_str()),
        "the run trains on it: the same change starts nothing more"
    );
}

#[tokio::test]
async fn another_upload_while_settling_restarts_the_clock() {
    let h = Harness::new(
        "2026-11-02T00:05:00Z",
        vec![
            Step::list_jobs(jobs()),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::get_secret(),
            Step::patch_status(),
        ],
    );
    let trained = put_dataset(&h, &IMAGES).await;
    let first = put_dataset(&h, &["train/lisa/4.jpg"]).await;
    let second = put_dataset(&h, &["train/lisa/5.jpg"]).await;
    let sm = watching(&trained, seen(&first, "2026-11-02T00:00:00Z"));
    let action = reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    let status: SimpsonModelStatus = status_of(&h.finish().await[4]);
    let dataset = status.dataset.unwrap();
    assert_eq!(
        (dataset.fingerprint, dataset.seen_since.0),
        (second, ts("2026-11-02T00:05:00Z"))
    );
}

#[tokio::test]
async fn a_settled_change_waits_for_the_minimum_interval() {
    let h = Harness::new(
        "2026-11-01T00:30:00Z",
        vec![
            Step::list_jobs(jobs()),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::get_secret(),
            // nextRunAt, which the fixture leaves out; no Job.
            Step::patch_status(),
        ],
    );
    let trained = put_dataset(&h, &IMAGES).await;
    let changed = put_dataset(&h, &["train/lisa/4.jpg"]).await;
    let sm = watching(&trained, seen(&changed, "2026-11-01T00:10:00Z"));
    let action = reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    // The poll (60 s) comes first; the run is allowed at 01:00, an hour after the last start.
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    h.finish().await;
}

/// A model that had runs before the trigger was set: what the last run trained on comes from
/// its metrics.json, so a change made before the trigger existed still counts.
#[tokio::test]
async fn the_first_look_takes_the_trained_listing_from_the_last_run() {
    let h = Harness::new(
        "2026-11-02T00:00:00Z",
        vec![
            Step::list_jobs(jobs()),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::get_secret(),
            Step::patch_status(),
        ],
    );
    let trained = put_dataset(&h, &IMAGES).await;
    put_champion(&h, &trained).await;
    let changed = put_dataset(&h, &["train/lisa/4.jpg"]).await;
    let mut sm = serving(FIRST, "2026-11-01T00:00:00Z");
    sm.spec.triggers.dataset_change = Some(DatasetChangeTrigger::default());
    // The last run's weights are found from its status.
    sm.status
        .as_mut()
        .unwrap()
        .last_run
        .as_mut()
        .unwrap()
        .model_uri = Some(FIRST_URI.into());
    reconcile(Arc::new(sm), h.ctx.clone()).await.unwrap();
    let dataset = status_of(&h.finish().await[4]).dataset.unwrap();
    assert_eq!(dataset.fingerprint, changed);
    assert_eq!(dataset.trained, Some(trained));
}

/// The champion's live verdicts, as two pods report them: `per_class` verdicts of each class
/// in the last minutes before `now`.
async fn put_live(h: &Harness, per_class: [u64; 4], now: &str) {
    let now: chrono::DateTime<chrono::Utc> = now.parse().unwrap();
    for pod in ["homer-inference-a", "homer-inference-b"] {
        let mut v = artifacts::live::LiveVerdicts {
            pod: pod.into(),
            run_id: FIRST.into(),
            classes: ["homer", "marge", "bart", "lisa"]
                .map(String::from)
                .to_vec(),
            updated_at: now,
            ..Default::default()
        };
        for (class, n) in per_class.iter().enumerate() {
            for i in 0..*n {
                v.record(
                    class,
                    now - chrono::Duration::seconds(i64::try_from(i % 300).unwrap()),
                );
            }
        }
        let dir = artifacts::live::live_verdicts_in(artifacts::live::run_dir_of(
            h.store.key_of(FIRST_URI).unwrap(),
        ));
        h.store
            .put_json(&artifacts::live::pod_file(&dir, pod), &v)
            .await
            .unwrap();
    }
}

/// The champion FIRST's metrics: on its test set it predicted every class equally often.
async fn put_balanced_champion(h: &Harness) {
    h.put_weights(FIRST_URI).await;
    let mut m = run_metrics(FIRST, 0.8, None);
    m.confusion_matrix = vec![
        vec![10, 0, 0, 0],
        vec![0, 10, 0, 0],
        vec![0, 0, 10, 0],
        vec![0, 0, 0, 10],
    ];
    h.put_legacy_metrics(&m).await;
}

fn drift_watching() -> SimpsonModel {
    let mut sm = serving(FIRST, "2026-11-01T00:00:00Z");
    sm.spec.triggers.prediction_drift = Some(face2simpson_operator::crd::PredictionDriftTrigger {
        window_seconds: 3600,
        max_psi: 0.25,
        min_verdicts: 100,
        poll_seconds: 60,
        min_interval_seconds: 3600,
    });
    sm
}

#[tokio::test]
async fn live_verdicts_of_one_class_start_a_drift_run() {
    let now = "2026-11-02T00:00:00Z";
    let h = Harness::new(
        now,
        vec![
            Step::list_jobs(jobs()),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::get_secret(),
            Step::create_job(),
            Step::patch_status(),
            Step::event(),
        ],
    );
    put_balanced_champion(&h).await;
    put_live(&h, [0, 0, 150, 0], now).await;
    reconcile(Arc::new(drift_watching()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_eq!(
        seen[4].body["metadata"]["name"],
        "homer-drift-20261102-000000"
    );
    let status = status_of(&seen[5]);
    assert_eq!(status.last_run.unwrap().trigger, "Drift");
    let drift = status.drift.unwrap();
    assert_eq!((drift.verdicts, drift.run_id.as_str()), (300, FIRST));
    assert!(drift.psi > 1.0, "{drift:?}");
}

#[tokio::test]
async fn live_verdicts_like_the_test_set_start_nothing() {
    let now = "2026-11-02T00:00:00Z";
    let h = Harness::new(
        now,
        vec![
            Step::list_jobs(jobs()),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::get_secret(),
            Step::patch_status(),
        ],
    );
    put_balanced_champion(&h).await;
    put_live(&h, [40, 35, 38, 37], now).await;
    let action = reconcile(Arc::new(drift_watching()), h.ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    let status = status_of(&h.finish().await[4]);
    let drift = status.drift.unwrap();
    assert!(drift.psi < 0.01, "{drift:?}");
    assert_eq!(status.last_run.unwrap().run_id, FIRST, "no run");
}

#[tokio::test]
async fn too_few_live_verdicts_are_not_judged() {
    let now = "2026-11-02T00:00:00Z";
    let h = Harness::new(
        now,
        vec![
            Step::list_jobs(jobs()),
            Step::apply_deployment(),
            Step::apply_service(),
            Step::get_secret(),
            // nextRunAt only.
            Step::patch_status(),
        ],
    );
    put_balanced_champion(&h).await;
    put_live(&h, [0, 0, 20, 0], now).await;
    reconcile(Arc::new(drift_watching()), h.ctx.clone())
        .await
        .unwrap();
    let status = status_of(&h.finish().await[4]);
    assert_eq!(status.drift, None);
}
