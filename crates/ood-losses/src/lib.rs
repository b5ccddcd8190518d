//! The candle-ood training objective (report, section 3.3), on plain candle tensors.
//!
//! * Eq. 2, [`denoising_mse`]: mean squared error between the clean image and the decoder's
//!   output for the noised image.
//! * Eq. 3, [`cross_entropy`] plus `k` times [`inverse_focal_penalty`]: the penalty
//!   `-sum_{i != t} p_i log(1 - p_i)` punishes confident wrong classes. `log(1 - p_i)` is
//!   computed exactly as `logsumexp_{j != i} z_j - logsumexp_j z_j`, so it stays finite and
//!   keeps its gradient even when `p_i` rounds to 1.
//! * Eq. 4, [`std_loss`]: the standard deviation of the softmax of misclassified samples.
//!   The report writes `-std(p)`, which would make wrong predictions *more* peaked, while its
//!   text says the loss makes their scores even. [`StdSign::Intended`] (the default) minimises
//!   `std(p)` as the text intends; [`StdSign::Literal`] keeps the printed sign.
//! * [`objective`]: `L = CE + k * penalty + lambda_std * L_std + lambda_rec * L_den`.
//! * [`energy_margin`]: the outlier-exposure term, for training's optional negatives.
//! * [`distillation`]: the KL divergence from a teacher's softened softmax, for a student
//!   that learns from an ensemble.
//! * [`logit_pairing`]: the squared gap between a restyled copy's logits and the original's,
//!   for training that pulls other pens onto MNIST's.
//!
//! This crate knows nothing of models, data or optimisers; it takes logits, class indices and
//! images as tensors and returns scalar tensors to differentiate.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let logits = Tensor::new(&[[0f32, 0.0]], &Device::Cpu)?;
//! let targets = Tensor::new(&[0u32], &Device::Cpu)?;
//! let ce = ood_losses::cross_entropy(&logits, &targets)?.to_scalar::<f32>()?;
//! assert!((ce - std::f32::consts::LN_2).abs() < 1e-6);
//! # Ok::<(), candle_core::Error>(())
//! ```

use candle_core::{DType, Result, Tensor, D};
use serde::{Deserialize, Serialize};

/// The sign of the std loss; see the crate documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StdSign {
    /// Minimise the std of misclassified samples' softmax: even scores (the report's intent).
    #[default]
    Intended,
    /// Minimise `-std`, as Eq. 4 is printed: peaked scores for wrong predictions.
    Literal,
}

/// The weights of the objective's terms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossWeights {
    /// `k` of Eq. 3 (the report found about 1 best).
    pub k: f64,
    pub lambda_std: f64,
    pub lambda_rec: f64,
    pub std_sign: StdSign,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self {
            k: 1.0,
            lambda_std: 1.0,
            lambda_rec: 1.0,
            std_sign: StdSign::Intended,
        }
    }
}

/// A huge negative logit that removes a class from a log-sum-exp without producing NaNs.
const MASKED: f64 = -1e30;

fn logsumexp_keepdim(x: &Tensor) -> Result<Tensor> {
    // The max is detached: with it held constant the expression is still exactly
    // logsumexp(x), so its gradient is the softmax, and no gradient flows through argmax.
    let max = x.max_keepdim(D::Minus1)?.detach();
    x.broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        .broadcast_add(&max)
}

fn one_hot(targets: &Tensor, classes: usize, dtype: DType) -> Result<Tensor> {
    let t = targets.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    let mut v = vec![0f32; t.len() * classes];
    for (row, &c) in t.iter().enumerate() {
        if c as usize >= classes {
            candle_core::bail!("target class {c} out of range for {classes} classes");
        }
        v[row * classes + c as usize] = 1.0;
    }
    Tensor::from_vec(v, (t.len(), classes), targets.device())?.to_dtype(dtype)
}

/// `log p` of the softmax, `(N, C)`.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    logits.broadcast_sub(&logsumexp_keepdim(logits)?)
}

