//! face2simpson inference: an axum service and web page that say which Simpsons character each
//! face in a photo resembles. The model is the trainer's ONNX export on ONNX Runtime; this crate
//! does not link libtorch. [`app`] builds the router; [`serve`] runs it with connection limits
//! and a drain phase; `main.rs` only parses flags, loads the model in the background and serves.
//!
//! Work is bounded at every step: upload bodies are read apart from decoding, within a byte
//! budget and a deadline ([`upload`]); at most `max_decodes` uploads are decoded at once (the
//! rest wait); requests are admitted only while the ones ahead would drain within
//! `max_queue_wait` (the rest get 503, before their body is read when the pod is already
//! saturated, see [`admission`]); decoded pixels are reserved on a budget from the image header
//! before decoding; faces per image are capped, forward passes never exceed `max_batch`, and
//! the model queue is bounded. The defaults are sized by the pod ([`sizing`]).

pub mod access;
pub mod admission;
pub mod batcher;
pub mod card;
pub mod error;
pub mod health;
pub mod live;
pub mod load;
pub mod metrics;
pub mod oip;
pub mod report_store;
pub mod reports;
pub mod serve;
pub mod shadow;
pub mod sizing;
pub mod upload;
pub mod validate;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Multipart, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use model::{CLASSES, Preprocessor};
use serde::Serialize;
use tokio::sync::Semaphore;
use utoipa::{OpenApi, ToSchema};

use crate::admission::{Admission, AdmissionConfig, Rejection};
use crate::health::{Health, HealthConfig};
use crate::upload::BodyLimits;

pub use crate::batcher::{BatchConfig, BatchError, Batcher, Forward, Probabilities};
pub use crate::card::{ModelCard, ShadowCard};
pub use crate::error::{ApiError, ErrorBody};
use crate::live::VerdictCounter;
pub use crate::load::{LoadError, ModelInfo, Models, RuntimeConfig, load_detector, load_model};
use crate::metrics::{Metrics, RouteLabels, RouteOnly};
use crate::oip::OipPaths;
pub use crate::reports::{ReportConfig, Reporters};
use crate::shadow::Shadow;
use pipeline::{FaceBox, FaceDetector};
pub use pipeline::{faces, runtime};

const PAGE: &str = include_str!("page.html");
/// The page loads nothing from elsewhere; say so, so injected content could not either.
const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob: data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Limits that protect the service.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// The whole request, queue included; past it a request still sending its body gets 408,
    /// one the server kept waiting 504.
    pub request_timeout: Duration,
    /// Uploads decoded and preprocessed at once. Decoding is the CPU- and memory-hungry step
    /// (a 12 MP photo is 36 MB of pixels). Bodies are read without a slot.
    pub max_decodes: usize,
    /// Uploads that may wait for a decode slot (bodies read) at most; beyond that, requests are
    /// answered 503 + Retry-After at once.
    pub max_waiting: usize,
    /// Upload bytes held at once, bodies being read or waiting for their decode; an upload that
    /// does not fit gets 503. Never below `max_body_bytes`.
    pub upload_budget_bytes: u64,
    /// Time a body gets to arrive, whatever its size; a stalled body gets 408.
    pub body_timeout: Duration,
    /// Bytes per second a body must keep up beyond `body_timeout` (0: `body_timeout` only).
    pub min_body_rate: u64,
    /// Decoded pixel bytes held at once, reserved from the image header before decoding; an
    /// image larger than the whole budget gets 413, others wait their turn.
    pub pixel_budget_bytes: u64,
    /// Longest the requests already in flight may take to drain (measured time per request ×
    /// requests in flight) for a newcomer to be admitted; `None` admits up to the count limits.
    /// The bound on latency: see [`admission`].
    pub max_queue_wait: Option<Duration>,
}

/// How long, by default, the first request of a batch waits for company (`MAX_WAIT_MS`): not
/// at all. On CPU a batch costs the same per image as single passes (docs/benchmarks.md, the
/// batching table), so waiting only adds latency, and each per-core worker takes the next
/// request itself.
pub const DEFAULT_MAX_WAIT_MS: u64 = 0;

