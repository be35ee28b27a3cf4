//! `face2simpson-inference`: serve the champion over HTTP, or (`validate`) check a candidate
//! through the same request path before it is rolled out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use face2simpson_inference::faces::FaceDetector;
use face2simpson_inference::report_store::StoreFile;
use face2simpson_inference::serve::{ServeConfig, serve};
use face2simpson_inference::sizing::{self, PodResources, Sizing};
use face2simpson_inference::validate::{self, Thresholds, ValidateConfig};
use face2simpson_inference::{
    AppState, BatchConfig, DEFAULT_MAX_QUEUE_WAIT_MS, Limits, LoadError, ReportConfig,
    RuntimeConfig, app, load_detector, load_model,
};
use tracing_subscriber::EnvFilter;

// mimalloc hands freed pages back to the OS; glibc's per-thread arenas kept a burst of large
// decodes resident long after it ended.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "face2simpson-inference",
    version,
    about = "Say which Simpsons character each face in a photo resembles",
    long_about = "Say which Simpsons character each face in a photo resembles.\n\nWithout a subcommand, serves the model (--model / MODEL_URI) over HTTP. `validate` checks a candidate through the same request path before it is rolled out.",
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load a candidate model as serving does, answer every test image of a dataset through
    /// the request path (POST /v1/predict, in process), and write validation.json: served
    /// accuracy, agreement with the trainer's predictions, latency, memory, pass/fail with
    /// reasons. Exit 0 passed, 1 failed (validation.json written), 2 bad flags or
    /// configuration, 3 store unreachable.
    Validate(Box<ValidateArgs>),
}

/// Flags of the server alone (no subcommand).
#[derive(Debug, Args)]
struct ServeArgs {
    /// The run's weights, s3://bucket/runs/<id>/model.safetensors, file:///…, or a local path.
    /// The service runs the ONNX export beside it (runs/<id>/model.onnx); a URI naming the
    /// .onnx file itself works too.
    #[arg(long, env = "MODEL_URI", required = true)]
    model: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
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
    /// This pod's name, which its report files are named after (the operator sets it from the
    /// downward API). Default: $HOSTNAME, else "local".
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Full store URL of the model's shadow.json (s3://…/runs/<ns>/<model>/shadow.json): the
    /// candidate it names is loaded beside the champion and scored on sampled requests, off the
    /// response path. Unset: no shadow stage.
    #[arg(long, env = "SHADOW_URI")]
    shadow_uri: Option<String>,
    /// Seconds between polls of shadow.json and writes of this pod's report files (live
    /// verdicts, shadow report).
    #[arg(long, env = "REPORT_SECONDS", default_value_t = 10.0, value_parser = positive)]
    report_seconds: f64,
    /// The model's name on the Open Inference Protocol routes (/v2/models/<name>/...).
    #[arg(long, env = "MODEL_NAME", default_value = face2simpson_inference::oip::DEFAULT_MODEL_NAME)]
    model_name: String,
}

impl ServeArgs {
    fn reports(&self, runtime: RuntimeConfig) -> ReportConfig {
        let pod = self
            .pod_name
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "local".to_owned());
        ReportConfig {
            pod,
            interval: Duration::from_secs_f64(self.report_seconds),
            shadow_uri: self.shadow_uri.clone().filter(|u| !u.is_empty()),
            runtime,
        }
    }
}