/// `log(1 - p_i)` for every class, `(N, C)`, exact and finite for `p_i -> 1`.
pub fn log_one_minus_softmax(logits: &Tensor) -> Result<Tensor> {
    let (_, c) = logits.dims2()?;
    let mut mask = vec![0f32; c * c];
    for i in 0..c {
        mask[i * c + i] = MASKED as f32;
    }
    let mask = Tensor::from_vec(mask, (1, c, c), logits.device())?.to_dtype(logits.dtype())?;
    // Row i of the (N, C, C) tensor holds the logits with class i removed.
    let without_each = logits.unsqueeze(1)?.broadcast_add(&mask)?;
    let lse_without = logsumexp_keepdim(&without_each)?.squeeze(D::Minus1)?;
    lse_without.broadcast_sub(&logsumexp_keepdim(logits)?)
}

/// Mean cross-entropy of `(N, C)` logits against `(N,)` class indices.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, c) = logits.dims2()?;
    let hot = one_hot(targets, c, logits.dtype())?;
    (log_softmax(logits)? * hot)?.sum_all()? / -(n as f64)
}

/// Batch mean of `-sum_{i != t} p_i log(1 - p_i)`: zero when no wrong class has mass, and
/// growing without bound as a wrong class becomes certain.
pub fn inverse_focal_penalty(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, c) = logits.dims2()?;
    let wrong = one_hot(targets, c, logits.dtype())?.affine(-1.0, 1.0)?;
    let p = log_softmax(logits)?.exp()?;
    let terms = (p * log_one_minus_softmax(logits)?)?;
    (terms * wrong)?.sum_all()? / -(n as f64)
}

/// Batch mean over all samples of `1[pred != t] * std(p)` (unbiased std over classes), with
/// the sign of `sign`. Correctly classified samples contribute zero.
pub fn std_loss(logits: &Tensor, targets: &Tensor, sign: StdSign) -> Result<Tensor> {
    let (n, c) = logits.dims2()?;
    let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let t = targets.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    let wrong: Vec<f32> = pred
        .iter()
        .zip(&t)
        .map(|(p, t)| (p != t) as u8 as f32)
        .collect();
    let wrong = Tensor::from_vec(wrong, n, logits.device())?.to_dtype(logits.dtype())?;
    let p = log_softmax(logits)?.exp()?;
    let centred = p.broadcast_sub(&p.mean_keepdim(D::Minus1)?)?;
    let var = (centred.sqr()?.sum(D::Minus1)? / (c as f64 - 1.0).max(1.0))?;
    // The epsilon keeps the gradient of sqrt finite at perfectly even scores.
    let std = (var + 1e-12)?.sqrt()?;
    let mean = ((std * wrong)?.sum_all()? / n as f64)?;
    match sign {
        StdSign::Intended => Ok(mean),
        StdSign::Literal => mean.neg(),
    }
}

/// The free energy `-logsumexp(z)` of each row of `(N, C)` logits, `(N,)`: low for inputs
/// the classifier knows, high for the rest.
pub fn energy(logits: &Tensor) -> Result<Tensor> {
    logsumexp_keepdim(logits)?.squeeze(D::Minus1)?.neg()
}

/// The margins of [`energy_margin`]: known inputs should sit below `known`, negatives above
/// `negative`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EnergyMargins {
    pub known: f64,
    pub negative: f64,
}

/// The energy-margin loss of outlier exposure (Liu et al., "Energy-based Out-of-distribution
/// Detection", 2020): `mean(relu(E(known) - m_known)^2) + mean(relu(m_negative - E(neg))^2)`.
/// It pushes apart the two energies only where they are on the wrong side of their margins,
/// and leaves the logits' level otherwise free, unlike a uniform target on the negatives,
/// which the lever study found made the model unsure of real digits too.
pub fn energy_margin(
    known_logits: &Tensor,
    negative_logits: &Tensor,
    margins: EnergyMargins,
) -> Result<Tensor> {
    let known = (energy(known_logits)? - margins.known)?
        .relu()?
        .sqr()?
        .mean_all()?;
    let negative = (energy(negative_logits)?.neg()? + margins.negative)?
        .relu()?
        .sqr()?
        .mean_all()?;
    known + negative
}

