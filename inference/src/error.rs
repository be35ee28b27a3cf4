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

/// Seconds a client is told to wait after a 503 that says nothing better.
pub const RETRY_AFTER_SECS: u32 = 1;

/// An error answer: a status and `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Retry-After in whole seconds, when the server knows better than [`RETRY_AFTER_SECS`].
    pub retry_after: Option<u64>,
    /// Answer with `Connection: close`: the body was not read, and a client still sending it
    /// should see the connection end after this answer rather than a reset mid-upload on the
    /// next request.
    pub close: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
            close: false,
        }
    }

    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// A refusal before the body was read: the connection is closed after the answer.
    pub fn early(mut self) -> Self {
        self.close = true;
        self
    }

    /// Retry-After from the expected drain time, plus up to a quarter more so that clients
    /// turned away together do not all come back in the same second.
    pub fn retry_in(mut self, drain: std::time::Duration) -> Self {
        self.retry_after = Some(retry_after_secs(drain, jitter()));
        self
    }
}

/// Whole seconds (at least 1) for a drain time scaled by `1 + jitter` (jitter in 0..=0.25).
pub fn retry_after_secs(drain: std::time::Duration, jitter: f64) -> u64 {
    let secs = drain.as_secs_f64() * (1.0 + jitter.clamp(0.0, 0.25));
    (secs.ceil() as u64).max(1)
}

/// A cheap value in 0..0.25 that differs between calls; no need for a random generator.
fn jitter() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    (n >> 40) as f64 / (1u64 << 24) as f64 * 0.25
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

fn with_retry_after(mut resp: Response) -> Response {
    if resp.status() == StatusCode::SERVICE_UNAVAILABLE
        && !resp.headers().contains_key(header::RETRY_AFTER)
    {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    resp
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
        if self.close {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        with_retry_after(resp)
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
