//! The server's own limits, over real sockets: slow headers are cut off, and a shutdown drains
//! (/readyz 503 while still serving) and then ends by its deadline even with a stalled client.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{limits, ready_state};
use face2simpson_inference::app;
use face2simpson_inference::serve::{ServeConfig, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn status_of(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_and_shutdown_drains_then_ends_by_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let state = ready_state(dir.path(), limits()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServeConfig {
        header_timeout: Duration::from_millis(500),
        max_connections: 64,
        drain: Duration::from_millis(800),
        shutdown_deadline: Duration::from_millis(800),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, app(state.clone()), state, config, async {
        let _ = stop_rx.await;
    }));
    assert_eq!(status_of(addr, "/readyz").await, Some(200));

    // A client that sends half a request line and then nothing is disconnected.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /readyz HTTP/1.1\r\nHo").await.unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
        .await
        .expect("the slow client was never cut off")
        .unwrap_or(0);
    assert!(start.elapsed() < Duration::from_secs(3));
    let _ = n;

    // A client stuck mid-body holds a connection through the shutdown.
    let mut stuck = TcpStream::connect(addr).await.unwrap();
    stuck
        .write_all(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n\x89PNG")
        .await
        .unwrap();

    let stop = Instant::now();
    stop_tx.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Draining: still answering, but no longer ready.
    assert_eq!(status_of(addr, "/readyz").await, Some(503));
    assert_eq!(status_of(addr, "/healthz").await, Some(200));
    // Then the listener closes and the stuck connection is given up at the deadline.
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server did not stop by its deadline")
        .unwrap()
        .unwrap();
    let took = stop.elapsed();
    assert!(
        took >= Duration::from_millis(800),
        "no drain phase: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    drop(stuck);
}
