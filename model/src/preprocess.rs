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

use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use crate::decode::{
    Decoded, ImageError, MAX_DECODE_ALLOC, MAX_FILE_BYTES, MAX_PIXELS, MAX_SIDE, decode,
    decode_reduced, decoded_cost,
};
use crate::resize::{Region, resize_region};

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `Resize(size)` (shorter side to `size`, aspect kept) then `CenterCrop(size)`, computed the
/// cheap way round: the centred square is resized straight from the source, never copied
/// out or resized whole first. The result is the same picture, but an 8192×1 strip no longer
/// becomes a 1.9-gigapixel intermediate.
pub fn resize_center_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let side = w.min(h).max(1);
    let x = (w - side.min(w)) / 2;
    let y = (h - side.min(h)) / 2;
    resize_region(
        img,
        Region::square(f64::from(x), f64::from(y), f64::from(side)),
        size,
        size,
    )
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

/// `ToTensor` then `Normalize(mean, std)` for one byte value of each channel: the same f32
/// arithmetic as computing it per pixel, looked up instead (the result is bit for bit the
/// same).
fn normalisation_tables() -> [[f32; 256]; 3] {
    std::array::from_fn(|c| {
        let (m, s) = (IMAGENET_MEAN[c], IMAGENET_STD[c]);
        std::array::from_fn(|v| (v as f32 / 255.0 - m) / s)
    })
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
        let mut out = vec![0.0; fitted.as_raw().len()];
        self.eval_into(fitted, &mut out);
        out
    }

    /// [`Preprocessor::eval`] written into `out` (`3 * w * h` floats, planar RGB: one image of
    /// an NCHW batch).
    pub fn eval_into(&self, fitted: &RgbImage, out: &mut [f32]) {
        let tables = normalisation_tables();
        let plane = fitted.as_raw().len() / 3;
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, px) in fitted.as_raw().chunks_exact(3).enumerate() {
            r[i] = tables[0][usize::from(px[0])];
            g[i] = tables[1][usize::from(px[1])];
            b[i] = tables[2][usize::from(px[2])];
        }
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
