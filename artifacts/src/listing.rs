//! What a dataset prefix holds, reduced to one fingerprint: the trainer records it with every
//! run (`metrics.json`'s `listing_fingerprint`) and the operator compares it with the store's
//! listing now to know whether the data changed, without fetching a single image.

use object_store::ObjectMeta;
use sha2::{Digest, Sha256};

use crate::{Storage, StorageError};

/// `sha256:` over every listed object's key, size and ETag, in listing order (the store's
/// listing is sorted by key). An upload, a deletion or a rewrite changes it; reading does not.
pub fn listing_fingerprint(objects: &[ObjectMeta]) -> String {
    let mut hasher = Sha256::new();
    for meta in objects {
        hasher.update(meta.location.as_ref().as_bytes());
        hasher.update([0]);
        hasher.update(meta.size.to_le_bytes());
        hasher.update(meta.e_tag.as_deref().unwrap_or("").as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The objects under the dataset `prefix` (its slashes trimmed, as the trainer reads it).
pub async fn list_dataset(
    storage: &Storage,
    prefix: &str,
) -> Result<Vec<ObjectMeta>, StorageError> {
    storage.list(prefix.trim_matches('/')).await
}

/// The fingerprint of the dataset `prefix` now: one LIST, nothing fetched.
pub async fn dataset_fingerprint(storage: &Storage, prefix: &str) -> Result<String, StorageError> {
    Ok(listing_fingerprint(&list_dataset(storage, prefix).await?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn an_upload_changes_the_fingerprint_and_a_read_does_not() {
        let store = Storage::open("memory:///").unwrap();
        store
            .put("data/train/homer/1.jpg", vec![1u8; 10])
            .await
            .unwrap();
        let before = dataset_fingerprint(&store, "/data/").await.unwrap();
        assert!(before.starts_with("sha256:") && before.len() == 71);
        store.get("data/train/homer/1.jpg").await.unwrap();
        assert_eq!(dataset_fingerprint(&store, "data").await.unwrap(), before);
        store
            .put("data/train/bart/2.jpg", vec![2u8; 10])
            .await
            .unwrap();
        let after = dataset_fingerprint(&store, "data").await.unwrap();
        assert_ne!(after, before);
        // Another prefix is not part of it.
        store.put("other/x.jpg", vec![3u8; 10]).await.unwrap();
        assert_eq!(dataset_fingerprint(&store, "data").await.unwrap(), after);
    }
}
