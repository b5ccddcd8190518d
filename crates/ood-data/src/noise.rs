//! Seeded noise for the denoiser and synthetic-OOD transforms for calibration.
//!
//! Images here are `rows * cols` slices of `f32` in [0, 1], white ink on black, row-major.

use rand::Rng;
use rand_distr::{Distribution, Normal};

/// The denoiser's corruption: Gaussian noise plus one occluding square (report, section 3.2).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NoiseConfig {
    /// Standard deviation of the additive Gaussian noise.
    pub sigma: f32,
    /// Side of the occluding square, drawn uniformly from `square_min..=square_max`.
    pub square_min: usize,
    pub square_max: usize,
    /// Pixel value inside the square (1.0 paints it white, like ink; 0.0 erases).
    pub fill: f32,
}

impl Default for NoiseConfig {
    fn default() -> Self {
        Self {
            sigma: 0.3,
            square_min: 10,
            square_max: 14,
            fill: 1.0,
        }
    }
}

/// Where an occluding square was put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Square {
    pub top: usize,
    pub left: usize,
    pub side: usize,
}

/// Paints a square of a side drawn from `min..=max` at a uniformly random position that keeps
/// it inside the image.
pub fn occlude(
    image: &mut [f32],
    rows: usize,
    cols: usize,
    (min, max): (usize, usize),
    fill: f32,
    rng: &mut impl Rng,
) -> Square {
    let side = rng.random_range(min..=max).min(rows).min(cols);
    let top = rng.random_range(0..=rows - side);
    let left = rng.random_range(0..=cols - side);
    for r in top..top + side {
        image[r * cols + left..r * cols + left + side].fill(fill);
    }
    Square { top, left, side }
}

/// Adds N(0, sigma^2) to every pixel and clamps to [0, 1].
pub fn add_gaussian(image: &mut [f32], sigma: f32, rng: &mut impl Rng) {
    if sigma > 0.0 {
        let normal = Normal::new(0.0f32, sigma).expect("sigma is finite and positive");
        for p in image.iter_mut() {
            *p += normal.sample(rng);
        }
    }
    clamp_unit(image);
}

fn clamp_unit(image: &mut [f32]) {
    for p in image.iter_mut() {
        *p = p.clamp(0.0, 1.0);
    }
}

/// The full corruption of one image: the square, then Gaussian noise over everything, then
/// clamping to [0, 1]. Returns the square.
pub fn corrupt(
    image: &mut [f32],
    rows: usize,
    cols: usize,
    config: &NoiseConfig,
    rng: &mut impl Rng,
) -> Square {
    let square = occlude(
        image,
        rows,
        cols,
        (config.square_min, config.square_max),
        config.fill,
        rng,
    );
    add_gaussian(image, config.sigma, rng);
    square
}

/// Corrupts every image of a batch (`pixels.len()` a multiple of `rows * cols`) in place.
pub fn corrupt_batch(
    pixels: &mut [f32],
    rows: usize,
    cols: usize,
    config: &NoiseConfig,
    rng: &mut impl Rng,
) {
    for image in pixels.chunks_exact_mut(rows * cols) {
        corrupt(image, rows, cols, config, rng);
    }
}

/// A transform that turns an in-distribution digit into something no known class looks like;
/// the calibration stage feeds the result (noised) through the decoder to make synthetic OOD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OodTransform {
    /// A quarter turn counter-clockwise. (180 degrees is left out on purpose: 8 and 0 survive it.)
    Rotate90,
    /// Three quarter turns counter-clockwise.
    Rotate270,
    /// An occluding square larger than the denoiser was trained on (side `min..=max`).
    HeavyOcclusion { min: usize, max: usize },
}

impl OodTransform {
    /// The report's three: rotation by 90 and by 270 degrees, and occlusion by a 16-20 square.
    pub const REPORT: [OodTransform; 3] = [
        OodTransform::Rotate90,
        OodTransform::Rotate270,
        OodTransform::HeavyOcclusion { min: 16, max: 20 },
    ];

    pub fn name(&self) -> String {
        match self {
            OodTransform::Rotate90 => "rotate90".into(),
            OodTransform::Rotate270 => "rotate270".into(),
            OodTransform::HeavyOcclusion { min, max } => format!("occlude{min}-{max}"),
        }
    }

    /// Applies the transform to one square image (`rows == cols` for rotations).
    pub fn apply(&self, image: &[f32], rows: usize, cols: usize, rng: &mut impl Rng) -> Vec<f32> {
        match *self {
            OodTransform::Rotate90 => rotate90(image, rows, cols),
            OodTransform::Rotate270 => rotate90(
                &rotate90(&rotate90(image, rows, cols), cols, rows),
                rows,
                cols,
            ),
            OodTransform::HeavyOcclusion { min, max } => {
                let mut out = image.to_vec();
                occlude(&mut out, rows, cols, (min, max), 1.0, rng);
                out
            }
        }
    }
}

/// Rotates a `rows x cols` image a quarter turn counter-clockwise into a `cols x rows` one.
pub fn rotate90(image: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; rows * cols];
    // Output pixel (r, c) of the cols x rows result comes from input (c, cols - 1 - r).
    for r in 0..cols {
        for c in 0..rows {
            out[r * rows + c] = image[c * cols + (cols - 1 - r)];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn rotation_moves_pixels_as_expected() {
        // 2x3 image: [[1,2,3],[4,5,6]] -> ccw -> [[3,6],[2,5],[1,4]]
        let img = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(rotate90(&img, 2, 3), vec![3.0, 6.0, 2.0, 5.0, 1.0, 4.0]);
        let sq: Vec<f32> = (0..9).map(|v| v as f32).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let r270 = OodTransform::Rotate270.apply(&sq, 3, 3, &mut rng);
        let back = OodTransform::Rotate90.apply(&r270, 3, 3, &mut rng);
        assert_eq!(back, sq);
        assert_ne!(r270, sq);
    }

    #[test]
    fn square_stays_inside_with_side_in_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut sides = std::collections::BTreeSet::new();
        for _ in 0..500 {
            let mut img = vec![0.0; 28 * 28];
            let cfg = NoiseConfig {
                sigma: 0.0,
                ..Default::default()
            };
            let sq = corrupt(&mut img, 28, 28, &cfg, &mut rng);
            assert!((10..=14).contains(&sq.side));
            assert!(sq.top + sq.side <= 28 && sq.left + sq.side <= 28);
            let painted = img.iter().filter(|&&p| p == 1.0).count();
            assert_eq!(painted, sq.side * sq.side);
            sides.insert(sq.side);
        }
        assert_eq!(sides.len(), 5, "every side 10..=14 occurs");
    }

    #[test]
    fn gaussian_noise_is_clamped_and_has_the_right_spread() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut img = vec![0.5; 100_000];
        add_gaussian(&mut img, 0.1, &mut rng);
        let mean = img.iter().sum::<f32>() / img.len() as f32;
        let var = img.iter().map(|p| (p - mean).powi(2)).sum::<f32>() / img.len() as f32;
        assert!((mean - 0.5).abs() < 0.005, "{mean}");
        assert!((var.sqrt() - 0.1).abs() < 0.005, "{}", var.sqrt());
        let mut img = vec![0.0; 1000];
        add_gaussian(&mut img, 1.0, &mut rng);
        assert!(img.iter().all(|p| (0.0..=1.0).contains(p)));
        assert!(img.iter().any(|&p| p > 0.0));
    }
}
