//! The shadow stage and the live verdict reports, against a real model in a `file://` store:
//! answers never change, and what the pods write is where and what the operator expects.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use artifacts::Storage;
use artifacts::live::{LiveVerdicts, ShadowAssignment, ShadowReport};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{ASTRONAUT, IMAGE_SIZE, limits, metrics_json, png, ready_state, runtime};
use face2simpson_inference::shadow::QUEUE_CAPACITY;
use face2simpson_inference::{AppState, Forward, Probabilities, ReportConfig, Reporters, app};
use http_body_util::BodyExt;
use model::CLASSES;
use model::onnx::Weights;
use sha2::Digest;
use tower::ServiceExt;

const POD: &str = "inference-7d9/a";
/// `POD` as its file is named.
const POD_FILE: &str = "inference-7d9_a.json";
const INTERVAL: Duration = Duration::from_millis(200);

fn store(dir: &Path) -> Storage {
    Storage::open(&format!("file://{}", dir.display())).unwrap()
}

fn url(dir: &Path, key: &str) -> String {
    format!("file://{}/{key}", dir.display())
}

/// Photos with a face and without one (classified whole).
fn photos() -> Vec<Vec<u8>> {
    let flat = png(&image::RgbImage::from_fn(120, 90, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 2) as u8, 90])
    }));
    vec![ASTRONAUT.to_vec(), flat]
}

async fn predict(state: &AppState, photo: &[u8]) -> Vec<u8> {
    let req = Request::post("/v1/predict")
        .header(header::CONTENT_TYPE, "image/png")
        .body(Body::from(photo.to_vec()))
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}

async fn answers(state: &AppState) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for photo in photos() {
        out.push(predict(state, &photo).await);
    }
    out
}

