//! How a digit gets made: the pen. Training-time restyling (elastic distortion, hard
//! binarised edges, blur, thicker and thinner strokes, and a redraw along the drawing page's
//! path) and the fixed styles of the drawn-digit test set.
//!
//! MNIST digits were written with one kind of pen, scanned and anti-aliased. A digit drawn on
//! the page of `ood serve` is a hard-edged stroke of fixed width on a canvas, cropped, scaled
//! and centred by [`prepare_mnist_style`]. A model that has seen only MNIST's pen reads the
//! other pen as unusual: its shallow features react to stroke texture, and the acceptance rule
//! refuses valid digits. Restyling the training images teaches the network that the pen is not
//! the digit; the drawn-digit set ([`DrawnStyle`]) measures whether it learnt it.
//!
//! Images are `side * side` slices of `f32` in [0, 1], white ink on black, row-major.

use crate::augment::sample_bilinear;
use crate::prepare::{prepare_mnist_style, LumaImage};
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// How often each restyling is applied to a training image, and how strongly. Each
/// probability is drawn independently per image, in this order: elastic distortion, then one
/// of the page's redraw, binarisation (maybe blurred after), thickening or thinning.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PenConfig {
    /// Probability of an elastic distortion (Simard et al. 2003).
    pub elastic: f32,
    /// Largest displacement of the elastic field, in pixels.
    pub elastic_max_shift: f32,
    /// Smoothness of the elastic field: the std of the Gaussian that smooths it, in pixels.
    pub elastic_sigma: f32,
    /// Probability of a redraw along the page's path: enlarged, binarised, the pen widened or
    /// narrowed, then prepared as `ood serve` prepares a drawing ([`redraw`]).
    pub canvas: f32,
    /// The range the redraw's binarisation level is drawn from: higher levels keep only the
    /// stroke's core, a finer pen. Configurations written before this field drew from 0.3-0.6.
    #[serde(default = "earlier_canvas_levels")]
    pub canvas_levels: (f32, f32),
    /// The range the redraw's pen radius is drawn from, in canvas pixels (a quarter of a digit
    /// pixel each; negative narrows the stroke). The page's pen is 1/12 of the pad: a digit
    /// drawn to fill the pad comes out with MNIST's 2-3 pixel strokes, one drawn at half the
    /// size with strokes twice as wide, hence up to 8 (two digit pixels a side).
    /// Configurations written before this field drew from -2..=6.
    #[serde(default = "earlier_canvas_pen_radius")]
    pub canvas_pen_radius: (i32, i32),
    /// Probability of binarising at a level drawn from `binarize_levels` (hard edges).
    pub binarize: f32,
    /// The range the binarisation level is drawn from.
    pub binarize_levels: (f32, f32),
    /// Probability that a binarised image is then softened by a 3x3 blur.
    pub blur_after_binarize: f32,
    /// Probability of a thicker stroke (2x2 dilation).
    pub thicken: f32,
    /// Probability of a thinner stroke (2x2 erosion), when not thickened.
    pub thin: f32,
}

fn earlier_canvas_pen_radius() -> (i32, i32) {
    (-2, 6)
}

fn earlier_canvas_levels() -> (f32, f32) {
    (0.3, 0.6)
}

impl Default for PenConfig {
    /// Binarisation, blur, thickening and thinning as measured in the lever study
    /// (`../shared/notes/ood-levers.md`: canvas refusals 12.4% → 2.6% on one seed), plus a
    /// mild elastic distortion and the page's redraw for a third of the images, strokes up to
    /// two digit pixels a side wider (a first version redrew a fifth, up to 1.5 pixels wider,
    /// and still refused a fifth of the thick-pen digits: docs/results.md).
    fn default() -> Self {
        Self {
            elastic: 0.3,
            elastic_max_shift: 2.0,
            elastic_sigma: 4.0,
            canvas: 0.35,
            canvas_levels: (0.3, 0.6),
            canvas_pen_radius: (-2, 8),
            binarize: 0.35,
            binarize_levels: (0.25, 0.6),
            blur_after_binarize: 0.7,
            thicken: 0.2,
            thin: 0.15,
        }
    }
}

/// One effect of [`PenConfig`], to train with some effects alone (`--pen-styles canvas,width`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PenEffect {
    /// Elastic distortion.
    Elastic,
    /// The page's redraw.
    Canvas,
    /// Binarisation, maybe blurred after.
    Binarize,
    /// Thicker and thinner strokes (2x2 dilation and erosion).
    Width,
}

impl PenEffect {
    /// Every effect, by its name.
    pub const ALL: [PenEffect; 4] = [
        PenEffect::Elastic,
        PenEffect::Canvas,
        PenEffect::Binarize,
        PenEffect::Width,
    ];

