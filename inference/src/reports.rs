//! Starting what a pod tells the operator through the store (see `artifacts::live`): the
//! champion's live verdicts and, when a shadow assignment is configured, the shadow stage.

use std::time::Duration;

use artifacts::StorageError;
use artifacts::live::live_verdicts_of;
use tokio::task::JoinHandle;

use crate::report_store::StoreFile;
use crate::shadow::Poller;
use crate::{AppState, RuntimeConfig};

/// How this pod reports.
#[derive(Debug, Clone)]
pub struct ReportConfig {
    /// This pod's name: its report files are named after it.
    pub pod: String,
    /// How often `shadow.json` is polled and the report files are written.
    pub interval: Duration,
    /// Full URL of the model's `shadow.json`; `None`: no shadow stage.
    pub shadow_uri: Option<String>,
    /// ONNX Runtime's library, for the candidate (which always gets one one-thread session).
    pub runtime: RuntimeConfig,
}

/// The background report tasks; dropping this stops them.
#[derive(Debug, Default)]
pub struct Reporters {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Reporters {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// True for a URL the store opens as the model loader does (`s3://`, `file://`, …). A plain
/// path is a developer's directory: nothing is written beside it.
fn is_store_url(uri: &str) -> bool {
    uri.contains("://")
}

impl AppState {
    /// Starts the report tasks for the champion loaded from `model_uri` (call after
    /// [`AppState::install`]). Fails only on a `shadow_uri` that cannot name a file in a store;
    /// store errors later are logged, retried, and never reach a request.
    pub fn start_reports(
        &self,
        model_uri: &str,
        config: ReportConfig,
    ) -> Result<Reporters, StorageError> {
        let mut reporters = Reporters::default();
        let interval = config.interval.max(Duration::from_millis(10));
        self.inner.shadow.card.set_ttl(interval);
        if is_store_url(model_uri) {
            let file = StoreFile::open(&live_verdicts_of(model_uri, &config.pod))?;
            let task = crate::live::flush_every(self.clone(), file, config.pod.clone(), interval);
            reporters.tasks.push(tokio::spawn(task));
        } else {
            tracing::info!(model = %model_uri, "the model is not in a store: no live verdict reports");
        }
        if let Some(uri) = &config.shadow_uri {
            let poller = Poller {
                state: self.clone(),
                assignment: StoreFile::open(uri)?,
                pod: config.pod.clone(),
                interval,
                runtime: RuntimeConfig {
                    workers: 1,
                    threads: 1,
                    solo_threads: 0,
                    ..config.runtime.clone()
                },
            };
            reporters.tasks.push(tokio::spawn(poller.run()));
        }
        Ok(reporters)
    }
}