/// How a model is loaded and a request answered: the same for serving and `validate` (given
/// before or after the subcommand).
#[derive(Debug, Args)]
struct CommonArgs {
    /// ONNX Runtime's shared library (libonnxruntime.so.1.32.0; `make setup` fetches it).
    #[arg(
        long,
        env = "ORT_DYLIB_PATH",
        default_value = "libonnxruntime.so",
        global = true
    )]
    ort_library: PathBuf,
    /// BlazeFace face detector (ONNX; `make setup` fetches it).
    #[arg(
        long,
        env = "FACE_DETECTOR",
        default_value = "face_detection_front_128x128.onnx",
        global = true
    )]
    face_detector: PathBuf,
    /// Input size when the run's metrics.json does not say (it normally does).
    #[arg(long, env = "IMAGE_SIZE", default_value_t = 224, global = true)]
    image_size: u32,
    /// Model sessions, each on its own thread, sharing the batch queue (default: one per whole
    /// CPU of the pod, see --cpu-request).
    #[arg(long, env = "MODEL_WORKERS", global = true)]
    workers: Option<usize>,
    /// Intra-op threads per model session (default 1: under load each core runs its own
    /// requests).
    #[arg(long, env = "MODEL_THREADS", global = true)]
    threads: Option<usize>,
    /// Intra-op threads of one more session, used by a request alone in the server (default:
    /// the pod's whole CPUs when more than one; 0 or 1: none).
    #[arg(long, env = "SOLO_THREADS", global = true)]
    solo_threads: Option<usize>,
    /// Most images per forward pass; larger requests are split.
    #[arg(long, env = "MAX_BATCH", default_value_t = 8, global = true)]
    max_batch: usize,
    /// Milliseconds the first request of a batch waits for others (0: each worker takes one
    /// request at a time; on CPU a batch saves nothing per image).
    #[arg(long, env = "MAX_WAIT_MS", default_value_t = face2simpson_inference::DEFAULT_MAX_WAIT_MS, global = true)]
    max_wait_ms: u64,
    /// Requests queued for the model at most; more get 503 with Retry-After.
    #[arg(long, env = "QUEUE_CAPACITY", default_value_t = 64, global = true)]
    queue_capacity: usize,
    /// Uploads decoded at once, and face detector sessions (default: the pod's whole CPUs, see
    /// --cpu-request); more wait (see --max-waiting), their bodies read.
    #[arg(long, env = "MAX_DECODES", global = true)]
    max_decodes: Option<usize>,
    /// Uploads that may wait for a decode slot (bodies read) at most; more get 503 at once.
    #[arg(long, env = "MAX_WAITING_UPLOADS", default_value_t = 64, global = true)]
    max_waiting: usize,
    /// Milliseconds the requests in flight may take to drain (measured time per request ×
    /// requests in flight) for a new upload to be admitted; beyond that it gets 503 with
    /// Retry-After at once. 0 turns this limit off (only the counts apply).
    #[arg(long, env = "MAX_QUEUE_WAIT_MS", default_value_t = DEFAULT_MAX_QUEUE_WAIT_MS, global = true)]
    max_queue_wait_ms: u64,
    /// Faces classified per image at most, the largest first.
    #[arg(long, env = "MAX_FACES", default_value_t = 8, global = true)]
    max_faces: usize,
    /// Largest accepted upload in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 10 << 20, global = true)]
    max_body_bytes: usize,
    /// Seconds a request may take before it is answered 408 (and its work cancelled).
    #[arg(
        long,
        env = "REQUEST_TIMEOUT_SECS",
        default_value_t = 30,
        global = true
    )]
    request_timeout_secs: u64,
    #[command(flatten)]
    sizing: SizingArgs,
    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    log_format: String,
}

/// What the pod may use, and the budgets sized from it (docs/inference.md, *Limits*).
#[derive(Debug, Args)]
struct SizingArgs {
    /// Where cgroup v2 is mounted: cpu.max and memory.max there, when set, are the pod's CPUs
    /// and memory.
    #[arg(long, env = "CGROUP_ROOT", default_value = sizing::CGROUP_ROOT, global = true)]
    cgroup_root: PathBuf,
    /// The pod's CPU request in millicores (downward API requests.cpu, divisor 1m), used when
    /// the cgroup sets no CPU limit; else the machine's cores.
    #[arg(long, env = "CPU_REQUEST", global = true)]
    cpu_request: Option<u64>,
    /// The pod's memory limit in bytes (downward API limits.memory), used when the cgroup sets
    /// none; else the budgets assume no bound.
    #[arg(long, env = "MEMORY_LIMIT", global = true)]
    memory_limit: Option<u64>,
    /// Upload bytes held at once, bodies being read or waiting for a decode (default: a quarter
    /// of the memory above the baseline; 256 MiB when unknown); more get 503.
    #[arg(long, env = "UPLOAD_BUDGET_BYTES", global = true)]
    upload_budget_bytes: Option<u64>,
    /// Decoded pixel bytes held at once (default: half the memory above the baseline; 160 MiB
    /// per decode slot when unknown); a larger image gets 413, others wait.
    #[arg(long, env = "PIXEL_BUDGET_BYTES", global = true)]
    pixel_budget_bytes: Option<u64>,
    /// Seconds every upload body gets to arrive; a body still incomplete then (plus its size at
    /// --min-body-rate) gets 408.
    #[arg(long, env = "BODY_TIMEOUT_SECS", default_value_t = 10.0, value_parser = positive, global = true)]
    body_timeout_secs: f64,
    /// Bytes per second a body must keep up beyond --body-timeout-secs; 0: the timeout alone.
    #[arg(long, env = "MIN_BODY_RATE", default_value_t = 64 << 10, global = true)]
    min_body_rate: u64,
}

