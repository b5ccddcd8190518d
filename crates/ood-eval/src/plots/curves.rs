//! Line charts of curves: ROC curves and the decision's trade-off curves.

use std::path::Path;

use plotters::prelude::*;

use super::draw::{
    chart_frame, color, draw_legend, draw_note, font, number, render, tick, AXIS_DESC_SIZE,
    LABEL_SIZE,
};
use super::{PlotError, CHART_SIZE};

/// One ROC curve of [`roc_curves`].
#[derive(Debug, Clone, PartialEq)]
pub struct RocSeries {
    /// The name in the legend, which adds "(AUROC 0.987)".
    pub label: String,
    /// The curve, as (false positive rate, true positive rate) points in drawing order.
    pub points: Vec<(f64, f64)>,
    /// The area under the curve, shown in the legend.
    pub auroc: f64,
    /// The chosen operating point (fpr, tpr), drawn as a dot.
    pub marker: Option<(f64, f64)>,
}

/// Draws ROC curves: one line per series, the chance diagonal, a dot at each chosen operating
/// point, and a legend "label (AUROC 0.987)".
pub fn roc_curves(path: &Path, title: &str, curves: &[RocSeries]) -> Result<(), PlotError> {
    let lines: Vec<Line<'_>> = curves
        .iter()
        .map(|c| Line {
            legend: format!("{} (AUROC {})", c.label, number(c.auroc)),
            points: &c.points,
            marker: c.marker,
        })
        .collect();
    let axes = Axes {
        x_desc: "false positive rate",
        y_desc: "true positive rate",
        x_range: (-0.005, 1.005),
        y_range: (-0.005, 1.005),
        diagonal: true,
        legend: SeriesLabelPosition::LowerRight,
    };
    line_chart(path, title, &axes, &lines, "no ROC curves")
}

/// One curve of [`trade_off_curves`].
#[derive(Debug, Clone, PartialEq)]
pub struct TradeOffSeries {
    /// The score's name, in the legend.
    pub label: String,
    /// (valid digits accepted and right, unknown caught) at each acceptance of held-out digits.
    pub points: Vec<(f64, f64)>,
    /// The operating point in force, drawn as a dot.
    pub marker: Option<(f64, f64)>,
}

/// Draws the decision's trade-off: for each score, the share of unknown inputs caught against
/// the share of valid digits accepted and classified right, as the threshold moves; the x axis
/// starts at `x_min`.
pub fn trade_off_curves(
    path: &Path,
    title: &str,
    x_min: f64,
    curves: &[TradeOffSeries],
) -> Result<(), PlotError> {
    let lines: Vec<Line<'_>> = curves
        .iter()
        .map(|c| Line {
            legend: c.label.clone(),
            points: &c.points,
            marker: c.marker,
        })
        .collect();
    let axes = Axes {
        x_desc: "valid digits accepted and right",
        y_desc: "unknown caught",
        x_range: (x_min, 1.002),
        y_range: (-0.005, 1.005),
        diagonal: false,
        legend: SeriesLabelPosition::LowerLeft,
    };
    line_chart(path, title, &axes, &lines, "no curves")
}

/// The axes of a [`line_chart`].
struct Axes {
    x_desc: &'static str,
    y_desc: &'static str,
    x_range: (f64, f64),
    y_range: (f64, f64),
    /// Draw the dashed chance diagonal.
    diagonal: bool,
    legend: SeriesLabelPosition,
}

/// One line of a [`line_chart`].
struct Line<'a> {
    legend: String,
    points: &'a [(f64, f64)],
    marker: Option<(f64, f64)>,
}

/// Lines in their colours with a dot at each marker and a legend; `empty` is said when there
/// are none.
fn line_chart(
    path: &Path,
    title: &str,
    axes: &Axes,
    lines: &[Line<'_>],
    empty: &str,
) -> Result<(), PlotError> {
    render(path, CHART_SIZE, |root| {
        let mut chart = chart_frame(root, title, 65).build_cartesian_2d(
            axes.x_range.0..axes.x_range.1,
            axes.y_range.0..axes.y_range.1,
        )?;
        chart
            .configure_mesh()
            .x_desc(axes.x_desc)
            .y_desc(axes.y_desc)
            .axis_desc_style(font(AXIS_DESC_SIZE))
            .label_style(font(LABEL_SIZE))
            .x_label_formatter(&|x| tick(*x))
            .y_label_formatter(&|y| tick(*y))
            .light_line_style(full_palette::GREY_100)
            .draw()?;
        if axes.diagonal {
            chart.draw_series(DashedLineSeries::new(
                vec![(0.0, 0.0), (1.0, 1.0)],
                6,
                6,
                full_palette::GREY_500.stroke_width(1),
            ))?;
        }
        if lines.is_empty() {
            return draw_note(root, empty);
        }
        for (i, line) in lines.iter().enumerate() {
            let c = color(i);
            let points: Vec<(f64, f64)> = line
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(points, c.stroke_width(2)))?
                .label(line.legend.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3))
                });
        }
        for (i, line) in lines.iter().enumerate() {
            if let Some((x, y)) = line.marker.filter(|(x, y)| x.is_finite() && y.is_finite()) {
                chart.draw_series([
                    Circle::new((x, y), 6, color(i).filled()),
                    Circle::new((x, y), 6, BLACK.stroke_width(1)),
                ])?;
            }
        }
        draw_legend(&mut chart, axes.legend.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plots::testing::{check_png, only_file};

    fn roc(label: &str, power: f64) -> RocSeries {
        let points: Vec<(f64, f64)> = (0..=50)
            .map(|i| {
                let x = i as f64 / 50.0;
                (x, x.powf(power))
            })
            .collect();
        RocSeries {
            label: label.to_string(),
            auroc: 1.0 / (1.0 + power),
            marker: Some((0.05, 0.05f64.powf(power))),
            points,
        }
    }

    #[test]
    fn roc_curves_draws_and_titles_change_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let with = dir.path().join("roc.png");
        let without = dir.path().join("roc-untitled.png");
        let curves = [roc("max softmax", 0.1), roc("reconstruction error", 0.3)];
        roc_curves(&with, "ROC: digit 0 against digits 1-9", &curves).unwrap();
        roc_curves(&without, "", &curves).unwrap();
        let a = check_png(&with);
        let b = check_png(&without);
        assert_eq!(a.dimensions(), CHART_SIZE);
        assert_eq!(b.dimensions(), CHART_SIZE);
        // The title's text is drawn: a broken font setup would draw nothing (or fail).
        assert_ne!(a.as_raw(), b.as_raw());
        only_file(dir.path());

        // Rewriting replaces the file.
        roc_curves(&with, "again", &curves[..1]).unwrap();
        assert_ne!(check_png(&with).as_raw(), a.as_raw());
    }

    #[test]
    fn roc_curves_of_nothing_is_a_chart() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.png");
        roc_curves(&p, "no curves", &[]).unwrap();
        check_png(&p);
        let odd = RocSeries {
            label: "odd".into(),
            points: vec![(f64::NAN, 0.5), (0.0, 0.0)],
            auroc: f64::NAN,
            marker: Some((f64::INFINITY, 0.0)),
        };
        roc_curves(&p, "odd", &[odd]).unwrap();
        check_png(&p);
    }

    #[test]
    fn unwritable_path_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("no/such/folder/roc.png");
        let err = roc_curves(&p, "t", &[]).unwrap_err();
        assert!(matches!(err, PlotError::Io { .. }));
        assert!(err.to_string().contains("roc.png"));
    }
}
