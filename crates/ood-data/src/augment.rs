//! Training-time augmentation: a small random affine warp per image (rotation, scale, shift),
//! the variations of real handwriting. A classifier that has seen them is surer of real
//! digits and less sure of what is not one, which is what the OOD decision feeds on.
//!
//! Images are `side * side` slices of `f32` in [0, 1], white ink on black, row-major.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// The ranges each image's warp is drawn from, uniformly.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    /// Largest rotation, in degrees, either way.
    pub max_rotation_deg: f32,
    /// Largest change of scale: the scale is drawn from `1 ± max_scale`.
    pub max_scale: f32,
    /// Largest shift, in pixels, along each axis.
    pub max_shift: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            max_rotation_deg: 10.0,
            max_scale: 0.1,
            max_shift: 2.0,
        }
    }
}

/// One draw of the warp: `out(p) = in(c + R⁻¹ (p - c - shift) / scale)` about the centre `c`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    pub rotation_rad: f32,
    pub scale: f32,
    pub shift: (f32, f32),
}

impl Affine {
    /// Draws a warp from the configured ranges.
    pub fn draw(config: &AugmentConfig, rng: &mut impl Rng) -> Self {
        let mut sym = |max: f32| {
            if max > 0.0 {
                rng.random_range(-max..=max)
            } else {
                0.0
            }
        };
        let rotation_rad = sym(config.max_rotation_deg).to_radians();
        let scale = 1.0 + sym(config.max_scale);
        let shift = (sym(config.max_shift), sym(config.max_shift));
        Self {
            rotation_rad,
            scale,
            shift,
        }
    }

    /// The warped image, bilinearly sampled; outside the source is black.
    pub fn apply(&self, image: &[f32], side: usize) -> Vec<f32> {
        assert_eq!(image.len(), side * side, "an image of side {side}");
        let c = (side as f32 - 1.0) / 2.0;
        let (sin, cos) = self.rotation_rad.sin_cos();
        let inv = 1.0 / self.scale;
        let mut out = vec![0.0f32; side * side];
        for (y, row) in out.chunks_exact_mut(side).enumerate() {
            for (x, px) in row.iter_mut().enumerate() {
                // Undo the shift, then the rotation and scale about the centre.
                let dx = x as f32 - c - self.shift.0;
                let dy = y as f32 - c - self.shift.1;
                let sx = c + inv * (cos * dx + sin * dy);
                let sy = c + inv * (-sin * dx + cos * dy);
                *px = sample_bilinear(image, side, sy, sx);
            }
        }
        out
    }
}

/// The value of a `side * side` image at (row `y`, column `x`), bilinearly interpolated and
/// clamped to [0, 1]; black outside the image. The warp here and the pens' elastic distortion
/// and redraw (`pen.rs`) all sample through it. Inlined because the redraw calls it for every
/// pixel of its 280x280 canvas: left to itself, the compiler stopped inlining it once the
/// restyling's choices were drawn apart from their application, and the redraw got a third
/// slower.
#[inline]
pub(crate) fn sample_bilinear(image: &[f32], side: usize, y: f32, x: f32) -> f32 {
    let at = |r: isize, c: isize| -> f32 {
        if r < 0 || c < 0 || r >= side as isize || c >= side as isize {
            0.0
        } else {
            image[r as usize * side + c as usize]
        }
    };
    let (y0, x0) = (y.floor(), x.floor());
    let (fy, fx) = (y - y0, x - x0);
    let (y0, x0) = (y0 as isize, x0 as isize);
    let v = (1.0 - fy) * ((1.0 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
        + fy * ((1.0 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1));
    v.clamp(0.0, 1.0)
}

/// Warps every image of a batch (`side * side` pixels each) in place, one draw per image.
pub fn augment_batch(pixels: &mut [f32], side: usize, config: &AugmentConfig, rng: &mut impl Rng) {
    for image in pixels.chunks_exact_mut(side * side) {
        let warped = Affine::draw(config, rng).apply(image, side);
        image.copy_from_slice(&warped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn dot(side: usize, r: usize, c: usize) -> Vec<f32> {
        let mut v = vec![0.0; side * side];
        v[r * side + c] = 1.0;
        v
    }

    #[test]
    fn identity_keeps_the_image() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let img: Vec<f32> = (0..49).map(|_| rng.random()).collect();
        let id = Affine {
            rotation_rad: 0.0,
            scale: 1.0,
            shift: (0.0, 0.0),
        };
        assert_eq!(id.apply(&img, 7), img);
    }

    #[test]
    fn shifts_move_pixels_and_fill_with_black() {
        let shift = Affine {
            rotation_rad: 0.0,
            scale: 1.0,
            shift: (2.0, -1.0),
        };
        // A dot at row 3, column 1 moves 2 right and 1 up.
        assert_eq!(shift.apply(&dot(7, 3, 1), 7), dot(7, 2, 3));
        // What leaves the frame is gone; what enters is black.
        assert!(shift.apply(&dot(7, 3, 6), 7).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn a_quarter_turn_by_hand() {
        // Side 5, centre (2, 2). out(p) = in(R⁻¹(p - c) + c): with the formula above and
        // angle 90°, out(x, y) samples in(x' = c + (y - c), y' = c - (x - c)). The dot at
        // (x=4, y=2) (row 2, column 4) appears where y - c = 2 and c - (x - c) = 2: x = 2, y = 4.
        let turn = Affine {
            rotation_rad: std::f32::consts::FRAC_PI_2,
            scale: 1.0,
            shift: (0.0, 0.0),
        };
        let out = turn.apply(&dot(5, 2, 4), 5);
        let max = out.iter().cloned().fold(0.0f32, f32::max);
        let at = out.iter().position(|&v| v == max).unwrap();
        assert_eq!((at / 5, at % 5), (4, 2), "{out:?}");
        assert!((max - 1.0).abs() < 1e-5);
    }

    #[test]
    fn scaling_up_spreads_ink_from_the_centre() {
        let grow = Affine {
            rotation_rad: 0.0,
            scale: 2.0,
            shift: (0.0, 0.0),
        };
        // A dot one pixel right of the centre of a 5x5 image lands two pixels right.
        let out = grow.apply(&dot(5, 2, 3), 5);
        assert_eq!(out[2 * 5 + 4], 1.0);
        // Column 3 samples half-way between the centre (black) and the dot.
        assert_eq!(out[2 * 5 + 3], 0.5);
        assert_eq!(out[2 * 5 + 2], 0.0);
    }

    #[test]
    fn draws_stay_in_range_and_are_seeded() {
        let cfg = AugmentConfig::default();
        let mut a = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let d = Affine::draw(&cfg, &mut a);
            assert_eq!(d, Affine::draw(&cfg, &mut b));
            assert!(d.rotation_rad.abs() <= 10f32.to_radians() + 1e-6);
            assert!((0.9..=1.1).contains(&d.scale));
            assert!(d.shift.0.abs() <= 2.0 && d.shift.1.abs() <= 2.0);
        }
        let mut pixels = vec![0.5f32; 2 * 784];
        augment_batch(&mut pixels, 28, &cfg, &mut a);
        assert!(pixels.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}
