//! Photo bytes to upright RGB pixels, refusing oversized and malformed input up front, and for
//! big JPEGs decoding a reduced image straight from the DCT coefficients.
//!
//! A 12 MP phone photo is 36 MB of RGB; the pipeline needs far fewer pixels than that (a face
//! crop is resized to the model's 224 px, the detector sees 128 px). A JPEG can be decoded at
//! 1/2, 1/4 or 1/8 of its size by an inverse DCT on fewer coefficients: less work than
//! decoding in full, and a quarter of the memory or less. The `image` crate's decoder
//! (zune-jpeg) has no such mode, so reduced decodes go through libjpeg-turbo (mozjpeg's build
//! of it, with its SIMD code); full-size ones stay on zune-jpeg, which is as fast there.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

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
/// The reductions a JPEG decoder can apply in the DCT domain, largest first.
const REDUCTIONS: [u32; 3] = [8, 4, 2];

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

/// A photo decoded upright, possibly reduced while decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub image: RgbImage,
    /// The photo's pixels per decoded pixel along each side: 1 (full size), 2, 4 or 8.
    pub scale: u32,
    /// The photo's own upright size, in its pixels: what coordinates given to a client mean.
    pub width: u32,
    pub height: u32,
}

impl Decoded {
    /// An image taken as a photo at full size.
    pub fn full(image: RgbImage) -> Self {
        let (width, height) = image.dimensions();
        Self {
            image,
            scale: 1,
            width,
            height,
        }
    }
}

/// What the header says, read before any pixel buffer exists.
#[derive(Debug, Clone, Copy)]
struct Header {
    format: ImageFormat,
    /// As stored (before the EXIF orientation turns it).
    width: u32,
    height: u32,
    /// Bytes per pixel at the image's own depth (a 16-bit RGBA PNG: 8).
    bytes_per_pixel: u64,
}

impl Header {
    /// Refuses what cannot be decoded, from the bytes and the header alone.
    fn read(bytes: &[u8]) -> Result<Self, ImageError> {
        if bytes.is_empty() {
            return Err(ImageError::Empty);
        }
        if bytes.len() > MAX_FILE_BYTES {
            return Err(ImageError::TooManyBytes(bytes.len()));
        }
        let reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| ImageError::Corrupt(e.to_string()))?;
        let format = match reader.format() {
            Some(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP)) => f,
            _ => return Err(ImageError::NotAnImage),
        };
        let decoder = reader
            .into_decoder()
            .map_err(|e| ImageError::Corrupt(e.to_string()))?;
        let (width, height) = decoder.dimensions();
        if width > MAX_SIDE || height > MAX_SIDE {
            return Err(ImageError::TooLarge { width, height });
        }
        if u64::from(width) * u64::from(height) > MAX_PIXELS {
            return Err(ImageError::TooManyPixels { width, height });
        }
        if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
            return Err(ImageError::Corrupt(
                "the JPEG ends before its end marker".into(),
            ));
        }
        Ok(Self {
            format,
            width,
            height,
            bytes_per_pixel: u64::from(decoder.color_type().bytes_per_pixel()),
        })
    }

    /// The DCT-domain reduction for a photo whose shorter side must stay at least `min_side`
    /// decoded pixels: the largest of 8, 4, 2 that keeps it there, else 1. JPEG only.
    fn reduction(&self, min_side: u32) -> u32 {
        if self.format != ImageFormat::Jpeg {
            return 1;
        }
        let short = self.width.min(self.height);
        REDUCTIONS
            .into_iter()
            .find(|&k| short / k >= min_side)
            .unwrap_or(1)
    }
}

/// A JPEG ends with the EOI marker (FF D9). The decoder fills a truncated file with grey and
/// reports success, so a missing marker is how a cut-off upload is told from a whole one.
/// Encoders may pad after EOI, hence the search in the tail rather than at the very end.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Decodes jpeg, png or webp into upright RGB at full size, refusing oversized and malformed
/// input up front.
///
/// The EXIF orientation is applied (phones store photos sideways and say so in EXIF), so the
/// image, and any coordinates computed on it, are as a person sees it.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    let header = Header::read(bytes)?;
    full(bytes, header).map(|d| d.image)
}

