//! The one path from photo bytes to model input, shared by the trainer (training, validation,
//! test and the champion's re-score), the served-path validator and the inference service:
//!
//! ```text
//! bytes → decode (limits, EXIF orientation) → BlazeFace → one crop per face (or the whole image
//!       → fit (resize + centre crop) → [train only: augment] → ToTensor → Normalize
//! ```
//!
//! The service classifies every face it finds and answers with the largest one's verdict (the
//! whole image's when it finds none); a dataset image is therefore the largest face's crop, or
//! the whole image without a face — the input the service's headline verdict is computed on.
//! Accuracy measured on these inputs is accuracy users get.
//!
//! Changing anything here that changes a model's input bytes means bumping
//! [`PIPELINE_VERSION`]: runs record the version they were trained with, and the service
//! refuses a model whose version it does not implement.

pub mod faces;
pub mod runtime;

use image::RgbImage;
use model::{ImageError, Preprocessor};
use serde::{Deserialize, Serialize};

pub use faces::{
    CROP_MARGIN, DetectError, DetectorLoadError, FaceBox, FaceDetector, crop_with_margin,
    detector_passes,
};

/// Version of the bytes → input contract. 1: decode, EXIF orientation, BlazeFace, the largest
/// face's crop at [`CROP_MARGIN`] (every face's when serving), resize and centre crop. Runs
/// from before the shared pipeline recorded none (they trained on centre crops of whole images).
pub const PIPELINE_VERSION: u32 = 1;

/// Why a photo cannot become model input.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Detect(#[from] DetectError),
}

/// The model input for one face, or for the whole image when `face` is `None`: cropped with
/// the service's geometry, then fitted to the model's size.
pub fn fit_face(img: &RgbImage, face: Option<FaceBox>, pre: Preprocessor) -> RgbImage {
    match face {
        Some(b) => pre.fit(&crop_with_margin(img, b)),
        None => pre.fit(img),
    }
}

/// One fitted input per face, in the detector's order (largest first), or the whole image's
/// alone when there are no faces. The first is what a dataset image becomes.
pub fn fit_faces(img: &RgbImage, faces: &[FaceBox], pre: Preprocessor) -> Vec<RgbImage> {
    if faces.is_empty() {
        return vec![fit_face(img, None, pre)];
    }
    faces.iter().map(|b| fit_face(img, Some(*b), pre)).collect()
}

/// A photo, ready for the model.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Faces found, largest first.
    pub faces: Vec<FaceBox>,
    /// One fitted (square, model-sized) RGB input per face, or one for the whole image.
    pub inputs: Vec<RgbImage>,
}

impl Prepared {
    /// The input the headline verdict is computed on, and a dataset image's training input.
    pub fn primary(&self) -> &RgbImage {
        &self.inputs[0]
    }

    /// The primary input's face, `None` when the whole image was used.
    pub fn primary_face(&self) -> Option<FaceBox> {
        self.faces.first().copied()
    }
}

/// Bytes to model inputs, the whole way.
pub fn prepare(
    bytes: &[u8],
    detector: &FaceDetector,
    pre: Preprocessor,
) -> Result<Prepared, PipelineError> {
    let img = model::decode(bytes)?;
    let faces = detector.detect(&img)?;
    let inputs = fit_faces(&img, &faces, pre);
    Ok(Prepared { faces, inputs })
}

/// What a run records about the pipeline its inputs went through (`metrics.json`'s `pipeline`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineId {
    pub version: u32,
    /// `sha256:<hex>` of the face detector's model file.
    pub detector_sha256: String,
    pub crop_margin: f32,
}

impl PipelineId {
    pub fn of(detector: &FaceDetector) -> Self {
        Self {
            version: PIPELINE_VERSION,
            detector_sha256: detector.sha256().to_owned(),
            crop_margin: CROP_MARGIN,
        }
    }

    /// A short name for caches of this pipeline's results: whatever changes a face box or a
    /// crop (the pipeline version, the detector) changes the name.
    pub fn cache_namespace(&self) -> String {
        let hex = self
            .detector_sha256
            .strip_prefix("sha256:")
            .unwrap_or(&self.detector_sha256);
        format!("v{}-{}", self.version, &hex[..hex.len().min(16)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_namespace_changes_with_the_detector_and_the_version() {
        let a = PipelineId {
            version: 1,
            detector_sha256: "sha256:aaaaaaaaaaaaaaaa0000".into(),
            crop_margin: CROP_MARGIN,
        };
        let other_detector = PipelineId {
            detector_sha256: "sha256:bbbbbbbbbbbbbbbb0000".into(),
            ..a.clone()
        };
        let other_version = PipelineId {
            version: 2,
            ..a.clone()
        };
        assert_eq!(a.cache_namespace(), "v1-aaaaaaaaaaaaaaaa");
        assert_ne!(a.cache_namespace(), other_detector.cache_namespace());
        assert_ne!(a.cache_namespace(), other_version.cache_namespace());
    }

    #[test]
    fn without_a_face_the_whole_image_is_the_input() {
        let img = RgbImage::from_fn(60, 40, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let pre = Preprocessor::new(16);
        let inputs = fit_faces(&img, &[], pre);
        assert_eq!(inputs.len(), 1);
        assert_eq!(inputs[0], pre.fit(&img));
    }

    #[test]
    fn each_face_is_cut_with_the_one_crop_geometry() {
        let img = RgbImage::from_fn(200, 200, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let pre = Preprocessor::new(16);
        let faces = [
            FaceBox {
                x: 80,
                y: 80,
                w: 40,
                h: 40,
            },
            FaceBox {
                x: 10,
                y: 120,
                w: 20,
                h: 20,
            },
        ];
        let inputs = fit_faces(&img, &faces, pre);
        assert_eq!(inputs.len(), 2);
        assert_eq!(inputs[0], pre.fit(&crop_with_margin(&img, faces[0])));
        assert_eq!(inputs[1], fit_face(&img, Some(faces[1]), pre));
        // 1.8 × 40 = 72 px square, centred 10 px above the face's centre.
        let crop = crop_with_margin(&img, faces[0]);
        assert_eq!(crop.dimensions(), (72, 72));
        assert_eq!(crop.get_pixel(0, 0), img.get_pixel(64, 54));
    }
}
