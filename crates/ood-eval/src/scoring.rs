//! Scoring sets of images with a trained model: max-softmax, reconstruction error and
//! predictions, as plain arrays.

use crate::Result;
use candle_core::Device;
use ood_calibrate::detectors::Samples;
use ood_data::batch::stream_rng;
use ood_data::noise::{corrupt_batch, NoiseConfig};
use ood_model::OodNet;
use ood_train::infer;
use serde::{Deserialize, Serialize};

/// What the model says about each image of a set.
#[derive(Debug, Clone, Default)]
pub struct ScoredSet {
    /// Maximum softmax probability (high: confident, in-distribution-like).
    pub msp: Vec<f64>,
    /// Mean squared error between the image and the decoder's output for a noised copy.
    pub recon_error: Vec<f64>,
    /// Arg-max class index.
    pub predictions: Vec<usize>,
    /// Logits, row-major.
    pub logits: Vec<f32>,
    /// Pooled trunk features (the last stage's), row-major.
    pub features: Vec<f32>,
    /// Pooled features of every stage side by side, row-major.
    pub stage_features: Vec<f32>,
    /// The noised copies the decoder saw.
    pub noised: Vec<f32>,
    /// The decoder's outputs.
    pub denoised: Vec<f32>,
    pub num_classes: usize,
    pub feature_dim: usize,
    pub stage_feature_dim: usize,
}

/// Which pooled trunk features the feature detectors (Mahalanobis, KNN) read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FeatureDepth {
    /// The last stage's, which the classifier reads (and what calibrations made before the
    /// choice existed used).
    #[default]
    Last,
    /// Every stage's side by side (W + 2W + 4W values): the default. The shallow stages keep
    /// the stroke statistics that the last one abstracts away, which is what tells clothing
    /// and noise from digits (bench-ood: Fashion-MNIST AUROC of Mahalanobis 0.9993 -> 1.0000
    /// on the default model, zeros 0.9690 -> 0.9762).
    AllStages,
}

impl FeatureDepth {
    pub const ALL: [FeatureDepth; 2] = [FeatureDepth::Last, FeatureDepth::AllStages];

    /// The name `--features` takes.
    pub fn name(self) -> &'static str {
        match self {
            FeatureDepth::Last => "last",
            FeatureDepth::AllStages => "all-stages",
        }
    }
}

impl std::str::FromStr for FeatureDepth {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown features {s:?}: use last or all-stages"))
    }
}

/// What calibrations and benchmarks read when they do not say: every stage's features.
pub(crate) fn default_feature_depth() -> FeatureDepth {
    FeatureDepth::AllStages
}

impl ScoredSet {
    pub fn len(&self) -> usize {
        self.msp.len()
    }

    pub fn is_empty(&self) -> bool {
        self.msp.is_empty()
    }

    /// The set as the detectors take it, with the feature detectors reading `depth`.
    pub fn samples(&self, depth: FeatureDepth) -> Result<Samples<'_>> {
        let (features, dim) = match depth {
            FeatureDepth::Last => (&self.features, self.feature_dim),
            FeatureDepth::AllStages => (&self.stage_features, self.stage_feature_dim),
        };
        Ok(Samples::new(
            &self.logits,
            features,
            &self.recon_error,
            self.num_classes,
            dim,
        )?)
    }

    /// The images of `other` after this set's (the same model scored both).
    pub fn append(&mut self, other: ScoredSet) {
        assert_eq!(
            (self.num_classes, self.feature_dim, self.stage_feature_dim),
            (
                other.num_classes,
                other.feature_dim,
                other.stage_feature_dim
            ),
            "sets scored by the same model"
        );
        self.msp.extend(other.msp);
        self.recon_error.extend(other.recon_error);
        self.predictions.extend(other.predictions);
        self.logits.extend(other.logits);
        self.features.extend(other.features);
        self.stage_features.extend(other.stage_features);
        self.noised.extend(other.noised);
        self.denoised.extend(other.denoised);
    }

    /// The OOD score of the max-softmax detector: larger means more likely OOD.
    pub fn msp_ood_score(&self) -> Vec<f64> {
        self.msp.iter().map(|m| -m).collect()
    }
}

/// Runs `nets` (one model, or an ensemble read as one: see [`ood_train::infer()`]) over `pixels` (f32 in [0, 1]): the classifier on the images as they are, the
/// decoder on copies noised as in training (seeded by `seed` and `stream`, so the same set
/// always gets the same noise).
pub fn score_images(
    nets: &[OodNet],
    pixels: &[f32],
    noise: &NoiseConfig,
    seed: u64,
    stream: u64,
    batch_size: usize,
    device: &Device,
) -> Result<ScoredSet> {
    let side = nets[0].config.image_size;
    let noised = noised_copy(pixels, side, noise, seed, stream, false);
    score_noised(nets, pixels, Some(noised), batch_size, device)
}

/// [`score_images`], but each image is noised as if it were alone in the set: an image's
/// reconstruction error does not depend on the images scored with it (a server batching
/// unrelated requests together needs that), and equals what [`score_images`] gives for that
/// image alone.
pub fn score_images_independently(
    nets: &[OodNet],
    pixels: &[f32],
    noise: &NoiseConfig,
    seed: u64,
    stream: u64,
    batch_size: usize,
    device: &Device,
) -> Result<ScoredSet> {
    let side = nets[0].config.image_size;
    let noised = noised_copy(pixels, side, noise, seed, stream, true);
    score_noised(nets, pixels, Some(noised), batch_size, device)
}