/// The default queue-wait budget in milliseconds: a wait a user accepts (docs/inference.md).
pub const DEFAULT_MAX_QUEUE_WAIT_MS: u64 = 2000;
pub const DEFAULT_MAX_QUEUE_WAIT: Duration = Duration::from_millis(DEFAULT_MAX_QUEUE_WAIT_MS);

impl Limits {
    /// How admission applies these limits: everything up to one upload decoding and one
    /// queued behind it per decode slot, never more than the decode slots plus `max_waiting`,
    /// and in between only while the queue drains within `max_queue_wait`.
    pub fn admission(&self) -> AdmissionConfig {
        let decodes = self.max_decodes.max(1);
        AdmissionConfig {
            floor: 2 * decodes,
            cap: decodes + self.max_waiting,
            max_queue_wait: self.max_queue_wait,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 10 << 20,
            request_timeout: Duration::from_secs(30),
            max_decodes: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_waiting: 64,
            max_queue_wait: Some(DEFAULT_MAX_QUEUE_WAIT),
            upload_budget_bytes: 256 << 20,
            body_timeout: Duration::from_secs(10),
            min_body_rate: 64 << 10,
            pixel_budget_bytes: 1 << 30,
        }
    }
}

impl Limits {
    fn body(&self) -> BodyLimits {
        BodyLimits {
            max_bytes: self.max_body_bytes,
            timeout: self.body_timeout,
            min_rate: self.min_body_rate,
        }
    }
}

/// A semaphore of `n` units; tokio caps the count far above any memory size.
fn budget(n: u64) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(
        usize::try_from(n).map_or(Semaphore::MAX_PERMITS, |n| n.min(Semaphore::MAX_PERMITS)),
    ))
}

struct Loaded {
    batcher: Batcher,
    pre: Preprocessor,
    info: ModelInfo,
}

struct Inner {
    loaded: OnceLock<Loaded>,
    metrics: Arc<Metrics>,
    detector: Arc<FaceDetector>,
    limits: Limits,
    /// Requests admitted and not yet answered.
    admission: Arc<Admission>,
    decodes: Arc<Semaphore>,
    upload_bytes: Arc<Semaphore>,
    pixel_bytes: Arc<Semaphore>,
    health: Health,
    draining: AtomicBool,
    /// The champion's verdicts, for the live verdict reports.
    verdicts: VerdictCounter,
    shadow: Shadow,
    /// The name the v2 (Open Inference Protocol) routes answer to; see [`oip`].
    model_name: OnceLock<String>,
}

