//! Progress for people and for log collectors: a bar in a terminal, one structured log line per
//! epoch elsewhere (a Kubernetes Job's log, CI).

use std::io::IsTerminal;
use std::sync::Arc;

use artifacts::EpochRecord;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone)]
pub struct Progress {
    bar: Option<Arc<ProgressBar>>,
}

impl Progress {
    /// A bar when stderr is a terminal, log lines otherwise.
    pub fn auto() -> Self {
        if std::io::stderr().is_terminal() {
            Self::bar()
        } else {
            Self::logs()
        }
    }

    pub fn logs() -> Self {
        Self { bar: None }
    }

    fn bar() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        Self {
            bar: Some(Arc::new(bar)),
        }
    }

    fn restyle(&self, len: u64, template: &str) {
        if let Some(bar) = &self.bar {
            bar.reset();
            bar.set_length(len);
            bar.set_position(0);
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
        }
    }

    pub fn stage(&self, what: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(what.to_owned()),
            None => tracing::info!("{what}"),
        }
    }

    pub fn start_loading(&self, total: u64) {
        tracing::info!(images = total, "loading images");
        self.restyle(
            total,
            "{spinner} loading  [{bar:30}] {pos}/{len} images {per_sec} eta {eta}",
        );
    }

    pub fn loaded_one(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    pub fn finish_loading(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    pub fn start_training(&self, batches: u64) {
        self.restyle(
            batches,
            "{spinner} training [{bar:30}] {pos}/{len} batches {msg} eta {eta}",
        );
    }

    /// Counts a batch. The loss is reported per epoch: reading it per batch would make the
    /// host wait for the device at every step.
    pub fn batch_done(&self, epoch: u32) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("epoch {epoch}"));
            bar.inc(1);
        }
    }

    pub fn epoch_done(&self, r: &EpochRecord, epochs: u32) {
        let line = || {
            tracing::info!(
                epoch = r.epoch,
                epochs,
                train_loss = r.train_loss,
                train_accuracy = r.train_accuracy,
                val_loss = r.val_loss,
                val_accuracy = r.val_accuracy,
                lr = r.lr,
                seconds = r.seconds,
                "epoch done"
            )
        };
        match &self.bar {
            Some(bar) => bar.suspend(line),
            None => line(),
        }
    }

    pub fn finish_training(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
