//! OOD detectors on plain arrays, with a fit/score API in the spirit of pytorch-ood.
//!
//! A detector turns what a model produced for a batch of inputs ([`Samples`]: logits, pooled
//! trunk features, reconstruction errors) into one **OOD score per sample, larger = more likely
//! OOD**, ready for the metrics of this crate ([`auroc`](crate::auroc), ...). Nothing here
//! touches a model or a tensor: run the model elsewhere and pass the flattened outputs.
//!
//! | detector | uses | needs `fit` | score |
//! |---|---|---|---|
//! | [`Msp`] | logits | no | `-max softmax` |
//! | [`MaxLogit`] | logits | no | `-max logit` |
//! | [`Energy`] | logits | no | `-T logsumexp(logits / T)` |
//! | [`TemperatureMsp`] | logits | no | `-max softmax(logits / T)` (ODIN's scoring half) |
//! | [`Mahalanobis`] | features, labels | yes | min over classes of the squared Mahalanobis distance (tied covariance) |
//! | [`Knn`] | features | yes | distance to the k-th nearest L2-normalised training feature |
//! | [`Reconstruction`] | recon_error | no | the reconstruction error |
//! | [`Combined`] | logits, recon_error | no | `1` if the [`CombinedRule`](crate::rule::CombinedRule) flags the sample, else `0` |
//! | [`Fused`] | whatever its base detectors use | base detectors: `fit`; fusion: [`Fused::fit_fused`] | logit of a logistic regression over standardised base scores |
//!
//! Conventions: detectors that need fitting are fitted on **in-distribution training data**
//! ([`Detector::fit`]) and return [`CalibrateError::NotFitted`] from `score` before that. A
//! batch with no samples scores to an empty vector. Inputs are validated: inconsistent
//! lengths, missing parts (e.g. no features for [`Knn`]), NaN or infinite values, a feature
//! dimension that differs from the fitted one, all give an [`Err`], never a panic.
//!
//! ```
//! use ood_calibrate::{auroc, Detector, Energy, Knn, Samples};
//!
//! // Two classes, logits (n x 2) and 2-D features (n x 2).
//! let train_features = [1.0, 0.1, 0.9, -0.1, 0.1, 1.0, -0.1, 0.9];
//! let labels = [0, 0, 1, 1];
//! let train = Samples { features: &train_features, feature_dim: 2, ..Default::default() };
//! let mut knn = Knn::new(1);
//! knn.fit(&train, &labels)?;
//!
//! let logits = [5.0, 0.0, 0.1, 0.0]; // one confident sample, one unsure
//! let features = [1.0, 0.0, -1.0, -1.0]; // one like the training data, one not
//! let batch = Samples::new(&logits, &features, &[], 2, 2)?;
//! let energy = Energy { temperature: 1.0 }.score(&batch)?;
//! let knn_scores = knn.score(&batch)?;
//! assert!(energy[1] > energy[0] && knn_scores[1] > knn_scores[0]);
//! # let _ = auroc;
//! # Ok::<(), ood_calibrate::CalibrateError>(())
//! ```

mod fused;
mod knn;
pub(crate) mod linalg;
mod logits;
mod mahalanobis;
mod reconstruction;
mod samples;
#[cfg(test)]
mod test_support;

pub use fused::{Fused, FusedModel};
pub use knn::Knn;
pub use logits::{Energy, MaxLogit, Msp, TemperatureMsp};
pub use mahalanobis::Mahalanobis;
pub use reconstruction::{Combined, Reconstruction};
pub use samples::Samples;

use crate::{CalibrateError, Result};

/// An OOD detector: optionally fitted on in-distribution training data, then scores batches.
///
/// **Scores are OOD scores: larger = more likely OOD**, one per sample, in input order, and
/// finite for valid input.
pub trait Detector {
    /// A short display name, e.g. `"Energy(T=1)"`.
    fn name(&self) -> String;

    /// Fits the detector on in-distribution training samples and their class labels (one per
    /// sample). Detectors that need no fitting accept anything and do nothing (the default).
    fn fit(&mut self, _id_train: &Samples<'_>, _labels: &[usize]) -> Result<()> {
        Ok(())
    }

