//! Small helpers for evaluating a classifier: softmax, max-softmax probability, argmax and a
//! confusion matrix.

use crate::{CalibrateError, Result};

/// Softmax of one row of logits, computed stably in `f64` (the maximum is subtracted first, so
/// large logits do not overflow and very negative ones do not give 0/0).
///
/// Edge cases: an empty row gives an empty vector; any NaN logit makes every entry NaN; `+inf`
/// logits share the mass equally (the limit); a row of only `-inf` gives the uniform
/// distribution (as equal logits would).
pub fn softmax(logits_row: &[f32]) -> Vec<f64> {
    let n = logits_row.len();
    if logits_row.iter().any(|x| x.is_nan()) {
        return vec![f64::NAN; n];
    }
    let max = logits_row
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
    if max == f64::INFINITY {
        let count = logits_row.iter().filter(|&&x| x == f32::INFINITY).count() as f64;
        return logits_row
            .iter()
            .map(|&x| if x == f32::INFINITY { 1.0 / count } else { 0.0 })
            .collect();
    }
    if max == f64::NEG_INFINITY {
        return vec![1.0 / n as f64; n];
    }
    let exps: Vec<f64> = logits_row
        .iter()
        .map(|&x| (f64::from(x) - max).exp())
        .collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// The largest softmax probability of one row of logits (the classifier's confidence), computed
/// stably in `f64` as `1 / sum(exp(x - max))`. It lies in `[1/n, 1]`.
///
/// Returns NaN for an empty row or a row containing NaN (the metric functions reject NaN, so
/// such a row cannot slip through silently). Infinite logits follow [`softmax`].
///
/// ```
/// # use ood_calibrate::max_softmax;
/// assert_eq!(max_softmax(&[0.0, 0.0, 0.0, 0.0]), 0.25);
/// assert_eq!(max_softmax(&[1000.0, 1000.0]), 0.5); // no overflow
/// ```
pub fn max_softmax(logits_row: &[f32]) -> f64 {
    if logits_row.is_empty() || logits_row.iter().any(|x| x.is_nan()) {
        return f64::NAN;
    }
    let max = logits_row
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
    if max.is_infinite() {
        return softmax(logits_row).into_iter().fold(0.0, f64::max);
    }
    let sum: f64 = logits_row.iter().map(|&x| (f64::from(x) - max).exp()).sum();
    1.0 / sum
}

/// Index of the largest logit (the first one on ties); `None` for an empty row or when any
/// logit is NaN.
pub fn argmax(logits_row: &[f32]) -> Option<usize> {
    if logits_row.iter().any(|x| x.is_nan()) {
        return None;
    }
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in logits_row.iter().enumerate() {
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i)
}

/// Confusion matrix `m[truth][pred]` (rows: true class, columns: predicted class) of
/// `classes` × `classes` counts.
///
/// Errors when the lengths differ or a class index is `>= classes`. Empty inputs give a zero
/// matrix.
pub fn confusion_matrix(
    truth: &[usize],
    pred: &[usize],
    classes: usize,
) -> Result<Vec<Vec<usize>>> {
    if truth.len() != pred.len() {
        return Err(CalibrateError::LengthMismatch {
            left: "truth",
            left_len: truth.len(),
            right: "pred",
            right_len: pred.len(),
        });
    }
    for (what, labels) in [("truth", truth), ("pred", pred)] {
        if let Some(index) = labels.iter().position(|&c| c >= classes) {
            return Err(CalibrateError::ClassOutOfRange {
                what,
                index,
                class: labels[index],
                classes,
            });
        }
    }
    let mut m = vec![vec![0; classes]; classes];
    for (&t, &p) in truth.iter().zip(pred) {
        m[t][p] += 1;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_values() {
        assert_eq!(softmax(&[0.0, 0.0]), vec![0.5, 0.5]);
        let p = softmax(&[1.0, 2.0, 3.0]);
        let z = 1.0 + 1f64.exp() + 2f64.exp();
        assert!((p[0] - 1.0 / z).abs() < 1e-15);
        assert!((p[2] - 2f64.exp() / z).abs() < 1e-15);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        // Stable: naive exp overflows (1e4) or underflows to 0/0 (-1e4).
        assert_eq!(softmax(&[1e4, 1e4]), vec![0.5, 0.5]);
        assert_eq!(softmax(&[-1e4, -1e4]), vec![0.5, 0.5]);
        assert_eq!(
            softmax(&[f32::INFINITY, 0.0, f32::INFINITY]),
            vec![0.5, 0.0, 0.5]
        );
        assert_eq!(softmax(&[f32::NEG_INFINITY; 4]), vec![0.25; 4]);
        assert_eq!(softmax(&[f32::NEG_INFINITY, 0.0]), vec![0.0, 1.0]);
        assert!(softmax(&[0.0, f32::NAN]).iter().all(|p| p.is_nan()));
        assert!(softmax(&[]).is_empty());
    }

    #[test]
    fn max_softmax_values() {
        assert_eq!(max_softmax(&[0.0; 4]), 0.25);
        assert_eq!(max_softmax(&[-1e4, -1e4]), 0.5);
        assert_eq!(max_softmax(&[1000.0, 0.0]), 1.0);
        let ln3 = 3f64.ln() as f32;
        // logits (0, ln 3): probabilities 1/4 and 3/4.
        assert!((max_softmax(&[0.0, ln3]) - 0.75).abs() < 1e-7);
        assert_eq!(max_softmax(&[f32::INFINITY, 1.0]), 1.0);
        assert!(max_softmax(&[]).is_nan());
        assert!(max_softmax(&[1.0, f32::NAN]).is_nan());
        // Agrees with the maximum of softmax.
        let row = [0.3, -2.0, 4.5, 4.4];
        let m = softmax(&row).into_iter().fold(0.0, f64::max);
        assert!((max_softmax(&row) - m).abs() < 1e-15);
    }

    #[test]
    fn argmax_values() {
        assert_eq!(argmax(&[0.1, 0.7, 0.2]), Some(1));
        assert_eq!(argmax(&[0.5, 0.5]), Some(0));
        assert_eq!(argmax(&[f32::NEG_INFINITY]), Some(0));
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[1.0, f32::NAN]), None);
    }

    #[test]
    fn confusion_matrix_hand_case() {
        let m = confusion_matrix(&[0, 1, 2, 2, 1], &[0, 2, 2, 1, 1], 3).unwrap();
        assert_eq!(m, vec![vec![1, 0, 0], vec![0, 1, 1], vec![0, 1, 1]]);
        assert_eq!(confusion_matrix(&[], &[], 2).unwrap(), vec![vec![0, 0]; 2]);
        assert_eq!(
            confusion_matrix(&[0, 1], &[0], 2),
            Err(CalibrateError::LengthMismatch {
                left: "truth",
                left_len: 2,
                right: "pred",
                right_len: 1
            })
        );
        assert_eq!(
            confusion_matrix(&[0, 1], &[0, 3], 3),
            Err(CalibrateError::ClassOutOfRange {
                what: "pred",
                index: 1,
                class: 3,
                classes: 3
            })
        );
    }
}
