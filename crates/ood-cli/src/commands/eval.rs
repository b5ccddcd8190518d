use crate::DataArgs;
use anyhow::{Context, Result};
use ood_calibrate::{Detector as _, ThresholdRule};
use ood_data::source::{resolve_data_root, FASHION_MNIST};
use ood_data::{DatasetDir, Split, Splits};
use ood_eval::calibration::default_calibration_path;
use ood_eval::report::{operating_table, summary_table, write_calibration_figures, write_report};
use ood_eval::{load_model, split_config, CalibrationConfig, Decision};
use ood_model::DeviceChoice;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct CalibrateArgs {
    /// The checkpoint to calibrate, or an ensemble folder from `ood train --ensemble N`.
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Where to write the calibration (default: calibration.json beside the checkpoint, or in the ensemble folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The rule `predict` and `evaluate` apply: `accept` (the default score, its threshold set
    /// to accept the fraction --accept of held-out digits; fitted on held-out and training
    /// digits only), or the report's rule (max softmax or reconstruction error) with its
    /// max-softmax threshold picked by `report` (best accuracy on held-out digits + synthetic
    /// OOD), `youden`, or `tpr:R` (flag a fraction R of the synthetic OOD).
    #[arg(long, default_value = "accept")]
    pub rule: String,
    /// Fraction of held-out digits the acceptance rule accepts.
    #[arg(long, default_value_t = 0.99)]
    pub accept: f64,
    /// Training images the default score's feature detectors (Mahalanobis, and the KNN bank:
    /// every other one of them, at most 10,000) are fitted on.
    #[arg(long, default_value_t = 20_000)]
    pub fit_limit: usize,
    /// The acceptance rule's score: `energy+mahalanobis+knn` (min-p of the three: catches the
    /// most unknown digits over the leave-one-digit-out sweep), `energy-led` (the same three,
    /// with 60% of the budget to energy and 20% to each feature member), or
    /// `energy+mahalanobis`.
    #[arg(long, default_value = "energy+mahalanobis+knn")]
    pub score: ood_eval::AcceptScore,
    /// Reference the acceptance rule to the held-out digits and a copy of each redrawn as the
    /// page draws (binarised, the pen widened or narrowed): `all` (alone, `--reference-pens`)
    /// for every member and the threshold, so that its acceptance holds for drawn digits too;
    /// `features` for the feature members alone (Mahalanobis, KNN: the members that read the
    /// pen), energy and the threshold keeping MNIST's digits; `off`.
    #[arg(long, value_name = "WHICH", num_args = 0..=1, default_value = "off", default_missing_value = "all")]
    pub reference_pens: ood_eval::ReferencePens,
    /// Fit the feature members (Mahalanobis, KNN) on the training images and a copy of each
    /// redrawn as the page draws, so that their idea of a digit holds other pens.
    #[arg(long)]
    pub fit_pens: bool,
    /// Training rows the KNN member keeps (evenly spaced through the images it is fitted on): its
    /// neighbour search is a quarter of the served model's time at 10,000, and a smaller bank
    /// is a noisier neighbourhood.
    #[arg(long, value_name = "N", default_value_t = ood_eval::KNN_BANK)]
    pub knn_bank: usize,
    /// How the score's members read their held-out references: `step` (the conformal
    /// p-value: every sample beyond the last held-out digit ties at its floor) or `smooth`
    /// (interpolated between held-out scores and continued by an exponential tail beyond
    /// them, so that a ranking breaks those ties; the decision at the threshold barely moves).
    #[arg(long, value_name = "HOW", default_value = "step")]
    pub p_values: ood_calibrate::PValues,
    /// The features the score's feature members (Mahalanobis, KNN) read: `all-stages` (every
    /// stage's pooled features side by side) or `last` (the last stage's, which the
    /// classifier reads).
    #[arg(long, default_value = "all-stages")]
    pub features: ood_eval::FeatureDepth,
    /// Fraction of held-out digits the reconstruction test alone must accept.
    #[arg(long, default_value_t = 0.99)]
    pub recon_acceptance: f64,
    /// Ignore the reconstruction error (max-softmax only).
    #[arg(long)]
    pub no_reconstruction: bool,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
}

#[derive(Debug, Clone, clap::Args)]
pub struct EvaluateArgs {
    /// The checkpoint or ensemble folder to evaluate (calibrated first with `ood calibrate`).
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Report folder.
    #[arg(long)]
    pub out: PathBuf,
    /// The calibration to apply (default: calibration.json beside the checkpoint, or in the ensemble folder).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Skip Fashion-MNIST even when it is in the data root.
    #[arg(long)]
    pub no_fashion: bool,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
}

/// The decision and the report rule's max-softmax threshold rule of a `--rule` value (the
/// acceptance rule keeps the report's default for the reproduction table).
fn parse_rule(s: &str) -> Result<(Decision, ThresholdRule)> {
    Ok(match s {
        "accept" => (Decision::Accept, ThresholdRule::BestAccuracy),
        // `accuracy` is the name this rule had before the acceptance rule existed.
        "report" | "accuracy" => (Decision::Report, ThresholdRule::BestAccuracy),
        "youden" => (Decision::Report, ThresholdRule::YoudenJ),
        _ => match s.strip_prefix("tpr:").map(str::parse::<f64>) {
            Some(Ok(r)) => (Decision::Report, ThresholdRule::TargetTpr(r)),
            _ => anyhow::bail!("unknown rule {s:?}: use accept, report, youden or tpr:R"),
        },
    })
}

fn load_splits(data: &DataArgs, model: &ood_eval::LoadedModel) -> Result<Splits> {
    let (train, test) = super::data::load_mnist(data)?;
    Ok(Splits::new(&train, &test, &split_config(&model.train))?)
}

pub fn calibrate(args: &CalibrateArgs) -> Result<()> {
    let device = args.device.open()?;
    let model = load_model(&args.checkpoint, &device)?;
    let splits = load_splits(&args.data, &model)?;
    anyhow::ensure!(
        args.accept > 0.0 && args.accept <= 1.0,
        "--accept {}: give a fraction of held-out digits in (0, 1]",
        args.accept
    );
    let (decision, msp_rule) = parse_rule(&args.rule)?;
    let config = CalibrationConfig {
        msp_rule,
        use_reconstruction: !args.no_reconstruction,
        recon_id_acceptance: args.recon_acceptance,
        decision,
        accept: args.accept,
        fit_limit: args.fit_limit,
        score: args.score,
        reference_pens: args.reference_pens,
        features: args.features,
        fit_pens: args.fit_pens,
        knn_bank: args.knn_bank,
        p_values: args.p_values,
        ..Default::default()
    };
    let (calibration, set) = ood_eval::calibrate(
        &model.nets,
        &model.train,
        &splits.train,
        &splits.validation,
        &args.checkpoint,
        &config,
        &device,
    )?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| default_calibration_path(&args.checkpoint));
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    ood_eval::write_calibration(&out, &calibration)?;
    let fig_dir = out.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    write_calibration_figures(&fig_dir, &calibration, &set, model.image_size())?;
    println!(
        "calibrated on {} held-out digits + {} synthetic OOD",
        calibration.n_in_distribution, calibration.n_synthetic_ood
    );
    println!("rule in force: {}", calibration.describe());
    if let Some(a) = &calibration.accept_rule {
        println!(
            "acceptance rule: {} (feature detectors fitted on {} training images); flags {:.2}% of the synthetic OOD (AUROC {:.4}), which it was not fitted on",
            a.score.name(),
            a.n_fit,
            100.0 * a.synthetic_flagged,
            a.synthetic_auroc
        );
    }
    println!(
        "report's rule: {}; AUROC max softmax {:.4}, reconstruction {:.4}; flags {:.2}% of synthetic OOD and {:.2}% of held-out digits",
        calibration.report_rule_text(),
        calibration.auroc_msp,
        calibration.auroc_recon,
        100.0 * calibration.calibration_stats.tpr,
        100.0 * calibration.calibration_stats.fpr
    );
    println!("wrote {}", out.display());
    Ok(())
}

/// Loads a checkpoint and its calibration: [`ood_eval::calibrated_model`], which this was
/// before `ood serve` needed it too.
pub fn calibrated_model(
    checkpoint: &std::path::Path,
    calibration: Option<&std::path::Path>,
    device: &candle_core::Device,
) -> Result<(ood_eval::LoadedModel, ood_eval::Calibration)> {
    Ok(ood_eval::calibrated_model(checkpoint, calibration, device)?)
}

pub fn evaluate(args: &EvaluateArgs) -> Result<()> {
    let device = args.device.open()?;
    let (model, calibration) =
        super::eval::calibrated_model(&args.checkpoint, args.calibration.as_deref(), &device)?;
    let splits = load_splits(&args.data, &model)?;
    let mut far = Vec::new();
    if !args.no_fashion {
        let root = resolve_data_root(args.data.data_dir.as_deref());
        if let Ok(dir) = DatasetDir::in_root(&root, FASHION_MNIST) {
            if dir.has_split(Split::Test) {
                let set = dir.load(Split::Test)?.truncated(model.train.limit);
                far.push(("Fashion-MNIST".to_string(), set));
            }
        }
    }
    let (evaluation, sets) = ood_eval::evaluate(
        &model.nets,
        &model.train,
        &calibration,
        &splits.validation,
        &splits.test_known,
        &splits.test_unknown,
        &far,
        calibration.config.batch_size,
        &device,
    )?;
    write_report(
        &args.out,
        &args.checkpoint,
        &calibration,
        &evaluation,
        &sets,
        &ood_data::batch::to_unit_f32(&splits.test_known),
        &ood_data::batch::to_unit_f32(&splits.test_unknown),
        model.image_size(),
    )
    .with_context(|| format!("writing the report into {}", args.out.display()))?;
    println!("{}", summary_table(&evaluation));
    println!("{}", operating_table(&evaluation));
    println!("report: {}", args.out.join("report.md").display());
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchOodArgs {
    /// The checkpoint or ensemble folder (calibrated first with `ood calibrate`).
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Folder for bench-ood.json and bench-ood.md.
    #[arg(long)]
    pub out: PathBuf,
    /// An extra OOD set: NAME=DIR, a folder of IDX files (its test split, else its train split).
    #[arg(long = "ood-dir", value_name = "NAME=DIR")]
    pub ood_dirs: Vec<String>,
    /// Training images used to fit Mahalanobis and KNN.
    #[arg(long, default_value_t = 20_000)]
    pub fit_limit: usize,
    /// The features Mahalanobis and KNN read: `all-stages` or `last`.
    #[arg(long, default_value = "all-stages")]
    pub features: ood_eval::FeatureDepth,
    /// Images in each synthetic OOD set (noise, rotated digits).
    #[arg(long, default_value_t = 2_000)]
    pub synthetic_count: usize,
    /// The calibration to use (default: calibration.json beside the checkpoint, or in the ensemble folder).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
}

fn load_any_split(dir: &DatasetDir) -> Result<ood_data::LabeledImages> {
    let split = if dir.has_split(Split::Test) {
        Split::Test
    } else {
        Split::Train
    };
    Ok(dir.load(split)?)
}

pub fn bench_ood(args: &BenchOodArgs) -> Result<()> {
    use ood_eval::bench_ood::{
        bench_ood, markdown, synthetic_sets, write_bench, BenchConfig, OodSet,
    };
    let device = args.device.open()?;
    let (model, calibration) =
        super::eval::calibrated_model(&args.checkpoint, args.calibration.as_deref(), &device)?;
    let splits = load_splits(&args.data, &model)?;
    let limit = model.train.limit;
    let mut sets = vec![OodSet::from_images(
        &format!("MNIST {:?}", model.train.unknown_classes),
        &splits.test_unknown,
    )];
    let root = resolve_data_root(args.data.data_dir.as_deref());
    if let Ok(dir) = DatasetDir::in_root(&root, FASHION_MNIST) {
        sets.push(OodSet::from_images(
            "Fashion-MNIST",
            &load_any_split(&dir)?.truncated(limit),
        ));
    }
    sets.extend(synthetic_sets(
        &splits.test_known,
        args.synthetic_count.min(limit.unwrap_or(usize::MAX)),
        model.train.seed,
    ));
    for spec in &args.ood_dirs {
        let (name, dir) = spec
            .split_once('=')
            .with_context(|| format!("--ood-dir {spec:?}: expected NAME=DIR"))?;
        let data = load_any_split(&DatasetDir::at(dir)?)?.truncated(limit);
        anyhow::ensure!(
            data.images.rows == 28 && data.images.cols == 28,
            "{dir}: images are {}x{}, not 28x28",
            data.images.rows,
            data.images.cols
        );
        sets.push(OodSet::from_images(name, &data));
    }
    let config = BenchConfig {
        fit_limit: args.fit_limit,
        features: args.features,
        ..Default::default()
    };
    let result = bench_ood(
        &model.nets,
        &model.train,
        &calibration,
        &splits.train,
        &splits.validation,
        &splits.test_known,
        &sets,
        &config,
        &device,
    )?;
    write_bench(&args.out, &result)?;
    println!("{}", markdown(&result));
    println!(
        "({:.0} s) wrote {}",
        result.seconds,
        args.out.join("bench-ood.json").display()
    );
    Ok(())
}
