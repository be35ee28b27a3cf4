//! Synthetic cartoon heads, one look per class, for the demo and the tests.
//!
//! Every head is drawn from primitives — no copyrighted artwork — with a cue per character:
//! Marge's tall blue hair, Bart's spiky crown, Lisa's star points and Homer's bald head with
//! two hairs and stubble. Position, scale, rotation, colours, background, clutter and noise
//! are random, so the classifier must learn the cue rather than a pixel position.

use std::f32::consts::PI;

use image::{ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use imageproc::drawing::{
    draw_filled_circle_mut, draw_filled_ellipse_mut, draw_filled_rect_mut, draw_line_segment_mut,
    draw_polygon_mut,
};
use imageproc::geometric_transformations::{Interpolation, rotate_about_center};
use imageproc::point::Point;
use imageproc::rect::Rect;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Draws one image of `class` (an index into [`model::CLASSES`]) at `size`×`size`.
pub fn draw(class: usize, size: u32, seed: u64) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let s = size as f32;
    let mut canvas = background(size, &mut rng);

    // The head is drawn upright on a transparent layer, then rotated and placed.
    let mut layer = RgbaImage::new(size, size);
    let scale = rng.random_range(0.55..0.85) * s;
    let (cx, cy) = (s / 2.0, s * 0.58);
    let skin = Rgba([
        rng.random_range(230..=255),
        rng.random_range(195..=225),
        rng.random_range(0..=60),
        255,
    ]);
    let head_w = scale * 0.26;
    let head_h = scale * 0.34;
    match class {
        0 => homer(&mut layer, cx, cy, head_w, head_h, skin, &mut rng),
        1 => marge(&mut layer, cx, cy, head_w, head_h, skin, &mut rng),
        2 => bart(&mut layer, cx, cy, head_w, head_h, skin, &mut rng),
        _ => lisa(&mut layer, cx, cy, head_w, head_h, skin, &mut rng),
    }
    face(
        &mut layer,
        cx,
        cy,
        head_w,
        head_h,
        skin,
        class == 0,
        &mut rng,
    );

    let angle = rng.random_range(-0.35..0.35);
    let layer = rotate_about_center(&layer, angle, Interpolation::Bilinear, Rgba([0, 0, 0, 0]));
    let dx = rng.random_range(-0.15..0.15) * s;
    let dy = rng.random_range(-0.12..0.08) * s;
    composite(&mut canvas, &layer, dx as i64, dy as i64);
    add_noise(&mut canvas, rng.random_range(4.0..14.0), &mut rng);
    canvas
}

/// Encodes a drawing; JPEG and PNG alternate so both decoders are exercised.
pub fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    // Encoding an in-memory RGB image to PNG or JPEG does not fail.
    #[allow(clippy::unwrap_used)]
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn background(size: u32, rng: &mut impl Rng) -> RgbImage {
    let c0 = [
        rng.random_range(0..=255u8),
        rng.random_range(0..=255u8),
        rng.random_range(0..=255u8),
    ];
    let c1 = [
        rng.random_range(0..=255u8),
        rng.random_range(0..=255u8),
        rng.random_range(0..=255u8),
    ];
    let mut img = RgbImage::from_fn(size, size, |_, y| {
        let t = y as f32 / size as f32;
        Rgb(std::array::from_fn(|i| {
            (f32::from(c0[i]) * (1.0 - t) + f32::from(c1[i]) * t) as u8
        }))
    });
    for _ in 0..rng.random_range(0..5) {
        let colour = Rgb([rng.random(), rng.random(), rng.random()]);
        let x = rng.random_range(0..size) as i32;
        let y = rng.random_range(0..size) as i32;
        let r = rng.random_range(2..(size as i32 / 8).max(3));
        if rng.random_bool(0.5) {
            draw_filled_circle_mut(&mut img, (x, y), r, colour);
        } else {
            draw_filled_rect_mut(
                &mut img,
                Rect::at(x, y).of_size(r as u32 * 2, r as u32),
                colour,
            );
        }
    }
    img
}

fn composite(canvas: &mut RgbImage, layer: &RgbaImage, dx: i64, dy: i64) {
    let (w, h) = canvas.dimensions();
    for (x, y, px) in layer.enumerate_pixels() {
        let (tx, ty) = (i64::from(x) + dx, i64::from(y) + dy);
        if px[3] == 0 || tx < 0 || ty < 0 || tx >= i64::from(w) || ty >= i64::from(h) {
            continue;
        }
        let a = f32::from(px[3]) / 255.0;
        let dst = canvas.get_pixel_mut(tx as u32, ty as u32);
        for i in 0..3 {
            dst[i] = (f32::from(px[i]) * a + f32::from(dst[i]) * (1.0 - a)) as u8;
        }
    }
}

