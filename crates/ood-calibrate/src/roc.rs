//! ROC curve, AUROC, AUPR-In/Out, FPR at a TPR, and the detection rate at an ID acceptance rate.
//!
//! Every function takes `id_scores` and `ood_scores`: one OOD score per sample (larger = more
//! OOD). OOD is the positive class: TPR = fraction of OOD flagged, FPR = fraction of ID flagged,
//! and a sample is flagged when `score > threshold`. Both arrays must be non-empty and finite.

use crate::{check_pair, check_rate, midpoint, next_down, reaches, sorted_desc, Result};
use serde::{Deserialize, Serialize};

/// One point of a ROC curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RocPoint {
    /// Fraction of ID samples flagged (`score > threshold`).
    pub fpr: f64,
    /// Fraction of OOD samples flagged (`score > threshold`).
    pub tpr: f64,
    /// The threshold: a sample is flagged when `score > threshold`.
    pub threshold: f64,
}

/// A ROC curve in sample counts; `neg` are the negatives, `pos` the positives.
pub(crate) struct CountCurve {
    pub n_neg: usize,
    pub n_pos: usize,
    /// Starts at (0, 0) and ends at (n_neg, n_pos); one point per distinct score after the first.
    pub points: Vec<CountPoint>,
}

/// Counts of flagged negatives (`fp`) and positives (`tp`) at `score > threshold`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CountPoint {
    pub fp: usize,
    pub tp: usize,
    pub threshold: f64,
}

impl CountCurve {
    /// Builds the curve of inputs already checked to be non-empty and finite.
    ///
    /// Thresholds: the first point (nothing flagged) sits at the largest score; the point after
    /// flagging every score down to `u` sits at the midpoint of `u` and the next lower distinct
    /// score, or just below `u` (the next smaller `f64`) when `u` is the smallest score.
    pub(crate) fn new(neg: &[f64], pos: &[f64]) -> CountCurve {
        let items = sorted_desc(neg, pos);
        let mut points = Vec::with_capacity(items.len() + 1);
        let (mut fp, mut tp) = (0, 0);
        points.push(CountPoint {
            fp,
            tp,
            threshold: items[0].0,
        });
        let mut i = 0;
        while i < items.len() {
            let value = items[i].0;
            while i < items.len() && items[i].0 == value {
                if items[i].1 {
                    tp += 1;
                } else {
                    fp += 1;
                }
                i += 1;
            }
            let threshold = match items.get(i) {
                Some(&(lower, _)) => midpoint(lower, value),
                None => next_down(value),
            };
            points.push(CountPoint { fp, tp, threshold });
        }
        CountCurve {
            n_neg: neg.len(),
            n_pos: pos.len(),
            points,
        }
    }

    /// Area under the curve by the trapezoid rule, computed exactly in integers.
    fn area(&self) -> f64 {
        let twice: u128 = self
            .points
            .windows(2)
            .map(|w| ((w[1].fp - w[0].fp) as u128) * ((w[1].tp + w[0].tp) as u128))
            .sum();
        twice as f64 / (2 * self.n_neg as u128 * self.n_pos as u128) as f64
    }

    /// Average precision of the positives (sklearn's `average_precision_score`).
    fn average_precision(&self) -> f64 {
        let sum: f64 = self
            .points
            .windows(2)
            .filter(|w| w[1].tp > w[0].tp)
            .map(|w| {
                let p = w[1];
                (p.tp - w[0].tp) as f64 * (p.tp as f64 / (p.tp + p.fp) as f64)
            })
            .sum();
        sum / self.n_pos as f64
    }
}

