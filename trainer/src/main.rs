//! `face2simpson-trainer`: train a model, or generate a synthetic dataset.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use artifacts::{Hyperparameters, PromotionPolicy, Storage, StorageError, layout};
use clap::{Args, Parser, Subcommand};
use face2simpson_trainer::dataset::DatasetError;
use face2simpson_trainer::dist::{BackendChoice, World};
use face2simpson_trainer::progress::Progress;
use face2simpson_trainer::train::{
    self, RankOutcome, RunTarget, StopSignal, TrainConfig, TrainError,
};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "face2simpson-trainer",
    version,
    about = "Fine-tune MobileNetV2 to tell Homer, Marge, Bart and Lisa apart"
)]
struct Cli {
    /// Log format: `text` for people, `json` for log collectors.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true, value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train on PREFIX/{train,test}/{homer,marge,bart,lisa}/* and write runs/<run-id>/{model.safetensors,metrics.json}.
    // Boxed: the training flags make this variant far larger than the others.
    Train(Box<TrainArgs>),
    /// Draw a synthetic dataset of cartoon heads into the store.
    Datagen(DatagenArgs),
}

#[derive(Debug, Args)]
struct TrainArgs {
    /// Object store URL: file:///dir, s3://bucket/prefix, gs://…, az://…, memory:/// or a local path.
    #[arg(long, env = "STORAGE_URI")]
    storage: String,
    /// Dataset prefix inside the store.
    #[arg(long, env = "DATASET", default_value = layout::DEFAULT_DATASET)]
    dataset: String,
    /// Id of this run; its artifacts go to <runs-prefix>/<run-id>/.
    #[arg(long, env = "RUN_ID")]
    run_id: String,
    /// Prefix the run's directory goes under; the operator passes runs/<namespace>/<name>.
    #[arg(long, env = "RUNS_PREFIX", default_value = layout::RUNS)]
    runs_prefix: String,
    /// Owner recorded in metrics.json (<namespace>/<name> of the SimpsonModel).
    #[arg(long, env = "OWNER")]
    owner: Option<String>,
    /// Run id of the current champion, re-scored on this run's test split for a fair comparison.
    #[arg(long, env = "CHAMPION_RUN_ID")]
    champion: Option<String>,
    /// Full URL of the champion's weights (default: <runs-prefix>/<champion>/model.safetensors).
    #[arg(long, env = "CHAMPION_URI", requires = "champion")]
    champion_uri: Option<String>,
    /// Side of the square input in pixels.
    #[arg(long, env = "IMAGE_SIZE", default_value_t = 224)]
    image_size: u32,
    /// Maximum number of epochs (early stopping may end sooner).
    #[arg(long, env = "EPOCHS", default_value_t = 15)]
    epochs: u32,
    #[arg(long, env = "BATCH_SIZE", default_value_t = 32)]
    batch_size: u32,
    /// Adam learning rate at the start of the cosine schedule.
    #[arg(long, env = "LEARNING_RATE", default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, env = "LABEL_SMOOTHING", default_value_t = 0.1)]
    label_smoothing: f64,
    /// Dropout before the classifier.
    #[arg(long, env = "DROPOUT", default_value_t = 0.2)]
    dropout: f64,
    /// Epochs without a lower validation loss before training stops.
    #[arg(long, env = "PATIENCE", default_value_t = 3)]
    patience: u32,
    /// Share of train carved out (per class, deterministically) for validation.
    #[arg(long, env = "VAL_FRACTION", default_value_t = 0.15)]
    val_fraction: f64,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, env = "DEVICE", default_value = "auto")]
    device: String,
    /// What convolutions compute in while training: auto (bf16 on CUDA and on CPUs with
    /// AVX512-BF16/AMX, fp16 on pre-Ampere GPUs, else fp32), fp32, bf16 or fp16 (CUDA only).
    /// Master weights, batch-norm statistics, loss and evaluation stay fp32.
    #[arg(long, env = "PRECISION", default_value = "auto")]
    precision: face2simpson_trainer::torch::Precision,
    #[arg(long, env = "SEED", default_value_t = 42)]
    seed: u64,
    /// ImageNet backbone: a key in the store, a URL, a local path, or `none` to train from scratch.
    #[arg(long, env = "PRETRAINED", default_value = layout::DEFAULT_PRETRAINED)]
    pretrained: String,
    /// Apply the promotion gate and update champion.json when this run wins (cluster-free mode).
    #[arg(long, env = "PROMOTE")]
    promote: bool,
    /// With --promote: accuracy points (0–1) the challenger must win by.
    #[arg(long, env = "MIN_IMPROVEMENT", default_value_t = 0.0)]
    min_improvement: f64,
    /// With --promote: accuracy floor (0–1).
    #[arg(long, env = "MIN_ACCURACY", default_value_t = 0.0)]
    min_accuracy: f64,
    /// With --promote: test images a run must be scored on to be promoted (0: no minimum).
    #[arg(long, env = "MIN_TEST_IMAGES", default_value_t = 0)]
    min_test_images: u64,
    /// With --promote: significance level (e.g. 0.05) an exact McNemar test on the paired
    /// test predictions must pass for a challenger to replace a champion (default: no test).
    #[arg(long, env = "MIN_SIGNIFICANCE")]
    min_significance: Option<f64>,
    /// With --promote: largest recall (0–1) any class may lose against the champion; a
    /// challenger losing more on some class is rejected (ClassRegression). Default: no check.
    #[arg(long, env = "MAX_CLASS_RECALL_DROP")]
    max_class_recall_drop: Option<f64>,
    /// Images fetched from the store at once.
    #[arg(long, env = "FETCH_CONCURRENCY", default_value_t = 16)]
    fetch_concurrency: usize,
    /// Megabytes of decoded images kept in memory; the rest go to --cache-dir. Default: half
    /// the container's memory limit (or of the machine's memory).
    #[arg(long, env = "CACHE_MB")]
    cache_mb: Option<u64>,
    /// Local directory for decoded images beyond --cache-mb (default: the temporary directory).
    #[arg(long, env = "CACHE_DIR")]
    cache_dir: Option<std::path::PathBuf>,
    /// ONNX Runtime's shared library, for the face detector every image goes through (the
    /// service's pipeline; `make setup` fetches it, the trainer image sets it).
    #[arg(long, env = "ORT_DYLIB_PATH", default_value = "libonnxruntime.so")]
    ort_library: std::path::PathBuf,
    /// BlazeFace face detector (ONNX), the one the service runs (`make setup` fetches it, the
    /// trainer image sets it).
    #[arg(
        long,
        env = "FACE_DETECTOR",
        default_value = "face_detection_front_128x128.onnx"
    )]
    face_detector: std::path::PathBuf,
    #[command(flatten)]
    world: WorldArgs,
}

