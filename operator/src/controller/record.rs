//! Record: the history and the status subresource, the operator's only memory.

use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::{Error, MANAGER, Pass};
use crate::crd::{HistoryEntry, SimpsonModel};

impl Pass<'_> {
    /// Adds a decision to the history, newest first, within `historyLimit`.
    pub(super) fn record(&mut self, entry: HistoryEntry) {
        self.status.history.insert(0, entry);
        self.status
            .history
            .truncate(self.sm.spec.schedule.history_limit as usize);
    }

    /// Writes the status when it differs from what the API server has: an unchanged write
    /// would wake us up again.
    ///
    /// The write carries the resourceVersion the pass started from: a pass working from an
    /// old cached copy gets a 409 and is retried from fresh data instead of overwriting a
    /// newer status (say, a decision another pass already recorded).
    pub(super) async fn write_status(&mut self) -> Result<(), Error> {
        // Degraded follows its concerns in every status written, mid-pass records included.
        self.summarize();
        if self.status == self.saved {
            return Ok(());
        }
        let mut metadata = json!({ "name": self.name });
        if let Some(rv) = &self.resource_version {
            metadata["resourceVersion"] = json!(rv);
        }
        let body = json!({
            "apiVersion": SimpsonModel::api_version(&()),
            "kind": SimpsonModel::kind(&()),
            "metadata": metadata,
            "status": self.status,
        });
        let models: Api<SimpsonModel> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let written = models
            .patch_status(
                &self.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(Error::PatchStatus)?;
        // The next write of this pass is guarded by the version this one produced.
        self.resource_version = written.metadata.resource_version;
        self.saved = self.status.clone();
        Ok(())
    }
}
