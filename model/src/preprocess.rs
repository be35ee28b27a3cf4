//! The one image pipeline used for training, evaluation and serving, after the seed project's
//! torchvision `train_transformer`:
//!
//! ```text
//! Resize(size) → CenterCrop(size) → [train only] RandomChoice(five augmentations)
//!   → ToTensor → Normalize(ImageNet mean, std)
//! ```
//!
//! Training and serving call the same functions, so what the model sees in production is what
//! it was trained on.

use std::io::Cursor;

use image::imageops::FilterType;
use image::{ImageReader, Limits, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Files larger than this are refused before decoding.
pub const MAX_FILE_BYTES: usize = 32 << 20;
/// Images claiming more than this many pixels per side are refused from their header, before
/// any pixel buffer is allocated (decompression bombs).
pub const MAX_SIDE: u32 = 8192;
/// Images claiming more pixels than this (40 MP, more than any phone camera) are refused from
/// their header: a 12 MP photo decodes to 36 MB, and what the server holds in flight is bounded
/// by this times the number of concurrent decodes.
pub const MAX_PIXELS: u64 = 40_000_000;
/// Upper bound on what a single decode may allocate.
pub const MAX_DECODE_ALLOC: u64 = 512 << 20;

/// Why an input cannot be used. The trainer skips such files; the server answers 4xx.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("empty file")]
    Empty,
    #[error("file is {0} bytes, over the {MAX_FILE_BYTES}-byte limit")]
    TooManyBytes(usize),
    #[error("not a supported image (jpeg, png or webp)")]
    NotAnImage,
    #[error("image is {width}x{height}, over the {MAX_SIDE}-pixel limit per side")]
    TooLarge { width: u32, height: u32 },
    #[error("image is {width}x{height}, over the {MAX_PIXELS}-pixel limit")]
    TooManyPixels { width: u32, height: u32 },
    #[error("corrupt or truncated image: {0}")]
    Corrupt(String),
}

/// A JPEG ends with the EOI marker (FF D9). The decoder fills a truncated file with grey and
/// reports success, so a missing marker is how a cut-off upload is told from a whole one.
/// Encoders may pad after EOI, hence the search in the tail rather than at the very end.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Decodes jpeg, png or webp into upright RGB, refusing oversized and malformed input up front.
///
/// The EXIF orientation is applied (phones store photos sideways and say so in EXIF), so the
/// image, and any coordinates computed on it, are as a person sees it.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    use image::ImageDecoder;

    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() > MAX_FILE_BYTES {
        return Err(ImageError::TooManyBytes(bytes.len()));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let format = reader.format();
    match format {
        Some(image::ImageFormat::Jpeg | image::ImageFormat::Png | image::ImageFormat::WebP) => {}
        _ => return Err(ImageError::NotAnImage),
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    // Read dimensions from the header first so the error can say how large the bomb claims to be.
    let probe = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_dimensions().ok());
    if let Some((width, height)) = probe {
        if width > MAX_SIDE || height > MAX_SIDE {
            return Err(ImageError::TooLarge { width, height });
        }
        if u64::from(width) * u64::from(height) > MAX_PIXELS {
            return Err(ImageError::TooManyPixels { width, height });
        }
    }
    if format == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        return Err(ImageError::Corrupt(
            "the JPEG ends before its end marker".into(),
        ));
    }
    let limits_err = |e: image::ImageError| match e {
        image::ImageError::Limits(_) => {
            let (width, height) = probe.unwrap_or((0, 0));
            ImageError::TooLarge { width, height }
        }
        e => ImageError::Corrupt(e.to_string()),
    };
    let mut decoder = reader.into_decoder().map_err(limits_err)?;
    // A malformed EXIF block is not worth refusing the photo for: it is then shown as stored.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(limits_err)?;
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// `Resize(size)` (shorter side to `size`, aspect kept) then `CenterCrop(size)`, computed the
/// cheap way round: the centred square is cut in source coordinates first and only it is
/// resized. The result is the same picture, but an 8192×1 strip no longer becomes a
/// 1.9-gigapixel intermediate.
pub fn resize_center_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let side = w.min(h).max(1);
    let x = (w - side.min(w)) / 2;
    let y = (h - side.min(h)) / 2;
    let square = image::imageops::crop_imm(img, x, y, side.min(w), side.min(h)).to_image();
    if square.dimensions() == (size, size) {
        return square;
    }
    image::imageops::resize(&square, size, size, FilterType::Triangle)
}