    /// The effect's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            PenEffect::Elastic => "elastic",
            PenEffect::Canvas => "canvas",
            PenEffect::Binarize => "binarize",
            PenEffect::Width => "width",
        }
    }
}

impl std::str::FromStr for PenEffect {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|e| e.name()).collect();
                format!("unknown pen effect {s:?}: use {}", names.join(", "))
            })
    }
}

impl PenConfig {
    /// This configuration with only `effects` left on (every effect when `effects` is empty).
    pub fn only(mut self, effects: &[PenEffect]) -> Self {
        if effects.is_empty() {
            return self;
        }
        let on = |e: PenEffect| effects.contains(&e);
        if !on(PenEffect::Elastic) {
            self.elastic = 0.0;
        }
        if !on(PenEffect::Canvas) {
            self.canvas = 0.0;
        }
        if !on(PenEffect::Binarize) {
            self.binarize = 0.0;
        }
        if !on(PenEffect::Width) {
            self.thicken = 0.0;
            self.thin = 0.0;
        }
        self
    }
}

/// Restyles every image of a batch in place, with independent draws per image.
///
/// The random choices are drawn image after image from `rng`, exactly as [`restyle`] draws
/// them, and only then applied, in parallel: the result is the same as restyling the images
/// one by one, on any number of threads, so seeded runs stay reproducible.
pub fn restyle_batch(pixels: &mut [f32], side: usize, config: &PenConfig, rng: &mut impl Rng) {
    let choices: Vec<Restyling> = (0..pixels.len() / (side * side))
        .map(|_| Restyling::draw(side, config, rng))
        .collect();
    pixels
        .par_chunks_exact_mut(side * side)
        .zip(choices)
        .for_each(|(image, choice)| choice.apply(image, side, config));
}

/// Restyles one image in place (see [`PenConfig`]).
pub fn restyle(image: &mut [f32], side: usize, config: &PenConfig, rng: &mut impl Rng) {
    assert_eq!(image.len(), side * side, "an image of side {side}");
    Restyling::draw(side, config, rng).apply(image, side, config);
}

/// Every random choice that [`restyle`] makes for one image. Drawing them apart from applying
/// them lets [`restyle_batch`] draw in order from one stream and apply in parallel.
struct Restyling {
    /// The elastic distortion's raw fields (x, then y), before smoothing.
    elastic: Option<(Vec<f32>, Vec<f32>)>,
    /// The page's redraw; when set, it replaces every later effect.
    canvas: Option<Canvas>,
    /// The binarisation level, when binarised.
    binarize_level: Option<f32>,
    blur: bool,
    thicken: bool,
    thin: bool,
}

impl Restyling {
    /// Draws the choices, in the order the restyling has always drawn them: the six coins,
    /// then the elastic fields, the redraw's level and pen, or the binarisation level.
    fn draw(side: usize, config: &PenConfig, rng: &mut impl Rng) -> Self {
        let mut chance = |p: f32| p > 0.0 && rng.random::<f32>() < p;
        let elastic_now = chance(config.elastic);
        let canvas_now = chance(config.canvas);
        let binarize_now = chance(config.binarize);
        let blur = chance(config.blur_after_binarize);
        let thicken = chance(config.thicken);
        let thin = chance(config.thin);
        let elastic = elastic_now.then(|| (raw_field(side, rng), raw_field(side, rng)));
        let canvas = canvas_now.then(|| {
            let (lo, hi) = config.canvas_levels;
            let level = rng.random_range(lo.min(hi)..=hi.max(lo));
            let (lo, hi) = config.canvas_pen_radius;
            let pen_radius = rng.random_range(lo.min(hi)..=hi.max(lo));
            Canvas {
                scale: CANVAS_SCALE,
                level,
                pen_radius,
            }
        });
        let binarize_level = (binarize_now && canvas.is_none()).then(|| {
            let (lo, hi) = config.binarize_levels;
            if hi > lo {
                rng.random_range(lo..=hi)
            } else {
                lo
            }
        });
        Self {
            elastic,
            canvas,
            binarize_level,
            blur,
            thicken,
            thin,
        }
    }

