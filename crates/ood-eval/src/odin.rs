//! ODIN's input perturbation (Liang et al., 2018): nudge each image along the sign of the
//! gradient that raises its temperature-scaled max-softmax, then score the nudged image. In
//! distribution the nudge raises the score more than out of it. The scoring half is
//! `ood_calibrate::detectors::TemperatureMsp`; this module makes the perturbed logits, which
//! needs the model's input gradient.

use crate::Result;
use candle_core::{Device, Tensor, Var, D};
use ood_model::OodNet;

/// ODIN's two parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OdinConfig {
    pub temperature: f64,
    /// Step size of the perturbation, in pixel units (images are in [0, 1]).
    pub epsilon: f64,
}

impl Default for OdinConfig {
    fn default() -> Self {
        Self {
            temperature: 1000.0,
            epsilon: 0.002,
        }
    }
}

/// The logits of the ODIN-perturbed images, row-major. Several nets are an ensemble: the
/// perturbation follows the gradient of the mean logits, the read-out is the mean logits.
pub fn perturbed_logits(
    nets: &[OodNet],
    pixels: &[f32],
    config: &OdinConfig,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<f32>> {
    let side = nets[0].config.image_size;
    let per = side * side;
    let n = pixels.len() / per;
    let mut out = Vec::with_capacity(n * nets[0].config.num_classes);
    let mean_logits = |x: &Tensor| -> Result<Tensor> {
        let each = nets
            .iter()
            .map(|net| net.classify(&OodNet::pool(&net.features(x, false)?)?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok((Tensor::stack(&each, 0)?.sum(0)? / nets.len() as f64)?)
    };
    for start in (0..n).step_by(batch_size.max(1)) {
        let end = (start + batch_size).min(n);
        let x = Var::from_tensor(&Tensor::from_slice(
            &pixels[start * per..end * per],
            (end - start, 1, side, side),
            device,
        )?)?;
        let logits = (mean_logits(x.as_tensor())? / config.temperature)?;
        // log of the largest softmax probability, summed over the batch: each image's term only
        // depends on that image, so one backward gives every image's gradient.
        let log_p = ood_losses::log_softmax(&logits)?;
        let best = log_p.max(D::Minus1)?.sum_all()?;
        let grad = best
            .backward()?
            .remove(x.as_tensor())
            .expect("the input takes part in the loss");
        let nudged = (x.as_tensor() + (grad.sign()? * config.epsilon)?)?.detach();
        let logits = mean_logits(&nudged)?;
        out.extend(logits.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}
