//! `POST /v2/models/{name}[/versions/{version}]/infer`.
//!
//! A photo (`image`, BYTES) is handed to the `/v1/predict` handler itself, as a raw
//! `application/octet-stream` upload, so it gets the same admission, limits, decoding, face
//! detection, crops, batching and shadow sampling, and the same error statuses; its JSON answer
//! is then rewritten as tensors. Preprocessed faces (`tensor`, FP32) skip the photo pipeline
//! and go to the batcher under the same admission.

use std::collections::BTreeMap;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use model::CLASSES;
use pipeline::FaceBox;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::wire::{self, Elements, InferResponse, Output, Tensor};
use super::{IMAGE_INPUT, TENSOR_INPUT, resolve, version_of};
use crate::batcher::{self, Probabilities};
use crate::error::{ApiError, ErrorBody};
use crate::{AppState, FaceCount, Loaded};

/// `[F, 4]` FP32: class probabilities per face, in `model::CLASSES` order.
pub const PROBABILITIES: &str = "probabilities";
/// `[F]` BYTES: the most probable character per face.
pub const CHARACTER: &str = "character";
/// `[F, 4]` INT32: each face's box `x, y, w, h` in upright photo pixels; `-1`s for a row that
/// is the whole photo (no face found) or a preprocessed tensor.
pub const BOX: &str = "box";

/// One row per face classified.
struct Rows {
    probs: Vec<Probabilities>,
    boxes: Vec<Option<FaceBox>>,
    /// Photos only: false when no face was found and the whole photo is the one row.
    face_detected: Option<bool>,
}

/// Run inference on the model.
#[utoipa::path(post, path = "/v2/models/{name}/infer", tag = "v2",
    params(("name" = String, Path, description = "the model name, face2simpson by default")),
    request_body(
        description = "An inference request with one input: `image` (BYTES, shape [1], the photo as base64 in `data` or as binary data after the JSON header) or `tensor` (FP32, [N,3,S,S], preprocessed faces). With the binary data extension, the header `Inference-Header-Content-Length` gives the JSON's length.",
        content((wire::InferRequest = "application/json"), (wire::InferRequest = "application/octet-stream"))
    ),
    responses(
        (status = 200, description = "`probabilities` [F,4] FP32, `character` [F] BYTES, `box` [F,4] INT32; binary outputs follow the JSON header when asked for", body = wire::InferResponse),
        (status = 400, description = "The request is not of the form this document states (not JSON, not one `image` or `tensor` input, an unknown output), or the photo is empty", body = ErrorBody),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
        (status = 408, description = "The body did not arrive within the body deadline", body = ErrorBody),
        (status = 413, description = "Body over the byte limit, or photo over the pixel limit or pixel budget", body = ErrorBody),
        (status = 415, description = "The photo is not a supported image", body = ErrorBody),
        (status = 422, description = "Well formed but unusable: a corrupt, truncated or oversized image, a tensor whose data does not fill its shape or whose size is not the model's, binary data of another length than announced", body = ErrorBody),
        (status = 500, description = "Inference failed", body = ErrorBody),
        (status = 503, description = "Model loading, server busy or draining; see Retry-After", body = ErrorBody),
        (status = 504, description = "The server could not answer within the request deadline", body = ErrorBody),
    )
)]
pub(super) async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    run(state, &name, None, req).await
}

