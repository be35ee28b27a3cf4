//! The one resampler of the pipeline: every fit to the model's size and every detector input
//! is a region of the decoded photo resized here.
//!
//! `fast_image_resize`'s bilinear convolution: the filter PIL calls BILINEAR and the `image`
//! crate Triangle (its support widens with the reduction, so shrinking averages instead of
//! skipping pixels), in fixed point with AVX2/SSE4.1/NEON. It reads the region straight from
//! the photo's buffer, at fractional coordinates when the region comes from a reduced decode:
//! nothing is copied out first.

use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::U8x3;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

/// A rectangle of an image in its pixels; fractional edges are sampled in between.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Region {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

impl Region {
    pub fn square(left: f64, top: f64, side: f64) -> Self {
        Self {
            left,
            top,
            width: side,
            height: side,
        }
    }

    /// This region scaled by `1 / scale` (from a photo's pixels to those of a reduced decode).
    pub fn reduced(self, scale: f64) -> Self {
        Self {
            left: self.left / scale,
            top: self.top / scale,
            width: self.width / scale,
            height: self.height / scale,
        }
    }

    /// The part of the region inside a `w`×`h` image; `None` when nothing of it is.
    fn within(self, w: u32, h: u32) -> Option<Self> {
        let left = self.left.clamp(0.0, f64::from(w));
        let top = self.top.clamp(0.0, f64::from(h));
        let right = (self.left + self.width).clamp(0.0, f64::from(w));
        let bottom = (self.top + self.height).clamp(0.0, f64::from(h));
        (right - left > 0.0 && bottom - top > 0.0).then_some(Self {
            left,
            top,
            width: right - left,
            height: bottom - top,
        })
    }
}

/// `region` of `img`, clipped to `img`, resized to `width`×`height` (black when nothing of
/// the region is inside `img`).
pub fn resize_region(img: &RgbImage, region: Region, width: u32, height: u32) -> RgbImage {
    let mut out = RgbImage::new(width, height);
    resize_region_into(img, region, &mut out);
    out
}

/// [`resize_region`] into `out`, at `out`'s size.
pub fn resize_region_into(img: &RgbImage, region: Region, out: &mut RgbImage) {
    let (w, h) = img.dimensions();
    let (dw, dh) = out.dimensions();
    let Some(region) = region.within(w, h) else {
        out.fill(0);
        return;
    };
    if dw == 0 || dh == 0 {
        return;
    }
    let src = TypedImageRef::<U8x3>::from_buffer(w, h, img.as_raw());
    let dst = TypedImage::<U8x3>::from_buffer(dw, dh, out);
    let (Ok(src), Ok(mut dst)) = (src, dst) else {
        // An RgbImage's buffer always holds its pixels; nothing else can fail here.
        return;
    };
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(region.left, region.top, region.width, region.height);
    // The region is inside the source and both views match their buffers: the resizer has
    // nothing to refuse.
    let _ = Resizer::new().resize_typed(&src, &mut dst, &options);
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 77])
        })
    }

    #[test]
    fn a_region_is_resized_from_the_photo_in_place() {
        let img = gradient(400, 300);
        let out = resize_region(&img, Region::square(100.0, 50.0, 200.0), 50, 50);
        assert_eq!(out.dimensions(), (50, 50));
        // The corners of the output sample the corners of the region, not of the photo.
        let tl = out.get_pixel(0, 0);
        assert!((i32::from(tl[0]) - 65).abs() <= 3, "{tl:?}");
        assert!((i32::from(tl[1]) - 43).abs() <= 3, "{tl:?}");
        let br = out.get_pixel(49, 49);
        assert!((i32::from(br[0]) - 189).abs() <= 3, "{br:?}");
        assert!((i32::from(br[1]) - 211).abs() <= 3, "{br:?}");
        assert!(out.pixels().all(|p| p[2] == 77));
    }

    #[test]
    fn shrinking_averages_like_the_triangle_filter() {
        // Stripes one pixel wide average to grey, they do not alias into stripes.
        let img = RgbImage::from_fn(300, 300, |x, _| {
            if x % 2 == 0 {
                Rgb([255, 255, 255])
            } else {
                Rgb([0, 0, 0])
            }
        });
        let out = resize_region(&img, Region::square(0.0, 0.0, 300.0), 30, 30);
        assert!(
            out.pixels().all(|p| (120..=135).contains(&p[0])),
            "{:?}",
            out.get_pixel(3, 3)
        );
        let triangle = image::imageops::resize(&img, 30, 30, image::imageops::FilterType::Triangle);
        let diff = triangle
            .as_raw()
            .iter()
            .zip(out.as_raw())
            .map(|(a, b)| (i16::from(*a) - i16::from(*b)).unsigned_abs())
            .max();
        assert!(diff <= Some(3), "{diff:?}");
    }

    #[test]
    fn outside_the_photo_is_black_and_nothing_panics() {
        let img = gradient(40, 20);
        let out = resize_region(&img, Region::square(-10.0, -10.0, 5.0), 8, 8);
        assert!(out.pixels().all(|p| *p == Rgb([0, 0, 0])));
        let part = resize_region(&img, Region::square(30.0, 0.0, 20.0), 8, 8);
        assert_eq!(part.dimensions(), (8, 8));
        assert_eq!(
            resize_region(&img, Region::square(0.0, 0.0, 20.0), 0, 0).len(),
            0
        );
    }
}
