//! Migrate: inference Deployments made before the pods carried the model's uid.
//!
//! Operators up to 0.1 selected the inference pods by `app.kubernetes.io/instance` and
//! `app.kubernetes.io/component` alone, which another release's pods (or those of a model
//! deleted and made again under the same name) match too: the Service sent them traffic and a
//! ReplicaSet could adopt them. The selectors now name the model's uid
//! ([`builders::MODEL_UID_LABEL`]). A Deployment's selector cannot be changed, so such a
//! Deployment is replaced without downtime:
//!
//! 1. it is deleted with `propagationPolicy: Orphan`: its ReplicaSet and pods stay and serve;
//! 2. once it is gone, the new Deployment is applied; its pods start beside the old ones;
//! 3. meanwhile the Service selects the labels old and new pods share
//!    ([`PodSelection::Legacy`]), so it always has a ready pod to send traffic to;
//! 4. once the new Deployment is available, the ReplicaSets left behind are deleted (their pods
//!    with them) and the Service selects by uid.
//!
//! Level-triggered like every step: each pass reads where this stands (the Deployment's
//! selector, the ReplicaSets left behind), so a restarted operator carries on where the last one
//! stopped. At rest it costs nothing: a Service that selects by uid already (in the watch cache)
//! means nothing is left to migrate, and no ReplicaSet is listed.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use kube::runtime::events::EventType;
use tracing::info;

use super::{Error, Lookup, Pass};
use crate::builders::{self, COMPONENT_LABEL, MODEL_UID_LABEL, PodSelection};

/// `Ready` reason while an old Deployment is being deleted.
pub const SELECTOR_MIGRATION: &str = "SelectorMigration";
/// How soon a pass looks again while the old Deployment is being deleted (its deletion wakes the
/// model too: this is the fallback).
const DELETING_REQUEUE: Duration = Duration::from_secs(2);

/// Where the replacement of a Deployment made before the uid label stands.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Migration {
    /// Nothing (left) to migrate: the Service selects by uid.
    Done,
    /// The old Deployment is being deleted, its ReplicaSets orphaned: nothing is applied until
    /// it is gone (the new one has its name).
    Deleting,
    /// The ReplicaSets the old Deployment left behind still serve, beside the new one's pods.
    Orphans(Vec<ReplicaSet>),
}

impl Migration {
    /// What the Service selects now, given whether the new Deployment's rollout is complete.
    pub(super) fn selection(&self, rolled_out: bool) -> PodSelection {
        match self {
            Migration::Orphans(_) if !rolled_out => PodSelection::Legacy,
            _ => PodSelection::Model,
        }
    }
}

/// A selector's labels, and how many expressions it has besides.
fn match_labels(selector: &LabelSelector) -> (BTreeMap<String, String>, usize) {
    (
        selector.match_labels.clone().unwrap_or_default(),
        selector.match_expressions.as_ref().map_or(0, Vec::len),
    )
}

/// Whether the live Deployment selects its pods otherwise than by `wanted` (its selector
/// cannot be changed: it must be made again).
pub fn selector_outdated(live: &Deployment, wanted: &BTreeMap<String, String>) -> bool {
    live.spec
        .as_ref()
        .is_some_and(|s| match_labels(&s.selector) != (wanted.clone(), 0))
}

/// Whether the Service selects the pods by `wanted` already.
pub fn selects(service: &Service, wanted: &BTreeMap<String, String>) -> bool {
    service.spec.as_ref().and_then(|s| s.selector.as_ref()) == Some(wanted)
}

/// Whether `rs` is a ReplicaSet an earlier operator's Deployment of `model` left behind: no
/// controller (its Deployment was deleted, orphaning it), the model's instance and component
/// labels, and no uid label.
pub fn left_behind(rs: &ReplicaSet, model: &str) -> bool {
    let labels = rs.labels();
    labels.get("app.kubernetes.io/instance").map(String::as_str) == Some(model)
        && labels.get(COMPONENT_LABEL).map(String::as_str) == Some("inference")
        && !labels.contains_key(MODEL_UID_LABEL)
        && rs
            .owner_references()
            .iter()
            .all(|o| o.controller != Some(true))
}