/// The ROC curve: one point per distinct threshold, from (0, 0) to (1, 1), FPR and TPR
/// non-decreasing, thresholds strictly decreasing.
///
/// All samples with an equal score move together, so there is one point per distinct score
/// (pooled over ID and OOD) plus the starting point (0, 0). Each point's `threshold` reproduces
/// it exactly with the crate's rule (flagged when `score > threshold`): the first point uses the
/// largest score, the others the midpoint between two adjacent distinct scores, and the last
/// (1, 1) the next `f64` below the smallest score. Unlike scikit-learn, no collinear points are
/// dropped and the thresholds are "flagged when `>`" rather than `>=`.
///
/// ```
/// # use ood_calibrate::roc_curve;
/// let roc = roc_curve(&[0.5, 0.5], &[0.5])?; // all tied: just (0,0) and (1,1)
/// assert_eq!(roc.len(), 2);
/// assert_eq!((roc[0].fpr, roc[0].tpr, roc[1].fpr, roc[1].tpr), (0.0, 0.0, 1.0, 1.0));
/// # Ok::<(), ood_calibrate::CalibrateError>(())
/// ```
pub fn roc_curve(id_scores: &[f64], ood_scores: &[f64]) -> Result<Vec<RocPoint>> {
    check_pair("id_scores", id_scores, "ood_scores", ood_scores)?;
    let curve = CountCurve::new(id_scores, ood_scores);
    let (n_id, n_ood) = (curve.n_neg as f64, curve.n_pos as f64);
    Ok(curve
        .points
        .iter()
        .map(|p| RocPoint {
            fpr: p.fp as f64 / n_id,
            tpr: p.tp as f64 / n_ood,
            threshold: p.threshold,
        })
        .collect())
}

/// Area under the ROC curve, by the trapezoid rule over [`roc_curve`].
///
/// Equals the Mann-Whitney statistic: the probability that a random OOD sample scores higher
/// than a random ID sample, ties counting 1/2. 1 is perfect, 0.5 chance, 0 perfectly inverted.
pub fn auroc(id_scores: &[f64], ood_scores: &[f64]) -> Result<f64> {
    check_pair("id_scores", id_scores, "ood_scores", ood_scores)?;
    Ok(CountCurve::new(id_scores, ood_scores).area())
}

/// Area under the precision-recall curve with **OOD as the positive class** ("AUPR-Out"),
/// computed as average precision.
///
/// Uses scikit-learn's `average_precision_score` definition, a step-wise sum without
/// interpolation: `AP = sum_k (R_k - R_{k-1}) * P_k` over the distinct thresholds in decreasing
/// order, where `P_k` and `R_k` are the precision and recall when every sample scoring `>=` the
/// k-th distinct score is flagged (tied samples enter together). Chance level is the OOD fraction.
pub fn aupr_out(id_scores: &[f64], ood_scores: &[f64]) -> Result<f64> {
    check_pair("id_scores", id_scores, "ood_scores", ood_scores)?;
    Ok(CountCurve::new(id_scores, ood_scores).average_precision())
}

/// Area under the precision-recall curve with **ID as the positive class** ("AUPR-In"),
/// computed as average precision on the negated scores (the ID samples with the lowest OOD
/// scores are retrieved first). Same definition as [`aupr_out`]; chance level is the ID
/// fraction.
pub fn aupr_in(id_scores: &[f64], ood_scores: &[f64]) -> Result<f64> {
    check_pair("id_scores", id_scores, "ood_scores", ood_scores)?;
    let neg: Vec<f64> = ood_scores.iter().map(|s| -s).collect();
    let pos: Vec<f64> = id_scores.iter().map(|s| -s).collect();
    Ok(CountCurve::new(&neg, &pos).average_precision())
}

/// Fraction of ID samples flagged at the first ROC point (largest threshold) that flags at
/// least the fraction `tpr` of OOD samples, i.e. the smallest FPR with TPR >= `tpr`.
///
/// `tpr` must lie in `[0, 1]`; `tpr = 0` gives 0.
pub fn fpr_at_tpr(id_scores: &[f64], ood_scores: &[f64], tpr: f64) -> Result<f64> {
    check_pair("id_scores", id_scores, "ood_scores", ood_scores)?;
    check_rate("tpr", tpr)?;
    let curve = CountCurve::new(id_scores, ood_scores);
    let fp = curve
        .points
        .iter()
        .find(|p| reaches(p.tp, curve.n_pos, tpr))
        .map_or(curve.n_neg, |p| p.fp);
    Ok(fp as f64 / curve.n_neg as f64)
}

