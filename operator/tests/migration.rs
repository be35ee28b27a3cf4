//! Issue 17 item 3: a Deployment made before the inference pods carried the model's uid is
//! replaced without downtime (controller/migrate.rs), against the scripted API server with
//! the watch caches the operator has in production.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use face2simpson_operator::controller::Scope;
use face2simpson_operator::reconcile;
use http::Method;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};

const UID_LABEL: &str = "face2simpson.io/model-uid";
const OLD_RS: &str = "homer-inference-6d5f8b";

fn owner() -> Value {
    json!([{
        "apiVersion": "face2simpson.io/v1alpha1",
        "kind": "SimpsonModel",
        "name": NAME,
        "uid": UID,
        "controller": true,
    }])
}

fn old_selector() -> Value {
    json!({"app.kubernetes.io/instance": NAME, "app.kubernetes.io/component": "inference"})
}

/// The pods' labels before the uid label.
fn old_labels() -> Value {
    json!({
        "app.kubernetes.io/name": "face2simpson-inference",
        "app.kubernetes.io/instance": NAME,
        "app.kubernetes.io/component": "inference",
        "face2simpson.io/model": NAME,
    })
}

/// The inference Deployment as an operator of before the uid label made it.
fn old_deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": format!("{NAME}-inference"), "namespace": NS, "uid": "deployment-old",
            "resourceVersion": "5", "generation": 1, "ownerReferences": owner(),
        },
        "spec": {
            "selector": {"matchLabels": old_selector()},
            "template": {"metadata": {"labels": old_labels()}},
        },
    })
}

fn service(selector: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": format!("{NAME}-inference"), "namespace": NS, "resourceVersion": "6",
            "ownerReferences": owner(),
        },
        "spec": {"selector": selector},
    })
}

fn old_replica_sets() -> Value {
    let mut labels = old_labels();
    labels["pod-template-hash"] = json!("6d5f8b");
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSetList",
        "metadata": {"resourceVersion": "9"},
        "items": [{
            "metadata": {"name": OLD_RS, "namespace": NS, "uid": "rs-old", "labels": labels},
            "spec": {"selector": {"matchLabels": labels}},
        }],
    })
}

/// Watch caches holding `deployment` and `service`, as the operator's watches would. The
/// writers are returned: the caches are ready only while they live.
fn caches(
    h: &Harness,
    deployment: Option<Value>,
    service: Option<Value>,
) -> (Writer<Job>, Writer<Deployment>, Writer<Service>) {
    let (jobs, mut jw) = reflector::store::<Job>();
    let (deployments, mut dw) = reflector::store::<Deployment>();
    let (services, mut sw) = reflector::store::<Service>();
    // Listed (an InitDone replaces the store with what the list buffered), then watched.
    jw.apply_watcher_event(&watcher::Event::InitDone);
    dw.apply_watcher_event(&watcher::Event::InitDone);
    sw.apply_watcher_event(&watcher::Event::InitDone);
    if let Some(d) = deployment {
        dw.apply_watcher_event(&watcher::Event::Apply(serde_json::from_value(d).unwrap()));
    }
    if let Some(s) = service {
        sw.apply_watcher_event(&watcher::Event::Apply(serde_json::from_value(s).unwrap()));
    }
    h.ctx.caches.set(Scope {
        namespaces: Some(vec![NS.into()]),
        jobs,
        deployments,
        services,
    });
    (jw, dw, sw)
}

fn get(path: &str, answer: Value) -> Step {
    Step::new(Method::GET, path.to_owned(), move |_| {
        let code = answer["code"].as_u64().map_or(200, |c| c as u16);
        (code, answer)
    })
}

fn deployment_path() -> String {
    format!("/apis/apps/v1/namespaces/{NS}/deployments/{NAME}-inference")
}

fn service_path() -> String {
    format!("/api/v1/namespaces/{NS}/services/{NAME}-inference")
}

fn list_replica_sets() -> Step {
    get(
        &format!("/apis/apps/v1/namespaces/{NS}/replicasets"),
        old_replica_sets(),
    )
}

fn rolling(replicas: i64) -> Value {
    json!({"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
        "availableReplicas": 0})
}

fn selector_of(seen: &Seen) -> &Value {
    if seen.body["kind"] == "Service" {
        &seen.body["spec"]["selector"]
    } else {
        &seen.body["spec"]["selector"]["matchLabels"]
    }
}

