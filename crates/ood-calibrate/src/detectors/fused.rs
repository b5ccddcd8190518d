//! The fusion detector: a logistic regression over the scores of several base detectors.

use super::linalg::solve_spd;
use super::{fitted, Detector, Samples};
use crate::{check_finite, CalibrateError, Result};
use serde::{Deserialize, Serialize};

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
    use crate::detectors::test_support::Rng;
    use crate::detectors::{Mahalanobis, Reconstruction};
    use crate::roc::auroc;

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
}
