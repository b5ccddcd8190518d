//! MNIST-style preprocessing of arbitrary image files, for `ood predict`.
//!
//! A photo or a drawing of a digit does not look like an MNIST image: it is any size, usually
//! dark ink on light paper, and the digit sits anywhere in it. This module prepares such an image
//! the way MNIST itself was prepared (LeCun et al.: "normalized to fit in a 20x20 pixel box while
//! preserving their aspect ratio [...] centered in a 28x28 image by computing the center of mass
//! of the pixels"), so that the classifier sees the kind of input it was trained on:
//!
//! 1. **Polarity.** MNIST is white ink on black. The background level is the median of the
//!    border pixels; the ink is whatever differs from it by at least [`MIN_CONTRAST`] grey
//!    levels. If that ink is mostly darker than the background (dark ink on light paper) the
//!    image is inverted. This also works on grey paper, where a fixed "brighter than mid-grey"
//!    rule would not.
//! 2. **Levels.** The background is mapped to 0 and the strongest ink to 1, with a noise floor:
//!    anything within [`INK_THRESHOLD`] of the contrast above the background (paper texture,
//!    JPEG ringing) becomes 0. An image with no ink ([`PrepareError::NoInk`]) is an error, not
//!    an all-black input: classifying a blank page would give a meaningless answer.
//! 3. **Crop** to the bounding box of the ink (pixels above the noise floor).
//! 4. **Scale** the crop, keeping its aspect ratio, so that its larger side is [`FIT_SIDE`] (20)
//!    pixels. Shrinking averages areas (each output pixel is the mean of the source area it
//!    covers, so strokes are averaged rather than skipped: no aliasing); enlarging a small crop
//!    is bilinear. Then the brightest pixel is brought back to 1, as in MNIST, where nearly every
//!    digit peaks at 255, so thin strokes on a large canvas do not come out faint.
//! 5. **Centre** it in a 28x28 black canvas by shifting it a whole number of pixels so that the
//!    centre of mass of the intensities is at (14, 14) in pixel-index coordinates (the MNIST
//!    convention: the centre of mass of MNIST training digits lies in [13.5, 14.5] on both axes),
//!    clamped so the digit stays inside the canvas.
//! 6. **Quantize** to bytes and divide by 255, like the MNIST IDX bytes the model was trained on.
//!
//! Images are read with the `image` crate (PNG, JPEG, PGM/PPM/PBM/PAM), any size and colour
//! type; colour is reduced to Rec. 709 luma, transparency is composited over white (so a dark
//! stroke on a transparent background reads as ink on paper) and the JPEG/PNG orientation tag is
//! applied.
//!
//! Known limits: uneven lighting (shadows across a photo) is not corrected, and specks far from
//! the digit enlarge the bounding box; crop such photos first.

mod decode;
#[cfg(test)]
mod test_images;

use std::path::Path;

use image::imageops::FilterType;
use image::{ImageBuffer, Luma};

use crate::DataError;

pub use decode::{decode_image, load_image, DecodeError, LumaImage};

/// Side of the output image (28, as MNIST).
pub const MNIST_SIDE: usize = 28;
/// Side of the box the digit is scaled to fit (20, as MNIST).
pub const FIT_SIDE: usize = 20;
/// Least difference, in grey levels out of 255, between a pixel and the background for the
/// pixel to count as ink when deciding the polarity and whether there is any ink at all.
pub const MIN_CONTRAST: u8 = 32;
/// Noise floor as a fraction of the contrast (background to strongest ink): pixels less than
/// this far above the background are background.
pub const INK_THRESHOLD: f32 = 0.1;

/// Why an image cannot be prepared (it has no file name; [`load_mnist_style`] adds it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    #[error("the image has no pixels ({width}x{height})")]
    NoPixels { width: usize, height: usize },
    #[error("{len} pixels for a {width}x{height} image")]
    SizeMismatch {
        width: usize,
        height: usize,
        len: usize,
    },
    #[error(
        "no ink found: every pixel is within {contrast} grey levels of the background \
         ({background}/255), and a digit needs at least {MIN_CONTRAST}; is the image blank?"
    )]
    NoInk { background: u8, contrast: u8 },
}

