//! A bar chart of counts per label.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::draw::{
    category_axis, category_label, chart_frame, color, draw_note, font, render, AXIS_DESC_SIZE,
    LABEL_SIZE,
};
use super::{PlotError, CHART_SIZE};

/// Draws a bar chart of counts per label (e.g. the labels of the 200 largest reconstruction
/// errors), in the order given, with each count written above its bar.
pub fn label_counts(path: &Path, title: &str, counts: &[(String, usize)]) -> Result<(), PlotError> {
    let labels: Vec<&str> = counts.iter().map(|(l, _)| l.as_str()).collect();
    let max = counts.iter().map(|&(_, c)| c).max().unwrap_or(0);
    let top = ((max as f64 * 1.12).ceil() as u64).max(max as u64 + 1);

    render(path, CHART_SIZE, |root| {
        let mut chart = chart_frame(root, title, 65)
            .build_cartesian_2d(category_axis(labels.len()), 0u64..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("label")
            .y_desc("count")
            .axis_desc_style(font(AXIS_DESC_SIZE))
            .label_style(font(LABEL_SIZE))
            .x_label_formatter(&|x| category_label(&labels, *x))
            .light_line_style(full_palette::GREY_100)
            .draw()?;
        if counts.is_empty() {
            return draw_note(root, "no data");
        }
        for (i, &(_, count)) in counts.iter().enumerate() {
            let x = i as f64;
            let count = count as u64;
            chart.draw_series([
                Rectangle::new([(x - 0.35, 0), (x + 0.35, count)], color(0).filled()),
                Rectangle::new([(x - 0.35, 0), (x + 0.35, count)], BLACK.stroke_width(1)),
            ])?;
            let style = font(LABEL_SIZE).pos(Pos::new(HPos::Center, VPos::Bottom));
            chart.draw_series([
                EmptyElement::at((x, count)) + Text::new(count.to_string(), (0, -4), style)
            ])?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plots::testing::check_png;

    #[test]
    fn label_counts_draws() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("counts.png");
        let counts: Vec<(String, usize)> = [3, 0, 17, 112, 9, 21, 2, 14, 8, 14]
            .iter()
            .enumerate()
            .map(|(d, &c)| (d.to_string(), c))
            .collect();
        label_counts(&p, "Labels of the 200 largest errors", &counts).unwrap();
        assert_eq!(check_png(&p).dimensions(), CHART_SIZE);
        label_counts(&p, "none", &[]).unwrap();
        check_png(&p);
        label_counts(&p, "zeros", &[("a".into(), 0)]).unwrap();
        check_png(&p);
    }
}
