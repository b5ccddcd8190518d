//! Checks against the real MNIST: `$OOD_DATA_DIR/mnist`, else `../shared/data/mnist` beside the
//! checkout. Skipped, with the reason printed, only when neither exists.

use ood_data::noise::{corrupt_batch, NoiseConfig};
use ood_data::source::{resolve_data_root, MNIST};
use ood_data::{batch::stream_rng, DatasetDir, LabeledImages, Split, SplitConfig, Splits};
use std::path::PathBuf;
use std::sync::OnceLock;

fn mnist_dir() -> Option<PathBuf> {
    let from_env = resolve_data_root(None).join(MNIST);
    let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist");
    [from_env, beside].into_iter().find(|p| p.is_dir())
}

fn mnist() -> Option<&'static (LabeledImages, LabeledImages)> {
    static DATA: OnceLock<Option<(LabeledImages, LabeledImages)>> = OnceLock::new();
    DATA.get_or_init(|| {
        let Some(dir) = mnist_dir() else {
            eprintln!("SKIPPED: no MNIST found (set OOD_DATA_DIR to a root holding mnist/)");
            return None;
        };
        let ds = DatasetDir::at(dir).unwrap();
        Some((
            ds.load(Split::Train).unwrap(),
            ds.load(Split::Test).unwrap(),
        ))
    })
    .as_ref()
}

#[test]
fn counts_and_label_histograms() {
    let Some((train, test)) = mnist() else { return };
    assert_eq!(train.len(), 60_000);
    assert_eq!(test.len(), 10_000);
    assert_eq!((train.images.rows, train.images.cols), (28, 28));
    assert_eq!(
        train.label_histogram(),
        vec![5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(
        test.label_histogram(),
        vec![980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    assert_eq!(&train.labels[..5], &[5, 0, 4, 1, 9]);
}

#[test]
fn report_split_sizes_and_determinism() {
    let Some((train, test)) = mnist() else { return };
    let cfg = SplitConfig::default();
    let a = Splits::new(train, test, &cfg).unwrap();
    assert_eq!(a.pool_size, 54_077);
    assert_eq!(a.train.len(), 49_077);
    assert_eq!(a.validation.len(), 5_000);
    assert_eq!(a.test_known.len(), 10_000 - 980);
    assert_eq!(a.test_unknown.len(), 980);
    assert!(a.test_unknown.labels.iter().all(|&l| l == 0));
    assert!(!a.train.labels.contains(&0) && !a.validation.labels.contains(&0));
    let b = Splits::new(train, test, &cfg).unwrap();
    assert_eq!(a.validation, b.validation);
    assert_eq!(a.train.labels, b.train.labels);
    let c = Splits::new(train, test, &SplitConfig { seed: 1, ..cfg }).unwrap();
    assert_ne!(a.validation.labels, c.validation.labels);
}

#[test]
fn noise_on_real_digits_stays_in_range_and_changes_them() {
    let Some((train, _)) = mnist() else { return };
    let clean = ood_data::batch::to_unit_f32(&train.select(&(0..64).collect::<Vec<_>>()));
    let mut noised = clean.clone();
    corrupt_batch(
        &mut noised,
        28,
        28,
        &NoiseConfig::default(),
        &mut stream_rng(3, 0, 0),
    );
    assert!(noised.iter().all(|p| (0.0..=1.0).contains(p)));
    let mse: f32 = clean
        .iter()
        .zip(&noised)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f32>()
        / clean.len() as f32;
    assert!(mse > 0.05, "noise too weak: mse {mse}");
    let mut again = clean.clone();
    corrupt_batch(
        &mut again,
        28,
        28,
        &NoiseConfig::default(),
        &mut stream_rng(3, 0, 0),
    );
    assert_eq!(noised, again, "the same seed gives the same noise");
}
