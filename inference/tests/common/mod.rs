//! A real (randomly initialised, 32 px) ONNX model served from a `file://` store, and the real
//! BlazeFace detector.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use artifacts::Storage;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use face2simpson_inference::faces::FaceDetector;
use face2simpson_inference::{
    AppState, BatchConfig, Forward, Limits, RuntimeConfig, app, load_detector, load_model,
};
use http_body_util::BodyExt;
use model::onnx::Weights;
use tower::ServiceExt;

pub const IMAGE_SIZE: u32 = 32;
pub const ASTRONAUT: &[u8] = include_bytes!("../fixtures/astronaut.png");

/// The real server (`serve` + `app`) on a loopback port, until [`Served::stop`].
pub struct Served {
    pub addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    pub async fn start(state: AppState) -> Self {
        use face2simpson_inference::serve::{ServeConfig, serve};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            app(state.clone()),
            state,
            ServeConfig::default(),
            async {
                let _ = stopped.await;
            },
        ));
        Self { addr, stop, server }
    }

    /// Stops the server and waits until it has shut down cleanly.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.server.await.unwrap().unwrap();
    }
}

/// One request through the whole app, in process: status, headers and body.
pub async fn call(
    state: &AppState,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

pub fn metrics_json(run_id: &str) -> serde_json::Value {
    serde_json::json!({
        "schema_version": 1, "run_id": run_id, "trainer_version": "test", "test_accuracy": 0.75,
        "champion_run_id": null, "champion_test_accuracy": null,
        "classes": ["homer", "marge", "bart", "lisa"],
        "per_class_accuracy": {"homer": 0.75, "marge": 0.75, "bart": 0.75, "lisa": 0.75},
        "confusion_matrix": [[3,1,0,0],[0,3,1,0],[0,0,3,1],[1,0,0,3]],
        "counts": {"train": 10, "val": 2, "test": 16}, "skipped_files": [],
        "epochs_run": 1, "best_epoch": 1, "history": [],
        "hyperparameters": {"image_size": IMAGE_SIZE, "epochs": 1, "batch_size": 32, "learning_rate": 0.001,
            "label_smoothing": 0.1, "dropout": 0.2, "patience": 3, "val_fraction": 0.15, "seed": 1},
        "dataset": "datasets/test", "dataset_fingerprint": "sha256:00", "weights_key": format!("runs/{run_id}/model.safetensors"),
        "pretrained": "s3://internal-bucket/pretrained/mobilenet_v2.pth",
        "started_at": "2026-11-29T10:00:00Z", "finished_at": "2026-11-29T10:01:00Z", "device": "cpu"
    })
}

/// Writes an ONNX model (no safetensors: the service must not need them) and its metrics into a
/// temporary store and returns the weights' URL, as the operator hands it over.
pub async fn model_uri(dir: &Path) -> String {
    let storage = Storage::open(&format!("file://{}", dir.display())).unwrap();
    let onnx = model::onnx::export(&Weights::random(3, 4), IMAGE_SIZE).unwrap();
    storage.put("runs/r1/model.onnx", onnx).await.unwrap();
    storage
        .put(
            "runs/r1/metrics.json",
            serde_json::to_vec(&metrics_json("r1")).unwrap(),
        )
        .await
        .unwrap();
    format!("file://{}/runs/r1/model.safetensors", dir.display())
}

pub fn ort_library() -> &'static Path {
    Path::new(env!("ORT_DYLIB_PATH"))
}

pub fn runtime() -> RuntimeConfig {
    RuntimeConfig {
        library: ort_library().to_owned(),
        workers: 1,
        threads: 1,
        solo_threads: 0,
    }
}

pub fn detector(max_faces: usize) -> Arc<FaceDetector> {
    Arc::new(
        load_detector(
            ort_library(),
            Path::new(env!("FACE2SIMPSON_BLAZEFACE")),
            2,
            max_faces,
        )
        .unwrap(),
    )
}

pub fn batch_config() -> BatchConfig {
    BatchConfig {
        max_batch: 8,
        max_wait: Duration::from_millis(20),
        queue_capacity: 32,
    }
}

pub fn limits() -> Limits {
    Limits {
        max_decodes: 4,
        max_waiting: 16,
        // Debug builds are slow enough that a few concurrent requests exceed the default
        // queue-wait budget; tests of other behaviour must not depend on that. The budget has
        // its own tests (src/admission.rs, tests/api.rs).
        max_queue_wait: None,
        ..Limits::default()
    }
}

