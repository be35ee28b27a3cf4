//! face2simpson inference: an axum service and web page that say which Simpsons character each
//! face in a photo resembles. [`app`] builds the router; `main.rs` only parses flags, loads the
//! model in the background and serves.

pub mod batcher;
pub mod faces;
pub mod metrics;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use artifacts::{RunMetrics, Storage, layout};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Multipart, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use model::{CLASSES, Classifier, ImageError, Preprocessor};
use serde::Serialize;
use tower_http::timeout::TimeoutLayer;
use utoipa::{OpenApi, ToSchema};

use crate::batcher::{BatchConfig, BatchError, Batcher, Probabilities};
use crate::faces::{FaceBox, FaceDetector, crop_with_margin};
use crate::metrics::{Metrics, RouteLabels, RouteOnly};

const PAGE: &str = include_str!("page.html");

/// Limits that protect the service.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 10 << 20,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// What `/v1/model` reports about the loaded weights.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelInfo {
    pub uri: String,
    pub run_id: Option<String>,
    pub test_accuracy: Option<f64>,
    pub image_size: u32,
    pub classes: Vec<String>,
    /// The run's full metrics.json when it sits beside the weights.
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<RunMetrics>,
}

struct Loaded {
    batcher: Batcher,
    pre: Preprocessor,
    info: ModelInfo,
}

struct Inner {
    loaded: OnceLock<Loaded>,
    metrics: Arc<Metrics>,
    detector: FaceDetector,
    limits: Limits,
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

/// Why loading a model failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid MODEL_URI {0:?}: expected a URL or path ending in a weights file")]
    Uri(String),
    #[error(transparent)]
    Storage(#[from] artifacts::StorageError),
    #[error("cannot load weights from {uri}: {source}")]
    Weights {
        uri: String,
        source: model::WeightsError,
    },
    #[error("warm-up inference failed: {0}")]
    WarmUp(String),
}

impl AppState {
    pub fn new(limits: Limits) -> Self {
        Self {
            inner: Arc::new(Inner {
                loaded: OnceLock::new(),
                metrics: Arc::new(Metrics::default()),
                detector: FaceDetector::bundled(),
                limits,
            }),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.inner.loaded.get().is_some()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Puts a loaded, warmed-up model into service.
    pub fn install(&self, net: Classifier, info: ModelInfo, batch: BatchConfig) {
        let pre = Preprocessor::new(info.image_size);
        let batcher = Batcher::spawn(net, info.image_size, batch, self.inner.metrics.clone());
        let _ = self.inner.loaded.set(Loaded { batcher, pre, info });
    }
}

/// Fetches weights (and `metrics.json` beside them, when present) from any store URL, loads
/// them and runs one warm-up inference. `image_size` is used when no metrics say otherwise.
pub async fn load_model(
    uri: &str,
    device: tch::Device,
    image_size: u32,
) -> Result<(Classifier, ModelInfo), LoadError> {
    let (dir, file) = uri
        .trim_end_matches('/')
        .rsplit_once('/')
        .ok_or_else(|| LoadError::Uri(uri.to_owned()))?;
    if file.is_empty() || dir.is_empty() {
        return Err(LoadError::Uri(uri.to_owned()));
    }
    let storage = Storage::open(dir)?;
    let weights = storage.get(file).await?;
    let metrics_key = layout::metrics_beside(file);
    let metrics = match storage.get(&metrics_key).await {
        Ok(bytes) => match RunMetrics::from_json(&bytes) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(key = %storage.url_of(&metrics_key), error = %e, "ignoring malformed metrics.json");
                None
            }
        },
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e.into()),
    };
    let image_size = metrics
        .as_ref()
        .map_or(image_size, |m| m.hyperparameters.image_size);
    let info = ModelInfo {
        uri: uri.to_owned(),
        run_id: metrics.as_ref().map(|m| m.run_id.clone()),
        test_accuracy: metrics.as_ref().map(|m| m.test_accuracy),
        image_size,
        classes: CLASSES.iter().map(|c| c.to_string()).collect(),
        metrics,
    };
    let uri_owned = uri.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut net = Classifier::new(device, 0.0);
        net.load_weights(&weights)
            .map_err(|source| LoadError::Weights {
                uri: uri_owned,
                source,
            })?;
        // Warm-up: the first forward pass allocates; pay for it before /readyz says yes.
        let s = i64::from(image_size);
        let x = tch::Tensor::zeros([1, 3, s, s], (tch::Kind::Float, device));
        let p = net.predict(&x);
        if p.size() != [1, CLASSES.len() as i64] {
            return Err(LoadError::WarmUp(format!(
                "unexpected output shape {:?}",
                p.size()
            )));
        }
        Ok((net, info))
    })
    .await
    .map_err(|e| LoadError::WarmUp(e.to_string()))?
}

