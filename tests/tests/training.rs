//! Training the `tiny` preset on small subsets of the real MNIST.

use candle_core::Device;
use ood_data::{ClassSpec, SplitConfig, Splits};
use ood_e2e_tests::mnist;
use ood_model::Checkpoint;
use ood_train::{train, Outcome, OutlierExposure, TrainConfig, CHECKPOINT_FILE, METRICS_FILE};
use std::sync::atomic::AtomicBool;

/// Trains into `dir` (resuming when `resume`); `interrupt` stops after the first batch, as
/// Ctrl-C would.
fn run(
    config: &TrainConfig,
    splits: &Splits,
    dir: &std::path::Path,
    resume: bool,
    interrupt: bool,
) -> ood_train::Result<ood_train::TrainSummary> {
    train(
        config,
        splits,
        &Device::Cpu,
        dir,
        resume,
        &AtomicBool::new(interrupt),
    )
}

fn setup(limit: usize, epochs: usize) -> Option<(TrainConfig, Splits)> {
    let (tr, te) = mnist()?;
    let mut config = TrainConfig::new("tiny", &ClassSpec::default()).unwrap();
    config.limit = Some(limit);
    config.epochs = epochs;
    config.batch_size = 32;
    config.warmup_steps = 5;
    config.seed = 11;
    let split = SplitConfig {
        classes: config.classes(),
        validation_size: config.validation_size,
        seed: config.seed,
        limit: config.limit,
    };
    Some((config.clone(), Splits::new(tr, te, &split).unwrap()))
}

#[test]
fn loss_falls_and_accuracy_rises() {
    let Some((config, splits)) = setup(640, 4) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let summary = run(&config, &splits, dir.path(), false, false).unwrap();
    assert_eq!(summary.outcome, Outcome::Finished);
    let h = &summary.history;
    assert_eq!(h.len(), 4);
    assert!(
        h[3].loss < 0.9 * h[0].loss,
        "loss {} -> {}",
        h[0].loss,
        h[3].loss
    );
    assert!(
        h[3].denoising < h[0].denoising,
        "denoising {} -> {}",
        h[0].denoising,
        h[3].denoising
    );
    assert!(
        h[3].val_accuracy > 0.3,
        "validation accuracy {}",
        h[3].val_accuracy
    );
    let meta = Checkpoint::read_meta(dir.path().join(CHECKPOINT_FILE)).unwrap();
    assert_eq!(meta.epoch, 4);
    let lines = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 4);
}

fn tensors(path: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    let ck = Checkpoint::load(path, &Device::Cpu).unwrap();
    ood_model::named_values(&ck.tensors).unwrap()
}

/// Trains `config` straight through, and again interrupted after the first batch and resumed;
/// both checkpoints (model and training state) must be equal bit for bit. Returns the folder
/// of the resumed run.
fn assert_resumed_run_equals_uninterrupted_run(
    config: &TrainConfig,
    splits: &Splits,
) -> tempfile::TempDir {
    let straight = tempfile::tempdir().unwrap();
    run(config, splits, straight.path(), false, false).unwrap();

    // Interrupted after the first batch of the first epoch, then resumed to the end.
    let resumed = tempfile::tempdir().unwrap();
    let s = run(config, splits, resumed.path(), false, true).unwrap();
    assert_eq!(s.outcome, Outcome::Interrupted);
    let meta = Checkpoint::read_meta(resumed.path().join(CHECKPOINT_FILE)).unwrap();
    assert_eq!((meta.epoch, meta.batch_in_epoch), (0, 1));
    let s = run(config, splits, resumed.path(), true, false).unwrap();
    assert_eq!(s.outcome, Outcome::Finished);

    let a = tensors(&straight.path().join(CHECKPOINT_FILE));
    let b = tensors(&resumed.path().join(CHECKPOINT_FILE));
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(va == vb, "{na} differs after resuming");
    }
    resumed
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let Some((config, splits)) = setup(256, 2) else {
        return;
    };
    let resumed = assert_resumed_run_equals_uninterrupted_run(&config, &splits);
    // Resuming with other arguments is refused.
    let mut other = config.clone();
    other.learning_rate *= 2.0;
    let err = run(&other, &splits, resumed.path(), true, false).unwrap_err();
    assert!(err.to_string().contains("other arguments"), "{err}");
}

/// The weight average's live weights, the pens' draws, the pen pairs' redraws and outlier
/// exposure's negatives are part of the state a resumed run must reproduce. The pairs and the
/// negatives share the trunk pass: each term must read its own rows.
#[test]
fn resumed_run_with_weight_average_pens_pairs_and_outlier_exposure_equals_uninterrupted_run() {
    let Some((mut config, splits)) = setup(256, 2) else {
        return;
    };
    config.ema_decay = Some(0.9);
    config.pen = Some(ood_data::pen::PenConfig::default());
    config.outlier_exposure = Some(OutlierExposure {
        negatives: 8,
        ..Default::default()
    });
    config.pen_pairs = Some(0.1);
    let resumed = assert_resumed_run_equals_uninterrupted_run(&config, &splits);
    let names: Vec<String> = tensors(&resumed.path().join(CHECKPOINT_FILE))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names
        .iter()
        .any(|n| n == "optimizer.live.classifier.weight"));
    let history = ood_train::train::read_history(&resumed.path().join(METRICS_FILE)).unwrap();
    assert!(
        history
            .iter()
            .all(|m| m.outlier_exposure > 0.0 && m.pen_pairing > 0.0),
        "{history:?}"
    );
}

/// The model weights of a checkpoint, without the training state.
fn model_tensors(dir: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    tensors(&dir.join(CHECKPOINT_FILE))
        .into_iter()
        .filter(|(n, _)| !n.starts_with("optimizer."))
        .collect()
}

#[test]
fn the_saved_model_is_the_weight_average() {
    let Some((mut config, splits)) = setup(128, 1) else {
        return;
    };
    let trained = |config: &TrainConfig| {
        let dir = tempfile::tempdir().unwrap();
        run(config, &splits, dir.path(), false, false).unwrap();
        model_tensors(dir.path())
    };
    let plain = trained(&config);
    // With decay 0 the average is the last step's weights, bit for bit.
    config.ema_decay = Some(0.0);
    assert!(trained(&config) == plain);
    // With decay 0.9 it lags behind them: every trained weight differs.
    config.ema_decay = Some(0.9);
    let averaged = trained(&config);
    for ((name, a), (_, b)) in averaged.iter().zip(&plain) {
        if !name.contains("running") && !name.contains("num_batches") {
            assert!(a != b, "{name} is the last step's");
        }
    }
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let Some((mut config, splits)) = setup(128, 2) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    config.epochs = 1;
    run(&config, &splits, dir.path(), false, false).unwrap();
    let good = std::fs::read(dir.path().join(CHECKPOINT_FILE)).unwrap();
    // A learning rate of infinity blows the weights up on the first step of the next run.
    config.epochs = 2;
    config.learning_rate = f64::INFINITY;
    let err = run(&config, &splits, dir.path(), false, false).unwrap_err();
    assert!(err.to_string().contains("NaN or infinite"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join(CHECKPOINT_FILE)).unwrap(),
        good
    );
}
