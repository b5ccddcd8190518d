//! The calibration stage (report, section 3.4): thresholds from held-out digits and synthetic
//! OOD that the decoder makes from rotated or heavily occluded digits. No test image is used.

use crate::scoring::{score_images, ScoredSet};
use crate::{EvalError, Result};
use candle_core::Device;
use ood_calibrate::{
    auroc, roc_curve, CombinedRule, DetectionStats, RocPoint, Threshold, ThresholdRule,
};
use ood_data::batch::{stream_rng, to_unit_f32};
use ood_data::noise::{corrupt_batch, OodTransform};
use ood_model::OodNet;
use ood_train::{infer, TrainConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file name of a calibration, written beside its checkpoint.
pub const CALIBRATION_FILE: &str = "calibration.json";

const SYNTH_NOISE_STREAM: u64 = 10;
const ID_SCORE_STREAM: u64 = 11;
const OOD_SCORE_STREAM: u64 = 12;

/// How to calibrate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationConfig {
    /// The rule that picks the max-softmax threshold on the calibration ROC curve.
    pub msp_rule: ThresholdRule,
    /// Use the reconstruction error as a second test (models trained with a decoder).
    pub use_reconstruction: bool,
    /// Fraction of held-out digits the reconstruction test alone must accept.
    pub recon_id_acceptance: f64,
    pub batch_size: usize,
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        Self {
            msp_rule: ThresholdRule::BestAccuracy,
            use_reconstruction: true,
            recon_id_acceptance: 0.99,
            batch_size: 500,
        }
    }
}

/// A calibrated detector, tied to one checkpoint by its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub checkpoint_sha256: String,
    pub checkpoint_file: String,
    pub config: CalibrationConfig,
    /// The decision rule: OOD when max-softmax < its threshold or reconstruction error > its.
    pub rule: CombinedRule,
    /// The max-softmax threshold alone on the calibration set (as an OOD score `-msp`).
    pub msp_threshold: Threshold,
    /// The combined rule on the calibration set.
    pub calibration_stats: DetectionStats,
    pub auroc_msp: f64,
    pub auroc_recon: f64,
    /// ROC of the max-softmax score on the calibration set (OOD score `-msp`), thinned.
    pub roc_msp: Vec<RocPoint>,
    pub n_in_distribution: usize,
    pub n_synthetic_ood: usize,
    /// The transforms that made the synthetic OOD, in turn over the held-out digits.
    pub ood_transforms: Vec<String>,
    pub producer: String,
}

/// The calibration set's scores, kept for figures.
pub struct CalibrationSet {
    pub in_distribution: ScoredSet,
    pub synthetic_ood: ScoredSet,
    /// The held-out digits and the synthetic OOD images, f32 in [0, 1].
    pub id_pixels: Vec<f32>,
    pub synthetic_pixels: Vec<f32>,
}

