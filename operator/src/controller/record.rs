//! Record: the history and the status subresource, the operator's only memory.

use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::{Error, MANAGER, Pass};
use crate::crd::{HistoryEntry, SimpsonModel, SimpsonModelStatus};

impl Pass<'_> {
    /// Adds a decision to the history, newest first, within `historyLimit`.
    pub(super) fn record(&mut self, entry: HistoryEntry) {
        self.status.history.insert(0, entry);
        self.status
            .history
            .truncate(self.sm.spec.schedule.history_limit as usize);
    }

    /// Writes the status when it differs from `old`: an unchanged write would wake us up again.
    pub(super) async fn write_status(&self, old: &SimpsonModelStatus) -> Result<(), Error> {
        if self.status == *old {
            return Ok(());
        }
        let body = json!({
            "apiVersion": SimpsonModel::api_version(&()),
            "kind": SimpsonModel::kind(&()),
            "status": self.status,
        });
        let models: Api<SimpsonModel> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        models
            .patch_status(
                &self.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(Error::PatchStatus)?;
        Ok(())
    }
}
