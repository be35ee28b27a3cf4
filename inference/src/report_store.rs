//! What the background reports (live verdicts, shadow reports) need from the store: one file
//! named by a full URL, and logging that does not repeat itself through an outage.

use std::fmt::Display;

use artifacts::{Storage, StorageError};
use serde::Serialize;

/// One object, named by its full URL, in the store that URL opens (the same way the model is
/// loaded: `s3://`, `gs://`, `az://`, `file://`).
#[derive(Debug, Clone)]
pub struct StoreFile {
    storage: Storage,
    key: String,
}

impl StoreFile {
    /// Opens the directory of `url`; the file is its last segment.
    pub fn open(url: &str) -> Result<Self, StorageError> {
        let invalid = || StorageError::InvalidUrl {
            url: url.to_owned(),
            reason: "expected the URL of a file".into(),
        };
        let (dir, file) = url.rsplit_once('/').ok_or_else(invalid)?;
        if dir.is_empty() || file.is_empty() {
            return Err(invalid());
        }
        Ok(Self {
            storage: Storage::open(dir)?,
            key: file.to_owned(),
        })
    }

    /// The store holding the file (its directory).
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn url(&self) -> String {
        self.storage.url_of(&self.key)
    }

    pub async fn put_json<T: Serialize>(&self, value: &T) -> Result<(), StorageError> {
        self.storage.put_json(&self.key, value).await
    }
}

/// Logs a background task's store errors once per outage instead of once per interval (a store
/// down for an hour would otherwise bury the access log), and says when it works again.
#[derive(Debug)]
pub struct Outage {
    what: &'static str,
    failing: bool,
}

impl Outage {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            failing: false,
        }
    }

    pub fn failed(&mut self, error: &dyn Display) {
        if self.failing {
            tracing::debug!(what = self.what, error = %error, "store still failing");
        } else {
            tracing::warn!(
                what = self.what,
                error = %error,
                "store error; retrying every report interval, not logged again until it works"
            );
            self.failing = true;
        }
    }

    pub fn succeeded(&mut self) {
        if self.failing {
            tracing::info!(what = self.what, "store reachable again");
            self.failing = false;
        }
    }
}
