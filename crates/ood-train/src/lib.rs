//! The candle-ood training stage: data in, checkpoint out.
//!
//! [`train()`] runs AdamW with warm-up and cosine decay on the objective of `ood-losses`, with
//! the classifier on clean images and the decoder on noised copies through the shared trunk;
//! it writes a checkpoint atomically after every epoch and on interrupt, resumes exactly from
//! one, stops on a non-finite loss, and logs each epoch to `metrics.jsonl`.
//! [`train_with_teacher()`] adds a teacher's softened outputs to the objective (see
//! [`distill`]). [`infer()`] runs a
//! trained model over a set in mini-batches and returns plain arrays.
//!
//! It does not choose thresholds or compute OOD metrics (that is `ood-calibrate`), and it
//! does not parse command lines (that is `ood-cli`).
//!
//! ```no_run
//! use ood_train::{train, TrainConfig};
//! use ood_data::{ClassSpec, DatasetDir, Split, SplitConfig, Splits};
//! let mnist = DatasetDir::at("assets/data/mnist")?;
//! let (tr, te) = (mnist.load(Split::Train)?, mnist.load(Split::Test)?);
//! let splits = Splits::new(&tr, &te, &SplitConfig::default())?;
//! let config = TrainConfig::new("tiny", &ClassSpec::default())?;
//! let stop = std::sync::atomic::AtomicBool::new(false);
//! let summary = train(&config, &splits, &candle_core::Device::Cpu, "runs/demo".as_ref(), false, &stop)?;
//! println!("{:?}", summary.history.last());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod distill;
pub mod infer;
pub mod optim;
pub mod train;

pub use distill::{Distillation, Teacher};
pub use infer::{accuracy, infer, Inference};
pub use train::{
    member_dir, train, train_with_teacher, EpochMetrics, Outcome, OutlierExposure, TrainConfig,
    TrainSummary, CHECKPOINT_FILE, METRICS_FILE,
};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}", path = .0.display(), source = .1)]
    Io(PathBuf, std::io::Error),
    #[error("the loss became NaN or infinite in epoch {epoch}, batch {batch}; training stopped and the last good checkpoint ({}) was kept: lower the learning rate or the loss weights", checkpoint.display())]
    NonFinite {
        epoch: usize,
        batch: usize,
        checkpoint: PathBuf,
    },
    #[error("cannot resume: {0}")]
    Resume(String),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Data(#[from] ood_data::DataError),
    #[error(transparent)]
    Model(#[from] ood_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