impl SizingArgs {
    fn resources(&self) -> PodResources {
        PodResources::detect(&self.cgroup_root, self.cpu_request, self.memory_limit)
    }

    fn sizing(&self) -> Sizing {
        self.resources().sizing()
    }
}

/// Flags of `validate`.
#[derive(Debug, Args)]
struct ValidateArgs {
    /// The candidate: its weights' URI as serving takes it (…/runs/<id>/model.safetensors, the
    /// model.onnx beside it is loaded) or the model.onnx itself; s3://, file:///… or a path.
    #[arg(long, env = "MODEL_URI")]
    model: String,
    /// URL of the dataset prefix (s3://bucket/datasets/current, file:///…); every image of its
    /// test/<class>/ folders is scored.
    #[arg(long, env = "DATASET_URI")]
    dataset: String,
    /// URL of the validation.json to write (normally beside the candidate's metrics.json).
    #[arg(long, env = "VALIDATION_URI")]
    out: String,
    /// The champion's weights (or model.onnx): scored the same way, in this process, on the
    /// same images, so the gate compares served accuracies.
    #[arg(long, env = "CHAMPION_URI")]
    champion: Option<String>,
    /// Fail (InfraValidationFailed) when the candidate's p95 request latency is above this many
    /// milliseconds.
    #[arg(long, env = "MAX_P95_MS", value_parser = non_negative)]
    max_p95_ms: Option<f64>,
    /// Fail (TrainServeSkew) when the share of test images whose served verdict equals the
    /// trainer's own prediction is below this.
    #[arg(long, env = "MIN_AGREEMENT", default_value_t = validate::DEFAULT_MIN_AGREEMENT, value_parser = fraction)]
    min_agreement: f64,
    /// Fail (InfraValidationFailed) when the process's peak resident memory after scoring the
    /// candidate is above this many bytes (the pod's memory limit).
    #[arg(long, env = "MAX_MEMORY_BYTES")]
    max_memory_bytes: Option<u64>,
}

fn fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0 and 1"))
    }
}

fn positive(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(v)
    } else {
        Err(format!("{v} is not a positive number of seconds"))
    }
}

fn non_negative(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not a non-negative number"))
    }
}

impl CommonArgs {
    fn max_decodes(&self) -> usize {
        self.max_decodes
            .unwrap_or_else(|| self.sizing.sizing().decodes)
            .max(1)
    }

    fn limits(&self) -> Limits {
        let sized = self.sizing.sizing();
        Limits {
            upload_budget_bytes: self
                .sizing
                .upload_budget_bytes
                .unwrap_or(sized.upload_budget),
            pixel_budget_bytes: self.sizing.pixel_budget_bytes.unwrap_or(sized.pixel_budget),
            body_timeout: Duration::from_secs_f64(self.sizing.body_timeout_secs),
            min_body_rate: self.sizing.min_body_rate,
            max_body_bytes: self.max_body_bytes,
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            max_decodes: self.max_decodes(),
            max_waiting: self.max_waiting,
            max_queue_wait: (self.max_queue_wait_ms > 0)
                .then(|| Duration::from_millis(self.max_queue_wait_ms)),
        }
    }

    fn batch(&self) -> BatchConfig {
        BatchConfig {
            max_batch: self.max_batch.max(1),
            max_wait: Duration::from_millis(self.max_wait_ms),
            queue_capacity: self.queue_capacity.max(1),
        }
    }

    fn runtime(&self) -> RuntimeConfig {
        let sized = self.sizing.sizing();
        RuntimeConfig {
            library: self.ort_library.clone(),
            workers: self.workers.unwrap_or(sized.model_workers).max(1),
            threads: self.threads.unwrap_or(sized.ort_threads).max(1),
            solo_threads: self.solo_threads.unwrap_or(sized.solo_threads),
        }
    }

