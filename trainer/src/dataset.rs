//! Reading an ImageFolder dataset (`PREFIX/{train,test}/{homer,marge,bart,lisa}/*`) from object
//! storage: validation of the layout, concurrent fetching, parallel decoding, skipping of bad
//! files, a deterministic validation split and a content fingerprint.

use std::collections::BTreeMap;
use std::sync::Arc;

use artifacts::{FacesFound, SkippedFile, Storage, StorageError};
use futures::{StreamExt, TryStreamExt};
use model::{CLASSES, Preprocessor, class_index};
use pipeline::{FaceBox, FaceDetector};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::cache::{Crop, CropCache};
use crate::face_index::FaceIndex;

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
    #[error(
        "the test split of {prefix} changed while the run was reading it (fingerprint {before}, now {now})"
    )]
    Changed {
        prefix: String,
        before: String,
        now: String,
    },
    #[error("decoded-image cache: {0}")]
    Cache(#[from] std::io::Error),
    #[error("{key}: {source}")]
    Detect {
        key: String,
        source: pipeline::DetectError,
    },
}

/// One listed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub label: usize,
    pub size: u64,
    /// The object's ETag when the store gives one (the face index is keyed by it).
    pub etag: Option<String>,
}

/// What a prefix holds, validated, before any image is fetched.
#[derive(Debug, Default)]
pub struct Listing {
    pub train: Vec<Entry>,
    pub test: Vec<Entry>,
    /// Files skipped from their name or size alone.
    pub skipped: Vec<SkippedFile>,
    /// `sha256:` over every listed object's key, size and ETag (see [`artifacts::listing_fingerprint`]).
    pub fingerprint: String,
}

/// An image ready for the model: through the shared pipeline (decoded, its largest face
/// cropped or the whole image kept, fitted to the model's size), kept in the [`CropCache`].
#[derive(Debug, Clone)]
pub struct Sample {
    pub key: String,
    pub label: usize,
    pub image: Crop,
    /// The face the input was cropped around; `None` when the whole image was used.
    pub face: Option<FaceBox>,
}

#[derive(Debug)]
pub struct Dataset {
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    pub test: Vec<Sample>,
    pub skipped: Vec<SkippedFile>,
    pub fingerprint: String,
    /// Like `fingerprint`, over the test split alone.
    pub test_fingerprint: String,
    /// Train images dropped because their bytes are also in the test split.
    pub duplicates_dropped: usize,
}

impl Dataset {
    /// Images per split whose input is a face's crop.
    pub fn faces_found(&self) -> FacesFound {
        let count = |s: &[Sample]| s.iter().filter(|s| s.face.is_some()).count() as u64;
        FacesFound {
            train: count(&self.train),
            val: count(&self.val),
            test: count(&self.test),
        }
    }
}

