//! `face2simpson-inference`: serve the champion over HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use face2simpson_inference::serve::{ServeConfig, serve};
use face2simpson_inference::{
    AppState, BatchConfig, DEFAULT_MAX_QUEUE_WAIT_MS, Limits, RuntimeConfig, app, load_detector,
    load_model,
};
use tracing_subscriber::EnvFilter;

// mimalloc hands freed pages back to the OS; glibc's per-thread arenas kept a burst of large
// decodes resident long after it ended.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[derive(Debug, Parser)]
#[command(
    name = "face2simpson-inference",
    version,
    about = "Say which Simpsons character each face in a photo resembles"
)]
struct Cli {
    /// The run's weights, s3://bucket/runs/<id>/model.safetensors, file:///…, or a local path.
    /// The service runs the ONNX export beside it (runs/<id>/model.onnx); a URI naming the
    /// .onnx file itself works too.
    #[arg(long, env = "MODEL_URI")]
    model: String,
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// ONNX Runtime's shared library (libonnxruntime.so.1.32.0; `make setup` fetches it).
    #[arg(long, env = "ORT_DYLIB_PATH", default_value = "libonnxruntime.so")]
    ort_library: PathBuf,
    /// BlazeFace face detector (ONNX; `make setup` fetches it).
    #[arg(
        long,
        env = "FACE_DETECTOR",
        default_value = "face_detection_front_128x128.onnx"
    )]
    face_detector: PathBuf,
    /// Input size when the run's metrics.json does not say (it normally does).
    #[arg(long, env = "IMAGE_SIZE", default_value_t = 224)]
    image_size: u32,
    /// Model sessions, each on its own thread, sharing the batch queue.
    #[arg(long, env = "MODEL_WORKERS", default_value_t = 1)]
    workers: usize,
    /// Intra-op threads per model session (default: all cores).
    #[arg(long, env = "MODEL_THREADS")]
    threads: Option<usize>,
    /// Most images per forward pass; larger requests are split.
    #[arg(long, env = "MAX_BATCH", default_value_t = 8)]
    max_batch: usize,
    /// Milliseconds the first request of a batch waits for others.
    #[arg(long, env = "MAX_WAIT_MS", default_value_t = 2)]
    max_wait_ms: u64,
    /// Requests queued for the model at most; more get 503 with Retry-After.
    #[arg(long, env = "QUEUE_CAPACITY", default_value_t = 64)]
    queue_capacity: usize,
    /// Uploads decoded at once (default: the number of cores); more wait (see
    /// --max-waiting), their bodies unread.
    #[arg(long, env = "MAX_DECODES")]
    max_decodes: Option<usize>,
    /// Uploads that may wait for a decode slot (bodies unread) at most; more get 503 at once.
    #[arg(long, env = "MAX_WAITING_UPLOADS", default_value_t = 64)]
    max_waiting: usize,
    /// Milliseconds the requests in flight may take to drain (measured time per request ×
    /// requests in flight) for a new upload to be admitted; beyond that it gets 503 with
    /// Retry-After at once. 0 turns this limit off (only the counts apply).
    #[arg(long, env = "MAX_QUEUE_WAIT_MS", default_value_t = DEFAULT_MAX_QUEUE_WAIT_MS)]
    max_queue_wait_ms: u64,
    /// Faces classified per image at most, the largest first.
    #[arg(long, env = "MAX_FACES", default_value_t = 8)]
    max_faces: usize,
    /// Largest accepted upload in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 10 << 20)]
    max_body_bytes: usize,
    /// Seconds a request may take before it is answered 408 (and its work cancelled).
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    request_timeout_secs: u64,
    /// Seconds a client has to send its request headers.
    #[arg(long, env = "HEADER_TIMEOUT_SECS", default_value_t = 10)]
    header_timeout_secs: u64,
    /// Open connections at most.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// Seconds /readyz answers 503 after SIGTERM before the listener closes.
    #[arg(long, env = "DRAIN_SECS", default_value_t = 5)]
    drain_secs: u64,
    /// Seconds open connections get to finish after the listener closed.
    #[arg(long, env = "SHUTDOWN_DEADLINE_SECS", default_value_t = 10)]
    shutdown_deadline_secs: u64,
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
    tracing::info!("shutdown requested");
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    if cli.log_format == "json" {
        fmt.json().init()
    } else {
        fmt.init()
    }
    let max_decodes = cli.max_decodes.unwrap_or_else(cores).max(1);
    // Blocking threads only ever run admitted decodes (and file reads): no thread explosion
    // under a burst.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(max_decodes + 4)
        .build()?
        .block_on(run(cli, max_decodes))
}

async fn run(cli: Cli, max_decodes: usize) -> Result<()> {
    let limits = Limits {
        max_body_bytes: cli.max_body_bytes,
        request_timeout: Duration::from_secs(cli.request_timeout_secs),
        max_decodes,
        max_waiting: cli.max_waiting,
        max_queue_wait: (cli.max_queue_wait_ms > 0)
            .then(|| Duration::from_millis(cli.max_queue_wait_ms)),
    };
    let batch = BatchConfig {
        max_batch: cli.max_batch.max(1),
        max_wait: Duration::from_millis(cli.max_wait_ms),
        queue_capacity: cli.queue_capacity.max(1),
    };
    let runtime = RuntimeConfig {
        library: cli.ort_library.clone(),
        workers: cli.workers.max(1),
        threads: cli.threads.unwrap_or_else(cores).max(1),
    };
    // The detector is small and local: load it before listening, so a bad path fails at once.
    let detector = load_detector(
        &runtime.library,
        &cli.face_detector,
        max_decodes,
        cli.max_faces,
    )
    .context("loading the face detector")?;
    let state = AppState::new(limits, Arc::new(detector));

    // Serve /healthz and /readyz (503) while the model loads.
    let loader_state = state.clone();
    let uri = cli.model.clone();
    let image_size = cli.image_size;
    let loader = tokio::spawn(async move {
        tracing::info!(model = %uri, "loading model");
        let (models, info) = load_model(&uri, image_size, &runtime).await?;
        tracing::info!(
            run_id = info.run_id.as_deref(),
            test_accuracy = info.test_accuracy,
            image_size = info.image_size,
            onnx_sha256 = %info.onnx_sha256,
            workers = runtime.workers,
            threads = runtime.threads,
            "model ready"
        );
        loader_state.install(models, info, batch)?;
        anyhow::Ok(())
    });

    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let url = format!("http://{}", listener.local_addr()?);
    tracing::info!(%url, "serving");
    let config = ServeConfig {
        header_timeout: Duration::from_secs(cli.header_timeout_secs),
        max_connections: cli.max_connections,
        drain: Duration::from_secs(cli.drain_secs),
        shutdown_deadline: Duration::from_secs(cli.shutdown_deadline_secs),
    };
    let server = serve(
        listener,
        app(state.clone()),
        state,
        config,
        shutdown_signal(),
    );
    let mut server = std::pin::pin!(server);
    tokio::select! {
        served = &mut server => return served.context("server failed"),
        loaded = loader => match loaded {
            Ok(Ok(())) => {}
            // A model that cannot load is fatal: the pod restarts and the reason is in its log.
            Ok(Err(e)) => return Err(e.context(format!("cannot serve {}", cli.model))),
            Err(e) => anyhow::bail!("model loader panicked: {e}"),
        },
    }
    server.await.context("server failed")
}
