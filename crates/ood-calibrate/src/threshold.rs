//! Choosing a decision threshold on a calibration set.
//!
//! A sample is flagged OOD when **`score > value`** (strictly), with OOD scores (larger = more
//! OOD), exactly as everywhere else in the crate.
//!
//! [`choose_threshold`] only considers the ROC points of the calibration scores (see
//! [`roc_curve`](crate::roc_curve)), so the chosen `value` is:
//!
//! * the **midpoint between two adjacent distinct calibration scores** (pooled ID and OOD) in
//!   general, which leaves equal room on both sides for unseen samples;
//! * the largest calibration score when the rule flags nothing;
//! * the next `f64` below the smallest calibration score when the rule flags everything.
//!
//! When several ROC points are equally good, the first one in ROC order wins: the **largest
//! threshold, i.e. the fewest samples flagged**.
//!
//! [`threshold_at_id_acceptance`] needs only ID scores and returns an exact ID score (an
//! empirical quantile) instead; see there.

use crate::roc::CountCurve;
use crate::{check_pair, check_rate, check_scores, next_down, reaches, CalibrateError, Result};
use serde::{Deserialize, Serialize};

/// How [`choose_threshold`] picks a threshold from the calibration ROC curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum ThresholdRule {
    /// Maximise plain accuracy `(flagged OOD + accepted ID) / (n_id + n_ood)` over the pooled
    /// calibration samples (so it depends on the ID/OOD mix of the calibration set).
    BestAccuracy,
    /// Maximise Youden's J = TPR - FPR. Since balanced accuracy is `(TPR + 1 - FPR) / 2 =
    /// (1 + J) / 2`, this is also the **best balanced accuracy** rule, independent of the mix.
    YoudenJ,
    /// Flag at least this fraction of the OOD calibration samples (TPR >= target, in `[0, 1]`)
    /// with as few ID samples flagged as possible (the largest such threshold).
    TargetTpr(f64),
}

impl ThresholdRule {
    /// Same as [`choose_threshold`]`(id_scores, ood_scores, self)`.
    pub fn choose(self, id_scores: &[f64], ood_scores: &[f64]) -> Result<Threshold> {
        choose_threshold(id_scores, ood_scores, self)
    }
}

/// A decision threshold and how it does on the samples it was measured on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    /// Flag a sample as OOD when `score > value`.
    pub value: f64,
    /// Fraction of OOD samples flagged.
    pub tpr: f64,
    /// Fraction of ID samples flagged.
    pub fpr: f64,
    /// Plain accuracy over the pooled samples: `(flagged OOD + accepted ID) / (n_id + n_ood)`.
    pub accuracy: f64,
}

impl Threshold {
    /// Whether `score` is flagged OOD: `score > value`. A NaN score is flagged (fail safe).
    pub fn is_ood(&self, score: f64) -> bool {
        score.is_nan() || score > self.value
    }

    /// Balanced accuracy `(TPR + (1 - FPR)) / 2`, the mean of the per-class accuracies.
    pub fn balanced_accuracy(&self) -> f64 {
        (self.tpr + (1.0 - self.fpr)) / 2.0
    }
}

fn stats(value: f64, fp: usize, tp: usize, n_id: usize, n_ood: usize) -> Threshold {
    Threshold {
        value,
        tpr: tp as f64 / n_ood as f64,
        fpr: fp as f64 / n_id as f64,
        accuracy: (tp + n_id - fp) as f64 / (n_id + n_ood) as f64,
    }
}

/// Picks a threshold on calibration scores with `rule` (see the [module docs](self) for where
/// the value lies and how ties between equally good thresholds are broken).
///
/// The returned `tpr`, `fpr` and `accuracy` are measured on the calibration samples themselves.
pub fn choose_threshold(
    id_scores: &[f64],
    ood_scores: &[f64],
    rule: ThresholdRule,
) -> Result<Threshold> {
    check_pair("id_scores", id_scores, "ood_scores", ood_scores)?;
    if let ThresholdRule::TargetTpr(target) = rule {
        check_rate("target_tpr", target)?;
    }
    let curve = CountCurve::new(id_scores, ood_scores);
    let (n_id, n_ood) = (curve.n_neg, curve.n_pos);
    // `max_by_key` keeps the last maximum; iterate reversed so the first ROC point wins.
    let best = match rule {
        ThresholdRule::BestAccuracy => curve.points.iter().rev().max_by_key(|p| p.tp + n_id - p.fp),
        ThresholdRule::YoudenJ => curve
            .points
            .iter()
            .rev()
            // J * n_id * n_ood, exact in integers.
            .max_by_key(|p| p.tp as i128 * n_id as i128 - p.fp as i128 * n_ood as i128),
        ThresholdRule::TargetTpr(target) => {
            curve.points.iter().find(|p| reaches(p.tp, n_ood, target))
        }
    };
    // Every rule finds a point: the curve is never empty and ends at tp = n_ood.
    let p = best
        .copied()
        .unwrap_or(curve.points[curve.points.len() - 1]);
    Ok(stats(p.threshold, p.fp, p.tp, n_id, n_ood))
}

