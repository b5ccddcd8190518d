//! The one place that loads a model and calls it. `ood serve` (through the batcher) and `ood
//! predict` both go through [`Model`]; a change in how models are loaded or scored (an ensemble,
//! say) is made here and nowhere else.

use crate::shipped;
use crate::{Result, ServeError};
use candle_core::Device;
use ood_eval::calibration::DecisionDetail;
use ood_eval::{Calibration, LoadedModel};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Seed stream of the noise behind the reconstruction error of predicted images (the value
/// `ood predict` has always used, so the server and `ood predict` agree on every image).
const PREDICT_STREAM: u64 = 30;

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// The default model embedded in the binary (`assets/models/default/`); `calibration`
    /// replaces its calibration (which must then have been made for the shipped checkpoint).
    Shipped { calibration: Option<PathBuf> },
    /// A checkpoint file and its calibration (default: `calibration.json` beside it).
    Files {
        checkpoint: PathBuf,
        calibration: Option<PathBuf>,
    },
}

impl ModelSource {
    /// `--checkpoint` and `--calibration` as the commands take them: no checkpoint means the
    /// shipped model.
    pub fn from_args(checkpoint: Option<&Path>, calibration: Option<&Path>) -> Self {
        let calibration = calibration.map(Path::to_path_buf);
        match checkpoint {
            Some(c) => ModelSource::Files {
                checkpoint: c.to_path_buf(),
                calibration,
            },
            None => ModelSource::Shipped { calibration },
        }
    }
}

/// A model with its calibration, ready to answer.
pub struct Model {
    loaded: LoadedModel,
    calibration: Calibration,
    device: Device,
}

/// The answer for one image.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    /// The digit, or `None` when the rule in force flags the image as unknown.
    pub class: Option<u8>,
    /// The classifier's best guess, whether or not it was accepted.
    pub best_guess: u8,
    /// Softmax probability of each known class, in the order of [`Model::known_classes`].
    pub probabilities: Vec<f64>,
    pub max_softmax: f64,
    /// Mean squared error of [`Prediction::reconstruction`] against the image.
    pub reconstruction_error: f64,
    /// The decision and what it rests on: the rule's score(s) with threshold(s).
    pub detail: DecisionDetail,
    /// The decoder's output, 28x28 in [0, 1]: for a noised copy of the image when the rule
    /// reads the reconstruction error (as calibrated), else for the image itself.
    #[serde(skip)]
    pub reconstruction: Vec<f32>,
}

impl Model {
    /// Loads a model from `source` onto `device`; the calibration must carry the SHA-256 of the
    /// very checkpoint it is applied to.
    pub fn load(source: &ModelSource, device: &Device) -> Result<Model> {
        let (loaded, calibration) = match source {
            ModelSource::Files {
                checkpoint,
                calibration,
            } => ood_eval::calibrated_model(checkpoint, calibration.as_deref(), device)?,
            ModelSource::Shipped { calibration } => {
                let name = Path::new(shipped::CHECKPOINT_PATH);
                let model = ood_eval::load_model_from_bytes(shipped::CHECKPOINT, name, device)?;
                let cal = match calibration {
                    Some(path) => {
                        ood_eval::calibration::read_calibration_for(path, name, &model.sha256)?
                    }
                    None => ood_eval::parse_calibration(
                        shipped::CALIBRATION,
                        Path::new(shipped::CALIBRATION_PATH),
                        name,
                        &model.sha256,
                    )?,
                };
                (model, cal)
            }
        };
        Ok(Model {
            loaded,
            calibration,
            device: device.clone(),
        })
    }

    /// Pixels in one image (28 * 28).
    pub fn image_len(&self) -> usize {
        let side = self.loaded.image_size();
        side * side
    }

    /// Side of the square images the model takes (28).
    pub fn image_side(&self) -> usize {
        self.loaded.image_size()
    }

    /// The digit of each class index.
    pub fn known_classes(&self) -> &[u8] {
        &self.loaded.train.known_classes
    }

    /// The rule in force, in words.
    pub fn rule(&self) -> String {
        self.calibration.describe()
    }

    /// The checkpoint's file or ensemble folder (or, for the shipped model, its place in the
    /// repository).
    pub fn checkpoint_path(&self) -> &Path {
        &self.loaded.path
    }

    /// The SHA-256 of the checkpoint's bytes (of its members' hashes for an ensemble).
    pub fn checkpoint_sha256(&self) -> &str {
        &self.loaded.sha256
    }

    /// The preset the model was trained from.
    pub fn preset(&self) -> &str {
        &self.loaded.meta.preset
    }

    /// Classifies `pixels` (whole images of [`Model::image_len`] values in [0, 1], white ink on
    /// black, prepared as MNIST was) in one batch. An image's answer does not depend on the
    /// other images of the batch: each is noised for the decoder as if it were alone, when the
    /// rule reads the reconstruction error of a noised copy; otherwise the reconstruction (and
    /// its error) is of the image itself.
    pub fn predict(&self, pixels: &[f32]) -> Result<Vec<Prediction>> {
        let per = self.image_len();
        if pixels.is_empty() || !pixels.len().is_multiple_of(per) {
            return Err(ServeError::BadInput(format!(
                "{} values are not whole {per}-pixel images",
                pixels.len()
            )));
        }
        let n = pixels.len() / per;
        // The default rule reads logits and features only: then the decoder reconstructs the
        // image itself from the classifier's trunk pass, and the trunk runs once, not twice.
        let scored = if self.calibration.reads_reconstruction_error() {
            ood_eval::score_images_independently(
                &self.loaded.nets,
                pixels,
                &self.loaded.train.noise,
                self.loaded.train.seed,
                PREDICT_STREAM,
                n,
                &self.device,
            )?
        } else {
            ood_eval::score_images_clean(&self.loaded.nets, pixels, n, &self.device)?
        };
        let details = self.calibration.explain(&scored)?;
        let classes = self.known_classes();
        let k = scored.num_classes;
        Ok(details
            .into_iter()
            .enumerate()
            .map(|(i, detail)| {
                let best_guess = classes[scored.predictions[i]];
                Prediction {
                    class: (!detail.unknown).then_some(best_guess),
                    best_guess,
                    probabilities: softmax(&scored.logits[i * k..(i + 1) * k]),
                    max_softmax: scored.msp[i],
                    reconstruction_error: scored.recon_error[i],
                    detail,
                    reconstruction: scored.denoised[i * per..(i + 1) * per].to_vec(),
                }
            })
            .collect())
    }
}

/// The softmax of one row of logits, computed in f64 with the maximum subtracted first.
fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exp: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_the_order() {
        let p = softmax(&[1.0, 3.0, 2.0, 12.0]);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(p[3] > 0.999 && p[1] > p[2] && p[2] > p[0], "{p:?}");
        // Large logits do not overflow: the maximum is subtracted first.
        assert_eq!(softmax(&[1000.0, 0.0]), vec![1.0, (-1000f64).exp()]);
    }
}
