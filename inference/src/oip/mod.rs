//! The Open Inference Protocol (KServe v2 REST), beside the service's own `/v1` API, so that
//! generic clients (tritonclient, KServe tooling, load generators) can call the model.
//!
//! One model is served, under the name `--model-name` (default [`DEFAULT_MODEL_NAME`]), with
//! one version: the champion's run id. A photo sent as a `BYTES` input goes through exactly the
//! `/v1/predict` handler (admission, limits, decode, orientation, detection, crops, fit,
//! batching, shadow sampling); an `FP32` tensor of preprocessed faces goes straight to the
//! batcher. Errors are `{"error": ...}`, which is already the protocol's error body.

mod infer;
mod schema;
pub mod wire;

pub use schema::install as install_request_schemas;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::error::{ApiError, ErrorBody};
use crate::{AppState, Loaded};

/// The model name the v2 routes answer to unless `--model-name` says otherwise.
pub const DEFAULT_MODEL_NAME: &str = "face2simpson";
/// The BYTES input: one photo.
pub const IMAGE_INPUT: &str = "image";
/// The FP32 input: faces already cropped, fitted and normalised, `[N, 3, S, S]`.
pub const TENSOR_INPUT: &str = "tensor";

impl AppState {
    /// Names the model on the v2 routes; the first call wins (set it before serving).
    pub fn set_model_name(&self, name: impl Into<String>) {
        let _ = self.inner.model_name.set(name.into());
    }

    /// The model name on the v2 routes.
    pub fn model_name(&self) -> &str {
        self.inner
            .model_name
            .get()
            .map_or(DEFAULT_MODEL_NAME, String::as_str)
    }
}

/// The v2 routes, registered by [`crate::app`] beside `/v1`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer::infer))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(version_metadata),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(version_ready),
        )
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(infer::infer_version),
        )
}

/// The loaded model, if `name` (and `version`, when given) names it: unknown → 404, still
/// loading → 503.
fn resolve<'a>(
    state: &'a AppState,
    name: &str,
    version: Option<&str>,
) -> Result<&'a Loaded, ApiError> {
    if name != state.model_name() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "unknown model {name:?}; this server serves {:?}",
                state.model_name()
            ),
        ));
    }
    let loaded = state
        .inner
        .loaded
        .get()
        .ok_or_else(|| ApiError::busy("the model is still loading"))?;
    let current = version_of(loaded);
    match version {
        Some(v) if v != current => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("model {name:?} has no version {v:?}; it serves {current:?}"),
        )),
        _ => Ok(loaded),
    }
}

/// The model version: the champion's run id ("unknown" for a model without one).
fn version_of(loaded: &Loaded) -> String {
    loaded
        .info
        .run_id
        .clone()
        .unwrap_or_else(|| "unknown".into())
}

/// Server metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: Vec<&'static str>,
}

/// A tensor's name, type and shape (-1: any length).
#[derive(Debug, Serialize, ToSchema)]
pub struct TensorMetadata {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

/// Model metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: &'static str,
    /// Send exactly one of them: `image` (a photo) or `tensor` (preprocessed faces).
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// Server metadata.
#[utoipa::path(get, path = "/v2", tag = "v2", responses((status = 200, body = ServerMetadata)))]
async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "face2simpson-inference",
        version: env!("CARGO_PKG_VERSION"),
        extensions: vec!["binary_tensor_data"],
    })
}

/// Server liveness: as `/healthz`.
#[utoipa::path(get, path = "/v2/health/live", tag = "v2", responses((status = 200, description = "alive"), (status = 503, body = ErrorBody)))]
async fn live(State(state): State<AppState>) -> Result<StatusCode, ApiError> {
    if state.is_alive() {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::busy("every model worker has stopped"))
    }
}

/// Server readiness: as `/readyz`.
#[utoipa::path(get, path = "/v2/health/ready", tag = "v2", responses((status = 200, description = "ready"), (status = 503, body = ErrorBody)))]
async fn ready(State(state): State<AppState>) -> Result<StatusCode, ApiError> {
    if state.is_ready() {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::busy("not ready"))
    }
}

fn metadata(state: &AppState, loaded: &Loaded) -> ModelMetadata {
    let size = i64::from(loaded.info.image_size);
    let tensor = |name, datatype, shape| TensorMetadata {
        name,
        datatype,
        shape,
    };
    ModelMetadata {
        name: state.model_name().to_owned(),
        versions: vec![version_of(loaded)],
        platform: "onnxruntime",
        inputs: vec![
            tensor(IMAGE_INPUT, "BYTES", vec![1]),
            tensor(TENSOR_INPUT, "FP32", vec![-1, 3, size, size]),
        ],
        outputs: vec![
            tensor(infer::PROBABILITIES, "FP32", vec![-1, 4]),
            tensor(infer::CHARACTER, "BYTES", vec![-1]),
            tensor(infer::BOX, "INT32", vec![-1, 4]),
        ],
    }
}

/// Model metadata: its versions (the champion's run id), inputs and outputs.
#[utoipa::path(get, path = "/v2/models/{name}", tag = "v2",
    params(("name" = String, Path, description = "the model name, face2simpson by default")),
    responses((status = 200, body = ModelMetadata), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn model_metadata(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ModelMetadata>, ApiError> {
    let loaded = resolve(&state, &name, None)?;
    Ok(Json(metadata(&state, loaded)))
}

/// Model metadata for one version (only the champion's run id exists).
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}", tag = "v2",
    params(("name" = String, Path), ("version" = String, Path, description = "the champion's run id")),
    responses((status = 200, body = ModelMetadata), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn version_metadata(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<ModelMetadata>, ApiError> {
    let loaded = resolve(&state, &name, Some(&version))?;
    Ok(Json(metadata(&state, loaded)))
}

fn model_is_ready(
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<StatusCode, ApiError> {
    resolve(state, name, version)?;
    if state.is_ready() {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::busy("not ready"))
    }
}

/// Model readiness: 200 when the model answers inference requests.
#[utoipa::path(get, path = "/v2/models/{name}/ready", tag = "v2",
    params(("name" = String, Path)),
    responses((status = 200, description = "ready"), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn model_ready(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    model_is_ready(&state, &name, None)
}

/// Readiness of one model version.
#[utoipa::path(get, path = "/v2/models/{name}/versions/{version}/ready", tag = "v2",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 200, description = "ready"), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn version_ready(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    model_is_ready(&state, &name, Some(&version))
}

/// The v2 part of the OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(
    paths(
        server_metadata,
        live,
        ready,
        model_metadata,
        version_metadata,
        model_ready,
        version_ready,
        infer::infer,
        infer::infer_version
    ),
    components(schemas(
        ServerMetadata,
        TensorMetadata,
        ModelMetadata,
        wire::InferRequest,
        wire::RequestInput,
        wire::RequestOutput,
        wire::InferResponse,
        wire::ResponseOutput
    ))
)]
struct OipDoc;

/// Adds the v2 routes to [`crate::ApiDoc`].
#[derive(Debug)]
pub struct OipPaths;

impl utoipa::Modify for OipPaths {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi.merge(OipDoc::openapi());
    }
}