/// A ready service with the test model.
pub async fn ready_state(dir: &Path, limits: Limits) -> AppState {
    ready_state_with(dir, limits, detector(8)).await
}

pub async fn ready_state_with(dir: &Path, limits: Limits, detector: Arc<FaceDetector>) -> AppState {
    let uri = model_uri(dir).await;
    let (models, info) = load_model(&uri, 224, &runtime()).await.unwrap();
    let state = AppState::new(limits, detector);
    state.install(models, info, batch_config()).unwrap();
    state
}

pub fn png(img: &image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub fn jpeg(img: &image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

/// `jpeg` with an EXIF APP1 segment carrying `orientation` inserted after the SOI marker.
pub fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes());
    tiff.extend_from_slice(&0x0112u16.to_be_bytes());
    tiff.extend_from_slice(&3u16.to_be_bytes());
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes());
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A tiny PNG whose header claims `width`×`height` pixels (a decompression bomb's header).
pub fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut bomb = png(&image::RgbImage::new(1, 1));
    bomb[16..20].copy_from_slice(&width.to_be_bytes());
    bomb[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32fast::hash(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    bomb
}

/// A tiny PNG whose header claims 40000×40000 pixels.
pub fn png_bomb() -> Vec<u8> {
    png_claiming(40_000, 40_000)
}

/// The decision history the card tests serve: four runs, the one served (`r1`) promoted, two
/// rejected.
pub fn history_json() -> serde_json::Value {
    let entry = |run: &str, acc: f64, served: Option<f64>, kind: &str, summary: &str| {
        serde_json::json!({
            "run_id": run, "finished_at": "2026-11-29T10:01:00Z",
            "decided_at": "2026-11-29T10:02:00Z", "test_accuracy": acc,
            "served_accuracy": served, "test_images": 16, "champion_run_id": null,
            "decision": kind, "promoted": kind != "Reject", "summary": summary
        })
    };
    serde_json::json!({"schema_version": 1, "entries": [
        entry("r0", 0.625, Some(0.5625), "FirstModel", "FirstModel: 62.5% on 16 test faces"),
        entry("rx", 0.5625, None, "Reject", "Reject: -6.3 pts (95% CI -30.0..+18.0, p=1, 16 test faces); not better than the champion"),
        entry("r1", 0.75, None, "Promote", "Promote: +12.5 pts (95% CI -5.0..+30.0, p=0.25, 16 test faces)"),
        entry("r2", 0.8125, None, "Reject", "Reject: +6.3 pts (95% CI -9.0..+21.0, p=0.5, 16 test faces); ClassRegression: lisa -25.0 pts <script>"),
    ]})
}

/// The test model (`model_uri`) with what its card shows: `validation.json` beside the run
/// (about the very `model.onnx` served) and `history.json` in the runs prefix above it.
pub async fn model_uri_with_card(dir: &Path) -> String {
    use sha2::Digest;
    let uri = model_uri(dir).await;
    let storage = Storage::open(&format!("file://{}", dir.display())).unwrap();
    let onnx = storage.get("runs/r1/model.onnx").await.unwrap();
    let sha = format!("sha256:{:x}", sha2::Sha256::digest(&onnx));
    let validation = serde_json::json!({
        "schema_version": 1, "validator_version": "test", "dataset": "file:///d",
        "classes": ["homer", "marge", "bart", "lisa"], "model": uri, "run_id": "r1",
        "onnx_sha256": sha, "image_size": IMAGE_SIZE, "load_error": null, "test_images": 16,
        "served_accuracy": 0.6875,
        "per_class_recall": {"homer": 0.75, "marge": 0.5, "bart": 0.75, "lisa": 0.75},
        "confusion_matrix": [[3,1,0,0],[1,2,1,0],[0,0,3,1],[1,0,0,3]], "rejected_images": [],
        "latency_ms": {"p50_ms": 4.0, "p95_ms": 9.5, "max_ms": 12.0},
        "trainer_test_accuracy": 0.75, "agreement": 0.9375, "agreement_images": 16,
        "disagreements": [], "golden": null, "peak_rss_bytes": null, "champion": null,
        "predictions": {"keys": [], "labels": [], "candidate": [], "champion": null},
        "thresholds": {"max_p95_ms": null, "min_agreement": 0.99, "max_memory_bytes": null},
        "started_at": "2026-11-29T10:03:00Z", "finished_at": "2026-11-29T10:04:00Z",
        "passed": true, "failures": []
    });
    storage
        .put(
            "runs/r1/validation.json",
            serde_json::to_vec(&validation).unwrap(),
        )
        .await
        .unwrap();
    storage
        .put(
            "runs/history.json",
            serde_json::to_vec(&history_json()).unwrap(),
        )
        .await
        .unwrap();
    uri
}

/// A ready service whose model has a full card.
pub async fn ready_state_with_card(dir: &Path, limits: Limits) -> AppState {
    let uri = model_uri_with_card(dir).await;
    let (models, info) = load_model(&uri, 224, &runtime()).await.unwrap();
    let state = AppState::new(limits, detector(8));
    state.install(models, info, batch_config()).unwrap();
    state
}

/// A model whose passes can be held (they wait while `hold` is set) or made to fail (while
/// `fail` is set), to put requests in flight or break the model on purpose.
#[derive(Debug)]
pub struct Scripted {
    pub hold: Arc<std::sync::atomic::AtomicBool>,
    pub fail: Arc<std::sync::atomic::AtomicBool>,
}

impl face2simpson_inference::Forward for Scripted {
    fn forward(
        &mut self,
        _batch: &[f32],
        n: usize,
        _size: usize,
    ) -> Result<Vec<face2simpson_inference::Probabilities>, String> {
        use std::sync::atomic::Ordering;
        while self.hold.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err("the model is broken".into());
        }
        Ok(vec![[0.25; model::CLASSES.len()]; n])
    }
}

/// Switches for a [`Scripted`] model.
#[derive(Debug, Clone, Default)]
pub struct Script {
    pub hold: Arc<std::sync::atomic::AtomicBool>,
    pub fail: Arc<std::sync::atomic::AtomicBool>,
}

impl Script {
    pub fn set_hold(&self, on: bool) {
        self.hold.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn set_fail(&self, on: bool) {
        self.fail.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A ready service whose model is [`Scripted`] (the test model's info, the real detector).
pub async fn scripted_state(dir: &Path, limits: Limits) -> (AppState, Script) {
    let uri = model_uri(dir).await;
    let (_, info) = load_model(&uri, 224, &runtime()).await.unwrap();
    let script = Script::default();
    let state = AppState::new(limits, detector(8));
    let model = Scripted {
        hold: script.hold.clone(),
        fail: script.fail.clone(),
    };
    state
        .install(
            vec![Box::new(model) as Box<dyn Forward>],
            info,
            batch_config(),
        )
        .unwrap();
    (state, script)
}

/// The real server binary as a child process, for what only a process can show (its peak
/// resident memory); killed when dropped.
pub struct Process {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
}

impl Process {
    /// Starts `face2simpson-inference` serving `model_uri` with the real detector and ONNX
    /// Runtime, plus `env`; returns once it listens and `/readyz` answers 200.
    pub async fn start(model_uri: &str, env: &[(&str, String)]) -> Self {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_face2simpson-inference"));
        cmd.env("ORT_DYLIB_PATH", ort_library())
            .env("FACE_DETECTOR", env!("FACE2SIMPSON_BLAZEFACE"))
            .env("MODEL_URI", model_uri)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn,face2simpson_inference=info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // The log is read to its end (a full pipe would block the server); the address comes
        // from the "serving" line.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if v["fields"]["message"] == "serving"
                    && let Some(url) = v["fields"]["url"].as_str()
                {
                    let _ = tx.send(url.trim_start_matches("http://").to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server never said where it listens")
            .parse()
            .unwrap();
        let process = Self { child, addr };
        for _ in 0..600 {
            if process.get("/readyz").await.0 == 200 {
                return process;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the server never turned ready");
    }

    /// One HTTP/1.1 request on its own connection: status and body.
    pub async fn request(&self, head: &str, body: &[u8]) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        conn.write_all(head.as_bytes()).await.unwrap();
        // The server may answer early (503, 413) and close without reading the body.
        let _ = conn.write_all(body).await;
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = answer
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_owned());
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        self.request(&head, b"").await
    }

    /// A raw photo upload to `/v1/predict`.
    pub async fn predict(&self, photo: &[u8]) -> (u16, String) {
        let head = format!(
            "POST /v1/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
            photo.len()
        );
        self.request(&head, photo).await
    }

    /// The process's peak resident set so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