/// Synthetic OOD from in-distribution images: transform `i % transforms.len()` applied to
/// image `i`, noised as in training, and passed through the decoder.
pub fn synthesize_ood(
    net: &OodNet,
    pixels: &[f32],
    transforms: &[OodTransform],
    train: &TrainConfig,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<f32>> {
    let side = net.config.image_size;
    let mut rng = stream_rng(train.seed, SYNTH_NOISE_STREAM, 0);
    let mut transformed = Vec::with_capacity(pixels.len());
    for (i, img) in pixels.chunks_exact(side * side).enumerate() {
        transformed.extend(transforms[i % transforms.len()].apply(img, side, side, &mut rng));
    }
    corrupt_batch(&mut transformed, side, side, &train.noise, &mut rng);
    Ok(infer(net, &transformed, None, true, batch_size, device)?.reconstructions)
}

/// Keeps at most `max` points of a curve, always the first and the last.
pub fn thin<T: Clone>(points: &[T], max: usize) -> Vec<T> {
    if points.len() <= max || max < 2 {
        return points.to_vec();
    }
    let step = (points.len() - 1) as f64 / (max - 1) as f64;
    (0..max)
        .map(|i| points[(i as f64 * step).round() as usize].clone())
        .collect()
}

/// Calibrates `net` on the validation hold-out of its training split.
#[allow(clippy::too_many_arguments)]
pub fn calibrate(
    net: &OodNet,
    train: &TrainConfig,
    validation: &ood_data::LabeledImages,
    checkpoint: &Path,
    config: &CalibrationConfig,
    device: &Device,
) -> Result<(Calibration, CalibrationSet)> {
    let transforms = OodTransform::REPORT;
    let id_pixels = to_unit_f32(validation);
    let ood_pixels = synthesize_ood(
        net,
        &id_pixels,
        &transforms,
        train,
        config.batch_size,
        device,
    )?;
    let id = score_images(
        net,
        &id_pixels,
        &train.noise,
        train.seed,
        ID_SCORE_STREAM,
        config.batch_size,
        device,
    )?;
    let ood = score_images(
        net,
        &ood_pixels,
        &train.noise,
        train.seed,
        OOD_SCORE_STREAM,
        config.batch_size,
        device,
    )?;
    let use_recon = config.use_reconstruction && train.train_decoder;
    let rule = CombinedRule::calibrate(
        &id.msp,
        &ood.msp,
        config.msp_rule,
        use_recon.then_some(id.recon_error.as_slice()),
        config.recon_id_acceptance,
    )?;
    let (id_s, ood_s) = (id.msp_ood_score(), ood.msp_ood_score());
    let calibration = Calibration {
        checkpoint_sha256: ood_model::checkpoint::file_sha256(checkpoint)?,
        checkpoint_file: checkpoint.display().to_string(),
        config: config.clone(),
        rule,
        msp_threshold: config.msp_rule.choose(&id_s, &ood_s)?,
        calibration_stats: rule.evaluate(
            &id.msp,
            Some(&id.recon_error),
            &ood.msp,
            Some(&ood.recon_error),
        )?,
        auroc_msp: auroc(&id_s, &ood_s)?,
        auroc_recon: auroc(&id.recon_error, &ood.recon_error)?,
        roc_msp: thin(&roc_curve(&id_s, &ood_s)?, 200),
        n_in_distribution: id.len(),
        n_synthetic_ood: ood.len(),
        ood_transforms: transforms.iter().map(|t| t.name()).collect(),
        producer: concat!("candle-ood ", env!("CARGO_PKG_VERSION")).to_string(),
    };
    Ok((
        calibration,
        CalibrationSet {
            in_distribution: id,
            synthetic_ood: ood,
            id_pixels,
            synthetic_pixels: ood_pixels,
        },
    ))
}

/// The default place of a checkpoint's calibration.
pub fn default_calibration_path(checkpoint: &Path) -> PathBuf {
    checkpoint.with_file_name(CALIBRATION_FILE)
}

/// Writes the calibration as pretty JSON, atomically.
pub fn write_calibration(path: &Path, calibration: &Calibration) -> Result<()> {
    let text = serde_json::to_string_pretty(calibration).expect("the calibration serialises");
    ood_data::atomic::write_atomic(path, text.as_bytes())
        .map_err(|e| EvalError::Io(path.to_path_buf(), e))
}

/// Reads a calibration and checks that it was made for `checkpoint`.
pub fn read_calibration(path: &Path, checkpoint: &Path) -> Result<Calibration> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        EvalError::Calibration(format!(
            "{}: {e} (run `ood calibrate {}` first)",
            path.display(),
            checkpoint.display()
        ))
    })?;
    let calibration: Calibration = serde_json::from_str(&text).map_err(|e| {
        EvalError::Calibration(format!("{}: not a calibration file: {e}", path.display()))
    })?;
    let sha = ood_model::checkpoint::file_sha256(checkpoint)?;
    if calibration.checkpoint_sha256 != sha {
        return Err(EvalError::Calibration(format!(
            "{} was made for another checkpoint (sha256 {}), not {} (sha256 {sha}): calibrate this checkpoint again",
            path.display(),
            calibration.checkpoint_sha256,
            checkpoint.display()
        )));
    }
    Ok(calibration)
}
