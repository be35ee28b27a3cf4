//! Reading an upload, apart from decoding it, under budgets of its own.
//!
//! A body arrives at the client's pace. While a decode slot was held for the whole read, two
//! clients sending a byte a second blocked every prediction on a two-core pod. Now the body is
//! read first, with no decode slot and no admission ticket, and what a read may cost is bounded
//! separately:
//!
//! * bytes: every body in flight holds a reservation on one byte budget (from its
//!   Content-Length when given, else grown as chunks arrive) until its decode ends; a body
//!   that does not fit is turned away (503) instead of waiting;
//! * time: a body must arrive within `body_timeout` plus its length at `min_body_rate`;
//!   one that stalls gets 408, the only 408 the service answers.
//!
//! The decoded size is bounded too: `pipeline::decoded_cost` reads it from the image header
//! (at the size the photo will be decoded to), and the request reserves it on the pixel budget
//! before it decodes (see `predict`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::ApiError;

/// How bodies are read.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body.
    pub max_bytes: usize,
    /// Time every body gets, whatever its size.
    pub timeout: Duration,
    /// Bytes per second a body must keep up beyond `timeout`; 0: `timeout` is all it gets.
    pub min_rate: u64,
}

impl BodyLimits {
    /// When a body of `len` bytes must have arrived, counted from `start`.
    fn deadline(&self, start: Instant, len: u64) -> Instant {
        let extra = if self.min_rate == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(len as f64 / self.min_rate as f64)
        };
        start + self.timeout + extra
    }
}

/// A body read in full, and its share of the byte budget (held until the decode ends).
#[derive(Debug)]
pub struct Upload {
    pub bytes: Bytes,
    pub reservation: Option<OwnedSemaphorePermit>,
}

pub fn too_large(limit: usize, got: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("upload over the {limit}-byte limit ({got})"),
    )
    .early()
}

fn out_of_budget() -> ApiError {
    ApiError::busy("too many uploads are being received; retry shortly")
        .early()
        .retry_in(Duration::from_secs(1))
}

/// Adds `n` bytes to `held`, or says the budget is spent.
fn reserve(
    budget: &Arc<Semaphore>,
    held: &mut Option<OwnedSemaphorePermit>,
    n: usize,
) -> Result<(), ApiError> {
    if n == 0 {
        return Ok(());
    }
    let n = u32::try_from(n).map_err(|_| out_of_budget())?;
    let permit = budget
        .clone()
        .try_acquire_many_owned(n)
        .map_err(|_| out_of_budget())?;
    match held {
        Some(h) => h.merge(permit),
        None => *held = Some(permit),
    }
    Ok(())
}

/// Reads `body` in full within `limits`, reserving its bytes on `budget`.
pub async fn read(
    body: Body,
    content_length: Option<u64>,
    limits: &BodyLimits,
    budget: &Arc<Semaphore>,
) -> Result<Upload, ApiError> {
    let mut held = None;
    if let Some(len) = content_length {
        if len > limits.max_bytes as u64 {
            return Err(too_large(limits.max_bytes, format!("{len} bytes")));
        }
        reserve(budget, &mut held, len as usize)?;
    }
    let start = Instant::now();
    let mut body = body;
    let mut buf = Vec::with_capacity(content_length.unwrap_or(0) as usize);
    loop {
        let expected = content_length.unwrap_or(buf.len() as u64);
        let deadline = limits.deadline(start, expected);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the upload stalled: {} bytes in {:.1} s",
                        buf.len(),
                        start.elapsed().as_secs_f64()
                    ),
                )
                .early());
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("reading the upload: {e}"),
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > limits.max_bytes {
            return Err(too_large(limits.max_bytes, "more was sent"));
        }
        let reserved = held.as_ref().map_or(0, |h| h.num_permits());
        reserve(
            budget,
            &mut held,
            (buf.len() + data.len()).saturating_sub(reserved),
        )?;
        buf.extend_from_slice(&data);
    }
    Ok(Upload {
        bytes: Bytes::from(buf),
        reservation: held,
    })
}
