//! Digits drawn from strokes, as PNG files: the load test's requests. No dataset is needed;
//! they look like hand-drawn digits (dark ink on white paper, any size), which is what the
//! server prepares the MNIST way.

/// Polylines: each a list of points in a unit square (x right, y down).
type Strokes = &'static [&'static [(f32, f32)]];

/// Polylines of each digit 1-9.
const DIGITS: [(u8, Strokes); 9] = [
    (1, &[&[(0.35, 0.25), (0.52, 0.1), (0.52, 0.9)]]),
    (
        2,
        &[&[
            (0.25, 0.3),
            (0.35, 0.12),
            (0.6, 0.1),
            (0.72, 0.25),
            (0.65, 0.45),
            (0.25, 0.9),
            (0.78, 0.9),
        ]],
    ),
    (
        3,
        &[&[
            (0.25, 0.15),
            (0.7, 0.15),
            (0.45, 0.45),
            (0.7, 0.6),
            (0.68, 0.82),
            (0.45, 0.92),
            (0.25, 0.85),
        ]],
    ),
    (4, &[&[(0.6, 0.9), (0.6, 0.1), (0.2, 0.65), (0.8, 0.65)]]),
    (
        5,
        &[&[
            (0.72, 0.1),
            (0.3, 0.1),
            (0.27, 0.45),
            (0.6, 0.42),
            (0.72, 0.6),
            (0.65, 0.85),
            (0.3, 0.9),
        ]],
    ),
    (
        6,
        &[&[
            (0.65, 0.1),
            (0.35, 0.45),
            (0.3, 0.75),
            (0.5, 0.92),
            (0.7, 0.75),
            (0.6, 0.55),
            (0.35, 0.6),
        ]],
    ),
    (7, &[&[(0.2, 0.12), (0.8, 0.12), (0.45, 0.9)]]),
    (
        8,
        &[&[
            (0.5, 0.5),
            (0.3, 0.3),
            (0.5, 0.1),
            (0.7, 0.3),
            (0.5, 0.5),
            (0.28, 0.72),
            (0.5, 0.92),
            (0.72, 0.72),
            (0.5, 0.5),
        ]],
    ),
    (
        9,
        &[&[
            (0.7, 0.3),
            (0.5, 0.1),
            (0.3, 0.3),
            (0.5, 0.48),
            (0.7, 0.3),
            (0.68, 0.9),
        ]],
    ),
];

fn distance_to_segment(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 == 0.0 {
        0.0
    } else {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    };
    ((p.0 - a.0 - t * dx).powi(2) + (p.1 - a.1 - t * dy).powi(2)).sqrt()
}

/// Grey pixels (255 paper, 0 ink) of polylines drawn `thickness` pixels wide on a square of
/// `side` pixels, anti-aliased.
pub fn render(strokes: &[&[(f32, f32)]], side: u32, thickness: f32) -> Vec<u8> {
    let s = side as f32;
    let mut out = Vec::with_capacity((side * side) as usize);
    for y in 0..side {
        for x in 0..side {
            let p = (x as f32 + 0.5, y as f32 + 0.5);
            let d = strokes
                .iter()
                .flat_map(|line| line.windows(2))
                .map(|w| distance_to_segment(p, (w[0].0 * s, w[0].1 * s), (w[1].0 * s, w[1].1 * s)))
                .fold(f32::INFINITY, f32::min);
            let ink = (thickness / 2.0 + 0.5 - d).clamp(0.0, 1.0);
            out.push((255.0 * (1.0 - ink)).round() as u8);
        }
    }
    out
}

/// Grey pixels as a PNG file.
pub fn png(pixels: Vec<u8>, width: u32, height: u32) -> Vec<u8> {
    let image = image::GrayImage::from_raw(width, height, pixels).expect("width x height pixels");
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .expect("a PNG encodes into memory");
    bytes
}

/// Each digit 1-9 at three sizes: `(digit, PNG bytes)`.
pub fn digit_pngs() -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    for side in [64u32, 96, 160] {
        for (digit, strokes) in DIGITS {
            out.push((
                digit,
                png(render(strokes, side, side as f32 / 10.0), side, side),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn digits_are_ink_on_paper() {
        let pngs = super::digit_pngs();
        assert_eq!(pngs.len(), 27);
        let one = super::render(super::DIGITS[0].1, 64, 6.4);
        // The stroke's middle is ink, the corner is paper.
        assert_eq!(one[32 * 64 + 33], 0);
        assert_eq!(one[0], 255);
        let decoded = image::load_from_memory(&pngs[0].1).unwrap().to_luma8();
        assert_eq!(decoded.as_raw(), &one);
    }
}