/// Prepares a grayscale image as MNIST digits were prepared (see the module documentation):
/// white ink on black, cropped to the ink, scaled so its larger side is 20 pixels, centred by
/// centre of mass in 28x28. Returns 28*28 values in [0, 1], row-major, multiples of 1/255.
pub fn prepare_mnist_style(image: &LumaImage) -> Result<Vec<f32>, PrepareError> {
    let (width, height) = (image.width, image.height);
    if width == 0 || height == 0 {
        return Err(PrepareError::NoPixels { width, height });
    }
    if image.pixels.len() != width * height {
        return Err(PrepareError::SizeMismatch {
            width,
            height,
            len: image.pixels.len(),
        });
    }
    let pixels = &image.pixels;

    // 1. Polarity: the background is the median of the border; the ink is what differs from it.
    let background = border_median(image);
    let histogram = histogram(pixels);
    let (mut darker, mut brighter, mut contrast) = (0u64, 0u64, 0u8);
    for (value, &count) in histogram.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let diff = value as i32 - i32::from(background);
        contrast = contrast.max(diff.unsigned_abs() as u8);
        if diff <= -i32::from(MIN_CONTRAST) {
            darker += count * diff.unsigned_abs() as u64;
        } else if diff >= i32::from(MIN_CONTRAST) {
            brighter += count * diff as u64;
        }
    }
    if darker == 0 && brighter == 0 {
        return Err(PrepareError::NoInk {
            background,
            contrast,
        });
    }
    let invert = darker > brighter;
    let ink = |p: u8| if invert { 255 - p } else { p };

    // 2. Levels: background to 0, strongest ink to 1, below the noise floor to 0.
    let bg = f32::from(ink(background));
    let peak = f32::from(
        (0..=255u8)
            .filter(|&v| histogram[v as usize] > 0)
            .map(ink)
            .max()
            .unwrap_or(0),
    );
    let floor = bg + INK_THRESHOLD * (peak - bg);
    // Per grey level, once: whether it is ink, and its level. (Images are large and there are
    // only 256 grey levels; the server prepares every request.)
    let is_ink: [bool; 256] = std::array::from_fn(|p| f32::from(ink(p as u8)) > floor);
    let level: [f32; 256] = std::array::from_fn(|p| {
        ((f32::from(ink(p as u8)) - floor) / (peak - floor)).clamp(0.0, 1.0)
    });

    // 3. Crop to the bounding box of the ink.
    let (mut top, mut bottom, mut left, mut right) = (height, 0, width, 0);
    for (y, row) in pixels.chunks_exact(width).enumerate() {
        let Some(first) = row.iter().position(|&p| is_ink[p as usize]) else {
            continue;
        };
        let last = row
            .iter()
            .rposition(|&p| is_ink[p as usize])
            .unwrap_or(first);
        top = top.min(y);
        bottom = y;
        left = left.min(first);
        right = right.max(last);
    }
    // peak > floor, so the brightest pixel is in the box.
    let (crop_w, crop_h) = (right - left + 1, bottom - top + 1);
    let crop: Vec<f32> = (top..=bottom)
        .flat_map(|y| pixels[y * width + left..=y * width + right].iter())
        .map(|&p| level[p as usize])
        .collect();

    // 4. Scale the larger side to 20 (area averaging down, bilinear up), then peak to 1.
    let scale = FIT_SIDE as f64 / crop_w.max(crop_h) as f64;
    let fit_w = ((crop_w as f64 * scale).round() as usize).clamp(1, FIT_SIDE);
    let fit_h = ((crop_h as f64 * scale).round() as usize).clamp(1, FIT_SIDE);
    let fitted = if crop_w.max(crop_h) > FIT_SIDE {
        resample_area(&crop, crop_w, crop_h, fit_w, fit_h)
    } else {
        let crop = ImageBuffer::<Luma<f32>, Vec<f32>>::from_raw(crop_w as u32, crop_h as u32, crop)
            .expect("the crop holds crop_w * crop_h values");
        image::imageops::resize(&crop, fit_w as u32, fit_h as u32, FilterType::Triangle).into_raw()
    };
    let max = fitted.iter().copied().fold(0.0f32, f32::max);
    let gain = if max > 0.0 { 1.0 / max } else { 1.0 };
    let fitted: Vec<f32> = fitted
        .iter()
        .map(|&v| (v * gain * 255.0).round().clamp(0.0, 255.0) / 255.0)
        .collect();

    // 5. Centre of mass to (14, 14), by a whole-pixel shift that keeps the digit in the canvas.
    let (mut mass, mut sum_x, mut sum_y) = (0.0f64, 0.0f64, 0.0f64);
    for (y, row) in fitted.chunks_exact(fit_w).enumerate() {
        for (x, &v) in row.iter().enumerate() {
            mass += f64::from(v);
            sum_x += x as f64 * f64::from(v);
            sum_y += y as f64 * f64::from(v);
        }
    }
    let (com_x, com_y) = if mass > 0.0 {
        (sum_x / mass, sum_y / mass)
    } else {
        ((fit_w - 1) as f64 / 2.0, (fit_h - 1) as f64 / 2.0)
    };
    let centre = (MNIST_SIDE / 2) as f64;
    let offset = |com: f64, side: usize| {
        ((centre - com).round() as i64).clamp(0, (MNIST_SIDE - side) as i64) as usize
    };
    let (off_x, off_y) = (offset(com_x, fit_w), offset(com_y, fit_h));

    let mut canvas = vec![0.0f32; MNIST_SIDE * MNIST_SIDE];
    for (y, row) in fitted.chunks_exact(fit_w).enumerate() {
        let start = (off_y + y) * MNIST_SIDE + off_x;
        canvas[start..start + fit_w].copy_from_slice(row);
    }
    Ok(canvas)
}

