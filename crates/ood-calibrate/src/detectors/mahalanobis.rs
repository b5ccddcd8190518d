//! The Mahalanobis detector (class means and a tied covariance).

use super::linalg::{cholesky, forward_substitute};
use super::samples::check_labels;
use super::{fitted, Detector, Samples};
use crate::{CalibrateError, Result};
use serde::{Deserialize, Serialize};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::test_support::{close, Rng};

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
}
