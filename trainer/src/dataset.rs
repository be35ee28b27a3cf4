//! Reading an ImageFolder dataset (`PREFIX/{train,test}/{homer,marge,bart,lisa}/*`) from object
//! storage: validation of the layout, concurrent fetching, parallel decoding, skipping of bad
//! files, a deterministic validation split and a content fingerprint.

use std::collections::BTreeMap;
use std::sync::Arc;

use artifacts::{SkippedFile, Storage, StorageError};
use futures::{StreamExt, TryStreamExt};
use model::{CLASSES, Preprocessor, class_index};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::cache::{Crop, CropCache};

const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{prefix} holds no objects; expected {prefix}/{{train,test}}/{{{classes}}}/*.jpg|png|webp", classes = CLASSES.join(","))]
    Missing { prefix: String },
    #[error("unknown split folder {folder:?} in {prefix}; expected only train/ and test/")]
    UnknownSplit { prefix: String, folder: String },
    #[error("unknown class folder {split}/{folder} in {prefix}; the classes are {}", CLASSES.join(", "))]
    UnknownClass {
        prefix: String,
        split: String,
        folder: String,
    },
    #[error("split {split} of {prefix} is empty")]
    EmptySplit { prefix: String, split: String },
    #[error("class {class} of split {split} in {prefix} has no usable images")]
    EmptyClass {
        prefix: String,
        split: String,
        class: String,
    },
    #[error("decoding worker failed: {0}")]
    Worker(String),
    #[error("decoded-image cache: {0}")]
    Cache(#[from] std::io::Error),
}

/// One listed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub label: usize,
    pub size: u64,
}

/// What a prefix holds, validated, before any image is fetched.
#[derive(Debug, Default)]
pub struct Listing {
    pub train: Vec<Entry>,
    pub test: Vec<Entry>,
    /// Files skipped from their name or size alone.
    pub skipped: Vec<SkippedFile>,
}

/// An image ready for the model: decoded, resized and centre-cropped, kept in the
/// [`CropCache`].
#[derive(Debug, Clone)]
pub struct Sample {
    pub key: String,
    pub label: usize,
    pub image: Crop,
}

#[derive(Debug)]
pub struct Dataset {
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    pub test: Vec<Sample>,
    pub skipped: Vec<SkippedFile>,
    pub fingerprint: String,
}

/// Lists and validates `prefix`. Layout errors are fatal; odd files are skipped with a reason.
pub async fn list(storage: &Storage, prefix: &str) -> Result<Listing, DatasetError> {
    let prefix = prefix.trim_matches('/');
    let objects = storage.list(prefix).await?;
    if objects.is_empty() {
        return Err(DatasetError::Missing {
            prefix: prefix.to_owned(),
        });
    }
    let mut listing = Listing::default();
    for meta in objects {
        let key = meta.location.to_string();
        let rel = key
            .strip_prefix(prefix)
            .unwrap_or(&key)
            .trim_start_matches('/');
        let parts: Vec<&str> = rel.split('/').collect();
        let skip = |reason: &str| SkippedFile {
            path: key.clone(),
            reason: reason.to_owned(),
        };
        let [split, class, file] = parts.as_slice() else {
            if parts.len() >= 2 && !artifacts::layout::SPLITS.contains(&parts[0]) {
                return Err(DatasetError::UnknownSplit {
                    prefix: prefix.to_owned(),
                    folder: parts[0].to_owned(),
                });
            }
            listing.skipped.push(skip("not at <split>/<class>/<file>"));
            continue;
        };
        let target = match *split {
            "train" => &mut listing.train,
            "test" => &mut listing.test,
            other => {
                return Err(DatasetError::UnknownSplit {
                    prefix: prefix.to_owned(),
                    folder: other.to_owned(),
                });
            }
        };
        let Some(label) = class_index(class) else {
            return Err(DatasetError::UnknownClass {
                prefix: prefix.to_owned(),
                split: (*split).to_owned(),
                folder: (*class).to_owned(),
            });
        };
        let ext = file
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase())
            .unwrap_or_default();
        if file.starts_with('.') || !IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            listing
                .skipped
                .push(skip("not a .jpg, .jpeg, .png or .webp file"));
            continue;
        }
        if meta.size as usize > model::preprocess::MAX_FILE_BYTES {
            listing.skipped.push(skip(&format!(
                "file is {} bytes, over the {}-byte limit",
                meta.size,
                model::preprocess::MAX_FILE_BYTES
            )));
            continue;
        }
        target.push(Entry {
            key: key.clone(),
            label,
            size: meta.size,
        });
    }
    for (split, entries) in [("train", &listing.train), ("test", &listing.test)] {
        check_classes(prefix, split, entries.iter().map(|e| e.label))?;
    }
    Ok(listing)
}

fn check_classes(
    prefix: &str,
    split: &str,
    labels: impl Iterator<Item = usize>,
) -> Result<(), DatasetError> {
    let mut counts = [0usize; CLASSES.len()];
    for l in labels {
        counts[l] += 1;
    }
    if counts.iter().all(|&c| c == 0) {
        return Err(DatasetError::EmptySplit {
            prefix: prefix.to_owned(),
            split: split.to_owned(),
        });
    }
    if let Some(i) = counts.iter().position(|&c| c == 0) {
        return Err(DatasetError::EmptyClass {
            prefix: prefix.to_owned(),
            split: split.to_owned(),
            class: CLASSES[i].to_owned(),
        });
    }
    Ok(())
}

/// How to turn a listing into samples.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where the fitted images are kept (memory up to a budget, then local disk).
    pub cache: Arc<CropCache>,
    pub pre: Preprocessor,
    /// Share of each class moved from train to validation.
    pub val_fraction: f64,
    pub seed: u64,
    /// Requests in flight to the store.
    pub concurrency: usize,
}

enum Loaded {
    Ok(Sample, [u8; 32]),
    Skipped(SkippedFile),
}

/// Fetches every listed image with `concurrency` requests in flight, decoding and fitting each
/// on the blocking pool as soon as it arrives, then carves the validation split.
pub async fn load(
    storage: &Storage,
    prefix: &str,
    listing: Listing,
    options: LoadOptions,
    on_loaded: impl Fn(),
) -> Result<Dataset, DatasetError> {
    let LoadOptions {
        cache,
        pre,
        val_fraction,
        seed,
        concurrency,
    } = options;
    let prefix = prefix.trim_matches('/');
    let Listing {
        train,
        test,
        mut skipped,
    } = listing;
    let fetch = |entries: Vec<Entry>| {
        let storage = storage.clone();
        let cache = cache.clone();
        let on_loaded = &on_loaded;
        async move {
            futures::stream::iter(entries)
                .map(move |entry| {
                    let storage = storage.clone();
                    let cache = cache.clone();
                    async move {
                        let bytes = storage.get(&entry.key).await?;
                        let loaded = tokio::task::spawn_blocking(move || {
                            let digest: [u8; 32] = Sha256::digest(&bytes).into();
                            Ok::<_, DatasetError>(match model::decode(&bytes) {
                                Ok(img) => Loaded::Ok(
                                    Sample {
                                        key: entry.key,
                                        label: entry.label,
                                        image: cache.store(pre.fit(&img))?,
                                    },
                                    digest,
                                ),
                                Err(e) => Loaded::Skipped(SkippedFile {
                                    path: entry.key,
                                    reason: e.to_string(),
                                }),
                            })
                        })
                        .await
                        .map_err(|e| DatasetError::Worker(e.to_string()))??;
                        Ok::<_, DatasetError>(loaded)
                    }
                })
                .buffer_unordered(concurrency.max(1))
                .inspect_ok(|_| on_loaded())
                .try_collect::<Vec<_>>()
                .await
        }
    };
    let mut digests: BTreeMap<String, [u8; 32]> = BTreeMap::new();
    let mut split_samples = |loaded: Vec<Loaded>, skipped: &mut Vec<SkippedFile>| {
        let mut out = Vec::with_capacity(loaded.len());
        for l in loaded {
            match l {
                Loaded::Ok(sample, digest) => {
                    digests.insert(sample.key.clone(), digest);
                    out.push(sample);
                }
                Loaded::Skipped(s) => {
                    tracing::warn!(path = %s.path, reason = %s.reason, "skipping file");
                    skipped.push(s);
                }
            }
        }
        // Completion order is arbitrary; key order makes everything downstream reproducible.
        out.sort_by(|a: &Sample, b: &Sample| a.key.cmp(&b.key));
        out
    };
    let train = split_samples(fetch(train).await?, &mut skipped);
    let test = split_samples(fetch(test).await?, &mut skipped);
    check_classes(prefix, "train", train.iter().map(|s| s.label))?;
    check_classes(prefix, "test", test.iter().map(|s| s.label))?;
    skipped.sort_by(|a, b| a.path.cmp(&b.path));

    let mut hasher = Sha256::new();
    for (key, digest) in &digests {
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(digest);
    }
    let fingerprint = format!("sha256:{}", hex(&hasher.finalize()));
    let (train, val) = split_validation(train, val_fraction, seed);
    Ok(Dataset {
        train,
        val,
        test,
        skipped,
        fingerprint,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Stratified and deterministic: per class, shuffle by `seed` and move `val_fraction` of the
/// images (at least one when the class has two or more) to validation.
pub fn split_validation(
    train: Vec<Sample>,
    val_fraction: f64,
    seed: u64,
) -> (Vec<Sample>, Vec<Sample>) {
    let mut by_class: Vec<Vec<Sample>> = vec![Vec::new(); CLASSES.len()];
    for s in train {
        by_class[s.label].push(s);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5a11_7000_0001);
    let (mut keep, mut val) = (Vec::new(), Vec::new());
    for mut class in by_class {
        class.shuffle(&mut rng);
        let n = class.len();
        let mut k = (n as f64 * val_fraction).round() as usize;
        if val_fraction > 0.0 && n >= 2 {
            k = k.clamp(1, n - 1);
        }
        let rest = class.split_off(k.min(n));
        val.extend(class);
        keep.extend(rest);
    }
    keep.sort_by(|a, b| a.key.cmp(&b.key));
    val.sort_by(|a, b| a.key.cmp(&b.key));
    (keep, val)
}
