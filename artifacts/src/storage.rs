//! Opening a store from a URL and reading/writing the contract's objects with clear errors.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use url::Url;

/// Everything that can go wrong between us and the bucket, phrased for the person reading logs.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid storage URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot open storage {url}: {source}")]
    Open {
        url: String,
        source: Box<object_store::Error>,
    },
    #[error("{url}/{key} does not exist")]
    NotFound { url: String, key: String },
    #[error("storage error on {url}/{key}: {source}")]
    Backend {
        url: String,
        key: String,
        source: Box<object_store::Error>,
    },
    #[error("{url}/{key} is not valid JSON for this schema: {reason}")]
    Malformed {
        url: String,
        key: String,
        reason: String,
    },
    #[error("cannot create local storage directory {path}: {source}")]
    LocalDir {
        path: String,
        source: std::io::Error,
    },
}

impl StorageError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }
}

/// The version of an object as read, for a conditional write that succeeds only if nobody
/// wrote the object in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    pub e_tag: Option<String>,
    pub version: Option<String>,
}

/// What a conditional write expects to find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// No object at the key (`PutMode::Create`).
    Absent,
    /// The object as it was read (`PutMode::Update`).
    Version(ObjectVersion),
}

/// The result of [`Storage::put_if`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conditional {
    /// Written atomically against the expectation.
    Written,
    /// The store does not support this kind of conditional write (a local directory cannot
    /// do `Update`; S3 with conditional puts disabled can do neither): the expectation was
    /// re-checked just before an ordinary write, which leaves a short window for a race.
    WrittenUnguarded,
    /// Somebody else wrote the object since it was read: nothing was written.
    Conflict,
}

/// A store plus the prefix the URL pointed at; all keys are relative to that prefix.
#[derive(Debug, Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: String,
}

impl Storage {
    /// Opens `url` with credentials from the standard environment variables
    /// (`AWS_*`, `GOOGLE_*`, `AZURE_*`). A plain path is taken as a local directory.
    pub fn open(url: &str) -> Result<Self, StorageError> {
        Self::open_with_env(url, std::env::vars())
    }

