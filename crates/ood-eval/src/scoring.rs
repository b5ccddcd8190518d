//! Scoring sets of images with a trained model: max-softmax, reconstruction error and
//! predictions, as plain arrays.

use crate::Result;
use candle_core::Device;
use ood_data::batch::stream_rng;
use ood_data::noise::{corrupt_batch, NoiseConfig};
use ood_model::OodNet;
use ood_train::infer;

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
    /// Pooled trunk features, row-major.
    pub features: Vec<f32>,
    /// The noised copies the decoder saw.
    pub noised: Vec<f32>,
    /// The decoder's outputs.
    pub denoised: Vec<f32>,
    pub num_classes: usize,
    pub feature_dim: usize,
}

impl ScoredSet {
    pub fn len(&self) -> usize {
        self.msp.len()
    }

    pub fn is_empty(&self) -> bool {
        self.msp.is_empty()
    }

    /// The OOD score of the max-softmax detector: larger means more likely OOD.
    pub fn msp_ood_score(&self) -> Vec<f64> {
        self.msp.iter().map(|m| -m).collect()
    }
}

/// Runs `net` over `pixels` (f32 in [0, 1]): the classifier on the images as they are, the
/// decoder on copies noised as in training (seeded by `seed` and `stream`, so the same set
/// always gets the same noise).
pub fn score_images(
    net: &OodNet,
    pixels: &[f32],
    noise: &NoiseConfig,
    seed: u64,
    stream: u64,
    batch_size: usize,
    device: &Device,
) -> Result<ScoredSet> {
    let side = net.config.image_size;
    let mut noised = pixels.to_vec();
    corrupt_batch(
        &mut noised,
        side,
        side,
        noise,
        &mut stream_rng(seed, stream, 0),
    );
    score_noised(net, pixels, noised, batch_size, device)
}

/// [`score_images`], but each image is noised as if it were alone in the set: an image's
/// reconstruction error does not depend on the images scored with it (a server batching
/// unrelated requests together needs that), and equals what [`score_images`] gives for that
/// image alone.
pub fn score_images_independently(
    net: &OodNet,
    pixels: &[f32],
    noise: &NoiseConfig,
    seed: u64,
    stream: u64,
    batch_size: usize,
    device: &Device,
) -> Result<ScoredSet> {
    let side = net.config.image_size;
    let mut noised = pixels.to_vec();
    for image in noised.chunks_exact_mut(side * side) {
        corrupt_batch(image, side, side, noise, &mut stream_rng(seed, stream, 0));
    }
    score_noised(net, pixels, noised, batch_size, device)
}

fn score_noised(
    net: &OodNet,
    pixels: &[f32],
    noised: Vec<f32>,
    batch_size: usize,
    device: &Device,
) -> Result<ScoredSet> {
    let side = net.config.image_size;
    let per = side * side;
    let out = infer(net, pixels, Some(&noised), true, batch_size, device)?;
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
        noised,
        denoised: out.reconstructions,
        num_classes: out.num_classes,
        feature_dim: out.feature_dim,
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
        let alone = score_images(&net, &b, &noise, 3, 30, 8, cpu).unwrap();
        let pair = [a.clone(), b.clone()].concat();
        let together = score_images_independently(&net, &pair, &noise, 3, 30, 8, cpu).unwrap();
        assert_eq!(together.noised[per..], alone.noised[..]);
        assert!((together.recon_error[1] - alone.recon_error[0]).abs() < 1e-6);
        // Noised as one set, the second image gets other noise than alone.
        let shared = score_images(&net, &pair, &noise, 3, 30, 8, cpu).unwrap();
        assert_ne!(shared.noised[per..], alone.noised[..]);
    }
}