/// How many pixels have each grey level. Four partial counts, so that runs of one level (the
/// background) do not wait on one counter's previous increment.
fn histogram(pixels: &[u8]) -> [u64; 256] {
    let mut parts = [[0u64; 256]; 4];
    let chunks = pixels.chunks_exact(4);
    for &p in chunks.remainder() {
        parts[0][p as usize] += 1;
    }
    for c in chunks {
        for (part, &p) in parts.iter_mut().zip(c) {
            part[p as usize] += 1;
        }
    }
    std::array::from_fn(|v| parts.iter().map(|part| part[v]).sum())
}

/// Area-averaging resample: each output pixel is the mean of the source area it covers.
fn resample_area(src: &[f32], width: usize, height: usize, new_w: usize, new_h: usize) -> Vec<f32> {
    let weights_x = area_weights(width, new_w);
    let weights_y = area_weights(height, new_h);
    let mut rows = vec![0.0f32; new_w * height];
    for y in 0..height {
        for (i, ws) in weights_x.iter().enumerate() {
            rows[y * new_w + i] = ws.iter().map(|&(j, w)| src[y * width + j] * w).sum();
        }
    }
    let mut out = vec![0.0f32; new_w * new_h];
    for (i, ws) in weights_y.iter().enumerate() {
        for x in 0..new_w {
            out[i * new_w + x] = ws.iter().map(|&(j, w)| rows[j * new_w + x] * w).sum();
        }
    }
    out
}

/// For each of `n_out` output pixels, the source pixels it covers and their share of it.
fn area_weights(n_in: usize, n_out: usize) -> Vec<Vec<(usize, f32)>> {
    let ratio = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|i| {
            let (start, end) = (i as f64 * ratio, (i + 1) as f64 * ratio);
            let first = start.floor() as usize;
            let last = (end.ceil() as usize).min(n_in);
            (first..last)
                .map(|j| {
                    let overlap = end.min(j as f64 + 1.0) - start.max(j as f64);
                    (j, (overlap / ratio) as f32)
                })
                .filter(|&(_, w)| w > 0.0)
                .collect()
        })
        .collect()
}

/// Median of the pixels on the outer ring of the image.
fn border_median(image: &LumaImage) -> u8 {
    let (w, h) = (image.width, image.height);
    let at = |x: usize, y: usize| image.pixels[y * w + x];
    let mut border: Vec<u8> = Vec::with_capacity(2 * (w + h));
    for x in 0..w {
        border.push(at(x, 0));
        if h > 1 {
            border.push(at(x, h - 1));
        }
    }
    for y in 1..h.saturating_sub(1) {
        border.push(at(0, y));
        if w > 1 {
            border.push(at(w - 1, y));
        }
    }
    let middle = border.len() / 2;
    *border.select_nth_unstable(middle).1
}

