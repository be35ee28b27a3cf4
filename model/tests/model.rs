//! Network shapes, weight round trips and the preprocessing contract.
#![allow(clippy::unwrap_used)]

use face2simpson_model::preprocess::{IMAGENET_MEAN, IMAGENET_STD};
use face2simpson_model::{
    AUGMENTATIONS, Augmentation, CLASSES, Classifier, ImageError, Preprocessor, decode,
};
use image::{Rgb, RgbImage};
use tch::{Device, Kind, Tensor};

fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            ((x + y) % 256) as u8,
        ])
    })
}

#[test]
fn classes_are_defined_once_in_order() {
    assert_eq!(CLASSES, ["homer", "marge", "bart", "lisa"]);
}

#[test]
fn shapes() {
    let net = Classifier::new(Device::Cpu, 0.2);
    let vars = net.var_store().variables();
    assert_eq!(vars["features.0.0.weight"].size(), [32, 3, 3, 3]);
    assert_eq!(vars["features.18.0.weight"].size(), [1280, 320, 1, 1]);
    assert_eq!(vars["classifier.1.weight"].size(), [4, 1280]);
    assert_eq!(vars["classifier.1.bias"].size(), [4]);
    let x = Tensor::randn([3, 3, 64, 64], (Kind::Float, Device::Cpu));
    assert_eq!(net.logits(&x, false).size(), [3, 4]);
    assert_eq!(net.net().embed(&x, false).size(), [3, 1280]);
    let p = net.predict(&x);
    let sums = Vec::<f32>::try_from(p.sum_dim_intlist(Some([1i64].as_slice()), false, Kind::Float))
        .unwrap();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");
}

#[test]
fn dropout_is_active_only_in_training() {
    let net = Classifier::with_classes(Device::Cpu, 4, 0.9);
    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let eval_a = net.logits(&x, false);
    assert!(eval_a.equal(&net.logits(&x, false)));
    tch::manual_seed(1);
    let train_a = tch::no_grad(|| net.logits(&x, true));
    let train_b = tch::no_grad(|| net.logits(&x, true));
    assert!(!train_a.equal(&train_b));
}

#[test]
fn safetensors_round_trip_preserves_outputs() {
    let a = Classifier::new(Device::Cpu, 0.2);
    let bytes = a.to_safetensors().unwrap();
    let mut b = Classifier::new(Device::Cpu, 0.2);
    b.load_weights(&bytes).unwrap();
    let x = Tensor::randn([2, 3, 48, 48], (Kind::Float, Device::Cpu));
    assert!(
        a.logits(&x, false)
            .allclose(&b.logits(&x, false), 1e-6, 1e-6, false)
    );
    assert!(b.load_weights(&bytes[..bytes.len() / 2]).is_err());
}

#[test]
fn exactly_the_seed_augmentations() {
    assert_eq!(
        AUGMENTATIONS,
        [
            Augmentation::HorizontalFlip { p: 0.5 },
            Augmentation::Contrast { strength: 0.9 },
            Augmentation::Brightness { strength: 0.1 },
            Augmentation::FlipThenContrast {
                p: 0.5,
                strength: 0.9
            },
            Augmentation::FlipThenBrightness {
                p: 0.5,
                strength: 0.1
            },
        ]
    );
}

#[test]
fn training_preprocessing_is_deterministic_per_seed() {
    let pre = Preprocessor::new(32);
    let img = pre.fit(&gradient(50, 40));
    assert_eq!(pre.train(&img, 7), pre.train(&img, 7));
    let distinct: std::collections::HashSet<Vec<u32>> = (0..40)
        .map(|s| pre.train(&img, s).iter().map(|v| v.to_bits()).collect())
        .collect();
    // Flips, two jitters and the no-op branches of RandomApply give many distinct outputs.
    assert!(
        distinct.len() > 10,
        "only {} distinct augmentations",
        distinct.len()
    );
    // Every output is a normalised image of the right length.
    assert!(distinct.iter().all(|v| v.len() == 3 * 32 * 32));
}

#[test]
fn brightness_and_contrast_stay_in_their_ranges() {
    let pre = Preprocessor::new(16);
    let grey = RgbImage::from_pixel(16, 16, Rgb([128, 128, 128]));
    let base = 128.0 / 255.0;
    for seed in 0..200 {
        let x = pre.train(&grey, seed);
        // Undo normalisation on the red channel: a flat grey stays flat; brightness scales it by 0.9–1.1,
        // contrast leaves a flat image unchanged.
        let r = x[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0];
        assert!(
            (base * 0.9 - 1e-4..=base * 1.1 + 1e-4).contains(&r),
            "seed {seed}: {r}"
        );
    }
}

#[test]
fn eval_normalises_with_imagenet_statistics() {
    let pre = Preprocessor::new(8);
    let mean_px = RgbImage::from_pixel(8, 8, Rgb(IMAGENET_MEAN.map(|m| (m * 255.0).round() as u8)));
    let x = pre.eval(&mean_px);
    assert!(x.iter().all(|v| v.abs() < 0.02), "{:?}", &x[..4]);
}

#[test]
fn resize_keeps_aspect_then_crops_centre() {
    let pre = Preprocessor::new(100);
    let wide = RgbImage::from_fn(400, 200, |x, _| {
        if (150..250).contains(&x) {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    let out = pre.fit(&wide);
    assert_eq!(out.dimensions(), (100, 100));
    // The centre strip (x 150..250 of 400) becomes x 75..125 of 200, i.e. 25..75 after the crop.
    assert_eq!(out.get_pixel(50, 50)[0], 255);
    assert_eq!(out.get_pixel(5, 50)[2], 255);
    assert_eq!(pre.fit(&gradient(30, 90)).dimensions(), (100, 100));
}

#[test]
fn bad_images_are_refused_with_a_reason() {
    assert_eq!(decode(b""), Err(ImageError::Empty));
    assert_eq!(decode(b"hello, not an image"), Err(ImageError::NotAnImage));
    let good = png(&gradient(64, 64));
    assert!(decode(&good).is_ok());
    assert!(matches!(
        decode(&good[..good.len() / 2]),
        Err(ImageError::Corrupt(_))
    ));
}

/// A 40000×40000 PNG header on a tiny file must be refused before any pixel buffer exists.
#[test]
fn decompression_bomb_is_refused_from_its_header() {
    let mut bomb = png(&RgbImage::new(1, 1));
    // IHDR data starts at byte 16: width, height (big-endian), then the chunk CRC at 29..33.
    bomb[16..20].copy_from_slice(&40_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&40_000u32.to_be_bytes());
    let crc = crc32fast::hash(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    assert!(bomb.len() < 200);
    assert_eq!(
        decode(&bomb),
        Err(ImageError::TooLarge {
            width: 40_000,
            height: 40_000
        })
    );
}
