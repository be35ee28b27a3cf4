//! Watch caches of the operator's own children, so that a pass at rest costs the API server
//! nothing.
//!
//! The controller already watches the Jobs, Deployments and Services it owns (they wake the
//! model they belong to); kube's reflector keeps what those watches saw. A pass then reads its
//! Jobs from that cache instead of listing them, and skips the server-side apply of a
//! Deployment or Service when the object it wants is the one it last applied and nobody has
//! changed it since (the cached resourceVersion is the one the apply returned). A model that
//! nothing happens to is then looked at hourly for free.
//!
//! Without caches (the tests' scripted API server, or before the watches have listed) every
//! read and apply goes to the API server, as before.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use futures::FutureExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The caches of what the operator watches: the listed namespaces, or all (`None`).
#[derive(Clone)]
pub struct Scope {
    pub namespaces: Option<Vec<String>>,
    pub jobs: Store<Job>,
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("namespaces", &self.namespaces)
            .finish_non_exhaustive()
    }
}

/// The watch caches, and what the operator last applied.
#[derive(Default)]
pub struct Caches {
    scope: RwLock<Option<Scope>>,
    /// `<kind>/<namespace>/<name>` → (hash of the applied object, resourceVersion answered).
    applied: Mutex<HashMap<String, (String, String)>>,
    /// `<kind>/<namespace>/<name>/<owner uid>` of children seen owned by that model: checked
    /// once per process, not on every pass.
    owned: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches").finish_non_exhaustive()
    }
}

/// Whether a store has listed once: before that it knows only part of the cluster.
fn ready<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

/// What a watch cache says about one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup<K> {
    /// No cache of its namespace, or one that has not listed yet: ask the API server.
    Unknown,
    Absent,
    Found(Arc<K>),
}

fn lookup<K>(store: &Store<K>, ns: &str, name: &str) -> Lookup<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    if !ready(store) {
        return Lookup::Unknown;
    }
    store
        .get(&ObjectRef::new(name).within(ns))
        .map_or(Lookup::Absent, Lookup::Found)
}

/// A hash of what would be applied: equal objects, equal hashes (maps are BTreeMaps).
pub fn desired_hash(obj: &impl Serialize) -> String {
    let json = serde_json::to_vec(obj).unwrap_or_default();
    format!("{:x}", Sha256::digest(&json))
}

impl Caches {
    /// The caches of the watches, once they are set up.
    pub fn set(&self, scope: Scope) {
        *self
            .scope
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(scope);
    }

    fn scope(&self, namespace: &str) -> Option<Scope> {
        self.scope
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .filter(|s| {
                s.namespaces
                    .as_ref()
                    .is_none_or(|list| list.iter().any(|n| n == namespace))
            })
            .cloned()
    }

    /// Whether the operator watches `namespace` (in production; the tests' scripted API
    /// server has no watches).
    pub fn watching(&self, namespace: &str) -> bool {
        self.scope(namespace).is_some()
    }

    fn owned_key(kind: &str, ns: &str, name: &str, uid: &str) -> String {
        format!("{kind}/{ns}/{name}/{uid}")
    }