/// [`load_image`] then [`prepare_mnist_style`]: 28*28 values in [0, 1], white ink on black,
/// ready for the classifier. An image without ink is a [`DataError::Corrupt`] that says so.
pub fn load_mnist_style(path: &Path) -> Result<Vec<f32>, DataError> {
    let image = load_image(path)?;
    prepare_mnist_style(&image).map_err(|e| DataError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::test_images::{dark_on_white, ellipse, gray, nine, strokes};
    use super::*;
    use image::{GrayImage, Rgb, RgbImage, Rgba, RgbaImage};

    const N: usize = MNIST_SIDE;

    #[test]
    fn histogram_counts_every_pixel_once() {
        // Seven pixels: one whole chunk of four and a remainder of three.
        let h = histogram(&[0, 0, 7, 0, 255, 7, 0]);
        assert_eq!((h[0], h[7], h[255]), (4, 2, 1));
        assert_eq!(h.iter().sum::<u64>(), 7);
        assert_eq!(histogram(&[]).iter().sum::<u64>(), 0);
    }

    fn ink_bbox(out: &[f32], threshold: f32) -> Option<(usize, usize, usize, usize)> {
        let mut b: Option<(usize, usize, usize, usize)> = None;
        for (i, &v) in out.iter().enumerate() {
            if v > threshold {
                let (y, x) = (i / N, i % N);
                b = Some(match b {
                    None => (y, y, x, x),
                    Some((t, bo, l, r)) => (t.min(y), bo.max(y), l.min(x), r.max(x)),
                });
            }
        }
        b
    }

    fn centre_of_mass(out: &[f32]) -> (f32, f32) {
        let mass: f32 = out.iter().sum();
        let x = out
            .iter()
            .enumerate()
            .map(|(i, v)| (i % N) as f32 * v)
            .sum::<f32>()
            / mass;
        let y = out
            .iter()
            .enumerate()
            .map(|(i, v)| (i / N) as f32 * v)
            .sum::<f32>()
            / mass;
        (x, y)
    }

    /// What every prepared image must satisfy.
    fn assert_mnist_like(out: &[f32]) {
        assert_eq!(out.len(), N * N);
        assert!(
            out.iter().all(|v| (0.0..=1.0).contains(v)),
            "values outside [0, 1]"
        );
        let max = out.iter().copied().fold(0.0f32, f32::max);
        assert!(max > 0.95, "the ink is not white: max {max}");
        let border_max = (0..N)
            .flat_map(|i| [out[i], out[(N - 1) * N + i], out[i * N], out[i * N + N - 1]])
            .fold(0.0f32, f32::max);
        assert!(border_max < 0.05, "ink on the border: {border_max}");
        let (t, b, l, r) = ink_bbox(out, 0.0).expect("some ink");
        let side = (b - t + 1).max(r - l + 1);
        assert!(
            (19..=21).contains(&side),
            "larger side of the ink box is {side}, not 20"
        );
        let (cx, cy) = centre_of_mass(out);
        assert!(
            (cx - 14.0).abs() <= 1.0 && (cy - 14.0).abs() <= 1.0,
            "centre of mass ({cx}, {cy}) is not at (14, 14)"
        );
    }

    fn mean_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
    }

    fn reference_digit() -> Vec<f32> {
        prepare_mnist_style(&LumaImage::new(100, 60, dark_on_white(100, 60))).unwrap()
    }

    #[test]
    fn png_dark_stroke_on_white() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nine.png");
        gray(100, 60, dark_on_white(100, 60)).save(&path).unwrap();
        let loaded = load_image(&path).unwrap();
        assert_eq!((loaded.width, loaded.height), (100, 60));
        assert_eq!(loaded.pixels, dark_on_white(100, 60));
        let out = load_mnist_style(&path).unwrap();
        assert_mnist_like(&out);
        // The 9 is 30 wide and 49 tall with the stroke: 20 tall, about 12 wide.
        let (t, b, l, r) = ink_bbox(&out, 0.0).unwrap();
        assert_eq!(b - t + 1, 20);
        assert!(
            (11..=14).contains(&(r - l + 1)),
            "aspect ratio lost: {} wide",
            r - l + 1
        );
        // The ring's hole is black, and the ring around it is white.
        let hole_y = t + 5;
        let row = &out[hole_y * N + l..=hole_y * N + r];
        let first = row.iter().position(|&v| v > 0.5).unwrap();
        let last = row.iter().rposition(|&v| v > 0.5).unwrap();
        assert!(last - first >= 6, "no ring: {row:?}");
        assert!(
            row[first + 3..=last - 3].iter().all(|&v| v < 0.1),
            "no hole: {row:?}"
        );
    }

    #[test]
    fn top_heavy_digit_stays_inside_the_canvas() {
        // A heavy block on a thin stem (a 7 with a fat head): its centre of mass is so high that
        // centring it would push its foot out of the canvas, so the shift is clamped and the
        // centre of mass stays above 14. (Real MNIST 7s touch the bottom row too.)
        let (w, h) = (60, 60);
        let pixels: Vec<u8> = (0..w * h)
            .map(|i| {
                let (y, x) = (i / w, i % w);
                let head = (5..21).contains(&y) && (12..48).contains(&x);
                let stem = (21..56).contains(&y) && (40..42).contains(&x);
                if head || stem {
                    0
                } else {
                    255
                }
            })
            .collect();
        let out = prepare_mnist_style(&LumaImage::new(w, h, pixels)).unwrap();
        let (t, b, _, _) = ink_bbox(&out, 0.0).unwrap();
        assert_eq!((t, b), (8, 27), "not clamped to the bottom of the canvas");
        let (cx, cy) = centre_of_mass(&out);
        assert!((cx - 14.0).abs() <= 0.5, "centre of mass x {cx}");
        assert!(cy < 13.5, "centre of mass y {cy}: no clamping happened");
    }

    #[test]
    fn jpeg_matches_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nine.jpg");
        // RGB, so the colour-to-luma path is used too.
        let rgb = RgbImage::from_fn(100, 60, |x, y| {
            let v = dark_on_white(100, 60)[(y * 100 + x) as usize];
            Rgb([v, v, v])
        });
        rgb.save(&path).unwrap();
        assert_eq!(&std::fs::read(&path).unwrap()[..3], &[0xff, 0xd8, 0xff]);
        let out = load_mnist_style(&path).unwrap();
        assert_mnist_like(&out);
        let diff = mean_abs_diff(&out, &reference_digit());
        assert!(
            diff < 0.03,
            "JPEG differs from the PNG by {diff} on average"
        );
    }

    #[test]
    fn pgm_matches_png() {
        use image::codecs::pnm::{PnmEncoder, PnmSubtype, SampleEncoding};
        use image::ImageEncoder;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nine.pgm");
        let file = std::fs::File::create(&path).unwrap();
        PnmEncoder::new(file)
            .with_subtype(PnmSubtype::Graymap(SampleEncoding::Binary))
            .write_image(
                &dark_on_white(100, 60),
                100,
                60,
                image::ExtendedColorType::L8,
            )
            .unwrap();
        assert_eq!(&std::fs::read(&path).unwrap()[..2], b"P5");
        let out = load_mnist_style(&path).unwrap();
        assert_mnist_like(&out);
        assert_eq!(out, reference_digit());
        // Plain (ASCII) PGM with a 16-bit maxval.
        let ascii = dir.path().join("tiny.pgm");
        std::fs::write(
            &ascii,
            "P2\n# comment\n3 2\n65535\n0 65535 32768\n65535 0 0\n",
        )
        .unwrap();
        let tiny = load_image(&ascii).unwrap();
        assert_eq!((tiny.width, tiny.height), (3, 2));
        assert_eq!(tiny.pixels, vec![0, 255, 128, 255, 0, 0]);
    }

    #[test]
    fn transparent_background_is_white() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nine-rgba.png");
        // Opaque black ink (alpha = coverage) on fully transparent *black*: ignoring alpha would
        // make the whole image black and leave no ink.
        let coverage = strokes(100, 60, &nine(), 6.0);
        let rgba = RgbaImage::from_fn(100, 60, |x, y| {
            let c = coverage[(y * 100 + x) as usize];
            Rgba([0, 0, 0, (255.0 * c).round() as u8])
        });
        rgba.save(&path).unwrap();
        let loaded = load_image(&path).unwrap();
        assert_eq!(loaded.pixels[0], 255, "transparent corner is not white");
        let out = load_mnist_style(&path).unwrap();
        assert_mnist_like(&out);
        let diff = mean_abs_diff(&out, &reference_digit());
        assert!(
            diff < 0.01,
            "RGBA differs from the gray PNG by {diff} on average"
        );
    }

    #[test]
    fn inverted_input_gives_the_same_output() {
        let dark = dark_on_white(100, 60);
        let light: Vec<u8> = dark.iter().map(|&p| 255 - p).collect();
        let a = prepare_mnist_style(&LumaImage::new(100, 60, dark)).unwrap();
        let b = prepare_mnist_style(&LumaImage::new(100, 60, light)).unwrap();
        assert_mnist_like(&b);
        let max_diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(max_diff <= 1.0 / 255.0 + 1e-6, "max difference {max_diff}");
    }

    #[test]
    fn grey_paper_and_grey_ink() {
        // Grey ink (90) on grey paper (150): below mid-grey, yet dark ink, so it is inverted,
        // and the levels are stretched to white on black.
        let pixels: Vec<u8> = strokes(100, 60, &nine(), 6.0)
            .iter()
            .map(|c| (150.0 - 60.0 * c).round() as u8)
            .collect();
        let out = prepare_mnist_style(&LumaImage::new(100, 60, pixels)).unwrap();
        assert_mnist_like(&out);
        let diff = mean_abs_diff(&out, &reference_digit());
        assert!(
            diff < 0.02,
            "grey-on-grey differs from black-on-white by {diff}"
        );
    }

    /// A 28x28 MNIST-like "0": an anti-aliased ring, white on black, as MNIST bytes / 255, with
    /// an ink box 20 tall (rows 4..=23) and its centre of mass near (14, 13.75).
    fn mnist_blob() -> Vec<f32> {
        let ring = ellipse(14.0, 13.75, 5.0, 8.25, 24);
        strokes(N, N, &ring, 2.5)
            .iter()
            .map(|v| (v * 255.0).round() / 255.0)
            .collect()
    }

    fn to_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().map(|v| (v * 255.0).round() as u8).collect()
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn mnist_digit_passes_through_nearly_unchanged() {
        let blob = mnist_blob();
        assert_eq!(
            ink_bbox(&blob, 0.0),
            Some((4, 23, 8, 20)),
            "the test blob moved"
        );
        let out = prepare_mnist_style(&LumaImage::new(N, N, to_bytes(&blob))).unwrap();
        assert_mnist_like(&out);
        // Same place and size; only the faintest edge pixels change, under the noise floor.
        assert_eq!(ink_bbox(&out, 0.1), ink_bbox(&blob, 0.1));
        let (diff, max_diff) = (mean_abs_diff(&out, &blob), max_abs_diff(&out, &blob));
        assert!(diff < 0.01, "mean difference {diff}");
        assert!(max_diff < 0.15, "max difference {max_diff}");

        // Shifted, it is re-centred to the same output.
        let mut shifted = vec![0u8; N * N];
        for y in 0..N - 3 {
            for x in 0..N - 4 {
                shifted[(y + 3) * N + x + 4] = (blob[y * N + x] * 255.0).round() as u8;
            }
        }
        let out_shifted = prepare_mnist_style(&LumaImage::new(N, N, shifted)).unwrap();
        assert_eq!(out_shifted, out);

        // Enlarged 4.3x (as a high-resolution scan of it) and shrunk back: close to the original.
        let src = GrayImage::from_raw(N as u32, N as u32, to_bytes(&blob)).unwrap();
        let big = image::imageops::resize(&src, 120, 120, FilterType::Triangle);
        let out_big = prepare_mnist_style(&LumaImage::new(120, 120, big.into_raw())).unwrap();
        assert_mnist_like(&out_big);
        let diff = mean_abs_diff(&out_big, &blob);
        assert!(diff < 0.04, "enlarged copy: mean difference {diff}");
    }

    #[test]
    fn wide_and_tiny_inputs_fit_the_box() {
        // A wide bar: its long side becomes 20, its short side stays thin.
        let wide = strokes(300, 80, &[[30.0, 40.0, 270.0, 40.0]], 12.0);
        let bytes: Vec<u8> = wide.iter().map(|c| (255.0 * c) as u8).collect();
        let out = prepare_mnist_style(&LumaImage::new(300, 80, bytes)).unwrap();
        assert_mnist_like(&out);
        let (t, b, l, r) = ink_bbox(&out, 0.0).unwrap();
        assert_eq!(r - l + 1, 20);
        let tall = b - t + 1;
        assert!(tall <= 3, "a 252x12 bar became {tall} tall");
        // A 3x4 speck is scaled up to 20 tall.
        let mut speck = vec![0u8; 10 * 10];
        for y in 3..7 {
            for x in 4..7 {
                speck[y * 10 + x] = 255;
            }
        }
        let out = prepare_mnist_style(&LumaImage::new(10, 10, speck)).unwrap();
        assert_mnist_like(&out);
    }

    #[test]
    fn downscaling_does_not_alias() {
        // 200x200 of vertical stripes, period 3 (1 on, 2 off), scaled down 10x. Averaging the
        // covered area gives a nearly flat field (3 or 4 stripes of each 10 columns); point
        // sampling would pick whole columns on or off stripes and leave black columns.
        let (w, h) = (240, 240);
        let mut pixels = vec![0u8; w * h];
        for y in 20..220 {
            for x in 20..220 {
                if (x - 20) % 3 == 0 {
                    pixels[y * w + x] = 255;
                }
            }
        }
        let out = prepare_mnist_style(&LumaImage::new(w, h, pixels)).unwrap();
        assert_mnist_like(&out);
        let (t, b, l, r) = ink_bbox(&out, 0.0).unwrap();
        assert_eq!((b - t + 1, r - l + 1), (20, 20));
        let inner: Vec<f32> = (t..=b)
            .flat_map(|y| out[y * N + l..=y * N + r].iter().copied())
            .collect();
        let min = inner.iter().copied().fold(1.0f32, f32::min);
        assert!(
            min > 0.6,
            "aliasing: a pixel inside the striped box is {min}"
        );
    }

    #[test]
    fn missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.png");
        let err = load_mnist_style(&path).unwrap_err();
        assert!(
            matches!(&err, DataError::Io { path: p, .. } if p == &path),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("nope.png") && msg.contains("No such file"),
            "{msg}"
        );
    }

    #[test]
    fn text_file_named_png_is_not_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.png");
        std::fs::write(&path, "hello, I am not a picture\n").unwrap();
        let err = load_mnist_style(&path).unwrap_err();
        assert!(matches!(err, DataError::Corrupt { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("x.png") && msg.contains("not an image"),
            "{msg}"
        );
    }

    #[test]
    fn truncated_png_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.png");
        gray(100, 60, dark_on_white(100, 60)).save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = load_mnist_style(&path).unwrap_err();
        assert!(matches!(err, DataError::Corrupt { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("cut.png") && msg.contains("cannot decode the PNG"),
            "{msg}"
        );
    }

    #[test]
    fn blank_image_has_no_ink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("white.png");
        gray(100, 60, vec![255; 100 * 60]).save(&path).unwrap();
        let err = load_mnist_style(&path).unwrap_err();
        assert!(matches!(err, DataError::Corrupt { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("white.png") && msg.contains("no ink found"),
            "{msg}"
        );
        // Faint marks below the contrast threshold are not ink either.
        let mut faint = vec![255u8; 100 * 60];
        faint[30 * 100 + 50] = 255 - (MIN_CONTRAST - 1);
        let err = prepare_mnist_style(&LumaImage::new(100, 60, faint)).unwrap_err();
        assert_eq!(
            err,
            PrepareError::NoInk {
                background: 255,
                contrast: MIN_CONTRAST - 1
            }
        );
    }

    #[test]
    fn bad_dimensions_are_errors() {
        let image = LumaImage {
            width: 3,
            height: 3,
            pixels: vec![0; 8],
        };
        assert!(matches!(
            prepare_mnist_style(&image),
            Err(PrepareError::SizeMismatch { len: 8, .. })
        ));
        let image = LumaImage {
            width: 0,
            height: 3,
            pixels: vec![],
        };
        assert!(matches!(
            prepare_mnist_style(&image),
            Err(PrepareError::NoPixels { .. })
        ));
    }
}
