//! The shipped model from Rust, without the `ood` command: load the model embedded in this
//! crate (`assets/models/default/`, see `ood_serve::shipped`), prepare an image file as MNIST
//! was prepared, and print the decision with what it rests on. No data and no training needed.
//!
//! ```text
//! cargo run --release -p ood-serve --example classify_image                       # assets/samples/digit-7.png
//! cargo run --release -p ood-serve --example classify_image -- path/to/digit.png  # any PNG, JPEG or PGM
//! ```
//!
//! `ood predict` and `ood serve` answer through the same `Model`, so they give the same answer
//! for the same file.

use ood_serve::model::{Model, ModelSource};
use std::path::PathBuf;

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
    let path = std::env::args_os().nth(1).map_or_else(
        || {
            // crates/ood-serve -> the checkout.
            let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            let root = manifest.ancestors().nth(2).unwrap_or(manifest);
            root.join("assets/samples/digit-7.png")
        },
        PathBuf::from,
    );
    // Fix the compute threads once (`RAYON_NUM_THREADS`, else every core), as `ood` does.
    ood_model::configure_threads(None);
    let model = Model::load(
        &ModelSource::Shipped { calibration: None },
        &candle_core::Device::Cpu,
    )?;
    // White ink on black, cropped to the ink, scaled into 20x20, centred by mass in 28x28.
    let pixels = ood_data::prepare::load_mnist_style(&path)?;
    let answer = model.predict(&pixels)?.remove(0);

    println!("{}", path.display());
    match answer.class {
        Some(digit) => println!("  decision: the digit {digit}"),
        None => println!(
            "  decision: unknown (the classifier's best guess, {}, is not accepted)",
            answer.best_guess
        ),
    }
    println!("  rule: {}", model.rule());
    for part in &answer.detail.parts {
        let mut line = format!("  {} = {:.4}", part.name, part.value);
        if let Some(t) = part.threshold {
            let side = if part.flagged_above { "above" } else { "below" };
            line += &format!(" (unknown {side} {t:.4})");
        }
        if let Some(p) = part.p_value {
            line += &format!(" (p-value {p:.4})");
        }
        println!("{line}");
    }
    let probabilities: Vec<String> = model
        .known_classes()
        .iter()
        .zip(&answer.probabilities)
        .map(|(c, p)| format!("{c}: {:.1}%", 100.0 * p))
        .collect();
    println!("  probabilities: {}", probabilities.join(", "));
    Ok(())
}
