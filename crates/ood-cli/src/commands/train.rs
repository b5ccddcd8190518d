use crate::DataArgs;
use anyhow::{Context, Result};
use ood_data::{ClassSpec, Splits};
use ood_losses::StdSign;
use ood_model::DeviceChoice;
use ood_train::{train_with_teacher, Distillation, Outcome, Teacher, TrainConfig};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by Ctrl-C; the training loop saves a checkpoint and stops.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Run folder for the checkpoint and metrics.
    #[arg(long, default_value = "runs/default")]
    pub out: PathBuf,
    /// Continue from OUT/checkpoint.safetensors (same arguments as the first run).
    #[arg(long)]
    pub resume: bool,
    /// Model preset (see `ood presets`).
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Training recipe: quick (4 epochs with --pen-styles: the demo) or quality (16 epochs,
    /// --augment, --pen-styles and --ema 0.999: about 45 min on two cores). Flags given beside
    /// it win (`--recipe quality --epochs 24`, `--no-pen-styles`).
    #[arg(long, value_enum, default_value_t = Recipe::Quick)]
    pub recipe: Recipe,
    /// cpu, cuda, cuda:N, metal.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate (after warm-up; cosine decay follows).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Seed of the initialisation, batch order, noise and augmentation, and (unless
    /// --split-seed) of the validation hold-out.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seed of the validation hold-out, when it should differ from --seed.
    #[arg(long)]
    pub split_seed: Option<u64>,
    /// Train N models into OUT/member-0 .. OUT/member-(N-1) with seeds SEED, SEED+1, ..., all
    /// holding out the validation digits of --split-seed (else --seed); predict, calibrate,
    /// evaluate and bench-ood take the folder OUT as one model. Members already in OUT are
    /// resumed (finished ones are kept), so an interrupted ensemble continues where it stopped.
    #[arg(long, value_name = "N")]
    pub ensemble: Option<usize>,
    /// Learn from a teacher too: the softened softmax of a checkpoint or of an ensemble folder
    /// (`ood train --ensemble N`), trained with the same --known/--unknown and validation
    /// hold-out (--split-seed, --limit). The student stays one network: one forward pass per
    /// image when it serves.
    #[arg(long, value_name = "MODEL", conflicts_with = "ensemble")]
    pub distill_from: Option<PathBuf>,
    /// Weight of the distillation term beside the cross-entropy (default 1).
    #[arg(long, value_name = "W", requires = "distill_from")]
    pub distill_weight: Option<f64>,
    /// Softmax temperature of the teacher's soft targets (default 4).
    #[arg(long, value_name = "T", requires = "distill_from")]
    pub distill_temperature: Option<f64>,
    /// Use only the first N images of each split.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Weight k of the inverse-focal penalty (Eq. 3).
    #[arg(long)]
    pub k: Option<f64>,
    /// Weight of the std loss (Eq. 4).
    #[arg(long)]
    pub lambda_std: Option<f64>,
    /// Sign of the std loss: intended (even scores) or literal (as printed).
    #[arg(long, value_enum)]
    pub std_sign: Option<StdSignArg>,
    /// Weight of the denoising loss (Eq. 2).
    #[arg(long)]
    pub lambda_rec: Option<f64>,
    /// Do not train the decoder head.
    #[arg(long)]
    pub no_decoder: bool,
    /// Warp each training image a little (rotation ±10°, scale 0.9-1.1, shift ±2 px).
    #[arg(long)]
    pub augment: bool,
    /// Restyle each training image after the warp: elastic distortion, hard binarised edges,
    /// blur, thicker and thinner strokes, and the drawing page's redraw (see `ood_data::pen`).
    /// Both recipes restyle with every effect; with a list, only those effects (of elastic,
    /// canvas, binarize, width).
    #[arg(long, value_name = "EFFECTS", num_args = 0.., value_delimiter = ',')]
    pub pen_styles: Option<Vec<ood_data::pen::PenEffect>>,
    /// Train on MNIST's pen alone: no restyling (the quick recipe before the pens joined it).
    #[arg(long, conflicts_with = "pen_styles")]
    pub no_pen_styles: bool,
    /// The range of the page redraw's binarisation level (default 0.3,0.6): a higher top keeps
    /// only the core of a stroke, a finer pen.
    #[arg(
        long,
        value_name = "LO,HI",
        value_delimiter = ',',
        conflicts_with = "no_pen_styles"
    )]
    pub canvas_levels: Option<Vec<f32>>,
    /// The range of the page redraw's pen radius, in quarters of a digit pixel a side (default
    /// -2,8; negative narrows the stroke).
    #[arg(
        long,
        value_name = "LO,HI",
        value_delimiter = ',',
        allow_hyphen_values = true,
        conflicts_with = "no_pen_styles"
    )]
    pub canvas_pen_radius: Option<Vec<i32>>,
    /// Save an exponential moving average of the weights (decay per step, e.g. 0.999) as the
    /// model, instead of the weights of the last step.
    #[arg(long, value_name = "DECAY")]
    pub ema: Option<f64>,
    /// Outlier exposure: train against scribbles too, pushing their energy above a margin
    /// (32 a batch, weight 0.1, margins -7 for digits and -3 for scribbles).
    #[arg(long)]
    pub outlier_exposure: bool,
    /// Pen pairs: each digit also passes redrawn by the page's pen (a random level and width),
    /// and that copy's logits are pulled onto the digit's with this weight (e.g. 0.1), so that
    /// drawn digits look as familiar to the rule as MNIST's. An epoch takes about 1.7 times as
    /// long (the redraws, and half as many images again through the trunk).
    #[arg(long, value_name = "W")]
    pub pen_pairs: Option<f64>,
    /// Std of the Gaussian noise for the denoiser.
    #[arg(long)]
    pub noise_sigma: Option<f32>,
    /// Known digits, comma-separated (default 1-9).
    #[arg(long, value_delimiter = ',')]
    pub known: Option<Vec<u8>>,
    /// Unknown digits, comma-separated (default 0).
    #[arg(long, value_delimiter = ',')]
    pub unknown: Option<Vec<u8>>,
}

