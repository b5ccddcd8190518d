//! Overlaid density histograms of scores, with the threshold.

use std::path::Path;

use plotters::prelude::*;

use super::draw::{
    chart_frame, color, draw_legend, draw_note, font, number, padded, render, sorted_finite, tick,
    AXIS_DESC_SIZE, LABEL_SIZE,
};
use super::{PlotError, CHART_SIZE};

/// One group of values of [`score_histograms`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistGroup {
    /// The name in the legend, which adds "(n = 1234)".
    pub label: String,
    /// The values; non-finite ones are left out.
    pub values: Vec<f64>,
}

/// Draws overlaid density histograms (each group's bars integrate to 1) with semi-transparent
/// colours over one common range split into `bins` bins, and, when `threshold` is given, a
/// dashed vertical line there. Non-finite values are left out. `bins` must be at least 1.
pub fn score_histograms(
    path: &Path,
    title: &str,
    x_label: &str,
    groups: &[HistGroup],
    bins: usize,
    threshold: Option<f64>,
) -> Result<(), PlotError> {
    if bins == 0 {
        return Err(PlotError::invalid(
            path,
            "a histogram needs at least one bin",
        ));
    }
    let threshold = threshold.filter(|t| t.is_finite());
    let groups: Vec<(&str, Vec<f64>)> = groups
        .iter()
        .map(|g| (g.label.as_str(), sorted_finite(&g.values)))
        .collect();
    let all = groups.iter().flat_map(|(_, v)| v.iter().copied());
    let (mut lo, mut hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    let empty = lo > hi;
    if empty {
        (lo, hi) = (0.0, 1.0);
    }
    if let Some(t) = threshold {
        (lo, hi) = (lo.min(t), hi.max(t));
    }
    let (lo, hi) = padded(lo, hi, 0.0);
    let width = (hi - lo) / bins as f64;
    // Per group: the density of each bin.
    let densities: Vec<Vec<f64>> = groups
        .iter()
        .map(|(_, v)| {
            let mut counts = vec![0usize; bins];
            for &x in v {
                let k = (((x - lo) / width).floor().max(0.0) as usize).min(bins - 1);
                counts[k] += 1;
            }
            let n = v.len().max(1) as f64;
            counts.iter().map(|&c| c as f64 / (n * width)).collect()
        })
        .collect();
    let top = densities.iter().flatten().copied().fold(0.0f64, f64::max);
    let top = if top > 0.0 { top * 1.1 } else { 1.0 };
    let (x0, x1) = padded(lo, hi, 0.02);

    render(path, CHART_SIZE, |root| {
        let mut chart = chart_frame(root, title, 75).build_cartesian_2d(x0..x1, 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc("density")
            .axis_desc_style(font(AXIS_DESC_SIZE))
            .label_style(font(LABEL_SIZE))
            .x_label_formatter(&|x| tick(*x))
            .y_label_formatter(&|y| tick(*y))
            .light_line_style(full_palette::GREY_100)
            .draw()?;
        if empty {
            draw_note(root, "no data")?;
        }
        for (i, ((label, values), density)) in groups.iter().zip(&densities).enumerate() {
            let c = color(i);
            let bars = density
                .iter()
                .enumerate()
                .filter(|&(_, &d)| d > 0.0)
                .map(|(k, &d)| {
                    let left = lo + k as f64 * width;
                    Rectangle::new([(left, 0.0), (left + width, d)], c.mix(0.35).filled())
                });
            chart
                .draw_series(bars)?
                .label(format!("{label} (n = {})", values.len()))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 18, y + 6)], c.mix(0.5).filled())
                });
            if !values.is_empty() {
                // The outline of the histogram, as a step line.
                let mut outline = vec![(lo, 0.0)];
                for (k, &d) in density.iter().enumerate() {
                    let left = lo + k as f64 * width;
                    outline.push((left, d));
                    outline.push((left + width, d));
                }
                outline.push((hi, 0.0));
                chart.draw_series(LineSeries::new(outline, c.stroke_width(1)))?;
            }
        }
        if let Some(t) = threshold {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(t, 0.0), (t, top)],
                    8,
                    5,
                    BLACK.stroke_width(2),
                ))?
                .label(format!("threshold {}", number(t)))
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(2))
                });
        }
        if !groups.is_empty() || threshold.is_some() {
            draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plots::testing::{check_png, only_file};

    #[test]
    fn score_histograms_draws() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hist.png");
        let groups = [
            HistGroup {
                label: "digits 1-9".into(),
                values: (0..5000)
                    .map(|i| (i as f64 * 0.37).sin().abs() * 0.6)
                    .collect(),
            },
            HistGroup {
                label: "digit 0".into(),
                values: (0..800)
                    .map(|i| 0.4 + (i as f64 * 0.11).cos().abs() * 0.6)
                    .collect(),
            },
        ];
        score_histograms(&p, "Scores", "score", &groups, 40, Some(0.55)).unwrap();
        assert_eq!(check_png(&p).dimensions(), CHART_SIZE);
        only_file(dir.path());
    }

    #[test]
    fn score_histograms_edge_cases() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hist.png");
        score_histograms(&p, "none", "score", &[], 10, None).unwrap();
        check_png(&p);
        let degenerate = [
            HistGroup {
                label: "constant".into(),
                values: vec![2.0; 10],
            },
            HistGroup {
                label: "empty".into(),
                values: vec![],
            },
            HistGroup {
                label: "nan".into(),
                values: vec![f64::NAN, f64::INFINITY],
            },
        ];
        score_histograms(&p, "degenerate", "score", &degenerate, 5, Some(f64::NAN)).unwrap();
        check_png(&p);
        score_histograms(
            &p,
            "threshold only",
            "score",
            &degenerate[1..],
            5,
            Some(3.0),
        )
        .unwrap();
        check_png(&p);
        let err = score_histograms(&p, "zero bins", "score", &degenerate, 0, None).unwrap_err();
        assert!(matches!(err, PlotError::InvalidInput { .. }));
        assert_eq!(err.path(), p);
    }
}
