//! Face detection (rustface: SeetaFace's funnel cascade, pure Rust, model bundled) and the
//! crops the classifier sees.

use image::RgbImage;
use image::imageops::FilterType;
use rustface::{ImageData, Model};
use serde::Serialize;
use utoipa::ToSchema;

/// SeetaFace frontal detector weights, BSD-2-Clause (see assets/SEETAFACE-LICENSE).
const SEETA_MODEL: &[u8] = include_bytes!("../assets/seeta_fd_frontal_v1.0.bin");
/// Detection runs on a copy no larger than this, for speed; boxes are mapped back.
const DETECT_MAX_SIDE: u32 = 640;

/// A face in original image pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct FaceBox {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

#[derive(Clone)]
pub struct FaceDetector {
    model: Model,
}

impl std::fmt::Debug for FaceDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaceDetector").finish_non_exhaustive()
    }
}

impl FaceDetector {
    /// The detector with its bundled model.
    pub fn bundled() -> Self {
        // The bundled model is a fixed, tested asset: failing to parse it is a build defect.
        #[allow(clippy::expect_used)]
        let model = rustface::read_model(SEETA_MODEL).expect("bundled SeetaFace model parses");
        Self { model }
    }

    /// Faces, largest first.
    pub fn detect(&self, img: &RgbImage) -> Vec<FaceBox> {
        let (w, h) = img.dimensions();
        if w < 24 || h < 24 {
            return Vec::new();
        }
        let scale = (DETECT_MAX_SIDE as f32 / w.max(h) as f32).min(1.0);
        let gray = if scale < 1.0 {
            let (sw, sh) = (((w as f32) * scale) as u32, ((h as f32) * scale) as u32);
            image::imageops::resize(
                &image::imageops::grayscale(img),
                sw.max(1),
                sh.max(1),
                FilterType::Triangle,
            )
        } else {
            image::imageops::grayscale(img)
        };
        let mut detector = rustface::create_detector_with_model(self.model.clone());
        detector.set_min_face_size(24);
        detector.set_score_thresh(2.0);
        detector.set_pyramid_scale_factor(0.8);
        detector.set_slide_window_step(4, 4);
        let data = ImageData::new(&gray, gray.width(), gray.height());
        let mut faces: Vec<FaceBox> = detector
            .detect(&data)
            .into_iter()
            .map(|f| {
                let b = f.bbox();
                let x0 = (b.x().max(0) as f32 / scale) as u32;
                let y0 = (b.y().max(0) as f32 / scale) as u32;
                let x1 = (((b.x() + b.width() as i32).max(0) as f32 / scale) as u32).min(w);
                let y1 = (((b.y() + b.height() as i32).max(0) as f32 / scale) as u32).min(h);
                FaceBox {
                    x: x0.min(w),
                    y: y0.min(h),
                    w: x1.saturating_sub(x0),
                    h: y1.saturating_sub(y0),
                }
            })
            .filter(|b| b.w > 0 && b.h > 0)
            .collect();
        faces.sort_by_key(|b| std::cmp::Reverse(u64::from(b.w) * u64::from(b.h)));
        faces
    }
}

/// A square crop around a face with room for hair: the characters differ most above the
/// forehead, so the crop extends further up than down.
pub fn crop_with_margin(img: &RgbImage, face: FaceBox) -> RgbImage {
    let (w, h) = img.dimensions();
    let side = (face.w.max(face.h) as f32 * 1.8) as i64;
    let cx = i64::from(face.x) + i64::from(face.w) / 2;
    let cy = i64::from(face.y) + i64::from(face.h) / 2 - i64::from(face.h) / 4;
    let side = side.min(i64::from(w)).min(i64::from(h)).max(1);
    let x = (cx - side / 2).clamp(0, i64::from(w) - side);
    let y = (cy - side / 2).clamp(0, i64::from(h) - side);
    image::imageops::crop_imm(img, x as u32, y as u32, side as u32, side as u32).to_image()
}
