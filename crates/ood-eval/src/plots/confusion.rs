//! A confusion matrix drawn as a heat map.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::draw::{
    category_label, draw_note, font, render, KeyAxis, AXIS_DESC_SIZE, LABEL_SIZE, TITLE_SIZE,
};
use super::{PlotError, CHART_SIZE};

/// Draws a confusion matrix as a heat map: rows are the true labels, columns the predicted
/// ones (both `labels`, in order, first row at the top), each cell shaded by its share of its
/// row and showing its count. `matrix` must be `labels.len()` rows of `labels.len()` counts.
pub fn confusion_matrix(
    path: &Path,
    title: &str,
    labels: &[String],
    matrix: &[Vec<usize>],
) -> Result<(), PlotError> {
    let n = labels.len();
    if matrix.len() != n || matrix.iter().any(|row| row.len() != n) {
        return Err(PlotError::invalid(
            path,
            format!(
                "a confusion matrix of {n} labels needs {n} rows of {n} counts, got rows of {:?}",
                matrix.iter().map(Vec::len).collect::<Vec<_>>()
            ),
        ));
    }
    let names: Vec<&str> = labels.iter().map(String::as_str).collect();
    let side = n.max(1) as f64;
    let centres: Vec<f64> = (0..n.max(1)).map(|i| i as f64 + 0.5).collect();
    // Cell sizes in pixels decide the font size of the counts.
    let plot_side = (CHART_SIZE.1 - 150) as f64;
    let count_size = ((plot_side / side) * 0.28).clamp(9.0, 26.0) as u32;
    let size = (CHART_SIZE.1 + 100, CHART_SIZE.1);

    render(path, size, |root| {
        // Room at the left for the longest row label and the axis description.
        let mut label_w = 0;
        for name in &names {
            label_w = label_w.max(root.estimate_text_size(name, &font(LABEL_SIZE))?.0);
        }
        let mut chart = ChartBuilder::on(root)
            .caption(title, font(TITLE_SIZE))
            .margin(15)
            .margin_right(40)
            .x_label_area_size(55)
            .y_label_area_size((label_w + 50).min(size.0 / 3))
            .build_cartesian_2d(
                KeyAxis {
                    range: 0.0..side,
                    keys: centres.clone(),
                },
                KeyAxis {
                    range: 0.0..side,
                    keys: centres,
                },
            )?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("predicted")
            .y_desc("true")
            .axis_desc_style(font(AXIS_DESC_SIZE))
            .label_style(font(LABEL_SIZE))
            .x_label_formatter(&|x| category_label(&names, x - 0.5))
            .y_label_formatter(&|y| category_label(&names, side - 0.5 - y))
            .draw()?;
        if n == 0 {
            return draw_note(root, "no data");
        }
        for (r, row) in matrix.iter().enumerate() {
            let total: usize = row.iter().sum();
            let y = (n - 1 - r) as f64;
            for (c, &count) in row.iter().enumerate() {
                let share = if total > 0 {
                    count as f64 / total as f64
                } else {
                    0.0
                };
                let x = c as f64;
                let fill = heat(share);
                chart.draw_series([
                    Rectangle::new([(x, y), (x + 1.0, y + 1.0)], fill.filled()),
                    Rectangle::new(
                        [(x, y), (x + 1.0, y + 1.0)],
                        full_palette::GREY_300.stroke_width(1),
                    ),
                ])?;
                let ink = if share > 0.5 { WHITE } else { BLACK };
                let style = font(count_size)
                    .color(&ink)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                chart.draw_series([Text::new(count.to_string(), (x + 0.5, y + 0.5), style)])?;
            }
        }
        Ok(())
    })
}

/// White (0) to dark blue (1).
fn heat(share: f64) -> RGBColor {
    let s = share.clamp(0.0, 1.0);
    let mix = |from: f64, to: f64| (from + (to - from) * s).round() as u8;
    RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plots::testing::check_png;

    #[test]
    fn confusion_matrix_draws() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("confusion.png");
        let labels: Vec<String> = ["in-distribution", "out-of-distribution"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        confusion_matrix(
            &p,
            "Confusion matrix",
            &labels,
            &[vec![8812, 180], vec![41, 939]],
        )
        .unwrap();
        check_png(&p);
        let ten: Vec<String> = (0..10).map(|d| d.to_string()).collect();
        let matrix: Vec<Vec<usize>> = (0..10)
            .map(|r| {
                (0..10)
                    .map(|c| if r == c { 950 + r } else { (r * c) % 7 })
                    .collect()
            })
            .collect();
        confusion_matrix(&p, "Digits", &ten, &matrix).unwrap();
        check_png(&p);
        confusion_matrix(&p, "empty", &[], &[]).unwrap();
        check_png(&p);
        assert!(matches!(
            confusion_matrix(&p, "bad", &labels, &[vec![1, 2]]),
            Err(PlotError::InvalidInput { .. })
        ));
    }
}