/// Shared state; starts unready and becomes ready once [`AppState::install`] is called.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(limits: Limits, detector: Arc<FaceDetector>) -> Self {
        let metrics = Arc::new(Metrics::default());
        Self {
            inner: Arc::new(Inner {
                loaded: OnceLock::new(),
                shadow: Shadow::new(metrics.clone()),
                verdicts: VerdictCounter::default(),
                metrics,
                detector,
                limits,
                admission: Admission::new(limits.admission()),
                decodes: Arc::new(Semaphore::new(limits.max_decodes.max(1))),
                upload_bytes: budget(limits.upload_budget_bytes.max(limits.max_body_bytes as u64)),
                pixel_bytes: budget(limits.pixel_budget_bytes),
                health: Health::new(HealthConfig::default()),
                draining: AtomicBool::new(false),
                model_name: OnceLock::new(),
            }),
        }
    }

    /// Loaded, a model worker alive, the model's passes succeeding, and not draining.
    pub fn is_ready(&self) -> bool {
        !self.inner.draining.load(Ordering::SeqCst)
            && self
                .inner
                .loaded
                .get()
                .is_some_and(|l| l.batcher.alive() > 0)
            && self.inner.health.check().is_ok()
    }

    /// False once the model was loaded and every model worker has died: the process cannot
    /// answer predictions any more and should be restarted.
    pub fn is_alive(&self) -> bool {
        self.inner
            .loaded
            .get()
            .is_none_or(|l| l.batcher.alive() > 0)
    }

    /// The drain phase of a shutdown: /readyz answers 503 so that load balancers stop sending.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The shadow stage (a candidate scored beside the champion on sampled requests).
    pub fn shadow(&self) -> &Shadow {
        &self.inner.shadow
    }

    /// The champion's run id, once loaded.
    pub fn champion_run_id(&self) -> Option<String> {
        self.inner.loaded.get().and_then(|l| l.info.run_id.clone())
    }

    /// The champion's input size, once loaded.
    pub fn image_size(&self) -> Option<u32> {
        self.inner.loaded.get().map(|l| l.info.image_size)
    }

    /// This pod's live verdict counts for the champion, as the report file holds them; `None`
    /// until the model is loaded.
    pub fn live_verdicts(&self, pod: &str) -> Option<artifacts::live::LiveVerdicts> {
        let info = &self.inner.loaded.get()?.info;
        let mut v = self.inner.verdicts.snapshot();
        v.pod = pod.to_owned();
        v.run_id = info.run_id.clone().unwrap_or_default();
        v.classes.clone_from(&info.classes);
        v.updated_at = chrono::Utc::now();
        Some(v)
    }

    /// Puts a loaded, warmed-up model into service.
    pub fn install(
        &self,
        models: impl Into<Models>,
        info: ModelInfo,
        batch: BatchConfig,
    ) -> std::io::Result<()> {
        let pre = Preprocessor::new(info.image_size);
        let models = models.into();
        let mut batcher = Batcher::spawn(
            models.workers,
            info.image_size,
            batch,
            self.inner.metrics.clone(),
        )?;
        if let Some(solo) = models.solo {
            batcher = batcher.with_solo(solo)?;
        }
        let _ = self.inner.loaded.set(Loaded { batcher, pre, info });
        Ok(())
    }
}

/// One face's verdict.
#[derive(Debug, Serialize, ToSchema)]
pub struct Face {
    #[serde(rename = "box")]
    pub bbox: FaceBox,
    pub character: String,
    /// Class → probability; sums to 1.
    pub probabilities: BTreeMap<String, f32>,
}

/// Which model answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelRef {
    pub run_id: Option<String>,
    pub test_accuracy: Option<f64>,
}

/// The answer to "who do I look like".
#[derive(Debug, Serialize, ToSchema)]
pub struct Prediction {
    /// The verdict for the largest face, or for the whole image when no face was found.
    pub character: String,
    pub probabilities: BTreeMap<String, f32>,
    /// False when no face was found and the whole image was classified instead.
    pub face_detected: bool,
    /// One verdict per detected face, largest first (at most the server's face cap).
    pub faces: Vec<Face>,
    pub model: ModelRef,
}

/// The multipart form of `/v1/predict`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The photo: JPEG, PNG or WebP.
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
}

/// A raw upload: the photo's bytes as the whole body.
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct RawImage(Vec<u8>);

fn verdict(p: &Probabilities) -> (String, BTreeMap<String, f32>) {
    let best = batcher::top1(p);
    let map = CLASSES
        .iter()
        .zip(p)
        .map(|(c, v)| (c.to_string(), *v))
        .collect();
    (CLASSES[best].to_owned(), map)
}

/// How the photo is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UploadKind {
    Multipart,
    Raw,
}

/// The upload's kind from its content type, before anything of the body is read.
fn upload_kind(parts: &Parts) -> Result<UploadKind, ApiError> {
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        Ok(UploadKind::Multipart)
    } else if content_type.starts_with("image/") || content_type == "application/octet-stream" {
        Ok(UploadKind::Raw)
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "send multipart/form-data with a field `image`, or a raw image/* body (got {content_type:?})"
            ),
        )
        .early())
    }
}

fn content_length(parts: &Parts) -> Option<u64> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The photo in a body already read: the body itself, or the multipart field `image`.
async fn image_bytes(kind: UploadKind, parts: Parts, body: Bytes) -> Result<Bytes, ApiError> {
    if kind == UploadKind::Raw {
        return Ok(body);
    }
    let req = Request::from_parts(parts, Body::from(body));
    let mut form = Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    // The form has one field, as its schema says (`additionalProperties: false`): another
    // one is a client sending something else than it means to.
    let mut image = None;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::new(e.status(), e.body_text()))?
    {
        if field.name() != Some("image") || image.is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "multipart form has a field {:?} besides the photo; send one field, `image`",
                    field.name().unwrap_or_default()
                ),
            ));
        }
        image = Some(
            field
                .bytes()
                .await
                .map_err(|e| ApiError::new(e.status(), e.body_text()))?,
        );
    }
    image.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "multipart form has no field named `image`",
        )
    })
}