    /// Whether the child `kind/ns/name` was already seen owned by the model `uid`.
    pub fn known_owned(&self, kind: &str, ns: &str, name: &str, uid: &str) -> bool {
        self.owned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&Self::owned_key(kind, ns, name, uid))
    }

    /// Remembers that the child `kind/ns/name` is owned by the model `uid`.
    pub fn owned_by(&self, kind: &str, ns: &str, name: &str, uid: &str) {
        self.owned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(Self::owned_key(kind, ns, name, uid));
    }

    /// The cached Jobs of `namespace` that `keep` selects; `None` without a listed cache.
    pub fn jobs(&self, namespace: &str, keep: impl Fn(&Job) -> bool) -> Option<Vec<Job>> {
        let scope = self.scope(namespace)?;
        if !ready(&scope.jobs) {
            return None;
        }
        Some(
            scope
                .jobs
                .state()
                .iter()
                .filter(|j| j.namespace().as_deref() == Some(namespace) && keep(j))
                .map(|j| j.as_ref().clone())
                .collect(),
        )
    }

    fn key(kind: &str, namespace: &str, name: &str) -> String {
        format!("{kind}/{namespace}/{name}")
    }

    fn unchanged<K>(
        &self,
        store: &Store<K>,
        kind: &str,
        ns: &str,
        name: &str,
        hash: &str,
    ) -> Option<Arc<K>>
    where
        K: kube::Resource<DynamicType = ()> + Clone + 'static,
    {
        if !ready(store) {
            return None;
        }
        let (applied_hash, applied_rv) = self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&Self::key(kind, ns, name))
            .cloned()?;
        let cached = store.get(&ObjectRef::new(name).within(ns))?;
        (applied_hash == hash && cached.meta().resource_version.as_deref() == Some(&applied_rv))
            .then_some(cached)
    }

    /// The cached Deployment when `desired` is what was last applied and it has not changed
    /// since (not even its status): applying again would change nothing.
    pub fn unchanged_deployment(&self, ns: &str, desired: &Deployment) -> Option<Deployment> {
        let scope = self.scope(ns)?;
        let name = desired.name_any();
        self.unchanged(
            &scope.deployments,
            "Deployment",
            ns,
            &name,
            &desired_hash(desired),
        )
        .map(|d| d.as_ref().clone())
    }

    /// Whether `desired` is the Service last applied, unchanged since.
    pub fn unchanged_service(&self, ns: &str, desired: &Service) -> bool {
        let Some(scope) = self.scope(ns) else {
            return false;
        };
        let name = desired.name_any();
        self.unchanged(
            &scope.services,
            "Service",
            ns,
            &name,
            &desired_hash(desired),
        )
        .is_some()
    }

    /// The Deployment `ns/name` as the watch cache has it.
    pub fn deployment(&self, ns: &str, name: &str) -> Lookup<Deployment> {
        self.scope(ns).map_or(Lookup::Unknown, |scope| {
            lookup(&scope.deployments, ns, name)
        })
    }

    /// The Service `ns/name` as the watch cache has it.
    pub fn service(&self, ns: &str, name: &str) -> Lookup<Service> {
        self.scope(ns)
            .map_or(Lookup::Unknown, |scope| lookup(&scope.services, ns, name))
    }

    /// Whether the watch cache holds the Service `ns/name`; false when it cannot say (not
    /// listed yet, or no watch of that namespace).
    pub fn has_service(&self, ns: &str, name: &str) -> bool {
        self.scope(ns).is_some_and(|scope| {
            ready(&scope.services)
                && scope
                    .services
                    .get(&ObjectRef::new(name).within(ns))
                    .is_some()
        })
    }

    /// Records an apply: `desired` was sent, the API server answered `answered`.
    pub fn applied(&self, kind: &str, desired: &impl Serialize, answered: &impl kube::Resource) {
        let (Some(ns), Some(name), Some(rv)) = (
            answered.meta().namespace.clone(),
            answered.meta().name.clone(),
            answered.meta().resource_version.clone(),
        ) else {
            return;
        };
        self.applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(Self::key(kind, &ns, &name), (desired_hash(desired), rv));
    }

    /// Forgets what was applied for a deleted model's children named `name`.
    pub fn forget(&self, namespace: &str, name: &str) {
        let mut applied = self
            .applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for kind in ["Deployment", "Service"] {
            applied.remove(&Self::key(kind, namespace, name));
        }
        drop(applied);
        let prefix = format!("/{namespace}/{name}/");
        self.owned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|k| !k.contains(&prefix));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kube::runtime::reflector;
    use kube::runtime::watcher;

    fn deployment(rv: &str, replicas: i32) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "homer-inference", "namespace": "simpsons", "resourceVersion": rv},
            "spec": {"replicas": replicas, "selector": {}, "template": {}},
        }))
        .unwrap()
    }

    fn scope(deployments: Store<Deployment>) -> Scope {
        let (jobs, mut jw) = reflector::store::<Job>();
        let (services, mut sw) = reflector::store::<Service>();
        jw.apply_watcher_event(&watcher::Event::InitDone);
        sw.apply_watcher_event(&watcher::Event::InitDone);
        // The writers must outlive the test's reads: leak them (a test, not production).
        std::mem::forget(jw);
        std::mem::forget(sw);
        Scope {
            namespaces: Some(vec!["simpsons".into()]),
            jobs,
            deployments,
            services,
        }
    }

    #[test]
    fn an_apply_is_skipped_only_while_nothing_changed_since() {
        let caches = Caches::default();
        let (store, mut writer) = reflector::store::<Deployment>();
        caches.set(scope(store));
        let desired = deployment("", 2);
        // Before the watch listed: never skipped.
        assert!(caches.unchanged_deployment("simpsons", &desired).is_none());
        writer.apply_watcher_event(&watcher::Event::InitDone);
        // Never applied by this process: applied.
        writer.apply_watcher_event(&watcher::Event::Apply(deployment("7", 2)));
        assert!(caches.unchanged_deployment("simpsons", &desired).is_none());
        caches.applied("Deployment", &desired, &deployment("7", 2));
        // Applied, and the cache shows what the apply returned: skipped, the cached object back.
        let cached = caches.unchanged_deployment("simpsons", &desired).unwrap();
        assert_eq!(cached.metadata.resource_version.as_deref(), Some("7"));
        // Another desired object: applied.
        assert!(
            caches
                .unchanged_deployment("simpsons", &deployment("", 3))
                .is_none()
        );
        // Changed since (a status update, someone's edit): applied again.
        writer.apply_watcher_event(&watcher::Event::Apply(deployment("8", 2)));
        assert!(caches.unchanged_deployment("simpsons", &desired).is_none());
        // Forgotten with the model.
        caches.applied("Deployment", &desired, &deployment("8", 2));
        assert!(caches.unchanged_deployment("simpsons", &desired).is_some());
        caches.forget("simpsons", "homer-inference");
        assert!(caches.unchanged_deployment("simpsons", &desired).is_none());
        // Another namespace has no cache here.
        assert!(caches.unchanged_deployment("other", &desired).is_none());
    }
}