/// Data-parallel training: one process per rank, met over libtorch's c10d. Each flag falls
/// back on the variables Kubernetes' Indexed Jobs and Kubeflow's launchers set.
#[derive(Debug, Args)]
struct WorldArgs {
    /// Ranks in the training (world size); 1 trains in this process alone. Default: WORLD_SIZE,
    /// else PET_NNODES, else 1.
    #[arg(long, env = "WORKERS")]
    workers: Option<usize>,
    /// This process's rank, 0..workers. Default: RANK, else JOB_COMPLETION_INDEX (an Indexed
    /// Job's pod index), else PET_NODE_RANK, else 0.
    #[arg(long, env = "RANK")]
    rank: Option<usize>,
    /// Host of rank 0, which serves the rendezvous store. Default: PET_MASTER_ADDR, else
    /// 127.0.0.1.
    #[arg(long, env = "MASTER_ADDR")]
    master_addr: Option<String>,
    /// Port of the rendezvous store on rank 0. Default: PET_MASTER_PORT, else 29500.
    #[arg(long, env = "MASTER_PORT")]
    master_port: Option<u16>,
    /// The rendezvous and every collective fail after this long (exit code 5): a rank that
    /// died or hangs never leaves the others waiting for ever.
    #[arg(long, env = "COLLECTIVE_TIMEOUT_SECONDS", default_value_t = 300)]
    collective_timeout_seconds: u64,
    /// auto (NCCL for CUDA when this build has it, else Gloo), gloo or nccl.
    #[arg(long, env = "DIST_BACKEND", default_value = "auto")]
    dist_backend: BackendChoice,
}