#[tokio::test]
async fn an_old_deployment_is_replaced_and_its_pods_serve_until_the_new_ones_are_available() {
    let sm = serving(FIRST, "2026-11-01T00:00:00Z");
    let now = "2026-11-02T00:00:00Z";

    // 1. The Deployment of an earlier operator: deleted, its ReplicaSets orphaned.
    let h = Harness::new(
        now,
        vec![
            get(&deployment_path(), old_deployment()),
            get(&service_path(), service(old_selector())),
            Step::new(Method::DELETE, deployment_path(), |_| {
                let mut d = old_deployment();
                d["metadata"]["deletionTimestamp"] = json!("2026-11-02T00:00:00Z");
                d["metadata"]["finalizers"] = json!(["orphan"]);
                (200, d)
            }),
            // Announced at once: done whether or not the pass records anything after it.
            Step::event(),
            Step::patch_status(),
        ],
    );
    let _writers = caches(&h, Some(old_deployment()), Some(service(old_selector())));
    let action = reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_eq!(
        seen[2].body["propagationPolicy"], "Orphan",
        "{:#}",
        seen[2].body
    );
    assert_eq!(seen[2].body["preconditions"]["uid"], "deployment-old");
    let migrating = status_of(&seen[4]);
    assert_eq!(
        condition(&migrating, "Ready"),
        ("False", "SelectorMigration")
    );
    assert_eq!(seen[3].body["reason"], "SelectorMigration");
    assert_eq!(seen[3].body["type"], "Normal");
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));

    // 2. It is gone: the new Deployment selects by uid; the Service selects old and new pods
    //    while the new ones are not available.
    let h = Harness::new(
        now,
        vec![
            get(&deployment_path(), api_error(404, "NotFound")),
            get(&service_path(), service(old_selector())),
            list_replica_sets(),
            Step::apply_deployment_with(rolling),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    let _writers = caches(&h, None, Some(service(old_selector())));
    let sm = with_status(sm, migrating);
    reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert!(
        seen[2].query.contains("labelSelector=")
            && seen[2].query.contains("face2simpson.io%2Fmodel-uid"),
        "{}",
        seen[2].query
    );
    let new_deployment = seen[3].body.clone();
    assert_eq!(selector_of(&seen[3])[UID_LABEL], UID);
    assert_eq!(
        new_deployment["spec"]["template"]["metadata"]["labels"][UID_LABEL],
        UID
    );
    assert_eq!(
        selector_of(&seen[4]),
        &old_labels(),
        "the labels the old and new pods share"
    );
    let rolling_out = status_of(&seen[5]);
    assert_eq!(condition(&rolling_out, "Ready"), ("False", "RollingOut"));

    // 3. The new pods are available: the orphaned ReplicaSet goes, the Service selects by uid.
    let mut applied = new_deployment.clone();
    applied["metadata"]["uid"] = json!("deployment-new");
    let h = Harness::new(
        now,
        vec![
            get(&deployment_path(), applied.clone()),
            get(&service_path(), service(old_labels())),
            list_replica_sets(),
            Step::apply_deployment(),
            Step::new(
                Method::DELETE,
                format!("/apis/apps/v1/namespaces/{NS}/replicasets/{OLD_RS}"),
                |_| {
                    (
                        200,
                        json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "code": 200}),
                    )
                },
            ),
            Step::event(),
            Step::apply_service(),
            Step::patch_status(),
        ],
    );
    let _writers = caches(&h, Some(applied.clone()), Some(service(old_labels())));
    let sm = with_status(sm, rolling_out);
    reconcile(Arc::new(sm.clone()), h.ctx.clone())
        .await
        .unwrap();
    let seen = h.finish().await;
    assert_eq!(seen[4].body["propagationPolicy"], "Background");
    assert_eq!(seen[4].body["preconditions"]["uid"], "rs-old");
    assert_eq!(seen[5].body["reason"], "SelectorMigrated");
    let selector = selector_of(&seen[6]);
    assert_eq!(selector[UID_LABEL], UID, "{selector:#}");
    assert_eq!(selector.as_object().unwrap().len(), 3, "{selector:#}");
    let served = status_of(&seen[7]);
    assert_eq!(condition(&served, "Ready"), ("True", "Serving"));

    // 4. At rest: a Service that selects by uid means nothing is left to migrate, and no
    //    ReplicaSet is listed.
    let h = Harness::new(
        now,
        vec![
            get(&deployment_path(), applied.clone()),
            get(&service_path(), service(selector.clone())),
            Step::apply_deployment(),
            Step::apply_service(),
        ],
    );
    let _writers = caches(&h, Some(applied), Some(service(selector.clone())));
    reconcile(Arc::new(with_status(sm, served)), h.ctx.clone())
        .await
        .unwrap();
    h.finish().await;
}
