//! OSCR, the open-set classification rate (Dhamija, Günther and Boult, "Reducing Network
//! Agnostophobia", NeurIPS 2018).
//!
//! A closed-set classifier plus an OOD score: a sample is **accepted** (classified, not
//! rejected) when `score <= threshold`, i.e. when it is not flagged under the crate-wide rule
//! `score > threshold`. As the threshold sweeps from below every score to above every score:
//!
//! * CCR (correct-classification rate) = fraction of **all** ID samples that are accepted **and**
//!   correctly classified; it rises from 0 to the closed-set accuracy;
//! * FPR = fraction of OOD samples accepted; it rises from 0 to 1.
//!
//! OSCR is the area under CCR against FPR (trapezoid rule). Ties are grouped: samples with an
//! equal score are accepted together, one curve point per distinct score. With every ID sample
//! correct, OSCR equals [`auroc`](crate::auroc) of the same scores; in general it is at most
//! the closed-set accuracy.

use crate::{check_pair, midpoint, next_down, CalibrateError, Result};
use serde::{Deserialize, Serialize};

/// One point of the OSCR curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OscrPoint {
    /// Fraction of OOD samples accepted (`score <= threshold`).
    pub fpr: f64,
    /// Fraction of ID samples accepted and correctly classified.
    pub ccr: f64,
    /// Samples with `score <= threshold` are accepted (`score > threshold` flagged OOD).
    pub threshold: f64,
}

/// Counts (accepted OOD, accepted correct ID) per point, from (0, 0) upwards.
fn count_points(
    id_scores: &[f64],
    id_correct: &[bool],
    ood_scores: &[f64],
) -> Result<Vec<(usize, usize, f64)>> {
    check_pair("id_scores", id_scores, "ood_scores", ood_scores)?;
    if id_correct.len() != id_scores.len() {
        return Err(CalibrateError::LengthMismatch {
            left: "id_scores",
            left_len: id_scores.len(),
            right: "id_correct",
            right_len: id_correct.len(),
        });
    }
    // Kinds: 0 = OOD, 1 = wrongly classified ID, 2 = correctly classified ID. Sorted by
    // increasing score, the order in which samples become accepted; `+ 0.0` folds -0.0 into 0.0.
    let mut items: Vec<(f64, u8)> = ood_scores
        .iter()
        .map(|&s| (s + 0.0, 0))
        .chain(
            id_scores
                .iter()
                .zip(id_correct)
                .map(|(&s, &c)| (s + 0.0, 1 + u8::from(c))),
        )
        .collect();
    items.sort_by(|a, b| a.0.total_cmp(&b.0));

    let mut points = Vec::with_capacity(items.len() + 1);
    let (mut fp, mut cc) = (0, 0);
    points.push((fp, cc, next_down(items[0].0)));
    let mut i = 0;
    while i < items.len() {
        let value = items[i].0;
        while i < items.len() && items[i].0 == value {
            match items[i].1 {
                0 => fp += 1,
                2 => cc += 1,
                _ => {}
            }
            i += 1;
        }
        let threshold = match items.get(i) {
            Some(&(higher, _)) => midpoint(value, higher),
            None => value,
        };
        points.push((fp, cc, threshold));
    }
    Ok(points)
}

/// The OSCR curve: one point per distinct score (pooled) plus the start (0, 0), ending at
/// (1, closed-set accuracy); thresholds increase along it and reproduce each point exactly
/// (midpoints between adjacent distinct scores, the largest score at the end, the next `f64`
/// below the smallest at the start).
///
/// `id_scores` and `ood_scores` are OOD scores (larger = more OOD); `id_correct[i]` says whether
/// ID sample `i` was classified correctly. Errors on empty or non-finite inputs and when
/// `id_correct` and `id_scores` differ in length.
pub fn oscr_curve(
    id_scores: &[f64],
    id_correct: &[bool],
    ood_scores: &[f64],
) -> Result<Vec<OscrPoint>> {
    let points = count_points(id_scores, id_correct, ood_scores)?;
    let (n_id, n_ood) = (id_scores.len() as f64, ood_scores.len() as f64);
    Ok(points
        .into_iter()
        .map(|(fp, cc, threshold)| OscrPoint {
            fpr: fp as f64 / n_ood,
            ccr: cc as f64 / n_id,
            threshold,
        })
        .collect())
}

