//! The uploads, built deterministically from the astronaut fixture at bench start: there is no
//! real group photo in the repository, so the ~1 MP multi-face one is a composite; nor a phone
//! photo, so the 12 MP one (per-stage table only) is the head on a noisy gradient.

use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};

const PORTRAIT: &[u8] = include_bytes!("../../tests/fixtures/astronaut.png");

/// The composite's canvas: about 1 MP, and wider than 1.3:1, so the detector tiles it.
const GROUP_SIZE: (u32, u32) = (1280, 886);
/// The astronaut's head and shoulders in the 512 px fixture (x, y, side): BlazeFace's
/// short-range model wants a face that fills a good part of its input, and four whole 512 px
/// frames shrunk onto one canvas leave faces too small for it (it found none).
const HEAD: (u32, u32, u32) = (90, 0, 280);
/// Four differently scaled copies of the head: (side, x, y) on the canvas.
const COPIES: [(u32, u32, u32); 4] = [(480, 0, 0), (420, 480, 0), (380, 900, 0), (400, 200, 486)];

/// One upload: a name for the tables and the file wrk sends.
pub struct Upload {
    pub name: &'static str,
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub dimensions: (u32, u32),
}

fn save_jpeg(img: &RgbImage, path: &Path, quality: Option<u8>) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    match quality {
        Some(q) => img.write_with_encoder(JpegEncoder::new_with_quality(&mut bytes, q))?,
        // The encoder's default quality, as the uploads before the composite were saved.
        None => img.write_with_encoder(JpegEncoder::new(&mut bytes))?,
    }
    std::fs::write(path, &bytes)?;
    Ok(bytes)
}

/// The 256 px JPEG portrait (one face) every earlier table used.
pub fn portrait(dir: &Path) -> anyhow::Result<Upload> {
    let img = image::load_from_memory(PORTRAIT)?
        .resize_exact(256, 256, FilterType::Triangle)
        .to_rgb8();
    let path = dir.join("portrait.jpg");
    let bytes = save_jpeg(&img, &path, None)?;
    Ok(Upload {
        name: "256 px JPEG portrait, 1 face",
        path,
        bytes,
        dimensions: img.dimensions(),
    })
}

/// The composite group photo: four scaled copies of the astronaut's head on a grey 1280×886
/// canvas, JPEG quality 90.
pub fn group(dir: &Path) -> anyhow::Result<Upload> {
    let fixture = image::load_from_memory(PORTRAIT)?.to_rgb8();
    let (hx, hy, side) = HEAD;
    let head = imageops::crop_imm(&fixture, hx, hy, side, side).to_image();
    let mut canvas = RgbImage::from_pixel(GROUP_SIZE.0, GROUP_SIZE.1, Rgb([90, 90, 90]));
    for (size, x, y) in COPIES {
        let copy = imageops::resize(&head, size, size, FilterType::Triangle);
        imageops::replace(&mut canvas, &copy, i64::from(x), i64::from(y));
    }
    let path = dir.join("group.jpg");
    let bytes = save_jpeg(&canvas, &path, Some(90))?;
    Ok(Upload {
        name: "1280x886 JPEG composite, 4 faces",
        path,
        bytes,
        dimensions: GROUP_SIZE,
    })
}

/// A phone photo's size: 12 MP, 4:3.
const PHONE_SIZE: (u32, u32) = (4032, 3024);

/// The 12 MP JPEG of the per-stage table (quality 90): the astronaut's head 1400 px wide on a
/// gradient with sensor-like noise, so that it compresses like a photo (a few MB). Decoded
/// reduced by 2 in the DCT domain (pipeline version 2).
pub fn phone(dir: &Path) -> anyhow::Result<Upload> {
    let fixture = image::load_from_memory(PORTRAIT)?.to_rgb8();
    let (hx, hy, side) = HEAD;
    let head = imageops::crop_imm(&fixture, hx, hy, side, side).to_image();
    let head = imageops::resize(&head, 1400, 1400, FilterType::Triangle);
    let mut seed = 7u32;
    let mut canvas = RgbImage::from_fn(PHONE_SIZE.0, PHONE_SIZE.1, |x, y| {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = ((seed >> 16) % 9) as u8;
        Rgb([
            (60 + x / 32) as u8 + n,
            (80 + y / 24) as u8 + n,
            (120 + (x + y) / 64 % 60) as u8 + n,
        ])
    });
    imageops::replace(&mut canvas, &head, 1300, 700);
    let path = dir.join("phone.jpg");
    let bytes = save_jpeg(&canvas, &path, Some(90))?;
    Ok(Upload {
        name: "4032x3024 JPEG phone photo, 1 face",
        path,
        bytes,
        dimensions: PHONE_SIZE,
    })
}