/// Measures a given threshold (`score > value` is flagged) on a set of ID and OOD scores, e.g.
/// to report a calibrated threshold on the test set.
pub fn evaluate_threshold(id_scores: &[f64], ood_scores: &[f64], value: f64) -> Result<Threshold> {
    check_pair("id_scores", id_scores, "ood_scores", ood_scores)?;
    if value.is_nan() {
        return Err(CalibrateError::InvalidParameter {
            name: "value",
            value,
            expected: "a threshold that is not NaN",
        });
    }
    let fp = id_scores.iter().filter(|&&s| s > value).count();
    let tp = ood_scores.iter().filter(|&&s| s > value).count();
    Ok(stats(value, fp, tp, id_scores.len(), ood_scores.len()))
}

/// The lowest threshold that accepts (does not flag) at least the fraction `acceptance` of the
/// ID scores, for setting a threshold from ID data alone (e.g. a reconstruction-error limit).
///
/// With the ID scores sorted increasingly, `s[0] <= ... <= s[n-1]`, this is the exact score
/// `s[k-1]` with `k = ceil(acceptance * n)` (the "inverted CDF" empirical quantile): flagging
/// `score > s[k-1]` accepts at least `k` ID samples (more when `s[k-1]` is tied). It is an
/// observed score, not a midpoint, because without OOD samples there is no second neighbour to
/// split the gap with. `acceptance = 1` gives the largest ID score; `acceptance = 0` gives the
/// next `f64` below the smallest, flagging every ID sample. `acceptance` must be in `[0, 1]`.
///
/// ```
/// # use ood_calibrate::threshold_at_id_acceptance;
/// let errors = [0.3, 0.1, 0.4, 0.2];
/// assert_eq!(threshold_at_id_acceptance(&errors, 0.75)?, 0.3); // 3 of 4 are <= 0.3
/// assert_eq!(threshold_at_id_acceptance(&errors, 0.99)?, 0.4);
/// # Ok::<(), ood_calibrate::CalibrateError>(())
/// ```
pub fn threshold_at_id_acceptance(id_scores: &[f64], acceptance: f64) -> Result<f64> {
    check_scores("id_scores", id_scores)?;
    check_rate("acceptance", acceptance)?;
    let mut sorted = id_scores.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    // Smallest k with reaches(k, n, acceptance).
    let k = (0..=n).find(|&k| reaches(k, n, acceptance)).unwrap_or(n);
    Ok(if k == 0 {
        next_down(sorted[0] + 0.0)
    } else {
        sorted[k - 1] + 0.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand case with 6 ID and 2 OOD, so accuracy and Youden's J disagree. Decreasing:
    ///
    /// ```text
    /// score  3.0  2.5  2.25  2.0  1.5  1.0  0.5  0.0
    /// kind   O    I    I     O    I    I    I    I
    /// ```
    ///
    /// ROC points (fp, tp) and thresholds: P0 (0,0) 3.0; P1 (0,1) 2.75; P2 (1,1) 2.375;
    /// P3 (2,1) 2.125; P4 (2,2) 1.75; P5 (3,2) 1.25; P6 (4,2) 0.75; P7 (5,2) 0.25;
    /// P8 (6,2) just below 0.0.
    /// Correct counts tp + 6 - fp: 6, 7, 6, 5, 6, 5, 4, 3, 2 -> best P1.
    /// J = tp/2 - fp/6: 0, 1/2, 1/3, 1/6, 2/3, 1/2, 1/3, 1/6, 0 -> best P4.
    const ID: [f64; 6] = [0.0, 0.5, 1.0, 1.5, 2.25, 2.5];
    const OOD: [f64; 2] = [2.0, 3.0];

    #[test]
    fn best_accuracy_hand_case() {
        let t = choose_threshold(&ID, &OOD, ThresholdRule::BestAccuracy).unwrap();
        assert_eq!(
            t,
            Threshold {
                value: 2.75,
                tpr: 0.5,
                fpr: 0.0,
                accuracy: 0.875
            }
        );
        assert_eq!(t.balanced_accuracy(), 0.75);
    }

    #[test]
    fn youden_hand_case() {
        let t = ThresholdRule::YoudenJ.choose(&ID, &OOD).unwrap();
        assert_eq!(
            t,
            Threshold {
                value: 1.75,
                tpr: 1.0,
                fpr: 1.0 / 3.0,
                accuracy: 0.75
            }
        );
        assert!((t.balanced_accuracy() - 5.0 / 6.0).abs() < 1e-15);
    }

    #[test]
    fn target_tpr_hand_case() {
        let at = |r| choose_threshold(&ID, &OOD, ThresholdRule::TargetTpr(r)).unwrap();
        // >= 0.4 of 2 OOD = 1 flagged: first at P1.
        assert_eq!((at(0.4).value, at(0.4).tpr, at(0.4).fpr), (2.75, 0.5, 0.0));
        assert_eq!(at(0.5).value, 2.75);
        // > 0.5 needs both OOD: P4.
        assert_eq!((at(0.51).value, at(0.51).tpr), (1.75, 1.0));
        assert_eq!((at(0.95).value, at(0.95).fpr), (1.75, 1.0 / 3.0));
        assert_eq!(at(1.0).value, 1.75);
        // Nothing needs to be flagged: the largest score, which flags nothing.
        assert_eq!(
            at(0.0),
            Threshold {
                value: 3.0,
                tpr: 0.0,
                fpr: 0.0,
                accuracy: 0.75
            }
        );
    }

    #[test]
    fn ties_prefer_the_larger_threshold() {
        // Balanced 2 vs 2: P1 (0,1) and P3 (1,2) both have 3 correct and J = 1/2.
        // Decreasing: 4 O, 3 I, 2 O, 1 I -> P1 threshold 3.5, P3 threshold 1.5.
        let (id, ood) = ([1.0, 3.0], [2.0, 4.0]);
        for rule in [ThresholdRule::BestAccuracy, ThresholdRule::YoudenJ] {
            let t = choose_threshold(&id, &ood, rule).unwrap();
            assert_eq!((t.value, t.tpr, t.fpr, t.accuracy), (3.5, 0.5, 0.0, 0.75));
        }
    }

    #[test]
    fn all_tied_calibration_set() {
        let t = choose_threshold(&[1.0, 1.0], &[1.0], ThresholdRule::TargetTpr(1.0)).unwrap();
        assert_eq!((t.tpr, t.fpr), (1.0, 1.0));
        assert_eq!(t.value, next_down(1.0));
        assert!(t.is_ood(1.0));
        let t = choose_threshold(&[1.0, 1.0], &[1.0], ThresholdRule::BestAccuracy).unwrap();
        assert_eq!((t.value, t.tpr, t.fpr), (1.0, 0.0, 0.0));
        assert!(!t.is_ood(1.0));
    }

    #[test]
    fn chosen_thresholds_reproduce_their_stats() {
        for rule in [
            ThresholdRule::BestAccuracy,
            ThresholdRule::YoudenJ,
            ThresholdRule::TargetTpr(0.7),
        ] {
            let t = choose_threshold(&ID, &OOD, rule).unwrap();
            assert_eq!(evaluate_threshold(&ID, &OOD, t.value).unwrap(), t);
        }
    }

    #[test]
    fn is_ood_uses_strict_greater_and_flags_nan() {
        let t = Threshold {
            value: 0.5,
            tpr: 0.0,
            fpr: 0.0,
            accuracy: 0.0,
        };
        assert!(t.is_ood(0.6));
        assert!(!t.is_ood(0.5));
        assert!(!t.is_ood(0.4));
        assert!(t.is_ood(f64::NAN));
    }

    #[test]
    fn evaluate_threshold_hand_case() {
        // score > 1.0: ID 1.5, 2.25, 2.5 and both OOD.
        let t = evaluate_threshold(&ID, &OOD, 1.0).unwrap();
        assert_eq!((t.tpr, t.fpr, t.accuracy), (1.0, 0.5, 5.0 / 8.0));
        assert!(evaluate_threshold(&ID, &OOD, f64::NAN).is_err());
        assert!(evaluate_threshold(&ID, &[], 1.0).is_err());
    }

    #[test]
    fn id_acceptance_quantile() {
        // Sorted: 0.0 0.5 1.0 1.5 2.25 2.5.
        assert_eq!(threshold_at_id_acceptance(&ID, 0.5).unwrap(), 1.0); // k = 3
        assert_eq!(threshold_at_id_acceptance(&ID, 0.6).unwrap(), 1.5); // k = ceil(3.6) = 4
        assert_eq!(threshold_at_id_acceptance(&ID, 0.99).unwrap(), 2.5);
        assert_eq!(threshold_at_id_acceptance(&ID, 1.0).unwrap(), 2.5);
        assert_eq!(threshold_at_id_acceptance(&ID, 0.0).unwrap(), -5e-324);
        // 95 % of 20 is exactly 19 despite 0.95 * 20 rounding.
        let twenty: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(threshold_at_id_acceptance(&twenty, 0.95).unwrap(), 19.0);
        assert_eq!(threshold_at_id_acceptance(&twenty, 0.951).unwrap(), 20.0);
    }

    #[test]
    fn threshold_errors() {
        assert!(matches!(
            choose_threshold(&ID, &OOD, ThresholdRule::TargetTpr(1.5)),
            Err(CalibrateError::InvalidParameter {
                name: "target_tpr",
                ..
            })
        ));
        assert!(matches!(
            choose_threshold(&ID, &[], ThresholdRule::YoudenJ),
            Err(CalibrateError::SingleClass {
                missing: "ood_scores"
            })
        ));
        assert!(matches!(
            choose_threshold(&[], &OOD, ThresholdRule::BestAccuracy),
            Err(CalibrateError::SingleClass {
                missing: "id_scores"
            })
        ));
        assert!(matches!(
            choose_threshold(&[f64::NAN], &OOD, ThresholdRule::BestAccuracy),
            Err(CalibrateError::NaN { index: 0, .. })
        ));
        assert_eq!(
            threshold_at_id_acceptance(&[], 0.9),
            Err(CalibrateError::Empty { what: "id_scores" })
        );
        assert!(threshold_at_id_acceptance(&[1.0, f64::NAN], 0.9).is_err());
        assert!(threshold_at_id_acceptance(&[1.0], -0.1).is_err());
    }

    #[test]
    fn rule_serde_shape() {
        let json = serde_json::to_string(&ThresholdRule::TargetTpr(0.95)).unwrap();
        assert_eq!(json, r#"{"TargetTpr":0.95}"#);
        let back: ThresholdRule = serde_json::from_str(r#""YoudenJ""#).unwrap();
        assert_eq!(back, ThresholdRule::YoudenJ);
    }

    #[test]
    fn brute_force_optimum_on_random_data() {
        // The chosen threshold is optimal among all cuts "score > c" for c at every score and
        // below the minimum.
        for seed in 1..30u64 {
            let id = crate::test_scores(seed, 3 + seed as usize % 11, 7);
            let ood: Vec<f64> = crate::test_scores(seed + 99, 2 + seed as usize % 5, 7)
                .into_iter()
                .map(|s| s + 0.75)
                .collect();
            let mut cuts: Vec<f64> = id.iter().chain(&ood).copied().collect();
            cuts.push(-1.0);
            let all: Vec<Threshold> = cuts
                .iter()
                .map(|&c| evaluate_threshold(&id, &ood, c).unwrap())
                .collect();
            let acc = choose_threshold(&id, &ood, ThresholdRule::BestAccuracy).unwrap();
            let best_acc = all.iter().map(|t| t.accuracy).fold(0.0, f64::max);
            assert_eq!(acc.accuracy, best_acc);
            assert_eq!(evaluate_threshold(&id, &ood, acc.value).unwrap(), acc);
            let j = choose_threshold(&id, &ood, ThresholdRule::YoudenJ).unwrap();
            let best_j = all.iter().map(|t| t.tpr - t.fpr).fold(-1.0, f64::max);
            assert!((j.tpr - j.fpr - best_j).abs() < 1e-12);
            let target = choose_threshold(&id, &ood, ThresholdRule::TargetTpr(0.8)).unwrap();
            let best_fpr = all
                .iter()
                .filter(|t| t.tpr >= 0.8 - 1e-12)
                .map(|t| t.fpr)
                .fold(1.0, f64::min);
            assert_eq!(target.fpr, best_fpr);
            assert!(target.tpr >= 0.8 - 1e-12);
        }
    }
}