fn add_noise(img: &mut RgbImage, amplitude: f32, rng: &mut impl Rng) {
    for px in img.pixels_mut() {
        for c in px.0.iter_mut() {
            let n = rng.random_range(-amplitude..amplitude);
            *c = (f32::from(*c) + n).clamp(0.0, 255.0) as u8;
        }
    }
}

fn pt(x: f32, y: f32) -> Point<i32> {
    Point::new(x.round() as i32, y.round() as i32)
}

/// Polygon without a repeated closing point (imageproc rejects that).
fn polygon(img: &mut RgbaImage, points: &[Point<i32>], colour: Rgba<u8>) {
    let mut pts: Vec<Point<i32>> = Vec::with_capacity(points.len());
    for p in points {
        if pts.last() != Some(p) {
            pts.push(*p);
        }
    }
    while pts.len() > 2 && pts.first() == pts.last() {
        pts.pop();
    }
    if pts.len() >= 3 {
        draw_polygon_mut(img, &pts, colour);
    }
}

fn head(img: &mut RgbaImage, cx: f32, cy: f32, w: f32, h: f32, skin: Rgba<u8>) {
    draw_filled_ellipse_mut(img, (cx as i32, cy as i32), w as i32, h as i32, skin);
}

fn homer(
    img: &mut RgbaImage,
    cx: f32,
    cy: f32,
    w: f32,
    h: f32,
    skin: Rgba<u8>,
    rng: &mut impl Rng,
) {
    head(img, cx, cy, w, h, skin);
    // Stubble: a grey-brown muzzle around mouth and jaw, speckled.
    let stubble = Rgba([
        rng.random_range(140..=180),
        rng.random_range(110..=140),
        rng.random_range(60..=100),
        255,
    ]);
    draw_filled_ellipse_mut(
        img,
        (cx as i32, (cy + h * 0.55) as i32),
        (w * 0.85) as i32,
        (h * 0.42) as i32,
        stubble,
    );
    for _ in 0..25 {
        let x = cx + rng.random_range(-0.7..0.7) * w;
        let y = cy + h * rng.random_range(0.3..0.85);
        draw_filled_circle_mut(img, (x as i32, y as i32), 1, Rgba([90, 70, 40, 255]));
    }
    // Two hairs curling over the bald top.
    let hair = Rgba([30, 30, 30, 255]);
    for side in [-1.0f32, 1.0] {
        let x0 = cx + side * w * 0.12;
        let y0 = cy - h * 0.95;
        let mut prev = (x0, y0);
        for i in 1..=8 {
            let t = i as f32 / 8.0;
            let x = x0 + side * w * 0.25 * (t * PI).sin();
            let y = y0 - h * 0.3 * t;
            draw_line_segment_mut(img, prev, (x, y), hair);
            draw_line_segment_mut(img, (prev.0 + 1.0, prev.1), (x + 1.0, y), hair);
            prev = (x, y);
        }
    }
}

fn marge(
    img: &mut RgbaImage,
    cx: f32,
    cy: f32,
    w: f32,
    h: f32,
    skin: Rgba<u8>,
    rng: &mut impl Rng,
) {
    let blue = Rgba([
        rng.random_range(20..=70),
        rng.random_range(60..=110),
        rng.random_range(180..=255),
        255,
    ]);
    // A beehive about twice the head's height, stacked in lumps.
    let tower = h * rng.random_range(1.8..2.4);
    let lumps = 4;
    for i in 0..lumps {
        let t = i as f32 / (lumps - 1) as f32;
        let y = cy - h * 0.6 - tower * t;
        draw_filled_ellipse_mut(
            img,
            (cx as i32, y as i32),
            (w * (0.95 - 0.2 * t)) as i32,
            (tower / 3.0) as i32,
            blue,
        );
    }
    head(img, cx, cy, w, h, skin);
    // Fringe over the forehead.
    draw_filled_ellipse_mut(
        img,
        (cx as i32, (cy - h * 0.75) as i32),
        (w * 0.9) as i32,
        (h * 0.3) as i32,
        blue,
    );
}