/// Area under the [`oscr_curve`] by the trapezoid rule (computed exactly in integers, then
/// divided). Higher is better; 1 needs a perfect classifier whose every ID sample scores below
/// every OOD sample.
///
/// ```
/// # use ood_calibrate::oscr;
/// // Perfect separation, but only 1 of 2 ID samples correctly classified.
/// assert_eq!(oscr(&[0.1, 0.2], &[true, false], &[0.9])?, 0.5);
/// # Ok::<(), ood_calibrate::CalibrateError>(())
/// ```
pub fn oscr(id_scores: &[f64], id_correct: &[bool], ood_scores: &[f64]) -> Result<f64> {
    let points = count_points(id_scores, id_correct, ood_scores)?;
    let twice: u128 = points
        .windows(2)
        .map(|w| ((w[1].0 - w[0].0) as u128) * ((w[1].1 + w[0].1) as u128))
        .sum();
    Ok(twice as f64 / (2 * id_scores.len() as u128 * ood_scores.len() as u128) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand case, increasing score (Ic = correct ID, Iw = wrong ID, O = OOD):
    ///
    /// ```text
    /// score  0.05  0.1  0.2  0.3     0.4  0.5  0.6
    /// kind   O     Ic   Iw   Ic + O  O    O    Ic
    /// ```
    ///
    /// n_id = 4, n_ood = 4. (accepted OOD, accepted correct ID) after each score:
    /// start (0,0); 0.05 (1,0); 0.1 (1,1); 0.2 (1,1); 0.3 (2,2) (tie: both at once);
    /// 0.4 (3,2); 0.5 (4,2); 0.6 (4,3).
    /// Trapezoids (OOD step * (cc before + cc after) / 2): 0.05: 1*(0+0)/2 = 0;
    /// 0.3: 1*(1+2)/2 = 1.5; 0.4: 1*(2+2)/2 = 2; 0.5: 1*(2+2)/2 = 2 -> 5.5 / (4*4) = 11/32.
    const ID: [f64; 4] = [0.1, 0.2, 0.3, 0.6];
    const CORRECT: [bool; 4] = [true, false, true, true];
    const OOD: [f64; 4] = [0.3, 0.05, 0.4, 0.5];

    #[test]
    fn oscr_hand_case() {
        assert_eq!(oscr(&ID, &CORRECT, &OOD).unwrap(), 11.0 / 32.0);
        assert_eq!(oscr(&ID, &CORRECT, &OOD).unwrap(), 0.34375);
    }

    #[test]
    fn oscr_curve_hand_case() {
        let c = oscr_curve(&ID, &CORRECT, &OOD).unwrap();
        let expected = [
            (0, 0),
            (1, 0),
            (1, 1),
            (1, 1),
            (2, 2),
            (3, 2),
            (4, 2),
            (4, 3),
        ];
        assert_eq!(c.len(), expected.len());
        for (p, &(fp, cc)) in c.iter().zip(&expected) {
            assert_eq!((p.fpr, p.ccr), (fp as f64 / 4.0, cc as f64 / 4.0));
            // The threshold reproduces the point: accepted when score <= threshold.
            let acc_ood = OOD.iter().filter(|&&s| s <= p.threshold).count();
            let acc_cc = ID
                .iter()
                .zip(&CORRECT)
                .filter(|(&s, &ok)| ok && s <= p.threshold)
                .count();
            assert_eq!((acc_ood, acc_cc), (fp, cc));
        }
        assert!(c[0].threshold < 0.05);
        assert_eq!(c[7].threshold, 0.6);
        assert!((c[4].threshold - 0.35).abs() < 1e-12);
    }

    #[test]
    fn oscr_equals_auroc_when_all_correct() {
        let id = [0.1, 0.4, 0.35, 0.8];
        let ood = [0.9, 0.4, 0.65, 0.2, 0.7];
        assert_eq!(oscr(&id, &[true; 4], &ood).unwrap(), 0.675);
        assert_eq!(oscr(&id, &[false; 4], &ood).unwrap(), 0.0);
        // Perfect separation: OSCR = accuracy.
        assert_eq!(
            oscr(
                &[0.0, 0.1, 0.2, 0.3],
                &[true, true, false, true],
                &[1.0, 2.0]
            )
            .unwrap(),
            0.75
        );
        // All tied: a single trapezoid from (0,0) to (1, accuracy) = accuracy / 2.
        assert_eq!(
            oscr(&[1.0, 1.0], &[true, false], &[1.0, 1.0, 1.0]).unwrap(),
            0.25
        );
    }

    #[test]
    fn oscr_errors() {
        assert_eq!(
            oscr(&ID, &[true, false], &OOD),
            Err(CalibrateError::LengthMismatch {
                left: "id_scores",
                left_len: 4,
                right: "id_correct",
                right_len: 2
            })
        );
        assert!(matches!(
            oscr(&ID, &CORRECT, &[]),
            Err(CalibrateError::SingleClass { .. })
        ));
        assert!(matches!(
            oscr(&[], &[], &OOD),
            Err(CalibrateError::SingleClass { .. })
        ));
        assert!(matches!(
            oscr_curve(&ID, &CORRECT, &[f64::NAN]),
            Err(CalibrateError::NaN { .. })
        ));
    }
}
