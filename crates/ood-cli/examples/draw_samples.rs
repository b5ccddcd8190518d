//! Draws the sample images of `assets/samples/` from the pen strokes written out below, the way
//! the drawing page of `ood serve` draws them: a 280x280 canvas, black, with white round-capped,
//! round-joined strokes `280 / 12` pixels wide (the page's `ctx.lineWidth = pad.width / 12`),
//! anti-aliased over about one pixel. Saved as 8-bit greyscale PNGs, white ink on black, which
//! is what the page sends to `POST /v1/predict` and what `ood predict` prepares as MNIST was.
//!
//! ```text
//! cargo run --release -p ood-cli --example draw_samples            # writes assets/samples/*.png
//! cargo run --release -p ood-cli --example draw_samples -- OUT_DIR  # somewhere else
//! cargo run --release -p ood-cli -- predict assets/samples/*.png    # what the shipped model says
//! ```
//!
//! The strokes were written by hand to look like ordinary handwriting on the page (a point every
//! so often along the pen's path, in canvas pixels: x to the right, y down); they are not fitted
//! to the model. `crates/ood-cli/tests/samples.rs` checks that the committed PNGs are exactly
//! what this program draws, and what the shipped model answers for each.

use std::path::PathBuf;

/// Side of the page's canvas in pixels.
pub const CANVAS: usize = 280;
/// The page's pen width: `pad.width / 12`.
pub const PEN_WIDTH: f32 = CANVAS as f32 / 12.0;

/// One pen stroke: the pointer's path from pen-down to pen-up, in canvas pixels.
pub type Stroke = &'static [(f32, f32)];

/// A sample: its file name (without `.png`) and its strokes, in the order they are drawn.
pub struct Sample {
    pub name: &'static str,
    pub strokes: &'static [Stroke],
}

/// Every sample in `assets/samples/`.
pub const SAMPLES: &[Sample] = &[
    Sample {
        name: "digit-1",
        // One downward stroke, leaning a little to the left as it goes down.
        strokes: &[&[
            (152.0, 48.0),
            (150.0, 90.0),
            (147.0, 140.0),
            (144.0, 190.0),
            (142.0, 232.0),
        ]],
    },
    Sample {
        name: "digit-2",
        // The hook over the top, down the diagonal, then the base to the right: one stroke.
        strokes: &[&[
            (92.0, 98.0),
            (100.0, 78.0),
            (118.0, 62.0),
            (142.0, 56.0),
            (166.0, 61.0),
            (182.0, 77.0),
            (186.0, 100.0),
            (178.0, 124.0),
            (160.0, 150.0),
            (134.0, 178.0),
            (108.0, 204.0),
            (90.0, 222.0),
            (120.0, 221.0),
            (155.0, 220.0),
            (192.0, 222.0),
        ]],
    },
    Sample {
        name: "digit-3",
        // Two bumps to the right in one stroke, touching in at the middle.
        strokes: &[&[
            (94.0, 76.0),
            (114.0, 60.0),
            (142.0, 53.0),
            (168.0, 60.0),
            (182.0, 80.0),
            (178.0, 104.0),
            (160.0, 121.0),
            (132.0, 130.0),
            (162.0, 138.0),
            (184.0, 157.0),
            (190.0, 183.0),
            (178.0, 208.0),
            (152.0, 224.0),
            (120.0, 226.0),
            (94.0, 212.0),
        ]],
    },
    Sample {
        name: "digit-4",
        // Down-left and across in one stroke, then the upright in a second one, crossing it.
        strokes: &[
            &[
                (138.0, 52.0),
                (118.0, 95.0),
                (98.0, 138.0),
                (86.0, 164.0),
                (130.0, 164.0),
                (200.0, 162.0),
            ],
            &[
                (170.0, 92.0),
                (168.0, 140.0),
                (167.0, 190.0),
                (166.0, 236.0),
            ],
        ],
    },
    Sample {
        name: "digit-7",
        // The top bar to the right, then the long stroke down to the left, without lifting.
        strokes: &[&[
            (82.0, 64.0),
            (130.0, 62.0),
            (194.0, 60.0),
            (180.0, 92.0),
            (162.0, 134.0),
            (146.0, 178.0),
            (134.0, 230.0),
        ]],
    },
    Sample {
        name: "zero",
        // An upright oval, anticlockwise from the top, closing a little past where it began.
        strokes: &[&[
            (150.0, 52.0),
            (124.0, 58.0),
            (104.0, 80.0),
            (92.0, 112.0),
            (90.0, 148.0),
            (98.0, 184.0),
            (116.0, 214.0),
            (142.0, 228.0),
            (168.0, 220.0),
            (186.0, 194.0),
            (194.0, 158.0),
            (192.0, 120.0),
            (182.0, 86.0),
            (166.0, 62.0),
            (146.0, 54.0),
            (128.0, 62.0),
        ]],
    },
    Sample {
        name: "letter-A",
        // Up the left leg and down the right one, then the bar across.
        strokes: &[
            &[
                (78.0, 232.0),
                (108.0, 142.0),
                (140.0, 50.0),
                (172.0, 142.0),
                (202.0, 232.0),
            ],
            &[(104.0, 164.0), (140.0, 163.0), (176.0, 164.0)],
        ],
    },
    Sample {
        name: "letter-K",
        // The upright, then the two arms from the top right in to it and back out.
        strokes: &[
            &[(98.0, 48.0), (97.0, 140.0), (96.0, 232.0)],
            &[
                (192.0, 52.0),
                (146.0, 98.0),
                (100.0, 144.0),
                (148.0, 188.0),
                (196.0, 232.0),
            ],
        ],
    },
    Sample {
        name: "scribble",
        // A scrawl across the pad: long strokes back and forth through far-apart points.
        strokes: &[&[
            (60.0, 80.0),
            (220.0, 104.0),
            (70.0, 142.0),
            (206.0, 58.0),
            (150.0, 232.0),
            (92.0, 40.0),
            (232.0, 196.0),
            (52.0, 212.0),
            (184.0, 150.0),
        ]],
    },
];

