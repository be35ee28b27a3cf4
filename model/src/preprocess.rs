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
    #[error("corrupt or truncated image: {0}")]
    Corrupt(String),
}

/// Decodes jpeg, png or webp into RGB, refusing oversized and malformed input up front.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() > MAX_FILE_BYTES {
        return Err(ImageError::TooManyBytes(bytes.len()));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    match reader.format() {
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
    if let Some((width, height)) = probe
        && (width > MAX_SIDE || height > MAX_SIDE)
    {
        return Err(ImageError::TooLarge { width, height });
    }
    match reader.decode() {
        Ok(img) => Ok(img.into_rgb8()),
        Err(image::ImageError::Limits(_)) => {
            let (width, height) = probe.unwrap_or((0, 0));
            Err(ImageError::TooLarge { width, height })
        }
        Err(e) => Err(ImageError::Corrupt(e.to_string())),
    }
}

/// `Resize(size)` (shorter side to `size`, aspect kept) then `CenterCrop(size)`.
pub fn resize_center_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (nw, nh) = if w <= h {
        (
            size,
            ((u64::from(h) * u64::from(size)).div_ceil(u64::from(w.max(1)))) as u32,
        )
    } else {
        (
            ((u64::from(w) * u64::from(size)).div_ceil(u64::from(h.max(1)))) as u32,
            size,
        )
    };
    let resized = if (nw, nh) == (w, h) {
        img.clone()
    } else {
        image::imageops::resize(img, nw, nh, FilterType::Triangle)
    };
    let x = (nw - size) / 2;
    let y = (nh - size) / 2;
    image::imageops::crop_imm(&resized, x, y, size, size).to_image()
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

    pub fn flip_horizontal(&mut self) {
        let s = self.size;
        for row in self.data.chunks_exact_mut(s) {
            row.reverse();
        }
    }

    /// torchvision `adjust_brightness`: blend with black.
    pub fn brightness(&mut self, factor: f32) {
        for v in &mut self.data {
            *v = (*v * factor).clamp(0.0, 1.0);
        }
    }

    /// torchvision `adjust_contrast`: blend with the mean of the greyscale image.
    pub fn contrast(&mut self, factor: f32) {
        let plane = self.size * self.size;
        let (r, rest) = self.data.split_at(plane);
        let (g, b) = rest.split_at(plane);
        let sum: f32 = r
            .iter()
            .zip(g)
            .zip(b)
            .map(|((r, g), b)| 0.299 * r + 0.587 * g + 0.114 * b)
            .sum();
        let mean = sum / plane as f32;
        for v in &mut self.data {
            *v = (factor * *v + (1.0 - factor) * mean).clamp(0.0, 1.0);
        }
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

fn jitter_factor(rng: &mut impl Rng, strength: f32) -> f32 {
    rng.random_range((1.0 - strength).max(0.0)..=1.0 + strength)
}

impl Augmentation {
    /// Applies the augmentation, drawing its randomness from `rng`.
    pub fn apply(&self, img: &mut Chw, rng: &mut impl Rng) {
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

    /// Training: one augmentation chosen uniformly from [`AUGMENTATIONS`], seeded so that the
    /// same `(image, seed)` always yields the same tensor, whatever thread computes it.
    pub fn train(&self, fitted: &RgbImage, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut chw = Chw::from_rgb(fitted);
        let choice = AUGMENTATIONS[rng.random_range(0..AUGMENTATIONS.len())];
        choice.apply(&mut chw, &mut rng);
        chw.normalize()
    }
}
