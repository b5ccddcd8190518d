//! Training through the library API rather than `ood train`: choose the known digits, split
//! MNIST the open-set way (the other digits are unknown: never trained on), train the `tiny`
//! preset on 2,000 images for three epochs, then run the checkpoint over the test digits,
//! known and unknown. A few seconds in a release build; the numbers are those of a toy run, not
//! of a real model (`ood train` trains one).
//!
//! ```text
//! export OOD_DATA_DIR=/path/to/data   # a folder holding mnist/ (else ./assets/data: cargo xtask fetch-data)
//! cargo run --release -p ood-train --example train_known_classes                    # known 1,2,3,4
//! cargo run --release -p ood-train --example train_known_classes -- 3,5,8 [OUT_DIR]
//! ```
//!
//! The checkpoint and `metrics.jsonl` go to `OUT_DIR` (default `runs/example-known-classes`);
//! `ood calibrate --checkpoint OUT_DIR/checkpoint.safetensors` would take it from there.
//! Without MNIST the example stops with an error naming the folder it looked in.

use candle_core::Device;
use ood_data::{ClassSpec, DatasetDir, Split, SplitConfig, Splits};
use ood_model::Checkpoint;
use ood_train::{infer, train, TrainConfig};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    ood_model::configure_threads(None);
    let mut args = std::env::args().skip(1);
    let known: Vec<u8> = match args.next() {
        Some(list) => list
            .split(',')
            .map(|d| {
                d.trim()
                    .parse()
                    .map_err(|e| format!("KNOWN {list:?}: {d:?}: {e}"))
            })
            .collect::<Result<_, _>>()?,
        None => vec![1, 2, 3, 4],
    };
    let out = args.next().map_or_else(
        || workspace_root().join("runs/example-known-classes"),
        PathBuf::from,
    );
    if let Some(bad) = known.iter().find(|&&d| d > 9) {
        return Err(format!("KNOWN: {bad} is not a digit").into());
    }
    let unknown: Vec<u8> = (0..10).filter(|d| !known.contains(d)).collect();
    let classes = ClassSpec::new(known, unknown)?;

    // The data root as every `ood` command finds it: $OOD_DATA_DIR, else assets/data.
    let root = ood_data::source::resolve_data_root(None);
    let mnist = root.join(ood_data::source::MNIST);
    if !mnist.is_dir() {
        return Err(format!(
            "no MNIST folder at {} (set OOD_DATA_DIR to a folder holding mnist/, or run \
             `cargo xtask fetch-data`)",
            mnist.display()
        )
        .into());
    }
    let mnist = DatasetDir::at(&mnist)?;
    let (train_set, test_set) = (mnist.load(Split::Train)?, mnist.load(Split::Test)?);

    // A toy run: 2,000 images of each split, three epochs of the smallest preset.
    let mut config = TrainConfig::new("tiny", &classes)?;
    config.limit = Some(2000);
    config.epochs = 3;
    config.batch_size = 32;
    config.warmup_steps = 5;
    config.seed = 0;
    let splits = Splits::new(
        &train_set,
        &test_set,
        &SplitConfig {
            classes: classes.clone(),
            validation_size: config.validation_size,
            seed: config.split_seed(),
            limit: config.limit,
        },
    )?;
    eprintln!(
        "known {:?}, unknown {:?}: {} training, {} validation images -> {}",
        classes.known,
        classes.unknown,
        splits.train.len(),
        splits.validation.len(),
        out.display()
    );

    let device = Device::Cpu;
    let summary = train(
        &config,
        &splits,
        &device,
        &out,
        false,
        &AtomicBool::new(false),
    )?;
    for m in &summary.history {
        println!(
            "epoch {}: loss {:.3}, train accuracy {:.1}%, validation accuracy {:.1}% ({:.1} s)",
            m.epoch,
            m.loss,
            100.0 * m.train_accuracy,
            100.0 * m.val_accuracy,
            m.seconds
        );
    }

    // The checkpoint carries its configuration: the net is rebuilt from the file alone.
    let checkpoint = Checkpoint::load(&summary.checkpoint, &device)?;
    let (_vars, net) = checkpoint.build_model(&summary.checkpoint, &device)?;
    let nets = [net];
    let known_test = infer(
        &nets,
        &ood_data::batch::to_unit_f32(&splits.test_known),
        None,
        false,
        500,
        &device,
    )?;
    let targets: Vec<u32> = splits
        .test_known
        .labels
        .iter()
        .map(|&l| classes.class_index(l).expect("a known digit") as u32)
        .collect();
    let unknown_test = infer(
        &nets,
        &ood_data::batch::to_unit_f32(&splits.test_unknown),
        None,
        false,
        500,
        &device,
    )?;
    println!(
        "test: {:.1}% of {} known digits classified right; mean max softmax {:.3} on them and \
         {:.3} on {} unknown digits",
        100.0 * ood_train::accuracy(&known_test.predictions(), &targets),
        known_test.len(),
        mean_max_softmax(&known_test),
        mean_max_softmax(&unknown_test),
        unknown_test.len()
    );
    println!("checkpoint: {}", summary.checkpoint.display());
    Ok(())
}

/// The checkout this example was built in (two folders above this crate).
fn workspace_root() -> PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .to_path_buf()
}

/// The mean over images of the largest softmax probability (how sure the classifier is).
fn mean_max_softmax(out: &ood_train::Inference) -> f64 {
    let total: f64 = (0..out.len())
        .map(|i| {
            let row = out.logits_row(i);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&l| f64::from(l - max).exp()).sum();
            1.0 / sum
        })
        .sum();
    total / out.len().max(1) as f64
}
