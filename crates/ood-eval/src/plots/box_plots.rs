//! Box plots of values per label (e.g. reconstruction error by digit).

use std::path::Path;

use plotters::prelude::*;

use super::draw::{
    category_axis, category_label, chart_frame, color, draw_note, font, padded, quantile, render,
    sorted_finite, tick, AXIS_DESC_SIZE, LABEL_SIZE,
};
use super::{PlotError, CHART_SIZE};

/// A deterministic jitter in [-1, 1] for point `i` (a hash, so figures are reproducible).
fn jitter(i: usize) -> f64 {
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

/// Draws the distribution of values per label (e.g. reconstruction error by digit) as box plots:
/// the box spans the 25th to 75th percentile with a line at the median, whiskers reach the 5th
/// and 95th percentiles, a cross marks the mean, and values beyond the whiskers are drawn as
/// jittered dots (at most 400 per label, evenly subsampled). Non-finite values are left out.
pub fn values_by_label(
    path: &Path,
    title: &str,
    y_label: &str,
    groups: &[(String, Vec<f64>)],
) -> Result<(), PlotError> {
    const MAX_DOTS: usize = 400;
    let labels: Vec<&str> = groups.iter().map(|(l, _)| l.as_str()).collect();
    let data: Vec<Vec<f64>> = groups.iter().map(|(_, v)| sorted_finite(v)).collect();
    let (lo, hi) = data
        .iter()
        .filter(|v| !v.is_empty())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v[0]), hi.max(v[v.len() - 1]))
        });
    let empty = lo > hi;
    let (y0, y1) = if empty {
        (0.0, 1.0)
    } else {
        padded(lo, hi, 0.05)
    };

    render(path, CHART_SIZE, |root| {
        let mut chart =
            chart_frame(root, title, 75).build_cartesian_2d(category_axis(labels.len()), y0..y1)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("label")
            .y_desc(y_label)
            .axis_desc_style(font(AXIS_DESC_SIZE))
            .label_style(font(LABEL_SIZE))
            .x_label_formatter(&|x| category_label(&labels, *x))
            .y_label_formatter(&|y| tick(*y))
            .light_line_style(full_palette::GREY_100)
            .draw()?;
        if empty {
            return draw_note(root, "no data");
        }
        let half = 0.3;
        for (i, v) in data.iter().enumerate() {
            if v.is_empty() {
                continue;
            }
            let c = color(i);
            let x = i as f64;
            let [p5, q1, median, q3, p95] = [0.05, 0.25, 0.5, 0.75, 0.95].map(|q| quantile(v, q));
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let outside: Vec<(usize, f64)> = v
                .iter()
                .copied()
                .enumerate()
                .filter(|&(_, y)| y < p5 || y > p95)
                .collect();
            let step = outside.len().div_ceil(MAX_DOTS).max(1);
            chart.draw_series(outside.iter().step_by(step).map(|&(k, y)| {
                Circle::new(
                    (x + 0.8 * half * jitter(k + 7919 * i), y),
                    2,
                    c.mix(0.45).filled(),
                )
            }))?;
            chart.draw_series([
                PathElement::new(vec![(x, p5), (x, q1)], BLACK.stroke_width(1)),
                PathElement::new(vec![(x, q3), (x, p95)], BLACK.stroke_width(1)),
                PathElement::new(
                    vec![(x - half / 2.0, p5), (x + half / 2.0, p5)],
                    BLACK.stroke_width(1),
                ),
                PathElement::new(
                    vec![(x - half / 2.0, p95), (x + half / 2.0, p95)],
                    BLACK.stroke_width(1),
                ),
            ])?;
            chart.draw_series([
                Rectangle::new([(x - half, q1), (x + half, q3)], c.mix(0.45).filled()),
                Rectangle::new([(x - half, q1), (x + half, q3)], BLACK.stroke_width(1)),
            ])?;
            chart.draw_series([PathElement::new(
                vec![(x - half, median), (x + half, median)],
                BLACK.stroke_width(3),
            )])?;
            chart.draw_series([Cross::new((x, mean), 5, BLACK.stroke_width(2))])?;
        }
        let note = "box: 25-75 %, line: median, whiskers: 5-95 %, x: mean, dots: beyond whiskers";
        root.draw(&Text::new(
            note,
            (95, CHART_SIZE.1 as i32 - 18),
            font(13).color(&full_palette::GREY_700),
        ))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plots::testing::check_png;

    #[test]
    fn values_by_label_draws() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("by-label.png");
        let groups: Vec<(String, Vec<f64>)> = (0..10)
            .map(|d| {
                let values = (0..600)
                    .map(|i| 0.02 * (d as f64 + 1.0) * (1.0 + (i as f64 * 0.7).sin().powi(5)))
                    .collect();
                (d.to_string(), values)
            })
            .collect();
        values_by_label(
            &p,
            "Reconstruction error by label",
            "reconstruction error",
            &groups,
        )
        .unwrap();
        assert_eq!(check_png(&p).dimensions(), CHART_SIZE);
        values_by_label(&p, "empty", "error", &[]).unwrap();
        check_png(&p);
        let sparse = vec![("a".to_string(), vec![]), ("b".to_string(), vec![1.0])];
        values_by_label(&p, "sparse", "error", &sparse).unwrap();
        check_png(&p);
    }
}