impl WorldArgs {
    /// The world, with the fallbacks above; `var` reads the environment.
    fn resolve(self, var: impl Fn(&str) -> Option<String>) -> Result<World, String> {
        let parsed = |name: &str| -> Result<Option<usize>, String> {
            var(name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    v.trim()
                        .parse()
                        .map_err(|_| format!("{name}={v:?} is not a number"))
                })
                .transpose()
        };
        let workers = match self.workers {
            Some(n) => n,
            None => parsed("WORLD_SIZE")?.or(parsed("PET_NNODES")?).unwrap_or(1),
        };
        let rank = match self.rank {
            Some(r) => r,
            None => parsed("JOB_COMPLETION_INDEX")?
                .or(parsed("PET_NODE_RANK")?)
                .unwrap_or(0),
        };
        let master_addr = self
            .master_addr
            .or_else(|| var("PET_MASTER_ADDR").filter(|v| !v.is_empty()))
            .unwrap_or_else(|| "127.0.0.1".into());
        let master_port = match self.master_port {
            Some(p) => p,
            None => match parsed("PET_MASTER_PORT")? {
                Some(p) => {
                    u16::try_from(p).map_err(|_| format!("PET_MASTER_PORT={p} is not a port"))?
                }
                None => 29500,
            },
        };
        let world = World {
            workers,
            rank,
            master_addr,
            master_port,
            timeout: std::time::Duration::from_secs(self.collective_timeout_seconds),
            backend: self.dist_backend,
        };
        world.validate()?;
        Ok(world)
    }
}

#[derive(Debug, Args)]
struct DatagenArgs {
    #[arg(long, env = "STORAGE_URI")]
    storage: String,
    #[arg(long, env = "DATASET", default_value = layout::DEFAULT_DATASET)]
    dataset: String,
    /// Training images per class; the test split gets a quarter as many.
    #[arg(long, env = "PER_CLASS", default_value_t = 100)]
    per_class: usize,
    /// Side of each image in pixels.
    #[arg(long, env = "SIZE", default_value_t = 128)]
    size: u32,
    #[arg(long, env = "SEED", default_value_t = 1)]
    seed: u64,
}

fn init_tracing(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init()
    } else {
        builder.init()
    }
}

/// Exit codes, so the training Job's podFailurePolicy can tell a retry that may succeed from
/// one that cannot (documented in docs/operator.md): 0 success; 1 anything else; 2 a
/// configuration or data error that no retry fixes (also clap's code for bad flags); 3 the
/// store is unreachable (a retry may succeed); 4 the requested device is missing; 5 a peer
/// rank is gone, or the rendezvous or a collective timed out (the gang is restarted); 143
/// stopped by SIGTERM (128 + 15, what a shell reports), after a checkpoint when training.
mod exit {
    pub const FAILURE: u8 = 1;
    pub const CONFIG: u8 = 2;
    pub const STORE: u8 = 3;
    pub const DEVICE: u8 = 4;
    pub const PEER: u8 = 5;
    pub const TERMINATED: u8 = 143;
}

/// A failure with the exit code it ends the process with.
#[derive(Debug)]
struct Fatal {
    code: u8,
    error: anyhow::Error,
}

impl From<anyhow::Error> for Fatal {
    fn from(error: anyhow::Error) -> Self {
        Self {
            code: exit_code(&error),
            error,
        }
    }
}

impl From<StorageError> for Fatal {
    fn from(e: StorageError) -> Self {
        anyhow::Error::from(e).into()
    }
}

/// Classifies an error by the first cause the trainer knows.
fn exit_code(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<TrainError>() {
            return match e {
                TrainError::Config(_) => exit::CONFIG,
                // The store failing while the dataset is listed is an outage, not bad data.
                TrainError::Dataset(DatasetError::Storage(s)) => storage_code(s),
                // Data rewritten under a running job: a retry reads it settled.
                TrainError::Dataset(DatasetError::Changed { .. }) => exit::FAILURE,
                // The local disk or its cache directory failing (full, say) is this machine's
                // trouble, not the data's: another attempt, maybe on another node, may pass.
                TrainError::Dataset(DatasetError::Cache(_)) => exit::FAILURE,
                TrainError::Dataset(_) => exit::CONFIG,
                TrainError::Storage(s) => storage_code(s),
                // The backbone or the champion's weights cannot be used: bad input.
                TrainError::UnusableWeights { .. } => exit::CONFIG,
                TrainError::Distributed(_) => exit::PEER,
                TrainError::Interrupted { .. } => exit::TERMINATED,
                _ => exit::FAILURE,
            };
        }
        if let Some(s) = cause.downcast_ref::<StorageError>() {
            return storage_code(s);
        }
    }
    exit::FAILURE
}