/// Whether the request is still sending its body, for the request deadline: a client that is
/// slow to send gets 408, a request the server kept waiting gets 504.
#[derive(Debug, Clone, Default)]
struct ReadingBody(Arc<AtomicBool>);

/// The answer to a request admission turns away: 503 with a Retry-After of the expected
/// drain time (the v1 and v2 routes alike).
pub(crate) fn busy(admission: &Admission, rejection: Rejection) -> ApiError {
    tracing::debug!(?rejection, "turned away");
    ApiError::busy(match rejection {
        Rejection::Full => "too many uploads in progress; retry shortly".to_owned(),
        Rejection::TooLong { expected } => format!(
            "the server is saturated (about {} ms of work queued); retry shortly",
            expected.as_millis()
        ),
    })
    .retry_in(admission.drain_time())
}

/// Set when the request's future is dropped (timeout, client gone), so the blocking decode
/// stops at its next step instead of burning CPU for an answer nobody reads.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The number of faces in a prediction, for the access log.
#[derive(Debug, Clone, Copy)]
struct FaceCount(usize);

enum Prepared {
    Cancelled,
    Ready(Vec<FaceBox>, Vec<Vec<f32>>),
}

/// Classify the faces in a photo.
#[utoipa::path(
    post,
    path = "/v1/predict",
    request_body(
        description = "The photo, raw (Content-Type image/jpeg, image/png, image/webp, or application/octet-stream, whose format is sniffed) or as the multipart field `image`",
        content(
            (RawImage = "image/jpeg"),
            (RawImage = "image/png"),
            (RawImage = "image/webp"),
            (RawImage = "application/octet-stream"),
            (UploadForm = "multipart/form-data")
        )
    ),
    responses(
        (status = 200, description = "A verdict per face", body = Prediction),
        (status = 400, description = "Empty or malformed upload", body = ErrorBody),
        (status = 408, description = "The upload stalled: its body did not arrive within the body deadline", body = ErrorBody),
        (status = 413, description = "Upload over the byte limit (from Content-Length, before the body is read), or image over the pixel limit or pixel budget (from its header, before decoding)", body = ErrorBody),
        (status = 415, description = "Not a supported image or content type", body = ErrorBody),
        (status = 422, description = "Corrupt, truncated or oversized (per side) image", body = ErrorBody),
        (status = 500, description = "Inference failed", body = ErrorBody),
        (status = 503, description = "Model loading, server saturated, upload budget spent or draining; see Retry-After", body = ErrorBody),
        (status = 504, description = "The server could not answer within the request deadline", body = ErrorBody),
    )
)]
async fn predict(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let Some(loaded) = state.inner.loaded.get() else {
        return Err(ApiError::busy("the model is still loading").early());
    };
    let inner = &state.inner;
    let reading = req.extensions().get::<ReadingBody>().cloned();
    let (parts, body) = req.into_parts();
    // Refusals that need no body come first, so a big upload costs nothing to turn away.
    let kind = upload_kind(&parts)?;
    if let Some(len) = content_length(&parts)
        && len > inner.limits.max_body_bytes as u64
    {
        return Err(upload::too_large(
            inner.limits.max_body_bytes,
            format!("Content-Length {len}"),
        ));
    }
    // A pod already saturated refuses before receiving the body; the ticket itself is taken
    // once the body is in, so a slow sender never counts as work queued.
    inner
        .admission
        .check()
        .map_err(|r| busy(&inner.admission, r).early())?;
    if let Some(r) = &reading {
        r.0.store(true, Ordering::SeqCst);
    }
    let upload = upload::read(
        body,
        content_length(&parts),
        &inner.limits.body(),
        &inner.upload_bytes,
    )
    .await?;
    if let Some(r) = &reading {
        r.0.store(false, Ordering::SeqCst);
    }
    let reservation = upload.reservation;
    let bytes = image_bytes(kind, parts, upload.bytes).await?;
    // Held until the answer is ready, whatever path leads there. Decode slots are granted in
    // arrival order (tokio's semaphore is fair), so nobody is overtaken.
    let _ticket = inner
        .admission
        .try_admit()
        .map_err(|r| busy(&inner.admission, r))?;
    let pre = loaded.pre;
    let cost = pipeline::decoded_cost(&bytes, pre).unwrap_or(0);
    if cost > inner.limits.pixel_budget_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the image would take {cost} bytes decoded, over the {}-byte pixel budget; send a smaller photo",
                inner.limits.pixel_budget_bytes
            ),
        ));
    }
    let permit = inner
        .decodes
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::busy("shutting down"))?;
    // Reserved after the slot: whoever holds pixels is decoding, so waiting here never waits
    // on someone who waits for a slot.
    let pixels = inner
        .pixel_bytes
        .clone()
        .acquire_many_owned(u32::try_from(cost).unwrap_or(u32::MAX))
        .await
        .map_err(|_| ApiError::busy("shutting down"))?;
    let detector = inner.detector.clone();
    let cancelled = Arc::new(AtomicBool::new(false));
    let _cancel = CancelOnDrop(cancelled.clone());
    let prepared = tokio::task::spawn_blocking(move || -> Result<Prepared, ApiError> {
        let _held = (permit, pixels, reservation);
        let photo = pipeline::decode(&bytes, pre)?;
        drop(bytes);
        if cancelled.load(Ordering::SeqCst) {
            return Ok(Prepared::Cancelled);
        }
        let boxes = detector
            .detect(&photo)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        if cancelled.load(Ordering::SeqCst) {
            return Ok(Prepared::Cancelled);
        }
        // The same crops and fit the trainer trained and tested on (`pipeline`).
        let inputs = pipeline::model_inputs(&photo, &boxes, pre);
        Ok(Prepared::Ready(boxes, inputs))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .inspect_err(|e| {
        if e.status == StatusCode::INTERNAL_SERVER_ERROR {
            inner.health.failure(&e.message);
        }
    })?;
    let Prepared::Ready(boxes, inputs) = prepared else {
        return Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, "cancelled"));
    };
    // Decided before classifying, because the classifier consumes the inputs: only a sampled
    // request pays for a copy, and not even that under pressure (it would be dropped anyway).
    let shadow = state.inner.shadow.sample();
    let shadow_inputs = shadow
        .as_ref()
        .filter(|_| !state.inner.admission.under_pressure())
        .map(|_| inputs.clone());
    let classify_started = Instant::now();
    // Alone in the server (its own ticket the only one), the request may use every core.
    let probs = if state.inner.admission.in_flight() <= 1 {
        loaded.batcher.classify_alone(inputs).await
    } else {
        loaded.batcher.classify(inputs).await
    };
    let probs = probs.inspect(|_| inner.health.success()).inspect_err(|e| {
        if let BatchError::Failed(why) = e {
            inner.health.failure(why);
        }
    })?;
    let champion_time = classify_started.elapsed();
    let top: Vec<usize> = probs.iter().map(batcher::top1).collect();
    state.inner.verdicts.record(&top);
    let faces: Vec<Face> = boxes
        .iter()
        .zip(&probs)
        .map(|(b, p)| {
            let (character, probabilities) = verdict(p);
            Face {
                bbox: *b,
                character,
                probabilities,
            }
        })
        .collect();
    let (character, probabilities) = verdict(&probs[0]);
    let count = faces.len();
    let mut resp = Json(Prediction {
        character,
        probabilities,
        face_detected: !faces.is_empty(),
        faces,
        model: ModelRef {
            run_id: loaded.info.run_id.clone(),
            test_accuracy: loaded.info.test_accuracy,
        },
    })
    .into_response();
    resp.extensions_mut().insert(FaceCount(count));
    // Only now, with the answer built: the candidate never sees a request before the champion
    // answered it, and offering never waits.
    if let Some(candidate) = shadow {
        let job = shadow_inputs.map(|inputs| shadow::Job {
            inputs,
            champion: top,
            champion_time,
        });
        let pressure = state.inner.admission.under_pressure();
        candidate.offer(job, pressure, state.metrics());
    }
    Ok(resp)
}