    /// One OOD score per sample (larger = more OOD). Errors with
    /// [`CalibrateError::NotFitted`] when the detector needs fitting and was not fitted.
    fn score(&self, samples: &Samples<'_>) -> Result<Vec<f64>>;
}

/// The detectors of the benchmark, in this order, unfitted: `MSP`, `MaxLogit`, `Energy(T=1)`,
/// `Mahalanobis`, `KNN(k=50)`, `Reconstruction`. Fit each on the ID training data, then score.
pub fn standard_detectors() -> Vec<Box<dyn Detector>> {
    vec![
        Box::new(Msp),
        Box::new(MaxLogit),
        Box::new(Energy { temperature: 1.0 }),
        Box::new(Mahalanobis::new()),
        Box::new(Knn::new(50)),
        Box::new(Reconstruction),
    ]
}

/// The state a detector learnt in `fit`, or [`CalibrateError::NotFitted`] naming it.
fn fitted<'a, T>(state: &'a Option<T>, detector: &dyn Detector) -> Result<&'a T> {
    state.as_ref().ok_or_else(|| CalibrateError::NotFitted {
        detector: detector.name(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::test_support::Rng;
    use crate::roc::auroc;
    use crate::rule::CombinedRule;

    /// A toy model output: 3 classes, `d` = 8 features, and a reconstruction error. ID: peaked
    /// logits, features near one of three directions, small errors. OOD: flat logits, features
    /// along a fourth direction, large errors.
    fn toy(rng: &mut Rng, n: usize, ood: bool) -> (Vec<f32>, Vec<f32>, Vec<f64>, Vec<usize>) {
        let (c, d) = (3, 8);
        let (mut l, mut f, mut r, mut y) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let class = i % c;
            for j in 0..c {
                let peak = if !ood && j == class { 6.0 } else { 0.0 };
                l.push((peak + 0.5 * rng.gauss()) as f32);
            }
            let dir = if ood { 5 } else { class };
            for j in 0..d {
                let centre = if j == dir { 4.0 } else { 0.0 };
                f.push((centre + 0.5 * rng.gauss()) as f32);
            }
            r.push(if ood { 0.5 } else { 0.1 } + 0.02 * rng.gauss().abs());
            y.push(class);
        }
        (l, f, r, y)
    }

    #[test]
    fn standard_detectors_contract() {
        let mut rng = Rng(42);
        let (tl, tf, tr, ty) = toy(&mut rng, 150, false);
        let (il, if_, ir, _) = toy(&mut rng, 60, false);
        let (ol, of, or, _) = toy(&mut rng, 45, true);
        let train = Samples::new(&tl, &tf, &tr, 3, 8).unwrap();
        let id = Samples::new(&il, &if_, &ir, 3, 8).unwrap();
        let ood = Samples::new(&ol, &of, &or, 3, 8).unwrap();
        let mut dets = standard_detectors();
        let names: Vec<String> = dets.iter().map(|d| d.name()).collect();
        assert_eq!(
            names,
            [
                "MSP",
                "MaxLogit",
                "Energy(T=1)",
                "Mahalanobis",
                "KNN(k=50)",
                "Reconstruction"
            ]
        );
        for d in &mut dets {
            d.fit(&train, &ty).unwrap();
            separates(d.as_ref(), &id, &ood);
            assert_eq!(d.score(&Samples::default()).unwrap(), Vec::<f64>::new());
        }
        // The same contract for the other detectors.
        let rule = CombinedRule {
            msp_threshold: 0.8,
            recon_threshold: Some(0.3),
        };
        let mut fused = Fused::new(standard_detectors());
        fused.fit(&train, &ty).unwrap();
        fused.fit_fused(&id, &ood).unwrap();
        let mut others: Vec<Box<dyn Detector>> = vec![
            Box::new(TemperatureMsp {
                temperature: 1000.0,
            }),
            Box::new(Energy { temperature: 10.0 }),
            Box::new(Combined(rule)),
            Box::new(Knn::new(5).with_max_bank(60, 1)),
            Box::new(fused),
        ];
        let (il, if_, ir, _) = toy(&mut rng, 60, false);
        let (ol, of, or, _) = toy(&mut rng, 45, true);
        let id = Samples::new(&il, &if_, &ir, 3, 8).unwrap();
        let ood = Samples::new(&ol, &of, &or, 3, 8).unwrap();
        for d in &mut others {
            if !d.name().starts_with("Fused") {
                d.fit(&train, &ty).unwrap();
            }
            separates(d.as_ref(), &id, &ood);
        }
    }

    /// The contract on the toy sets: one finite score per sample, ID below OOD (AUROC > 0.9).
    fn separates(d: &dyn Detector, id: &Samples<'_>, ood: &Samples<'_>) {
        let a = d.score(id).unwrap();
        let b = d.score(ood).unwrap();
        assert_eq!((a.len(), b.len()), (60, 45), "{}", d.name());
        assert!(a.iter().chain(&b).all(|v| v.is_finite()), "{}", d.name());
        let auc = auroc(&a, &b).unwrap();
        assert!(auc > 0.9, "{}: AUROC {auc}", d.name());
    }
}
