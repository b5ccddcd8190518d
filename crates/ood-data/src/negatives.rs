//! Synthetic negatives for outlier exposure: scribbles, drawn with a pen of MNIST's width in
//! MNIST's 20x20 ink box, that are surely not digits.
//!
//! A scribble is one stroke through 6-9 points drawn uniformly in the box, each at least 40% of
//! the box's side from the one before, so it crosses the box several times in sharp turns: a tangle no digit looks like. The PyTorch lever study
//! (`../shared/notes/ood-levers.md`) found that negatives made *from* digits (joined halves,
//! occluded digits) are often still readable digits, and that training against them taught
//! the classifier to doubt real digits; these are built from nothing a digit is made of.
//!
//! Images are `side * side` slices of `f32` in [0, 1], white ink on black, row-major.

use rand::Rng;

/// The fewest and most points of a scribble's stroke.
const POINTS: (usize, usize) = (6, 9);
/// The pen's radius in pixels at side 28, drawn uniformly from this range: MNIST's strokes are
/// 2-4 pixels wide.
const PEN_RADIUS: (f32, f32) = (0.9, 1.6);
/// The shortest segment, as a fraction of the ink box's side.
const MIN_SEGMENT: f32 = 0.4;
/// MNIST digits fit a 20x20 box in the 28x28 image.
const INK_BOX: f32 = 20.0 / 28.0;

/// One scribble of `side * side` pixels.
pub fn scribble(side: usize, rng: &mut impl Rng) -> Vec<f32> {
    let scale = side as f32 / 28.0;
    let (lo, hi) = (
        side as f32 * (1.0 - INK_BOX) / 2.0,
        side as f32 * (1.0 + INK_BOX) / 2.0,
    );
    let count = rng.random_range(POINTS.0..=POINTS.1);
    let min_step = MIN_SEGMENT * (hi - lo);
    let mut points: Vec<(f32, f32)> = Vec::with_capacity(count);
    while points.len() < count {
        let p = (rng.random_range(lo..hi), rng.random_range(lo..hi));
        // Short segments would bunch into a blot; long ones make the tangle.
        let far_enough = points
            .last()
            .is_none_or(|q| (p.0 - q.0).hypot(p.1 - q.1) >= min_step);
        if far_enough {
            points.push(p);
        }
    }
    let radius = rng.random_range(PEN_RADIUS.0..PEN_RADIUS.1) * scale;
    let mut image = vec![0f32; side * side];
    for pair in points.windows(2) {
        draw_segment(&mut image, side, pair[0], pair[1], radius);
    }
    image
}

/// `n` scribbles side by side, `n * side * side` pixels.
pub fn scribbles(n: usize, side: usize, rng: &mut impl Rng) -> Vec<f32> {
    (0..n).flat_map(|_| scribble(side, rng)).collect()
}

/// Ink within `radius` of the segment from `a` to `b` (pixel centres at `+0.5`), with a
/// one-pixel anti-aliased edge; overlapping strokes keep the brighter ink.
fn draw_segment(image: &mut [f32], side: usize, a: (f32, f32), b: (f32, f32), radius: f32) {
    let reach = radius + 1.0;
    let clamp = |v: f32| (v.max(0.0) as usize).min(side);
    let (x0, x1) = (
        clamp(a.0.min(b.0) - reach),
        clamp(a.0.max(b.0) + reach + 1.0),
    );
    let (y0, y1) = (
        clamp(a.1.min(b.1) - reach),
        clamp(a.1.max(b.1) + reach + 1.0),
    );
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let length2 = (dx * dx + dy * dy).max(f32::MIN_POSITIVE);
    for y in y0..y1 {
        for x in x0..x1 {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let t = (((px - a.0) * dx + (py - a.1) * dy) / length2).clamp(0.0, 1.0);
            let (cx, cy) = (a.0 + t * dx - px, a.1 + t * dy - py);
            let ink = (radius + 0.5 - (cx * cx + cy * cy).sqrt()).clamp(0.0, 1.0);
            let pixel = &mut image[y * side + x];
            *pixel = pixel.max(ink);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::stream_rng;

    #[test]
    fn a_segment_inks_the_pixels_within_its_radius_and_no_others() {
        let mut image = vec![0f32; 8 * 8];
        // A horizontal segment along the centres of row 3, radius 1: row 3 is inked in full
        // between the ends, rows 2 and 4 (1.0 away) at 1.5 - 1.0, rows 1 and 5 not at all.
        draw_segment(&mut image, 8, (2.5, 3.5), (5.5, 3.5), 1.0);
        for x in 2..=5 {
            assert_eq!(image[3 * 8 + x], 1.0, "x {x}");
            assert_eq!(image[2 * 8 + x], 0.5, "x {x}");
            assert_eq!(image[4 * 8 + x], 0.5, "x {x}");
            assert_eq!(image[8 + x], 0.0);
            assert_eq!(image[5 * 8 + x], 0.0);
        }
        assert_eq!(image[3 * 8 + 1], 0.5); // beyond the end, 1.0 from it
        assert_eq!(image[3 * 8], 0.0);
        // Half a pixel beyond the pen's edge: half the ink.
        let mut image = vec![0f32; 8 * 8];
        draw_segment(&mut image, 8, (3.5, 3.5), (3.5, 3.5), 1.5);
        assert_eq!(image[3 * 8 + 5], 0.0); // 2.0 away: 1.5 + 0.5 - 2.0
        assert_eq!(image[3 * 8 + 3], 1.0);
        let diagonal = image[2 * 8 + 2]; // sqrt(2) away
        assert!((diagonal - (2.0 - 2f32.sqrt())).abs() < 1e-6, "{diagonal}");
    }

    #[test]
    fn scribbles_are_seeded_and_keep_to_the_ink_box() {
        let a = scribbles(16, 28, &mut stream_rng(7, 0, 0));
        assert_eq!(a, scribbles(16, 28, &mut stream_rng(7, 0, 0)));
        assert_ne!(a, scribbles(16, 28, &mut stream_rng(8, 0, 0)));
        for image in a.chunks(28 * 28) {
            assert!(image.iter().all(|&v| (0.0..=1.0).contains(&v)));
            // The box is 4..24 and the pen reaches at most 1.6 + 0.5 beyond it.
            for (i, &v) in image.iter().enumerate() {
                let (x, y) = (i % 28, i / 28);
                if v > 0.0 {
                    assert!((1..27).contains(&x) && (1..27).contains(&y), "({x}, {y})");
                }
            }
            // A tangle of 5-8 segments across the box: far more ink than a "1" (about 60
            // pixels' worth in MNIST), but not a filled box.
            let ink: f32 = image.iter().sum();
            assert!((60.0..300.0).contains(&ink), "{ink}");
        }
    }
}
