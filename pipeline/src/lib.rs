//! The one path from photo bytes to model input, shared by the trainer (training, validation,
//! test and the champion's re-score), the served-path validator and the inference service:
//!
//! ```text
//! bytes → decode (limits, EXIF orientation; big JPEGs reduced in the DCT domain)
//!       → BlazeFace (one reduced copy, every pass cut from it)
//!       → one crop per face (or the whole image) → fit (resize + centre crop, one SIMD resize
//!         straight from the decoded photo) → [train only: augment] → ToTensor → Normalize
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
use model::{ImageError, Preprocessor, resize::resize_region_into};
use serde::{Deserialize, Serialize};

pub use faces::{
    CROP_MARGIN, DetectError, DetectorLoadError, FaceBox, FaceDetector, detector_passes, face_crop,
};
/// A decoded photo: upright pixels, possibly reduced while decoding, and its own size.
pub use model::Decoded as Photo;

/// Version of the bytes → input contract.
///
/// * 1: decode, EXIF orientation, BlazeFace, the largest face's crop at [`CROP_MARGIN`] (every
///   face's when serving), resize (the `image` crate's Triangle filter on a copy of the crop)
///   and centre crop.
/// * 2: the same geometry; JPEGs whose shorter side is at least twice [`min_decoded_side`] are
///   decoded reduced in the DCT domain (libjpeg-turbo), every resize is fast_image_resize's
///   bilinear convolution on a view of the decoded photo, and the detector's inputs are cut
///   from one reduced copy. Pixels differ from version 1 by a few levels, faces by a pixel or
///   two.
///
/// Runs from before the shared pipeline recorded none (they trained on centre crops of whole
/// images).
pub const PIPELINE_VERSION: u32 = 2;

/// The smallest face BlazeFace finds, as a share of the shorter side of the square it looks
/// at (16 px of its 128): a face in a tile is at least this share of the photo's shorter side,
/// and in the letterboxed whole image larger still.
const SMALLEST_FACE: f32 = 1.0 / 8.0;

/// The shorter side a photo keeps when decoded reduced: even the smallest face the detector
/// can find then gives a crop ([`CROP_MARGIN`] × the face) of at least `image_size` decoded
/// pixels, so the reduction never costs a face crop any detail the model would see (996 px at
/// 224).
pub fn min_decoded_side(pre: Preprocessor) -> u32 {
    (pre.image_size as f32 / (CROP_MARGIN * SMALLEST_FACE)).ceil() as u32
}

/// Photo bytes to an upright photo, reduced while decoding when it is large enough to lose
/// nothing by it ([`min_decoded_side`]).
pub fn decode(bytes: &[u8], pre: Preprocessor) -> Result<Photo, ImageError> {
    model::decode_reduced(bytes, min_decoded_side(pre))
}

/// Bytes [`decode`] will hold for `bytes`, from the header alone (see
/// [`model::decode::decoded_cost`]).
pub fn decoded_cost(bytes: &[u8], pre: Preprocessor) -> Option<u64> {
    model::decode::decoded_cost(bytes, min_decoded_side(pre))
}

/// Why a photo cannot become model input.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Detect(#[from] DetectError),
}

/// The model input for one face, or for the whole photo when `face` is `None`: the face's
/// crop ([`face_crop`], in the photo's pixels, mapped onto the decoded ones) or the centred
/// square, resized straight from the decoded photo to the model's size.
pub fn fit_face(photo: &Photo, face: Option<FaceBox>, pre: Preprocessor) -> RgbImage {
    let size = pre.image_size;
    let mut out = RgbImage::new(size, size);
    fit_face_into(photo, face, &mut out);
    out
}

fn fit_face_into(photo: &Photo, face: Option<FaceBox>, out: &mut RgbImage) {
    match face {
        Some(b) => {
            let region = face_crop(b, photo.width, photo.height).reduced(f64::from(photo.scale));
            resize_region_into(&photo.image, region, out);
        }
        None => {
            let (w, h) = photo.image.dimensions();
            let side = w.min(h).max(1);
            let region = model::Region::square(
                f64::from((w - side.min(w)) / 2),
                f64::from((h - side.min(h)) / 2),
                f64::from(side),
            );
            resize_region_into(&photo.image, region, out);
        }
    }
}

