//! A TCP proxy in front of the S3 store that a test can slow down or cut, as a real network
//! or a real store misbehaves: a model whose Secret names the proxy's endpoint sees exactly
//! that, everything else keeps the direct endpoint.
//!
//! It runs on its own thread and runtime, like the store, so it keeps its pace whatever the
//! test's thread is doing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// How the proxy treats traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Passes everything through.
    Open,
    /// Holds every chunk a client sends (a request) this long before passing it on: each
    /// request answers that much later.
    Slow(Duration),
    /// Closes every connection at once, open ones included: the store is unreachable.
    Down,
}

#[derive(Debug)]
struct Shared {
    mode: Mutex<Mode>,
    /// Bumped by every cut; open connections end when it changes.
    cuts: tokio::sync::watch::Sender<u64>,
    /// Connections accepted and closed at once while down.
    refused: AtomicU64,
}

impl Shared {
    fn mode(&self) -> Mode {
        *self
            .mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running proxy; it stops with the test process.
#[derive(Debug)]
pub struct StoreProxy {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    shared: Arc<Shared>,
}

impl StoreProxy {
    /// Proxies a free loopback port to `upstream` (`http://host:port`), open.
    pub fn start(upstream: &str) -> Result<Self> {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Open),
            cuts: tokio::sync::watch::channel(0).0,
            refused: AtomicU64::new(0),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let accepting = shared.clone();
        std::thread::Builder::new()
            .name("store-proxy".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    while let Ok((client, _)) = listener.accept().await {
                        tokio::spawn(serve(accepting.clone(), client, upstream));
                    }
                });
            })?;
        Ok(Self { endpoint, shared })
    }

    pub fn set(&self, mode: Mode) {
        *self
            .shared
            .mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = mode;
        if mode == Mode::Down {
            self.shared.cuts.send_modify(|n| *n += 1);
        }
    }

    /// Connections refused so far (each a client's attempt to reach the store while down).
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }
}

async fn serve(shared: Arc<Shared>, client: TcpStream, upstream: SocketAddr) {
    if shared.mode() == Mode::Down {
        shared.refused.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut cut = shared.cuts.subscribe();
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let requests = pump(client_read, server_write, Some(shared.clone()));
    let answers = pump(server_read, client_write, None);
    tokio::select! {
        _ = futures::future::join(requests, answers) => {}
        _ = cut.changed() => {}
    }
}

/// Copies `from` to `to` until either ends; with `slowed`, each chunk waits for the slow
/// mode's delay first.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    slowed: Option<Arc<Shared>>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        if let Some(Mode::Slow(delay)) = slowed.as_ref().map(|s| s.mode()) {
            tokio::time::sleep(delay).await;
        }
        to.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Instant;

    /// An upstream that answers every chunk it gets with "ok".
    async fn upstream() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(b"ok").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        format!("http://{addr}")
    }

    async fn ask(endpoint: &str) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(endpoint.trim_start_matches("http://")).await?;
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await?;
        Ok(buf.to_vec())
    }

    #[tokio::test]
    async fn open_slow_and_down() {
        let proxy = StoreProxy::start(&upstream().await).unwrap();
        assert_eq!(ask(&proxy.endpoint).await.unwrap(), b"ok");

        proxy.set(Mode::Slow(Duration::from_millis(300)));
        let t = Instant::now();
        assert_eq!(ask(&proxy.endpoint).await.unwrap(), b"ok");
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );

        // A connection open when the store goes down is cut too.
        proxy.set(Mode::Open);
        let mut open = TcpStream::connect(proxy.endpoint.trim_start_matches("http://"))
            .await
            .unwrap();
        open.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 2];
        open.read_exact(&mut buf).await.unwrap();
        proxy.set(Mode::Down);
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), open.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        assert!(ask(&proxy.endpoint).await.is_err());
        assert_eq!(proxy.refused(), 1);

        proxy.set(Mode::Open);
        assert_eq!(ask(&proxy.endpoint).await.unwrap(), b"ok");
    }
}
