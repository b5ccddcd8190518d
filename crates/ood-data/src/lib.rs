//! Data for candle-ood: MNIST-style IDX files, open-set splits, noise and synthetic OOD.
//!
//! This crate reads and checks IDX files (gzip or raw), finds datasets under a data root
//! (`--data-dir`, else `$OOD_DATA_DIR`, else `assets/data`), makes the seeded splits of the
//! open-set protocol (known classes for training and validation, unknown classes for testing),
//! corrupts images for the denoiser (Gaussian noise plus an occluding square), warps training
//! images a little for augmentation (rotation, scale, shift), restyles them with other pens
//! and redraws test digits as the drawing page would send them ([`pen`]), draws scribbles as negatives for
//! outlier exposure, makes the synthetic-OOD transforms used in calibration (rotations, heavy
//! occlusion), and cuts sets into seeded mini-batches of candle tensors.
//!
//! It is not a model, a loss or a training loop, and it never downloads anything unless the
//! `hub` feature is on (see [`hub`]).
//!
//! ```
//! use ood_data::{idx::Images, source::LabeledImages, split::ClassSpec, batch::Batcher};
//! let data = LabeledImages {
//!     images: Images::new(28, 28, vec![0u8; 3 * 28 * 28]),
//!     labels: vec![1, 2, 9],
//! };
//! let batcher = Batcher::new(&data, &ClassSpec::default(), 2)?;
//! let first = batcher.epoch(0, &candle_core::Device::Cpu).next().unwrap()?;
//! assert_eq!(first.images.dims(), &[2, 1, 28, 28]);
//! assert_eq!(first.class_indices, vec![0, 1]); // digits 1 and 2 are classes 0 and 1
//! # Ok::<(), ood_data::DataError>(())
//! ```

pub mod atomic;
pub mod augment;
pub mod batch;
pub mod hub;
pub mod idx;
pub mod negatives;
pub mod noise;
pub mod pen;
pub mod prepare;
pub mod source;
pub mod split;

use std::path::PathBuf;

/// Everything that can go wrong with data; every variant about a file names it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: the file is empty")]
    Empty { path: PathBuf },
    #[error("{path}: truncated: expected {expected} bytes, found {found}")]
    Truncated {
        path: PathBuf,
        expected: usize,
        found: usize,
    },
    #[error("{path}: {found} bytes where {expected} were expected: trailing bytes after the data")]
    TrailingBytes {
        path: PathBuf,
        expected: usize,
        found: usize,
    },
    #[error("{path}: wrong magic number 0x{found:08x}, expected 0x{expected:08x} (is this the right IDX file?)")]
    WrongMagic {
        path: PathBuf,
        expected: u32,
        found: u32,
    },
    #[error("{path}: corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{} holds {image_count} images but {} holds {label_count} labels", images.display(), labels.display())]
    CountMismatch {
        images: PathBuf,
        image_count: usize,
        labels: PathBuf,
        label_count: usize,
    },
    #[error("{path}: no such file (nor {path}.gz)")]
    MissingFile { path: PathBuf },
    #[error("dataset {name} not found at {path}: pass --data-dir ROOT or set ${env} to a folder holding {name}/ with the four IDX files, or run `cargo xtask fetch-data` to download MNIST into assets/data", env = source::DATA_DIR_ENV)]
    MissingDataset { name: String, path: PathBuf },
    #[error("invalid classes: {0}")]
    InvalidClasses(String),
    #[error("download failed: {0}")]
    Download(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

pub use batch::{Batch, Batcher};
pub use noise::{NoiseConfig, OodTransform};
pub use source::{DatasetDir, LabeledImages, Split};
pub use split::{ClassSpec, SplitConfig, Splits};