/// The model in service.
#[utoipa::path(get, path = "/v1/model", responses((status = 200, body = ModelInfo), (status = 503, description = "Model loading", body = ErrorBody)))]
async fn model_info(State(state): State<AppState>) -> Result<Json<ModelInfo>, ApiError> {
    state
        .inner
        .loaded
        .get()
        .map(|l| Json(l.info.clone()))
        .ok_or_else(|| ApiError::busy("the model is still loading"))
}

/// The model card: which run is serving, its test and served accuracy, per-class recall,
/// confusion matrix, input pipeline, the decision that put it there and the last runs'
/// accuracies with their decisions (what the page shows under "About this model").
#[utoipa::path(get, path = "/v1/model/card", responses((status = 200, body = ModelCard), (status = 503, description = "Model loading", body = ErrorBody)))]
async fn model_card(State(state): State<AppState>) -> Result<Json<ModelCard>, ApiError> {
    let Some(loaded) = state.inner.loaded.get() else {
        return Err(ApiError::busy("the model is still loading"));
    };
    let mut card = loaded.info.card.as_ref().clone();
    if let Some(candidate) = state.inner.shadow.current() {
        card.shadow = Some(state.inner.shadow.card.get(&candidate).await);
    }
    Ok(Json(card))
}

/// Liveness: 200 while the process can serve; 503 once every model worker has died.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive"), (status = 503, description = "the model workers died; restart", body = ErrorBody)))]
async fn healthz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.is_alive() {
        Ok("ok")
    } else {
        Err(ApiError::busy("every model worker has stopped"))
    }
}