/// Lists and validates `prefix`. Layout errors are fatal; odd files are skipped with a reason.
pub async fn list(storage: &Storage, prefix: &str) -> Result<Listing, DatasetError> {
    let prefix = prefix.trim_matches('/');
    let objects = artifacts::listing::list_dataset(storage, prefix).await?;
    if objects.is_empty() {
        return Err(DatasetError::Missing {
            prefix: prefix.to_owned(),
        });
    }
    let mut listing = Listing {
        fingerprint: artifacts::listing_fingerprint(&objects),
        ..Listing::default()
    };
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
        if !artifacts::layout::is_dataset_image(file) {
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
            etag: meta.e_tag.clone(),
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
    /// The service's face detector: a dataset image's input is its largest face's crop.
    pub detector: Arc<FaceDetector>,
    /// Faces found by earlier runs, reused for unchanged objects.
    pub faces: Arc<FaceIndex>,
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
        detector,
        faces,
        val_fraction,
        seed,
        concurrency,
    } = options;
    let prefix = prefix.trim_matches('/');
    let Listing {
        train,
        test,
        mut skipped,
        ..
    } = listing;
    let fetch = |entries: Vec<Entry>| {
        let storage = storage.clone();
        let cache = cache.clone();
        let detector = detector.clone();
        let faces = faces.clone();
        let on_loaded = &on_loaded;
        async move {
            futures::stream::iter(entries)
                .map(move |entry| {
                    let storage = storage.clone();
                    let cache = cache.clone();
                    let detector = detector.clone();
                    let faces = faces.clone();
                    async move {
                        let bytes = storage.get(&entry.key).await?;
                        let loaded = tokio::task::spawn_blocking(move || {
                            let digest: [u8; 32] = Sha256::digest(&bytes).into();
                            let photo = match pipeline::decode(&bytes, pre) {
                                Ok(photo) => photo,
                                Err(e) => {
                                    return Ok(Loaded::Skipped(SkippedFile {
                                        path: entry.key,
                                        reason: e.to_string(),
                                    }));
                                }
                            };
                            let etag = entry.etag.as_deref();
                            let face = match faces.lookup(&entry.key, entry.size, etag) {
                                Some(face) => face,
                                None => {
                                    let found = detector.detect(&photo).map_err(|source| {
                                        DatasetError::Detect {
                                            key: entry.key.clone(),
                                            source,
                                        }
                                    })?;
                                    let face = found.first().copied();
                                    faces.record(&entry.key, entry.size, etag, face);
                                    face
                                }
                            };
                            let input = pipeline::fit_face(&photo, face, pre);
                            Ok::<_, DatasetError>(Loaded::Ok(
                                Sample {
                                    key: entry.key,
                                    label: entry.label,
                                    image: cache.store(input)?,
                                    face,
                                },
                                digest,
                            ))
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
    let mut train = split_samples(fetch(train).await?, &mut skipped);
    let test = split_samples(fetch(test).await?, &mut skipped);
    faces.write(storage, |k| digests.contains_key(k)).await;
    let duplicates_dropped =
        drop_test_duplicates(prefix, &mut train, &test, &mut digests, &mut skipped);
    check_classes(prefix, "train", train.iter().map(|s| s.label))?;
    check_classes(prefix, "test", test.iter().map(|s| s.label))?;
    skipped.sort_by(|a, b| a.path.cmp(&b.path));

    let fingerprint = content_fingerprint(&digests);
    let test_fingerprint = content_fingerprint(
        digests
            .iter()
            .filter(|(key, _)| test.binary_search_by(|s| s.key.cmp(key)).is_ok()),
    );
    let (train, val) = split_validation(train, val_fraction, seed);
    Ok(Dataset {
        train,
        val,
        test,
        skipped,
        fingerprint,
        test_fingerprint,
        duplicates_dropped,
    })
}

/// `sha256:` over `(key, sha256 of the bytes)` pairs in key order: equal fingerprints, equal data.
fn content_fingerprint<'a>(
    digests: impl IntoIterator<Item = (&'a String, &'a [u8; 32])>,
) -> String {
    let mut hasher = Sha256::new();
    for (key, digest) in digests {
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(digest);
    }
    format!("sha256:{}", hex(&hasher.finalize()))
}

/// Removes from `train` every image whose bytes are also in `test` — a model must not be
/// scored on pictures it trained on — and lists each in `skipped` as
/// `duplicate of test/<class>/<file>`. Returns how many were dropped.
fn drop_test_duplicates(
    prefix: &str,
    train: &mut Vec<Sample>,
    test: &[Sample],
    digests: &mut BTreeMap<String, [u8; 32]>,
    skipped: &mut Vec<SkippedFile>,
) -> usize {
    let in_test: BTreeMap<[u8; 32], &str> = test
        .iter()
        .rev() // the first test key wins when the test split repeats itself
        .filter_map(|s| Some((*digests.get(&s.key)?, s.key.as_str())))
        .collect();
    let before = train.len();
    train.retain(|s| {
        let Some(test_key) = digests.get(&s.key).and_then(|d| in_test.get(d)) else {
            return true;
        };
        let rel = test_key
            .strip_prefix(prefix)
            .unwrap_or(test_key)
            .trim_start_matches('/');
        tracing::warn!(path = %s.key, test = %rel, "dropping a training image that is also in the test split");
        skipped.push(SkippedFile {
            path: s.key.clone(),
            reason: format!("duplicate of {rel}"),
        });
        false
    });
    // Dropped images are not used, so they are not part of the dataset's fingerprint.
    let kept: std::collections::BTreeSet<&str> =
        train.iter().chain(test).map(|s| s.key.as_str()).collect();
    digests.retain(|k, _| kept.contains(k.as_str()));
    before - train.len()
}

/// The test split fetched again and fitted at another image size (the champion's), around the
/// faces found when the run loaded it, checked against the content it had then: the champion
/// and the challenger must be scored on the same bytes and the same crops. Returns the samples
/// in the same (key) order as `test`.
pub async fn refit_test(
    storage: &Storage,
    prefix: &str,
    test: &[Sample],
    test_fingerprint: &str,
    pre: Preprocessor,
    cache: &Arc<CropCache>,
    concurrency: usize,
) -> Result<Vec<Sample>, DatasetError> {
    let fetched: Vec<(Option<Sample>, [u8; 32])> =
        futures::stream::iter(test.iter().map(|s| (s.key.clone(), s.label, s.face)))
            .map(|(key, label, face)| {
                let storage = storage.clone();
                let cache = cache.clone();
                async move {
                    let bytes = storage.get(&key).await?;
                    tokio::task::spawn_blocking(move || {
                        let digest: [u8; 32] = Sha256::digest(&bytes).into();
                        // Bytes that no longer decode have changed: the fingerprint says so.
                        let sample = match pipeline::decode(&bytes, pre) {
                            Ok(photo) => Some(Sample {
                                key,
                                label,
                                image: cache.store(pipeline::fit_face(&photo, face, pre))?,
                                face,
                            }),
                            Err(_) => None,
                        };
                        Ok::<_, DatasetError>((sample, digest))
                    })
                    .await
                    .map_err(|e| DatasetError::Worker(e.to_string()))?
                }
            })
            .buffered(concurrency.max(1))
            .try_collect()
            .await?;
    let digests: BTreeMap<String, [u8; 32]> = test
        .iter()
        .zip(&fetched)
        .map(|(s, (_, d))| (s.key.clone(), *d))
        .collect();
    let now = content_fingerprint(&digests);
    let samples: Option<Vec<Sample>> = fetched.into_iter().map(|(s, _)| s).collect();
    match samples {
        Some(samples) if now == test_fingerprint => Ok(samples),
        _ => Err(DatasetError::Changed {
            prefix: prefix.trim_matches('/').to_owned(),
            before: test_fingerprint.to_owned(),
            now,
        }),
    }
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