impl Pass<'_> {
    /// Where the migration of the inference Deployment stands; an outdated Deployment is
    /// deleted (its ReplicaSets orphaned) on the way. Only where the operator watches: the
    /// tests' scripted API server has no watches, and production always has.
    pub(super) async fn migration(&mut self) -> Result<Migration, Error> {
        if !self.ctx.caches.watching(&self.ns) {
            return Ok(Migration::Done);
        }
        let name = builders::inference_name(&self.name);
        let wanted = builders::inference_selector_labels(self.sm)?;
        let deployments: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let live = match self.ctx.caches.deployment(&self.ns, &name) {
            Lookup::Found(d) => Some(d.as_ref().clone()),
            Lookup::Absent => None,
            Lookup::Unknown => {
                deployments
                    .get_opt(&name)
                    .await
                    .map_err(|source| Error::GetChild {
                        kind: "Deployment",
                        name: name.clone(),
                        source,
                    })?
            }
        };
        if let Some(live) = live.filter(|d| self.owns(d) && selector_outdated(d, &wanted)) {
            self.retire(&deployments, &live).await?;
            return Ok(Migration::Deleting);
        }
        if let Lookup::Found(service) = self.ctx.caches.service(&self.ns, &name)
            && selects(&service, &wanted)
        {
            return Ok(Migration::Done);
        }
        let orphans = self.left_behind().await?;
        Ok(if orphans.is_empty() {
            Migration::Done
        } else {
            Migration::Orphans(orphans)
        })
    }

    /// Deletes the Deployment `live`, made before the uid label, orphaning its ReplicaSets
    /// (they keep serving until the new pods are available), unless that is under way.
    async fn retire(&mut self, api: &Api<Deployment>, live: &Deployment) -> Result<(), Error> {
        let name = live.name_any();
        let message = format!(
            "replacing the Deployment {name}, which selects its pods without {MODEL_UID_LABEL} (made by an earlier operator); its pods serve until the new ones are available"
        );
        self.ready(false, SELECTOR_MIGRATION, &message);
        self.requeue_within(DELETING_REQUEUE);
        if live.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        // Only the one looked at: never a Deployment made since under the same name.
        let params = DeleteParams::orphan().preconditions(only(&live.metadata.uid));
        match api.delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(source) => return Err(Error::DeleteDeployment { name, source }),
        }
        info!(model = %self.name, deployment = %name, "selector migration: the old Deployment is deleted, its ReplicaSets and pods are kept");
        // Published now, not with the pass's status: what it reports is done whether or not
        // this pass records anything, and a retried pass finds nothing left to announce.
        self.publish_event(
            EventType::Normal,
            "SelectorMigration",
            "Migrate",
            format!(
                "the Deployment {name} selected its pods without {MODEL_UID_LABEL} (made by an earlier operator): it is deleted with its ReplicaSets orphaned, which keep serving, and made again selecting the model's uid; the old pods go once the new ones are available"
            ),
        )
        .await;
        Ok(())
    }

    /// The ReplicaSets an earlier operator's Deployment of this model left behind.
    async fn left_behind(&self) -> Result<Vec<ReplicaSet>, Error> {
        let api: Api<ReplicaSet> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        let selector = builders::legacy_replica_sets_selector(&self.name);
        let listed = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(Error::ListReplicaSets)?;
        Ok(listed
            .items
            .into_iter()
            .filter(|rs| left_behind(rs, &self.name))
            .collect())
    }

    /// The new Deployment is available: the ReplicaSets the old one left behind are deleted,
    /// their pods with them; the caller then makes the Service select by uid.
    pub(super) async fn finish_migration(&mut self, orphans: &[ReplicaSet]) -> Result<(), Error> {
        let api: Api<ReplicaSet> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        for rs in orphans {
            let name = rs.name_any();
            let params = DeleteParams::background().preconditions(only(&rs.metadata.uid));
            match api.delete(&name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(source) => return Err(Error::DeleteReplicaSet { name, source }),
            }
        }
        let names: Vec<String> = orphans.iter().map(ResourceExt::name_any).collect();
        info!(model = %self.name, replica_sets = ?names, "selector migration complete: the old ReplicaSets are deleted");
        self.publish_event(
            EventType::Normal,
            "SelectorMigrated",
            "Migrate",
            format!(
                "the new Deployment is available: the ReplicaSets {} left by the old one are deleted, and the Service selects the pods by {MODEL_UID_LABEL}",
                names.join(", ")
            ),
        )
        .await;
        Ok(())
    }
}

