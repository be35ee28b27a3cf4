//! Where the faces of a dataset's images were found, kept in the store between runs, so that
//! face detection runs once per image per dataset version and pipeline, not once per run.
//!
//! One JSON object per (pipeline, dataset prefix), at
//! `cache/faces/<pipeline namespace>/<sha256 of the prefix, 16 hex>.json`: object key → the
//! object's size and ETag when it was looked at, and the largest face found (or none). An entry
//! counts only while the object's size and ETag are unchanged; objects without an ETag are
//! always looked at again. The pipeline namespace changes with the pipeline version and the
//! detector's sha256, so a new detector never reuses an old one's boxes.
//!
//! The index is an optimisation: an unreadable or malformed one is ignored with a warning, and
//! failing to write it back only costs the next run the detection again.

use std::collections::BTreeMap;
use std::sync::Mutex;

use artifacts::Storage;
use pipeline::{FaceBox, PipelineId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Prefix of every face index in the store.
pub const PREFIX: &str = "cache/faces";

/// What was found in one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub size: u64,
    pub etag: String,
    /// The largest face, `None` when the image has none.
    pub face: Option<FaceBox>,
}

/// The face index of one dataset prefix under one pipeline.
#[derive(Debug)]
pub struct FaceIndex {
    key: String,
    entries: Mutex<BTreeMap<String, Seen>>,
    /// Lookups answered from the index, and detections run, for the log.
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
    /// Never written back: a data-parallel run's other ranks read the store, rank 0 writes.
    read_only: bool,
}

/// The store key of the index for `dataset` under `pipeline`.
pub fn index_key(pipeline: &PipelineId, dataset: &str) -> String {
    let prefix = format!("{:x}", Sha256::digest(dataset.trim_matches('/').as_bytes()));
    format!(
        "{PREFIX}/{}/{}.json",
        pipeline.cache_namespace(),
        &prefix[..16]
    )
}

impl FaceIndex {
    /// An empty index (nothing known yet) stored at `key`.
    pub fn empty(key: String) -> Self {
        Self {
            key,
            entries: Mutex::new(BTreeMap::new()),
            hits: 0.into(),
            misses: 0.into(),
            read_only: false,
        }
    }

    /// The same index, never written back ([`FaceIndex::write`] does nothing).
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Reads the index of `dataset` under `pipeline`; empty when there is none or it is
    /// unusable.
    pub async fn read(storage: &Storage, pipeline: &PipelineId, dataset: &str) -> Self {
        let index = Self::empty(index_key(pipeline, dataset));
        match storage.get(&index.key).await {
            Ok(bytes) => match serde_json::from_slice::<BTreeMap<String, Seen>>(&bytes) {
                Ok(entries) => *index.lock() = entries,
                Err(e) => {
                    tracing::warn!(key = %index.key, error = %e, "ignoring a malformed face index")
                }
            },
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                tracing::warn!(key = %index.key, error = %e, "cannot read the face index; detecting every face again")
            }
        }
        index
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Seen>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The face found earlier in `key`, if the object is unchanged since: `Some(None)` means
    /// "looked, no face".
    pub fn lookup(&self, key: &str, size: u64, etag: Option<&str>) -> Option<Option<FaceBox>> {
        use std::sync::atomic::Ordering::Relaxed;
        let found = etag.and_then(|etag| {
            self.lock()
                .get(key)
                .filter(|s| s.size == size && s.etag == etag)
                .map(|s| s.face)
        });
        match found {
            Some(_) => self.hits.fetch_add(1, Relaxed),
            None => self.misses.fetch_add(1, Relaxed),
        };
        found
    }

    /// Records what detection found in `key` (nothing is kept for objects without an ETag).
    pub fn record(&self, key: &str, size: u64, etag: Option<&str>, face: Option<FaceBox>) {
        if let Some(etag) = etag {
            let seen = Seen {
                size,
                etag: etag.to_owned(),
                face,
            };
            self.lock().insert(key.to_owned(), seen);
        }
    }

    /// `(answered from the index, detected)`.
    pub fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }

    /// Writes the index back, keeping only the objects in `keep` (objects gone from the dataset
    /// are forgotten). Failures are logged, not returned.
    pub async fn write(&self, storage: &Storage, keep: impl Fn(&str) -> bool) {
        let (hits, misses) = self.counts();
        if misses == 0 || self.read_only {
            return; // nothing new was learned, or another rank writes it
        }
        let body = {
            let mut entries = self.lock();
            entries.retain(|k, _| keep(k));
            serde_json::to_vec(&*entries)
        };
        let result = match body {
            Ok(body) => storage
                .put(&self.key, body)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => {
                tracing::info!(key = %self.key, reused = hits, detected = misses, "face index written")
            }
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "cannot write the face index; the next run detects again")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(detector: &str) -> PipelineId {
        PipelineId {
            version: pipeline::PIPELINE_VERSION,
            detector_sha256: format!("sha256:{detector}"),
            crop_margin: pipeline::CROP_MARGIN,
        }
    }

    #[test]
    fn the_key_changes_with_the_detector_and_the_dataset() {
        let a = index_key(&id("aa00"), "datasets/current");
        let namespace = format!("cache/faces/v{}-aa00/", pipeline::PIPELINE_VERSION);
        assert!(a.starts_with(&namespace), "{a}");
        assert_ne!(a, index_key(&id("bb00"), "datasets/current"));
        assert_ne!(a, index_key(&id("aa00"), "datasets/other"));
        assert_eq!(a, index_key(&id("aa00"), "/datasets/current/"));
    }

    #[test]
    fn an_entry_counts_only_while_size_and_etag_are_unchanged() {
        let index = FaceIndex::empty("k".into());
        let face = FaceBox {
            x: 1,
            y: 2,
            w: 3,
            h: 4,
        };
        index.record("a.jpg", 10, Some("e1"), Some(face));
        index.record("b.jpg", 10, Some("e1"), None);
        index.record("c.jpg", 10, None, Some(face));
        assert_eq!(index.lookup("a.jpg", 10, Some("e1")), Some(Some(face)));
        assert_eq!(index.lookup("b.jpg", 10, Some("e1")), Some(None));
        assert_eq!(index.lookup("a.jpg", 11, Some("e1")), None);
        assert_eq!(index.lookup("a.jpg", 10, Some("e2")), None);
        assert_eq!(index.lookup("c.jpg", 10, None), None);
        assert_eq!(index.counts(), (2, 3));
    }
}