/// The seed's `RandomChoice`, one variant per entry, in the seed's order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Augmentation {
    /// `RandomHorizontalFlip(p=0.5)`
    HorizontalFlip { p: f32 },
    /// `ColorJitter(contrast=0.9)`: contrast factor uniform in [0.1, 1.9]
    Contrast { strength: f32 },
    /// `ColorJitter(brightness=0.1)`: brightness factor uniform in [0.9, 1.1]
    Brightness { strength: f32 },
    /// `RandomApply([RandomHorizontalFlip(p=1), ColorJitter(contrast=0.9)], p=0.5)`
    FlipThenContrast { p: f32, strength: f32 },
    /// `RandomApply([RandomHorizontalFlip(p=1), ColorJitter(brightness=0.1)], p=0.5)`
    FlipThenBrightness { p: f32, strength: f32 },
}

/// Exactly the five augmentations of the seed's `train_transformer`; one is chosen uniformly.
pub const AUGMENTATIONS: [Augmentation; 5] = [
    Augmentation::HorizontalFlip { p: 0.5 },
    Augmentation::Contrast { strength: 0.9 },
    Augmentation::Brightness { strength: 0.1 },
    Augmentation::FlipThenContrast {
        p: 0.5,
        strength: 0.9,
    },
    Augmentation::FlipThenBrightness {
        p: 0.5,
        strength: 0.1,
    },
];

/// A CHW float image in 0..=1, before normalisation.
#[derive(Debug, Clone, PartialEq)]
pub struct Chw {
    pub size: usize,
    pub data: Vec<f32>,
}

impl Chw {
    /// `ToTensor`: HWC u8 → CHW f32 in 0..=1.
    pub fn from_rgb(img: &RgbImage) -> Self {
        let (w, h) = img.dimensions();
        debug_assert_eq!(w, h, "crop first");
        let size = w as usize;
        let plane = size * size;
        let mut data = vec![0.0f32; 3 * plane];
        for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
            data[i] = f32::from(px[0]) / 255.0;
            data[plane + i] = f32::from(px[1]) / 255.0;
            data[2 * plane + i] = f32::from(px[2]) / 255.0;
        }
        Self { size, data }
    }

    /// `Normalize(mean, std)` with ImageNet statistics.
    pub fn normalize(mut self) -> Vec<f32> {
        let plane = self.size * self.size;
        for (c, chunk) in self.data.chunks_exact_mut(plane).enumerate() {
            let (m, s) = (IMAGENET_MEAN[c], IMAGENET_STD[c]);
            for v in chunk {
                *v = (*v - m) / s;
            }
        }
        self.data
    }
}

/// A square RGB image as packed HWC bytes, augmented in place the way the seed's PIL images
/// were: the jitters blend and round to bytes, as `PIL.ImageEnhance` does. Working on bytes
/// keeps training batches at a quarter of the size of floats all the way to the device.
#[derive(Debug)]
pub struct Hwc<'a> {
    pub size: usize,
    pub data: &'a mut [u8],
}

