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
//! | [`Combined`] | logits, recon_error | no | `1` if the [`CombinedRule`] flags the sample, else `0` |
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

use crate::classify::max_softmax;
use crate::rule::CombinedRule;
use crate::{check_finite, CalibrateError, Result};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// Samples
// ---------------------------------------------------------------------------------------------

/// What a model produced for a batch of `n` inputs, as flat row-major arrays.
///
/// Every part may be **empty when not available** (e.g. `recon_error` for a model without a
/// decoder, or `logits` when only features are scored); a detector that needs a missing part
/// returns [`CalibrateError::MissingInput`]. The non-empty parts must agree on `n`: see
/// [`Samples::validate`] (every detector calls it) or build with the checking [`Samples::new`].
/// `Default` gives an empty batch, handy with struct-update syntax.
#[derive(Debug, Clone, Copy, Default)]
pub struct Samples<'a> {
    /// `n × num_classes` logits, row-major.
    pub logits: &'a [f32],
    /// `n × feature_dim` features (the trunk's pooled features), row-major.
    pub features: &'a [f32],
    /// `n` reconstruction errors; empty when there is no decoder.
    pub recon_error: &'a [f64],
    /// Length of a row of `logits` (must be > 0 when `logits` is non-empty).
    pub num_classes: usize,
    /// Length of a row of `features` (must be > 0 when `features` is non-empty).
    pub feature_dim: usize,
}

impl<'a> Samples<'a> {
    /// Builds and [validates](Self::validate) a batch.
    pub fn new(
        logits: &'a [f32],
        features: &'a [f32],
        recon_error: &'a [f64],
        num_classes: usize,
        feature_dim: usize,
    ) -> Result<Self> {
        let samples = Samples {
            logits,
            features,
            recon_error,
            num_classes,
            feature_dim,
        };
        samples.validate()?;
        Ok(samples)
    }

    /// Number of samples `n`: the row count of the first non-empty part among `logits`,
    /// `features`, `recon_error` (0 when all are empty). Meaningful once [`Self::validate`]
    /// has passed.
    pub fn len(&self) -> usize {
        if !self.logits.is_empty() && self.num_classes > 0 {
            self.logits.len() / self.num_classes
        } else if !self.features.is_empty() && self.feature_dim > 0 {
            self.features.len() / self.feature_dim
        } else {
            self.recon_error.len()
        }
    }

    /// Whether the batch has no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks the shapes: a non-empty `logits` (`features`) needs `num_classes > 0`
    /// (`feature_dim > 0`) and a length that is a multiple of it; the non-empty parts must
    /// have the same number of rows. Values are not checked here (each detector checks the
    /// parts it reads for NaN and infinities).
    pub fn validate(&self) -> Result<()> {
        let mut rows: Vec<(&'static str, usize)> = Vec::with_capacity(3);
        for (what, data_len, row_name, row_len) in [
            ("logits", self.logits.len(), "num_classes", self.num_classes),
            (
                "features",
                self.features.len(),
                "feature_dim",
                self.feature_dim,
            ),
        ] {
            if data_len == 0 {
                continue;
            }
            if row_len == 0 {
                return Err(CalibrateError::InvalidParameter {
                    name: row_name,
                    value: 0.0,
                    expected: "> 0 when the corresponding array is not empty",
                });
            }
            if data_len % row_len != 0 {
                return Err(CalibrateError::Shape {
                    what,
                    len: data_len,
                    row_name,
                    row_len,
                });
            }
            rows.push((
                if what == "logits" {
                    "logits rows"
                } else {
                    "features rows"
                },
                data_len / row_len,
            ));
        }
        if !self.recon_error.is_empty() {
            rows.push(("recon_error", self.recon_error.len()));
        }
        if let Some(&(left, left_len)) = rows.first() {
            if let Some(&(right, right_len)) = rows.iter().find(|r| r.1 != left_len) {
                return Err(CalibrateError::LengthMismatch {
                    left,
                    left_len,
                    right,
                    right_len,
                });
            }
        }
        Ok(())
    }

    /// Row `i` of `logits`. Panics if out of range (as slice indexing does).
    pub fn logits_row(&self, i: usize) -> &'a [f32] {
        &self.logits[i * self.num_classes..(i + 1) * self.num_classes]
    }

    /// Row `i` of `features`. Panics if out of range (as slice indexing does).
    pub fn feature_row(&self, i: usize) -> &'a [f32] {
        &self.features[i * self.feature_dim..(i + 1) * self.feature_dim]
    }

    /// Validates and checks that `logits` are present (unless the batch is empty) and finite.
    fn need_logits(&self) -> Result<()> {
        self.validate()?;
        if self.logits.is_empty() && !self.is_empty() {
            return Err(CalibrateError::MissingInput { what: "logits" });
        }
        check_finite_f32("logits", self.logits)
    }

    /// Checks the logits as [`Self::need_logits`] does, then scores each row with `score_row`.
    fn score_logit_rows(&self, score_row: impl Fn(&[f32]) -> f64) -> Result<Vec<f64>> {
        self.need_logits()?;
        Ok((0..self.len())
            .map(|i| score_row(self.logits_row(i)))
            .collect())
    }

    /// Validates and checks that `features` are present (unless the batch is empty) and finite.
    fn need_features(&self) -> Result<()> {
        self.validate()?;
        if self.features.is_empty() && !self.is_empty() {
            return Err(CalibrateError::MissingInput { what: "features" });
        }
        check_finite_f32("features", self.features)
    }

    /// Validates and checks that `recon_error` is present (unless the batch is empty) and
    /// finite.
    fn need_recon(&self) -> Result<()> {
        self.validate()?;
        if self.recon_error.is_empty() && !self.is_empty() {
            return Err(CalibrateError::MissingInput {
                what: "recon_error",
            });
        }
        check_finite("recon_error", self.recon_error)
    }
}

/// Checks that every value is finite (flat index in the error).
fn check_finite_f32(what: &'static str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) if values[index].is_nan() => Err(CalibrateError::NaN { what, index }),
        Some(index) => Err(CalibrateError::NonFinite {
            what,
            index,
            value: f64::from(values[index]),
        }),
    }
}

fn check_temperature(temperature: f64) -> Result<()> {
    if temperature.is_finite() && temperature > 0.0 {
        Ok(())
    } else {
        Err(CalibrateError::InvalidParameter {
            name: "temperature",
            value: temperature,
            expected: "a positive finite number",
        })
    }
}