/// A store that cannot be opened is misconfigured and a missing or malformed object is bad
/// data: no retry helps. Anything else from the store (network, 5xx, credentials refused
/// mid-run) may pass.
fn storage_code(e: &StorageError) -> u8 {
    match e {
        StorageError::InvalidUrl { .. }
        | StorageError::Open { .. }
        | StorageError::NotFound { .. }
        | StorageError::Malformed { .. } => exit::CONFIG,
        _ => exit::STORE,
    }
}

fn main() -> ExitCode {
    // Before any other thread exists: glibc fixes its arenas when a second thread allocates.
    let allocator_tuned = face2simpson_trainer::malloc::keep_freed_memory();
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    if !allocator_tuned {
        tracing::warn!(
            "glibc refused an allocator setting; libtorch's memory is returned to the kernel after every step"
        );
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Train(args) => train_until_told_to_stop(*args).await,
        Command::Datagen(args) => datagen_cmd(args).await.map_err(Fatal::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal { code, error }) => {
            tracing::error!(exit_code = code, "{error:#}");
            eprintln!("Error: {error:#}");
            ExitCode::from(code)
        }
    }
}

/// Trains, answering SIGTERM (a deleted, preempted or suspended pod): while the training loop
/// runs it checkpoints after the current step and ends with [`TrainError::Interrupted`]
/// (143); at any other moment there is nothing worth saving, and the process exits 143 at once
/// rather than working on until the grace period's SIGKILL.
async fn train_until_told_to_stop(args: TrainArgs) -> Result<(), Fatal> {
    let stop = StopSignal::new();
    let mut sigterm = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        Ok(s) => s,
        Err(e) => {
            return Err(Fatal {
                code: exit::FAILURE,
                error: anyhow::Error::from(e).context("installing the SIGTERM handler"),
            });
        }
    };
    let run = train_cmd(args, stop.clone());
    tokio::pin!(run);
    tokio::select! {
        result = &mut run => result,
        _ = sigterm.recv() => {
            stop.request();
            if stop.in_training() {
                tracing::warn!("SIGTERM: checkpointing after the current step");
                run.await
            } else {
                tracing::warn!("SIGTERM outside the training loop: nothing to checkpoint; exiting");
                eprintln!("Error: terminated (SIGTERM)");
                // Not a return: the runtime would wait for blocking work (a dataset load) to end.
                std::process::exit(i32::from(exit::TERMINATED));
            }
        }
    }
}

