//! The class list and the preprocessing contract.
#![allow(clippy::unwrap_used)]

use face2simpson_model::preprocess::{Hwc, IMAGENET_MEAN};
use face2simpson_model::{
    AUGMENTATIONS, Augmentation, CLASSES, ImageError, Preprocessor, decode, decode_reduced,
};
use image::{Rgb, RgbImage};

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
        .map(|s| pre.train(&img, s).iter().map(|&v| u32::from(v)).collect())
        .collect();
    // Flips, two jitters and the no-op branches of RandomApply give many distinct outputs.
    assert!(
        distinct.len() > 10,
        "only {} distinct augmentations",
        distinct.len()
    );
    // Every output is an HWC image of the right length.
    assert!(distinct.iter().all(|v| v.len() == 3 * 32 * 32));
}

#[test]
fn brightness_and_contrast_stay_in_their_ranges() {
    let pre = Preprocessor::new(16);
    let grey = RgbImage::from_pixel(16, 16, Rgb([128, 128, 128]));
    for seed in 0..200 {
        let x = pre.train(&grey, seed);
        // A flat grey stays flat; brightness scales it by 0.9–1.1, contrast leaves it unchanged.
        assert!(x.iter().all(|&v| v == x[0]), "seed {seed}: not flat");
        assert!((115..=141).contains(&x[0]), "seed {seed}: {}", x[0]);
    }
}

/// The byte jitters are PIL's `ImageEnhance` (what the seed's transforms ran on): blend with
/// black or with the rounded mean grey, then round; a flip mirrors pixels, not bytes.
#[test]
fn byte_augmentations_match_pil() {
    let mut px = vec![10, 20, 30, 200, 100, 50];
    Hwc {
        size: 2,
        data: &mut px[..],
    }
    .brightness(0.5);
    assert_eq!(px, [5, 10, 15, 100, 50, 25]);
    Hwc {
        size: 2,
        data: &mut px[..],
    }
    .brightness(3.0);
    assert_eq!(px, [15, 30, 45, 255, 150, 75]);
    // 2x1 image, but the mean and the blend do not depend on the shape.
    let mut px = vec![0, 0, 0, 255, 255, 255];
    Hwc {
        size: 2,
        data: &mut px[..],
    }
    .contrast(0.0);
    assert_eq!(
        px, [128; 6],
        "factor 0 gives the mean grey (127.5 rounds up)"
    );
    let mut px = vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
    Hwc {
        size: 2,
        data: &mut px[..],
    }
    .flip_horizontal();
    assert_eq!(px, [4, 5, 6, 1, 2, 3, 10, 11, 12, 7, 8, 9]);
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

fn jpeg(img: &RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

/// `jpeg` with an EXIF APP1 segment carrying `orientation` inserted after the SOI marker.
pub fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one IFD entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// Red top-left quadrant on blue, 80×40: any rotation or flip moves the red block.
fn marked() -> RgbImage {
    RgbImage::from_fn(80, 40, |x, y| {
        if x < 40 && y < 20 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    })
}

#[test]
fn exif_orientation_is_applied_on_decode() {
    let upright = marked();
    // Orientation 6: the camera stored the picture turned a quarter to the left; viewers turn
    // it 90° clockwise.
    let stored = image::imageops::rotate270(&upright);
    let bytes = with_exif_orientation(&jpeg(&stored), 6);
    let img = decode(&bytes).unwrap();
    assert_eq!(img.dimensions(), (80, 40), "not rotated upright");
    assert!(img.get_pixel(10, 5)[0] > 200, "red block not top-left");
    assert!(img.get_pixel(70, 35)[2] > 200);
    // Without the tag, the same pixels stay as stored.
    assert_eq!(decode(&jpeg(&stored)).unwrap().dimensions(), (40, 80));
}

#[test]
fn exif_orientation_is_applied_on_a_reduced_decode() {
    // The same marked picture, 20 times larger: big enough to be reduced by 4 in the DCT
    // domain (libjpeg-turbo), which reads the EXIF block itself.
    let upright = image::imageops::resize(&marked(), 1600, 800, image::imageops::Nearest);
    let stored = image::imageops::rotate270(&upright);
    let bytes = with_exif_orientation(&jpeg(&stored), 6);
    let photo = decode_reduced(&bytes, 200).unwrap();
    assert_eq!(photo.scale, 4);
    assert_eq!(
        (photo.width, photo.height),
        (1600, 800),
        "the photo's upright size"
    );
    assert_eq!(photo.image.dimensions(), (400, 200), "not rotated upright");
    assert!(
        photo.image.get_pixel(40, 20)[0] > 200,
        "red block not top-left"
    );
    assert!(photo.image.get_pixel(360, 180)[2] > 200);
}

#[test]
fn grey_jpegs_are_reduced_to_rgb() {
    let grey = image::GrayImage::from_fn(1600, 1200, |x, _| image::Luma([(x / 7 % 256) as u8]));
    let mut bytes = std::io::Cursor::new(Vec::new());
    grey.write_to(&mut bytes, image::ImageFormat::Jpeg).unwrap();
    let photo = decode_reduced(bytes.get_ref(), 300).unwrap();
    assert_eq!((photo.scale, photo.image.dimensions()), (4, (400, 300)));
    let p = photo.image.get_pixel(200, 150);
    assert!(p[0] == p[1] && p[1] == p[2], "{p:?}");
    // 800 / 7 % 256 = 114: the reduced pixel is the picture's.
    assert!(p[0].abs_diff(114) < 8, "{p:?}");
}

#[test]
fn extreme_aspect_ratios_are_cropped_before_resizing() {
    // 8192×1: resizing first would make a 1.9-gigapixel intermediate.
    let strip = RgbImage::from_pixel(8192, 1, Rgb([10, 200, 30]));
    let start = std::time::Instant::now();
    let out = Preprocessor::new(224).fit(&decode(&png(&strip)).unwrap());
    assert_eq!(out.dimensions(), (224, 224));
    assert_eq!(*out.get_pixel(100, 100), Rgb([10, 200, 30]));
    // Generous even for an unoptimised build on a busy machine; the old path took seconds.
    assert!(
        start.elapsed() < std::time::Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn pixel_count_is_capped_from_the_header() {
    // 8000×6000 = 48 MP: within the per-side limit, over the pixel limit.
    let mut bomb = png(&RgbImage::new(1, 1));
    bomb[16..20].copy_from_slice(&8000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&6000u32.to_be_bytes());
    let crc = crc32fast::hash(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(
        decode(&bomb),
        Err(ImageError::TooManyPixels {
            width: 8000,
            height: 6000
        })
    );
}

#[test]
fn a_truncated_jpeg_is_corrupt_even_when_the_decoder_fills_it_in() {
    let whole = jpeg(&gradient(256, 256));
    assert!(decode(&whole).is_ok());
    let cut = &whole[..whole.len() * 3 / 4];
    assert!(
        matches!(decode(cut), Err(ImageError::Corrupt(_))),
        "{:?}",
        decode(cut).map(|i| i.dimensions())
    );
}
