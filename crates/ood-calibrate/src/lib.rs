//! Out-of-distribution (OOD) metrics and threshold calibration on plain arrays of scores.
//!
//! This crate is the evaluation half of candle-ood, kept free of any model or tensor code so
//! it can be reused anywhere (in the spirit of pytorch-ood's fit/score split): you compute one
//! score per sample with whatever model you like, then hand two slices to these functions.
//!
//! It is **for**: ROC curves, AUROC, AUPR-In/AUPR-Out, FPR at 95 % TPR, the detection rate at
//! a fixed ID acceptance rate ([`roc`]), picking a decision threshold on a calibration set
//! ([`threshold`]), the open-set classification rate ([`mod@oscr`]), the combined
//! "low max-softmax OR high reconstruction error" rule ([`rule`]), and a few small helpers
//! (softmax, argmax, confusion matrix: [`classify`]), and the OOD **detectors** that turn a
//! model's outputs (logits, pooled features, reconstruction errors) into such scores, with a
//! pytorch-ood-like fit/score API on plain arrays ([`detectors`]: MSP, MaxLogit, Energy,
//! temperature-scaled MSP, Mahalanobis, KNN, reconstruction error, the combined rule, and a
//! logistic-regression fusion of several of them), and detectors' scores turned into p-values
//! against held-out in-distribution scores and combined ([`pvalue`]: the default score).
//!
//! It is **not**: a model, a data loader, or anything that touches candle tensors; it does no
//! plotting and no file I/O (the public structs derive serde so callers can store them).
//!
//! # Conventions (used by every function)
//!
//! * **Scores are OOD scores: larger means more likely OOD.** For a confidence such as the
//!   max-softmax probability, pass a monotone decreasing transform of it (e.g. `-msp` or
//!   `1 - msp`).
//! * **OOD is the positive class, in-distribution (ID) the negative one**, unless a function
//!   says otherwise ([`aupr_in`] treats ID as positive). So TPR is the fraction of OOD samples
//!   flagged and FPR the fraction of ID samples flagged.
//! * **A sample is flagged OOD when `score > threshold`** (strictly greater); a sample whose score
//!   equals the threshold is accepted as ID. Every threshold this crate returns obeys this.
//! * Thresholds chosen from data lie at the **midpoint between two adjacent distinct scores**
//!   (see [`threshold`] for the end cases and the one exception, [`threshold_at_id_acceptance`],
//!   which returns an exact ID score).
//! * **Ties are grouped**: samples with equal scores always move together, so every curve has
//!   one point per distinct score (plus its start point) and nothing depends on input order.
//! * Bad input is an [`Err`], never a panic: empty inputs, a missing class, NaN or infinite
//!   scores, mismatched lengths and out-of-range parameters each have a [`CalibrateError`].
//! * Rates given as parameters (`TargetTpr(0.95)`, an ID acceptance of `0.99`) are compared with
//!   sample counts using a tolerance of `1e-9` × the count, so that e.g. 95 % of 20 means 19.
//!
//! # Example
//!
//! ```
//! use ood_calibrate::{auroc, choose_threshold, fpr_at_95_tpr, ThresholdRule};
//!
//! // OOD scores (larger = more OOD) of in-distribution and out-of-distribution samples.
//! let id = [0.1, 0.4, 0.35, 0.8];
//! let ood = [0.9, 0.4, 0.65, 0.2, 0.7];
//!
//! // 13.5 of the 20 (OOD, ID) pairs are ordered correctly (the 0.4 tie counts 1/2).
//! assert_eq!(auroc(&id, &ood)?, 0.675);
//! // Flagging all five OOD samples also flags three of the four ID samples.
//! assert_eq!(fpr_at_95_tpr(&id, &ood)?, 0.75);
//!
//! let t = choose_threshold(&id, &ood, ThresholdRule::TargetTpr(0.6))?;
//! assert!((t.value - 0.525).abs() < 1e-12); // midpoint of 0.4 and 0.65
//! assert_eq!((t.tpr, t.fpr), (0.6, 0.25));
//! assert!(t.is_ood(0.6) && !t.is_ood(0.4));
//!
//! // Bad input is an error, not a panic.
//! assert!(auroc(&id, &[]).is_err());
//! assert!(auroc(&[f64::NAN], &ood).is_err());
//! # Ok::<(), ood_calibrate::CalibrateError>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod classify;
pub mod detectors;
pub mod oscr;
pub mod pvalue;
pub mod roc;
pub mod rule;
pub mod threshold;

