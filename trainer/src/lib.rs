//! The face2simpson trainer as a library: the binary is a thin CLI over [`train::run`] and
//! [`datagen`], and tests and benchmarks call the same functions.

pub mod build_info;
pub mod cache;
pub mod datagen;
pub mod dataset;
pub mod dist;
pub mod face_index;
pub mod malloc;
pub mod progress;
pub mod torch;
pub mod train;

use std::path::Path;
use std::sync::Arc;

use artifacts::{Storage, StorageError};
use image::ImageFormat;
use model::CLASSES;
use pipeline::{DetectorLoadError, FaceDetector};

/// The service's face detector, with one session per core (images are decoded and looked at in
/// parallel on the blocking pool). Only the largest face of a dataset image is used.
pub fn load_detector(
    ort_library: &Path,
    face_detector: &Path,
) -> Result<Arc<FaceDetector>, DetectorLoadError> {
    let sessions = std::thread::available_parallelism().map_or(2, |n| n.get());
    FaceDetector::load(ort_library, face_detector, sessions, 1).map(Arc::new)
}

/// Writes a synthetic dataset: `per_class` train and `per_class / 4` (at least 2) test images per
/// class, alternating PNG and JPEG.
pub async fn generate_dataset(
    storage: &Storage,
    prefix: &str,
    per_class: usize,
    size: u32,
    seed: u64,
) -> Result<usize, StorageError> {
    let prefix = prefix.trim_matches('/');
    let test_per_class = (per_class / 4).max(2);
    let mut jobs = Vec::new();
    for (class, name) in CLASSES.iter().enumerate() {
        for (split, n) in [("train", per_class), ("test", test_per_class)] {
            for i in 0..n {
                let (format, ext) = if i % 2 == 0 {
                    (ImageFormat::Png, "png")
                } else {
                    (ImageFormat::Jpeg, "jpg")
                };
                let key = format!("{prefix}/{split}/{name}/{i:05}.{ext}");
                // Distinct seeds per split keep test images out of the training set.
                let split_salt: u64 = if split == "train" { 0 } else { 1 << 32 };
                let img_seed =
                    seed.wrapping_mul(1_000_003) ^ split_salt ^ ((class as u64) << 48) ^ i as u64;
                jobs.push((key, class, img_seed, format));
            }
        }
    }
    let count = jobs.len();
    let encoded: Vec<(String, Vec<u8>)> = tokio::task::spawn_blocking(move || {
        use rayon::prelude::*;
        jobs.into_par_iter()
            .map(|(key, class, s, format)| {
                (key, datagen::encode(&datagen::draw(class, size, s), format))
            })
            .collect()
    })
    .await
    .map_err(|e| StorageError::InvalidUrl {
        url: storage.url().to_owned(),
        reason: e.to_string(),
    })?;
    use futures::StreamExt;
    let results: Vec<Result<(), StorageError>> = futures::stream::iter(encoded)
        .map(|(key, bytes)| async move { storage.put(&key, bytes).await })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(count)
}