async fn get_card(state: &AppState) -> serde_json::Value {
    let req = Request::get("/v1/model/card").body(Body::empty()).unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// Waits up to 20 s for `f` to give something.
async fn eventually<T, F: AsyncFnMut() -> Option<T>>(what: &str, mut f: F) -> T {
    for _ in 0..200 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A candidate run `run` in the store; `model_seed` 3 is the champion's model.
async fn put_candidate(dir: &Path, run: &str, model_seed: u64, corrupt: bool) -> String {
    let s = store(dir);
    let onnx =
        model::onnx::export(&Weights::random(model_seed, CLASSES.len()), IMAGE_SIZE).unwrap();
    let mut metrics = metrics_json(run);
    metrics["onnx_sha256"] = format!("sha256:{:x}", sha2::Sha256::digest(&onnx)).into();
    let mut served = onnx.clone();
    if corrupt {
        let mid = served.len() / 2;
        served[mid] ^= 0xff;
    }
    s.put(&format!("runs/{run}/model.onnx"), served)
        .await
        .unwrap();
    s.put(
        &format!("runs/{run}/metrics.json"),
        serde_json::to_vec(&metrics).unwrap(),
    )
    .await
    .unwrap();
    url(dir, &format!("runs/{run}/model.safetensors"))
}

fn assignment(run: &str, model_uri: &str, rate: f64) -> ShadowAssignment {
    ShadowAssignment {
        run_id: run.into(),
        model_uri: model_uri.into(),
        sample_rate: rate,
        started_at: chrono::Utc::now() - chrono::Duration::minutes(1),
    }
}

async fn assign(dir: &Path, a: &ShadowAssignment) {
    store(dir).put_json("runs/shadow.json", a).await.unwrap();
}

fn start(state: &AppState, dir: &Path, shadow: bool) -> Reporters {
    state
        .start_reports(
            &url(dir, "runs/r1/model.safetensors"),
            ReportConfig {
                pod: POD.into(),
                interval: INTERVAL,
                shadow_uri: shadow.then(|| url(dir, "runs/shadow.json")),
                runtime: runtime(),
            },
        )
        .unwrap()
}

async fn report(dir: &Path, run: &str) -> Option<ShadowReport> {
    store(dir)
        .get_json(&format!("runs/{run}/shadow/{POD_FILE}"))
        .await
        .ok()
}

async fn loaded(state: &AppState, run: &str) {
    eventually("the candidate to load", async || {
        state
            .shadow()
            .current()
            .filter(|c| c.assignment().run_id == run && c.is_loaded())
            .map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_byte_identical_with_a_shadow_candidate() {
    let dir = tempfile::tempdir().unwrap();
    let state = ready_state(dir.path(), limits()).await;
    let before = answers(&state).await;
    // Another model, so that the candidate disagrees: still nothing of it in the answers.
    let candidate = put_candidate(dir.path(), "r2", 11, false).await;
    assign(dir.path(), &assignment("r2", &candidate, 1.0)).await;
    let _reporters = start(&state, dir.path(), true);
    loaded(&state, "r2").await;
    for _ in 0..2 {
        assert_eq!(answers(&state).await, before);
    }
    let r = eventually("4 scored", async || {
        report(dir.path(), "r2").await.filter(|r| r.scored == 4)
    })
    .await;
    assert_eq!((r.sampled, r.dropped, r.errors), (4, 0, 0));
    let metrics = state.metrics().encode();
    assert!(
        metrics.contains("face2simpson_inference_shadow_candidate_loaded 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("face2simpson_inference_shadow_scored_total 4"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_of_a_candidate_equal_to_the_champion_has_no_disagreement() {
    let dir = tempfile::tempdir().unwrap();
    let state = ready_state(dir.path(), limits()).await;
    let candidate = put_candidate(dir.path(), "r2", 3, false).await;
    assign(dir.path(), &assignment("r2", &candidate, 1.0)).await;
    let _reporters = start(&state, dir.path(), true);
    loaded(&state, "r2").await;
    let first = eventually("the first report", async || report(dir.path(), "r2").await).await;
    assert_eq!(first.scored, 0, "written as soon as loaded");
    let mut faces = 0;
    for body in answers(&state).await {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        faces += v["faces"].as_array().unwrap().len().max(1) as u64;
    }
    let r = eventually("2 scored", async || {
        report(dir.path(), "r2").await.filter(|r| r.scored == 2)
    })
    .await;
    assert_eq!(r.pod, POD);
    assert_eq!(
        (r.candidate_run_id.as_str(), r.champion_run_id.as_str()),
        ("r2", "r1")
    );
    assert_eq!((r.sampled, r.dropped, r.errors, r.faces), (2, 0, 0, faces));
    assert_eq!(r.disagreements, 0);
    assert_eq!(r.champion_latency.total(), 2);
    assert_eq!(r.candidate_latency.total(), 2);
    assert!(r.load_error.is_none());

    let card = eventually("the card to show 2 scored", async || {
        let c = get_card(&state).await;
        (c["shadow"]["scored"] == 2).then_some(c)
    })
    .await;
    let shadow = &card["shadow"];
    assert_eq!(shadow["run_id"], "r2");
    assert_eq!(shadow["pods"], 1);
    assert_eq!(shadow["disagreement_rate"], 0.0);
    assert!(shadow["champion_p95_ms"].as_f64().is_some(), "{card}");
    assert!(shadow["candidate_p95_ms"].as_f64().is_some(), "{card}");

    // Another pod's report is merged into the card; one from before the stage, or on another
    // candidate, is not.
    let other = |pod: &str, candidate: &str, ago: i64| ShadowReport {
        pod: pod.into(),
        candidate_run_id: candidate.into(),
        champion_run_id: "r1".into(),
        updated_at: chrono::Utc::now() - chrono::Duration::minutes(ago),
        sampled: 10,
        scored: 10,
        faces: 10,
        disagreements: 5,
        ..ShadowReport::default()
    };
    let s = store(dir.path());
    for (key, report) in [
        ("runs/r2/shadow/other.json", other("other", "r2", 0)),
        ("runs/r2/shadow/stale.json", other("stale", "r2", 60)),
        ("runs/r2/shadow/confused.json", other("confused", "r0", 0)),
    ] {
        s.put_json(key, &report).await.unwrap();
    }
    let card = eventually("the card to merge two pods", async || {
        let c = get_card(&state).await;
        (c["shadow"]["pods"] == 2).then_some(c)
    })
    .await;
    let shadow = &card["shadow"];
    assert_eq!(shadow["scored"], 12, "{card}");
    assert_eq!(shadow["disagreements"], 5, "{card}");
    assert_eq!(shadow["disagreement_rate"], 5.0 / (10.0 + faces as f64));

    // The operator ends the stage: the candidate goes, and the card says nothing of it.
    store(dir.path()).delete("runs/shadow.json").await.unwrap();
    eventually("the stage to end", async || {
        state.shadow().current().is_none().then_some(())
    })
    .await;
    assert!(get_card(&state).await.get("shadow").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_candidate_is_reported_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = ready_state(dir.path(), limits()).await;
    let before = answers(&state).await;
    let candidate = put_candidate(dir.path(), "r3", 3, true).await;
    assign(dir.path(), &assignment("r3", &candidate, 1.0)).await;
    let _reporters = start(&state, dir.path(), true);
    let r = eventually("a load error", async || {
        report(dir.path(), "r3")
            .await
            .filter(|r| r.load_error.is_some())
    })
    .await;
    let error = r.load_error.unwrap();
    assert!(error.contains("metrics.json says"), "{error}");
    assert_eq!(answers(&state).await, before);
    let answered = chrono::Utc::now();
    let r = eventually("a later report", async || {
        report(dir.path(), "r3")
            .await
            .filter(|r| r.updated_at > answered)
    })
    .await;
    assert_eq!(
        (r.sampled, r.scored),
        (0, 0),
        "a failed candidate samples nothing"
    );
    let card = get_card(&state).await;
    let shown = card["shadow"]["load_error"].as_str().unwrap();
    assert!(shown.contains("metrics.json says"), "{card}");
    assert!(
        !shown.contains("file://"),
        "no storage URLs on the card: {shown}"
    );
    assert!(
        state
            .metrics()
            .encode()
            .contains("face2simpson_inference_shadow_candidate_loaded 0")
    );
}

/// A candidate that signals when it starts a forward pass and then waits to be released.
struct Stuck {
    entered: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
}

impl Forward for Stuck {
    fn forward(&mut self, _: &[f32], n: usize, _: usize) -> Result<Vec<Probabilities>, String> {
        let _ = self.entered.send(());
        let _ = self.release.recv();
        Ok(vec![[1.0 / CLASSES.len() as f32; CLASSES.len()]; n])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_shadow_drops_samples_and_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let state = ready_state(dir.path(), limits()).await;
    let photo = &photos()[0];
    let before = predict(&state, photo).await;
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let stuck = Stuck {
        entered: entered_tx,
        release: release_rx,
    };
    let candidate = state
        .shadow()
        .install(
            assignment("r9", &url(dir.path(), "runs/r9/model.safetensors"), 1.0),
            Box::new(stuck),
            IMAGE_SIZE,
        )
        .unwrap();
    assert_eq!(predict(&state, photo).await, before);
    // The worker holds the first sample; the queue takes the next ones, the rest are dropped.
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    let more = QUEUE_CAPACITY + 3;
    for _ in 0..more {
        assert_eq!(predict(&state, photo).await, before);
    }
    let r = candidate.report();
    assert_eq!(r.sampled, 1 + more as u64);
    assert_eq!(r.dropped, 3);
    assert_eq!(r.scored, 0);
    for _ in 0..=QUEUE_CAPACITY {
        release.send(()).unwrap();
    }
    let r = eventually("the queue to drain", async || {
        Some(candidate.report()).filter(|r| r.scored == 1 + QUEUE_CAPACITY as u64)
    })
    .await;
    assert_eq!((r.errors, r.dropped), (0, 3));
    let metrics = state.metrics().encode();
    assert!(
        metrics.contains("face2simpson_inference_shadow_dropped_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("face2simpson_inference_shadow_sampled_total 8"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_verdicts_are_counted_per_class_and_written_when_they_change() {
    let dir = tempfile::tempdir().unwrap();
    let state = ready_state(dir.path(), limits()).await;
    let _reporters = start(&state, dir.path(), false);
    let mut want = vec![0u64; CLASSES.len()];
    for _ in 0..2 {
        for body in answers(&state).await {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let faces = v["faces"].as_array().unwrap();
            let verdicts: Vec<&str> = if faces.is_empty() {
                vec![v["character"].as_str().unwrap()]
            } else {
                faces
                    .iter()
                    .map(|f| f["character"].as_str().unwrap())
                    .collect()
            };
            for c in verdicts {
                want[model::class_index(c).unwrap()] += 1;
            }
        }
    }
    let key = format!("runs/r1/live/{POD_FILE}");
    let got: LiveVerdicts = eventually("the verdicts", async || {
        let v: LiveVerdicts = store(dir.path()).get_json(&key).await.ok()?;
        let now = chrono::Utc::now();
        (v.window(now - chrono::Duration::minutes(5), now) == want).then_some(v)
    })
    .await;
    assert_eq!((got.pod.as_str(), got.run_id.as_str()), (POD, "r1"));
    assert_eq!(got.classes, CLASSES.map(String::from));
    // Nothing new: the file is not written again.
    tokio::time::sleep(INTERVAL * 4).await;
    let again: LiveVerdicts = store(dir.path()).get_json(&key).await.unwrap();
    assert_eq!(again.updated_at, got.updated_at);
}

/// A candidate that answers at once.
struct Instant;

impl Forward for Instant {
    fn forward(&mut self, _: &[f32], n: usize, _: usize) -> Result<Vec<Probabilities>, String> {
        Ok(vec![[1.0 / CLASSES.len() as f32; CLASSES.len()]; n])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_under_pressure_drops_samples_before_copying_them() {
    let dir = tempfile::tempdir().unwrap();
    // One decode slot: admission's floor is 2 requests in flight.
    let limits = face2simpson_inference::Limits {
        max_decodes: 1,
        ..limits()
    };
    let state = ready_state(dir.path(), limits).await;
    let photo = &photos()[0];
    let before = predict(&state, photo).await;
    let candidate = state
        .shadow()
        .install(
            assignment("r9", &url(dir.path(), "runs/r9/model.safetensors"), 1.0),
            Box::new(Instant),
            IMAGE_SIZE,
        )
        .unwrap();
    // All admitted at once, decoded one by one: the first answers are sampled while others
    // still wait for the decode slot.
    let all = futures::future::join_all((0..6).map(|_| predict(&state, photo))).await;
    assert!(all.iter().all(|a| *a == before));
    let r = eventually("the samples to settle", async || {
        Some(candidate.report()).filter(|r| r.scored + r.dropped == 6)
    })
    .await;
    assert_eq!(r.sampled, 6);
    // The instant candidate never had its queue full (that takes QUEUE_CAPACITY samples
    // waiting, all scored later): every drop was the pod's pressure.
    assert!(r.dropped >= 1 && r.scored < QUEUE_CAPACITY as u64, "{r:?}");
    // Alone again: sampled and scored.
    assert_eq!(predict(&state, photo).await, before);
    eventually("a lone request to be scored", async || {
        Some(candidate.report()).filter(|c| c.scored == r.scored + 1)
    })
    .await;
}
