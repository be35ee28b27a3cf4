//! Polling with a deadline: the API server and controllers are eventually consistent.

use std::time::Duration;

use anyhow::Result;

/// Waits `interval` between polls of `check` until it returns `Some`, or fails after `timeout`
/// with `what` in the message.
pub async fn poll<T, F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            let detail = last_error
                .map(|e| format!(" (last error: {e:#})"))
                .unwrap_or_default();
            anyhow::bail!("timed out after {timeout:?} waiting for {what}{detail}");
        }
        tokio::time::sleep(interval).await;
    }
}