impl Hwc<'_> {
    pub fn flip_horizontal(&mut self) {
        for row in self.data.chunks_exact_mut(3 * self.size) {
            let n = self.size;
            for x in 0..n / 2 {
                let (a, b) = (3 * x, 3 * (n - 1 - x));
                for c in 0..3 {
                    row.swap(a + c, b + c);
                }
            }
        }
    }

    /// `ImageEnhance.Brightness`: blend with black.
    pub fn brightness(&mut self, factor: f32) {
        self.blend_with(0.0, factor);
    }

    /// `ImageEnhance.Contrast`: blend with the mean of the greyscale (ITU-R 601-2 luma) image.
    pub fn contrast(&mut self, factor: f32) {
        let sum: u64 = self
            .data
            .chunks_exact(3)
            .map(|p| (299 * u64::from(p[0]) + 587 * u64::from(p[1]) + 114 * u64::from(p[2])) / 1000)
            .sum();
        let pixels = (self.data.len() / 3).max(1) as f32;
        let mean = (sum as f32 / pixels).round();
        self.blend_with(mean, factor);
    }

    /// `out = degenerate + factor * (in - degenerate)`, rounded and clamped to a byte.
    fn blend_with(&mut self, degenerate: f32, factor: f32) {
        let lut: [u8; 256] = std::array::from_fn(|v| {
            (degenerate + factor * (v as f32 - degenerate))
                .round()
                .clamp(0.0, 255.0) as u8
        });
        for v in self.data.iter_mut() {
            *v = lut[usize::from(*v)];
        }
    }
}

fn jitter_factor(rng: &mut impl Rng, strength: f32) -> f32 {
    rng.random_range((1.0 - strength).max(0.0)..=1.0 + strength)
}

impl Augmentation {
    /// Applies the augmentation, drawing its randomness from `rng`.
    pub fn apply(&self, img: &mut Hwc<'_>, rng: &mut impl Rng) {
        match *self {
            Augmentation::HorizontalFlip { p } => {
                if rng.random::<f32>() < p {
                    img.flip_horizontal();
                }
            }
            Augmentation::Contrast { strength } => img.contrast(jitter_factor(rng, strength)),
            Augmentation::Brightness { strength } => img.brightness(jitter_factor(rng, strength)),
            Augmentation::FlipThenContrast { p, strength } => {
                if rng.random::<f32>() < p {
                    img.flip_horizontal();
                    img.contrast(jitter_factor(rng, strength));
                }
            }
            Augmentation::FlipThenBrightness { p, strength } => {
                if rng.random::<f32>() < p {
                    img.flip_horizontal();
                    img.brightness(jitter_factor(rng, strength));
                }
            }
        }
    }
}

/// Preprocessing for one image size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preprocessor {
    pub image_size: u32,
}

impl Preprocessor {
    pub fn new(image_size: u32) -> Self {
        Self { image_size }
    }

    /// The deterministic part: resize and centre crop. Training caches its output.
    pub fn fit(&self, img: &RgbImage) -> RgbImage {
        resize_center_crop(img, self.image_size)
    }

    /// Evaluation and serving: the fitted image as a normalised CHW vector.
    pub fn eval(&self, fitted: &RgbImage) -> Vec<f32> {
        Chw::from_rgb(fitted).normalize()
    }

    /// Training: one augmentation chosen uniformly from [`AUGMENTATIONS`], applied in place to
    /// a fitted image as packed HWC bytes (`3 * size * size`; the model side converts and
    /// normalises, on the device). Seeded, so the same `(image, seed)` always yields the same
    /// bytes, whatever thread computes it.
    pub fn augment(&self, hwc: &mut [u8], seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let choice = AUGMENTATIONS[rng.random_range(0..AUGMENTATIONS.len())];
        let mut img = Hwc {
            size: self.image_size as usize,
            data: hwc,
        };
        choice.apply(&mut img, &mut rng);
    }

    /// [`Preprocessor::augment`] on a copy of `fitted`.
    pub fn train(&self, fitted: &RgbImage, seed: u64) -> Vec<u8> {
        let mut out = fitted.as_raw().clone();
        self.augment(&mut out, seed);
        out
    }
}
