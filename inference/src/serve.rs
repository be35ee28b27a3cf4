//! The HTTP server around [`crate::app`], with the limits `axum::serve` does not offer:
//!
//! * a header-read timeout, so a client that opens a connection and trickles (or never sends)
//!   its headers is dropped instead of holding a socket — and a shutdown — forever;
//! * a connection cap: past it, new connections wait in the kernel's backlog;
//! * a drain phase on shutdown: /readyz turns 503 while requests are still served, so load
//!   balancers stop sending; then the listener closes and open connections get a deadline to
//!   finish, after which the process exits regardless.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::AppState;

#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    /// Time a client has to send its request headers.
    pub header_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// How long /readyz reports 503 before the listener closes.
    pub drain: Duration,
    /// How long open connections get to finish once the listener is closed.
    pub shutdown_deadline: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            drain: Duration::from_secs(5),
            shutdown_deadline: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains and stops.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    state: AppState,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    builder.http2().timer(TokioTimer::new());

    tokio::pin!(shutdown);
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        let drain_over = async move {
            match drain_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(drain_over);
        // Wait for a free connection slot, then for a connection; the shutdown signal and the
        // end of the drain phase interrupt either wait.
        let next = async {
            let permit = connections.clone().acquire_owned().await;
            (permit, listener.accept().await)
        };
        let (permit, accepted) = tokio::select! {
            () = &mut shutdown, if drain_until.is_none() => {
                tracing::info!(drain_secs = config.drain.as_secs_f64(), "draining: /readyz now answers 503");
                state.start_draining();
                drain_until = Some(tokio::time::Instant::now() + config.drain);
                continue;
            }
            () = &mut drain_over => break,
            next = next => next,
        };
        let Ok(permit) = permit else { break };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // The connection's requests carry the client's address, for the access log.
        let service =
            TowerToHyperService::new(app.clone().map_request(move |mut req: Request<_>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            }));
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!(
        deadline_secs = config.shutdown_deadline.as_secs_f64(),
        "listener closed; waiting for open connections"
    );
    if tokio::time::timeout(config.shutdown_deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open at the shutdown deadline; closing them");
    }
    Ok(())
}
