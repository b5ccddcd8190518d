//! The combined decision rule of the report: **OOD when the max-softmax probability is below
//! its threshold OR the reconstruction error is above its threshold.**
//!
//! Both comparisons are strict, matching the crate-wide "flag when `score > threshold`" rule
//! with the OOD scores `-msp` and `recon_error`: an input exactly at a threshold is accepted.

use crate::threshold::{choose_threshold, threshold_at_id_acceptance, ThresholdRule};
use crate::{check_finite, check_pair, check_rate, CalibrateError, Result};
use serde::{Deserialize, Serialize};

/// OOD when `msp < msp_threshold` or (if set) `recon_error > recon_threshold`.
///
/// ```
/// # use ood_calibrate::CombinedRule;
/// let rule = CombinedRule { msp_threshold: 0.7, recon_threshold: Some(0.05) };
/// assert!(rule.is_ood(0.6, 0.01)); // unsure classifier
/// assert!(rule.is_ood(0.99, 0.2)); // confident but badly reconstructed
/// assert!(!rule.is_ood(0.7, 0.05)); // exactly at both thresholds: accepted
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CombinedRule {
    /// Flag when the max-softmax probability is strictly below this.
    pub msp_threshold: f64,
    /// Flag when the reconstruction error is strictly above this; `None` for models without a
    /// decoder (the reconstruction error is then ignored).
    pub recon_threshold: Option<f64>,
}

/// How a detector does on labelled ID and OOD samples (OOD positive).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DetectionStats {
    /// Fraction of OOD samples flagged.
    pub tpr: f64,
    /// Fraction of ID samples flagged.
    pub fpr: f64,
    /// Plain accuracy over the pooled samples.
    pub accuracy: f64,
    /// `(tpr + 1 - fpr) / 2`.
    pub balanced_accuracy: f64,
}

impl CombinedRule {
    /// A rule that looks at the max-softmax probability only.
    pub fn msp_only(msp_threshold: f64) -> Self {
        CombinedRule {
            msp_threshold,
            recon_threshold: None,
        }
    }

    /// Whether a sample is OOD: `msp < msp_threshold`, or `recon_error > recon_threshold` when
    /// that is set (otherwise `recon_error` is ignored; pass anything, e.g. `0.0`).
    ///
    /// Fail safe: a NaN `msp`, or a NaN `recon_error` while the reconstruction test is on, is
    /// flagged OOD.
    pub fn is_ood(&self, msp: f64, recon_error: f64) -> bool {
        let unsure = msp.is_nan() || msp < self.msp_threshold;
        let unlike = self
            .recon_threshold
            .is_some_and(|t| recon_error.is_nan() || recon_error > t);
        unsure || unlike
    }

    /// Calibrates a rule on a calibration set.
    ///
    /// * `msp_threshold`: [`choose_threshold`] with `msp_rule` on the OOD score `-msp` of
    ///   `id_msp` (ID) and `ood_msp` (OOD), then negated back: `-msp > t` is exactly
    ///   `msp < -t`, so the threshold's calibration statistics carry over with no rounding.
    ///   (`-msp` orders samples like `1 - msp`, so any rule picks the same split; it lies at
    ///   the midpoint of two adjacent distinct MSP values.) `TargetTpr(r)` is the fraction of
    ///   OOD samples the MSP test alone must flag.
    /// * `recon_threshold`: `None` when `id_recon` is `None`; otherwise
    ///   [`threshold_at_id_acceptance`]`(id_recon, recon_id_acceptance)`, the exact ID
    ///   reconstruction error below or at which at least the fraction `recon_id_acceptance` of
    ///   the ID calibration samples lie (e.g. `0.99`: at most ~1 % of ID samples are flagged by
    ///   reconstruction alone). Only ID errors are used, so this does not depend on which OOD
    ///   data the calibration set contains. `recon_id_acceptance` must be in `[0, 1]` (it is
    ///   checked even without `id_recon`).
    ///
    /// The two thresholds are chosen independently; the combined rule flags at least what each
    /// test flags, so its ID acceptance is at most that of either test. Use [`Self::evaluate`]
    /// to measure the combination.
    pub fn calibrate(
        id_msp: &[f64],
        ood_msp: &[f64],
        msp_rule: ThresholdRule,
        id_recon: Option<&[f64]>,
        recon_id_acceptance: f64,
    ) -> Result<CombinedRule> {
        check_pair("id_msp", id_msp, "ood_msp", ood_msp)?;
        check_rate("recon_id_acceptance", recon_id_acceptance)?;
        let neg = |v: &[f64]| v.iter().map(|m| -m).collect::<Vec<f64>>();
        let msp = choose_threshold(&neg(id_msp), &neg(ood_msp), msp_rule)?;
        let recon_threshold = id_recon
            .map(|errors| threshold_at_id_acceptance(errors, recon_id_acceptance))
            .transpose()?;
        Ok(CombinedRule {
            msp_threshold: -msp.value + 0.0,
            recon_threshold,
        })
    }