/// FPR at 95 % TPR: the fraction of ID samples flagged OOD at the largest threshold (the first
/// ROC point when sweeping the threshold down) that flags at least 95 % of the OOD samples.
/// Lower is better. Same as [`fpr_at_tpr`]`(id, ood, 0.95)`.
pub fn fpr_at_95_tpr(id_scores: &[f64], ood_scores: &[f64]) -> Result<f64> {
    fpr_at_tpr(id_scores, ood_scores, 0.95)
}

/// Detection rate at a fixed ID acceptance rate: the fraction of OOD samples flagged by the
/// lowest threshold that still accepts (does not flag) at least the fraction `id_acceptance` of
/// the ID samples, e.g. `0.95`. Higher is better.
///
/// This is the largest TPR on the ROC curve with `1 - FPR >= id_acceptance`. For
/// `id_acceptance > 0` it equals the fraction of OOD scores `> t` with
/// `t = `[`threshold_at_id_acceptance`](crate::threshold_at_id_acceptance)`(id_scores, id_acceptance)`.
/// `id_acceptance` must lie in `[0, 1]`: `1` counts only OOD samples above every ID score, `0`
/// gives 1 (every threshold qualifies, so everything may be flagged).
pub fn detection_rate_at_id_acceptance(
    id_scores: &[f64],
    ood_scores: &[f64],
    id_acceptance: f64,
) -> Result<f64> {
    check_pair("id_scores", id_scores, "ood_scores", ood_scores)?;
    check_rate("id_acceptance", id_acceptance)?;
    let curve = CountCurve::new(id_scores, ood_scores);
    let tp = curve
        .points
        .iter()
        .rev()
        .find(|p| reaches(curve.n_neg - p.fp, curve.n_neg, id_acceptance))
        .map_or(0, |p| p.tp);
    Ok(tp as f64 / curve.n_pos as f64)
}

/// The usual OOD-detection summary of one (ID, OOD) score pair.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OodMetrics {
    /// [`auroc`].
    pub auroc: f64,
    /// [`aupr_in`] (ID positive).
    pub aupr_in: f64,
    /// [`aupr_out`] (OOD positive).
    pub aupr_out: f64,
    /// [`fpr_at_95_tpr`].
    pub fpr_at_95_tpr: f64,
    /// [`detection_rate_at_id_acceptance`] at 95 % ID acceptance.
    pub detection_at_95_id: f64,
    /// [`detection_rate_at_id_acceptance`] at 99 % ID acceptance: the operating point users
    /// get by default (absent from results written before it existed).
    #[serde(default)]
    pub detection_at_99_id: f64,
    /// Number of ID samples.
    pub n_id: usize,
    /// Number of OOD samples.
    pub n_ood: usize,
}

