//! One watch set for every watched namespace.
//!
//! kube-runtime watches one namespace or the whole cluster. An operator restricted to a list
//! of namespaces (a Role in each, no ClusterRole) must watch each of them apart, but a
//! controller reads one store: [`merged`] turns the per-namespace watch streams of one kind
//! into the event stream of a single watch, so that one reflector store, one controller and
//! one concurrency budget cover every namespace.
//!
//! A reflector replaces its whole store at each `InitDone`. Passed through as they come, the
//! list of one namespace would wipe out the others, so the merged stream
//! - starts with one `Init … InitDone` holding the first complete list of every namespace:
//!   the store becomes ready, and the controller starts, only once every namespace has
//!   listed;
//! - turns a later re-list of one namespace (a watch that expired) into `Apply` for what it
//!   lists and `Delete` for what the store holds of that namespace and the list no longer
//!   has, so the other namespaces stay untouched.

use std::collections::{HashMap, HashSet};

use futures::{Stream, StreamExt as _};
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, Event};

/// The merged event stream of `streams`, each the watch of the namespace it is paired with
/// (`None`: every namespace). `store` is the reader of the reflector the merged stream feeds:
/// a re-list looks there for what it no longer lists.
pub fn merged<K, S>(
    streams: Vec<(Option<String>, S)>,
    store: Store<K>,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
{
    let (namespaces, streams): (Vec<_>, Vec<_>) = streams.into_iter().unzip();
    let mut merge = Merge::new(namespaces);
    futures::stream::select_all(
        streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.map(move |item| (i, item)).boxed()),
    )
    .flat_map(move |(i, item)| {
        let out = match item {
            Ok(event) => merge.step(i, event, &store).into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(out)
    })
}

/// Where one namespace's watch stands.
enum Phase<K: Resource<DynamicType = ()>> {
    /// Listing for the first time (or again before every namespace has listed): what it has
    /// seen so far, by key.
    First {
        objects: HashMap<ObjectRef<K>, K>,
        listed: bool,
    },
    /// Watching, after the merged stream's first `InitDone`.
    Watching,
    /// Listing again: the keys listed so far.
    Relisting(HashSet<ObjectRef<K>>),
}

/// The state of [`merged`]: pure but for the store it reads on a re-list, so it is tested
/// event by event.
pub struct Merge<K: Resource<DynamicType = ()>> {
    namespaces: Vec<Option<String>>,
    phases: Vec<Phase<K>>,
    /// Whether the merged stream has sent its `InitDone`.
    ready: bool,
}

impl<K: Resource<DynamicType = ()>> std::fmt::Debug for Merge<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Merge")
            .field("namespaces", &self.namespaces)
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

impl<K> Merge<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    pub fn new(namespaces: Vec<Option<String>>) -> Self {
        let phases = namespaces
            .iter()
            .map(|_| Phase::First {
                objects: HashMap::new(),
                listed: false,
            })
            .collect();
        Self {
            namespaces,
            phases,
            ready: false,
        }
    }

    /// What the merged stream says after `event` of the watch `i`.
    pub fn step(&mut self, i: usize, event: Event<K>, store: &Store<K>) -> Vec<Event<K>> {
        if self.ready {
            return self.watching(i, event, store);
        }
        let Phase::First { objects, listed } = &mut self.phases[i] else {
            return Vec::new();
        };
        match event {
            Event::Init => {
                objects.clear();
                *listed = false;
            }
            Event::InitApply(obj) | Event::Apply(obj) => {
                objects.insert(ObjectRef::from(&obj), obj);
            }
            Event::Delete(obj) => {
                objects.remove(&ObjectRef::from(&obj));
            }
            Event::InitDone => *listed = true,
        }
        let all_listed = self
            .phases
            .iter()
            .all(|p| matches!(p, Phase::First { listed: true, .. }));
        if !all_listed {
            return Vec::new();
        }
        self.ready = true;
        let mut out = vec![Event::Init];
        for phase in std::mem::take(&mut self.phases) {
            if let Phase::First { objects, .. } = phase {
                out.extend(objects.into_values().map(Event::InitApply));
            }
            self.phases.push(Phase::Watching);
        }
        out.push(Event::InitDone);
        out
    }

    fn watching(&mut self, i: usize, event: Event<K>, store: &Store<K>) -> Vec<Event<K>> {
        match event {
            Event::Apply(obj) => vec![Event::Apply(obj)],
            Event::Delete(obj) => vec![Event::Delete(obj)],
            Event::Init => {
                self.phases[i] = Phase::Relisting(HashSet::new());
                Vec::new()
            }
            Event::InitApply(obj) => {
                if let Phase::Relisting(seen) = &mut self.phases[i] {
                    seen.insert(ObjectRef::from(&obj));
                }
                vec![Event::Apply(obj)]
            }
            Event::InitDone => {
                let Phase::Relisting(seen) =
                    std::mem::replace(&mut self.phases[i], Phase::Watching)
                else {
                    return Vec::new();
                };
                let namespace = self.namespaces[i].as_deref();
                store
                    .state()
                    .into_iter()
                    .filter(|obj| {
                        namespace.is_none_or(|ns| obj.meta().namespace.as_deref() == Some(ns))
                    })
                    .filter(|obj| !seen.contains(&ObjectRef::from(obj.as_ref())))
                    .map(|obj| Event::Delete(obj.as_ref().clone()))
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::ResourceExt;
    use kube::runtime::reflector;

    fn cm(ns: &str, name: &str, v: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns},
            "data": {"v": v},
        }))
        .unwrap()
    }

    /// What the store holds, as `ns/name=v`, sorted.
    fn contents(store: &Store<ConfigMap>) -> Vec<String> {
        let mut all: Vec<String> = store
            .state()
            .iter()
            .map(|c| {
                format!(
                    "{}/{}={}",
                    c.namespace().unwrap(),
                    c.name_any(),
                    c.data.as_ref().unwrap()["v"]
                )
            })
            .collect();
        all.sort();
        all
    }

    struct Harness {
        merge: Merge<ConfigMap>,
        store: Store<ConfigMap>,
        writer: reflector::store::Writer<ConfigMap>,
    }

    impl Harness {
        fn new(namespaces: &[&str]) -> Self {
            let (store, writer) = reflector::store();
            Self {
                merge: Merge::new(namespaces.iter().map(|n| Some((*n).to_owned())).collect()),
                store,
                writer,
            }
        }

        /// Feeds one event of watch `i` through the merge into the store; what came out.
        fn feed(&mut self, i: usize, event: Event<ConfigMap>) -> Vec<String> {
            let out = self.merge.step(i, event, &self.store);
            for e in &out {
                self.writer.apply_watcher_event(e);
            }
            out.iter()
                .map(|e| match e {
                    Event::Init => "Init".to_owned(),
                    Event::InitDone => "InitDone".to_owned(),
                    Event::InitApply(c) => format!("InitApply {}", c.name_any()),
                    Event::Apply(c) => format!("Apply {}", c.name_any()),
                    Event::Delete(c) => format!("Delete {}", c.name_any()),
                })
                .collect()
        }

        fn ready(&self) -> bool {
            futures::FutureExt::now_or_never(self.store.wait_until_ready()).is_some()
        }
    }

    #[test]
    fn the_store_is_ready_once_every_namespace_has_listed() {
        let mut h = Harness::new(&["a", "b"]);
        assert!(h.feed(0, Event::Init).is_empty());
        assert!(h.feed(0, Event::InitApply(cm("a", "x", "1"))).is_empty());
        assert!(h.feed(0, Event::InitDone).is_empty());
        // a watches on while b still lists: its changes wait for the merged list.
        assert!(h.feed(0, Event::Apply(cm("a", "x", "2"))).is_empty());
        assert!(h.feed(0, Event::Apply(cm("a", "y", "1"))).is_empty());
        assert!(h.feed(0, Event::Delete(cm("a", "y", "1"))).is_empty());
        assert!(h.feed(1, Event::Init).is_empty());
        assert!(h.feed(1, Event::InitApply(cm("b", "x", "1"))).is_empty());
        assert!(!h.ready());
        let mut out = h.feed(1, Event::InitDone);
        out.sort();
        assert_eq!(
            out,
            ["Init", "InitApply x", "InitApply x", "InitDone"].map(String::from)
        );
        assert!(h.ready());
        assert_eq!(contents(&h.store), ["a/x=2", "b/x=1"]);
    }

    #[test]
    fn a_list_started_over_before_the_first_init_done_forgets_what_it_had_listed() {
        let mut h = Harness::new(&["a", "b"]);
        h.feed(0, Event::Init);
        h.feed(0, Event::InitApply(cm("a", "gone", "1")));
        // The list failed and starts over: "gone" was deleted meanwhile.
        h.feed(0, Event::Init);
        h.feed(0, Event::InitApply(cm("a", "x", "1")));
        h.feed(0, Event::InitDone);
        h.feed(1, Event::Init);
        h.feed(1, Event::InitDone);
        assert_eq!(contents(&h.store), ["a/x=1"]);
    }

    #[test]
    fn a_relist_of_one_namespace_leaves_the_others_alone() {
        let mut h = Harness::new(&["a", "b"]);
        for (i, ns) in [(0, "a"), (1, "b")] {
            h.feed(i, Event::Init);
            h.feed(i, Event::InitApply(cm(ns, "x", "1")));
            h.feed(i, Event::InitApply(cm(ns, "y", "1")));
            h.feed(i, Event::InitDone);
        }
        assert_eq!(contents(&h.store), ["a/x=1", "a/y=1", "b/x=1", "b/y=1"]);
        // Live changes pass through.
        assert_eq!(h.feed(1, Event::Apply(cm("b", "z", "1"))), ["Apply z"]);
        assert_eq!(h.feed(1, Event::Delete(cm("b", "z", "1"))), ["Delete z"]);
        // a's watch expired: it lists again, y was deleted and x changed meanwhile.
        assert!(h.feed(0, Event::Init).is_empty());
        assert_eq!(h.feed(0, Event::InitApply(cm("a", "x", "2"))), ["Apply x"]);
        assert_eq!(h.feed(0, Event::InitDone), ["Delete y"]);
        assert_eq!(contents(&h.store), ["a/x=2", "b/x=1", "b/y=1"]);
        assert!(h.ready());
    }

    #[tokio::test]
    async fn merged_streams_fill_one_store() {
        let (store, mut writer) = reflector::store::<ConfigMap>();
        let a = futures::stream::iter(vec![
            Ok(Event::Init),
            Ok(Event::InitApply(cm("a", "x", "1"))),
            Ok(Event::InitDone),
        ]);
        let b = futures::stream::iter(vec![
            Ok(Event::Init),
            Ok(Event::InitApply(cm("b", "x", "1"))),
            Ok(Event::InitDone),
            Ok(Event::Apply(cm("b", "y", "1"))),
        ]);
        let events: Vec<_> = merged(
            vec![(Some("a".to_owned()), a), (Some("b".to_owned()), b)],
            store.clone(),
        )
        .collect()
        .await;
        for e in events {
            writer.apply_watcher_event(&e.unwrap());
        }
        let mut names: Vec<String> = store
            .state()
            .iter()
            .map(|c| format!("{}/{}", c.namespace().unwrap(), c.name_any()))
            .collect();
        names.sort();
        assert_eq!(names, ["a/x", "b/x", "b/y"]);
    }
}