fn bart(img: &mut RgbaImage, cx: f32, cy: f32, w: f32, h: f32, skin: Rgba<u8>, rng: &mut impl Rng) {
    // A flat-topped head with a crown of small, sharp spikes along the top edge only.
    let top = cy - h;
    draw_filled_rect_mut(
        img,
        Rect::at((cx - w) as i32, top as i32).of_size((2.0 * w) as u32, h as u32 + 1),
        skin,
    );
    head(img, cx, cy, w, h, skin);
    let spikes = rng.random_range(8..=10);
    let spike_h = h * rng.random_range(0.35..0.5);
    let mut crown = vec![pt(cx - w, top + 1.0)];
    for i in 0..spikes {
        let x0 = cx - w + 2.0 * w * i as f32 / spikes as f32;
        let x1 = cx - w + 2.0 * w * (i as f32 + 0.5) / spikes as f32;
        crown.push(pt(x0, top));
        crown.push(pt(x1, top - spike_h));
    }
    crown.push(pt(cx + w, top));
    crown.push(pt(cx + w, top + 1.0));
    polygon(img, &crown, skin);
}

fn lisa(img: &mut RgbaImage, cx: f32, cy: f32, w: f32, h: f32, skin: Rgba<u8>, rng: &mut impl Rng) {
    // Long star points radiating all around the upper head.
    let points = rng.random_range(7..=9);
    let reach = rng.random_range(1.6..1.9);
    for i in 0..points {
        let a = PI + PI * (i as f32 + 0.5) / points as f32 + rng.random_range(-0.08..0.08);
        let base = 0.25;
        let tip = pt(cx + a.cos() * w * reach, cy + a.sin() * h * reach);
        let l = pt(
            cx + (a - base).cos() * w * 0.8,
            cy + (a - base).sin() * h * 0.8,
        );
        let r = pt(
            cx + (a + base).cos() * w * 0.8,
            cy + (a + base).sin() * h * 0.8,
        );
        polygon(img, &[l, tip, r], skin);
    }
    head(img, cx, cy, w, h, skin);
    // Pearl necklace under the chin.
    for i in 0..7 {
        let x = cx - w * 0.6 + w * 1.2 * i as f32 / 6.0;
        draw_filled_circle_mut(
            img,
            (x as i32, (cy + h * 1.05) as i32),
            (w * 0.07).max(1.0) as i32,
            Rgba([250, 250, 250, 255]),
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn face(
    img: &mut RgbaImage,
    cx: f32,
    cy: f32,
    w: f32,
    h: f32,
    skin: Rgba<u8>,
    stubble: bool,
    rng: &mut impl Rng,
) {
    let eye_r = (w * rng.random_range(0.22..0.3)).max(2.0);
    let eye_y = cy - h * 0.15;
    for side in [-1.0f32, 1.0] {
        let ex = cx + side * w * 0.35;
        draw_filled_circle_mut(
            img,
            (ex as i32, eye_y as i32),
            eye_r as i32,
            Rgba([255, 255, 255, 255]),
        );
        let look = rng.random_range(-0.3..0.3) * eye_r;
        draw_filled_circle_mut(
            img,
            ((ex + look) as i32, eye_y as i32),
            (eye_r * 0.3).max(1.0) as i32,
            Rgba([0, 0, 0, 255]),
        );
    }
    // Nose and mouth.
    draw_filled_ellipse_mut(
        img,
        (cx as i32, (cy + h * 0.1) as i32),
        (w * 0.14) as i32,
        (h * 0.1) as i32,
        skin,
    );
    let mouth_y = cy + h * 0.55;
    let mouth = if stubble {
        Rgba([60, 20, 20, 255])
    } else {
        Rgba([120, 30, 30, 255])
    };
    draw_line_segment_mut(
        img,
        (cx - w * 0.3, mouth_y),
        (cx + w * 0.3, mouth_y + rng.random_range(-2.0..2.0)),
        mouth,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_varied() {
        assert_eq!(draw(1, 64, 7), draw(1, 64, 7));
        assert_ne!(draw(1, 64, 7), draw(1, 64, 8));
        for class in 0..4 {
            let img = draw(class, 96, 1);
            assert_eq!(img.dimensions(), (96, 96));
        }
    }

    #[test]
    fn encodes_decodable_images() {
        let img = draw(2, 64, 3);
        for fmt in [ImageFormat::Png, ImageFormat::Jpeg] {
            let bytes = encode(&img, fmt);
            assert_eq!(model::decode(&bytes).unwrap().dimensions(), (64, 64));
        }
    }
}