/// [`decode`], but a JPEG whose shorter side is at least twice `min_side` is decoded reduced
/// in the DCT domain by the largest of 1/2, 1/4, 1/8 that keeps its shorter side at
/// `min_side` or more ([`Decoded::scale`] says by how much).
pub fn decode_reduced(bytes: &[u8], min_side: u32) -> Result<Decoded, ImageError> {
    let header = Header::read(bytes)?;
    let k = header.reduction(min_side);
    if k > 1
        && let Some(reduced) = reduced(bytes, header, k)?
    {
        return Ok(reduced);
    }
    full(bytes, header)
}

/// Bytes that [`decode_reduced`] will hold for `bytes`, from its header alone: the image at
/// the depth it is decoded to (a 16-bit RGBA PNG is 8 bytes a pixel; a reduced JPEG counts
/// its reduced pixels) plus the 8-bit RGB copy the pipeline works on (or, for an image already
/// 8-bit RGB, the copy an EXIF rotation makes). `None` when the header cannot be read or is
/// beyond the limits; decoding then refuses it at once, with its own reason.
pub fn decoded_cost(bytes: &[u8], min_side: u32) -> Option<u64> {
    let header = Header::read(bytes).ok()?;
    let k = u64::from(header.reduction(min_side));
    let pixels = u64::from(header.width).div_ceil(k) * u64::from(header.height).div_ceil(k);
    // A reduced decode comes out as 8-bit RGB (or grey) whatever the JPEG's depth.
    let native = if k > 1 { 3 } else { header.bytes_per_pixel };
    Some(pixels.saturating_mul(native + 3))
}

fn corrupt(e: image::ImageError, header: Header) -> ImageError {
    match e {
        image::ImageError::Limits(_) => ImageError::TooLarge {
            width: header.width,
            height: header.height,
        },
        e => ImageError::Corrupt(e.to_string()),
    }
}

/// The whole image through the `image` crate's decoders.
fn full(bytes: &[u8], header: Header) -> Result<Decoded, ImageError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), header.format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| corrupt(e, header))?;
    // A malformed EXIF block is not worth refusing the photo for: it is then shown as stored.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder).map_err(|e| corrupt(e, header))?;
    Ok(upright(img, orientation, 1, header))
}

/// The JPEG reduced by `k` in the DCT domain by libjpeg-turbo; `None` for CMYK and YCCK, which
/// libjpeg cannot turn into RGB and which are decoded in full instead.
fn reduced(bytes: &[u8], header: Header, k: u32) -> Result<Option<Decoded>, ImageError> {
    // libjpeg reports a fatal error by unwinding out of its error handler (mozjpeg's error
    // manager resumes an unwind, so no panic hook runs): caught here, it is a corrupt file.
    let decoded = std::panic::catch_unwind(|| reduced_rgb(bytes, k))
        .map_err(|cause| ImageError::Corrupt(unwind_message(cause.as_ref())))?
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let Some((rgb, exif)) = decoded else {
        return Ok(None);
    };
    // The scale the decoder applied, which is `k` unless the image is a few pixels wide.
    let scale = header.width.div_ceil(rgb.width().max(1)).max(1);
    let orientation = exif
        .as_deref()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    Ok(Some(upright(
        DynamicImage::ImageRgb8(rgb),
        orientation,
        scale,
        header,
    )))
}

/// The pixels reduced by `k`, as RGB (grey JPEGs are expanded by libjpeg), and the EXIF block
/// from its TIFF header on.
fn reduced_rgb(bytes: &[u8], k: u32) -> std::io::Result<Option<(RgbImage, Option<Vec<u8>>)>> {
    use mozjpeg::{ColorSpace, Decompress, Marker};
    let mut jpeg = Decompress::builder()
        .with_markers(&[Marker::APP(1)])
        .from_mem(bytes)?;
    if matches!(
        jpeg.color_space(),
        ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK
    ) {
        return Ok(None);
    }
    let exif = jpeg
        .markers()
        .find_map(|m| m.data.strip_prefix(b"Exif\0\0").map(<[u8]>::to_vec));
    // `k` is 2, 4 or 8 (REDUCTIONS): the output is 8/k eighths of the image.
    jpeg.scale(u8::try_from(8 / k).unwrap_or(1));
    let mut started = jpeg.rgb()?;
    let (w, h) = (started.width(), started.height());
    let pixels: Vec<u8> = started.read_scanlines()?;
    started.finish()?;
    let size = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let rgb = RgbImage::from_raw(size(w), size(h), pixels).ok_or_else(|| {
        std::io::Error::other("the JPEG decoder returned fewer rows than the image has")
    })?;
    Ok(Some((rgb, exif)))
}

