//! The access log's request id and sizes: [`request_id`] gives every request an id (the
//! client's `X-Request-Id` when it is sane, else a fresh one), so one line of the log, the
//! client's error report and a proxy's log can be joined; [`Entry`] gathers what `track` logs.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::HttpBody;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-supplied id kept; longer ones are replaced (they would bloat every line).
const MAX_ID_LEN: usize = 128;

/// The request's id, in its extensions from [`request_id`] on.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Ids from proxies and clients are UUIDs, hex or base64-ish tokens; anything else (spaces,
/// quotes, control characters) could forge or break log lines, so it is replaced.
fn sane(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b))
}

/// A fresh id: 64 bits from a randomly keyed hash of a counter (unique within the process,
/// unpredictable across processes), without a dependency for it.
fn fresh() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}", h.finish())
}

/// Tags the request with its id and echoes it in the response's `X-Request-Id`.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| sane(v))
        .map_or_else(fresh, str::to_owned);
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    resp
}

/// What the access log says about a request, taken before it is handled.
#[derive(Debug)]
pub struct Entry {
    pub request_id: Option<String>,
    /// The peer's address (a proxy's, behind one); absent for in-process calls.
    pub client: Option<SocketAddr>,
    /// The body's declared length; absent for chunked bodies.
    pub bytes_in: Option<u64>,
}

impl Entry {
    pub fn of(req: &Request) -> Self {
        Self {
            request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
            client: req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
            bytes_in: req.body().size_hint().exact(),
        }
    }
}

/// The response body's length, when known before it is sent (every JSON or page answer).
pub fn bytes_out(resp: &Response) -> Option<u64> {
    resp.body().size_hint().exact()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_only_when_sane() {
        assert!(sane("3f2a9c1e-7b1d-4a51-9f0e-1c2d3e4f5a6b"));
        assert!(sane("abc.DEF_123:4/5+6=7@x"));
        for bad in ["", "a b", "a\"b", "a\nb", "é", &"x".repeat(MAX_ID_LEN + 1)] {
            assert!(!sane(bad), "{bad:?}");
        }
    }

    #[test]
    fn fresh_ids_differ() {
        let a = fresh();
        assert_eq!(a.len(), 16);
        assert_ne!(a, fresh());
    }
}