    fn detector(&self) -> Result<FaceDetector, LoadError> {
        load_detector(
            &self.ort_library,
            &self.face_detector,
            self.max_decodes(),
            self.max_faces,
        )
    }
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
    if cli.common.log_format == "json" {
        fmt.json().init()
    } else {
        fmt.init()
    }
    log_sizing(&cli.common);
    let max_decodes = cli.common.max_decodes();
    // Blocking threads only ever run admitted decodes (and file reads): no thread explosion
    // under a burst.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(max_decodes + 4)
        .build()?;
    if let Some(Command::Validate(args)) = cli.command {
        let code = runtime.block_on(validate_cmd(&cli.common, *args));
        drop(runtime);
        std::process::exit(i32::from(code));
    }
    let served = runtime.block_on(run(cli.serve, cli.common));
    // A model this binary can never serve (another input pipeline, a checksum mismatch) exits
    // 2, so an operator or a script can tell it from a transient failure.
    if let Err(e) = &served
        && let Some(load) = e.chain().find_map(|c| c.downcast_ref::<LoadError>())
        && load.exit_code() != 1
    {
        tracing::error!(error = format!("{e:#}"), "cannot serve this model");
        eprintln!("Error: {e:#}");
        std::process::exit(i32::from(load.exit_code()));
    }
    served
}

/// What the pod was found to have and what was sized from it, once at start.
fn log_sizing(common: &CommonArgs) {
    let r = common.sizing.resources();
    let limits = common.limits();
    tracing::info!(
        cpus = r.cpus,
        cpus_from = ?r.cpus_from,
        memory_bytes = r.memory,
        memory_from = ?r.memory_from,
        decodes = limits.max_decodes,
        detector_sessions = limits.max_decodes,
        model_workers = common.runtime().workers,
        ort_threads = common.runtime().threads,
        solo_threads = common.runtime().solo_threads,
        baseline_bytes = common.sizing.sizing().baseline,
        upload_budget_bytes = limits.upload_budget_bytes,
        pixel_budget_bytes = limits.pixel_budget_bytes,
        "sized for this pod"
    );
}

/// `validate`: the verdict's exit code (docs/inference.md, *Served-path validation*).
async fn validate_cmd(common: &CommonArgs, args: ValidateArgs) -> u8 {
    // A detector (or ONNX Runtime library) that cannot load is the image's configuration,
    // not the candidate's fault.
    let detector = match common.detector() {
        Ok(d) => Arc::new(d),
        Err(e) => {
            tracing::error!(exit_code = validate::exit::CONFIG, error = %e, "cannot load the face detector");
            eprintln!("Error: loading the face detector: {e}");
            return validate::exit::CONFIG;
        }
    };
    let cfg = ValidateConfig {
        model: args.model,
        dataset: args.dataset,
        out: args.out,
        champion: args.champion,
        thresholds: Thresholds {
            max_p95_ms: args.max_p95_ms,
            min_agreement: args.min_agreement,
            max_memory_bytes: args.max_memory_bytes,
        },
        image_size: common.image_size,
        runtime: common.runtime(),
        limits: common.limits(),
        batch: common.batch(),
        detector,
    };
    tracing::info!(
        model = %cfg.model,
        dataset = %cfg.dataset,
        out = %cfg.out,
        champion = cfg.champion.as_deref(),
        workers = cfg.runtime.workers,
        threads = cfg.runtime.threads,
        "validating through the served path"
    );
    match validate::run(&cfg).await {
        Ok(v) => validate::verdict_exit_code(&v),
        Err(e) => {
            let code = e.exit_code();
            tracing::error!(exit_code = code, "validation could not be completed: {e}");
            eprintln!("Error: {e}");
            code
        }
    }
}

