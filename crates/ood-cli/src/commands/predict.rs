use anyhow::Result;
use ood_model::DeviceChoice;
use ood_serve::model::{Model, ModelSource};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct PredictArgs {
    /// The checkpoint or ensemble folder (calibrated with `ood calibrate`); default: the model shipped in the
    /// binary (assets/models/default).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Image files: PNG, JPEG or PGM, any size; prepared as MNIST was.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// The calibration to apply (default: calibration.json beside the checkpoint, in the ensemble
    /// folder, or the shipped model's).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// One JSON object per image on standard output.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
}

#[derive(Debug, Default, Serialize)]
struct Prediction {
    file: String,
    /// The digit, or null when the input is flagged unknown.
    label: Option<u8>,
    unknown: bool,
    /// The classifier's best guess, whether or not it was accepted.
    best_guess: Option<u8>,
    max_softmax: Option<f64>,
    reconstruction_error: Option<f64>,
    /// What the decision rests on: the rule's score with its threshold, and its parts.
    explanation: Option<ood_eval::calibration::DecisionDetail>,
    error: Option<String>,
}

pub fn run(args: &PredictArgs) -> Result<()> {
    let device = args.device.open()?;
    let source = ModelSource::from_args(args.checkpoint.as_deref(), args.calibration.as_deref());
    let model = Model::load(&source, &device)?;
    let mut results: Vec<Prediction> = Vec::new();
    let mut pixels = Vec::new();
    let mut good = Vec::new();
    for (i, path) in args.images.iter().enumerate() {
        let mut r = Prediction {
            file: path.display().to_string(),
            ..Default::default()
        };
        match ood_data::prepare::load_mnist_style(path) {
            Ok(p) => {
                pixels.extend(p);
                good.push(i);
            }
            Err(e) => r.error = Some(e.to_string()),
        }
        results.push(r);
    }
    // In chunks, so that any number of files fits in memory.
    for (chunk_files, chunk_pixels) in good.chunks(256).zip(pixels.chunks(256 * model.image_len()))
    {
        for (&i, p) in chunk_files.iter().zip(model.predict(chunk_pixels)?) {
            let r = &mut results[i];
            r.best_guess = Some(p.best_guess);
            r.unknown = p.detail.unknown;
            r.label = p.class;
            r.max_softmax = Some(p.max_softmax);
            r.reconstruction_error = Some(p.reconstruction_error);
            r.explanation = Some(p.detail);
        }
    }
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    for r in &results {
        if args.json {
            println!("{}", serde_json::to_string(r)?);
        } else if let Some(e) = &r.error {
            eprintln!("{}: error: {e}", r.file);
        } else {
            let verdict = r.label.map_or("unknown".to_string(), |l| l.to_string());
            let parts: Vec<String> = r
                .explanation
                .iter()
                .flat_map(|d| &d.parts)
                .map(describe_part)
                .collect();
            println!(
                "{}: {verdict} (best guess {}; {})",
                r.file,
                r.best_guess.unwrap_or_default(),
                parts.join(", ")
            );
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} images could not be read", results.len());
    }
    Ok(())
}

/// `name 1.234 (OOD above 2.000)` or `name 5.6 (p 0.0120, OOD below 0.0046)`.
fn describe_part(p: &ood_eval::calibration::Part) -> String {
    let mut s = format!("{} {:.4}", p.name, p.value);
    if let Some(t) = p.threshold {
        let side = if p.flagged_above { "above" } else { "below" };
        s += &format!(" (OOD {side} {t:.4})");
    }
    match (p.p_value, p.p_limit) {
        (Some(pv), Some(limit)) => s += &format!(" (p {pv:.4}, OOD below {limit:.4})"),
        (Some(pv), None) => s += &format!(" (p {pv:.4})"),
        _ => {}
    }
    s
}