async fn train_cmd(a: TrainArgs, stop: StopSignal) -> Result<(), Fatal> {
    let world = a
        .world
        .resolve(|name| std::env::var(name).ok())
        .map_err(|e| Fatal {
            code: exit::CONFIG,
            error: anyhow::Error::msg(e),
        })?;
    let storage = Storage::open(&a.storage)?;
    // A GPU asked for and not there must fail fast, not train on the CPU for hours.
    let device = face2simpson_trainer::torch::parse_device(&a.device).map_err(|e| Fatal {
        code: exit::DEVICE,
        error: anyhow::Error::msg(e),
    })?;
    let detector =
        face2simpson_trainer::load_detector(&a.ort_library, &a.face_detector).map_err(|e| {
            Fatal {
                code: exit::CONFIG,
                error: anyhow::Error::from(e).context("loading the face detector"),
            }
        })?;
    let target = RunTarget {
        runs_prefix: a.runs_prefix,
        owner: a.owner,
        champion_uri: a.champion_uri,
    };
    let cfg = TrainConfig {
        run_id: a.run_id,
        dataset: a.dataset,
        champion: a.champion,
        hyper: Hyperparameters {
            image_size: a.image_size,
            epochs: a.epochs,
            batch_size: a.batch_size,
            learning_rate: a.lr,
            label_smoothing: a.label_smoothing,
            dropout: a.dropout,
            patience: a.patience,
            val_fraction: a.val_fraction,
            seed: a.seed,
        },
        device,
        precision: a.precision,
        pretrained: (a.pretrained != "none").then_some(a.pretrained),
        promote: a.promote,
        policy: PromotionPolicy {
            min_improvement: a.min_improvement,
            min_accuracy: a.min_accuracy,
            min_test_images: a.min_test_images,
            min_significance: a.min_significance,
            max_class_recall_drop: a.max_class_recall_drop,
        },
        concurrency: a.fetch_concurrency,
        cache_mb: a.cache_mb,
        cache_dir: a.cache_dir,
        detector,
    };
    tracing::info!(run_id = %cfg.run_id, storage = %storage.url(), dataset = %cfg.dataset, device = %face2simpson_trainer::torch::device_name(device), rank = world.rank, workers = world.workers, "training");
    let outcome = train::run_rank(&storage, &cfg, &target, &Progress::auto(), &world, &stop)
        .await
        .with_context(|| match world.is_leader() {
            true => format!("run {} failed; no metrics.json was written", cfg.run_id),
            false => format!("rank {} of run {} failed", world.rank, cfg.run_id),
        })?;
    let outcome = match outcome {
        RankOutcome::Leader(outcome) => *outcome,
        RankOutcome::Follower => {
            tracing::info!(run_id = %cfg.run_id, rank = world.rank, "rank done");
            return Ok(());
        }
    };
    let m = &outcome.metrics;
    tracing::info!(
        run_id = %m.run_id,
        test_accuracy = m.test_accuracy,
        champion_run_id = m.champion_run_id.as_deref(),
        champion_test_accuracy = m.champion_test_accuracy,
        epochs_run = m.epochs_run,
        best_epoch = m.best_epoch,
        skipped_files = m.skipped_files.len(),
        metrics = %storage.url_of(&layout::metrics_in(&target.runs_prefix, &m.run_id)),
        "run complete"
    );
    if let Some(decision) = outcome.decision {
        tracing::info!(
            decision = decision.kind(),
            reason = decision.reason(),
            "promotion gate"
        );
        println!("{decision}");
    }
    Ok(())
}

