//! Leader election against the scripted API server: which requests a candidate makes, that
//! every write carries the resourceVersion it read, and how a leader steps down.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Step, api_error, mock_api};
use face2simpson_operator::leader::{Attempt, ElectionConfig, Elector, Lost};
use http::{Method, Request, Response};
use jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

const LEASE_NS: &str = "face2simpson-system";
const LEASE: &str = "face2simpson-operator";
const NOW: &str = "2026-12-01T06:00:00Z";

fn leases() -> String {
    format!("/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases")
}

fn lease_path() -> String {
    format!("{}/{LEASE}", leases())
}

/// Short timing so that expiry and deadlines pass within a test.
fn config(identity: &str) -> ElectionConfig {
    ElectionConfig {
        lease_name: LEASE.into(),
        namespace: LEASE_NS.into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(500),
        retry_period: Duration::from_millis(100),
    }
}

fn elector(client: Client, identity: &str) -> Elector {
    let now: Timestamp = NOW.parse().unwrap();
    Elector::with_clock(client, config(identity), Arc::new(move || now)).unwrap()
}

fn lease(holder: &str, resource_version: &str, renewed: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": LEASE, "namespace": LEASE_NS, "resourceVersion": resource_version},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 1,
            "acquireTime": "2026-12-01T05:00:00.000000Z",
            "renewTime": renewed,
            "leaseTransitions": 2,
        },
    })
}

fn get(answer: Value) -> Step {
    Step::new(Method::GET, lease_path(), move |_| (200, answer))
}

/// A PUT that the API server accepts, answered with the next resourceVersion.
fn put() -> Step {
    Step::new(Method::PUT, lease_path(), |b| {
        let mut written = b.clone();
        let rv: u64 = b["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        written["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
        (200, written)
    })
}

#[tokio::test]
async fn the_first_candidate_creates_the_lease_and_leads() {
    let (client, server) = mock_api(vec![
        Step::new(Method::GET, lease_path(), |_| {
            (404, api_error(404, "NotFound"))
        }),
        Step::new(Method::POST, leases(), |b| {
            let mut created = b.clone();
            created["metadata"]["resourceVersion"] = json!("1");
            (201, created)
        }),
    ]);
    let mut a = elector(client, "operator-a");
    assert_eq!(a.try_acquire_or_renew().await.unwrap(), Attempt::Leading);
    assert!(a.is_leading());
    let seen = server.await.unwrap();
    let spec = &seen[1].body["spec"];
    assert_eq!(spec["holderIdentity"], "operator-a");
    assert_eq!(spec["leaseDurationSeconds"], 1);
    assert_eq!(spec["leaseTransitions"], 0);
    assert_eq!(spec["renewTime"], spec["acquireTime"]);
}

#[tokio::test]
async fn a_held_lease_is_waited_for_then_taken_over_with_its_resource_version() {
    let held = lease("operator-b", "7", "2026-12-01T05:59:59.000000Z");
    let (client, server) = mock_api(vec![get(held.clone()), get(held), put()]);
    let mut a = elector(client, "operator-a");
    // Held and (from what this candidate has seen) alive: nothing is written.
    assert_eq!(
        a.try_acquire_or_renew().await.unwrap(),
        Attempt::Standby {
            holder: Some("operator-b".into())
        }
    );
    // The holder has not renewed for a lease duration: taken over.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(a.try_acquire_or_renew().await.unwrap(), Attempt::Leading);
    let seen = server.await.unwrap();
    let written = &seen[2].body;
    assert_eq!(
        written["metadata"]["resourceVersion"], "7",
        "the takeover must be guarded by the version it read"
    );
    assert_eq!(written["spec"]["holderIdentity"], "operator-a");
    assert_eq!(written["spec"]["leaseTransitions"], 3);
    assert_eq!(
        written["spec"]["acquireTime"],
        "2026-12-01T06:00:00.000000Z"
    );
}

#[tokio::test]
async fn a_candidate_that_loses_the_race_is_a_standby() {
    let free = lease("", "7", "2026-12-01T05:59:59.000000Z");
    let (client, server) = mock_api(vec![
        // Both saw a free Lease; the other candidate's PUT landed first.
        get(free),
        Step::new(Method::PUT, lease_path(), |_| {
            (409, api_error(409, "Conflict"))
        }),
        // Both saw no Lease; the other candidate created it first.
        Step::new(Method::GET, lease_path(), |_| {
            (404, api_error(404, "NotFound"))
        }),
        Step::new(Method::POST, leases(), |_| {
            (409, api_error(409, "AlreadyExists"))
        }),
    ]);
    let mut a = elector(client, "operator-a");
    for _ in 0..2 {
        assert_eq!(
            a.try_acquire_or_renew().await.unwrap(),
            Attempt::Standby { holder: None }
        );
        assert!(!a.is_leading());
    }
    server.await.unwrap();
}

#[tokio::test]
async fn the_leader_renews_its_own_lease_and_steps_down_when_another_holds_it() {
    let mine = lease("operator-a", "7", "2026-12-01T05:59:59.000000Z");
    let theirs = lease("operator-b", "9", "2026-12-01T06:00:01.000000Z");
    let (client, server) = mock_api(vec![get(mine), put(), get(theirs)]);
    let mut a = elector(client, "operator-a");
    // A restarted container with the same pod name resumes its own Lease at once.
    assert_eq!(a.try_acquire_or_renew().await.unwrap(), Attempt::Leading);
    // Someone else holds it now (an edit, or it expired from the others' point of view).
    let lost = tokio::time::timeout(Duration::from_secs(2), a.hold())
        .await
        .unwrap();
    assert_eq!(lost, Lost::TakenBy("operator-b".into()));
    assert!(!a.is_leading());
    let seen = server.await.unwrap();
    assert_eq!(seen[1].body["metadata"]["resourceVersion"], "7");
    assert_eq!(
        seen[1].body["spec"]["leaseTransitions"], 2,
        "a renew is no transition"
    );
    assert_eq!(
        seen[1].body["spec"]["renewTime"],
        "2026-12-01T06:00:00.000000Z"
    );
}

/// Answers the first requests with `first`, in order, then every request with 503, as an API
/// server that becomes unreachable behind a load balancer would.
fn api_going_down(first: Vec<(u16, Value)>) -> Client {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        let mut handle = Box::pin(handle);
        let mut first = first.into_iter();
        while let Some((_, send)) = handle.next_request().await {
            let (code, body) = first
                .next()
                .unwrap_or_else(|| (503, api_error(503, "ServiceUnavailable")));
            send.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&body).unwrap()))
                    .unwrap(),
            );
        }
    });
    Client::new(service, "default")
}

