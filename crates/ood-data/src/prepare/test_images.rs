//! Test images: anti-aliased strokes, a "9" drawn with them, as the tests of preparation and of
//! decoding use them.

use image::GrayImage;

/// Ink coverage in [0, 1] of thick anti-aliased line segments ((x0, y0), (x1, y1)).
pub(super) fn strokes(w: usize, h: usize, segments: &[[f32; 4]], thickness: f32) -> Vec<f32> {
    let mut out = vec![0.0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let (px, py) = (x as f32, y as f32);
            let dist = segments
                .iter()
                .map(|&[x0, y0, x1, y1]| {
                    let (dx, dy) = (x1 - x0, y1 - y0);
                    let t = (((px - x0) * dx + (py - y0) * dy) / (dx * dx + dy * dy).max(1e-6))
                        .clamp(0.0, 1.0);
                    ((px - x0 - t * dx).powi(2) + (py - y0 - t * dy).powi(2)).sqrt()
                })
                .fold(f32::INFINITY, f32::min);
            out[y * w + x] = (thickness / 2.0 + 0.5 - dist).clamp(0.0, 1.0);
        }
    }
    out
}

/// A "9" in the left part of a 100x60 canvas: a ring on a stem, off-centre, taller than
/// wide, with its centre of mass above the middle of its bounding box.
pub(super) fn nine() -> Vec<[f32; 4]> {
    let mut segments = ellipse(30.0, 20.0, 12.0, 11.0, 32);
    segments.push([42.0, 20.0, 37.0, 52.0]);
    segments
}

/// An ellipse centred at (`cx`, `cy`) with radii `rx` and `ry`, as `n` line segments.
pub(super) fn ellipse(cx: f32, cy: f32, rx: f32, ry: f32, n: usize) -> Vec<[f32; 4]> {
    (0..n)
        .map(|i| {
            let a0 = i as f32 / n as f32 * std::f32::consts::TAU;
            let a1 = (i + 1) as f32 / n as f32 * std::f32::consts::TAU;
            [
                cx + rx * a0.cos(),
                cy + ry * a0.sin(),
                cx + rx * a1.cos(),
                cy + ry * a1.sin(),
            ]
        })
        .collect()
}

/// Dark stroke on a white background, as bytes.
pub(super) fn dark_on_white(w: usize, h: usize) -> Vec<u8> {
    strokes(w, h, &nine(), 6.0)
        .iter()
        .map(|c| (255.0 * (1.0 - c)).round() as u8)
        .collect()
}

pub(super) fn gray(w: usize, h: usize, pixels: Vec<u8>) -> GrayImage {
    GrayImage::from_raw(w as u32, h as u32, pixels).unwrap()
}
