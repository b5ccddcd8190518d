//! The end-to-end tests of candle-ood (`tests/tests/`: the `ood` commands chained on small
//! subsets of the real MNIST) and their shared helpers here: finding the real MNIST, loading it
//! once, and calling `ood` in-process.
//!
//! It is not a library for users (it is never published), and not where unit tests live: each
//! crate tests its own parts; without MNIST these tests print why and skip.

use ood_data::source::{resolve_data_root, MNIST};
use ood_data::{DatasetDir, LabeledImages, Split};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The data root holding `mnist/`: `$OOD_DATA_DIR`, else `../shared/data` beside the checkout.
pub fn data_root() -> Option<PathBuf> {
    let from_env = resolve_data_root(None);
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    [from_env, beside]
        .into_iter()
        .find(|p| p.join(MNIST).is_dir())
}

/// MNIST's train and test splits, loaded once per test binary; `None` (with the reason
/// printed) when the data is absent.
pub fn mnist() -> Option<&'static (LabeledImages, LabeledImages)> {
    static DATA: OnceLock<Option<(LabeledImages, LabeledImages)>> = OnceLock::new();
    DATA.get_or_init(|| {
        let Some(root) = data_root() else {
            eprintln!("SKIPPED: no MNIST found (set OOD_DATA_DIR to a root holding mnist/)");
            return None;
        };
        ood_model::configure_threads(None);
        let dir = DatasetDir::in_root(&root, MNIST).unwrap();
        Some((
            dir.load(Split::Train).unwrap(),
            dir.load(Split::Test).unwrap(),
        ))
    })
    .as_ref()
}

/// What each end-to-end test starts from: the data root, as the command line takes it, and a
/// temporary folder for the test's files. `None` (with the reason printed) without MNIST.
pub fn setup() -> Option<(String, tempfile::TempDir)> {
    mnist()?;
    let root = data_root()?.to_str()?.to_string();
    Some((root, tempfile::tempdir().expect("a temporary folder")))
}

/// `ood ARGS`, run in-process.
pub fn ood(args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["ood"];
    full.extend_from_slice(args);
    ood_cli::run(full)
}