/// Run inference on one version of the model (only the champion's run id exists); as
/// `/v2/models/{name}/infer` otherwise.
#[utoipa::path(post, path = "/v2/models/{name}/versions/{version}/infer", tag = "v2",
    params(("name" = String, Path), ("version" = String, Path, description = "the champion's run id")),
    request_body(content((wire::InferRequest = "application/json"), (wire::InferRequest = "application/octet-stream"))),
    responses(
        (status = 200, body = wire::InferResponse),
        (status = 400, description = "The request is not of the form this document states", body = ErrorBody),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
        (status = 408, description = "The body did not arrive within the body deadline", body = ErrorBody),
        (status = 413, description = "Body over the byte limit, or photo over the pixel limit or pixel budget", body = ErrorBody),
        (status = 415, description = "The photo is not a supported image", body = ErrorBody),
        (status = 422, description = "Well formed but unusable", body = ErrorBody),
        (status = 500, description = "Inference failed", body = ErrorBody),
        (status = 503, description = "Model loading, server busy or draining", body = ErrorBody),
        (status = 504, description = "The server could not answer within the request deadline", body = ErrorBody),
    )
)]
pub(super) async fn infer_version(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    run(state, &name, Some(&version), req).await
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

async fn run(
    state: AppState,
    name: &str,
    version: Option<&str>,
    req: Request,
) -> Result<Response, ApiError> {
    let loaded = resolve(&state, name, version)?;
    // The photo is inside the body, so the body is read before `/v1/predict` admits it; a
    // saturated server still refuses before reading anything.
    state
        .inner
        .admission
        .check()
        .map_err(|r| crate::busy(&state.inner.admission, r))?;
    let headers = req.headers().clone();
    let extensions = req.extensions().clone();
    let limit = state.inner.limits.max_body_bytes;
    // The router's body limit applies (`DefaultBodyLimit`), with the same 413.
    let body = Bytes::from_request(req, &())
        .await
        .map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request over the {limit}-byte limit: {}", e.body_text()),
            ),
            s => ApiError::new(s, e.body_text()),
        })?;
    let (mut request, binary) = wire::split(&headers, body)?;
    let [input] = request.inputs.as_mut_slice() else {
        return Err(bad(format!(
            "send exactly one input, {IMAGE_INPUT:?} (BYTES) or {TENSOR_INPUT:?} (FP32)"
        )));
    };
    let elements = wire::elements(input, binary)?;
    let rows = match (input.name.as_str(), elements) {
        (IMAGE_INPUT, Elements::Bytes(photos)) => {
            photo(&state, &input.shape, photos, extensions).await?
        }
        (TENSOR_INPUT, Elements::Fp32(values)) => {
            tensors(&state, loaded, &input.shape, values).await?
        }
        (IMAGE_INPUT, _) => return Err(bad(format!("{IMAGE_INPUT:?} must be BYTES"))),
        (TENSOR_INPUT, _) => return Err(bad(format!("{TENSOR_INPUT:?} must be FP32"))),
        (other, _) => {
            return Err(bad(format!(
                "unknown input {other:?}; send {IMAGE_INPUT:?} (BYTES) or {TENSOR_INPUT:?} (FP32)"
            )));
        }
    };
    // Faces found, for the access log: none when the one row is the whole photo.
    let count = match rows.face_detected {
        Some(false) => 0,
        _ => rows.probs.len(),
    };
    let mut parameters = Map::new();
    if let Some(detected) = rows.face_detected {
        parameters.insert("face_detected".into(), Value::Bool(detected));
    }
    let outputs = wire::select(&request, outputs(rows))?;
    let head = InferResponse {
        model_name: state.model_name().to_owned(),
        model_version: version_of(loaded),
        id: request.id.clone(),
        parameters,
        outputs: Vec::new(),
    };
    let mut resp = wire::respond(head, outputs);
    resp.extensions_mut().insert(FaceCount(count));
    // Verdicts are personal, as on /v1/predict.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The tensors of an answer, in the order the model metadata lists them.
fn outputs(rows: Rows) -> Vec<Output> {
    let f = rows.probs.len();
    let characters = rows
        .probs
        .iter()
        .map(|p| CLASSES[batcher::top1(p)].to_owned())
        .collect();
    let boxes = rows
        .boxes
        .iter()
        .flat_map(|b| match b {
            Some(b) => [b.x, b.y, b.w, b.h].map(|v| i32::try_from(v).unwrap_or(i32::MAX)),
            None => [-1; 4],
        })
        .collect();
    let probs = rows.probs.iter().flatten().copied().collect();
    vec![
        Output {
            name: PROBABILITIES,
            shape: vec![f, CLASSES.len()],
            tensor: Tensor::Fp32(probs),
        },
        Output {
            name: CHARACTER,
            shape: vec![f],
            tensor: Tensor::Bytes(characters),
        },
        Output {
            name: BOX,
            shape: vec![f, 4],
            tensor: Tensor::Int32(boxes),
        },
    ]
}

