//! Running a trained model over a set in mini-batches (candle has no no-grad mode, so big
//! sets are never pushed through in one piece) and collecting plain arrays on the host.

use candle_core::{Device, Tensor};
use ood_model::OodNet;

/// Per-image outputs of both heads, as plain arrays.
#[derive(Debug, Clone, Default)]
pub struct Inference {
    /// `n * num_classes` logits, row-major.
    pub logits: Vec<f32>,
    /// `n * feature_dim` pooled trunk features, row-major.
    pub pooled: Vec<f32>,
    /// `n * pixels` decoder outputs, row-major (empty unless asked for).
    pub reconstructions: Vec<f32>,
    pub num_classes: usize,
    pub feature_dim: usize,
}

impl Inference {
    pub fn len(&self) -> usize {
        self.logits.len() / self.num_classes.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.logits.is_empty()
    }

    pub fn logits_row(&self, i: usize) -> &[f32] {
        &self.logits[i * self.num_classes..(i + 1) * self.num_classes]
    }

    /// The arg-max class of every image.
    pub fn predictions(&self) -> Vec<usize> {
        (0..self.len())
            .map(|i| {
                let row = self.logits_row(i);
                (0..row.len()).fold(0, |best, c| if row[c] > row[best] { c } else { best })
            })
            .collect()
    }
}

/// Runs `net` in evaluation mode over `pixels` (f32 in [0, 1], `side * side` per image).
/// `decoder_input`, when given, is what the decoder sees instead of the images themselves.
pub fn infer(
    net: &OodNet,
    pixels: &[f32],
    decoder_input: Option<&[f32]>,
    keep_reconstructions: bool,
    batch_size: usize,
    device: &Device,
) -> candle_core::Result<Inference> {
    let side = net.config.image_size;
    let per = side * side;
    let n = pixels.len() / per;
    let mut out = Inference {
        num_classes: net.config.num_classes,
        feature_dim: net.config.feature_dim(),
        ..Default::default()
    };
    for start in (0..n).step_by(batch_size.max(1)) {
        let end = (start + batch_size).min(n);
        let images = Tensor::from_slice(
            &pixels[start * per..end * per],
            (end - start, 1, side, side),
            device,
        )?;
        let features = net.features(&images, false)?;
        let pooled = OodNet::pool(&features)?;
        out.logits
            .extend(net.classify(&pooled)?.flatten_all()?.to_vec1::<f32>()?);
        out.pooled.extend(pooled.flatten_all()?.to_vec1::<f32>()?);
        if keep_reconstructions {
            let features = match decoder_input {
                Some(d) => net.features(
                    &Tensor::from_slice(
                        &d[start * per..end * per],
                        (end - start, 1, side, side),
                        device,
                    )?,
                    false,
                )?,
                None => features,
            };
            out.reconstructions.extend(
                net.decode(&features, false)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            );
        }
    }
    Ok(out)
}

/// The fraction of `predictions` equal to `targets`.
pub fn accuracy(predictions: &[usize], targets: &[u32]) -> f64 {
    if targets.is_empty() {
        return 0.0;
    }
    let right = predictions
        .iter()
        .zip(targets)
        .filter(|(p, t)| **p == **t as usize)
        .count();
    right as f64 / targets.len() as f64
}