    /// Measures the rule on labelled samples: `*_msp` are max-softmax probabilities, `*_recon`
    /// reconstruction errors (one per sample, same order), needed only when `recon_threshold`
    /// is set and otherwise ignored.
    pub fn evaluate(
        &self,
        id_msp: &[f64],
        id_recon: Option<&[f64]>,
        ood_msp: &[f64],
        ood_recon: Option<&[f64]>,
    ) -> Result<DetectionStats> {
        check_pair("id_msp", id_msp, "ood_msp", ood_msp)?;
        let flagged = |msp: &[f64],
                       recon: Option<&[f64]>,
                       msp_name: &'static str,
                       recon_name: &'static str|
         -> Result<usize> {
            if self.recon_threshold.is_none() {
                return Ok(msp.iter().filter(|&&m| self.is_ood(m, 0.0)).count());
            }
            let recon = recon.ok_or(CalibrateError::MissingInput { what: recon_name })?;
            if recon.len() != msp.len() {
                return Err(CalibrateError::LengthMismatch {
                    left: msp_name,
                    left_len: msp.len(),
                    right: recon_name,
                    right_len: recon.len(),
                });
            }
            check_finite(recon_name, recon)?;
            Ok(msp
                .iter()
                .zip(recon)
                .filter(|(&m, &r)| self.is_ood(m, r))
                .count())
        };
        let fp = flagged(id_msp, id_recon, "id_msp", "id_recon")?;
        let tp = flagged(ood_msp, ood_recon, "ood_msp", "ood_recon")?;
        let (n_id, n_ood) = (id_msp.len(), ood_msp.len());
        let (tpr, fpr) = (tp as f64 / n_ood as f64, fp as f64 / n_id as f64);
        Ok(DetectionStats {
            tpr,
            fpr,
            accuracy: (tp + n_id - fp) as f64 / (n_id + n_ood) as f64,
            balanced_accuracy: (tpr + (1.0 - fpr)) / 2.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: CombinedRule = CombinedRule {
        msp_threshold: 0.6875,
        recon_threshold: Some(0.375),
    };

    #[test]
    fn is_ood_truth_table() {
        assert!(RULE.is_ood(0.5, 0.0)); // low confidence
        assert!(RULE.is_ood(0.99, 0.5)); // high error
        assert!(RULE.is_ood(0.5, 0.5)); // both
        assert!(!RULE.is_ood(0.99, 0.1)); // neither
        assert!(!RULE.is_ood(0.6875, 0.375)); // exactly at both thresholds
        assert!(RULE.is_ood(f64::NAN, 0.0));
        assert!(RULE.is_ood(0.99, f64::NAN));
        let msp_only = CombinedRule::msp_only(0.6875);
        assert!(!msp_only.is_ood(0.99, 1e9));
        assert!(!msp_only.is_ood(0.99, f64::NAN));
        assert!(msp_only.is_ood(0.5, 0.0));
    }

    /// Calibration set. OOD score -msp, decreasing (I = ID, O = OOD):
    ///
    /// ```text
    /// msp    0.25  0.5   0.625  0.75  0.875  1.0
    /// kind   O     I+O   O      I     I      I
    /// ```
    ///
    /// ROC (fp, tp) on -msp: (0,0); 0.25 -> (0,1); 0.5 -> (1,2); 0.625 -> (1,3); 0.75 -> (2,3);
    /// 0.875 -> (3,3); 1.0 -> (4,3). Correct counts tp + 4 - fp: 4, 5, 5, 6, 5, 4, 3: best
    /// after 0.625, threshold on -msp at the midpoint of -0.625 and -0.75 = -0.6875, so
    /// msp_threshold = 0.6875.
    const ID_MSP: [f64; 4] = [1.0, 0.75, 0.5, 0.875];
    const OOD_MSP: [f64; 3] = [0.25, 0.625, 0.5];
    const ID_RECON: [f64; 4] = [0.5, 0.125, 0.25, 0.375];

    #[test]
    fn calibrate_hand_case() {
        // Recon errors sorted 0.125 0.25 0.375 0.5: 75 % acceptance -> 3rd = 0.375.
        let rule = CombinedRule::calibrate(
            &ID_MSP,
            &OOD_MSP,
            ThresholdRule::BestAccuracy,
            Some(&ID_RECON),
            0.75,
        )
        .unwrap();
        assert_eq!(rule, RULE);
        // 99 % of 4 -> all 4 -> 0.5.
        let rule = CombinedRule::calibrate(
            &ID_MSP,
            &OOD_MSP,
            ThresholdRule::BestAccuracy,
            Some(&ID_RECON),
            0.99,
        )
        .unwrap();
        assert_eq!(rule.recon_threshold, Some(0.5));
        // TargetTpr(1/3): flag >= 1 OOD -> after 0.25: midpoint of -0.5 and -0.25.
        let rule =
            CombinedRule::calibrate(&ID_MSP, &OOD_MSP, ThresholdRule::TargetTpr(0.3), None, 0.99)
                .unwrap();
        assert_eq!(rule, CombinedRule::msp_only(0.375));
        // YoudenJ: J = tp/3 - fp/4 -> after 0.625: 1 - 1/4 = 3/4, the best.
        let rule =
            CombinedRule::calibrate(&ID_MSP, &OOD_MSP, ThresholdRule::YoudenJ, None, 0.99).unwrap();
        assert_eq!(rule.msp_threshold, 0.6875);
    }

    #[test]
    fn calibrated_msp_threshold_reproduces_choose_threshold() {
        let neg = |v: &[f64]| v.iter().map(|m| -m).collect::<Vec<f64>>();
        let t =
            choose_threshold(&neg(&ID_MSP), &neg(&OOD_MSP), ThresholdRule::BestAccuracy).unwrap();
        let rule = CombinedRule::msp_only(-t.value);
        let stats = rule.evaluate(&ID_MSP, None, &OOD_MSP, None).unwrap();
        assert_eq!(
            (stats.tpr, stats.fpr, stats.accuracy),
            (t.tpr, t.fpr, t.accuracy)
        );
        assert_eq!(
            (stats.tpr, stats.fpr, stats.accuracy),
            (1.0, 0.25, 6.0 / 7.0)
        );
    }

    #[test]
    fn evaluate_hand_case() {
        // ID: msp 1.0 / err 0.5 -> flagged (error); 0.75 / 0.125 -> kept; 0.5 -> flagged
        // (msp); 0.875 / 0.375 -> kept (error equals the threshold). fp = 2.
        // OOD: 0.25 -> flagged (msp); 0.9 / 0.5 -> flagged (error); 0.95 / 0.25 -> kept. tp = 2.
        let s = RULE
            .evaluate(
                &ID_MSP,
                Some(&ID_RECON),
                &[0.25, 0.9, 0.95],
                Some(&[0.0, 0.5, 0.25]),
            )
            .unwrap();
        assert_eq!(
            s,
            DetectionStats {
                tpr: 2.0 / 3.0,
                fpr: 0.5,
                accuracy: 4.0 / 7.0,
                balanced_accuracy: (2.0 / 3.0 + 0.5) / 2.0,
            }
        );
    }

    #[test]
    fn rule_errors() {
        assert_eq!(
            RULE.evaluate(&ID_MSP, None, &OOD_MSP, None),
            Err(CalibrateError::MissingInput { what: "id_recon" })
        );
        assert!(matches!(
            RULE.evaluate(&ID_MSP, Some(&[0.1]), &OOD_MSP, Some(&[0.1, 0.2, 0.3])),
            Err(CalibrateError::LengthMismatch {
                left: "id_msp",
                right: "id_recon",
                ..
            })
        ));
        assert!(matches!(
            CombinedRule::calibrate(&ID_MSP, &[], ThresholdRule::YoudenJ, None, 0.99),
            Err(CalibrateError::SingleClass { missing: "ood_msp" })
        ));
        assert!(matches!(
            CombinedRule::calibrate(&ID_MSP, &OOD_MSP, ThresholdRule::YoudenJ, None, 1.01),
            Err(CalibrateError::InvalidParameter { .. })
        ));
        assert!(matches!(
            CombinedRule::calibrate(
                &ID_MSP,
                &OOD_MSP,
                ThresholdRule::YoudenJ,
                Some(&[f64::NAN]),
                0.99
            ),
            Err(CalibrateError::NaN { .. })
        ));
    }

    #[test]
    fn serde_round_trip() {
        let json = serde_json::to_string(&RULE).unwrap();
        assert_eq!(json, r#"{"msp_threshold":0.6875,"recon_threshold":0.375}"#);
        assert_eq!(serde_json::from_str::<CombinedRule>(&json).unwrap(), RULE);
        let json = serde_json::to_string(&CombinedRule::msp_only(0.5)).unwrap();
        assert_eq!(json, r#"{"msp_threshold":0.5,"recon_threshold":null}"#);
        assert_eq!(
            serde_json::from_str::<CombinedRule>(&json).unwrap(),
            CombinedRule::msp_only(0.5)
        );
    }
}
