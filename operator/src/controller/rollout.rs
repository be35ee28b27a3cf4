//! Roll out: serve the champion recorded in status, and handle a rollback request.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use tracing::info;

use super::{Error, MANAGER, Pass, set_condition};
use crate::builders;
use crate::crd::{ChampionStatus, HistoryEntry, ROLLBACK_REQUEST_ANNOTATION};

impl Pass<'_> {
    /// A changed rollback annotation puts the previous champion back in service.
    pub(super) async fn rollback(&mut self) {
        let Some(request) = self
            .sm
            .annotations()
            .get(ROLLBACK_REQUEST_ANNOTATION)
            .cloned()
        else {
            return;
        };
        if self.status.last_rollback_request.as_deref() == Some(request.as_str()) {
            return;
        }
        self.status.last_rollback_request = Some(request);
        let (Some(current), Some(previous)) = (
            self.status.champion.clone(),
            self.status.previous_champion.clone(),
        ) else {
            let message =
                "rollback requested but there is no previous champion to go back to".to_owned();
            self.event(
                EventType::Warning,
                "RollbackImpossible",
                "Rollback",
                message,
            )
            .await;
            return;
        };
        let reason = format!(
            "manual rollback from {} to {}",
            current.run_id, previous.run_id
        );
        self.record(HistoryEntry {
            run_id: previous.run_id.clone(),
            decision: "Rollback".into(),
            reason: reason.clone(),
            accuracy: Some(previous.accuracy),
            champion_accuracy: Some(current.accuracy),
            dry_run: false,
            decided_at: Time(self.now),
        });
        self.status.champion = Some(ChampionStatus {
            promoted_at: Time(self.now),
            ..previous
        });
        self.status.previous_champion = Some(current);
        info!(model = %self.name, %reason, "rolled back");
        self.event(EventType::Normal, "RolledBack", "Rollback", reason)
            .await;
    }

    /// Server-side applies the Deployment and Service of the current champion.
    pub(super) async fn serve(&mut self) -> Result<(), Error> {
        let generation = self.sm.metadata.generation;
        let Some(champion) = self.status.champion.clone() else {
            set_condition(
                &mut self.status.conditions,
                "Ready",
                false,
                "NoChampion",
                "no model has passed the gate yet",
                generation,
                self.now,
            );
            return Ok(());
        };
        let pp = PatchParams::apply(MANAGER).force();
        let deployment = builders::inference_deployment(self.sm, &champion)?;
        let name = builders::inference_name(&self.name);
        Api::<Deployment>::namespaced(self.ctx.client.clone(), &self.ns)
            .patch(&name, &pp, &Patch::Apply(&deployment))
            .await
            .map_err(|source| Error::ApplyDeployment {
                name: name.clone(),
                source,
            })?;
        let service = builders::inference_service(self.sm)?;
        Api::<Service>::namespaced(self.ctx.client.clone(), &self.ns)
            .patch(&name, &pp, &Patch::Apply(&service))
            .await
            .map_err(|source| Error::ApplyService {
                name: name.clone(),
                source,
            })?;
        self.ctx
            .metrics
            .champion_accuracy
            .get_or_create(&self.labels())
            .set(champion.accuracy);
        let message = format!(
            "serving run {} ({:.2}% test accuracy)",
            champion.run_id,
            champion.accuracy * 100.0
        );
        set_condition(
            &mut self.status.conditions,
            "Ready",
            true,
            "Serving",
            &message,
            generation,
            self.now,
        );
        Ok(())
    }
}