/// A bundle of training settings (`--recipe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Recipe {
    /// The preset's defaults (4 epochs, no warp) with the pen styles: the demo. Over three
    /// seeds the pens refused a third fewer drawn digits and lost nothing on MNIST
    /// (docs/results.md#the-demos-pens-over-three-seeds).
    Quick,
    /// Long training on digits restyled by other pens, with a weight average.
    Quality,
}

/// The epochs of `--recipe quality`: the 16 the lever study measured (closed-set accuracy
/// 99.68%, canvas refusals 2.35%), about 45 minutes on two cores.
pub const QUALITY_EPOCHS: usize = 16;
/// The weight average of `--recipe quality`.
pub const QUALITY_EMA_DECAY: f64 = 0.999;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StdSignArg {
    Intended,
    Literal,
}

impl TrainArgs {
    /// The training configuration these flags ask for.
    pub fn config(&self) -> Result<TrainConfig> {
        let default = ClassSpec::default();
        let classes = ClassSpec::new(
            self.known.clone().unwrap_or(default.known),
            self.unknown.clone().unwrap_or(default.unknown),
        )?;
        let mut c = TrainConfig::new(&self.preset, &classes)?;
        c.seed = self.seed;
        c.split_seed = self.split_seed;
        c.limit = self.limit;
        c.train_decoder = !self.no_decoder;
        c.pen = Some(ood_data::pen::PenConfig::default());
        if self.recipe == Recipe::Quality {
            c.epochs = QUALITY_EPOCHS;
            c.augment = Some(ood_data::augment::AugmentConfig::default());
            c.ema_decay = Some(QUALITY_EMA_DECAY);
        }
        if self.augment {
            c.augment = Some(ood_data::augment::AugmentConfig::default());
        }
        if let Some(effects) = &self.pen_styles {
            c.pen = Some(ood_data::pen::PenConfig::default().only(effects));
        }
        if self.no_pen_styles {
            c.pen = None;
        }
        if let (Some(pen), Some(levels)) = (c.pen.as_mut(), &self.canvas_levels) {
            anyhow::ensure!(
                levels.len() == 2
                    && levels.iter().all(|l| (0.0..1.0).contains(l))
                    && levels[0] <= levels[1],
                "--canvas-levels {levels:?}: two levels in [0, 1), the lower first"
            );
            pen.canvas_levels = (levels[0], levels[1]);
        }
        if let (Some(pen), Some(radius)) = (c.pen.as_mut(), &self.canvas_pen_radius) {
            anyhow::ensure!(
                radius.len() == 2 && radius[0] <= radius[1],
                "--canvas-pen-radius {radius:?}: the narrower radius first"
            );
            pen.canvas_pen_radius = (radius[0], radius[1]);
        }
        c.outlier_exposure = self
            .outlier_exposure
            .then(ood_train::train::OutlierExposure::default);
        if let Some(weight) = self.pen_pairs {
            anyhow::ensure!(
                weight.is_finite() && weight > 0.0,
                "--pen-pairs {weight}: the weight must be a finite number > 0, e.g. 0.1"
            );
            c.pen_pairs = Some(weight);
        }
        if let Some(decay) = self.ema {
            anyhow::ensure!(
                (0.0..1.0).contains(&decay),
                "--ema {decay}: the decay must be in [0, 1), e.g. 0.999"
            );
            c.ema_decay = Some(decay);
        }
        macro_rules! set {
            ($($field:expr => $flag:expr),* $(,)?) => { $(if let Some(v) = $flag { $field = v; })* };
        }
        set!(
            c.epochs => self.epochs,
            c.batch_size => self.batch_size,
            c.learning_rate => self.lr,
            c.warmup_steps => self.warmup_steps,
            c.adamw.weight_decay => self.weight_decay,
            c.loss.k => self.k,
            c.loss.lambda_std => self.lambda_std,
            c.loss.lambda_rec => self.lambda_rec,
            c.noise.sigma => self.noise_sigma,
        );
        if let Some(sign) = self.std_sign {
            c.loss.std_sign = match sign {
                StdSignArg::Intended => StdSign::Intended,
                StdSignArg::Literal => StdSign::Literal,
            };
        }
        anyhow::ensure!(
            c.epochs > 0 && c.batch_size > 0,
            "epochs and batch size must be positive"
        );
        Ok(c)
    }
}