/// Distance from `p` to the segment `a`-`b`.
fn distance_to_segment(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 == 0.0 {
        0.0
    } else {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    };
    let (x, y) = (a.0 + t * dx - p.0, a.1 + t * dy - p.1);
    (x * x + y * y).sqrt()
}

/// The strokes on a black `CANVAS` x `CANVAS` canvas, row-major grey levels. A pixel's level is
/// the share of it the pen covered, estimated from the distance of its centre to the nearest
/// stroke (a round pen and round joins make the ink exactly the points within half a pen width
/// of the path): full inside, none outside, a one-pixel ramp at the edge.
pub fn render(strokes: &[Stroke]) -> Vec<u8> {
    let radius = PEN_WIDTH / 2.0;
    let mut pixels = vec![0u8; CANVAS * CANVAS];
    for (i, pixel) in pixels.iter_mut().enumerate() {
        let p = ((i % CANVAS) as f32 + 0.5, (i / CANVAS) as f32 + 0.5);
        let d = strokes
            .iter()
            .flat_map(|s| {
                // A single point is a dot (pen down and up without moving).
                let first = std::iter::once(distance_to_segment(p, s[0], s[0]));
                first.chain(s.windows(2).map(|w| distance_to_segment(p, w[0], w[1])))
            })
            .fold(f32::INFINITY, f32::min);
        let coverage = (radius + 0.5 - d).clamp(0.0, 1.0);
        *pixel = (coverage * 255.0).round() as u8;
    }
    pixels
}

/// The samples' folder in this checkout.
pub fn samples_dir() -> PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // crates/ood-cli -> the checkout.
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .join("assets/samples")
}

#[allow(dead_code)] // the test includes this file for `SAMPLES` and `render` only
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args_os()
        .nth(1)
        .map_or_else(samples_dir, PathBuf::from);
    std::fs::create_dir_all(&out)?;
    for sample in SAMPLES {
        let pixels = render(sample.strokes);
        let path = out.join(format!("{}.png", sample.name));
        image::GrayImage::from_raw(CANVAS as u32, CANVAS as u32, pixels)
            .expect("CANVAS * CANVAS pixels")
            .save(&path)?;
        println!("{}", path.display());
    }
    Ok(())
}
