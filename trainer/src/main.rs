//! `face2simpson-trainer`: train a model, or generate a synthetic dataset.

use anyhow::{Context, Result, bail};
use artifacts::{Hyperparameters, PromotionPolicy, Storage, layout};
use clap::{Args, Parser, Subcommand};
use face2simpson_trainer::progress::Progress;
use face2simpson_trainer::train::{self, TrainConfig};
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
    Train(TrainArgs),
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
    /// Id of this run; its artifacts go to runs/<run-id>/.
    #[arg(long, env = "RUN_ID")]
    run_id: String,
    /// Run id of the current champion, re-scored on this run's test split for a fair comparison.
    #[arg(long, env = "CHAMPION_RUN_ID")]
    champion: Option<String>,
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
    /// Images fetched from the store at once.
    #[arg(long, env = "FETCH_CONCURRENCY", default_value_t = 16)]
    fetch_concurrency: usize,
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

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    match cli.command {
        Command::Train(args) => train_cmd(args).await,
        Command::Datagen(args) => datagen_cmd(args).await,
    }
}

async fn train_cmd(a: TrainArgs) -> Result<()> {
    let storage = Storage::open(&a.storage)?;
    let device =
        face2simpson_trainer::torch::parse_device(&a.device).map_err(anyhow::Error::msg)?;
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
        pretrained: (a.pretrained != "none").then_some(a.pretrained),
        promote: a.promote,
        policy: PromotionPolicy {
            min_improvement: a.min_improvement,
            min_accuracy: a.min_accuracy,
        },
        concurrency: a.fetch_concurrency,
    };
    if !(0.0..=1.0).contains(&cfg.policy.min_accuracy)
        || !(0.0..=1.0).contains(&cfg.policy.min_improvement)
    {
        bail!("--min-accuracy and --min-improvement are fractions between 0 and 1");
    }
    tracing::info!(run_id = %cfg.run_id, storage = %storage.url(), dataset = %cfg.dataset, device = %face2simpson_trainer::torch::device_name(device), "training");
    let outcome = train::run(&storage, &cfg, &Progress::auto())
        .await
        .with_context(|| format!("run {} failed; no metrics.json was written", cfg.run_id))?;
    let m = &outcome.metrics;
    tracing::info!(
        run_id = %m.run_id,
        test_accuracy = m.test_accuracy,
        champion_run_id = m.champion_run_id.as_deref(),
        champion_test_accuracy = m.champion_test_accuracy,
        epochs_run = m.epochs_run,
        best_epoch = m.best_epoch,
        skipped_files = m.skipped_files.len(),
        metrics = %storage.url_of(&layout::run_metrics(&m.run_id)),
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