    /// Applies the choices to one image, in place.
    fn apply(self, image: &mut [f32], side: usize, config: &PenConfig) {
        if let Some((dx, dy)) = self.elastic {
            let out = elastic_along(
                image,
                side,
                config.elastic_max_shift,
                config.elastic_sigma,
                dx,
                dy,
            );
            image.copy_from_slice(&out);
        }
        if let Some(pen) = self.canvas {
            if let Some(out) = redraw(image, side, &pen) {
                image.copy_from_slice(&out);
            }
            return;
        }
        let out = match self.binarize_level {
            Some(level) => {
                let hard = binarize(image, level);
                if self.blur {
                    blur3(&hard, side)
                } else {
                    hard
                }
            }
            None => image.to_vec(),
        };
        let out = if self.thicken {
            dilate2(&out, side)
        } else if self.thin {
            // A stroke thinner than a pixel vanishes: keep the image as it was then.
            let thinner = erode2(&out, side);
            if thinner.iter().any(|&v| v > 0.5) {
                thinner
            } else {
                out
            }
        } else {
            out
        };
        image.copy_from_slice(&out);
    }
}

/// 1 where the pixel reaches `level`, else 0: the hard edges of a canvas stroke.
pub fn binarize(image: &[f32], level: f32) -> Vec<f32> {
    image
        .iter()
        .map(|&v| if v >= level { 1.0 } else { 0.0 })
        .collect()
}

/// The mean of each pixel's 3x3 neighbourhood (outside the image counts as black).
pub fn blur3(image: &[f32], side: usize) -> Vec<f32> {
    window_reduce(image, side, &[-1, 0, 1], 0.0, |acc, v| acc + v)
        .into_iter()
        .map(|s| s / 9.0)
        .collect()
}

/// The largest value of each pixel's 2x2 neighbourhood (itself, right, below, below-right):
/// strokes a pixel wider.
pub fn dilate2(image: &[f32], side: usize) -> Vec<f32> {
    window_reduce(image, side, &[0, 1], 0.0, f32::max)
}

/// The smallest value of each pixel's 2x2 neighbourhood: strokes a pixel narrower (outside the
/// image counts as black).
pub fn erode2(image: &[f32], side: usize) -> Vec<f32> {
    window_reduce(image, side, &[0, 1], 0.0, f32::min)
}

/// Folds each pixel's square window `offsets x offsets` with `f`, from the first value
/// (black outside the image).
fn window_reduce(
    image: &[f32],
    side: usize,
    offsets: &[isize],
    outside: f32,
    f: impl Fn(f32, f32) -> f32,
) -> Vec<f32> {
    assert_eq!(image.len(), side * side, "an image of side {side}");
    let at = |r: isize, c: isize| -> f32 {
        if r < 0 || c < 0 || r >= side as isize || c >= side as isize {
            outside
        } else {
            image[r as usize * side + c as usize]
        }
    };
    let mut out = vec![0.0; side * side];
    for r in 0..side as isize {
        for c in 0..side as isize {
            let mut acc: Option<f32> = None;
            for &dr in offsets {
                for &dc in offsets {
                    let v = at(r + dr, c + dc);
                    acc = Some(acc.map_or(v, |a| f(a, v)));
                }
            }
            out[r as usize * side + c as usize] = acc.unwrap_or(outside);
        }
    }
    out
}

/// An elastic distortion (Simard et al. 2003): a random displacement per pixel, smoothed by a
/// Gaussian of std `sigma` and scaled so that the largest displacement along either axis is
/// `max_shift` pixels; the image is resampled bilinearly along it.
pub fn elastic(
    image: &[f32],
    side: usize,
    max_shift: f32,
    sigma: f32,
    rng: &mut impl Rng,
) -> Vec<f32> {
    elastic_along(
        image,
        side,
        max_shift,
        sigma,
        raw_field(side, rng),
        raw_field(side, rng),
    )
}

/// [`elastic`] along the raw fields `raw_dx` and `raw_dy` (uniform in [-1, 1] per pixel, as
/// [`raw_field`] draws them), which it smooths and scales.
fn elastic_along(
    image: &[f32],
    side: usize,
    max_shift: f32,
    sigma: f32,
    raw_dx: Vec<f32>,
    raw_dy: Vec<f32>,
) -> Vec<f32> {
    assert_eq!(image.len(), side * side, "an image of side {side}");
    let mut dx = gaussian_smooth(&raw_dx, side, sigma);
    let mut dy = gaussian_smooth(&raw_dy, side, sigma);
    let largest = dx
        .iter()
        .chain(&dy)
        .fold(0.0f32, |m, &v| m.max(v.abs()))
        .max(f32::EPSILON);
    let gain = max_shift / largest;
    dx.iter_mut().chain(dy.iter_mut()).for_each(|v| *v *= gain);
    let mut out = vec![0.0; side * side];
    for r in 0..side {
        for c in 0..side {
            let i = r * side + c;
            out[i] = sample_bilinear(image, side, r as f32 + dy[i], c as f32 + dx[i]);
        }
    }
    out
}

