//! Roll out: requests that change the champion (rollback, promote a named run), serving the
//! recorded champion, and watching its rollout until the new pods are available, rolling
//! back on their own when they never become so.

use std::time::Duration;

use artifacts::{StorageError, layout};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::migrate::Migration;
use super::{Concern, Counted, Error, MANAGER, Pass};

/// `ApplyFailed` and `Ready` reason: an object the model would serve through belongs to someone
/// else.
pub const NOT_OWNED: &str = "ObjectNotOwned";
/// `RolloutFailed` reason (and history decision): the inference pods do not become available.
const ROLLOUT_FAILED: &str = "RolloutFailed";
use crate::builders::{self, PodSelection, RUN_ID_LABEL};
use crate::crd::{
    ChampionStatus, HistoryEntry, PROMOTE_RUN_ANNOTATION, ROLLBACK_REQUEST_ANNOTATION,
    RolloutStatus, Verdict,
};

/// How often a rollout in progress is looked at even without a Deployment event.
const ROLLOUT_REQUEUE: Duration = Duration::from_secs(30);

/// Where the Deployment's rollout of its current template stands, read the way
/// `kubectl rollout status` reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum RolloutState {
    /// Every replica runs the current template and is available.
    Complete,
    /// Still rolling, or not yet observed by the Deployment controller.
    Progressing(String),
    /// The Deployment controller gave up: `ProgressDeadlineExceeded`.
    Failed(String),
}

/// Reads a Deployment's rollout from its status.
pub fn rollout_state(d: &Deployment) -> RolloutState {
    let generation = d.metadata.generation.unwrap_or(0);
    let Some(status) = d.status.as_ref() else {
        return RolloutState::Progressing("the Deployment has no status yet".into());
    };
    if status.observed_generation.unwrap_or(0) < generation {
        return RolloutState::Progressing(format!(
            "waiting for the Deployment controller to observe generation {generation}"
        ));
    }
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing")
        && c.status == "False"
        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    {
        return RolloutState::Failed(
            c.message
                .clone()
                .unwrap_or_else(|| "the rollout exceeded its progress deadline".into()),
        );
    }
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < desired {
        RolloutState::Progressing(format!("{updated} of {desired} pods run the new model"))
    } else if total > updated {
        RolloutState::Progressing(format!(
            "{} pods of the previous model are still terminating",
            total - updated
        ))
    } else if available < updated {
        RolloutState::Progressing(format!(
            "{available} of {updated} pods of the new model are available"
        ))
    } else {
        RolloutState::Complete
    }
}

/// The run whose weights a Deployment's pod template serves.
fn served_run(d: &Deployment) -> Option<&str> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(RUN_ID_LABEL)
        .map(String::as_str)
}

