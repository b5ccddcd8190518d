//! The candle-ood model: a ResNet trunk shared by a classifier head and a denoising decoder.
//!
//! The trunk is ResNet-18 with its last stage dropped (three stages of BasicBlocks at
//! 28x28, 14x14 and 7x7, a 3x3 stem and no max-pool); the classifier pools the trunk's
//! features globally and maps them to one logit per known class; the decoder turns the same
//! features back into a 28x28 image in [0, 1] with transposed convolutions. This crate also
//! holds the presets, seeded initialisation, device choice and safetensors checkpoints whose
//! metadata says everything needed to rebuild the model.
//!
//! It is not a loss, a training loop or a detector: those live in `ood-losses`, `ood-train`
//! and `ood-calibrate`.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! let config = ood_model::preset("tiny", 9)?;
//! let (_varmap, net) = ood_model::build(&config, &Device::Cpu, 42)?;
//! let images = Tensor::zeros((2, 1, 28, 28), candle_core::DType::F32, &Device::Cpu)?;
//! let out = net.forward_all(&images, false)?;
//! assert_eq!(out.logits.dims(), &[2, 9]);
//! assert_eq!(out.reconstruction.dims(), &[2, 1, 28, 28]);
//! # Ok::<(), ood_model::ModelError>(())
//! ```

pub mod checkpoint;
pub mod config;
pub mod device;
pub mod init;
pub mod net;
pub mod ops;

pub use checkpoint::{named_values, save_checkpoint, Checkpoint, CheckpointMeta};
pub use config::{preset, ModelConfig, Preset, PRESETS};
pub use device::{configure_threads, tune_allocator, DeviceChoice};
pub use net::{OodNet, Outputs};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("configuration: {0}")]
    Config(String),
    #[error("device: {0}")]
    Device(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// A fresh model with seeded weights, and the variables that hold them.
pub fn build(config: &ModelConfig, device: &Device, seed: u64) -> Result<(VarMap, OodNet)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let net = OodNet::new(config, vb)?;
    init::seeded_init(&varmap, seed)?;
    Ok((varmap, net))
}

/// Trainable parameters (BatchNorm running statistics are not counted).
pub fn parameter_count(varmap: &VarMap) -> usize {
    let vars = varmap
        .data()
        .lock()
        .expect("the var map lock is never poisoned");
    vars.iter()
        .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
        .map(|(_, v)| v.elem_count())
        .sum()
}