fn check_labels(samples: &Samples<'_>, labels: &[usize]) -> Result<()> {
    if labels.len() != samples.len() {
        return Err(CalibrateError::LengthMismatch {
            left: "labels",
            left_len: labels.len(),
            right: "id_train",
            right_len: samples.len(),
        });
    }
    if samples.num_classes > 0 {
        if let Some(index) = labels.iter().position(|&c| c >= samples.num_classes) {
            return Err(CalibrateError::ClassOutOfRange {
                what: "labels",
                index,
                class: labels[index],
                classes: samples.num_classes,
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The trait
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Logit-based detectors
// ---------------------------------------------------------------------------------------------

/// Maximum softmax probability baseline (Hendrycks & Gimpel): score = `-max softmax(logits)`,
/// in `[-1, -1/num_classes]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Msp;

impl Detector for Msp {
    fn name(&self) -> String {
        "MSP".into()
    }

    fn score(&self, samples: &Samples<'_>) -> Result<Vec<f64>> {
        samples.score_logit_rows(|row| -max_softmax(row))
    }
}

/// Maximum logit (Hendrycks et al. 2022): score = `-max logit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MaxLogit;

impl Detector for MaxLogit {
    fn name(&self) -> String {
        "MaxLogit".into()
    }

    fn score(&self, samples: &Samples<'_>) -> Result<Vec<f64>> {
        samples.score_logit_rows(|row| -f64::from(max_f32(row)))
    }
}

fn max_f32(row: &[f32]) -> f32 {
    row.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Energy score (Liu et al. 2020): score = `-T · logsumexp(logits / T)`, the free energy,
/// computed stably in `f64` as `-(m + T ln Σ exp((x - m) / T))` with `m` the max logit. ID
/// samples have low energy. `temperature` must be positive and finite (checked by `score`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Energy {
    /// Temperature `T > 0`; the usual choice is `1`.
    pub temperature: f64,
}

impl Default for Energy {
    fn default() -> Self {
        Energy { temperature: 1.0 }
    }
}

/// `(m, Σ exp((x - m) / T))` with `m` the row's max: the stable pieces of a softmax at
/// temperature `T` (the sum is at least 1, so finite input gives finite results).
fn shifted_exp_sum(row: &[f32], t: f64) -> (f64, f64) {
    let m = f64::from(max_f32(row));
    let sum = row.iter().map(|&x| ((f64::from(x) - m) / t).exp()).sum();
    (m, sum)
}

/// `T · logsumexp(row / T)`, stable (finite for finite input).
fn scaled_logsumexp(row: &[f32], t: f64) -> f64 {
    let (m, sum) = shifted_exp_sum(row, t);
    m + t * sum.ln()
}

impl Detector for Energy {
    fn name(&self) -> String {
        format!("Energy(T={})", self.temperature)
    }

    fn score(&self, samples: &Samples<'_>) -> Result<Vec<f64>> {
        check_temperature(self.temperature)?;
        samples.score_logit_rows(|row| -scaled_logsumexp(row, self.temperature))
    }
}

/// Temperature-scaled MSP: score = `-max softmax(logits / T)`, computed stably in `f64`.
///
/// This is the **scoring half of ODIN** (Liang et al. 2018, who use a large `T` such as
/// `1000`). ODIN's other half, the input perturbation `x - ε · sign(-∇ₓ log S(x; T))`, needs
/// the model's gradients and is done where the model lives: **ODIN = `TemperatureMsp` applied
/// to the logits of the perturbed inputs.** With `T = 1` this equals [`Msp`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TemperatureMsp {
    /// Temperature `T > 0` (ODIN: `1000`).
    pub temperature: f64,
}

impl Default for TemperatureMsp {
    fn default() -> Self {
        TemperatureMsp {
            temperature: 1000.0,
        }
    }
}

impl Detector for TemperatureMsp {
    fn name(&self) -> String {
        format!("TempMSP(T={})", self.temperature)
    }

    fn score(&self, samples: &Samples<'_>) -> Result<Vec<f64>> {
        let t = self.temperature;
        check_temperature(t)?;
        // The largest probability is exp(0) / sum.
        samples.score_logit_rows(|row| -1.0 / shifted_exp_sum(row, t).1)
    }
}

// ---------------------------------------------------------------------------------------------
// Reconstruction and the combined rule
// ---------------------------------------------------------------------------------------------

/// Reconstruction error of an autoencoder head: score = `recon_error` (which must be given).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Reconstruction;

impl Detector for Reconstruction {
    fn name(&self) -> String {
        "Reconstruction".into()
    }

    fn score(&self, samples: &Samples<'_>) -> Result<Vec<f64>> {
        samples.need_recon()?;
        Ok(samples.recon_error.to_vec())
    }
}

/// The calibrated [`CombinedRule`] as a detector: score = `1.0` when the rule flags the sample
/// (max-softmax of the logits below its threshold, or reconstruction error above its
/// threshold), else `0.0`.
///
/// This is a **binary score**: its ROC curve has a single interior point (the rule's own
/// TPR/FPR), so its AUROC is the balanced accuracy of the rule, not comparable with that of a
/// continuous score. `recon_error` is needed only when the rule has a reconstruction
/// threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Combined(pub CombinedRule);

impl Detector for Combined {
    fn name(&self) -> String {
        "Combined".into()
    }

    fn score(&self, samples: &Samples<'_>) -> Result<Vec<f64>> {
        samples.need_logits()?;
        let rule = self.0;
        let with_recon = rule.recon_threshold.is_some();
        if with_recon {
            samples.need_recon()?;
        }
        Ok((0..samples.len())
            .map(|i| {
                let msp = max_softmax(samples.logits_row(i));
                let recon = if with_recon {
                    samples.recon_error[i]
                } else {
                    0.0
                };
                if rule.is_ood(msp, recon) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Small dense linear algebra (f64, row-major)
// ---------------------------------------------------------------------------------------------

/// Cholesky factor `L` (lower triangular, row-major `n × n`) with `a = L Lᵀ`, reading only the
/// lower triangle of the symmetric `a`; `None` when `a` is not (numerically) positive definite.
pub(crate) fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    debug_assert_eq!(a.len(), n * n);
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let dot: f64 = l[i * n..i * n + j]
                .iter()
                .zip(&l[j * n..j * n + j])
                .map(|(x, y)| x * y)
                .sum();
            let s = a[i * n + j] - dot;
            if i == j {
                if !(s > 0.0 && s.is_finite()) {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// Solves `L y = b` in place (forward substitution), `L` from [`cholesky`].
pub(crate) fn forward_substitute(l: &[f64], n: usize, b: &mut [f64]) {
    for i in 0..n {
        let dot: f64 = l[i * n..i * n + i]
            .iter()
            .zip(&b[..i])
            .map(|(x, y)| x * y)
            .sum();
        b[i] = (b[i] - dot) / l[i * n + i];
    }
}

/// Solves `Lᵀ x = b` in place (back substitution), `L` from [`cholesky`].
pub(crate) fn back_substitute_transposed(l: &[f64], n: usize, b: &mut [f64]) {
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in i + 1..n {
            s -= l[k * n + i] * b[k];
        }
        b[i] = s / l[i * n + i];
    }
}

/// Solves `a x = b` for symmetric positive definite `a` (Cholesky).
fn solve_spd(a: &[f64], n: usize, b: &[f64], what: &'static str) -> Result<Vec<f64>> {
    let l = cholesky(a, n).ok_or(CalibrateError::NotPositiveDefinite { what })?;
    let mut x = b.to_vec();
    forward_substitute(&l, n, &mut x);
    back_substitute_transposed(&l, n, &mut x);
    Ok(x)
}

// ---------------------------------------------------------------------------------------------
// Mahalanobis
// ---------------------------------------------------------------------------------------------

/// Mahalanobis distance to class-conditional Gaussians with a shared (tied) covariance (Lee et
/// al. 2018, without input preprocessing or layer ensembling).
///
/// `fit` computes the mean `μ_c` of the features of each class present in `labels` and the
/// tied covariance `Σ = (1/N) Σᵢ (xᵢ - μ_{yᵢ})(xᵢ - μ_{yᵢ})ᵀ` (maximum likelihood, as
/// scikit-learn's `EmpiricalCovariance` used by the paper), then adds the ridge
/// `ridge · trace(Σ)/d` to the diagonal (`ridge · 1` when the trace is 0) and factors it by
/// Cholesky in `f64`. `score` = `min_c (x - μ_c)ᵀ Σ⁻¹ (x - μ_c)`, the **squared** distance to
/// the nearest class, computed as `‖L⁻¹x - L⁻¹μ_c‖²` (one triangular solve per sample).
///
/// Labels may skip classes (a class without samples is ignored); when the training samples
/// give `num_classes > 0`, labels must be below it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mahalanobis {
    /// Relative ridge added to the covariance diagonal, times `trace/d` (default `1e-6`).
    pub ridge: f64,
    fitted: Option<MahalanobisFit>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct MahalanobisFit {
    dim: usize,
    /// Cholesky factor of the regularised covariance, `dim × dim` row-major.
    chol: Vec<f64>,
    /// Class index and `L⁻¹ μ_c` for each class seen in training.
    whitened_means: Vec<(usize, Vec<f64>)>,
    /// Class index and mean, for inspection.
    means: Vec<(usize, Vec<f64>)>,
}

impl Default for Mahalanobis {
    fn default() -> Self {
        Self::new()
    }
}

impl Mahalanobis {
    /// Unfitted, with the default ridge `1e-6`.
    pub fn new() -> Self {
        Self::with_ridge(1e-6)
    }

    /// Unfitted, with the given relative ridge (`>= 0`, checked by `fit`).
    pub fn with_ridge(ridge: f64) -> Self {
        Mahalanobis {
            ridge,
            fitted: None,
        }
    }

    /// Whether `fit` has succeeded.
    pub fn is_fitted(&self) -> bool {
        self.fitted.is_some()
    }

    /// The fitted class means as `(class, mean)` pairs, in class order; `None` before `fit`.
    pub fn class_means(&self) -> Option<&[(usize, Vec<f64>)]> {
        self.fitted.as_ref().map(|f| f.means.as_slice())
    }
}

impl Detector for Mahalanobis {
    fn name(&self) -> String {
        "Mahalanobis".into()
    }

    fn fit(&mut self, id_train: &Samples<'_>, labels: &[usize]) -> Result<()> {
        if !(self.ridge.is_finite() && self.ridge >= 0.0) {
            return Err(CalibrateError::InvalidParameter {
                name: "ridge",
                value: self.ridge,
                expected: "a finite number >= 0",
            });
        }
        id_train.need_features()?;
        let n = id_train.len();
        if n == 0 {
            return Err(CalibrateError::Empty { what: "id_train" });
        }
        check_labels(id_train, labels)?;
        let d = id_train.feature_dim;
        let classes = labels.iter().max().map_or(0, |&m| m + 1);
        let mut sums = vec![vec![0.0f64; d]; classes];
        let mut counts = vec![0usize; classes];
        for (i, &c) in labels.iter().enumerate() {
            counts[c] += 1;
            for (s, &x) in sums[c].iter_mut().zip(id_train.feature_row(i)) {
                *s += f64::from(x);
            }
        }
        for (s, &count) in sums.iter_mut().zip(&counts) {
            if count > 0 {
                s.iter_mut().for_each(|v| *v /= count as f64);
            }
        }
        let means = sums;

        // Upper triangle of Σ (centred scatter), mirrored afterwards.
        let mut cov = vec![0.0f64; d * d];
        let mut centred = vec![0.0f64; d];
        for (i, &c) in labels.iter().enumerate() {
            for ((z, &x), &m) in centred
                .iter_mut()
                .zip(id_train.feature_row(i))
                .zip(&means[c])
            {
                *z = f64::from(x) - m;
            }
            for r in 0..d {
                let zr = centred[r];
                for (acc, &zc) in cov[r * d + r..(r + 1) * d].iter_mut().zip(&centred[r..]) {
                    *acc += zr * zc;
                }
            }
        }
        let inv_n = 1.0 / n as f64;
        for r in 0..d {
            for c in r..d {
                let v = cov[r * d + c] * inv_n;
                cov[r * d + c] = v;
                cov[c * d + r] = v;
            }
        }
        let trace: f64 = (0..d).map(|r| cov[r * d + r]).sum();
        let scale = if trace > 0.0 { trace / d as f64 } else { 1.0 };
        let ridge = self.ridge * scale;
        for r in 0..d {
            cov[r * d + r] += ridge;
        }
        let chol = cholesky(&cov, d).ok_or(CalibrateError::NotPositiveDefinite {
            what: "the tied feature covariance",
        })?;
        let mut whitened_means = Vec::new();
        let mut kept_means = Vec::new();
        for (c, mean) in means.into_iter().enumerate() {
            if counts[c] == 0 {
                continue;
            }
            let mut w = mean.clone();
            forward_substitute(&chol, d, &mut w);
            whitened_means.push((c, w));
            kept_means.push((c, mean));
        }
        self.fitted = Some(MahalanobisFit {
            dim: d,
            chol,
            whitened_means,
            means: kept_means,
        });
        Ok(())
    }

    fn score(&self, samples: &Samples<'_>) -> Result<Vec<f64>> {
        let fit = fitted(&self.fitted, self)?;
        samples.need_features()?;
        if samples.is_empty() {
            return Ok(Vec::new());
        }
        let d = fit.dim;
        if samples.feature_dim != d {
            return Err(CalibrateError::DimensionMismatch {
                what: "feature_dim",
                expected: d,
                found: samples.feature_dim,
            });
        }
        let mut y = vec![0.0f64; d];
        Ok((0..samples.len())
            .map(|i| {
                for (v, &x) in y.iter_mut().zip(samples.feature_row(i)) {
                    *v = f64::from(x);
                }
                forward_substitute(&fit.chol, d, &mut y);
                fit.whitened_means
                    .iter()
                    .map(|(_, m)| y.iter().zip(m).map(|(a, b)| (a - b) * (a - b)).sum::<f64>())
                    .fold(f64::INFINITY, f64::min)
            })
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// KNN
// ---------------------------------------------------------------------------------------------

/// Deep nearest neighbours (Sun et al. 2022): score = Euclidean distance from the
/// L2-normalised feature to its **k-th nearest** L2-normalised training feature.
///
/// `fit` stores the normalised training features (labels are ignored), optionally subsampled
/// to at most `max_bank` rows by a deterministic stride: with `n` rows and `m = max_bank < n`,
/// row `(seed + ⌊i n / m⌋) mod n` for `i = 0..m`. A zero feature vector stays zero.
///
/// `score` is an exact brute-force search: candidate neighbours are ranked by
/// `‖b‖² - 2 q·b` with `f32` dot products in cache-sized blocks (a 4-query register tile
/// against each bank row, a running top-k per query), then the k candidates' distances are
/// recomputed in `f64` as `sqrt(Σ (qᵢ - bᵢ)²)` and the largest is returned. Queries are split
/// over `threads` worker threads (`0`: all available cores); results do not depend on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Knn {
    /// Which neighbour's distance is the score (`>= 1`, at most the bank size).
    pub k: usize,
    /// Keep at most this many training rows (`None`: all).
    pub max_bank: Option<usize>,
    /// Offset of the subsampling stride.
    pub seed: u64,
    /// Worker threads for `score` (`0`: `std::thread::available_parallelism`).
    pub threads: usize,
    bank: Option<KnnBank>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct KnnBank {
    dim: usize,
    /// Row stride: `dim` rounded up to a multiple of [`LANES`] (zero padded).
    stride: usize,
    rows: usize,
    /// Normalised rows, `rows × stride`.
    data: Vec<f32>,
    /// Squared norm of each stored row (1, or 0 for a zero feature).
    sq_norms: Vec<f32>,
}

const LANES: usize = 8;
/// Queries per register tile.
const TILE: usize = 4;
/// Bank rows per cache block.
const BANK_BLOCK: usize = 256;
/// Queries per outer block (the bank block is reused across them).
const QUERY_BLOCK: usize = 512;

impl Knn {
    /// Unfitted, keeping the whole training set, all cores.
    pub fn new(k: usize) -> Self {
        Knn {
            k,
            max_bank: None,
            seed: 0,
            threads: 0,
            bank: None,
        }
    }

    /// Keeps at most `max_bank` training rows (deterministic stride with offset `seed`).
    pub fn with_max_bank(mut self, max_bank: usize, seed: u64) -> Self {
        self.max_bank = Some(max_bank);
        self.seed = seed;
        self
    }

    /// Sets the number of worker threads of `score` (`0`: all available cores).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Whether `fit` has succeeded.
    pub fn is_fitted(&self) -> bool {
        self.bank.is_some()
    }

    /// Number of stored training rows (0 before `fit`).
    pub fn bank_len(&self) -> usize {
        self.bank.as_ref().map_or(0, |b| b.rows)
    }
}

/// Writes `row / ‖row‖` (computed in f64) into `out[..row.len()]`, zeros after; returns the
/// squared norm of what was written.
fn normalise_into(row: &[f32], out: &mut [f32]) -> f32 {
    let norm = row
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    for (o, &x) in out.iter_mut().zip(row) {
        *o = (f64::from(x) * inv) as f32;
    }
    out[row.len()..].iter_mut().for_each(|o| *o = 0.0);
    out.iter().map(|&x| x * x).sum()
}

/// Dot products of the `TILE` query rows `q` (each `stride` long) with one bank row `b`.
#[inline]
fn dot_tile(q: &[&[f32]; TILE], b: &[f32]) -> [f32; TILE] {
    let mut acc = [[0.0f32; LANES]; TILE];
    for (c, b8) in b.chunks_exact(LANES).enumerate() {
        let o = c * LANES;
        for (a, qr) in acc.iter_mut().zip(q) {
            let q8 = &qr[o..o + LANES];
            for l in 0..LANES {
                a[l] += q8[l] * b8[l];
            }
        }
    }
    acc.map(|a| a.iter().sum())
}

/// Running k smallest keys with their bank indices.
struct TopK {
    keys: Vec<f32>,
    idx: Vec<u32>,
    worst: usize,
}

impl TopK {
    fn new(k: usize) -> Self {
        TopK {
            keys: vec![f32::INFINITY; k],
            idx: vec![u32::MAX; k],
            worst: 0,
        }
    }

    #[inline]
    fn bound(&self) -> f32 {
        self.keys[self.worst]
    }

    fn insert(&mut self, key: f32, j: u32) {
        self.keys[self.worst] = key;
        self.idx[self.worst] = j;
        let mut w = 0;
        for (i, &k) in self.keys.iter().enumerate() {
            if k > self.keys[w] {
                w = i;
            }
        }
        self.worst = w;
    }
}

impl KnnBank {
    fn row(&self, j: usize) -> &[f32] {
        &self.data[j * self.stride..(j + 1) * self.stride]
    }

    /// k-th neighbour distances of `queries` (normalised, `stride` per row).
    fn kth_distances(&self, queries: &[f32], k: usize) -> Vec<f64> {
        let stride = self.stride;
        let nq = queries.len() / stride;
        let zero = vec![0.0f32; stride];
        let mut out = Vec::with_capacity(nq);
        for q0 in (0..nq).step_by(QUERY_BLOCK) {
            let q1 = (q0 + QUERY_BLOCK).min(nq);
            let mut tops: Vec<TopK> = (q0..q1).map(|_| TopK::new(k)).collect();
            for b0 in (0..self.rows).step_by(BANK_BLOCK) {
                let b1 = (b0 + BANK_BLOCK).min(self.rows);
                for t0 in (q0..q1).step_by(TILE) {
                    let tile: [&[f32]; TILE] = std::array::from_fn(|r| {
                        let qi = t0 + r;
                        if qi < q1 {
                            &queries[qi * stride..(qi + 1) * stride]
                        } else {
                            &zero[..]
                        }
                    });
                    let live = (q1 - t0).min(TILE);
                    for j in b0..b1 {
                        let dots = dot_tile(&tile, self.row(j));
                        let nb = self.sq_norms[j];
                        for r in 0..live {
                            let key = nb - 2.0 * dots[r];
                            let top = &mut tops[t0 + r - q0];
                            if key < top.bound() {
                                top.insert(key, j as u32);
                            }
                        }
                    }
                }
            }
            for (qi, top) in (q0..q1).zip(&tops) {
                let q = &queries[qi * stride..(qi + 1) * stride];
                let kth = top
                    .idx
                    .iter()
                    .map(|&j| {
                        self.row(j as usize)
                            .iter()
                            .zip(q)
                            .map(|(&b, &a)| {
                                let diff = f64::from(a) - f64::from(b);
                                diff * diff
                            })
                            .sum::<f64>()
                            .sqrt()
                    })
                    .fold(0.0f64, f64::max);
                out.push(kth);
            }
        }
        out
    }
}

impl Detector for Knn {
    fn name(&self) -> String {
        format!("KNN(k={})", self.k)
    }

    /// Stores the normalised training features; `labels` are ignored (any length).
    fn fit(&mut self, id_train: &Samples<'_>, _labels: &[usize]) -> Result<()> {
        id_train.need_features()?;
        let n = id_train.len();
        if n == 0 {
            return Err(CalibrateError::Empty { what: "id_train" });
        }
        let rows = match self.max_bank {
            Some(0) => {
                return Err(CalibrateError::InvalidParameter {
                    name: "max_bank",
                    value: 0.0,
                    expected: ">= 1",
                })
            }
            Some(m) => m.min(n),
            None => n,
        };
        if self.k == 0 || self.k > rows {
            return Err(CalibrateError::InvalidParameter {
                name: "k",
                value: self.k as f64,
                expected: "between 1 and the number of stored training rows",
            });
        }
        if rows > u32::MAX as usize {
            return Err(CalibrateError::InvalidParameter {
                name: "max_bank",
                value: rows as f64,
                expected: "at most u32::MAX rows",
            });
        }
        let dim = id_train.feature_dim;
        let stride = dim.div_ceil(LANES) * LANES;
        let mut data = vec![0.0f32; rows * stride];
        let mut sq_norms = Vec::with_capacity(rows);
        let start = (self.seed % n as u64) as usize;
        for (i, out) in data.chunks_exact_mut(stride).enumerate() {
            let src = if rows == n {
                i
            } else {
                (start + (i as u128 * n as u128 / rows as u128) as usize) % n
            };
            sq_norms.push(normalise_into(id_train.feature_row(src), out));
        }
        self.bank = Some(KnnBank {
            dim,
            stride,
            rows,
            data,
            sq_norms,
        });
        Ok(())
    }

    fn score(&self, samples: &Samples<'_>) -> Result<Vec<f64>> {
        let bank = fitted(&self.bank, self)?;
        samples.need_features()?;
        let nq = samples.len();
        if nq == 0 {
            return Ok(Vec::new());
        }
        if samples.feature_dim != bank.dim {
            return Err(CalibrateError::DimensionMismatch {
                what: "feature_dim",
                expected: bank.dim,
                found: samples.feature_dim,
            });
        }
        let k = self.k;
        if k == 0 || k > bank.rows {
            return Err(CalibrateError::InvalidParameter {
                name: "k",
                value: k as f64,
                expected: "between 1 and the number of stored training rows",
            });
        }
        let stride = bank.stride;
        let mut queries = vec![0.0f32; nq * stride];
        for (i, out) in queries.chunks_exact_mut(stride).enumerate() {
            normalise_into(samples.feature_row(i), out);
        }
        let threads = if self.threads == 0 {
            std::thread::available_parallelism().map_or(1, |t| t.get())
        } else {
            self.threads
        };
        // Enough queries per thread to amortise streaming the bank.
        let threads = threads.min(nq.div_ceil(64)).max(1);
        if threads == 1 {
            return Ok(bank.kth_distances(&queries, k));
        }
        let per = nq.div_ceil(threads) * stride;
        let parts: Vec<Vec<f64>> = std::thread::scope(|s| {
            let handles: Vec<_> = queries
                .chunks(per)
                .map(|chunk| s.spawn(move || bank.kth_distances(chunk, k)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("KNN worker thread panicked"))
                .collect()
        });
        Ok(parts.concat())
    }
}

// ---------------------------------------------------------------------------------------------
// Fused
// ---------------------------------------------------------------------------------------------

/// A logistic regression over the standardised scores of several base detectors.
///
/// Workflow: fit the base detectors on ID training data (the caller, or [`Detector::fit`] of
/// `Fused`, which fits every base on `(id_train, labels)` and forgets the regression), then
/// [`Fused::fit_fused`] on a **calibration set only** (ID label 0, OOD label 1), then score.
/// The score is the regression's logit `b + Σ wⱼ (sⱼ - meanⱼ) / stdⱼ`: larger = more OOD.
///
/// The regression: each base score is standardised with the mean and (population) standard
/// deviation of the pooled calibration scores (a constant score gets std 1); the loss is the
/// **class-balanced** mean log-loss (ID and OOD samples each weigh ½ in total, so the
/// calibration mix does not matter) plus `l2/2 · (b² + ‖w‖²)`, minimised by Newton's method
/// in `f64` with a backtracking line search (deterministic; at most 100 steps).
pub struct Fused {
    detectors: Vec<Box<dyn Detector>>,
    /// L2 penalty of the regression (`> 0`, default `1e-3`).
    pub l2: f64,
    model: Option<FusedModel>,
}

/// The fitted regression of a [`Fused`] detector (one entry per base detector).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FusedModel {
    /// Mean of each base score on the pooled calibration set.
    pub mean: Vec<f64>,
    /// Standard deviation of each base score on the pooled calibration set (1 if constant).
    pub std: Vec<f64>,
    /// Regression weight of each standardised base score.
    pub weights: Vec<f64>,
    /// Intercept.
    pub bias: f64,
}

impl FusedModel {
    fn logit(&self, scores: &[f64]) -> f64 {
        self.bias
            + scores
                .iter()
                .zip(&self.mean)
                .zip(&self.std)
                .zip(&self.weights)
                .map(|(((s, m), sd), w)| w * (s - m) / sd)
                .sum::<f64>()
    }
}

impl std::fmt::Debug for Fused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fused")
            .field(
                "detectors",
                &self.detectors.iter().map(|d| d.name()).collect::<Vec<_>>(),
            )
            .field("l2", &self.l2)
            .field("model", &self.model)
            .finish()
    }
}

impl Fused {
    /// Fusion of `detectors` (already fitted, or to be fitted by [`Detector::fit`]), L2 penalty
    /// `1e-3`, regression not fitted.
    pub fn new(detectors: Vec<Box<dyn Detector>>) -> Self {
        Fused {
            detectors,
            l2: 1e-3,
            model: None,
        }
    }

    /// Sets the L2 penalty (`> 0`, checked by `fit_fused`).
    pub fn with_l2(mut self, l2: f64) -> Self {
        self.l2 = l2;
        self
    }

    /// The base detectors.
    pub fn detectors(&self) -> &[Box<dyn Detector>] {
        &self.detectors
    }

    /// The fitted regression; `None` before [`Self::fit_fused`].
    pub fn model(&self) -> Option<&FusedModel> {
        self.model.as_ref()
    }

    /// Base scores of a batch, one vector per detector.
    fn base_scores(&self, samples: &Samples<'_>) -> Result<Vec<Vec<f64>>> {
        self.detectors
            .iter()
            .map(|d| {
                let s = d.score(samples)?;
                if s.len() != samples.len() {
                    return Err(CalibrateError::LengthMismatch {
                        left: "base detector scores",
                        left_len: s.len(),
                        right: "samples",
                        right_len: samples.len(),
                    });
                }
                check_finite("base detector scores", &s)?;
                Ok(s)
            })
            .collect()
    }

    /// Fits the regression on a calibration set: `id_calib` (label 0) and `ood_calib` (label
    /// 1), both non-empty. The base detectors must already be fitted.
    pub fn fit_fused(&mut self, id_calib: &Samples<'_>, ood_calib: &Samples<'_>) -> Result<()> {
        if !(self.l2.is_finite() && self.l2 > 0.0) {
            return Err(CalibrateError::InvalidParameter {
                name: "l2",
                value: self.l2,
                expected: "a positive finite number",
            });
        }
        if self.detectors.is_empty() {
            return Err(CalibrateError::Empty { what: "detectors" });
        }
        id_calib.validate()?;
        ood_calib.validate()?;
        match (id_calib.is_empty(), ood_calib.is_empty()) {
            (true, true) => {
                return Err(CalibrateError::Empty {
                    what: "both ID and OOD calibration samples",
                })
            }
            (true, false) => {
                return Err(CalibrateError::SingleClass {
                    missing: "id_calib",
                })
            }
            (false, true) => {
                return Err(CalibrateError::SingleClass {
                    missing: "ood_calib",
                })
            }
            (false, false) => {}
        }
        let id = self.base_scores(id_calib)?;
        let ood = self.base_scores(ood_calib)?;
        let p = self.detectors.len();
        let (n_id, n_ood) = (id_calib.len(), ood_calib.len());
        let n = (n_id + n_ood) as f64;

        let mut mean = vec![0.0; p];
        let mut std = vec![1.0; p];
        for j in 0..p {
            let all = || id[j].iter().chain(&ood[j]);
            let m = all().sum::<f64>() / n;
            let var = all().map(|s| (s - m) * (s - m)).sum::<f64>() / n;
            mean[j] = m;
            let sd = var.sqrt();
            if sd > 0.0 && sd.is_finite() && sd > 1e-12 * m.abs() {
                std[j] = sd;
            }
        }
        // Design rows [1, standardised scores...], sample weight and label.
        let dim = p + 1;
        let mut x = vec![1.0; (n_id + n_ood) * dim];
        let mut rows: Vec<(f64, f64)> = Vec::with_capacity(n_id + n_ood);
        for (set, count, label) in [(&id, n_id, 0.0), (&ood, n_ood, 1.0)] {
            let start = rows.len() * dim;
            for (j, column) in set.iter().enumerate() {
                for (i, &s) in column.iter().enumerate() {
                    x[start + i * dim + 1 + j] = (s - mean[j]) / std[j];
                }
            }
            rows.extend(std::iter::repeat_n((0.5 / count as f64, label), count));
        }
        let beta = newton_logistic(&x, &rows, dim, self.l2)?;
        self.model = Some(FusedModel {
            mean,
            std,
            weights: beta[1..].to_vec(),
            bias: beta[0],
        });
        Ok(())
    }
}

/// `ln(1 + e^z)`, stable.
fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Minimises `Σᵢ wᵢ (softplus(zᵢ) - yᵢ zᵢ) + l2/2 ‖β‖²`, `zᵢ = xᵢ·β`, by damped Newton.
fn newton_logistic(x: &[f64], rows: &[(f64, f64)], dim: usize, l2: f64) -> Result<Vec<f64>> {
    let objective = |beta: &[f64]| -> f64 {
        let data: f64 = x
            .chunks_exact(dim)
            .zip(rows)
            .map(|(xi, &(w, y))| {
                let z: f64 = xi.iter().zip(beta).map(|(a, b)| a * b).sum();
                w * (softplus(z) - y * z)
            })
            .sum();
        data + 0.5 * l2 * beta.iter().map(|b| b * b).sum::<f64>()
    };
    let mut beta = vec![0.0; dim];
    let mut current = objective(&beta);
    for _ in 0..100 {
        let mut grad: Vec<f64> = beta.iter().map(|b| l2 * b).collect();
        let mut hess = vec![0.0; dim * dim];
        for r in 0..dim {
            hess[r * dim + r] = l2;
        }
        for (xi, &(w, y)) in x.chunks_exact(dim).zip(rows) {
            let z: f64 = xi.iter().zip(&beta).map(|(a, b)| a * b).sum();
            let s = sigmoid(z);
            let g = w * (s - y);
            let h = w * s * (1.0 - s);
            for r in 0..dim {
                grad[r] += g * xi[r];
                for c in 0..=r {
                    hess[r * dim + c] += h * xi[r] * xi[c];
                }
            }
        }
        for r in 0..dim {
            for c in 0..r {
                hess[c * dim + r] = hess[r * dim + c];
            }
        }
        let step = solve_spd(&hess, dim, &grad, "the logistic-regression Hessian")?;
        // Newton decrement: g·H⁻¹g; stop when negligible.
        let decrement: f64 = grad.iter().zip(&step).map(|(g, s)| g * s).sum();
        if decrement.is_nan() || decrement <= 1e-20 {
            break;
        }
        let mut t = 1.0;
        let mut accepted = false;
        for _ in 0..60 {
            let trial: Vec<f64> = beta.iter().zip(&step).map(|(b, s)| b - t * s).collect();
            let value = objective(&trial);
            if value <= current - 1e-4 * t * decrement {
                beta = trial;
                current = value;
                accepted = true;
                break;
            }
            t *= 0.5;
        }
        if !accepted {
            break;
        }
    }
    Ok(beta)
}

impl Detector for Fused {
    fn name(&self) -> String {
        let names: Vec<String> = self.detectors.iter().map(|d| d.name()).collect();
        format!("Fused({})", names.join("+"))
    }

    /// Fits every base detector on `(id_train, labels)`; the regression is reset (call
    /// [`Fused::fit_fused`] afterwards).
    fn fit(&mut self, id_train: &Samples<'_>, labels: &[usize]) -> Result<()> {
        self.model = None;
        for d in &mut self.detectors {
            d.fit(id_train, labels)?;
        }
        Ok(())
    }

    fn score(&self, samples: &Samples<'_>) -> Result<Vec<f64>> {
        let model = fitted(&self.model, self)?;
        samples.validate()?;
        let base = self.base_scores(samples)?;
        let mut row = vec![0.0; base.len()];
        Ok((0..samples.len())
            .map(|i| {
                for (r, s) in row.iter_mut().zip(&base) {
                    *r = s[i];
                }
                model.logit(&row)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roc::auroc;

    /// splitmix64 with uniform and Gaussian draws, for deterministic test data.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in (0, 1).
        fn uniform(&mut self) -> f64 {
            ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }

        fn gauss(&mut self) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }
    }

    fn logits(rows: &[&[f32]]) -> Vec<f32> {
        rows.iter().flat_map(|r| r.iter().copied()).collect()
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn samples_validation() {
        let l = [0.0f32; 6];
        let f = [0.0f32; 8];
        let s = Samples::new(&l, &f, &[0.1, 0.2], 3, 4).unwrap();
        assert_eq!((s.len(), s.is_empty()), (2, false));
        assert_eq!(s.logits_row(1).len(), 3);
        assert_eq!(s.feature_row(1).len(), 4);
        assert_eq!(Samples::default().len(), 0);
        assert_eq!(Samples::new(&[], &[], &[0.5; 3], 0, 0).unwrap().len(), 3);
        assert_eq!(
            Samples::new(&l, &[], &[], 4, 0).unwrap_err(),
            CalibrateError::Shape {
                what: "logits",
                len: 6,
                row_name: "num_classes",
                row_len: 4
            }
        );
        assert!(matches!(
            Samples::new(&l, &[], &[], 0, 0),
            Err(CalibrateError::InvalidParameter {
                name: "num_classes",
                ..
            })
        ));
        assert!(matches!(
            Samples::new(&[], &f, &[], 0, 3),
            Err(CalibrateError::Shape {
                what: "features",
                ..
            })
        ));
        assert_eq!(
            Samples::new(&l, &f, &[], 3, 2).unwrap_err(),
            CalibrateError::LengthMismatch {
                left: "logits rows",
                left_len: 2,
                right: "features rows",
                right_len: 4
            }
        );
        assert_eq!(
            Samples::new(&l, &[], &[0.1], 3, 0).unwrap_err(),
            CalibrateError::LengthMismatch {
                left: "logits rows",
                left_len: 2,
                right: "recon_error",
                right_len: 1
            }
        );
        // Detectors validate too, even when built without `new`.
        let bad = Samples {
            logits: &l,
            num_classes: 4,
            ..Default::default()
        };
        assert!(matches!(Msp.score(&bad), Err(CalibrateError::Shape { .. })));
    }

    #[test]
    fn logit_detectors_order_and_hand_values() {
        let ln3 = 3f64.ln() as f32;
        let peaked = [8.0f32, 0.0, 0.0, 0.0];
        let flat = [1.0f32, 1.0, 1.0, 1.0];
        let l = logits(&[&peaked, &flat]);
        let s = Samples::new(&l, &[], &[], 4, 0).unwrap();
        let dets: Vec<Box<dyn Detector>> = vec![
            Box::new(Msp),
            Box::new(MaxLogit),
            Box::new(Energy { temperature: 1.0 }),
            Box::new(Energy { temperature: 5.0 }),
            Box::new(TemperatureMsp { temperature: 1.0 }),
            Box::new(TemperatureMsp {
                temperature: 1000.0,
            }),
        ];
        for d in &dets {
            let sc = d.score(&s).unwrap();
            assert_eq!(sc.len(), 2);
            assert!(sc[0] < sc[1], "{}: {sc:?}", d.name());
        }

        let one = [0.0f32, ln3];
        let s = Samples::new(&one, &[], &[], 2, 0).unwrap();
        let e = Energy { temperature: 1.0 }.score(&s).unwrap()[0];
        assert!(close(e, -(4f64.ln()), 1e-7), "{e}");
        assert!(close(Msp.score(&s).unwrap()[0], -0.75, 1e-7));
        assert!(close(
            TemperatureMsp { temperature: 1.0 }.score(&s).unwrap()[0],
            -0.75,
            1e-7
        ));
        assert_eq!(MaxLogit.score(&s).unwrap()[0], -f64::from(ln3));
        // T = 2 on doubled logits is T = 1 on the originals (Energy scales by T).
        let two = [0.0f32, 2.0 * ln3];
        let s2 = Samples::new(&two, &[], &[], 2, 0).unwrap();
        let e2 = Energy { temperature: 2.0 }.score(&s2).unwrap()[0];
        assert!(close(e2, -2.0 * 4f64.ln(), 1e-6), "{e2}");
        let t2 = TemperatureMsp { temperature: 2.0 }.score(&s2).unwrap()[0];
        assert!(close(t2, -0.75, 1e-7));
        // Stable for huge logits.
        let huge = [1e30f32, 1e30, -1e30];
        let s = Samples::new(&huge, &[], &[], 3, 0).unwrap();
        let e = Energy { temperature: 1.0 }.score(&s).unwrap()[0];
        assert_eq!(e, -(f64::from(1e30f32) + 2f64.ln()));
        assert_eq!(Msp.score(&s).unwrap()[0], -0.5);
        assert!(TemperatureMsp { temperature: 1e-3 }.score(&s).unwrap()[0].is_finite());
        // Names.
        assert_eq!(Energy { temperature: 1.0 }.name(), "Energy(T=1)");
        assert_eq!(
            TemperatureMsp {
                temperature: 1000.0
            }
            .name(),
            "TempMSP(T=1000)"
        );
    }

    #[test]
    fn logit_detector_errors() {
        let s = Samples::new(&[0.0, 1.0], &[], &[], 2, 0).unwrap();
        for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                Energy { temperature: t }.score(&s),
                Err(CalibrateError::InvalidParameter {
                    name: "temperature",
                    ..
                })
            ));
            assert!(TemperatureMsp { temperature: t }.score(&s).is_err());
        }
        let no_logits = Samples::new(&[], &[1.0, 2.0], &[], 0, 1).unwrap();
        assert_eq!(
            Msp.score(&no_logits),
            Err(CalibrateError::MissingInput { what: "logits" })
        );
        let nan = [0.0, f32::NAN];
        let s = Samples::new(&nan, &[], &[], 2, 0).unwrap();
        assert_eq!(
            MaxLogit.score(&s),
            Err(CalibrateError::NaN {
                what: "logits",
                index: 1
            })
        );
        let inf = [f32::INFINITY, 0.0];
        let s = Samples::new(&inf, &[], &[], 2, 0).unwrap();
        assert!(matches!(
            Energy::default().score(&s),
            Err(CalibrateError::NonFinite { .. })
        ));
        assert_eq!(Msp.score(&Samples::default()).unwrap(), Vec::<f64>::new());
    }

    #[test]
    fn cholesky_hand_case() {
        let l = cholesky(&[4.0, 2.0, 2.0, 3.0], 2).unwrap();
        assert_eq!(l, vec![2.0, 0.0, 1.0, 2f64.sqrt()]);
        let x = solve_spd(&[4.0, 2.0, 2.0, 3.0], 2, &[2.0, 1.0], "a").unwrap();
        // [4 2; 2 3] x = [2 1] -> x = (0.5, 0).
        assert!(close(x[0], 0.5, 1e-15) && close(x[1], 0.0, 1e-15));
        assert!(cholesky(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
        assert!(cholesky(&[0.0], 1).is_none());
        assert!(cholesky(&[f64::NAN], 1).is_none());
    }

    /// Class 0 around (0, 0) and class 1 around (10, 0), each at the four corners (±1, ±1):
    /// the tied covariance is exactly the identity.
    fn square_clusters() -> (Vec<f32>, Vec<usize>) {
        let mut f = Vec::new();
        let mut labels = Vec::new();
        for (c, cx) in [(0usize, 0.0f32), (1, 10.0)] {
            for (dx, dy) in [(1.0, 1.0), (1.0, -1.0), (-1.0, 1.0), (-1.0, -1.0)] {
                f.extend([cx + dx, dy]);
                labels.push(c);
            }
        }
        (f, labels)
    }

    #[test]
    fn mahalanobis_identity_hand_case() {
        let (f, labels) = square_clusters();
        let train = Samples::new(&[], &f, &[], 0, 2).unwrap();
        let mut m = Mahalanobis::with_ridge(0.0);
        m.fit(&train, &labels).unwrap();
        let means = m.class_means().unwrap();
        assert_eq!(means, &[(0, vec![0.0, 0.0]), (1, vec![10.0, 0.0])][..]);
        let q = [3.0f32, 4.0, 9.0, 1.0, 5.0, 0.0];
        let s = m.score(&Samples::new(&[], &q, &[], 0, 2).unwrap()).unwrap();
        assert_eq!(s, vec![25.0, 2.0, 25.0]);
        // The default ridge 1e-6 · trace/d = 1e-6 scales the distance by 1/(1 + 1e-6).
        let mut m = Mahalanobis::new();
        m.fit(&train, &labels).unwrap();
        let s = m.score(&Samples::new(&[], &q, &[], 0, 2).unwrap()).unwrap();
        assert!(close(s[0], 25.0 / (1.0 + 1e-6), 1e-12), "{}", s[0]);
        // The ridge is relative to trace/d: data scaled by 2 has covariance 4 I, so ridge 0.5
        // adds 2 and the query (6, 8) (distance 10 from class 0) scores 100 / 6.
        let f2: Vec<f32> = f.iter().map(|x| 2.0 * x).collect();
        let mut m = Mahalanobis::with_ridge(0.5);
        m.fit(&Samples::new(&[], &f2, &[], 0, 2).unwrap(), &labels)
            .unwrap();
        let s = m
            .score(&Samples::new(&[], &[6.0, 8.0], &[], 0, 2).unwrap())
            .unwrap();
        assert!(close(s[0], 100.0 / 6.0, 1e-12), "{}", s[0]);
        // 1-D: points -1, 1 (class 0) and 3, 5 (class 1): means 0 and 4, variance 1.
        let f1 = [-1.0f32, 1.0, 3.0, 5.0];
        let mut m = Mahalanobis::with_ridge(0.0);
        m.fit(&Samples::new(&[], &f1, &[], 0, 1).unwrap(), &[0, 0, 1, 1])
            .unwrap();
        let s = m
            .score(&Samples::new(&[], &[2.5, -3.0], &[], 0, 1).unwrap())
            .unwrap();
        assert_eq!(s, vec![2.25, 9.0]);
    }

    #[test]
    fn mahalanobis_clusters_and_anisotropy() {
        let mut rng = Rng(7);
        let d = 5;
        let centres = [[3.0, 0.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0, 0.0]];
        let mut f = Vec::new();
        let mut labels = Vec::new();
        for i in 0..400 {
            let c = i % 2;
            for centre in &centres[c] {
                f.push((centre + 0.5 * rng.gauss()) as f32);
            }
            labels.push(c);
        }
        let train = Samples::new(&[], &f, &[], 0, d).unwrap();
        let mut m = Mahalanobis::new();
        m.fit(&train, &labels).unwrap();
        let q = [
            3.1, 0.1, 0.0, -0.1, 0.0, // near class 0
            0.0, 2.9, 0.1, 0.0, 0.1, // near class 1
            -4.0, -4.0, 3.0, 3.0, -3.0, // far from both
        ];
        let s = m.score(&Samples::new(&[], &q, &[], 0, d).unwrap()).unwrap();
        assert!(s[0] < 1.0 && s[1] < 1.0, "{s:?}");
        assert!(s[2] > 50.0 * s[0].max(s[1]), "{s:?}");

        // Anisotropic: one class, std 10 along x and 1 along y.
        let mut f = Vec::new();
        for _ in 0..1000 {
            f.extend([(10.0 * rng.gauss()) as f32, rng.gauss() as f32]);
        }
        let mut m = Mahalanobis::new();
        m.fit(&Samples::new(&[], &f, &[], 0, 2).unwrap(), &[0; 1000])
            .unwrap();
        let q = [5.0f32, 0.0, 0.0, 5.0];
        let s = m.score(&Samples::new(&[], &q, &[], 0, 2).unwrap()).unwrap();
        assert!(s[1] > 20.0 * s[0], "{s:?}");
    }

    #[test]
    fn mahalanobis_errors() {
        let (f, labels) = square_clusters();
        let train = Samples::new(&[], &f, &[], 0, 2).unwrap();
        let m = Mahalanobis::new();
        assert_eq!(
            m.score(&train),
            Err(CalibrateError::NotFitted {
                detector: "Mahalanobis".into()
            })
        );
        let mut m = Mahalanobis::new();
        assert!(matches!(
            m.fit(&train, &labels[..3]),
            Err(CalibrateError::LengthMismatch { left: "labels", .. })
        ));
        let l = [0.0f32; 16];
        let with_logits = Samples::new(&l, &f, &[], 2, 2).unwrap();
        let mut bad = labels.clone();
        bad[5] = 2;
        assert!(matches!(
            m.fit(&with_logits, &bad),
            Err(CalibrateError::ClassOutOfRange { index: 5, .. })
        ));
        assert!(matches!(
            m.fit(&Samples::new(&l, &[], &[], 2, 0).unwrap(), &labels),
            Err(CalibrateError::MissingInput { what: "features" })
        ));
        assert!(matches!(
            m.fit(&Samples::default(), &[]),
            Err(CalibrateError::Empty { .. })
        ));
        // All features identical with no ridge: singular.
        let mut m0 = Mahalanobis::with_ridge(0.0);
        assert!(matches!(
            m0.fit(&Samples::new(&[], &[1.0; 4], &[], 0, 2).unwrap(), &[0, 0]),
            Err(CalibrateError::NotPositiveDefinite { .. })
        ));
        // ... but fine with the default ridge.
        let mut m1 = Mahalanobis::new();
        m1.fit(&Samples::new(&[], &[1.0; 4], &[], 0, 2).unwrap(), &[0, 0])
            .unwrap();
        m.fit(&train, &labels).unwrap();
        assert_eq!(
            m.score(&Samples::new(&[], &[0.0; 3], &[], 0, 3).unwrap()),
            Err(CalibrateError::DimensionMismatch {
                what: "feature_dim",
                expected: 2,
                found: 3
            })
        );
        assert!(matches!(
            Mahalanobis::with_ridge(-1.0).fit(&train, &labels),
            Err(CalibrateError::InvalidParameter { name: "ridge", .. })
        ));
    }

    #[test]
    fn knn_exact_hand_case_and_scale() {
        // Unit vectors at 0°, 90°, 180°, 270° (given with various lengths).
        let bank = [2.0f32, 0.0, 0.0, 0.5, -3.0, 0.0, 0.0, -1.0];
        let train = Samples::new(&[], &bank, &[], 0, 2).unwrap();
        let q = [1.0f32, 0.0, 1.0, 1.0];
        let qs = Samples::new(&[], &q, &[], 0, 2).unwrap();
        let expect = |k: usize| -> Vec<f64> {
            // Query (1, 0): distances 0, √2, √2, 2. Query 45°: 2·sin(22.5°) ×2, 2·sin(67.5°) ×2.
            let a = 2.0 * (std::f64::consts::PI / 8.0).sin();
            let b = 2.0 * (3.0 * std::f64::consts::PI / 8.0).sin();
            let first = [0.0, 2f64.sqrt(), 2f64.sqrt(), 2.0];
            let second = [a, a, b, b];
            vec![first[k - 1], second[k - 1]]
        };
        for k in 1..=4 {
            let mut knn = Knn::new(k);
            knn.fit(&train, &[]).unwrap();
            let s = knn.score(&qs).unwrap();
            let e = expect(k);
            assert!(
                close(s[0], e[0], 1e-6) && close(s[1], e[1], 1e-6),
                "k={k}: {s:?} vs {e:?}"
            );
        }
        // Scale is irrelevant, for the bank and the queries.
        let mut knn = Knn::new(2);
        knn.fit(&train, &[]).unwrap();
        let scaled: Vec<f32> = bank.iter().map(|x| x * 0.01).collect();
        let mut knn_scaled = Knn::new(2);
        knn_scaled
            .fit(&Samples::new(&[], &scaled, &[], 0, 2).unwrap(), &[])
            .unwrap();
        let q_scaled: Vec<f32> = q.iter().map(|x| x * 123.0).collect();
        let a = knn.score(&qs).unwrap();
        let b = knn_scaled
            .score(&Samples::new(&[], &q_scaled, &[], 0, 2).unwrap())
            .unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!(close(*x, *y, 1e-6), "{a:?} vs {b:?}");
        }
    }

    /// f64 brute force: k-th smallest distance between normalised vectors.
    fn brute_knn(bank: &[f32], q: &[f32], d: usize, k: usize) -> Vec<f64> {
        let norm = |r: &[f32]| -> Vec<f64> {
            let n = r.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
            r.iter()
                .map(|&x| if n > 0.0 { f64::from(x) / n } else { 0.0 })
                .collect()
        };
        let b: Vec<Vec<f64>> = bank.chunks(d).map(norm).collect();
        q.chunks(d)
            .map(|qr| {
                let qn = norm(qr);
                let mut dist: Vec<f64> = b
                    .iter()
                    .map(|br| {
                        br.iter()
                            .zip(&qn)
                            .map(|(x, y)| (x - y).powi(2))
                            .sum::<f64>()
                            .sqrt()
                    })
                    .collect();
                dist.sort_by(f64::total_cmp);
                dist[k - 1]
            })
            .collect()
    }

    #[test]
    fn knn_matches_brute_force_blocks_tiles_threads() {
        let mut rng = Rng(11);
        // Sizes not multiples of the tile, lane, or block sizes.
        let (d, n_bank, n_q) = (13, 601, 203);
        let bank: Vec<f32> = (0..n_bank * d).map(|_| rng.gauss() as f32).collect();
        let mut q: Vec<f32> = (0..n_q * d).map(|_| rng.gauss() as f32).collect();
        q[..d].iter_mut().for_each(|x| *x = 0.0); // a zero query
        let train = Samples::new(&[], &bank, &[], 0, d).unwrap();
        let qs = Samples::new(&[], &q, &[], 0, d).unwrap();
        for (k, threads) in [(1, 1), (7, 3), (50, 0)] {
            let mut knn = Knn::new(k).with_threads(threads);
            knn.fit(&train, &[]).unwrap();
            let got = knn.score(&qs).unwrap();
            let want = brute_knn(&bank, &q, d, k);
            assert_eq!(got.len(), n_q);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(close(*g, *w, 1e-5), "k={k} q{i}: {g} vs {w}");
            }
            assert!(close(got[0], 1.0, 1e-6)); // zero query: distance 1 to every unit vector
        }
    }

    #[test]
    fn knn_bank_subsampling_and_errors() {
        let d = 3;
        let bank: Vec<f32> = (0..10 * d).map(|i| (i as f32 * 0.37).sin()).collect();
        let train = Samples::new(&[], &bank, &[], 0, d).unwrap();
        let mut knn = Knn::new(2).with_max_bank(4, 3);
        knn.fit(&train, &[]).unwrap();
        assert_eq!(knn.bank_len(), 4);
        // Rows 3, 5, 8, 0 (stride 10/4 from offset 3): their scores equal a fit on them alone.
        let picked: Vec<f32> = [3usize, 5, 8, 0]
            .iter()
            .flat_map(|&r| bank[r * d..(r + 1) * d].iter().copied())
            .collect();
        let mut direct = Knn::new(2);
        direct
            .fit(&Samples::new(&[], &picked, &[], 0, d).unwrap(), &[])
            .unwrap();
        assert_eq!(knn.score(&train).unwrap(), direct.score(&train).unwrap());
        let mut all = Knn::new(2).with_max_bank(100, 0);
        all.fit(&train, &[]).unwrap();
        assert_eq!(all.bank_len(), 10);

        assert!(matches!(
            Knn::new(3).score(&train),
            Err(CalibrateError::NotFitted { .. })
        ));
        for mut bad in [Knn::new(0), Knn::new(11), Knn::new(5).with_max_bank(4, 0)] {
            assert!(matches!(
                bad.fit(&train, &[]),
                Err(CalibrateError::InvalidParameter { name: "k", .. })
            ));
        }
        assert!(Knn::new(1).with_max_bank(0, 0).fit(&train, &[]).is_err());
        assert!(matches!(
            all.score(&Samples::new(&[], &[1.0, 2.0], &[], 0, 2).unwrap()),
            Err(CalibrateError::DimensionMismatch { .. })
        ));
        assert!(matches!(
            all.score(&Samples::new(&[], &[1.0, f32::NAN, 0.0], &[], 0, 3).unwrap()),
            Err(CalibrateError::NaN { .. })
        ));
        assert_eq!(Knn::new(50).name(), "KNN(k=50)");
    }

    #[test]
    fn reconstruction_and_combined() {
        let r = [0.1, 0.5, 0.02];
        let l = logits(&[&[5.0, 0.0], &[5.0, 0.0], &[0.1, 0.0]]);
        let s = Samples::new(&l, &[], &r, 2, 0).unwrap();
        assert_eq!(Reconstruction.score(&s).unwrap(), r.to_vec());
        let no_recon = Samples::new(&l, &[], &[], 2, 0).unwrap();
        assert_eq!(
            Reconstruction.score(&no_recon),
            Err(CalibrateError::MissingInput {
                what: "recon_error"
            })
        );
        let rule = CombinedRule {
            msp_threshold: 0.9,
            recon_threshold: Some(0.3),
        };
        // Confident + small error: ID; confident + large error: OOD; unsure: OOD.
        assert_eq!(Combined(rule).score(&s).unwrap(), vec![0.0, 1.0, 1.0]);
        assert_eq!(
            Combined(rule).score(&no_recon),
            Err(CalibrateError::MissingInput {
                what: "recon_error"
            })
        );
        let msp_only = Combined(CombinedRule::msp_only(0.9));
        assert_eq!(msp_only.score(&no_recon).unwrap(), vec![0.0, 0.0, 1.0]);
        assert_eq!(msp_only.score(&s).unwrap(), vec![0.0, 0.0, 1.0]);
    }

    /// Scores column `j` of the features (synthetic base detector).
    struct Column(usize);

    impl Detector for Column {
        fn name(&self) -> String {
            format!("col{}", self.0)
        }

        fn score(&self, s: &Samples<'_>) -> Result<Vec<f64>> {
            s.need_features()?;
            Ok((0..s.len())
                .map(|i| f64::from(s.feature_row(i)[self.0]))
                .collect())
        }
    }

    fn column_scores(
        det: &dyn Detector,
        id: &[f32],
        ood: &[f32],
        d: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let a = det
            .score(&Samples::new(&[], id, &[], 0, d).unwrap())
            .unwrap();
        let b = det
            .score(&Samples::new(&[], ood, &[], 0, d).unwrap())
            .unwrap();
        (a, b)
    }

    /// ID and OOD features with `d` = 3 columns: col 0 shifted by `shift0` for the OOD set
    /// (a separating score), col 1 pure noise, col 2 shifted by `shift2` for every other OOD
    /// sample.
    fn fusion_data(rng: &mut Rng, n: usize, shift0: f64, shift2: f64) -> (Vec<f32>, Vec<f32>) {
        let mut id = Vec::new();
        let mut ood = Vec::new();
        for i in 0..n {
            id.extend([rng.gauss() as f32, rng.gauss() as f32, rng.gauss() as f32]);
            let s2 = if i % 2 == 0 { shift2 } else { 0.0 };
            ood.extend([
                (rng.gauss() + shift0) as f32,
                (rng.gauss() * 3.0) as f32,
                (rng.gauss() + s2) as f32,
            ]);
        }
        (id, ood)
    }

    fn cal(v: &[f32]) -> Samples<'_> {
        Samples::new(&[], v, &[], 0, 3).unwrap()
    }

    #[test]
    fn fused_at_least_as_good_as_best_single() {
        let mut rng = Rng(3);
        let (cal_id, cal_ood) = fusion_data(&mut rng, 500, 2.0, 0.0);
        let (test_id, test_ood) = fusion_data(&mut rng, 2000, 2.0, 0.0);
        let mut fused = Fused::new(vec![Box::new(Column(0)), Box::new(Column(1))]);
        assert_eq!(fused.name(), "Fused(col0+col1)");
        fused.fit_fused(&cal(&cal_id), &cal(&cal_ood)).unwrap();
        let model = fused.model().unwrap().clone();
        assert!(model.weights[0] > 5.0 * model.weights[1].abs(), "{model:?}");
        let (fi, fo) = column_scores(&fused, &test_id, &test_ood, 3);
        let fused_auc = auroc(&fi, &fo).unwrap();
        let mut best: f64 = 0.0;
        for j in 0..2 {
            let (a, b) = column_scores(&Column(j), &test_id, &test_ood, 3);
            best = best.max(auroc(&a, &b).unwrap());
        }
        assert!(best > 0.88, "{best}");
        assert!(
            fused_auc >= best - 0.005,
            "fused {fused_auc} vs best {best}"
        );

        // Two complementary detectors: the fusion beats both.
        let (cal_id, cal_ood) = fusion_data(&mut rng, 500, 1.5, 4.0);
        let (test_id, test_ood) = fusion_data(&mut rng, 2000, 1.5, 4.0);
        let mut fused = Fused::new(vec![Box::new(Column(0)), Box::new(Column(2))]);
        fused.fit_fused(&cal(&cal_id), &cal(&cal_ood)).unwrap();
        let (fi, fo) = column_scores(&fused, &test_id, &test_ood, 3);
        let fused_auc = auroc(&fi, &fo).unwrap();
        for j in [0, 2] {
            let (a, b) = column_scores(&Column(j), &test_id, &test_ood, 3);
            let single = auroc(&a, &b).unwrap();
            assert!(
                fused_auc > single + 0.01,
                "fused {fused_auc} vs col{j} {single}"
            );
        }
        // Deterministic.
        let mut again = Fused::new(vec![Box::new(Column(0)), Box::new(Column(2))]);
        again.fit_fused(&cal(&cal_id), &cal(&cal_ood)).unwrap();
        assert_eq!(again.model(), fused.model());
    }

    #[test]
    fn fused_errors_and_fit_of_bases() {
        let f = [0.0f32, 1.0, 2.0, 3.0];
        let s = Samples::new(&[], &f, &[], 0, 1).unwrap();
        let mut fused = Fused::new(vec![Box::new(Column(0))]);
        assert!(matches!(
            fused.score(&s),
            Err(CalibrateError::NotFitted { .. })
        ));
        assert!(matches!(
            fused.fit_fused(&s, &Samples::default()),
            Err(CalibrateError::SingleClass {
                missing: "ood_calib"
            })
        ));
        assert!(matches!(
            Fused::new(vec![]).fit_fused(&s, &s),
            Err(CalibrateError::Empty { .. })
        ));
        assert!(Fused::new(vec![Box::new(Column(0))])
            .with_l2(0.0)
            .fit_fused(&s, &s)
            .is_err());
        // An unfitted base detector surfaces as an error.
        let mut m = Fused::new(vec![Box::new(Mahalanobis::new())]);
        assert!(matches!(
            m.fit_fused(&s, &s),
            Err(CalibrateError::NotFitted { .. })
        ));
        // Fused::fit fits the bases; a constant base score does not break the regression.
        m.fit(&s, &[0, 0, 1, 1]).unwrap();
        let ood = Samples::new(&[], &[10.0, 12.0], &[], 0, 1).unwrap();
        m.fit_fused(&s, &ood).unwrap();
        let sc = m.score(&ood).unwrap();
        assert!(sc.iter().all(|v| v.is_finite() && *v > 0.0), "{sc:?}");
        let same = Fused::new(vec![Box::new(Reconstruction)]);
        let r = Samples::new(&[], &[], &[0.5; 3], 0, 0).unwrap();
        let mut same = same;
        same.fit_fused(&r, &r).unwrap();
        assert!(same.score(&r).unwrap().iter().all(|v| v.is_finite()));
        assert!(format!("{same:?}").contains("Reconstruction"));
    }

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
            let a = d.score(&id).unwrap();
            let b = d.score(&ood).unwrap();
            assert_eq!((a.len(), b.len()), (60, 45), "{}", d.name());
            assert!(a.iter().chain(&b).all(|v| v.is_finite()), "{}", d.name());
            let auc = auroc(&a, &b).unwrap();
            assert!(auc > 0.9, "{}: AUROC {auc}", d.name());
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
            let a = d.score(&id).unwrap();
            let b = d.score(&ood).unwrap();
            assert_eq!((a.len(), b.len()), (60, 45), "{}", d.name());
            assert!(a.iter().chain(&b).all(|v| v.is_finite()), "{}", d.name());
            let auc = auroc(&a, &b).unwrap();
            assert!(auc > 0.9, "{}: AUROC {auc}", d.name());
        }
    }

    /// Timing of the KNN search at benchmark scale (run with `--ignored --nocapture`).
    #[test]
    #[ignore]
    fn knn_timing() {
        let mut rng = Rng(5);
        let d = 256;
        let (n_bank, n_q) = (20_000, 2_000);
        let bank: Vec<f32> = (0..n_bank * d).map(|_| rng.gauss() as f32).collect();
        let q: Vec<f32> = (0..n_q * d).map(|_| rng.gauss() as f32).collect();
        let mut knn = Knn::new(50);
        knn.fit(&Samples::new(&[], &bank, &[], 0, d).unwrap(), &[])
            .unwrap();
        let t = std::time::Instant::now();
        let s = knn
            .score(&Samples::new(&[], &q, &[], 0, d).unwrap())
            .unwrap();
        let el = t.elapsed().as_secs_f64();
        eprintln!(
            "KNN {n_q} x {n_bank} x {d}: {el:.2} s, {:.2} GFLOP/s",
            2.0 * (n_q * n_bank * d) as f64 / el / 1e9
        );
        assert_eq!(s.len(), n_q);
        let mut m = Mahalanobis::new();
        let t = std::time::Instant::now();
        m.fit(
            &Samples::new(&[], &bank, &[], 0, d).unwrap(),
            &(0..n_bank).map(|i| i % 9).collect::<Vec<_>>(),
        )
        .unwrap();
        let fit = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        m.score(&Samples::new(&[], &q, &[], 0, d).unwrap()).unwrap();
        eprintln!(
            "Mahalanobis fit {n_bank} x {d}: {fit:.2} s, score {n_q}: {:.2} s",
            t.elapsed().as_secs_f64()
        );
    }
}