/// All the [`OodMetrics`] at once.
pub fn ood_metrics(id_scores: &[f64], ood_scores: &[f64]) -> Result<OodMetrics> {
    Ok(OodMetrics {
        auroc: auroc(id_scores, ood_scores)?,
        aupr_in: aupr_in(id_scores, ood_scores)?,
        aupr_out: aupr_out(id_scores, ood_scores)?,
        fpr_at_95_tpr: fpr_at_95_tpr(id_scores, ood_scores)?,
        detection_at_95_id: detection_rate_at_id_acceptance(id_scores, ood_scores, 0.95)?,
        detection_at_99_id: detection_rate_at_id_acceptance(id_scores, ood_scores, 0.99)?,
        n_id: id_scores.len(),
        n_ood: ood_scores.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CalibrateError;

    /// The worked example. Sorted by score, decreasing (I = ID, O = OOD):
    ///
    /// ```text
    /// score   0.9  0.8  0.7  0.65  0.4   0.35  0.2  0.1
    /// kind    O    I    O    O     I+O   I     O    I
    /// ```
    const ID: [f64; 4] = [0.1, 0.4, 0.35, 0.8];
    const OOD: [f64; 5] = [0.9, 0.4, 0.65, 0.2, 0.7];

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn roc_curve_of_worked_example() {
        // (fp, tp) after each distinct score: start (0,0); 0.9 -> (0,1); 0.8 -> (1,1);
        // 0.7 -> (1,2); 0.65 -> (1,3); 0.4 (tie, both move) -> (2,4); 0.35 -> (3,4);
        // 0.2 -> (3,5); 0.1 -> (4,5). n_id = 4, n_ood = 5.
        let roc = roc_curve(&ID, &OOD).unwrap();
        let expected = [
            (0, 0, 0.9),
            (0, 1, 0.85),
            (1, 1, 0.75),
            (1, 2, 0.675),
            (1, 3, 0.525),
            (2, 4, 0.375),
            (3, 4, 0.275),
            (3, 5, 0.15),
        ];
        assert_eq!(roc.len(), 9);
        for (p, &(fp, tp, t)) in roc.iter().zip(&expected) {
            assert_eq!(p.fpr, fp as f64 / 4.0);
            assert_eq!(p.tpr, tp as f64 / 5.0);
            assert!(close(p.threshold, t), "{} vs {t}", p.threshold);
        }
        assert_eq!((roc[8].fpr, roc[8].tpr), (1.0, 1.0));
        assert!(roc[8].threshold < 0.1 && roc[8].threshold > 0.1 - 1e-15);
        assert_eq!(roc[0].threshold, 0.9);
    }

    #[test]
    fn roc_thresholds_reproduce_each_point_with_strict_greater() {
        let roc = roc_curve(&ID, &OOD).unwrap();
        for p in &roc {
            let fp = ID.iter().filter(|&&s| s > p.threshold).count();
            let tp = OOD.iter().filter(|&&s| s > p.threshold).count();
            assert_eq!((p.fpr, p.tpr), (fp as f64 / 4.0, tp as f64 / 5.0));
        }
    }

    #[test]
    fn auroc_of_worked_example() {
        // Mann-Whitney: OOD 0.9 beats 4 ID, 0.7 beats 3, 0.65 beats 3, 0.4 beats 2 and ties 1
        // (counts 1/2), 0.2 beats 1: 13.5 of 4 * 5 = 20 pairs -> 0.675.
        // Trapezoid over the ROC: the FP steps (tp before + tp after) / 2 are
        // (1+1)/2 + (3+4)/2 + (4+4)/2 + (5+5)/2 = 13.5 -> 13.5 / 20.
        assert_eq!(auroc(&ID, &OOD).unwrap(), 0.675);
        assert_eq!(auroc(&ID, &OOD).unwrap(), 27.0 / 40.0);
    }

    #[test]
    fn auroc_perfect_inverted_and_tied() {
        assert_eq!(auroc(&[0.0, 0.1, 0.2], &[0.5, 0.9]).unwrap(), 1.0);
        assert_eq!(auroc(&[0.5, 0.9], &[0.0, 0.1, 0.2]).unwrap(), 0.0);
        assert_eq!(auroc(&[0.3, 0.3, 0.3], &[0.3, 0.3]).unwrap(), 0.5);
        let roc = roc_curve(&[0.3, 0.3, 0.3], &[0.3, 0.3]).unwrap();
        assert_eq!(roc.len(), 2);
        assert_eq!((roc[0].fpr, roc[0].tpr, roc[0].threshold), (0.0, 0.0, 0.3));
        assert_eq!((roc[1].fpr, roc[1].tpr), (1.0, 1.0));
        assert!(roc[1].threshold < 0.3);
        // A single tie between otherwise separated sets: 5 of 6 pairs won, 1 tied -> 5.5 / 6.
        assert_eq!(auroc(&[0.0, 0.1, 0.5], &[0.5, 0.9]).unwrap(), 5.5 / 6.0);
    }

    #[test]
    fn auroc_ignores_order_and_signed_zero() {
        let a = auroc(&[0.0, -1.0], &[-0.0, 1.0]).unwrap();
        let b = auroc(&[-1.0, -0.0], &[1.0, 0.0]).unwrap();
        // OOD 1.0 beats both ID; OOD 0 ties ID 0 and beats -1: 3.5 / 4.
        assert_eq!((a, b), (0.875, 0.875));
        assert_eq!(roc_curve(&[0.0, -1.0], &[-0.0, 1.0]).unwrap().len(), 4);
    }

    #[test]
    fn aupr_of_worked_example() {
        // AUPR-Out (OOD positive, n = 5). Recall steps of 1/5 at the distinct scores where an
        // OOD sample enters, with the precision tp / (tp + fp) there:
        //   0.9: 1/1, 0.7: 2/3, 0.65: 3/4, 0.4 (tie): 4/6, 0.2: 5/8
        //   AP = (1 + 2/3 + 3/4 + 2/3 + 5/8) / 5 = (89/24) / 5 = 89/120.
        assert!(close(aupr_out(&ID, &OOD).unwrap(), 89.0 / 120.0));
        // AUPR-In (ID positive, n = 4, scores ascending):
        //   0.1: 1/1, 0.35: 2/3 (0.2 is OOD), 0.4 (tie): 3/5, 0.8: 4/8
        //   AP = (1 + 2/3 + 3/5 + 1/2) / 4 = (83/30) / 4 = 83/120.
        assert!(close(aupr_in(&ID, &OOD).unwrap(), 83.0 / 120.0));
    }

    #[test]
    fn aupr_extremes() {
        assert_eq!(aupr_out(&[0.0, 0.1], &[0.5, 0.9]).unwrap(), 1.0);
        assert_eq!(aupr_in(&[0.0, 0.1], &[0.5, 0.9]).unwrap(), 1.0);
        // All tied: one step to recall 1 at precision = positive fraction.
        assert_eq!(aupr_out(&[1.0, 1.0, 1.0], &[1.0]).unwrap(), 0.25);
        assert_eq!(aupr_in(&[1.0, 1.0, 1.0], &[1.0]).unwrap(), 0.75);
        // Inverted, 1 OOD below 2 ID: precision 1/3 when it enters.
        assert_eq!(aupr_out(&[1.0, 2.0], &[0.0]).unwrap(), 1.0 / 3.0);
    }

    #[test]
    fn fpr_at_95_tpr_hand_case() {
        // 20 OOD scores 1..=20; 95 % of 20 = 19 flagged needs every OOD score >= 2, which flags
        // the ID scores 2.5, 10.5 and 25 (not 1.5, which only enters with the 20th OOD): 3/5.
        let ood: Vec<f64> = (1..=20).map(f64::from).collect();
        let id = [0.5, 1.5, 2.5, 10.5, 25.0];
        assert_eq!(fpr_at_95_tpr(&id, &ood).unwrap(), 0.6);
        // 90 % = 18 flagged: OOD >= 3 flags ID 10.5 and 25: 2/5.
        assert_eq!(fpr_at_tpr(&id, &ood, 0.9).unwrap(), 0.4);
        // 100 % needs OOD 1 too, which also flags ID 1.5: 4/5.
        assert_eq!(fpr_at_tpr(&id, &ood, 1.0).unwrap(), 0.8);
        assert_eq!(fpr_at_tpr(&id, &ood, 0.0).unwrap(), 0.0);
        // Worked example: all 5 OOD need threshold below 0.2, flagging ID 0.8, 0.4, 0.35.
        assert_eq!(fpr_at_95_tpr(&ID, &OOD).unwrap(), 0.75);
    }

    #[test]
    fn detection_rate_hand_case() {
        // Accept >= 95 % of 4 ID = 4 (3.8 rounded up): threshold at 0.8, flags only OOD 0.9.
        assert_eq!(
            detection_rate_at_id_acceptance(&ID, &OOD, 0.95).unwrap(),
            0.2
        );
        // Accept >= 3 of 4 ID: threshold 0.4 (ties accepted), flags OOD 0.9, 0.7, 0.65.
        assert_eq!(
            detection_rate_at_id_acceptance(&ID, &OOD, 0.75).unwrap(),
            0.6
        );
        assert_eq!(
            detection_rate_at_id_acceptance(&ID, &OOD, 0.0).unwrap(),
            1.0
        );
    }

    #[test]
    fn errors_instead_of_panics() {
        assert_eq!(
            auroc(&[1.0], &[]),
            Err(CalibrateError::SingleClass {
                missing: "ood_scores"
            })
        );
        assert_eq!(
            aupr_in(&[], &[1.0]),
            Err(CalibrateError::SingleClass {
                missing: "id_scores"
            })
        );
        assert!(matches!(
            roc_curve(&[], &[]),
            Err(CalibrateError::Empty { .. })
        ));
        assert_eq!(
            aupr_out(&[0.0, f64::NAN], &[1.0]),
            Err(CalibrateError::NaN {
                what: "id_scores",
                index: 1
            })
        );
        assert!(matches!(
            fpr_at_95_tpr(&[0.0], &[f64::NEG_INFINITY]),
            Err(CalibrateError::NonFinite { .. })
        ));
        assert!(matches!(
            fpr_at_tpr(&[0.0], &[1.0], 1.5),
            Err(CalibrateError::InvalidParameter { name: "tpr", .. })
        ));
        assert!(matches!(
            detection_rate_at_id_acceptance(&[0.0], &[1.0], f64::NAN),
            Err(CalibrateError::InvalidParameter { .. })
        ));
        assert!(ood_metrics(&[0.0], &[]).is_err());
    }

    #[test]
    fn ood_metrics_collects_everything() {
        let m = ood_metrics(&ID, &OOD).unwrap();
        assert_eq!(m.auroc, 0.675);
        assert_eq!(m.fpr_at_95_tpr, 0.75);
        assert_eq!(m.detection_at_95_id, 0.2);
        assert!(close(m.aupr_out, 89.0 / 120.0) && close(m.aupr_in, 83.0 / 120.0));
        assert_eq!((m.n_id, m.n_ood), (4, 5));
    }

    #[test]
    fn matches_brute_force_definitions_on_tied_random_data() {
        for seed in 1..40u64 {
            let id = crate::test_scores(seed, 1 + (seed as usize * 7) % 23, 9);
            let ood: Vec<f64> = crate::test_scores(seed + 1000, 1 + (seed as usize * 5) % 19, 9)
                .into_iter()
                .map(|s| s + 0.5)
                .collect();
            // Mann-Whitney.
            let mut wins = 0.0;
            for &o in &ood {
                for &i in &id {
                    wins += if o > i {
                        1.0
                    } else if o == i {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
            let mw = wins / (id.len() * ood.len()) as f64;
            assert!(close(auroc(&id, &ood).unwrap(), mw));
            // Average precision: mean over positives of precision at their own score (>=).
            let ap = |neg: &[f64], pos: &[f64]| {
                pos.iter()
                    .map(|&p| {
                        let tp = pos.iter().filter(|&&s| s >= p).count();
                        let fp = neg.iter().filter(|&&s| s >= p).count();
                        tp as f64 / (tp + fp) as f64
                    })
                    .sum::<f64>()
                    / pos.len() as f64
            };
            assert!(close(aupr_out(&id, &ood).unwrap(), ap(&id, &ood)));
            let (nid, nood): (Vec<f64>, Vec<f64>) = (
                id.iter().map(|s| -s).collect(),
                ood.iter().map(|s| -s).collect(),
            );
            assert!(close(aupr_in(&id, &ood).unwrap(), ap(&nood, &nid)));
            // FPR at 95 % TPR: smallest FPR over all cuts "score >= c" with TPR >= 0.95.
            let need = (0.95 * ood.len() as f64 - 1e-9).ceil() as usize;
            let best = id
                .iter()
                .chain(&ood)
                .filter(|&&c| ood.iter().filter(|&&s| s >= c).count() >= need)
                .map(|&c| id.iter().filter(|&&s| s >= c).count())
                .min()
                .unwrap();
            assert_eq!(
                fpr_at_95_tpr(&id, &ood).unwrap(),
                best as f64 / id.len() as f64
            );
            // Detection rate == OOD fraction above the ID acceptance quantile (acceptance > 0).
            for acc in [0.5, 0.9, 0.95, 1.0] {
                let t = crate::threshold_at_id_acceptance(&id, acc).unwrap();
                let det = ood.iter().filter(|&&s| s > t).count() as f64 / ood.len() as f64;
                assert_eq!(
                    detection_rate_at_id_acceptance(&id, &ood, acc).unwrap(),
                    det
                );
            }
            // Every ROC point is reproduced by its threshold.
            for p in roc_curve(&id, &ood).unwrap() {
                let fp = id.iter().filter(|&&s| s > p.threshold).count();
                let tp = ood.iter().filter(|&&s| s > p.threshold).count();
                assert_eq!(p.fpr, fp as f64 / id.len() as f64);
                assert_eq!(p.tpr, tp as f64 / ood.len() as f64);
            }
        }
    }
}