async fn run(args: ServeArgs, common: CommonArgs) -> Result<()> {
    let limits = common.limits();
    let batch = common.batch();
    let runtime = common.runtime();
    // The detector is small and local: load it before listening, so a bad path fails at once.
    let detector = common.detector().inspect_err(|e| {
        tracing::error!(error = %e, path = %common.face_detector.display(), "cannot load the face detector (FACE_DETECTOR); not serving");
    }).context("loading the face detector")?;
    let state = AppState::new(limits, Arc::new(detector));
    state.set_model_name(&args.model_name);

    // Serve /healthz and /readyz (503) while the model loads.
    let loader_state = state.clone();
    let uri = args.model.clone().unwrap_or_default();
    let model = uri.clone();
    let image_size = common.image_size;
    let reports = args.reports(runtime.clone());
    // A SHADOW_URI that names no file in a store is a configuration error: fail before
    // listening, so a rollout with it stops at the first pod instead of never shadowing.
    if let Some(uri) = &reports.shadow_uri {
        StoreFile::open(uri).with_context(|| format!("invalid SHADOW_URI {uri:?}"))?;
    }
    tracing::info!(
        pod = %reports.pod,
        shadow_uri = reports.shadow_uri.as_deref(),
        report_seconds = reports.interval.as_secs_f64(),
        "reporting to the store"
    );
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
            solo_threads = runtime.solo_threads,
            "model ready"
        );
        loader_state.install(models, info, batch)?;
        // After the champion is in service: a candidate never competes with its loading.
        let reporters = loader_state
            .start_reports(&uri, reports)
            .context("invalid SHADOW_URI")?;
        anyhow::Ok(reporters)
    });

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let url = format!("http://{}", listener.local_addr()?);
    tracing::info!(%url, "serving");
    let config = ServeConfig {
        header_timeout: Duration::from_secs(args.header_timeout_secs),
        max_connections: args.max_connections,
        drain: Duration::from_secs(args.drain_secs),
        shutdown_deadline: Duration::from_secs(args.shutdown_deadline_secs),
    };
    let server = serve(
        listener,
        app(state.clone()),
        state,
        config,
        shutdown_signal(),
    );
    let mut server = std::pin::pin!(server);
    // Held until the server ends; dropping it stops the report tasks.
    let _reporters = tokio::select! {
        served = &mut server => return served.context("server failed"),
        loaded = loader => match loaded {
            Ok(Ok(reporters)) => reporters,
            // A model that cannot load is fatal: the pod restarts and the reason is in its log.
            Ok(Err(e)) => return Err(e.context(format!("cannot serve {model}"))),
            Err(e) => anyhow::bail!("model loader panicked: {e}"),
        },
    };
    server.await.context("server failed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serving_is_still_the_default_and_validate_takes_the_shared_flags_anywhere() {
        let cli = Cli::try_parse_from([
            "face2simpson-inference",
            "--model",
            "file:///s/runs/r1/model.safetensors",
            "--threads",
            "3",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(
            cli.serve.model.as_deref(),
            Some("file:///s/runs/r1/model.safetensors")
        );
        assert_eq!(cli.serve.report_seconds, 10.0);
        assert!(cli.serve.shadow_uri.is_none());

        let shadowed = Cli::try_parse_from([
            "face2simpson-inference",
            "--model=s3://b/runs/ns/m/r1/model.safetensors",
            "--pod-name=web-7d9",
            "--shadow-uri=s3://b/runs/ns/m/shadow.json",
            "--report-seconds=0.5",
        ])
        .unwrap();
        let reports = shadowed.serve.reports(shadowed.common.runtime());
        assert_eq!(reports.pod, "web-7d9");
        assert_eq!(
            reports.shadow_uri.as_deref(),
            Some("s3://b/runs/ns/m/shadow.json")
        );
        assert_eq!(reports.interval, Duration::from_millis(500));
        assert!(
            Cli::try_parse_from(["face2simpson-inference", "--model=m", "--report-seconds=0"])
                .is_err()
        );
        assert_eq!(cli.common.threads, Some(3));

        let cli = Cli::try_parse_from([
            "face2simpson-inference",
            "--max-faces",
            "2",
            "validate",
            "--model",
            "s3://b/runs/r2/model.safetensors",
            "--dataset",
            "s3://b/datasets/current",
            "--out",
            "s3://b/runs/r2/validation.json",
            "--threads",
            "1",
            "--max-p95-ms",
            "250",
        ])
        .unwrap();
        let Some(Command::Validate(v)) = cli.command else {
            panic!("not validate")
        };
        assert_eq!(v.model, "s3://b/runs/r2/model.safetensors");
        assert_eq!(v.max_p95_ms, Some(250.0));
        assert_eq!(v.min_agreement, validate::DEFAULT_MIN_AGREEMENT);
        assert!(v.champion.is_none());
        assert_eq!(cli.common.threads, Some(1));
        assert_eq!(cli.common.max_faces, 2);

        for bad in [
            vec!["face2simpson-inference"],
            vec!["face2simpson-inference", "validate", "--model", "m"],
            vec![
                "face2simpson-inference",
                "validate",
                "--model=m",
                "--dataset=d",
                "--out=o",
                "--min-agreement=1.5",
            ],
        ] {
            assert!(
                Cli::try_parse_from(bad.iter().copied()).is_err(),
                "{bad:?} accepted"
            );
        }
    }
}
