//! Running a trained model over a set in mini-batches (candle has no no-grad mode, so big
//! sets are never pushed through in one piece) and collecting plain arrays on the host.

use candle_core::{Device, Tensor};
use ood_model::OodNet;

/// Per-image outputs of both heads, as plain arrays.
#[derive(Debug, Clone, Default)]
pub struct Inference {
    /// `n * num_classes` logits, row-major.
    pub logits: Vec<f32>,
    /// `n * feature_dim` pooled trunk features (the last stage's, which the classifier
    /// reads), row-major.
    pub pooled: Vec<f32>,
    /// `n * stage_feature_dim` pooled features of every stage of the trunk side by side
    /// (shallow to deep), row-major: what feature detectors read, since the shallow stages
    /// see the strokes that the last one has abstracted away.
    pub stage_pooled: Vec<f32>,
    /// `n * pixels` decoder outputs, row-major (empty unless asked for).
    pub reconstructions: Vec<f32>,
    pub num_classes: usize,
    pub feature_dim: usize,
    pub stage_feature_dim: usize,
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

/// Runs `nets` in evaluation mode over `pixels` (f32 in [0, 1], `side * side` per image).
/// `decoder_input`, when given, is what the decoder sees instead of the images themselves.
///
/// Several nets are an ensemble, read as one model: the mean of their logits (so softmax and
/// energy are those of the averaged logits), their pooled features side by side (member 0's
/// first; the same for the stage features), and the mean of their reconstructions. One net
/// is the plain model.
pub fn infer(
    nets: &[OodNet],
    pixels: &[f32],
    decoder_input: Option<&[f32]>,
    keep_reconstructions: bool,
    batch_size: usize,
    device: &Device,
) -> candle_core::Result<Inference> {
    let first = nets
        .first()
        .ok_or_else(|| candle_core::Error::Msg("infer needs at least one net".into()))?;
    let side = first.config.image_size;
    let per = side * side;
    let n = pixels.len() / per;
    let members = nets.len() as f64;
    let mut out = Inference {
        num_classes: first.config.num_classes,
        feature_dim: nets.iter().map(|net| net.config.feature_dim()).sum(),
        stage_feature_dim: nets.iter().map(|net| net.config.stage_feature_dim()).sum(),
        ..Default::default()
    };
    for start in (0..n).step_by(batch_size.max(1)) {
        let end = (start + batch_size).min(n);
        let batch = |source: &[f32]| {
            Tensor::from_slice(
                &source[start * per..end * per],
                (end - start, 1, side, side),
                device,
            )
        };
        let images = batch(pixels)?;
        let decoder_images = decoder_input.map(batch).transpose()?;
        let (mut logits, mut pooled, mut stage_pooled, mut reconstructions) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for net in nets {
            let stages = net.stage_features(&images, false)?;
            let each_pooled = stages
                .iter()
                .map(OodNet::pool)
                .collect::<candle_core::Result<Vec<_>>>()?;
            let net_pooled = each_pooled.last().expect("a trunk has stages").clone();
            logits.push(net.classify(&net_pooled)?);
            pooled.push(net_pooled);
            stage_pooled.push(Tensor::cat(&each_pooled, 1)?);
            let features = stages.last().expect("a trunk has stages").clone();
            if keep_reconstructions {
                let features = match &decoder_images {
                    Some(d) => net.features(d, false)?,
                    None => features,
                };
                reconstructions.push(net.decode(&features, false)?);
            }
        }
        let mean = |parts: &[Tensor]| Tensor::stack(parts, 0)?.sum(0)? / members;
        out.logits
            .extend(mean(&logits)?.flatten_all()?.to_vec1::<f32>()?);
        out.pooled
            .extend(Tensor::cat(&pooled, 1)?.flatten_all()?.to_vec1::<f32>()?);
        out.stage_pooled.extend(
            Tensor::cat(&stage_pooled, 1)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
        if keep_reconstructions {
            out.reconstructions
                .extend(mean(&reconstructions)?.flatten_all()?.to_vec1::<f32>()?);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(seed: u64) -> OodNet {
        let config = ood_model::preset("tiny", 3).unwrap();
        ood_model::build(&config, &Device::Cpu, seed).unwrap().1
    }

    fn images(n: usize) -> Vec<f32> {
        (0..n * 28 * 28)
            .map(|i| ((i * 7919) % 101) as f32 / 100.0)
            .collect()
    }

    #[test]
    fn an_ensemble_averages_logits_and_reconstructions_and_concatenates_features() {
        let (a, b) = (tiny(1), tiny(2));
        let pixels = images(5);
        let noised: Vec<f32> = pixels.iter().map(|p| 1.0 - p).collect();
        let run = |nets: &[OodNet]| infer(nets, &pixels, Some(&noised), true, 2, &Device::Cpu);
        let (one_a, one_b) = (
            run(std::slice::from_ref(&a)).unwrap(),
            run(std::slice::from_ref(&b)).unwrap(),
        );
        let both = run(&[a, b]).unwrap();
        assert_eq!((both.len(), both.num_classes), (5, 3));
        assert_eq!(both.feature_dim, 2 * one_a.feature_dim);
        assert_eq!(both.stage_feature_dim, 2 * one_a.stage_feature_dim);
        let close = |x: f32, y: f32| (x - y).abs() <= 1e-5 * (1.0 + y.abs());
        for (i, m) in both.logits.iter().enumerate() {
            assert!(
                close(*m, (one_a.logits[i] + one_b.logits[i]) / 2.0),
                "logit {i}"
            );
        }
        for (i, m) in both.reconstructions.iter().enumerate() {
            let mean = (one_a.reconstructions[i] + one_b.reconstructions[i]) / 2.0;
            assert!(close(*m, mean), "pixel {i}");
        }
        let d = one_a.feature_dim;
        for img in 0..5 {
            let row = &both.pooled[img * 2 * d..(img + 1) * 2 * d];
            assert_eq!(&row[..d], &one_a.pooled[img * d..(img + 1) * d]);
            assert_eq!(&row[d..], &one_b.pooled[img * d..(img + 1) * d]);
            let d = one_a.stage_feature_dim;
            let row = &both.stage_pooled[img * 2 * d..(img + 1) * 2 * d];
            assert_eq!(&row[..d], &one_a.stage_pooled[img * d..(img + 1) * d]);
        }
        // The members disagree, so the mean is neither of them.
        assert!(one_a
            .logits
            .iter()
            .zip(&one_b.logits)
            .any(|(x, y)| !close(*x, *y)));
    }

    #[test]
    fn an_ensemble_of_one_is_the_model_itself_and_none_is_an_error() {
        let net = tiny(3);
        let pixels = images(3);
        let out = infer(
            std::slice::from_ref(&net),
            &pixels,
            None,
            true,
            3,
            &Device::Cpu,
        )
        .unwrap();
        let features = net
            .features(
                &Tensor::from_slice(&pixels, (3, 1, 28, 28), &Device::Cpu).unwrap(),
                false,
            )
            .unwrap();
        let logits = net.classify(&OodNet::pool(&features).unwrap()).unwrap();
        assert_eq!(
            out.logits,
            logits.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        assert!(infer(&[], &pixels, None, false, 3, &Device::Cpu).is_err());
    }
}