    /// Like [`Storage::open`] but with the credential variables given explicitly — the
    /// operator passes the keys of a Kubernetes Secret here.
    pub fn open_with_env<I, K, V>(url: &str, vars: I) -> Result<Self, StorageError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let invalid = |reason: String| StorageError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let parsed = if url.contains("://") || url.starts_with("memory:") {
            Url::parse(url).map_err(|e| invalid(e.to_string()))?
        } else {
            let abs = std::path::absolute(url).map_err(|e| invalid(e.to_string()))?;
            Url::from_directory_path(&abs).map_err(|()| invalid("not an absolute path".into()))?
        };
        let (scheme, prefix) =
            ObjectStoreScheme::parse(&parsed).map_err(|e| invalid(e.to_string()))?;
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
            .collect();
        // Fail fast against a store that is down instead of retrying for minutes.
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        let open = |source| StorageError::Open {
            url: url.to_owned(),
            source: Box::new(source),
        };
        let (store, root): (Arc<dyn ObjectStore>, Path) = match scheme {
            ObjectStoreScheme::Local => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| invalid("not a local path".into()))?;
                std::fs::create_dir_all(&dir).map_err(|source| StorageError::LocalDir {
                    path: dir.display().to_string(),
                    source,
                })?;
                let fs = LocalFileSystem::new_with_prefix(&dir).map_err(open)?;
                (Arc::new(fs), Path::default())
            }
            ObjectStoreScheme::Memory => (Arc::new(InMemory::new()), Path::from(prefix.as_ref())),
            ObjectStoreScheme::AmazonS3 => {
                let mut b = AmazonS3Builder::new();
                for (k, v) in vars.iter().filter(|(k, _)| k.starts_with("AWS_")) {
                    if let Ok(key) = k.to_ascii_lowercase().parse() {
                        b = b.with_config(key, v);
                    }
                }
                let s = b
                    .with_url(parsed.as_str())
                    .with_retry(retry)
                    .build()
                    .map_err(open)?;
                (Arc::new(s), Path::from(prefix.as_ref()))
            }
            ObjectStoreScheme::GoogleCloudStorage => {
                let mut b = GoogleCloudStorageBuilder::new();
                for (k, v) in vars.iter().filter(|(k, _)| k.starts_with("GOOGLE_")) {
                    if let Ok(key) = k.to_ascii_lowercase().parse() {
                        b = b.with_config(key, v);
                    }
                }
                let s = b
                    .with_url(parsed.as_str())
                    .with_retry(retry)
                    .build()
                    .map_err(open)?;
                (Arc::new(s), Path::from(prefix.as_ref()))
            }
            ObjectStoreScheme::MicrosoftAzure => {
                let mut b = MicrosoftAzureBuilder::new();
                for (k, v) in vars.iter().filter(|(k, _)| k.starts_with("AZURE_")) {
                    if let Ok(key) = k.to_ascii_lowercase().parse() {
                        b = b.with_config(key, v);
                    }
                }
                let s = b
                    .with_url(parsed.as_str())
                    .with_retry(retry)
                    .build()
                    .map_err(open)?;
                (Arc::new(s), Path::from(prefix.as_ref()))
            }
            other => {
                return Err(invalid(format!(
                    "unsupported scheme {other:?}; use file://, s3://, gs://, az:// or memory://"
                )));
            }
        };
        Ok(Self {
            store,
            root,
            url: url.trim_end_matches('/').to_owned(),
        })
    }

    /// Wraps an existing store, e.g. one `InMemory` shared between a test and the code under test.
    pub fn from_store(store: Arc<dyn ObjectStore>, root: &str, url: &str) -> Self {
        Self {
            store,
            root: Path::from(root),
            url: url.trim_end_matches('/').to_owned(),
        }
    }

    /// The URL this storage was opened from, for messages and for building child URLs.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Full URL of a key, for humans and for `MODEL_URI`.
    pub fn url_of(&self, key: &str) -> String {
        format!("{}/{}", self.url, key.trim_start_matches('/'))
    }

    /// The key a full URL names inside this store (the inverse of [`Storage::url_of`]);
    /// `None` when the URL points elsewhere.
    pub fn key_of<'a>(&self, url: &'a str) -> Option<&'a str> {
        url.strip_prefix(self.url.as_str())?
            .strip_prefix('/')
            .filter(|k| !k.is_empty())
    }

    fn path(&self, key: &str) -> Path {
        let key = key.trim_matches('/');
        match (self.root.as_ref(), key) {
            ("", key) => Path::from(key),
            (root, "") => Path::from(root),
            (root, key) => Path::from(format!("{root}/{key}")),
        }
    }

    fn relative(&self, path: &Path) -> String {
        match path.prefix_match(&self.root) {
            Some(parts) => parts
                .map(|p| p.as_ref().to_owned())
                .collect::<Vec<_>>()
                .join("/"),
            None => path.to_string(),
        }
    }

    fn backend(&self, key: &str, source: object_store::Error) -> StorageError {
        match source {
            object_store::Error::NotFound { .. } => StorageError::NotFound {
                url: self.url.clone(),
                key: key.to_owned(),
            },
            source => StorageError::Backend {
                url: self.url.clone(),
                key: key.to_owned(),
                source: Box::new(source),
            },
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        let result = self
            .store
            .get(&self.path(key))
            .await
            .map_err(|e| self.backend(key, e))?;
        result.bytes().await.map_err(|e| self.backend(key, e))
    }

    /// Size of an object without fetching it; `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match self.store.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.backend(key, e)),
        }
    }

    /// Writes an object in one request; every backend makes it visible atomically.
    pub async fn put(&self, key: &str, bytes: impl Into<Bytes>) -> Result<(), StorageError> {
        let payload = PutPayload::from_bytes(bytes.into());
        self.store
            .put(&self.path(key), payload)
            .await
            .map_err(|e| self.backend(key, e))?;
        Ok(())
    }

    /// An object and the version it was read at; `None` when it does not exist.
    pub async fn get_versioned(
        &self,
        key: &str,
    ) -> Result<Option<(Bytes, ObjectVersion)>, StorageError> {
        let result = match self.store.get(&self.path(key)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.backend(key, e)),
        };
        let version = ObjectVersion {
            e_tag: result.meta.e_tag.clone(),
            version: result.meta.version.clone(),
        };
        let bytes = result.bytes().await.map_err(|e| self.backend(key, e))?;
        Ok(Some((bytes, version)))
    }

    /// Writes `bytes` only if the object is still as `expect` says (compare-and-swap), so two
    /// writers that read the same version cannot both win. Stores that cannot do it (see
    /// [`Conditional::WrittenUnguarded`]) get a re-check and an ordinary write instead.
    pub async fn put_if(
        &self,
        key: &str,
        bytes: impl Into<Bytes>,
        expect: &Expect,
    ) -> Result<Conditional, StorageError> {
        let bytes = bytes.into();
        let mode = match expect {
            Expect::Absent => PutMode::Create,
            Expect::Version(v) => PutMode::Update(UpdateVersion {
                e_tag: v.e_tag.clone(),
                version: v.version.clone(),
            }),
        };
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let payload = PutPayload::from_bytes(bytes.clone());
        match self.store.put_opts(&self.path(key), payload, opts).await {
            Ok(_) => Ok(Conditional::Written),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(Conditional::Conflict),
            Err(object_store::Error::NotImplemented { .. }) => {
                let now = self.head_version(key).await?;
                let unchanged = match (expect, now) {
                    (Expect::Absent, None) => true,
                    (Expect::Version(v), Some(now)) => *v == now,
                    _ => false,
                };
                if !unchanged {
                    return Ok(Conditional::Conflict);
                }
                tracing::warn!(
                    store = %self.url,
                    key,
                    "the store cannot write conditionally; re-checked the object and wrote it unguarded"
                );
                self.put(key, bytes).await?;
                Ok(Conditional::WrittenUnguarded)
            }
            Err(e) => Err(self.backend(key, e)),
        }
    }

    async fn head_version(&self, key: &str) -> Result<Option<ObjectVersion>, StorageError> {
        match self.store.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(ObjectVersion {
                e_tag: meta.e_tag,
                version: meta.version,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.backend(key, e)),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.store
            .delete(&self.path(key))
            .await
            .map_err(|e| self.backend(key, e))
    }

    /// Every object under `prefix`, keys relative to the storage root, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let path = self.path(prefix);
        let mut all: Vec<ObjectMeta> = self
            .store
            .list(Some(&path))
            .try_collect()
            .await
            .map_err(|e| self.backend(prefix, e))?;
        for meta in &mut all {
            meta.location = Path::from(self.relative(&meta.location));
        }
        all.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(all)
    }

    pub async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<T, StorageError> {
        let bytes = self.get(key).await?;
        serde_json::from_slice(&bytes).map_err(|e| StorageError::Malformed {
            url: self.url.clone(),
            key: key.to_owned(),
            reason: e.to_string(),
        })
    }

    pub async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| StorageError::Malformed {
            url: self.url.clone(),
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
        self.put(key, bytes).await
    }

    /// Reads and validates a run's `metrics.json` in the shared `runs/` prefix.
    pub async fn get_metrics(&self, run_id: &str) -> Result<crate::RunMetrics, StorageError> {
        self.get_metrics_in(crate::layout::RUNS, run_id).await
    }

    /// Reads and validates a run's `metrics.json` under a runs prefix.
    pub async fn get_metrics_in(
        &self,
        prefix: &str,
        run_id: &str,
    ) -> Result<crate::RunMetrics, StorageError> {
        let key = crate::layout::metrics_in(prefix, run_id);
        let bytes = self.get(&key).await?;
        crate::RunMetrics::from_json(&bytes).map_err(|reason| StorageError::Malformed {
            url: self.url.clone(),
            key,
            reason,
        })
    }

    /// The embedded mode's champion and the version it was read at, for a conditional update.
    pub async fn get_champion_versioned(
        &self,
    ) -> Result<Option<(crate::ChampionRecord, ObjectVersion)>, StorageError> {
        let key = crate::layout::CHAMPION;
        let Some((bytes, version)) = self.get_versioned(key).await? else {
            return Ok(None);
        };
        let record = serde_json::from_slice(&bytes).map_err(|e| StorageError::Malformed {
            url: self.url.clone(),
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Some((record, version)))
    }

    /// The embedded mode's champion, `None` before the first promotion.
    pub async fn get_champion(&self) -> Result<Option<crate::ChampionRecord>, StorageError> {
        match self.get_json(crate::layout::CHAMPION).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_store_round_trip_and_listing() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/store", dir.path().display());
        let s = Storage::open(&url).unwrap();
        s.put("runs/a/metrics.json", b"{}".to_vec()).await.unwrap();
        s.put("runs/a/model.safetensors", vec![1u8, 2, 3])
            .await
            .unwrap();
        s.put("datasets/x/train/homer/1.png", vec![0u8])
            .await
            .unwrap();
        assert_eq!(
            s.get("runs/a/model.safetensors").await.unwrap().as_ref(),
            &[1, 2, 3]
        );
        let keys: Vec<String> = s
            .list("runs")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        assert_eq!(keys, ["runs/a/metrics.json", "runs/a/model.safetensors"]);
        assert_eq!(s.head("runs/a/model.safetensors").await.unwrap(), Some(3));
        assert_eq!(s.head("runs/missing").await.unwrap(), None);
        assert!(dir.path().join("store/runs/a/model.safetensors").exists());
        // A plain path means the same directory.
        let plain = Storage::open(&format!("{}/store", dir.path().display())).unwrap();
        assert_eq!(
            plain.get("runs/a/metrics.json").await.unwrap().as_ref(),
            b"{}"
        );
    }

    #[tokio::test]
    async fn memory_store_with_prefix() {
        let s = Storage::open("memory:///bucket/prefix").unwrap();
        s.put("a/b.txt", b"x".to_vec()).await.unwrap();
        let keys: Vec<String> = s
            .list("a")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        assert_eq!(keys, ["a/b.txt"]);
        assert_eq!(s.url_of("a/b.txt"), "memory:///bucket/prefix/a/b.txt");
        assert_eq!(s.key_of("memory:///bucket/prefix/a/b.txt"), Some("a/b.txt"));
        assert_eq!(s.key_of("memory:///bucket/prefixed/a/b.txt"), None);
        assert_eq!(s.key_of("s3://elsewhere/a/b.txt"), None);
    }

    #[tokio::test]
    async fn clear_errors() {
        let s = Storage::open("memory:///").unwrap();
        let err = s.get("runs/none/metrics.json").await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(
            err.to_string()
                .contains("runs/none/metrics.json does not exist"),
            "{err}"
        );
        s.put("runs/r/metrics.json", b"{not json".to_vec())
            .await
            .unwrap();
        let err = s.get_metrics("r").await.unwrap_err();
        assert!(matches!(err, StorageError::Malformed { .. }), "{err}");
        assert!(s.get_champion().await.unwrap().is_none());
        for bad in ["ftp://host/x", "s3://", "gs://"] {
            assert!(Storage::open(bad).is_err(), "{bad} accepted");
        }
    }

    /// Two writers that read the same version: the second one loses, on every kind of store
    /// (atomically in memory, with a re-check on a local directory, which cannot `Update`).
    #[tokio::test]
    async fn conditional_writes_detect_a_concurrent_writer() {
        let dir = tempfile::tempdir().unwrap();
        let stores = [
            Storage::open("memory:///").unwrap(),
            Storage::open(&format!("file://{}", dir.path().display())).unwrap(),
        ];
        for s in stores {
            let k = "champion.json";
            assert!(s.get_versioned(k).await.unwrap().is_none());
            assert_eq!(
                s.put_if(k, b"a".to_vec(), &Expect::Absent).await.unwrap(),
                Conditional::Written,
                "{}",
                s.url()
            );
            // Create again: somebody was first.
            assert_eq!(
                s.put_if(k, b"x".to_vec(), &Expect::Absent).await.unwrap(),
                Conditional::Conflict
            );
            let (bytes, v1) = s.get_versioned(k).await.unwrap().unwrap();
            assert_eq!(bytes.as_ref(), b"a");
            let first = s
                .put_if(k, b"b".to_vec(), &Expect::Version(v1.clone()))
                .await
                .unwrap();
            assert_ne!(first, Conditional::Conflict, "{}", s.url());
            // A writer still holding v1 lost the race and writes nothing.
            assert_eq!(
                s.put_if(k, b"c".to_vec(), &Expect::Version(v1))
                    .await
                    .unwrap(),
                Conditional::Conflict,
                "{}",
                s.url()
            );
            assert_eq!(s.get(k).await.unwrap().as_ref(), b"b");
        }
    }

    #[tokio::test]
    async fn unreachable_s3_is_an_error_not_a_hang() {
        // Nothing listens on port 9 of loopback: the request fails and the error names the key.
        let vars = [
            ("AWS_ENDPOINT", "http://127.0.0.1:9"),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "k"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_REGION", "us-east-1"),
        ];
        let s = Storage::open_with_env("s3://bucket/root", vars).unwrap();
        let err = s.get("runs/x/metrics.json").await.unwrap_err();
        assert!(err.to_string().contains("runs/x/metrics.json"), "{err}");
    }
}