/// Readiness: 200 only once the model is loaded and warmed up, a worker is alive, its passes
/// succeed, and the server is not draining.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "ready"), (status = 503, description = "loading, dead, failing or draining", body = ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.inner.draining.load(Ordering::SeqCst) {
        return Err(ApiError::busy("draining"));
    }
    let Some(loaded) = state.inner.loaded.get() else {
        return Err(ApiError::busy("loading"));
    };
    if !state.is_alive() {
        return Err(ApiError::busy("every model worker has stopped"));
    }
    if state.inner.health.check().is_err() {
        probe(&state.inner.health, loaded).await;
    }
    state.inner.health.check().map_err(ApiError::busy)?;
    Ok("ready")
}

/// One pass on a blank input while readiness is red: a pod out of rotation gets no requests,
/// so this is how it finds out that the model works again.
async fn probe(health: &Health, loaded: &Loaded) {
    let size = loaded.info.image_size as usize;
    let pass = tokio::time::timeout(
        Duration::from_secs(2),
        loaded.batcher.classify(vec![vec![0.0; 3 * size * size]]),
    )
    .await;
    match pass {
        Ok(Ok(_)) => health.success(),
        Ok(Err(BatchError::Failed(why))) => health.failure(&why),
        Ok(Err(_)) | Err(_) => {}
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "OpenMetrics text")))]
async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    let admission = &state.inner.admission;
    let m = state.metrics();
    m.in_flight
        .set(i64::try_from(admission.in_flight()).unwrap_or(i64::MAX));
    m.request_cost
        .set(admission.per_request().map_or(0.0, |d| d.as_secs_f64()));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics().encode(),
    )
}

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "face2simpson inference",
        description = "Which Simpsons character does each face resemble? Every error is JSON `{\"error\": ...}`; every 503 carries Retry-After."
    ),
    paths(predict, model_info, model_card, healthz, readyz, metrics_handler),
    components(schemas(
        Prediction,
        Face,
        FaceBox,
        ModelRef,
        ModelInfo,
        ModelCard,
        card::ServedCard,
        card::PipelineCard,
        card::DecisionCard,
        card::HistoryPoint,
        card::ShadowCard,
        ErrorBody,
        UploadForm,
        RawImage
    )),
    modifiers(&OipPaths)
)]
pub struct ApiDoc;

