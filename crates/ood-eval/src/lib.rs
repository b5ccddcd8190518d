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
//! let scored = ood_eval::score_images(std::slice::from_ref(&net), &pixels, &noise, 0, 0, 2, &Device::Cpu)?;
//! assert_eq!(scored.msp.len(), 3);
//! assert!(scored.msp.iter().all(|m| (1.0 / 9.0..=1.0).contains(m)));
//! # Ok::<(), ood_eval::EvalError>(())
//! ```

pub mod bench_ood;
pub mod calibration;
pub mod evaluation;
pub mod model;
pub mod odin;
pub mod plots;
pub mod report;
pub mod scoring;

pub use calibration::{
    calibrate, parse_calibration, read_calibration, write_calibration, AcceptRule, AcceptScore,
    Calibration, CalibrationConfig, Decision, ReferencePens, CALIBRATION_FILE, KNN_BANK, KNN_K,
};
pub use evaluation::{evaluate, Evaluation, OperatingPoint};
pub use model::{calibrated_model, load_model, load_model_from_bytes, model_sha256, LoadedModel};
pub use scoring::{
    score_images, score_images_clean, score_images_independently, FeatureDepth, ScoredSet,
};

use ood_train::TrainConfig;
use std::path::PathBuf;

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

/// The split configuration a model was trained with (so calibration uses its hold-out).
pub fn split_config(train: &TrainConfig) -> ood_data::SplitConfig {
    ood_data::SplitConfig {
        classes: train.classes(),
        validation_size: train.validation_size,
        seed: train.split_seed(),
        limit: train.limit,
    }
}
