//! Draws the pens of `ood_data::pen` on MNIST test digits into one PNG: per column a digit; the
//! first row as MNIST has it, then the drawn-digit set's three pens (canvas, thin, thick), then
//! four seeded draws of the training restyling.
//!
//! `cargo run --release -p ood-data --example pen_gallery -- [--data-dir DIR] [OUT.png]`
//! (data: --data-dir, else $OOD_DATA_DIR, else assets/data; default output
//! assets/figures/pen-gallery.png).

use ood_data::batch::to_unit_f32;
use ood_data::pen::{redraw, restyle, DrawnStyle, PenConfig};
use ood_data::source::{resolve_data_root, DatasetDir, Split};
use rand::SeedableRng;
use std::path::PathBuf;

/// Digits across, and how much each pixel is enlarged.
const COLUMNS: usize = 12;
const ZOOM: usize = 3;
const RESTYLED_ROWS: usize = 4;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut data_dir, mut out) = (None, PathBuf::from("assets/figures/pen-gallery.png"));
    while let Some(a) = args.next() {
        match a.as_str() {
            "--data-dir" => data_dir = args.next().map(PathBuf::from),
            _ => out = PathBuf::from(a),
        }
    }
    let root = resolve_data_root(data_dir.as_deref());
    let test = DatasetDir::in_root(&root, "mnist")?.load(Split::Test)?;
    let side = test.images.rows;
    let pixels = to_unit_f32(&test);
    let digits: Vec<&[f32]> = pixels.chunks_exact(side * side).take(COLUMNS).collect();

    let mut rows: Vec<Vec<Vec<f32>>> = vec![digits.iter().map(|d| d.to_vec()).collect()];
    for style in DrawnStyle::ALL {
        rows.push(
            digits
                .iter()
                .map(|d| redraw(d, side, &style.canvas()).unwrap_or_else(|| d.to_vec()))
                .collect(),
        );
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    for _ in 0..RESTYLED_ROWS {
        rows.push(
            digits
                .iter()
                .map(|d| {
                    let mut v = d.to_vec();
                    restyle(&mut v, side, &PenConfig::default(), &mut rng);
                    v
                })
                .collect(),
        );
    }

    let cell = side * ZOOM + 2;
    let (width, height) = (COLUMNS * cell, rows.len() * cell);
    let mut canvas = image::GrayImage::from_pixel(width as u32, height as u32, image::Luma([96]));
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            for y in 0..side * ZOOM {
                for x in 0..side * ZOOM {
                    let v = img[(y / ZOOM) * side + x / ZOOM];
                    canvas.put_pixel(
                        (c * cell + 1 + x) as u32,
                        (r * cell + 1 + y) as u32,
                        image::Luma([(v * 255.0).round() as u8]),
                    );
                }
            }
        }
    }
    canvas.save(&out)?;
    println!(
        "wrote {} (rows: MNIST, the drawn set's canvas, thin and thick pens, then {RESTYLED_ROWS} training restylings)",
        out.display()
    );
    Ok(())
}
