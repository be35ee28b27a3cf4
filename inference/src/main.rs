//! `face2simpson-inference`: serve the champion over HTTP.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use face2simpson_inference::batcher::BatchConfig;
use face2simpson_inference::{AppState, Limits, app, load_model};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "face2simpson-inference",
    version,
    about = "Say which Simpsons character each face in a photo resembles"
)]
struct Cli {
    /// URL of the weights: s3://bucket/runs/<id>/model.safetensors, file:///…, or a local path.
    #[arg(long, env = "MODEL_URI")]
    model: String,
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Input size when the run's metrics.json does not say (it normally does).
    #[arg(long, env = "IMAGE_SIZE", default_value_t = 224)]
    image_size: u32,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, env = "DEVICE", default_value = "auto")]
    device: String,
    /// Most images per forward pass.
    #[arg(long, env = "MAX_BATCH", default_value_t = 16)]
    max_batch: usize,
    /// Milliseconds the first request of a batch waits for others.
    #[arg(long, env = "MAX_WAIT_MS", default_value_t = 5)]
    max_wait_ms: u64,
    /// Requests queued for the model at most; more get 503 with Retry-After.
    #[arg(long, env = "QUEUE_CAPACITY", default_value_t = 64)]
    queue_capacity: usize,
    /// Largest accepted upload in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 10 << 20)]
    max_body_bytes: usize,
    /// Seconds a request may take before it is answered 408.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    request_timeout_secs: u64,
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
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    if cli.log_format == "json" {
        fmt.json().init()
    } else {
        fmt.init()
    }

    let device = model::parse_device(&cli.device).map_err(anyhow::Error::msg)?;
    let limits = Limits {
        max_body_bytes: cli.max_body_bytes,
        request_timeout: Duration::from_secs(cli.request_timeout_secs),
    };
    let batch = BatchConfig {
        max_batch: cli.max_batch.max(1),
        max_wait: Duration::from_millis(cli.max_wait_ms),
        queue_capacity: cli.queue_capacity.max(1),
    };
    let state = AppState::new(limits);

    // Serve /healthz and /readyz (503) while the model loads.
    let loader_state = state.clone();
    let uri = cli.model.clone();
    let image_size = cli.image_size;
    let loader = tokio::spawn(async move {
        tracing::info!(model = %uri, "loading model");
        let (net, info) = load_model(&uri, device, image_size).await?;
        tracing::info!(
            run_id = info.run_id.as_deref(),
            test_accuracy = info.test_accuracy,
            image_size = info.image_size,
            "model ready"
        );
        loader_state.install(net, info, batch);
        anyhow::Ok(())
    });

    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let url = format!("http://{}", listener.local_addr()?);
    tracing::info!(%url, "serving");
    let server = axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .into_future();
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
