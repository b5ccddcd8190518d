//! Rows of grayscale images, labelled and aligned (originals, noised copies, reconstructions).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::draw::{draw_note, font, font_ready, render_then, LABEL_SIZE, MAX_PIXELS, TITLE_SIZE};
use super::PlotError;

/// One labelled row of images of [`image_grid`].
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRow {
    /// The text at the left of the row.
    pub label: String,
    /// Grayscale images of `side * side` pixels each, row-major, in [0, 1] (0 black, 1 white).
    pub images: Vec<Vec<f32>>,
}

/// Draws rows of grayscale images (0 black, 1 white; so MNIST digits are white ink on black),
/// each row labelled at its left and the columns aligned, every pixel enlarged to
/// `scale` x `scale`. Every image must hold `side * side` values; rows may differ in length.
/// The figure is as large as the grid needs (at least as wide as the title).
pub fn image_grid(
    path: &Path,
    title: &str,
    rows: &[ImageRow],
    side: usize,
    scale: u32,
) -> Result<(), PlotError> {
    const MARGIN: u32 = 12;
    const GAP: u32 = 4;
    if side == 0 || scale == 0 {
        return Err(PlotError::invalid(
            path,
            format!("images of side {side} at scale {scale}"),
        ));
    }
    for row in rows {
        if let Some((k, image)) = row
            .images
            .iter()
            .enumerate()
            .find(|(_, image)| image.len() != side * side)
        {
            return Err(PlotError::invalid(
                path,
                format!(
                    "image {k} of row {:?} has {} pixels, not {side} x {side}",
                    row.label,
                    image.len()
                ),
            ));
        }
    }
    if !font_ready() {
        return Err(PlotError::Font {
            path: path.to_path_buf(),
        });
    }
    let too_large = || PlotError::invalid(path, "the image grid is too large");
    let cell = u32::try_from(side)
        .ok()
        .and_then(|s| s.checked_mul(scale))
        .filter(|&c| u64::from(c) * u64::from(c) <= MAX_PIXELS)
        .ok_or_else(too_large)?;
    let columns = rows.iter().map(|r| r.images.len()).max().unwrap_or(0);
    let empty = columns == 0;

    // Text sizes, measured with a scratch drawing area.
    let title_style = font(TITLE_SIZE - 2);
    let label_style = font(LABEL_SIZE + 3);
    let (title_w, title_h, label_w) = {
        let mut scratch = vec![0u8; 3];
        let area = BitMapBackend::with_buffer(&mut scratch, (1, 1)).into_drawing_area();
        let measure = |text: &str, style: &TextStyle<'_>| {
            if text.is_empty() {
                Ok((0, 0))
            } else {
                area.estimate_text_size(text, style)
            }
        };
        let failed = |e: DrawingAreaErrorKind<_>| PlotError::Draw {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let (tw, th) = measure(title, &title_style).map_err(failed)?;
        let mut lw = 0;
        for row in rows {
            lw = lw.max(measure(&row.label, &label_style).map_err(failed)?.0);
        }
        (tw, th, lw)
    };
    let title_band = if title.is_empty() {
        MARGIN
    } else {
        title_h + 2 * MARGIN
    };
    let label_band = if label_w > 0 {
        label_w + 2 * MARGIN
    } else {
        MARGIN
    };
    let grid_w = u64::from(cell + GAP) * columns as u64;
    let grid_h = u64::from(cell + GAP) * rows.len() as u64;
    let (min_w, min_h) = if empty { (300, 120) } else { (0, 0) };
    let width = (u64::from(label_band) + grid_w + u64::from(MARGIN))
        .max(u64::from(title_w) + 2 * u64::from(MARGIN))
        .max(min_w);
    let height = (u64::from(title_band) + grid_h + u64::from(MARGIN)).max(min_h);
    if width * height > MAX_PIXELS {
        return Err(too_large());
    }
    let (width, height) = (width as u32, height as u32);
    let origin = |r: usize, c: usize| {
        (
            label_band + c as u32 * (cell + GAP),
            title_band + r as u32 * (cell + GAP),
        )
    };

    render_then(
        path,
        (width, height),
        |root| {
            if !title.is_empty() {
                let style = title_style.pos(Pos::new(HPos::Center, VPos::Top));
                root.draw(&Text::new(title, (width as i32 / 2, MARGIN as i32), style))?;
            }
            if empty {
                return draw_note(root, "no images");
            }
            for (r, row) in rows.iter().enumerate() {
                // A thin frame around each image, so white images show on the white page.
                for c in 0..row.images.len() {
                    let (x, y) = origin(r, c);
                    let (x, y, end) = (x as i32, y as i32, cell as i32);
                    let frame = [(x - 1, y - 1), (x + end, y + end)];
                    root.draw(&Rectangle::new(
                        frame,
                        full_palette::GREY_400.stroke_width(1),
                    ))?;
                }
                let (_, y) = origin(r, 0);
                let style = label_style.pos(Pos::new(HPos::Right, VPos::Center));
                let at = ((label_band - MARGIN) as i32, (y + cell / 2) as i32);
                root.draw(&Text::new(row.label.as_str(), at, style))?;
            }
            Ok(())
        },
        |buffer| {
            let stride = width as usize * 3;
            for (r, row) in rows.iter().enumerate() {
                for (c, image) in row.images.iter().enumerate() {
                    let (x0, y0) = origin(r, c);
                    for py in 0..cell as usize {
                        let line = (y0 as usize + py) * stride;
                        for px in 0..cell as usize {
                            let v = image[(py / scale as usize) * side + px / scale as usize];
                            let v = if v.is_finite() {
                                v.clamp(0.0, 1.0)
                            } else {
                                0.0
                            };
                            let g = (v * 255.0).round() as u8;
                            let at = line + (x0 as usize + px) * 3;
                            buffer[at..at + 3].copy_from_slice(&[g, g, g]);
                        }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plots::testing::check_png;

    fn digit(seed: usize, side: usize) -> Vec<f32> {
        (0..side * side)
            .map(|i| {
                let (y, x) = ((i / side) as f32, (i % side) as f32);
                let c = side as f32 / 2.0;
                let r = ((x - c).powi(2) + (y - c).powi(2)).sqrt();
                let ring = (1.0 - (r - side as f32 / 3.5 - seed as f32 * 0.2).abs() / 2.0).max(0.0);
                ring.min(1.0)
            })
            .collect()
    }

    #[test]
    fn image_grid_draws_aligned_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("grid.png");
        let side = 28;
        let rows: Vec<ImageRow> = ["original", "noised", "denoised"]
            .iter()
            .map(|label| ImageRow {
                label: label.to_string(),
                images: (0..8).map(|k| digit(k, side)).collect(),
            })
            .collect();
        image_grid(&p, "Denoising", &rows, side, 3).unwrap();
        let image = check_png(&p);
        let (w, h) = image.dimensions();
        assert!(w >= 8 * 84 && h >= 3 * 84, "{w} x {h}");
        // The centre pixel of an image is black (inside the ring); the grid background is white.
        assert!(image.pixels().any(|p| p.0 == [0, 0, 0]));
        assert_eq!(image.get_pixel(w - 1, h - 1).0, [255, 255, 255]);

        let untitled = dir.path().join("untitled.png");
        image_grid(&untitled, "", &rows, side, 3).unwrap();
        assert_ne!(check_png(&untitled).as_raw(), image.as_raw());
    }

    #[test]
    fn image_grid_rejects_bad_shapes_and_draws_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("grid.png");
        let bad = [ImageRow {
            label: "x".into(),
            images: vec![vec![0.5; 10]],
        }];
        assert!(matches!(
            image_grid(&p, "bad", &bad, 28, 2),
            Err(PlotError::InvalidInput { .. })
        ));
        assert!(matches!(
            image_grid(&p, "bad", &[], 0, 2),
            Err(PlotError::InvalidInput { .. })
        ));
        assert!(matches!(
            image_grid(&p, "huge", &[], 1 << 20, 1 << 12),
            Err(PlotError::InvalidInput { .. })
        ));
        assert!(!p.exists());
        image_grid(&p, "no images", &[], 28, 2).unwrap();
        check_png(&p);
        let ragged = [
            ImageRow {
                label: "one".into(),
                images: vec![vec![1.0; 16]],
            },
            ImageRow {
                label: "none".into(),
                images: vec![],
            },
            ImageRow {
                label: "odd".into(),
                images: vec![vec![f32::NAN; 16], vec![7.0; 16]],
            },
        ];
        image_grid(&p, "ragged", &ragged, 4, 10).unwrap();
        check_png(&p);
    }
}