pub use classify::{argmax, confusion_matrix, max_softmax, softmax};
pub use detectors::{
    standard_detectors, Combined, Detector, Energy, Fused, FusedModel, Knn, Mahalanobis, MaxLogit,
    Msp, Reconstruction, Samples, TemperatureMsp,
};
pub use oscr::{oscr, oscr_curve, OscrPoint};
pub use pvalue::{Combine, Explained, Member, PValueCombination, PValues, Reference};
pub use roc::{
    aupr_in, aupr_out, auroc, detection_rate_at_id_acceptance, fpr_at_95_tpr, fpr_at_tpr,
    ood_metrics, roc_curve, OodMetrics, RocPoint,
};
pub use rule::{CombinedRule, DetectionStats};
pub use threshold::{
    choose_threshold, evaluate_threshold, threshold_at_id_acceptance, Threshold, ThresholdRule,
};

/// Everything that can go wrong in this crate: always a problem with the input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CalibrateError {
    /// An input that needs at least one element has none.
    #[error("{what} is empty")]
    Empty {
        /// Name of the empty argument.
        what: &'static str,
    },
    /// A function that compares ID with OOD samples got only one of the two.
    #[error("{missing} is empty: this needs both ID and OOD samples")]
    SingleClass {
        /// Name of the empty argument (`"id_scores"` or `"ood_scores"`, ...).
        missing: &'static str,
    },
    /// A score is NaN.
    #[error("{what}[{index}] is NaN")]
    NaN {
        /// Name of the argument.
        what: &'static str,
        /// Position of the first NaN.
        index: usize,
    },
    /// A score is +inf or -inf (scores must be finite so every threshold is a finite number).
    #[error("{what}[{index}] = {value} is not finite")]
    NonFinite {
        /// Name of the argument.
        what: &'static str,
        /// Position of the first infinite value.
        index: usize,
        /// The value itself.
        value: f64,
    },
    /// Two arguments that must have one entry per sample differ in length.
    #[error("length mismatch: {left} has {left_len} entries but {right} has {right_len}")]
    LengthMismatch {
        /// Name of the first argument.
        left: &'static str,
        /// Its length.
        left_len: usize,
        /// Name of the second argument.
        right: &'static str,
        /// Its length.
        right_len: usize,
    },
    /// A numeric parameter is outside its allowed range (or NaN).
    #[error("{name} = {value} is out of range: expected {expected}")]
    InvalidParameter {
        /// Name of the parameter.
        name: &'static str,
        /// The value given.
        value: f64,
        /// The allowed range, in words.
        expected: &'static str,
    },
    /// A class index is not below the number of classes.
    #[error("{what}[{index}] = {class} is not below the number of classes {classes}")]
    ClassOutOfRange {
        /// Name of the argument.
        what: &'static str,
        /// Position of the offending entry.
        index: usize,
        /// The class index found.
        class: usize,
        /// The number of classes.
        classes: usize,
    },
    /// An optional input that the call needs was not given.
    #[error("{what} is required here but was not given")]
    MissingInput {
        /// Name of the missing argument.
        what: &'static str,
    },
    /// A flat row-major array's length is not a multiple of its row length.
    #[error("{what} has {len} entries, which is not a multiple of {row_name} = {row_len}")]
    Shape {
        /// Name of the array.
        what: &'static str,
        /// Its length.
        len: usize,
        /// Name of the row length (e.g. `"num_classes"`).
        row_name: &'static str,
        /// The row length.
        row_len: usize,
    },
    /// A dimension differs from the one a detector was fitted with.
    #[error("{what} is {found}, but the detector was fitted with {expected}")]
    DimensionMismatch {
        /// Name of the dimension.
        what: &'static str,
        /// The dimension at fitting time.
        expected: usize,
        /// The dimension given now.
        found: usize,
    },
    /// A detector that needs fitting was used before `fit`.
    #[error("detector {detector} is not fitted: call fit first")]
    NotFitted {
        /// The detector's name.
        detector: String,
    },
    /// A matrix that must be symmetric positive definite is not (numerically).
    #[error("{what} is not positive definite (try a larger ridge / L2 penalty)")]
    NotPositiveDefinite {
        /// Name of the matrix.
        what: &'static str,
    },
}

/// `Result` with [`CalibrateError`].
pub type Result<T, E = CalibrateError> = std::result::Result<T, E>;

/// Relative tolerance used when a rate parameter is compared with a sample count.
pub(crate) const RATE_TOLERANCE: f64 = 1e-9;

/// Checks that `scores` is non-empty and every value is finite.
pub(crate) fn check_scores(what: &'static str, scores: &[f64]) -> Result<()> {
    if scores.is_empty() {
        return Err(CalibrateError::Empty { what });
    }
    check_finite(what, scores)
}

/// Checks that every value is finite (an empty slice passes).
pub(crate) fn check_finite(what: &'static str, scores: &[f64]) -> Result<()> {
    match scores.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) if scores[index].is_nan() => Err(CalibrateError::NaN { what, index }),
        Some(index) => Err(CalibrateError::NonFinite {
            what,
            index,
            value: scores[index],
        }),
    }
}

