//! Step times and rounds: the median of a measurement's timed steps, and the median of each row
//! over the rounds of `--rounds N`.

use std::time::Instant;

use crate::workloads::ModelRow;
use crate::Result;

/// One row per measurement: the median over the rounds of our images/s (GFLOP/s with it) and
/// of PyTorch's, their ratio, and each round's ratio; the largest peak memory; the median of
/// the step medians and the least step. One round is returned as it is.
pub(crate) fn median_of_rounds(mut rounds: Vec<Vec<ModelRow>>) -> Vec<ModelRow> {
    if rounds.len() == 1 {
        return rounds.pop().unwrap_or_default();
    }
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|i| {
            let of_row: Vec<&ModelRow> = rounds.iter().map(|r| &r[i]).collect();
            let median_by = |f: &dyn Fn(&ModelRow) -> Option<f64>| -> Option<f64> {
                let mut v: Vec<f64> = of_row.iter().filter_map(|r| f(r)).collect();
                (v.len() == of_row.len()).then(|| median(&mut v))
            };
            let images_per_s = median_by(&|r| Some(r.images_per_s)).unwrap_or(f64::NAN);
            let torch = median_by(&|r| r.torch_images_per_s);
            ModelRow {
                images_per_s,
                gflops: median_by(&|r| Some(r.gflops)).unwrap_or(f64::NAN),
                peak_mib: of_row.iter().filter_map(|r| r.peak_mib).reduce(f64::max),
                median_s: median_by(&|r| Some(r.median_s)).unwrap_or(f64::NAN),
                min_s: of_row.iter().map(|r| r.min_s).fold(f64::INFINITY, f64::min),
                torch_images_per_s: torch,
                ratio: torch.filter(|&t| t > 0.0).map(|t| images_per_s / t),
                // Every round's, or none: a round without PyTorch leaves no median to compare.
                round_ratios: of_row
                    .iter()
                    .map(|r| r.ratio)
                    .collect::<Option<_>>()
                    .unwrap_or_default(),
                ..of_row[0].clone()
            }
        })
        .collect()
}

/// The middle value (the mean of the two middle ones for an even count); NaN for none.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Median and minimum of `steps` timed calls after `warmup` untimed ones, in seconds.
pub(crate) fn timed(
    warmup: usize,
    steps: usize,
    mut step: impl FnMut() -> Result<()>,
) -> Result<(f64, f64)> {
    for _ in 0..warmup {
        step()?;
    }
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t0 = Instant::now();
        step()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median = if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    };
    Ok((median, times[0]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ratio_cell;
    use crate::torch::{attach_torch, TorchResult};
    use crate::workloads::row;

    #[test]
    fn rounds_give_the_median_of_each_row_the_ratio_of_the_medians_and_each_rounds_ratio() {
        // Three rounds of two rows; PyTorch measured the first row only.
        let torch = |ips: f64| TorchResult {
            model: "ref-w16".into(),
            kind: "train".into(),
            batch: 128,
            images_per_s: ips,
        };
        let round = |ours: f64, infer: f64, theirs: f64, peak: f64| {
            let mut rows = vec![
                row("ref-w16", "fast", "train", 16, 128, ours, true),
                row("ref-w16", "fast", "infer", 16, 512, infer, true),
            ];
            rows[0].peak_mib = Some(peak);
            attach_torch(&mut rows, &[torch(theirs)]);
            rows
        };
        let rows = median_of_rounds(vec![
            round(600.0, 3000.0, 500.0, 10.0),
            round(400.0, 2000.0, 800.0, 30.0),
            round(700.0, 2500.0, 600.0, 20.0),
        ]);
        assert_eq!(rows.len(), 2);
        // Medians 600 (of 400, 600, 700) and 600 (of 500, 600, 800): ratio 1.
        assert_eq!(rows[0].images_per_s, 600.0);
        assert_eq!(rows[0].torch_images_per_s, Some(600.0));
        assert_eq!(rows[0].ratio, Some(1.0));
        assert_eq!(rows[0].round_ratios, vec![1.2, 0.5, 700.0 / 600.0]);
        assert_eq!(rows[0].peak_mib, Some(30.0));
        assert_eq!(ratio_cell(&rows[0]), "1.00 (1.20, 0.50, 1.17)");
        // Step times follow the images/s: median of 128/600, 128/400, 128/700.
        assert_eq!(rows[0].median_s, 128.0 / 600.0);
        assert_eq!(rows[0].min_s, 128.0 / 700.0);
        // No PyTorch figure in any round: none in the median either.
        assert_eq!(rows[1].images_per_s, 2500.0);
        assert_eq!((rows[1].torch_images_per_s, rows[1].ratio), (None, None));
        assert_eq!(ratio_cell(&rows[1]), "-");
        // One round is left as it was; two rounds take the mean of the middle pair.
        let one = median_of_rounds(vec![round(600.0, 1.0, 500.0, 1.0)]);
        assert_eq!(
            (one[0].ratio, ratio_cell(&one[0])),
            (Some(1.2), "1.20".to_string())
        );
        assert_eq!(median(&mut [3.0, 1.0]), 2.0);
    }
}