/// One fitted input per face, in the detector's order (largest first), or the whole photo's
/// alone when there are no faces. The first is what a dataset image becomes.
pub fn fit_faces(photo: &Photo, faces: &[FaceBox], pre: Preprocessor) -> Vec<RgbImage> {
    if faces.is_empty() {
        return vec![fit_face(photo, None, pre)];
    }
    faces
        .iter()
        .map(|b| fit_face(photo, Some(*b), pre))
        .collect()
}

/// [`fit_faces`] then [`Preprocessor::eval`], for serving: each input normalised into its own
/// CHW vector, the fitted bytes held in one buffer reused from face to face. The same values
/// as `pre.eval(&fit_face(..))`, bit for bit.
pub fn model_inputs(photo: &Photo, faces: &[FaceBox], pre: Preprocessor) -> Vec<Vec<f32>> {
    let size = pre.image_size;
    let mut fitted = RgbImage::new(size, size);
    let mut one = |face: Option<FaceBox>| {
        fit_face_into(photo, face, &mut fitted);
        let mut input = vec![0.0; fitted.as_raw().len()];
        pre.eval_into(&fitted, &mut input);
        input
    };
    if faces.is_empty() {
        return vec![one(None)];
    }
    faces.iter().map(|b| one(Some(*b))).collect()
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
    let photo = decode(bytes, pre)?;
    let faces = detector.detect(&photo)?;
    let inputs = fit_faces(&photo, &faces, pre);
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
        let inputs = fit_faces(&Photo::full(img.clone()), &[], pre);
        assert_eq!(inputs.len(), 1);
        assert_eq!(inputs[0], pre.fit(&img));
    }

    fn faces() -> [FaceBox; 2] {
        [
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
        ]
    }

    #[test]
    fn each_face_is_cut_with_the_one_crop_geometry() {
        let img = RgbImage::from_fn(200, 200, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let photo = Photo::full(img.clone());
        let pre = Preprocessor::new(16);
        let faces = faces();
        let inputs = fit_faces(&photo, &faces, pre);
        assert_eq!(inputs.len(), 2);
        // 1.8 × 40 = 72 px square, centred 10 px above the face's centre.
        let crop = face_crop(faces[0], 200, 200);
        assert_eq!(crop, model::Region::square(64.0, 54.0, 72.0));
        assert_eq!(inputs[0], model::resize_region(&img, crop, 16, 16));
        assert_eq!(inputs[1], fit_face(&photo, Some(faces[1]), pre));
        assert_eq!(
            face_crop(faces[1], 200, 200),
            model::Region::square(2.0, 107.0, 36.0)
        );
        // At the top edge the square moves inside the photo.
        let top = FaceBox { y: 0, ..faces[1] };
        assert_eq!(
            face_crop(top, 200, 200),
            model::Region::square(2.0, 0.0, 36.0)
        );
    }

    #[test]
    fn a_reduced_photo_is_cropped_where_the_full_one_is() {
        let img = RgbImage::from_fn(400, 400, |x, y| {
            image::Rgb([(x / 2) as u8, (y / 2) as u8, 7])
        });
        let half = image::imageops::resize(&img, 200, 200, image::imageops::FilterType::Triangle);
        let pre = Preprocessor::new(16);
        let face = FaceBox {
            x: 160,
            y: 160,
            w: 80,
            h: 80,
        };
        let full = fit_face(&Photo::full(img), Some(face), pre);
        let reduced = Photo {
            image: half,
            scale: 2,
            width: 400,
            height: 400,
        };
        let from_half = fit_face(&reduced, Some(face), pre);
        let worst = full
            .as_raw()
            .iter()
            .zip(from_half.as_raw())
            .map(|(a, b)| (i16::from(*a) - i16::from(*b)).unsigned_abs())
            .max();
        assert!(worst <= Some(2), "{worst:?}");
    }

    #[test]
    fn serving_inputs_are_the_fitted_faces_normalised() {
        let img = RgbImage::from_fn(200, 200, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let photo = Photo::full(img);
        let pre = Preprocessor::new(16);
        let faces = faces();
        let served = model_inputs(&photo, &faces, pre);
        let trained: Vec<Vec<f32>> = fit_faces(&photo, &faces, pre)
            .iter()
            .map(|f| pre.eval(f))
            .collect();
        assert_eq!(served, trained);
        assert_eq!(
            model_inputs(&photo, &[], pre),
            vec![pre.eval(&pre.fit(&photo.image))]
        );
    }

    #[test]
    fn the_decode_keeps_a_side_that_loses_no_face_detail() {
        // 224 / (1.8 / 8) = 995.6.
        assert_eq!(min_decoded_side(Preprocessor::new(224)), 996);
    }
}