/// What libjpeg said when it gave up (the unwind carries its message).
fn unwind_message(cause: &(dyn std::any::Any + Send)) -> String {
    cause
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| cause.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "the JPEG decoder gave up".to_owned())
}

fn upright(mut img: DynamicImage, orientation: Orientation, scale: u32, header: Header) -> Decoded {
    img.apply_orientation(orientation);
    let turned = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    let (width, height) = if turned {
        (header.height, header.width)
    } else {
        (header.width, header.height)
    };
    Decoded {
        image: img.into_rgb8(),
        scale,
        width,
        height,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x % 256) as u8,
                (y % 256) as u8,
                ((x / 7 + y / 5) % 256) as u8,
            ])
        });
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    #[test]
    fn big_jpegs_are_reduced_in_the_dct_domain_down_to_the_minimum_side() {
        let bytes = jpeg(2400, 1700);
        let d = decode_reduced(&bytes, 400).expect("decodes");
        // 1700 / 4 = 425 >= 400; 1700 / 8 < 400.
        assert_eq!(d.scale, 4);
        assert_eq!(d.image.dimensions(), (600, 425));
        assert_eq!((d.width, d.height), (2400, 1700));
        let full = decode_reduced(&bytes, 1000).expect("decodes");
        assert_eq!((full.scale, full.image.dimensions()), (1, (2400, 1700)));
        // The reduced pixels are the picture's, not noise: close to a box average of the full.
        let small = image::imageops::thumbnail(&full.image, 600, 425);
        let mean_diff = small
            .as_raw()
            .iter()
            .zip(d.image.as_raw())
            .map(|(a, b)| f64::from((i16::from(*a) - i16::from(*b)).unsigned_abs()))
            .sum::<f64>()
            / small.as_raw().len() as f64;
        assert!(mean_diff < 8.0, "{mean_diff}");
    }

    #[test]
    fn a_fatal_libjpeg_error_is_a_corrupt_file_not_a_panic() {
        let mut bytes = jpeg(2400, 1700);
        let header = Header::read(&bytes).expect("a good header");
        // The first Huffman table's 16 code counts: 16 × 255 codes is more than a table holds,
        // which libjpeg refuses as a fatal error (it unwinds out of its error handler).
        let dht = bytes
            .windows(2)
            .position(|w| w == [0xFF, 0xC4])
            .expect("a DHT segment");
        bytes[dht + 5..dht + 21].fill(0xFF);
        match reduced(&bytes, header, 2) {
            Err(ImageError::Corrupt(message)) => {
                assert!(message.contains("Huffman"), "{message}")
            }
            other => panic!("expected a corrupt-file error, got {other:?}"),
        }
    }

    #[test]
    fn the_cost_counts_the_reduced_pixels() {
        let bytes = jpeg(2400, 1700);
        assert_eq!(decoded_cost(&bytes, 400), Some(600 * 425 * 6));
        assert_eq!(decoded_cost(&bytes, 1000), Some(2400 * 1700 * 6));
        let mut png = Cursor::new(Vec::new());
        RgbImage::new(2400, 1700)
            .write_to(&mut png, ImageFormat::Png)
            .unwrap();
        // Only JPEGs can be reduced while decoding.
        assert_eq!(decoded_cost(png.get_ref(), 400), Some(2400 * 1700 * 6));
        assert_eq!(decode_reduced(png.get_ref(), 400).map(|d| d.scale), Ok(1));
    }
}
