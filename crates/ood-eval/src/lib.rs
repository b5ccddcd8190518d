//! The candle-ood calibration and evaluation stages.
//!
//! Given a checkpoint, this crate scores sets of images (max-softmax probability and the
//! decoder's reconstruction error), builds the calibration set of the source report (held-out
//! digits plus synthetic OOD that the decoder makes from rotated or heavily occluded digits),
//! calibrates the combined rule with `ood-calibrate`, evaluates it on the test set with the
//! unknown classes as OOD, and writes a report folder with `report.md`, `metrics.json` and
//! figures (drawn with plotters and a font shipped in `assets/`, so no system font is needed).
//!
//! It does not train (that is `ood-train`) and it holds no metric maths of its own (that is
//! `ood-calibrate`, which works on plain arrays).
//!
//! ```
//! // Score a few images with a fresh (untrained) tiny model: max softmax and reconstruction
//! // error per image, as plain arrays.
//! use candle_core::Device;
//! let config = ood_model::preset("tiny", 9)?;
//! let (_vars, net) = ood_model::build(&config, &Device::Cpu, 0)?;
//! let pixels = vec![0.5f32; 3 * 28 * 28];
//! let noise = ood_data::NoiseConfig::default();
//! let scored = ood_eval::score_images(&net, &pixels, &noise, 0, 0, 2, &Device::Cpu)?;
//! assert_eq!(scored.msp.len(), 3);
//! assert!(scored.msp.iter().all(|m| (1.0 / 9.0..=1.0).contains(m)));
//! # Ok::<(), ood_eval::EvalError>(())
//! ```

pub mod bench_ood;
pub mod calibration;
pub mod evaluation;
pub mod odin;
pub mod plots;
pub mod report;
pub mod scoring;

pub use calibration::{
    calibrate, parse_calibration, read_calibration, write_calibration, AcceptRule, Calibration,
    CalibrationConfig, Decision, CALIBRATION_FILE,
};
pub use evaluation::{evaluate, Evaluation, OperatingPoint};
pub use scoring::{score_images, score_images_independently, ScoredSet};

use candle_core::Device;
use ood_model::{Checkpoint, CheckpointMeta, OodNet};
use ood_train::TrainConfig;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {source}", path = .0.display(), source = .1)]
    Io(PathBuf, std::io::Error),
    #[error("{0}")]
    Calibration(String),
    #[error("{path}: {reason}", path = .0.display(), reason = .1)]
    Checkpoint(PathBuf, String),
    #[error(transparent)]
    Metrics(#[from] ood_calibrate::CalibrateError),
    #[error(transparent)]
    Plot(#[from] plots::PlotError),
    #[error(transparent)]
    Data(#[from] ood_data::DataError),
    #[error(transparent)]
    Model(#[from] ood_model::ModelError),
    #[error(transparent)]
    Train(#[from] ood_train::TrainError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;

/// A checkpoint ready to use: its metadata, training arguments and rebuilt network.
pub struct LoadedModel {
    pub path: PathBuf,
    pub meta: CheckpointMeta,
    pub train: TrainConfig,
    pub net: OodNet,
}

/// Loads a checkpoint written by the training stage.
pub fn load_model(path: &Path, device: &Device) -> Result<LoadedModel> {
    let bytes = std::fs::read(path).map_err(|e| EvalError::Io(path.to_path_buf(), e))?;
    load_model_from_bytes(&bytes, path, device)
}

/// Loads a checkpoint held in memory (a model embedded in a binary); `path` is what errors and
/// [`LoadedModel::path`] call it.
pub fn load_model_from_bytes(bytes: &[u8], path: &Path, device: &Device) -> Result<LoadedModel> {
    let ck = Checkpoint::from_bytes(bytes, path, device)?;
    let train: TrainConfig = serde_json::from_value(ck.meta.training.clone()).map_err(|e| {
        EvalError::Checkpoint(
            path.to_path_buf(),
            format!("unreadable training arguments: {e}"),
        )
    })?;
    let (_, net) = ck.build_model(path, device)?;
    Ok(LoadedModel {
        path: path.to_path_buf(),
        meta: ck.meta,
        train,
        net,
    })
}

/// Loads a checkpoint and its calibration (by default `calibration.json` beside it), which must
/// have been made for exactly this checkpoint.
pub fn calibrated_model(
    checkpoint: &Path,
    calibration: Option<&Path>,
    device: &Device,
) -> Result<(LoadedModel, Calibration)> {
    let model = load_model(checkpoint, device)?;
    let path = calibration.map_or_else(
        || calibration::default_calibration_path(checkpoint),
        Path::to_path_buf,
    );
    let calibration = read_calibration(&path, checkpoint)?;
    Ok((model, calibration))
}

/// The split configuration a model was trained with (so calibration uses its hold-out).
pub fn split_config(train: &TrainConfig) -> ood_data::SplitConfig {
    ood_data::SplitConfig {
        classes: train.classes(),
        validation_size: train.validation_size,
        seed: train.seed,
        limit: train.limit,
    }
}