pub fn run(args: &TrainArgs) -> Result<()> {
    let mut config = args.config()?;
    anyhow::ensure!(
        args.ensemble != Some(0),
        "--ensemble needs at least one member"
    );
    let device = args.device.open()?;
    let teacher = match &args.distill_from {
        Some(path) => {
            let (distill, teacher) = load_teacher(args, path, &device)?;
            teacher
                .check_student(&config)
                .with_context(|| format!("--distill-from {}", path.display()))?;
            config.distill = Some(distill);
            Some(teacher)
        }
        None => None,
    };
    let teacher = teacher.as_ref();
    let (train_set, test_set) = super::data::load_mnist(&args.data)?;
    let splits = Splits::new(&train_set, &test_set, &ood_eval::split_config(&config))?;
    // A second registration (tests run several trainings in one process) is not an error.
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
    INTERRUPTED.store(false, Ordering::SeqCst);
    match args.ensemble {
        None => train_one(
            args,
            &config,
            teacher,
            &splits,
            &device,
            &args.out,
            args.resume,
        ),
        Some(n) => {
            for i in 0..n {
                let member = &config.ensemble_member(i);
                let out = args.out.join(ood_train::member_dir(i));
                let resume = out.join(ood_train::CHECKPOINT_FILE).exists();
                eprintln!(
                    "member {} of {n} (seed {}){}",
                    i + 1,
                    member.seed,
                    if resume { ": resuming" } else { "" }
                );
                train_one(args, member, None, &splits, &device, &out, resume)?;
            }
            println!(
                "ensemble of {n} in {}: calibrate, evaluate and predict take this folder",
                args.out.display()
            );
            Ok(())
        }
    }
}

/// The teacher of `--distill-from`, and how the student learns from it.
fn load_teacher(
    args: &TrainArgs,
    path: &std::path::Path,
    device: &candle_core::Device,
) -> Result<(Distillation, Teacher)> {
    let weight = args.distill_weight.unwrap_or(Distillation::DEFAULT_WEIGHT);
    let temperature = args
        .distill_temperature
        .unwrap_or(Distillation::DEFAULT_TEMPERATURE);
    anyhow::ensure!(
        weight.is_finite() && weight >= 0.0,
        "--distill-weight {weight}: the weight must be a finite number >= 0"
    );
    anyhow::ensure!(
        temperature.is_finite() && temperature > 0.0,
        "--distill-temperature {temperature}: the temperature must be positive"
    );
    let model = ood_eval::model::load_model(path, device)
        .with_context(|| format!("loading the teacher {}", path.display()))?;
    eprintln!(
        "distilling from {} ({} net{}, sha256 {}), weight {weight}, temperature {temperature}",
        path.display(),
        model.nets.len(),
        if model.nets.len() == 1 { "" } else { "s" },
        &model.sha256[..12]
    );
    let distill = Distillation {
        teacher: path.display().to_string(),
        teacher_sha256: model.sha256,
        weight,
        temperature,
    };
    Ok((distill, Teacher::new(model.nets, model.train)?))
}

