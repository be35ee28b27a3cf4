//! Fair shares of the reconcile slots between buckets.
//!
//! A pass that waits on its store holds a reconcile slot while it waits. One slow or hung
//! bucket behind many models would then hold every slot, and models on other buckets (or
//! with nothing to ask a store) would wait for it. So the passes that use one bucket hold at
//! most a share of the slots at a time: a pass that finds its bucket's share taken does not
//! wait for it (waiting would hold a slot too) but stops and comes back after a backoff, as
//! after any failed pass. The others never see the slow bucket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The share of the reconcile slots one bucket's passes may hold: a quarter, at least one.
pub fn share_of(concurrency: u16) -> usize {
    usize::from(concurrency / 4).max(1)
}

/// One semaphore per bucket, made when a pass first asks for it.
#[derive(Debug)]
pub struct StoreGates {
    share: usize,
    gates: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl StoreGates {
    pub fn new(share: usize) -> Self {
        Self {
            share: share.max(1),
            gates: Mutex::default(),
        }
    }

    /// A place among the passes using `bucket`, or `None` when its share is taken.
    pub fn try_enter(&self, bucket: &str) -> Option<OwnedSemaphorePermit> {
        let mut gates = self
            .gates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !gates.contains_key(bucket) {
            // Buckets nobody is in are forgotten, so the map holds the busy ones only.
            let share = self.share;
            gates.retain(|_, g| g.available_permits() < share);
        }
        let gate = gates
            .entry(bucket.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.share)));
        gate.clone().try_acquire_owned().ok()
    }
}

/// What tells buckets apart: the URL's scheme and bucket, and the endpoint the credentials
/// name (two S3-compatible stores may both have a bucket called `models`).
pub fn bucket_key(url: &str, vars: &[(String, String)]) -> String {
    let bucket = match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.split('/').next().unwrap_or("")),
        None => url.to_owned(),
    };
    let mut endpoints: Vec<&str> = vars
        .iter()
        .filter(|(k, _)| k.to_ascii_uppercase().contains("ENDPOINT"))
        .map(|(_, v)| v.as_str())
        .collect();
    endpoints.sort_unstable();
    if endpoints.is_empty() {
        bucket
    } else {
        format!("{bucket}@{}", endpoints.join(","))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_bucket_holds_its_share_and_no_more() {
        assert_eq!(share_of(16), 4);
        assert_eq!(share_of(2), 1);
        let gates = StoreGates::new(2);
        let a1 = gates.try_enter("s3://slow").unwrap();
        let _a2 = gates.try_enter("s3://slow").unwrap();
        assert!(gates.try_enter("s3://slow").is_none(), "share taken");
        // Another bucket is not affected.
        let _b = gates.try_enter("s3://fast").unwrap();
        drop(a1);
        assert!(gates.try_enter("s3://slow").is_some(), "a place freed");
    }

    #[test]
    fn idle_buckets_are_forgotten() {
        let gates = StoreGates::new(1);
        drop(gates.try_enter("s3://a"));
        let _held = gates.try_enter("s3://b").unwrap();
        let len = gates.gates.lock().unwrap().len();
        assert_eq!(len, 1, "a, idle, was dropped when b came");
        assert!(gates.try_enter("s3://b").is_none());
    }

    #[test]
    fn buckets_are_told_apart_by_name_and_endpoint() {
        let vars = |endpoint: &str| {
            vec![
                ("AWS_ACCESS_KEY_ID".to_owned(), "k".to_owned()),
                ("AWS_ENDPOINT".to_owned(), endpoint.to_owned()),
            ]
        };
        assert_eq!(bucket_key("s3://models/team-a", &[]), "s3://models");
        assert_eq!(
            bucket_key("s3://models/team-a", &[]),
            bucket_key("s3://models/team-b", &[])
        );
        assert_eq!(
            bucket_key("s3://models/a", &vars("http://minio:9000")),
            "s3://models@http://minio:9000"
        );
        assert_ne!(
            bucket_key("s3://models/a", &vars("http://minio:9000")),
            bucket_key("s3://models/a", &vars("http://other:9000"))
        );
        assert_eq!(bucket_key("memory:", &[]), "memory:");
    }
}