impl Pass<'_> {
    /// A changed rollback annotation puts the previous champion back in service.
    pub(super) fn rollback(&mut self) {
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
            self.emit(
                EventType::Warning,
                "RollbackImpossible",
                "Rollback",
                message,
            );
            return;
        };
        let reason = format!(
            "manual rollback from {} to {}",
            current.run_id, previous.run_id
        );
        self.record(HistoryEntry {
            run_id: previous.run_id.clone(),
            decision: Verdict::Rollback,
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
        self.emit(EventType::Normal, "RolledBack", "Rollback", reason);
    }

    /// A changed `face2simpson.io/promote-run` annotation puts that run in service, provided
    /// it was evaluated (its metrics.json is valid and belongs to this model) and its weights
    /// exist. A store outage leaves the request pending for the next pass.
    pub(super) async fn promote_run(&mut self) -> Result<(), Error> {
        let Some(request) = self
            .sm
            .annotations()
            .get(PROMOTE_RUN_ANNOTATION)
            .filter(|v| !v.is_empty())
            .cloned()
        else {
            return Ok(());
        };
        if self.status.last_promote_request.as_deref() == Some(request.as_str()) {
            return Ok(());
        }
        let outcome = match self.find_run(&request).await? {
            Ok(Some(champion)) => Ok(champion),
            Ok(None) => return Ok(()),
            Err(message) => Err(message),
        };
        self.status.last_promote_request = Some(request.clone());
        match outcome {
            Err(message) => {
                warn!(model = %self.name, run = %request, %message, "cannot promote");
                self.emit(EventType::Warning, "PromoteImpossible", "Promote", message);
            }
            Ok(champion) => {
                let reason = format!(
                    "promoted by hand ({PROMOTE_RUN_ANNOTATION}); test accuracy {:.2}%",
                    champion.accuracy * 100.0
                );
                self.record(HistoryEntry {
                    run_id: champion.run_id.clone(),
                    decision: Verdict::ManualPromote,
                    reason: reason.clone(),
                    accuracy: Some(champion.accuracy),
                    champion_accuracy: self.status.champion.as_ref().map(|c| c.accuracy),
                    dry_run: false,
                    decided_at: Time(self.now),
                });
                let note = format!("run {}: {reason}", champion.run_id);
                self.crown(champion);
                self.count(Counted::Promotion);
                self.emit(EventType::Normal, "Promoted", "Promote", note);
            }
        }
        Ok(())
    }

    /// The champion a promote request names: `Ok(None)` while the store is unreachable,
    /// `Err` with a sentence when the run cannot be promoted.
    async fn find_run(
        &mut self,
        run_id: &str,
    ) -> Result<Result<Option<ChampionStatus>, String>, Error> {
        if let Err(e) = layout::validate_run_id(run_id) {
            return Ok(Err(e));
        }
        let store = match self.store().await? {
            Ok(store) => store,
            Err(e) => {
                warn!(model = %self.name, run = %run_id, error = %e, "store unreachable; promotion request pending");
                self.requeue_within(Duration::from_secs(60));
                return Ok(Ok(None));
            }
        };
        let owner = builders::owner_id(self.sm)?;
        // The model's own prefix first, then the shared one of runs made before it existed.
        for prefix in [builders::runs_prefix(self.sm)?, layout::RUNS.to_owned()] {
            let metrics = match store.get_metrics_in(&prefix, run_id).await {
                Ok(m) => m,
                Err(e) if e.is_not_found() => continue,
                Err(e @ StorageError::Malformed { .. }) => return Ok(Err(e.to_string())),
                Err(e) => {
                    warn!(model = %self.name, run = %run_id, error = %e, "store unreachable; promotion request pending");
                    self.requeue_within(Duration::from_secs(60));
                    return Ok(Ok(None));
                }
            };
            if metrics.run_id != run_id || metrics.owner.as_ref().is_some_and(|o| *o != owner) {
                return Ok(Err(format!(
                    "run {run_id}'s metrics.json belongs to run {} of {}, not to this model",
                    metrics.run_id,
                    metrics.owner.as_deref().unwrap_or("an unknown model")
                )));
            }
            let key = layout::weights_in(&prefix, run_id);
            return Ok(match store.head(&key).await {
                Ok(Some(_)) => Ok(Some(ChampionStatus {
                    run_id: run_id.to_owned(),
                    accuracy: metrics.test_accuracy,
                    model_uri: store.url_of(&key),
                    promoted_at: Time(self.now),
                })),
                Ok(None) => Err(format!(
                    "run {run_id} cannot be promoted: its weights {} do not exist",
                    store.url_of(&key)
                )),
                Err(e) => {
                    warn!(model = %self.name, run = %run_id, error = %e, "store unreachable; promotion request pending");
                    self.requeue_within(Duration::from_secs(60));
                    Ok(None)
                }
            });
        }
        Ok(Err(format!(
            "run {run_id} cannot be promoted: it has no metrics.json under {} or {}; only evaluated runs can be",
            builders::runs_prefix(self.sm)?,
            layout::RUNS
        )))
    }

    /// Server-side applies the Deployment and Service of the recorded champion, and reads
    /// the rollout. Returns whether the champion is served: every pod runs it and is available.
    pub(super) async fn serve(&mut self) -> Result<bool, Error> {
        let Some(champion) = self.status.champion.clone() else {
            self.ready(false, "NoChampion", "no model has passed the gate yet");
            return Ok(false);
        };
        if !self.children_ours().await? {
            return Ok(false);
        }
        // A Deployment of an earlier operator is replaced first (migrate.rs).
        let migration = self.migration().await?;
        if migration == Migration::Deleting {
            return Ok(false);
        }
        let mut deployment = self.apply_deployment(&champion).await?;
        let mut state = rollout_state(&deployment);
        let mut rolled_back = false;
        if let RolloutState::Failed(message) = &state
            && served_run(&deployment) == Some(champion.run_id.as_str())
        {
            if !self.model_alone_changed(&deployment, &champion) {
                self.other_change_stalled(&champion, message);
            } else if self.roll_back_failed(&champion, message) {
                rolled_back = true;
                // Recorded before the Deployment changes, like any decision.
                self.commit().await?;
                if let Some(previous) = self.status.champion.clone() {
                    deployment = self.apply_deployment(&previous).await?;
                    state = rollout_state(&deployment);
                }
            }
        }
        let rolled_out = state == RolloutState::Complete;
        if let Migration::Orphans(orphans) = &migration
            && rolled_out
        {
            self.finish_migration(orphans).await?;
        }
        self.apply_service(migration.selection(rolled_out)).await?;
        self.autoscale().await?;
        self.clear(
            Concern::ApplyFailed,
            "Applied",
            "the inference objects apply again",
        );

        let Some(champion) = self.status.champion.clone() else {
            return Ok(false);
        };
        self.ctx
            .metrics
            .champion_accuracy
            .get_or_create(&self.labels())
            .set(champion.accuracy);
        Ok(match state {
            RolloutState::Complete => {
                let message = format!(
                    "serving run {} ({:.2}% test accuracy)",
                    champion.run_id,
                    champion.accuracy * 100.0
                );
                // A rollback made in this very pass keeps its RolloutFailed for people to
                // see; the next complete rollout clears it.
                self.rollout_available(&deployment, &champion, &message, !rolled_back);
                self.ready(true, "Serving", &message);
                true
            }
            RolloutState::Progressing(message) => {
                let message = format!("rolling out run {}: {message}", champion.run_id);
                self.ready(false, "RollingOut", &message);
                self.requeue_within(ROLLOUT_REQUEUE);
                false
            }
            RolloutState::Failed(message) => {
                let message = format!("the rollout of run {} failed: {message}", champion.run_id);
                self.ready(false, "RolloutFailed", &message);
                false
            }
        })
    }

    /// Whether every object the model serves through (Deployment, Service, and with
    /// autoscaling the HPA and PDB, all named `<name>-inference`) is absent or owned by this
    /// model. A forced server-side apply would take over an object someone else made (a
    /// Service of another team, say) and hand it to the garbage collector with the model, so
    /// such an object is reported (`Degraded=ObjectNotOwned`) and nothing is applied until it
    /// is gone. Checked with one GET per object and process; the tests' scripted API server
    /// (no watches) skips it.
    async fn children_ours(&mut self) -> Result<bool, Error> {
        if !self.ctx.caches.watching(&self.ns) {
            return Ok(true);
        }
        let name = builders::inference_name(&self.name);
        let client = self.ctx.client.clone();
        let mut foreign = None;
        if !self
            .absent_or_ours(
                Api::<Deployment>::namespaced(client.clone(), &self.ns),
                "Deployment",
                &name,
            )
            .await?
        {
            foreign = Some("Deployment");
        } else if !self
            .absent_or_ours(
                Api::<Service>::namespaced(client.clone(), &self.ns),
                "Service",
                &name,
            )
            .await?
        {
            foreign = Some("Service");
        } else if self.sm.spec.inference.autoscaling.is_some() {
            if !self
                .absent_or_ours(
                    Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &self.ns),
                    "HorizontalPodAutoscaler",
                    &name,
                )
                .await?
            {
                foreign = Some("HorizontalPodAutoscaler");
            } else if !self
                .absent_or_ours(
                    Api::<PodDisruptionBudget>::namespaced(client, &self.ns),
                    "PodDisruptionBudget",
                    &name,
                )
                .await?
            {
                foreign = Some("PodDisruptionBudget");
            }
        }
        let Some(kind) = foreign else {
            self.clear_from(
                Concern::ApplyFailed,
                &[NOT_OWNED],
                "ObjectsOwned",
                "the inference objects are this model's again",
            );
            return Ok(true);
        };
        let message = format!(
            "a {kind} named {name} exists that this SimpsonModel does not own; the operator does not take it over: delete or rename it to let the model be served"
        );
        self.warn(Concern::ApplyFailed, NOT_OWNED, "Serve", &message);
        self.ready(false, NOT_OWNED, &message);
        self.requeue_within(super::REFUSED_REQUEUE);
        Ok(false)
    }

    /// Whether the object `name` of `api` does not exist or is owned by this model.
    async fn absent_or_ours<K>(
        &self,
        api: Api<K>,
        kind: &'static str,
        name: &str,
    ) -> Result<bool, Error>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let uid = self.sm.metadata.uid.clone().unwrap_or_default();
        let caches = &self.ctx.caches;
        if caches.known_owned(kind, &self.ns, name, &uid) {
            return Ok(true);
        }
        let found = api.get_opt(name).await.map_err(|source| Error::GetChild {
            kind,
            name: name.to_owned(),
            source,
        })?;
        let Some(obj) = found else {
            return Ok(true);
        };
        let ours = self.owns(&obj);
        if ours {
            caches.owned_by(kind, &self.ns, name, &uid);
        }
        Ok(ours)
    }

    /// With `spec.inference.autoscaling`, applies the HorizontalPodAutoscaler and the
    /// PodDisruptionBudget; once it is removed, deletes the ones the operator made.
    async fn autoscale(&mut self) -> Result<(), Error> {
        let name = builders::inference_name(&self.name);
        let client = self.ctx.client.clone();
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &self.ns);
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client, &self.ns);
        let pp = PatchParams::apply(MANAGER).force();
        if let (Some(hpa), Some(pdb)) = (
            builders::inference_hpa(self.sm)?,
            builders::inference_pdb(self.sm)?,
        ) {
            hpas.patch(&name, &pp, &Patch::Apply(&hpa))
                .await
                .map_err(|source| Error::ApplyAutoscaling {
                    kind: "HorizontalPodAutoscaler",
                    name: name.clone(),
                    source,
                })?;
            pdbs.patch(&name, &pp, &Patch::Apply(&pdb))
                .await
                .map_err(|source| Error::ApplyAutoscaling {
                    kind: "PodDisruptionBudget",
                    name: name.clone(),
                    source,
                })?;
            self.status.autoscaled = true;
        } else if self.status.autoscaled {
            let gone = |r: Result<_, kube::Error>, kind| match r {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(source) => Err(Error::DeleteAutoscaling {
                    kind,
                    name: name.clone(),
                    source,
                }),
            };
            gone(
                hpas.delete(&name, &DeleteParams::default())
                    .await
                    .map(|_| ()),
                "HorizontalPodAutoscaler",
            )?;
            gone(
                pdbs.delete(&name, &DeleteParams::default())
                    .await
                    .map(|_| ()),
                "PodDisruptionBudget",
            )?;
            self.status.autoscaled = false;
        }
        Ok(())
    }

    /// Applies the Deployment serving `champion`, unless the watch cache shows it exactly as
    /// this process last applied it (then the cached object, status included, is the answer).
    async fn apply_deployment(&self, champion: &ChampionStatus) -> Result<Deployment, Error> {
        let deployment = builders::inference_deployment(self.sm, champion)?;
        let caches = &self.ctx.caches;
        if let Some(cached) = caches.unchanged_deployment(&self.ns, &deployment) {
            return Ok(cached);
        }
        let name = builders::inference_name(&self.name);
        let applied = Api::<Deployment>::namespaced(self.ctx.client.clone(), &self.ns)
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&deployment),
            )
            .await
            .map_err(|source| Error::ApplyDeployment { name, source })?;
        caches.applied("Deployment", &deployment, &applied);
        Ok(applied)
    }

    /// Applies the inference Service selecting the pods as `selection` says, unless it is
    /// unchanged since this process applied it.
    async fn apply_service(&self, selection: PodSelection) -> Result<(), Error> {
        let service = builders::inference_service_selecting(self.sm, selection)?;
        let caches = &self.ctx.caches;
        if caches.unchanged_service(&self.ns, &service) {
            return Ok(());
        }
        let name = builders::inference_name(&self.name);
        let applied = Api::<Service>::namespaced(self.ctx.client.clone(), &self.ns)
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&service),
            )
            .await
            .map_err(|source| Error::ApplyService { name, source })?;
        caches.applied("Service", &service, &applied);
        Ok(())
    }

    /// Whether a stalled rollout of the champion differs from the last one that became
    /// available by the model alone: only then is the model to blame and rolled back. Without
    /// a record (the first rollout, or a status from an older operator) the model is blamed.
    fn model_alone_changed(&self, deployment: &Deployment, champion: &ChampionStatus) -> bool {
        let Some(last) = &self.status.rollout else {
            return true;
        };
        let Some(template) = deployment.spec.as_ref().map(|s| &s.template) else {
            return true;
        };
        last.run_id != champion.run_id
            && builders::template_hash_without_model(template) == last.template_hash
    }

    /// A change other than the model (spec, image, quota, Secret, pod overrides) does not
    /// become available: the champion stays, and Degraded=RolloutFailed says so until a
    /// rollout completes.
    fn other_change_stalled(&mut self, champion: &ChampionStatus, why: &str) {
        let message = format!(
            "the inference pods do not become available after a change other than the model ({why}); run {} stays the champion: fix or revert the change",
            champion.run_id
        );
        if !self.failing_with(Concern::RolloutFailed, ROLLOUT_FAILED) {
            warn!(model = %self.name, %message, "rollout stalled");
        }
        self.warn(Concern::RolloutFailed, ROLLOUT_FAILED, "Rollout", &message);
    }

    /// A rollout became available: remember its template (without the model) and, with
    /// `clear_failure`, clear a RolloutFailed left by an earlier stall.
    fn rollout_available(
        &mut self,
        deployment: &Deployment,
        champion: &ChampionStatus,
        message: &str,
        clear_failure: bool,
    ) {
        if let Some(template) = deployment.spec.as_ref().map(|s| &s.template) {
            let template_hash = builders::template_hash_without_model(template);
            let unchanged =
                self.status.rollout.as_ref().is_some_and(|r| {
                    r.run_id == champion.run_id && r.template_hash == template_hash
                });
            if !unchanged {
                self.status.rollout = Some(RolloutStatus {
                    run_id: champion.run_id.clone(),
                    template_hash,
                    available_at: Time(self.now),
                });
            }
        }
        if clear_failure {
            self.clear(Concern::RolloutFailed, "RolloutComplete", message);
        }
    }

    /// The champion's pods never became available within the progress deadline: put the
    /// previous champion back, and do not keep the failed model as the one the next run is
    /// compared with. Returns whether the champion changed.
    fn roll_back_failed(&mut self, failed: &ChampionStatus, why: &str) -> bool {
        let Some(previous) = self.status.previous_champion.take() else {
            let message = format!(
                "the rollout of run {} failed and there is no previous champion to go back to: {why}",
                failed.run_id
            );
            self.warn(Concern::RolloutFailed, ROLLOUT_FAILED, "Rollout", &message);
            return false;
        };
        let reason = format!(
            "the rollout of run {} failed ({why}); back to run {}",
            failed.run_id, previous.run_id
        );
        warn!(model = %self.name, %reason, "automatic rollback");
        self.record(HistoryEntry {
            run_id: failed.run_id.clone(),
            decision: Verdict::RolloutFailed,
            reason: reason.clone(),
            accuracy: Some(failed.accuracy),
            champion_accuracy: Some(previous.accuracy),
            dry_run: false,
            decided_at: Time(self.now),
        });
        self.status.champion = Some(ChampionStatus {
            promoted_at: Time(self.now),
            ..previous
        });
        // A decision, announced once with its own event.
        self.report(Concern::RolloutFailed, ROLLOUT_FAILED, &reason);
        self.emit(EventType::Warning, ROLLOUT_FAILED, "Rollback", reason);
        true
    }
}