/// Uniform noise in [-1, 1] per pixel: an elastic field before it is smoothed.
fn raw_field(side: usize, rng: &mut impl Rng) -> Vec<f32> {
    (0..side * side)
        .map(|_| rng.random_range(-1.0f32..=1.0))
        .collect()
}

/// A separable Gaussian blur of std `sigma` (the kernel cut at 3 sigma, edges clamped).
fn gaussian_smooth(values: &[f32], side: usize, sigma: f32) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil().max(1.0) as isize;
    let kernel: Vec<f32> = (-radius..=radius)
        .map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let norm: f32 = kernel.iter().sum();
    let clamp = |i: isize| i.clamp(0, side as isize - 1) as usize;
    let mut rows = vec![0.0; side * side];
    for r in 0..side {
        for c in 0..side {
            rows[r * side + c] = kernel
                .iter()
                .zip(-radius..)
                .map(|(k, d)| k * values[r * side + clamp(c as isize + d)])
                .sum::<f32>()
                / norm;
        }
    }
    let mut out = vec![0.0; side * side];
    for r in 0..side {
        for c in 0..side {
            out[r * side + c] = kernel
                .iter()
                .zip(-radius..)
                .map(|(k, d)| k * rows[clamp(r as isize + d) * side + c])
                .sum::<f32>()
                / norm;
        }
    }
    out
}

/// How many canvas pixels a digit pixel becomes in [`redraw`]: a 28-pixel digit is redrawn
/// on a 112-pixel canvas, where the pen's width can change by a quarter of a digit pixel.
pub const CANVAS_SCALE: usize = 4;

/// A redraw of a digit on a canvas, as the page makes one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Canvas {
    /// Canvas pixels per digit pixel.
    pub scale: usize,
    /// The ink level, in [0, 1], above which the enlarged digit is ink.
    pub level: f32,
    /// Canvas pixels the pen is widened by on each side of the stroke (narrowed when
    /// negative).
    pub pen_radius: i32,
}

/// The digit as the page would send it: enlarged `scale` times (bilinear), binarised at
/// `level` into hard-edged ink, the stroke widened or narrowed by `pen_radius` canvas pixels,
/// then prepared exactly as `ood serve` prepares a drawing ([`prepare_mnist_style`]: cropped,
/// scaled into 20x20, centred by mass, quantised). `None` when no ink is left, and for images
/// that are not MNIST's 28x28 (the preparation makes 28x28).
pub fn redraw(image: &[f32], side: usize, canvas: &Canvas) -> Option<Vec<f32>> {
    prepared(&canvas_ink(image, side, canvas)?)
}

/// The pen's ink on the canvas ([`canvas_ink`]) prepared as `ood serve` prepares a drawing.
fn prepared((ink, big): &(Vec<bool>, usize)) -> Option<Vec<f32>> {
    let pixels = ink.iter().map(|&b| if b { 255 } else { 0 }).collect();
    prepare_mnist_style(&LumaImage::new(*big, *big, pixels)).ok()
}

/// The pen's ink on the enlarged canvas, before the page's preparation, and the canvas's
/// side: `None` as for [`redraw`].
fn canvas_ink(image: &[f32], side: usize, canvas: &Canvas) -> Option<(Vec<bool>, usize)> {
    assert_eq!(image.len(), side * side, "an image of side {side}");
    if side != crate::prepare::MNIST_SIDE {
        return None;
    }
    let scale = canvas.scale.max(1);
    let big = side * scale;
    let mut ink = vec![false; big * big];
    for r in 0..big {
        // The centre of canvas pixel r, in digit-pixel coordinates.
        let y = (r as f32 + 0.5) / scale as f32 - 0.5;
        for c in 0..big {
            let x = (c as f32 + 0.5) / scale as f32 - 0.5;
            ink[r * big + c] = sample_bilinear(image, side, y, x) >= canvas.level;
        }
    }
    let ink = match canvas.pen_radius {
        0 => ink,
        r if r > 0 => {
            let to_ink = chamfer_distance(&ink, big, true);
            to_ink.iter().map(|&d| d <= 3 * r as u32).collect()
        }
        r => {
            let to_paper = chamfer_distance(&ink, big, false);
            to_paper.iter().map(|&d| d > 3 * (-r) as u32).collect()
        }
    };
    ink.iter().any(|&b| b).then_some((ink, big))
}

