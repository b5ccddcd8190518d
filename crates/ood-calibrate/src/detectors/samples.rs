//! [`Samples`], the batch every detector scores, and the checks on it.

use crate::{check_finite, CalibrateError, Result};

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
    pub(super) fn need_logits(&self) -> Result<()> {
        self.validate()?;
        if self.logits.is_empty() && !self.is_empty() {
            return Err(CalibrateError::MissingInput { what: "logits" });
        }
        check_finite_f32("logits", self.logits)
    }

    /// Checks the logits as [`Self::need_logits`] does, then scores each row with `score_row`.
    pub(super) fn score_logit_rows(&self, score_row: impl Fn(&[f32]) -> f64) -> Result<Vec<f64>> {
        self.need_logits()?;
        Ok((0..self.len())
            .map(|i| score_row(self.logits_row(i)))
            .collect())
    }

    /// Validates and checks that `features` are present (unless the batch is empty) and finite.
    pub(super) fn need_features(&self) -> Result<()> {
        self.validate()?;
        if self.features.is_empty() && !self.is_empty() {
            return Err(CalibrateError::MissingInput { what: "features" });
        }
        check_finite_f32("features", self.features)
    }

    /// Validates and checks that `recon_error` is present (unless the batch is empty) and
    /// finite.
    pub(super) fn need_recon(&self) -> Result<()> {
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

pub(super) fn check_labels(samples: &Samples<'_>, labels: &[usize]) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::{Detector, Msp};

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
}