/// Checks a pair of score arrays that must both be non-empty and finite.
pub(crate) fn check_pair(
    id_name: &'static str,
    id: &[f64],
    ood_name: &'static str,
    ood: &[f64],
) -> Result<()> {
    match (id.is_empty(), ood.is_empty()) {
        (true, true) => {
            return Err(CalibrateError::Empty {
                what: "both ID and OOD scores",
            })
        }
        (true, false) => return Err(CalibrateError::SingleClass { missing: id_name }),
        (false, true) => return Err(CalibrateError::SingleClass { missing: ood_name }),
        (false, false) => {}
    }
    check_finite(id_name, id)?;
    check_finite(ood_name, ood)
}

/// Checks that `value` is a rate in `[0, 1]`.
pub(crate) fn check_rate(name: &'static str, value: f64) -> Result<()> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(CalibrateError::InvalidParameter {
            name,
            value,
            expected: "a rate in [0, 1]",
        })
    }
}

/// Whether `count` out of `total` reaches the fraction `rate` (with [`RATE_TOLERANCE`]).
pub(crate) fn reaches(count: usize, total: usize, rate: f64) -> bool {
    let total = total as f64;
    count as f64 >= rate * total - RATE_TOLERANCE * total.max(1.0)
}

/// The largest finite `f64` strictly below the finite value `x` (`-inf` below `f64::MIN`).
pub(crate) fn next_down(x: f64) -> f64 {
    debug_assert!(x.is_finite());
    if x == 0.0 {
        -f64::from_bits(1)
    } else if x > 0.0 {
        f64::from_bits(x.to_bits() - 1)
    } else {
        f64::from_bits(x.to_bits() + 1)
    }
}

/// A threshold `t` with `lo <= t < hi`, as close to the midpoint as floating point allows.
pub(crate) fn midpoint(lo: f64, hi: f64) -> f64 {
    debug_assert!(lo < hi);
    let m = lo / 2.0 + hi / 2.0;
    if lo <= m && m < hi {
        m
    } else {
        lo
    }
}

/// Scores sorted in decreasing order with `-0.0` folded into `0.0`, each with a flag.
pub(crate) fn sorted_desc(neg: &[f64], pos: &[f64]) -> Vec<(f64, bool)> {
    let mut items: Vec<(f64, bool)> = neg
        .iter()
        .map(|&s| (s + 0.0, false))
        .chain(pos.iter().map(|&s| (s + 0.0, true)))
        .collect();
    items.sort_by(|a, b| b.0.total_cmp(&a.0));
    items
}

#[cfg(test)]
/// Small deterministic generator (xorshift64*) for the brute-force comparisons.
pub(crate) fn test_scores(seed: u64, n: usize, levels: u64) -> Vec<f64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % levels) as f64 / 4.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_down_is_the_previous_float() {
        assert_eq!(next_down(1.0), 1.0 - f64::EPSILON / 2.0);
        assert_eq!(next_down(0.0), -5e-324);
        assert_eq!(next_down(-1.0), -1.0 - f64::EPSILON);
        assert!(next_down(0.1) < 0.1);
    }

    #[test]
    fn midpoint_stays_in_half_open_interval() {
        assert_eq!(midpoint(0.25, 0.5), 0.375);
        assert_eq!(midpoint(-1.0, 1.0), 0.0);
        let hi = f64::from_bits(1.0f64.to_bits() + 1);
        assert_eq!(midpoint(1.0, hi), 1.0);
        assert_eq!(midpoint(f64::MAX / 2.0, f64::MAX), 0.75 * f64::MAX);
        assert_eq!(midpoint(-f64::MAX, f64::MAX), 0.0);
    }

    #[test]
    fn reaches_uses_counts_with_tolerance() {
        assert!(reaches(19, 20, 0.95));
        assert!(!reaches(18, 20, 0.95));
        assert!(reaches(99, 100, 0.99));
        assert!(!reaches(98, 100, 0.99));
        assert!(reaches(0, 5, 0.0));
    }

    #[test]
    fn check_pair_reports_each_problem() {
        assert_eq!(
            check_pair("id_scores", &[], "ood_scores", &[]),
            Err(CalibrateError::Empty {
                what: "both ID and OOD scores"
            })
        );
        assert_eq!(
            check_pair("id_scores", &[1.0], "ood_scores", &[]),
            Err(CalibrateError::SingleClass {
                missing: "ood_scores"
            })
        );
        assert_eq!(
            check_pair("id_scores", &[1.0, f64::INFINITY], "ood_scores", &[1.0]),
            Err(CalibrateError::NonFinite {
                what: "id_scores",
                index: 1,
                value: f64::INFINITY
            })
        );
        assert_eq!(
            check_pair("id_scores", &[1.0], "ood_scores", &[0.0, f64::NAN]),
            Err(CalibrateError::NaN {
                what: "ood_scores",
                index: 1
            })
        );
    }
}