/// An error answer: a status and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        let status = match e {
            ImageError::Empty => StatusCode::BAD_REQUEST,
            ImageError::NotAnImage => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ImageError::TooManyBytes(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ImageError::TooLarge { .. } | ImageError::Corrupt(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::Busy => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: e.to_string(),
                retry_after: Some(1),
            },
            BatchError::Closed => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            BatchError::Failed(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
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
    /// One verdict per detected face, largest first.
    pub faces: Vec<Face>,
    pub model: ModelRef,
}

fn verdict(p: &Probabilities) -> (String, BTreeMap<String, f32>) {
    let best = p
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i);
    let map = CLASSES
        .iter()
        .zip(p)
        .map(|(c, v)| (c.to_string(), *v))
        .collect();
    (CLASSES[best].to_owned(), map)
}

/// Reads the upload: a multipart field `image`, or a raw body with an image content type.
async fn upload(state: &AppState, req: Request) -> Result<Bytes, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let too_large = |e: &dyn std::fmt::Display| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "upload over the {}-byte limit: {e}",
                state.inner.limits.max_body_bytes
            ),
        )
    };
    if content_type.starts_with("multipart/form-data") {
        let mut form = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
        while let Some(field) = form.next_field().await.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => too_large(&e),
            s => ApiError::new(s, e.body_text()),
        })? {
            if field.name() == Some("image") {
                return field.bytes().await.map_err(|e| match e.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => too_large(&e),
                    s => ApiError::new(s, e.body_text()),
                });
            }
        }
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "multipart form has no field named `image`",
        ));
    }
    if content_type.starts_with("image/") || content_type == "application/octet-stream" {
        return Bytes::from_request(req, &())
            .await
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => too_large(&e),
                s => ApiError::new(s, e.body_text()),
            });
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!(
            "send multipart/form-data with a field `image`, or a raw image/* body (got {content_type:?})"
        ),
    ))
}

/// Classify the faces in a photo.
#[utoipa::path(
    post,
    path = "/v1/predict",
    request_body(
        description = "The photo, raw or as a multipart field `image`",
        content((Vec<u8> = "image/jpeg"), (Vec<u8> = "image/png"), (Vec<u8> = "image/webp"), (Vec<u8> = "multipart/form-data"))
    ),
    responses(
        (status = 200, description = "A verdict per face", body = Prediction),
        (status = 400, description = "Empty or malformed upload", body = ErrorBody),
        (status = 413, description = "Upload too large", body = ErrorBody),
        (status = 415, description = "Not a supported image", body = ErrorBody),
        (status = 422, description = "Corrupt, truncated or oversized image", body = ErrorBody),
        (status = 503, description = "Model not loaded yet, or queue full (see Retry-After)", body = ErrorBody),
    )
)]
async fn predict(
    State(state): State<AppState>,
    req: Request,
) -> Result<Json<Prediction>, ApiError> {
    let Some(loaded) = state.inner.loaded.get() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the model is still loading",
        ));
    };
    let bytes = upload(&state, req).await?;
    let pre = loaded.pre;
    let detector = state.inner.detector.clone();
    let (boxes, inputs) = tokio::task::spawn_blocking(move || -> Result<_, ImageError> {
        let img = model::decode(&bytes)?;
        let boxes = detector.detect(&img);
        let inputs: Vec<Vec<f32>> = if boxes.is_empty() {
            vec![pre.eval(&pre.fit(&img))]
        } else {
            boxes
                .iter()
                .map(|b| pre.eval(&pre.fit(&crop_with_margin(&img, *b))))
                .collect()
        };
        Ok((boxes, inputs))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let probs = loaded.batcher.classify(inputs).await?;
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
    Ok(Json(Prediction {
        character,
        probabilities,
        face_detected: !faces.is_empty(),
        faces,
        model: ModelRef {
            run_id: loaded.info.run_id.clone(),
            test_accuracy: loaded.info.test_accuracy,
        },
    }))
}

/// The model in service.
#[utoipa::path(get, path = "/v1/model", responses((status = 200, body = ModelInfo), (status = 503, body = ErrorBody)))]
async fn model_info(State(state): State<AppState>) -> Result<Json<ModelInfo>, ApiError> {
    state
        .inner
        .loaded
        .get()
        .map(|l| Json(l.info.clone()))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the model is still loading",
            )
        })
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: 200 only once the model is loaded and warmed up.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "ready"), (status = 503, description = "loading")))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading")
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "OpenMetrics text")))]
async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
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
        description = "Which Simpsons character does each face resemble?"
    ),
    paths(predict, model_info, healthz, readyz, metrics_handler),
    components(schemas(Prediction, Face, FaceBox, ModelRef, ModelInfo, ErrorBody))
)]
pub struct ApiDoc;

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let start = Instant::now();
    let resp = next.run(req).await;
    let m = state.metrics();
    m.requests
        .get_or_create(&RouteLabels {
            route: route.clone(),
            status: resp.status().as_u16(),
        })
        .inc();
    m.latency
        .get_or_create(&RouteOnly { route })
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    let limits = state.inner.limits;
    Router::new()
        .route("/", get(page))
        .route("/v1/predict", post(predict))
        .route("/v1/model", get(model_info))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .route("/openapi.json", get(openapi))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}