/// Knowledge distillation (Hinton et al., "Distilling the Knowledge in a Neural Network",
/// 2015): `T^2 * mean_n KL(softmax(t_n / T) || softmax(s_n / T))` for student logits `s` and
/// teacher logits `t`, both `(N, C)`. The teacher is detached: only the student learns. The
/// factor `T^2` keeps the gradient's size independent of the temperature, and the divergence
/// (rather than the cross-entropy with soft targets) makes the term zero when the student
/// matches the teacher, so its logged value reads directly.
pub fn distillation(
    student_logits: &Tensor,
    teacher_logits: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    if temperature.is_nan() || temperature <= 0.0 {
        candle_core::bail!("distillation temperature {temperature}: it must be positive");
    }
    let (n, _) = student_logits.dims2()?;
    let teacher_log_p = log_softmax(&(teacher_logits.detach() / temperature)?)?;
    let student_log_p = log_softmax(&(student_logits / temperature)?)?;
    let kl = (teacher_log_p.exp()? * (teacher_log_p - student_log_p)?)?.sum_all()?;
    kl * (temperature * temperature / n as f64)
}

/// Logit pairing: `mean((copy - original.detach())^2)` over `(N, C)` logits of `N` images and
/// a copy of each drawn another way (Kannan et al.'s "clean logit pairing", 2018, with one side
/// held fixed). Unlike a KL divergence between softmaxes, it pins the logits' level too, and
/// with it the energy that the rule reads. The original is detached so that the copy moves
/// towards it, not both towards each other.
pub fn logit_pairing(copy_logits: &Tensor, original_logits: &Tensor) -> Result<Tensor> {
    if copy_logits.dims() != original_logits.dims() {
        candle_core::bail!(
            "logit pairing of {:?} against {:?}: the shapes differ",
            copy_logits.dims(),
            original_logits.dims()
        );
    }
    (copy_logits - original_logits.detach())?.sqr()?.mean_all()
}

/// Eq. 2: mean squared error over all pixels.
pub fn denoising_mse(reconstruction: &Tensor, clean: &Tensor) -> Result<Tensor> {
    (reconstruction - clean)?.sqr()?.mean_all()
}

/// Every term of the objective, and their weighted sum.
#[derive(Debug, Clone)]
pub struct LossTerms {
    pub total: Tensor,
    pub cross_entropy: Tensor,
    pub inverse_focal: Tensor,
    pub std: Tensor,
    /// `None` when the decoder is not trained.
    pub denoising: Option<Tensor>,
}

/// `L = CE + k * penalty + lambda_std * L_std + lambda_rec * L_den`. Terms with a zero weight
/// are still reported, but not differentiated.
pub fn objective(
    logits: &Tensor,
    targets: &Tensor,
    denoising: Option<(&Tensor, &Tensor)>,
    weights: &LossWeights,
) -> Result<LossTerms> {
    let ce = cross_entropy(logits, targets)?;
    let focal = inverse_focal_penalty(logits, targets)?;
    let std = std_loss(logits, targets, weights.std_sign)?;
    let mut total = ce.clone();
    if weights.k != 0.0 {
        total = (total + (&focal * weights.k)?)?;
    }
    if weights.lambda_std != 0.0 {
        total = (total + (&std * weights.lambda_std)?)?;
    }
    let den = match denoising {
        Some((reconstruction, clean)) => {
            let den = denoising_mse(reconstruction, clean)?;
            if weights.lambda_rec != 0.0 {
                total = (total + (&den * weights.lambda_rec)?)?;
            }
            Some(den)
        }
        None => None,
    };
    Ok(LossTerms {
        total,
        cross_entropy: ce,
        inverse_focal: focal,
        std,
        denoising: den,
    })
}