/// A delete that applies only to the object with this uid, never to one made since under the
/// same name.
fn only(uid: &Option<String>) -> Preconditions {
    Preconditions {
        uid: uid.clone(),
        resource_version: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn wanted() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/instance".to_owned(), "homer".to_owned()),
            (
                "app.kubernetes.io/component".to_owned(),
                "inference".to_owned(),
            ),
            (MODEL_UID_LABEL.to_owned(), "u1".to_owned()),
        ])
    }

    fn deployment(selector: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "homer-inference"},
            "spec": {"selector": selector, "template": {}},
        }))
        .unwrap()
    }

    #[test]
    fn a_selector_without_the_uid_is_outdated() {
        let old = deployment(json!({"matchLabels": {
            "app.kubernetes.io/instance": "homer", "app.kubernetes.io/component": "inference"}}));
        assert!(selector_outdated(&old, &wanted()));
        let new = deployment(json!({"matchLabels": wanted()}));
        assert!(!selector_outdated(&new, &wanted()));
        let with_expressions = deployment(json!({"matchLabels": wanted(), "matchExpressions": [
            {"key": "x", "operator": "Exists"}]}));
        assert!(selector_outdated(&with_expressions, &wanted()));
    }

    #[test]
    fn only_ownerless_replica_sets_of_the_model_without_the_uid_are_left_behind() {
        let rs = |labels: serde_json::Value, owners: serde_json::Value| -> ReplicaSet {
            serde_json::from_value(json!({
                "metadata": {"name": "homer-inference-abc", "labels": labels, "ownerReferences": owners},
            }))
            .unwrap()
        };
        let old = json!({"app.kubernetes.io/instance": "homer",
            "app.kubernetes.io/component": "inference", "pod-template-hash": "abc"});
        assert!(left_behind(&rs(old.clone(), json!([])), "homer"));
        // Still owned (the orphaning is not done), another model's, or already migrated.
        let owner = json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "homer-inference",
            "uid": "d1", "controller": true}]);
        assert!(!left_behind(&rs(old.clone(), owner), "homer"));
        assert!(!left_behind(&rs(old, json!([])), "marge"));
        let new = json!({"app.kubernetes.io/instance": "homer",
            "app.kubernetes.io/component": "inference", MODEL_UID_LABEL: "u1"});
        assert!(!left_behind(&rs(new, json!([])), "homer"));
    }

    #[test]
    fn the_service_selects_old_and_new_pods_until_the_new_ones_are_available() {
        let orphans = Migration::Orphans(vec![ReplicaSet::default()]);
        assert_eq!(orphans.selection(false), PodSelection::Legacy);
        assert_eq!(orphans.selection(true), PodSelection::Model);
        assert_eq!(Migration::Done.selection(false), PodSelection::Model);
        let service: Service =
            serde_json::from_value(json!({"spec": {"selector": wanted()}})).unwrap();
        assert!(selects(&service, &wanted()));
        let old: Service = serde_json::from_value(json!({"spec": {"selector": {
            "app.kubernetes.io/instance": "homer", "app.kubernetes.io/component": "inference"}}}))
        .unwrap();
        assert!(!selects(&old, &wanted()));
    }
}