fn unavailable_api() -> Client {
    api_going_down(vec![])
}

#[tokio::test]
async fn the_renew_deadline_counts_from_the_acquisition_not_from_when_holding_starts() {
    let created = {
        let mut l = lease("operator-a", "1", "2026-12-01T06:00:00.000000Z");
        l["spec"]["leaseTransitions"] = json!(0);
        l
    };
    let mut a = elector(
        api_going_down(vec![(404, api_error(404, "NotFound")), (201, created)]),
        "operator-a",
    );
    assert_eq!(a.try_acquire_or_renew().await.unwrap(), Attempt::Leading);
    let acquired = tokio::time::Instant::now();
    // Whatever the operator does before it starts renewing (watches, an event) takes time.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lost = tokio::time::timeout(Duration::from_secs(3), a.hold())
        .await
        .unwrap();
    assert_eq!(lost, Lost::RenewDeadline(Duration::from_millis(500)));
    let took = acquired.elapsed();
    assert!(
        took < Duration::from_millis(800),
        "{took:?} after the acquisition"
    );
}

#[tokio::test]
async fn the_leader_gives_up_when_no_renew_succeeds_within_the_deadline() {
    let mut a = elector(unavailable_api(), "operator-a");
    let started = tokio::time::Instant::now();
    let lost = tokio::time::timeout(Duration::from_secs(3), a.hold())
        .await
        .expect("a leader that cannot renew must give up");
    let took = started.elapsed();
    assert_eq!(lost, Lost::RenewDeadline(Duration::from_millis(500)));
    // At the deadline, and before anyone else may take over (1 s after they last saw a renew).
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(1),
        "{took:?}"
    );
}

#[tokio::test]
async fn releasing_empties_the_holder_only_when_it_is_ours() {
    let mine = lease("operator-a", "7", "2026-12-01T05:59:59.000000Z");
    let theirs = lease("operator-b", "9", "2026-12-01T05:59:59.000000Z");
    let (client, server) = mock_api(vec![get(mine), put(), get(theirs)]);
    let mut a = elector(client, "operator-a");
    assert!(a.release().await.unwrap());
    // Another holder's Lease is never touched.
    assert!(!a.release().await.unwrap());
    let seen = server.await.unwrap();
    let written = &seen[1].body;
    assert_eq!(written["metadata"]["resourceVersion"], "7");
    assert_eq!(written["spec"]["holderIdentity"], "");
    assert_eq!(written["spec"]["leaseDurationSeconds"], 1);
    assert_eq!(written["spec"]["leaseTransitions"], 2);
}
