//! Every error answer is `{"error": "..."}` with the documented status, whoever produced it:
//! our handlers through [`ApiError`], and axum's or tower's own rejections (404, 405, 408, 413)
//! through [`json_errors`], which rewrites any non-JSON error body. Every 503 says when to retry.

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use model::ImageError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::batcher::BatchError;

/// Seconds a client is told to wait after a 503.
pub const RETRY_AFTER_SECS: u32 = 1;

/// An error answer: a status and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

fn with_retry_after(mut resp: Response) -> Response {
    if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        with_retry_after(
            (
                self.status,
                Json(ErrorBody {
                    error: self.message,
                }),
            )
                .into_response(),
        )
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        let status = match e {
            ImageError::Empty => StatusCode::BAD_REQUEST,
            ImageError::NotAnImage => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ImageError::TooManyBytes(_) | ImageError::TooManyPixels { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
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
            BatchError::Busy | BatchError::Closed => ApiError::busy(e.to_string()),
            BatchError::Failed(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

/// Rewrites error answers that are not JSON (axum's plain-text rejections, the empty 404 of an
/// unknown path, the empty 408 of the timeout layer) into `{"error": ...}`, keeping the status,
/// and adds Retry-After to every 503.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return with_retry_after(resp);
    }
    let (parts, body) = resp.into_parts();
    // Rejection texts are short; anything unreadable falls back to the status' reason.
    let text = axum::body::to_bytes(body, 16 << 10)
        .await
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("error")
                .to_ascii_lowercase()
        });
    let mut out = ApiError::new(status, text).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    with_retry_after(out)
}