fn train_one(
    args: &TrainArgs,
    config: &TrainConfig,
    teacher: Option<&Teacher>,
    splits: &Splits,
    device: &candle_core::Device,
    out: &std::path::Path,
    resume: bool,
) -> Result<()> {
    eprintln!(
        "training preset {} on {} images ({} validation), {} epochs, batch {}, device {}, {} threads -> {}",
        config.preset,
        splits.train.len(),
        splits.validation.len(),
        config.epochs,
        config.batch_size,
        args.device,
        std::env::var("RAYON_NUM_THREADS").unwrap_or_default(),
        out.display()
    );
    let started = std::time::Instant::now();
    let summary = train_with_teacher(config, teacher, splits, device, out, resume, &INTERRUPTED)
        .with_context(|| format!("training into {}", out.display()))?;
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    match summary.outcome {
        Outcome::Finished => {
            if let Some(last) = summary.history.last() {
                println!(
                    "done in {minutes:.1} min: epoch {} validation accuracy {:.2}%, checkpoint {}",
                    last.epoch,
                    100.0 * last.val_accuracy,
                    summary.checkpoint.display()
                );
            }
            Ok(())
        }
        Outcome::Interrupted => {
            println!(
                "interrupted after {minutes:.1} min; resume with --resume: {}",
                summary.checkpoint.display()
            );
            anyhow::bail!("interrupted")
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Cli, Command};
    use clap::Parser;

    fn config(args: &[&str]) -> ood_train::TrainConfig {
        let argv = ["ood", "train"].iter().chain(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Train(t) => t.config().unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_quality_recipe_bundles_long_training_pens_and_the_weight_average() {
        let quick = config(&[]);
        assert_eq!(quick.epochs, 4);
        assert!(quick.augment.is_none() && quick.ema_decay.is_none());
        assert_eq!(quick.pen, Some(ood_data::pen::PenConfig::default()));
        // MNIST's pen alone, on either recipe.
        assert!(config(&["--no-pen-styles"]).pen.is_none());
        assert!(config(&["--recipe", "quality", "--no-pen-styles"])
            .pen
            .is_none());
        let quality = config(&["--recipe", "quality"]);
        assert_eq!(quality.epochs, super::QUALITY_EPOCHS);
        assert!(quality.augment.is_some() && quality.pen.is_some());
        assert_eq!(quality.ema_decay, Some(super::QUALITY_EMA_DECAY));
        // Flags beside the recipe win.
        let longer = config(&["--recipe", "quality", "--epochs", "24", "--ema", "0.99"]);
        assert_eq!((longer.epochs, longer.ema_decay), (24, Some(0.99)));
        // The flag alone is the quick recipe as it is.
        assert_eq!(config(&["--pen-styles"]), quick);
        // Some effects only.
        let fine = config(&["--canvas-levels", "0.3,0.7", "--canvas-pen-radius", "-4,8"]);
        let pen = fine.pen.unwrap();
        assert_eq!(
            (pen.canvas_levels, pen.canvas_pen_radius),
            ((0.3, 0.7), (-4, 8))
        );
        assert_eq!(pen.thin, quick.pen.unwrap().thin);
        let canvas = config(&["--pen-styles", "canvas,width"]);
        let pen = canvas.pen.unwrap();
        assert_eq!((pen.elastic, pen.binarize), (0.0, 0.0));
        assert!(pen.canvas > 0.0 && pen.thicken > 0.0);
    }

    #[test]
    fn pen_pairs_take_a_positive_weight() {
        assert_eq!(config(&[]).pen_pairs, None);
        assert_eq!(config(&["--pen-pairs", "0.1"]).pen_pairs, Some(0.1));
        for bad in ["0", "-1", "NaN"] {
            let pairs = format!("--pen-pairs={bad}");
            let argv = ["ood", "train", pairs.as_str()];
            let Command::Train(t) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not train");
            };
            let err = t.config().unwrap_err().to_string();
            assert!(err.contains("--pen-pairs"), "{err}");
        }
    }
}
