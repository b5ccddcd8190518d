//! The reconstruction-error detector and the calibrated combined rule as a detector.

use super::{Detector, Samples};
use crate::classify::max_softmax;
use crate::rule::CombinedRule;
use crate::Result;
use serde::{Deserialize, Serialize};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::test_support::logits;
    use crate::CalibrateError;

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
}