/// `pixels` corrupted as in training, from the seed stream `(seed, stream)`: drawn once over
/// the whole set, or afresh for each image (`each_alone`) so that an image's noise does not
/// depend on the images beside it.
fn noised_copy(
    pixels: &[f32],
    side: usize,
    noise: &NoiseConfig,
    seed: u64,
    stream: u64,
    each_alone: bool,
) -> Vec<f32> {
    let mut noised = pixels.to_vec();
    let chunk = if each_alone {
        side * side
    } else {
        noised.len().max(1)
    };
    for part in noised.chunks_mut(chunk) {
        corrupt_batch(part, side, side, noise, &mut stream_rng(seed, stream, 0));
    }
    noised
}

/// [`score_images`] without the noised copy: the decoder reconstructs the images themselves
/// from the trunk pass the classifier already made, so the trunk runs once per image instead
/// of twice. Its reconstruction error is not the one calibrations are made with (that is of a
/// noised copy), so use it only under a rule that does not read that error
/// ([`crate::Calibration::reads_reconstruction_error`]).
pub fn score_images_clean(
    nets: &[OodNet],
    pixels: &[f32],
    batch_size: usize,
    device: &Device,
) -> Result<ScoredSet> {
    score_noised(nets, pixels, None, batch_size, device)
}

/// Scores `pixels` with the decoder fed `noised` (the images themselves when `None`).
fn score_noised(
    nets: &[OodNet],
    pixels: &[f32],
    noised: Option<Vec<f32>>,
    batch_size: usize,
    device: &Device,
) -> Result<ScoredSet> {
    let side = nets[0].config.image_size;
    let per = side * side;
    let out = infer(nets, pixels, noised.as_deref(), true, batch_size, device)?;
    let noised = noised.unwrap_or_else(|| pixels.to_vec());
    let msp = (0..out.len())
        .map(|i| ood_calibrate::max_softmax(out.logits_row(i)))
        .collect();
    let recon_error = pixels
        .chunks_exact(per)
        .zip(out.reconstructions.chunks_exact(per))
        .map(|(x, r)| {
            x.iter()
                .zip(r)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                / per as f64
        })
        .collect();
    Ok(ScoredSet {
        msp,
        recon_error,
        predictions: out.predictions(),
        logits: out.logits,
        features: out.pooled,
        stage_features: out.stage_pooled,
        noised,
        denoised: out.reconstructions,
        num_classes: out.num_classes,
        feature_dim: out.feature_dim,
        stage_feature_dim: out.stage_feature_dim,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn independent_noise_does_not_depend_on_batch_mates() {
        let config = ood_model::preset("tiny", 9).unwrap();
        let (_vars, net) = ood_model::build(&config, &Device::Cpu, 0).unwrap();
        let per = 28 * 28;
        let a: Vec<f32> = (0..per).map(|i| (i % 7) as f32 / 7.0).collect();
        let b: Vec<f32> = (0..per).map(|i| (i % 5) as f32 / 5.0).collect();
        let noise = NoiseConfig::default();
        let cpu = &Device::Cpu;
        let alone = score_images(std::slice::from_ref(&net), &b, &noise, 3, 30, 8, cpu).unwrap();
        let pair = [a.clone(), b.clone()].concat();
        let together =
            score_images_independently(std::slice::from_ref(&net), &pair, &noise, 3, 30, 8, cpu)
                .unwrap();
        assert_eq!(together.noised[per..], alone.noised[..]);
        assert!((together.recon_error[1] - alone.recon_error[0]).abs() < 1e-6);
        // Noised as one set, the second image gets other noise than alone.
        let shared =
            score_images(std::slice::from_ref(&net), &pair, &noise, 3, 30, 8, cpu).unwrap();
        assert_ne!(shared.noised[per..], alone.noised[..]);
    }

    #[test]
    fn clean_scoring_shares_the_classifier_and_reconstructs_the_image_itself() {
        let config = ood_model::preset("tiny", 9).unwrap();
        let (_vars, net) = ood_model::build(&config, &Device::Cpu, 1).unwrap();
        let nets = std::slice::from_ref(&net);
        let pixels: Vec<f32> = (0..2 * 28 * 28).map(|i| (i % 11) as f32 / 11.0).collect();
        let cpu = &Device::Cpu;
        let noise = NoiseConfig::default();
        let noised = score_images(nets, &pixels, &noise, 3, 30, 2, cpu).unwrap();
        let clean = score_images_clean(nets, &pixels, 2, cpu).unwrap();
        // The classifier and the features do not see the decoder's input.
        assert_eq!(clean.logits, noised.logits);
        assert_eq!(clean.stage_features, noised.stage_features);
        assert_eq!(clean.noised, pixels);
        // The decoder's input differs, and so does its output.
        assert_ne!(clean.denoised, noised.denoised);
        let direct = infer(nets, &pixels, None, true, 2, cpu).unwrap();
        assert_eq!(clean.denoised, direct.reconstructions);
    }
}