async fn datagen_cmd(a: DatagenArgs) -> Result<()> {
    if !(32..=1024).contains(&a.size) {
        bail!("--size {} is outside 32..=1024", a.size);
    }
    if a.per_class == 0 {
        bail!("--per-class must be at least 1");
    }
    let storage = Storage::open(&a.storage)?;
    let n =
        face2simpson_trainer::generate_dataset(&storage, &a.dataset, a.per_class, a.size, a.seed)
            .await?;
    tracing::info!(images = n, dataset = %storage.url_of(&a.dataset), "synthetic dataset written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: impl Into<anyhow::Error>) -> u8 {
        Fatal::from(e.into().context("run r1 failed")).code
    }

    /// The codes the operator's podFailurePolicy relies on (docs/operator.md): 2 and 4 fail
    /// the Job at once, 1 and 3 are retried.
    #[test]
    fn exit_codes_tell_permanent_from_transient_failures() {
        let outage = || StorageError::Backend {
            url: "s3://b".into(),
            key: "k".into(),
            source: Box::new(object_store::Error::Generic {
                store: "S3",
                source: "connection refused".into(),
            }),
        };
        let missing = || StorageError::NotFound {
            url: "s3://b".into(),
            key: "k".into(),
        };
        assert_eq!(code(TrainError::Config("bad --lr".into())), exit::CONFIG);
        assert_eq!(
            code(TrainError::Dataset(DatasetError::Missing {
                prefix: "datasets/x".into()
            })),
            exit::CONFIG
        );
        assert_eq!(
            code(TrainError::Dataset(DatasetError::Storage(outage()))),
            exit::STORE
        );
        assert_eq!(code(TrainError::Storage(outage())), exit::STORE);
        assert_eq!(code(TrainError::Storage(missing())), exit::CONFIG);
        assert_eq!(
            code(StorageError::InvalidUrl {
                url: "ftp://x".into(),
                reason: "scheme".into()
            }),
            exit::CONFIG
        );
        assert_eq!(code(TrainError::Worker("panicked".into())), exit::FAILURE);
        assert_eq!(
            code(TrainError::Dataset(DatasetError::Changed {
                prefix: "datasets/x".into(),
                before: "sha256:a".into(),
                now: "sha256:b".into(),
            })),
            exit::FAILURE
        );
        assert_eq!(code(anyhow::anyhow!("anything else")), exit::FAILURE);
        // A full local disk while decoding: this machine's trouble, retried (1), not bad data.
        assert_eq!(
            code(TrainError::Dataset(DatasetError::Cache(
                std::io::Error::from_raw_os_error(28)
            ))),
            exit::FAILURE
        );
        // Weights the run was given that cannot be read: bad input (2). Weights it made that
        // cannot be serialised: a bug (1).
        let unreadable = || face2simpson_trainer::torch::WeightsError::Mismatch("x".into());
        assert_eq!(
            code(TrainError::UnusableWeights {
                what: "loading the champion's weights".into(),
                source: unreadable()
            }),
            exit::CONFIG
        );
        assert_eq!(
            code(TrainError::Weights {
                what: "serialising the weights".into(),
                source: unreadable()
            }),
            exit::FAILURE
        );
        assert_eq!(
            code(TrainError::Distributed(c10d::Error::Collective {
                op: "allreduce",
                failure: c10d::Failure::Network,
                message: "Connection reset by peer".into()
            })),
            exit::PEER
        );
        assert_eq!(
            code(TrainError::Interrupted { epoch: 2, step: 3 }),
            exit::TERMINATED
        );
        assert_eq!(
            (
                exit::CONFIG,
                exit::STORE,
                exit::DEVICE,
                exit::PEER,
                exit::TERMINATED
            ),
            (2, 3, 4, 5, 143),
            "the operator's podFailurePolicy and docs/operator.md name these"
        );
    }

    fn world(args: &[&str], env: &[(&str, &str)]) -> Result<World, String> {
        #[derive(Debug, Parser)]
        struct Probe {
            #[command(flatten)]
            world: WorldArgs,
        }
        let mut argv = vec!["probe"];
        argv.extend_from_slice(args);
        // Only the flags here: clap's own env lookups are what the container provides and are
        // covered by `#[arg(env)]`; the fallbacks are read through `var`.
        let probe = Probe::try_parse_from(argv).map_err(|e| e.to_string())?;
        let env: std::collections::HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        probe.world.resolve(|name| env.get(name).cloned())
    }

    /// The contract with the operator and with Kubeflow's launchers: flags first, then
    /// WORLD_SIZE/RANK's fallbacks (an Indexed Job's JOB_COMPLETION_INDEX, PET_*).
    #[test]
    fn the_world_comes_from_flags_or_the_launchers_variables() {
        let w = world(&[], &[]).unwrap();
        assert_eq!((w.workers, w.rank, w.master_port), (1, 0, 29500));
        assert_eq!(w.master_addr, "127.0.0.1");
        assert_eq!(w.timeout, std::time::Duration::from_secs(300));
        let w = world(
            &[],
            &[
                ("WORLD_SIZE", "4"),
                ("JOB_COMPLETION_INDEX", "3"),
                ("PET_MASTER_ADDR", "m"),
            ],
        )
        .unwrap();
        assert_eq!((w.workers, w.rank, w.master_addr.as_str()), (4, 3, "m"));
        let w = world(
            &[],
            &[
                ("PET_NNODES", "2"),
                ("PET_NODE_RANK", "1"),
                ("PET_MASTER_PORT", "23456"),
            ],
        )
        .unwrap();
        assert_eq!((w.workers, w.rank, w.master_port), (2, 1, 23456));
        let w = world(
            &[
                "--workers",
                "2",
                "--rank",
                "0",
                "--master-addr",
                "job-0.svc",
            ],
            &[("WORLD_SIZE", "8"), ("JOB_COMPLETION_INDEX", "5")],
        )
        .unwrap();
        assert_eq!(
            (w.workers, w.rank, w.master_addr.as_str()),
            (2, 0, "job-0.svc")
        );
        assert!(world(&["--workers", "2", "--rank", "2"], &[]).is_err());
        assert!(
            world(&[], &[("WORLD_SIZE", "two")])
                .unwrap_err()
                .contains("WORLD_SIZE")
        );
        assert!(world(&["--collective-timeout-seconds", "0"], &[]).is_err());
    }
}