/// The OpenAPI document served at `/openapi.json`: utoipa's, with the v2 request schemas
/// written out by hand (see `oip::install_request_schemas`).
pub fn openapi_document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    oip::install_request_schemas(&mut doc);
    // What utoipa cannot say: the form has one field, the photo (the handler refuses any
    // other), and a photo is at least one byte (an empty one is refused 400).
    if let Some(form) = doc.pointer_mut("/components/schemas/UploadForm") {
        form["additionalProperties"] = serde_json::Value::Bool(false);
        form["properties"]["image"]["minLength"] = 1.into();
    }
    if let Some(raw) = doc.pointer_mut("/components/schemas/RawImage") {
        raw["minLength"] = 1.into();
    }
    doc
}

async fn openapi() -> Json<serde_json::Value> {
    Json(openapi_document())
}

async fn page() -> Response {
    let mut resp = Html(PAGE).into_response();
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    resp
}

async fn not_found(State(state): State<AppState>, req: Request) -> ApiError {
    record(&state, "unmatched", StatusCode::NOT_FOUND, Duration::ZERO);
    let entry = access::Entry::of(&req);
    tracing::info!(
        request_id = entry.request_id,
        client = entry.client.map(tracing::field::display),
        method = %req.method(),
        route = "unmatched",
        path = %req.uri().path(),
        status = 404,
        "request"
    );
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {}", req.uri().path()),
    )
}

fn record(state: &AppState, route: &str, status: StatusCode, elapsed: Duration) {
    let m = state.metrics();
    m.requests
        .get_or_create(&RouteLabels {
            route: route.to_owned(),
            status: status.as_u16(),
        })
        .inc();
    m.latency
        .get_or_create(&RouteOnly {
            route: route.to_owned(),
        })
        .observe(elapsed.as_secs_f64());
}

/// Metrics and the access log: one structured line per request.
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = req.method().clone();
    let entry = access::Entry::of(&req);
    let start = Instant::now();
    let resp = next.run(req).await;
    let elapsed = start.elapsed();
    let faces = resp.extensions().get::<FaceCount>().map(|f| f.0);
    record(&state, &route, resp.status(), elapsed);
    tracing::info!(
        request_id = entry.request_id,
        client = entry.client.map(tracing::field::display),
        %method,
        route,
        status = resp.status().as_u16(),
        bytes_in = entry.bytes_in,
        bytes_out = access::bytes_out(&resp),
        latency_ms = elapsed.as_secs_f64() * 1e3,
        faces,
        "request"
    );
    resp
}

/// Headers every answer carries; predictions are personal and never cached.
async fn security_headers(req: Request, next: Next) -> Response {
    let is_predict = req.uri().path() == "/v1/predict";
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if is_predict {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// The request deadline: past it the handler's future is dropped (which cancels its blocking
/// work, see [`CancelOnDrop`]). The client gets a JSON 408 when it was still sending its body
/// (its fault), 504 when the server kept it waiting (ours).
async fn deadline(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let reading = ReadingBody::default();
    req.extensions_mut().insert(reading.clone());
    let limit = state.inner.limits.request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) if reading.0.load(Ordering::SeqCst) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the upload took longer than {} s to arrive",
                limit.as_secs_f64()
            ),
        )
        .early()
        .into_response(),
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the server could not answer within {} s; retry later",
                limit.as_secs_f64()
            ),
        )
        .into_response(),
    }
}

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    let limits = state.inner.limits;
    Router::new()
        .route("/", get(page))
        .route("/v1/predict", post(predict))
        .route("/v1/model", get(model_info))
        .route("/v1/model/card", get(model_card))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .route("/openapi.json", get(openapi))
        .merge(oip::routes())
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .route_layer(middleware::from_fn_with_state(state.clone(), deadline))
        .route_layer(middleware::from_fn_with_state(state.clone(), track))
        .fallback(not_found)
        .layer(middleware::from_fn(error::json_errors))
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn(access::request_id))
        .with_state(state)
}