/// The 8-connected pieces of ink in a `side * side` mask.
fn pieces(mask: &[bool], side: usize) -> usize {
    let mut seen = vec![false; mask.len()];
    let mut count = 0;
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        count += 1;
        seen[start] = true;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (r, c) = (i / side, i % side);
            for rr in r.saturating_sub(1)..=(r + 1).min(side - 1) {
                for cc in c.saturating_sub(1)..=(c + 1).min(side - 1) {
                    let j = rr * side + cc;
                    if mask[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
    }
    count
}

/// Whether `style`'s pen breaks the digit's strokes: leaves its ink in more pieces on the
/// canvas than the canvas pen does. (A pen that leaves nothing breaks nothing: the drawn set
/// draws that digit with the canvas pen instead.) A fine pen binarised high and narrowed
/// drops the faint stretches of a scanned stroke, as no pen on the page does (it lifts
/// mid-stroke), and some digits come out unreadable; `ood evaluate` reports the drawn digits
/// with their strokes kept whole apart from those, so that the two causes of a refusal, an
/// unfamiliar pen and a broken digit, can be told apart.
pub fn breaks_strokes(image: &[f32], side: usize, style: DrawnStyle) -> bool {
    let ink = |s: DrawnStyle| canvas_ink(image, side, &s.canvas());
    broken(&ink(style), &ink(DrawnStyle::Canvas))
}

/// Whether a pen's ink (`styled`) lies in more pieces than the canvas pen's (`plain`) on the
/// same canvas ([`breaks_strokes`]).
fn broken(styled: &Option<(Vec<bool>, usize)>, plain: &Option<(Vec<bool>, usize)>) -> bool {
    match (styled, plain) {
        (Some((drawn, big)), Some((canvas, _))) => pieces(drawn, *big) > pieces(canvas, *big),
        _ => false,
    }
}

/// For each pixel, the chamfer (3-4) distance to the nearest pixel whose value is `target`,
/// in thirds of a pixel; outside the image is paper (never `target` when `target` is ink, always
/// when it is paper, so that strokes touching the edge are narrowed there too).
fn chamfer_distance(mask: &[bool], side: usize, target: bool) -> Vec<u32> {
    const FAR: u32 = u32::MAX / 2;
    let outside = if target { FAR } else { 0 };
    let mut d: Vec<u32> = mask
        .iter()
        .map(|&m| if m == target { 0 } else { FAR })
        .collect();
    let get = |d: &[u32], r: isize, c: isize| -> u32 {
        if r < 0 || c < 0 || r >= side as isize || c >= side as isize {
            outside
        } else {
            d[r as usize * side + c as usize]
        }
    };
    for r in 0..side as isize {
        for c in 0..side as isize {
            let i = r as usize * side + c as usize;
            let best = [
                get(&d, r, c - 1) + 3,
                get(&d, r - 1, c) + 3,
                get(&d, r - 1, c - 1) + 4,
                get(&d, r - 1, c + 1) + 4,
            ]
            .into_iter()
            .fold(d[i], u32::min);
            d[i] = best;
        }
    }
    for r in (0..side as isize).rev() {
        for c in (0..side as isize).rev() {
            let i = r as usize * side + c as usize;
            let best = [
                get(&d, r, c + 1) + 3,
                get(&d, r + 1, c) + 3,
                get(&d, r + 1, c + 1) + 4,
                get(&d, r + 1, c - 1) + 4,
            ]
            .into_iter()
            .fold(d[i], u32::min);
            d[i] = best;
        }
    }
    d
}

/// The pens of the drawn-digit test set: MNIST test digits redrawn as the page would send
/// them ([`redraw`]), with fixed settings so that the set is the same on every machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrawnStyle {
    /// Hard edges at the mid level, the stroke half a digit pixel wider on each side: the
    /// page's round pen on a digit drawn to fill the pad.
    Canvas,
    /// Hard edges at a high level, half a pixel narrower on each side: a fine pen.
    Thin,
    /// Hard edges at a low level, a pixel and a half wider on each side: the page's pen on a
    /// digit drawn small.
    Thick,
}

impl DrawnStyle {
    /// Every style, in the order the drawn set cycles through them.
    pub const ALL: [DrawnStyle; 3] = [DrawnStyle::Canvas, DrawnStyle::Thin, DrawnStyle::Thick];

    /// The style's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            DrawnStyle::Canvas => "canvas",
            DrawnStyle::Thin => "thin",
            DrawnStyle::Thick => "thick",
        }
    }

    /// The redraw this style makes.
    pub fn canvas(self) -> Canvas {
        let (level, pen_radius) = match self {
            DrawnStyle::Canvas => (0.5, 2),
            DrawnStyle::Thin => (0.6, -2),
            DrawnStyle::Thick => (0.4, 6),
        };
        Canvas {
            scale: CANVAS_SCALE,
            level,
            pen_radius,
        }
    }

    /// The style of image `i` of a drawn set: the styles in turn.
    pub fn of_index(i: usize) -> Self {
        Self::ALL[i % Self::ALL.len()]
    }
}