/// The `/v1/predict` answer, as much of it as the tensors need.
#[derive(Deserialize)]
struct V1Prediction {
    probabilities: BTreeMap<String, f32>,
    face_detected: bool,
    faces: Vec<V1Face>,
}

#[derive(Deserialize)]
struct V1Face {
    #[serde(rename = "box")]
    bbox: FaceBox,
    probabilities: BTreeMap<String, f32>,
}

fn in_class_order(map: &BTreeMap<String, f32>) -> Result<Probabilities, ApiError> {
    let mut out = [0.0; CLASSES.len()];
    for (slot, class) in out.iter_mut().zip(CLASSES) {
        *slot = *map.get(class).ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("no probability for {class}"),
            )
        })?;
    }
    Ok(out)
}

/// Classifies a photo through the `/v1/predict` handler.
async fn photo(
    state: &AppState,
    shape: &[i64],
    mut photos: Vec<Vec<u8>>,
    extensions: axum::http::Extensions,
) -> Result<Rows, ApiError> {
    if shape != [1] {
        return Err(bad(format!(
            "{IMAGE_INPUT:?} is one photo: shape [1] (got {shape:?})"
        )));
    }
    // With JSON data the schema allows one element only; binary data may hold any number.
    if photos.len() != 1 {
        return Err(wire::unprocessable(format!(
            "{IMAGE_INPUT:?} is one photo, but its data holds {} elements",
            photos.len()
        )));
    }
    let photo = photos.pop().unwrap_or_default();
    let mut upload = Request::new(Body::from(photo));
    // The request's extensions carry the router's body limit, which the upload must obey too.
    *upload.extensions_mut() = extensions;
    upload.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    let resp = crate::predict(State(state.clone()), upload).await?;
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let v1: V1Prediction = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if v1.faces.is_empty() {
        return Ok(Rows {
            probs: vec![in_class_order(&v1.probabilities)?],
            boxes: vec![None],
            face_detected: Some(v1.face_detected),
        });
    }
    let probs = v1
        .faces
        .iter()
        .map(|f| in_class_order(&f.probabilities))
        .collect::<Result<_, _>>()?;
    Ok(Rows {
        probs,
        boxes: v1.faces.iter().map(|f| Some(f.bbox)).collect(),
        face_detected: Some(true),
    })
}

/// Classifies preprocessed faces `[N, 3, S, S]` directly.
async fn tensors(
    state: &AppState,
    loaded: &Loaded,
    shape: &[i64],
    values: Vec<f32>,
) -> Result<Rows, ApiError> {
    let s = i64::from(loaded.info.image_size);
    let (n, side) = match shape {
        [n, 3, h, w] if *n >= 1 && *h >= 1 && *w >= 1 => (*n, (*h, *w)),
        _ => {
            return Err(bad(format!(
                "{TENSOR_INPUT:?} must have shape [N, 3, S, S], N ≥ 1 (got {shape:?})"
            )));
        }
    };
    // Well formed from here; whether it fits this model is a matter of content.
    if side != (s, s) {
        return Err(wire::unprocessable(format!(
            "this model takes {s}×{s} inputs: {TENSOR_INPUT:?} must have shape [N, 3, {s}, {s}] (got {shape:?})"
        )));
    }
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    let per_face = 3 * (s * s) as usize;
    if n.checked_mul(per_face) != Some(values.len()) {
        return Err(wire::unprocessable(format!(
            "{TENSOR_INPUT:?} has {} elements, its shape {shape:?} says {n} × {per_face}",
            values.len(),
        )));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(bad(format!("{TENSOR_INPUT:?} holds NaN or infinity")));
    }
    let _ticket = state
        .inner
        .admission
        .try_admit()
        .map_err(|r| crate::busy(&state.inner.admission, r))?;
    let images = values.chunks_exact(per_face).map(<[f32]>::to_vec).collect();
    let probs = loaded.batcher.classify(images).await?;
    let top: Vec<usize> = probs.iter().map(batcher::top1).collect();
    state.inner.verdicts.record(&top);
    Ok(Rows {
        boxes: vec![None; probs.len()],
        probs,
        face_detected: None,
    })
}