/// The drawn-digit set made from `pixels` (images of side `side`): image `i` redrawn in
/// [`DrawnStyle::of_index`]`(i)`. An image left with no ink by its pen (a faint digit under
/// the thin pen) is redrawn with the canvas pen instead, so the set keeps every digit.
pub fn drawn_digits(pixels: &[f32], side: usize) -> Vec<f32> {
    draw_set(pixels, side, false).images
}

/// The drawn-digit set ([`drawn_digits`]) with, for each image, whether its pen broke its
/// strokes ([`breaks_strokes`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DrawnSet {
    /// The redrawn images, `side * side` each, in the order of the digits they were made from.
    pub images: Vec<f32>,
    /// For each image, whether its pen left the ink in more pieces than the canvas pen does.
    /// Empty when the set was made without the split ([`drawn_digits`]).
    pub broken: Vec<bool>,
}

/// [`drawn_digits`] and [`breaks_strokes`] at once: each canvas is inked once for both.
pub fn drawn_set(pixels: &[f32], side: usize) -> DrawnSet {
    draw_set(pixels, side, true)
}

/// The one loop behind [`drawn_digits`] and [`drawn_set`]. The canvas pen's ink of a digit
/// drawn in another style is made only when it is needed: as the fallback of a pen that left
/// nothing, or with `split`, to count the pieces against (inking a second canvas and counting
/// pieces for two thirds of the set, which the images alone need not pay).
fn draw_set(pixels: &[f32], side: usize, split: bool) -> DrawnSet {
    let count = pixels.len() / (side * side);
    let mut set = DrawnSet {
        images: Vec::with_capacity(pixels.len()),
        broken: Vec::with_capacity(if split { count } else { 0 }),
    };
    for (i, image) in pixels.chunks_exact(side * side).enumerate() {
        let style = DrawnStyle::of_index(i);
        let styled = canvas_ink(image, side, &style.canvas());
        let plain = std::cell::OnceCell::new();
        let canvas_pen =
            || plain.get_or_init(|| canvas_ink(image, side, &DrawnStyle::Canvas.canvas()));
        let drawn = styled.as_ref().and_then(prepared).or_else(|| match style {
            // The canvas pen's own ink is `styled`: nothing else to fall back on.
            DrawnStyle::Canvas => None,
            _ => canvas_pen().as_ref().and_then(prepared),
        });
        set.images.extend(drawn.unwrap_or_else(|| image.to_vec()));
        if split {
            set.broken
                .push(style != DrawnStyle::Canvas && broken(&styled, canvas_pen()));
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// A 28x28 image with a vertical bar of ink `width` pixels wide in rows 4..24.
    fn bar(width: usize) -> Vec<f32> {
        let mut v = vec![0.0; 28 * 28];
        for r in 4..24 {
            for c in 13..13 + width {
                v[r * 28 + c] = 1.0;
            }
        }
        v
    }

    fn ink(image: &[f32]) -> f32 {
        image.iter().sum()
    }

    #[test]
    fn binarize_blur_dilate_erode_by_hand() {
        let img = vec![0.2, 0.5, 0.7, 0.0];
        assert_eq!(binarize(&img, 0.5), vec![0.0, 1.0, 1.0, 0.0]);
        // One ink pixel in the middle of 3x3: the blur spreads it as 1/9 everywhere.
        let mut dot = vec![0.0; 9];
        dot[4] = 1.0;
        assert!(blur3(&dot, 3).iter().all(|&v| (v - 1.0 / 9.0).abs() < 1e-6));
        // The 2x2 dilation grows it up and left; the erosion of a single pixel removes it.
        let grown = dilate2(&dot, 3);
        assert_eq!(grown, vec![1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(erode2(&dot, 3), vec![0.0; 9]);
        assert_eq!(erode2(&grown, 3)[0], 1.0);
    }

    #[test]
    fn pens_change_the_stroke_width() {
        let b = bar(3);
        let thick = dilate2(&b, 28);
        let thin = erode2(&b, 28);
        assert!(ink(&thick) > ink(&b) && ink(&thin) < ink(&b));
        // The redraw keeps the digit prepared as MNIST (a 20-pixel box, quantised) and a wider
        // pen gives more ink.
        let wide = redraw(&b, 28, &DrawnStyle::Thick.canvas()).unwrap();
        let narrow = redraw(&b, 28, &DrawnStyle::Thin.canvas()).unwrap();
        assert_eq!(wide.len(), 28 * 28);
        assert!(
            ink(&wide) > ink(&narrow),
            "{} vs {}",
            ink(&wide),
            ink(&narrow)
        );
        for v in wide.iter().chain(&narrow) {
            assert!((v * 255.0 - (v * 255.0).round()).abs() < 1e-3);
        }
        let rows_with_ink = |im: &[f32]| {
            (0..28)
                .filter(|r| im[r * 28..(r + 1) * 28].iter().any(|&v| v > 0.0))
                .count()
        };
        assert_eq!(rows_with_ink(&narrow), 20, "the bar is scaled to 20 rows");
    }

    #[test]
    fn a_pen_that_erases_everything_gives_none() {
        let faint = vec![0.3; 28 * 28];
        let canvas = Canvas {
            scale: 4,
            level: 0.5,
            pen_radius: 0,
        };
        assert_eq!(redraw(&faint, 28, &canvas), None);
        // The drawn set keeps the image then.
        assert_eq!(drawn_digits(&faint, 28), faint);
    }

    #[test]
    fn chamfer_distance_by_hand() {
        // One ink pixel in the corner of 3x3: orthogonal steps cost 3, diagonal 4.
        let mut mask = vec![false; 9];
        mask[0] = true;
        assert_eq!(
            chamfer_distance(&mask, 3, true),
            vec![0, 3, 6, 3, 4, 7, 6, 7, 8]
        );
        // Distance to paper: the image edge counts as paper, one step beyond the border.
        let full = vec![true; 9];
        let to_paper = chamfer_distance(&full, 3, false);
        assert_eq!((to_paper[3], to_paper[4]), (3, 6));
    }

    #[test]
    fn elastic_moves_at_most_max_shift_and_is_seeded() {
        let b = bar(3);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let warped = elastic(&b, 28, 2.0, 4.0, &mut rng);
        assert_ne!(warped, b);
        // Ink moves by at most 2 px: nothing appears more than 2 columns from the bar.
        for r in 0..28 {
            for c in (0..10).chain(18..28) {
                assert_eq!(warped[r * 28 + c], 0.0, "ink at ({r}, {c})");
            }
        }
        let mut again = rand::rngs::StdRng::seed_from_u64(7);
        assert_eq!(elastic(&b, 28, 2.0, 4.0, &mut again), warped);
        // No shift at all: the image is unchanged.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        assert_eq!(elastic(&b, 28, 0.0, 4.0, &mut rng), b);
    }

    #[test]
    fn a_batch_is_restyled_as_its_images_one_by_one() {
        // The batch draws every choice first and applies them in parallel; that must give
        // what restyling image after image from the same stream gives, on any thread count.
        let images: Vec<f32> = (0..24).flat_map(|w| bar(1 + w % 4)).collect();
        let config = PenConfig {
            elastic: 0.5,
            canvas: 0.4,
            binarize: 0.5,
            ..PenConfig::default()
        };
        let mut batch = images.clone();
        restyle_batch(
            &mut batch,
            28,
            &config,
            &mut rand::rngs::StdRng::seed_from_u64(5),
        );
        let mut one_by_one = images.clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for image in one_by_one.chunks_exact_mut(28 * 28) {
            restyle(image, 28, &config, &mut rng);
        }
        assert_eq!(batch, one_by_one);
        // Each effect fired somewhere, so the comparison covers them all.
        let changed = batch
            .chunks_exact(28 * 28)
            .zip(images.chunks_exact(28 * 28))
            .filter(|(a, b)| a != b)
            .count();
        assert!(changed >= 12, "only {changed} of 24 images restyled");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let mut on_three = images.clone();
        pool.install(|| {
            restyle_batch(
                &mut on_three,
                28,
                &config,
                &mut rand::rngs::StdRng::seed_from_u64(5),
            )
        });
        assert_eq!(on_three, batch);
    }

    #[test]
    fn restyle_is_seeded_and_stays_in_range() {
        let images: Vec<f32> = (0..8).flat_map(|w| bar(1 + w % 4)).collect();
        let config = PenConfig {
            elastic: 0.5,
            canvas: 0.3,
            ..PenConfig::default()
        };
        let run = |seed| {
            let mut v = images.clone();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            restyle_batch(&mut v, 28, &config, &mut rng);
            v
        };
        let a = run(3);
        assert_eq!(a, run(3));
        assert_ne!(a, images);
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
        // Every image keeps some ink.
        assert!(a.chunks_exact(28 * 28).all(|im| ink(im) > 0.0));
        // Nothing on: nothing changes.
        let off = PenConfig {
            elastic: 0.0,
            canvas: 0.0,
            binarize: 0.0,
            thicken: 0.0,
            thin: 0.0,
            ..PenConfig::default()
        };
        let mut v = images.clone();
        restyle_batch(&mut v, 28, &off, &mut rand::rngs::StdRng::seed_from_u64(1));
        assert_eq!(v, images);
    }

    #[test]
    fn a_pen_that_drops_a_faint_stretch_breaks_the_stroke() {
        // A bar 3 pixels wide, faint (0.55) over rows 12-14: the canvas pen (level 0.5) keeps
        // it whole, the thin pen (level 0.6) drops the faint stretch and leaves two pieces.
        let mut faint = bar(3);
        for r in 12..15 {
            for c in 13..16 {
                faint[r * 28 + c] = 0.55;
            }
        }
        let count = |image: &[f32], style: DrawnStyle| {
            let (ink, big) = canvas_ink(image, 28, &style.canvas()).unwrap();
            pieces(&ink, big)
        };
        assert_eq!(count(&faint, DrawnStyle::Canvas), 1);
        assert_eq!(count(&faint, DrawnStyle::Thin), 2);
        assert!(breaks_strokes(&faint, 28, DrawnStyle::Thin));
        assert!(!breaks_strokes(&faint, 28, DrawnStyle::Thick));
        assert!(!breaks_strokes(&faint, 28, DrawnStyle::Canvas));
        // A solid bar keeps one piece under every pen.
        assert!(DrawnStyle::ALL
            .iter()
            .all(|&s| !breaks_strokes(&bar(3), 28, s)));
        // A pen that leaves nothing breaks nothing: the set draws that digit with the canvas pen.
        assert!(!breaks_strokes(
            &vec![0.55; 28 * 28][..],
            28,
            DrawnStyle::Thin
        ));
        // Image i of the set is judged under its own pen.
        let set: Vec<f32> = [bar(3), faint.clone(), faint].concat();
        assert_eq!(drawn_set(&set, 28).broken, vec![false, true, false]);
    }

    #[test]
    fn only_keeps_the_named_effects() {
        let all = PenConfig::default();
        assert_eq!(all.only(&[]), all);
        let canvas = all.only(&[PenEffect::Canvas]);
        assert_eq!(canvas.canvas, all.canvas);
        assert_eq!(
            (canvas.elastic, canvas.binarize, canvas.thicken, canvas.thin),
            (0.0, 0.0, 0.0, 0.0)
        );
        let width = all.only(&[PenEffect::Width, PenEffect::Elastic]);
        assert_eq!((width.thicken, width.thin), (all.thicken, all.thin));
        assert_eq!((width.elastic, width.canvas), (all.elastic, 0.0));
        assert_eq!("canvas".parse::<PenEffect>(), Ok(PenEffect::Canvas));
        assert!("blur"
            .parse::<PenEffect>()
            .unwrap_err()
            .contains("elastic, canvas"));
    }

    #[test]
    fn drawn_set_agrees_with_each_pen_and_the_stroke_split() {
        // Every case the set meets: whole and broken strokes, a pen that leaves nothing (the
        // canvas pen draws it instead), and an image no pen inks (kept as it is).
        let mut faint = bar(3);
        for v in &mut faint[12 * 28..15 * 28] {
            if *v > 0.0 {
                *v = 0.55;
            }
        }
        let images = [
            bar(3),
            faint.clone(),
            faint.clone(),
            faint,
            vec![0.55; 28 * 28],
            vec![0.0; 28 * 28],
        ];
        let set = drawn_set(&images.concat(), 28);
        assert_eq!(set.images.len(), images.len() * 28 * 28);
        for (i, (image, drawn)) in images
            .iter()
            .zip(set.images.chunks_exact(28 * 28))
            .enumerate()
        {
            let style = DrawnStyle::of_index(i);
            let expected = redraw(image, 28, &style.canvas())
                .or_else(|| redraw(image, 28, &DrawnStyle::Canvas.canvas()))
                .unwrap_or_else(|| image.clone());
            assert_eq!(drawn, &expected[..], "image {i}");
            assert_eq!(set.broken[i], breaks_strokes(image, 28, style), "image {i}");
        }
        assert_eq!(set.broken, vec![false, true, false, false, false, false]);
        assert_eq!(&set.images[5 * 784..], &images[5][..]);
        // The images alone are the same images, made without the split.
        assert_eq!(drawn_digits(&images.concat(), 28), set.images);
    }

    #[test]
    fn drawn_set_cycles_the_styles() {
        let images: Vec<f32> = (0..3).flat_map(|_| bar(3)).collect();
        let drawn = drawn_digits(&images, 28);
        let per: Vec<&[f32]> = drawn.chunks_exact(28 * 28).collect();
        for (i, style) in DrawnStyle::ALL.iter().enumerate() {
            assert_eq!(DrawnStyle::of_index(i), *style);
            assert_eq!(per[i], redraw(&bar(3), 28, &style.canvas()).unwrap());
        }
    }
}
