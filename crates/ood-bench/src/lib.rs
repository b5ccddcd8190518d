//! The throughput benchmark behind `ood bench`: training and inference throughput of the model on this machine, with this
//! project's CPU kernels and with candle's stock ops, side by side with the PyTorch reference
//! (`../shared/bench/torch_ref.py`) when python3 can import torch.
//!
//! With `--device cuda` (or metal) it measures the presets on that device instead, with the
//! training step `ood train` takes (the clean batch and its noised copy through the trunk
//! together), beside PyTorch's GPU anchor (`../shared/cuda/torch_anchor.py`, the same step and
//! model) when torch sees a GPU.
//!
//! The model measured is the reference script's (`ModelConfig::new(W, [2, 2, 2], 10)`), so the
//! figures compare directly; the presets are measured too. A training step is the forward of
//! both heads, cross-entropy plus denoising MSE, the backward pass and an Adam step; inference
//! is the forward of both heads with both outputs pulled back to the host.
//!
//! `--rounds N` measures N times, ours then PyTorch's each time, and reports each row's median
//! over the rounds with each round's ratio: on a machine whose speed drifts, one round can set
//! the two sides in different stretches.
//!
//! It is not a test of correctness (the kernels' tests are in `ood-model`) and it does not
//! train or evaluate real models; [`BenchArgs`] carries clap's derive so the `ood bench` command
//! is only a call to [`run`].

use std::path::PathBuf as ErrorPath;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad arguments, or a reference script that could not run or said nothing usable.
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}", path = .0.display(), source = .1)]
    Io(ErrorPath, std::io::Error),
    #[error(transparent)]
    Model(#[from] ood_model::ModelError),
    #[error(transparent)]
    Train(#[from] ood_train::TrainError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// Returns early with [`BenchError::Invalid`] and a formatted message.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err(BenchError::Invalid(format!($($arg)*)))
    };
}
use candle_core::{Device, ModuleT, Tensor, Var};
use ood_model::ops::conv::{ConvBackwardData, ConvBackwardFilter, ConvForward};
use ood_model::ops::{self, Kernels};
use ood_model::{DeviceChoice, ModelConfig};
use ood_train::optim::{AdamW, AdamWConfig};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Which kernels to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelChoice {
    /// This project's CPU kernels.
    Fast,
    /// candle's stock ops.
    Candle,
    /// Both, one after the other.
    Both,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// A short run (about a minute on two cores): 1 warm-up and 3 timed steps, width 16 only
    /// unless --widths is given, candle's kernels only at widths up to 16, one preset.
    #[arg(long)]
    pub quick: bool,
    /// Also write every measurement as a JSON array of rows to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Widths W of the reference model (stages of W, 2W and 4W channels, two blocks each)
    /// [default: 16,64; with --quick: 16].
    #[arg(long, value_delimiter = ',', value_name = "W,...")]
    pub widths: Option<Vec<usize>>,
    /// Batch size of the training steps [default: 128 on the CPU, as torch_ref.py; 64 on a
    /// GPU, as `ood train` and torch_anchor.py].
    #[arg(long, value_name = "N")]
    pub train_batch: Option<usize>,
    /// Batch size of the inference passes.
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub infer_batch: usize,
    /// Untimed steps before each measurement [default: 2; with --quick: 1].
    #[arg(long, value_name = "N")]
    pub warmup: Option<usize>,
    /// Timed steps of each measurement (the median is reported) [default: 5; with --quick: 3;
    /// candle's kernels above width 16: at most 3 after 1 warm-up, unless --steps or --warmup is given].
    #[arg(long, value_name = "N")]
    pub steps: Option<usize>,
    /// Which kernels to measure.
    #[arg(long, value_enum, default_value = "both")]
    pub kernels: KernelChoice,
    /// Do not run the PyTorch reference.
    #[arg(long)]
    pub no_torch: bool,
    /// Measure N times, this project's rows then PyTorch's each time, and report the median of
    /// each row over the rounds, with each round's ratio: this machine's speed drifts within
    /// minutes, and in a single round PyTorch, run last, may meet a slower stretch than ours.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub rounds: usize,
    /// The PyTorch reference script [default: ../shared/bench/torch_ref.py beside the workspace].
    #[arg(long, value_name = "PATH", env = "OOD_TORCH_REF")]
    pub torch_ref: Option<PathBuf>,
    /// Also time each convolution and BatchNorm of the model alone, fast kernels against candle's.
    #[arg(long)]
    pub ops: bool,
    /// Where to measure: cpu, or cuda[:N] / metal[:N] (a build with that feature); on a GPU the
    /// presets tiny, small and paper are measured with candle's ops, the only ones there.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// PyTorch's GPU anchor, run with --device cuda when torch sees a GPU
    /// [default: ../shared/cuda/torch_anchor.py beside the workspace, else .gpu/torch_anchor.py].
    #[arg(long, value_name = "PATH", env = "OOD_TORCH_ANCHOR")]
    pub torch_anchor: Option<PathBuf>,
}

/// The settings of one run, defaults filled in.
#[derive(Debug, Clone)]
struct Plan {
    widths: Vec<usize>,
    train_batch: usize,
    infer_batch: usize,
    warmup: usize,
    steps: usize,
    /// Whether --warmup or --steps was given (else candle's slow rows get fewer steps).
    explicit_steps: bool,
    /// Kernels of the reference model at each width.
    kernels: Vec<(usize, Vec<Kernels>)>,
    /// Presets measured, with the kernels they use.
    presets: Vec<&'static str>,
    preset_kernels: Kernels,
    threads: usize,
    /// Where the models run; off the CPU only the presets are measured.
    device: Device,
    /// The training step of the preset rows.
    preset_step: TrainStep,
}

impl Plan {
    fn new(args: &BenchArgs) -> Result<Self> {
        let widths = match &args.widths {
            Some(w) => w.clone(),
            None if args.quick => vec![16],
            None => vec![16, 64],
        };
        if widths.is_empty() || widths.contains(&0) {
            bail!("--widths: give one or more widths above 0");
        }
        let device = args.device.open()?;
        let on_cpu = device.is_cpu();
        let train_batch = args.train_batch.unwrap_or(if on_cpu { 128 } else { 64 });
        if train_batch == 0 || args.infer_batch == 0 {
            bail!("--train-batch and --infer-batch must be at least 1");
        }
        let warmup = args.warmup.unwrap_or(if args.quick { 1 } else { 2 });
        let steps = args.steps.unwrap_or(if args.quick { 3 } else { 5 });
        if steps == 0 {
            bail!("--steps must be at least 1");
        }
        // torch_ref.py's model is a CPU comparison; on a GPU the presets are what users train.
        let widths = if on_cpu { widths } else { Vec::new() };
        let kernels = widths
            .iter()
            .map(|&w| {
                let k = match args.kernels {
                    KernelChoice::Fast => vec![Kernels::Fast],
                    KernelChoice::Candle => vec![Kernels::Candle],
                    // candle's stock ops are slow at large widths: a quick run skips them there.
                    KernelChoice::Both if args.quick && w > 16 => vec![Kernels::Fast],
                    KernelChoice::Both => vec![Kernels::Fast, Kernels::Candle],
                };
                (w, k)
            })
            .collect();
        Ok(Self {
            widths,
            train_batch,
            infer_batch: args.infer_batch,
            warmup,
            steps,
            explicit_steps: args.warmup.is_some() || args.steps.is_some(),
            kernels,
            presets: match (args.quick, on_cpu) {
                (true, _) => vec!["small"],
                (false, true) => vec!["tiny", "small"],
                (false, false) => vec!["tiny", "small", "paper"],
            },
            preset_kernels: match args.kernels {
                // Off the CPU candle's ops run whatever is asked: say so in the table.
                _ if !on_cpu => Kernels::Candle,
                KernelChoice::Candle => Kernels::Candle,
                _ => Kernels::Fast,
            },
            threads: thread_count(),
            preset_step: if on_cpu {
                TrainStep::Reference
            } else {
                TrainStep::Project
            },
            device,
        })
    }
}

impl Plan {
    /// Warm-up and timed steps of one row: candle's stock ops take tens of seconds a step at
    /// large widths, so by default those rows run fewer steps.
    fn steps_for(&self, width: usize, kernels: Kernels) -> (usize, usize) {
        if !self.explicit_steps && kernels == Kernels::Candle && width > 16 {
            (self.warmup.min(1), self.steps.min(3))
        } else {
            (self.warmup, self.steps)
        }
    }
}

/// The compute threads: RAYON_NUM_THREADS, which `ood` sets at start-up.
fn thread_count() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn kernels_name(k: Kernels) -> &'static str {
    match k {
        Kernels::Fast => "fast",
        Kernels::Candle => "candle",
    }
}

/// What a timed training step computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrainStep {
    /// torch_ref.py's: the noised batch through both heads; cross-entropy + MSE to the clean one.
    Reference,
    /// `ood train`'s and torch_anchor.py's: the clean batch and its noised copy through the trunk
    /// together, the classifier on the clean half, the decoder on the noised half.
    Project,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Train,
    Infer,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Train => "train",
            Kind::Infer => "infer",
        }
    }

    /// FLOPs of a step as a multiple of the forward pass's.
    fn flop_multiple(self) -> f64 {
        match self {
            Kind::Train => 3.0,
            Kind::Infer => 1.0,
        }
    }
}

/// One model measurement (a row of the table and of the JSON).
#[derive(Debug, Clone, Serialize)]
struct ModelRow {
    model: String,
    width: usize,
    blocks: [usize; 3],
    kernels: &'static str,
    kind: &'static str,
    batch: usize,
    images_per_s: f64,
    gflops: f64,
    peak_mib: Option<f64>,
    median_s: f64,
    min_s: f64,
    torch_images_per_s: Option<f64>,
    ratio: Option<f64>,
    /// With several rounds: each round's ratio, in order.
    round_ratios: Vec<f64>,
    threads: usize,
    warmup: usize,
    steps: usize,
}

/// One op measurement, for one set of kernels. For BatchNorm `dgrad_ms` is the whole backward
/// and `wgrad_ms` is absent.
#[derive(Debug, Clone, Serialize)]
struct OpRow {
    kind: &'static str,
    op: String,
    width: usize,
    batch: usize,
    kernels: &'static str,
    fwd_ms: f64,
    dgrad_ms: Option<f64>,
    wgrad_ms: Option<f64>,
    /// Every gradient of the op: `dgrad_ms + wgrad_ms`, or the measured backward.
    bwd_ms: f64,
}

/// A row of the JSON output, its fields in declaration order.
#[derive(Serialize)]
#[serde(untagged)]
enum JsonRow<'a> {
    Model(&'a ModelRow),
    Op(&'a OpRow),
}

/// A PyTorch measurement: a `RESULT framework=torch kind=train|infer ...` line of torch_ref.py
/// or a `RESULT torch-cuda PRESET train|infer batch N tf32=False X img/s` line of torch_anchor.py.
#[derive(Debug, Clone, PartialEq)]
struct TorchResult {
    /// The row's model name: `ref-wW` for torch_ref.py, the preset for torch_anchor.py.
    model: String,
    kind: String,
    batch: usize,
    images_per_s: f64,
}

/// The model measurements of torch_ref.py's output; other lines (comments, matmul results)
/// are skipped.
fn parse_torch_results(output: &str) -> Vec<TorchResult> {
    output
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            if fields.next() != Some("RESULT") {
                return None;
            }
            let pairs: Vec<(&str, &str)> = fields.filter_map(|f| f.split_once('=')).collect();
            let get = |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
            if get("framework") != Some("torch") {
                return None;
            }
            let width: usize = get("width")?.parse().ok()?;
            Some(TorchResult {
                model: format!("ref-w{width}"),
                kind: get("kind")?.to_string(),
                batch: get("batch")?.parse().ok()?,
                images_per_s: get("images_per_s")?.parse().ok()?,
            })
        })
        .collect()
}

/// The fp32 measurements of torch_anchor.py's output (its TF32 lines are another precision
/// than candle's, so they are not compared); other lines are skipped.
fn parse_anchor_results(output: &str) -> Vec<TorchResult> {
    output
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [result, framework, model, kind, "batch", batch, "tf32=False", ips, "img/s", ..]
                    if *result == "RESULT" && framework.starts_with("torch-") =>
                {
                    Some(TorchResult {
                        model: model.to_string(),
                        kind: kind.to_string(),
                        batch: batch.parse().ok()?,
                        images_per_s: ips.parse().ok()?,
                    })
                }
                _ => None,
            }
        })
        .collect()
}

/// Puts each torch figure beside the rows of the same model, kind and batch.
fn attach_torch(rows: &mut [ModelRow], torch: &[TorchResult]) {
    for row in rows.iter_mut() {
        let found = torch
            .iter()
            .find(|t| t.model == row.model && t.kind == row.kind && t.batch == row.batch);
        if let Some(t) = found {
            row.torch_images_per_s = Some(t.images_per_s);
            row.ratio = (t.images_per_s > 0.0).then(|| row.images_per_s / t.images_per_s);
        }
    }
}

/// Restores the kernel choice the process had when dropped.
struct KernelsGuard(Kernels);

impl Drop for KernelsGuard {
    fn drop(&mut self) {
        ops::set_kernels(self.0);
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let plan = Plan::new(args)?;
    let _restore = KernelsGuard(ops::kernels());
    let started = Instant::now();
    let cpu = cpu_model();
    let date = utc_now();
    let busy = other_runnable_threads();

    if args.rounds == 0 {
        return Err(BenchError::Invalid("--rounds must be at least 1".into()));
    }
    let mut rounds = Vec::with_capacity(args.rounds);
    let mut torch_note = String::new();
    for round in 0..args.rounds {
        if args.rounds > 1 {
            eprintln!("round {} of {}", round + 1, args.rounds);
        }
        let mut rows = measure_rows(&plan)?;
        // PyTorch last in each round, so that it never competes with our measurements for the
        // cores.
        torch_note = if args.no_torch {
            "not compared (--no-torch)".to_string()
        } else {
            let torch = if plan.device.is_cpu() {
                run_torch(args, &plan)
            } else {
                run_anchor(args, &plan)
            };
            match torch {
                Ok((version, results)) => {
                    attach_torch(&mut rows, &results);
                    format!("{version}, same threads, warm-up and steps")
                }
                Err(why) => format!("not compared ({why:#})"),
            }
        };
        rounds.push(rows);
    }
    let rows = median_of_rounds(rounds);

    let mut op_rows = Vec::new();
    if args.ops {
        for &w in &plan.widths {
            op_rows.extend(measure_ops(w, plan.train_batch, plan.steps)?);
        }
    }

    print_header(args, &plan, &date, &cpu, busy, &torch_note);
    print!("{}", model_table(&rows));
    if !op_rows.is_empty() {
        println!();
        print!("{}", op_table(&op_rows, plan.train_batch));
    }
    println!();
    println!("(took {:.0} s)", started.elapsed().as_secs_f64());

    if let Some(path) = &args.json {
        let all: Vec<JsonRow> = rows
            .iter()
            .map(JsonRow::Model)
            .chain(op_rows.iter().map(JsonRow::Op))
            .collect();
        let text = serde_json::to_string_pretty(&all)? + "\n";
        ood_data::atomic::write_atomic(path, text.as_bytes())
            .map_err(|e| BenchError::Io(path.clone(), e))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Every model row of one round, in the plan's order.
fn measure_rows(plan: &Plan) -> Result<Vec<ModelRow>> {
    let mut rows = Vec::new();
    for (w, kernels) in &plan.kernels {
        let config = ModelConfig::new(*w, [2, 2, 2], 10);
        for &k in kernels {
            for kind in [Kind::Train, Kind::Infer] {
                rows.push(measure_model(
                    plan,
                    &format!("ref-w{w}"),
                    &config,
                    k,
                    kind,
                    TrainStep::Reference,
                )?);
            }
        }
    }
    for name in &plan.presets {
        let config = ood_model::preset(name, 9)?;
        for kind in [Kind::Train, Kind::Infer] {
            rows.push(measure_model(
                plan,
                name,
                &config,
                plan.preset_kernels,
                kind,
                plan.preset_step,
            )?);
        }
    }
    Ok(rows)
}

/// One row per measurement: the median over the rounds of our images/s (GFLOP/s with it) and
/// of PyTorch's, their ratio, and each round's ratio; the largest peak memory; the median of
/// the step medians and the least step. One round is returned as it is.
fn median_of_rounds(mut rounds: Vec<Vec<ModelRow>>) -> Vec<ModelRow> {
    if rounds.len() == 1 {
        return rounds.pop().unwrap_or_default();
    }
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    (0..first.len())
        .map(|i| {
            let of_row: Vec<&ModelRow> = rounds.iter().map(|r| &r[i]).collect();
            let median_by = |f: &dyn Fn(&ModelRow) -> Option<f64>| -> Option<f64> {
                let mut v: Vec<f64> = of_row.iter().filter_map(|r| f(r)).collect();
                (v.len() == of_row.len()).then(|| median(&mut v))
            };
            let images_per_s = median_by(&|r| Some(r.images_per_s)).unwrap_or(f64::NAN);
            let torch = median_by(&|r| r.torch_images_per_s);
            ModelRow {
                images_per_s,
                gflops: median_by(&|r| Some(r.gflops)).unwrap_or(f64::NAN),
                peak_mib: of_row.iter().filter_map(|r| r.peak_mib).reduce(f64::max),
                median_s: median_by(&|r| Some(r.median_s)).unwrap_or(f64::NAN),
                min_s: of_row.iter().map(|r| r.min_s).fold(f64::INFINITY, f64::min),
                torch_images_per_s: torch,
                ratio: torch.filter(|&t| t > 0.0).map(|t| images_per_s / t),
                // Every round's, or none: a round without PyTorch leaves no median to compare.
                round_ratios: of_row
                    .iter()
                    .map(|r| r.ratio)
                    .collect::<Option<_>>()
                    .unwrap_or_default(),
                ..of_row[0].clone()
            }
        })
        .collect()
}

/// The middle value (the mean of the two middle ones for an even count); NaN for none.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn print_header(
    args: &BenchArgs,
    plan: &Plan,
    date: &str,
    cpu: &str,
    busy: Option<usize>,
    torch_note: &str,
) {
    println!("# ood bench, {date}");
    println!("# CPU: {cpu}; {} compute threads", plan.threads);
    if !plan.device.is_cpu() {
        println!(
            "# device: {} (candle's ops); train: batch and noised copy through the trunk, as `ood train`",
            args.device
        );
    }
    let fewer = if plan.explicit_steps {
        ""
    } else {
        " (candle above W=16: at most 1 + 3)"
    };
    println!(
        "# {} warm-up + {} timed steps per row{fewer}, median; GFLOP/s = img/s x forward FLOPs x (3 train, 1 infer)",
        plan.warmup, plan.steps
    );
    println!("# PyTorch: {torch_note}");
    if let Some(n) = busy.filter(|&n| n > 0) {
        println!(
            "# warning: {n} other runnable thread(s) at the start: other work competes for the cores, \
             so these figures (PyTorch's above all) are low; rerun on an idle machine"
        );
    }
    if plan.device.is_cpu() {
        println!(
            "# ref-wW: torch_ref.py's model (width W, blocks [2,2,2], 10 classes); presets: 9 classes"
        );
    }
    if args.rounds > 1 {
        println!(
            "# {} rounds, ours then PyTorch's each time: median of each row over the rounds; \
             the ratio is of the two medians, each round's in brackets",
            args.rounds
        );
    }
    println!();
}

/// Median and minimum of `steps` timed calls after `warmup` untimed ones, in seconds.
fn timed(warmup: usize, steps: usize, mut step: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    for _ in 0..warmup {
        step()?;
    }
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t0 = Instant::now();
        step()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median = if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2.0
    };
    Ok((median, times[0]))
}

/// Random images in [0, 1], their noised copies and labels, as torch_ref.py makes them.
struct Data {
    clean: Tensor,
    noisy: Tensor,
    labels: Tensor,
}

impl Data {
    fn random(
        batch: usize,
        classes: usize,
        side: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = batch * side * side;
        let clean: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
        let noisy: Vec<f32> = clean
            .iter()
            .map(|&c| (c + 0.3 * standard_normal(&mut rng)).clamp(0.0, 1.0))
            .collect();
        let labels: Vec<u32> = (0..batch)
            .map(|_| rng.random_range(0..classes as u32))
            .collect();
        let shape = (batch, 1, side, side);
        Ok(Self {
            clean: Tensor::from_vec(clean, shape, device)?,
            noisy: Tensor::from_vec(noisy, shape, device)?,
            labels: Tensor::from_vec(labels, batch, device)?,
        })
    }
}

/// One draw of N(0, 1) (Box-Muller).
fn standard_normal(rng: &mut impl Rng) -> f32 {
    let u1 = 1.0 - rng.random::<f64>(); // in (0, 1]
    let u2 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

fn measure_model(
    plan: &Plan,
    model: &str,
    config: &ModelConfig,
    kernels: Kernels,
    kind: Kind,
    step: TrainStep,
) -> Result<ModelRow> {
    ops::set_kernels(kernels);
    let batch = match kind {
        Kind::Train => plan.train_batch,
        Kind::Infer => plan.infer_batch,
    };
    eprint!(
        "{model} {} {} batch {batch} ... ",
        kernels_name(kernels),
        kind.name()
    );
    reset_peak_memory();
    let device = &plan.device;
    let (varmap, net) = ood_model::build(config, device, 0)?;
    let data = Data::random(batch, config.num_classes, config.image_size, 0, device)?;
    let (warmup, steps) = plan.steps_for(config.width, kernels);
    let (median, min) = match kind {
        Kind::Train => {
            let adam = AdamWConfig {
                weight_decay: 0.0,
                ..Default::default()
            };
            let mut opt = AdamW::new(&varmap, adam)?;
            timed(warmup, steps, || {
                let (logits, reconstruction) = match step {
                    TrainStep::Reference => {
                        let out = net.forward_all(&data.noisy, true)?;
                        (out.logits, out.reconstruction)
                    }
                    TrainStep::Project => {
                        let both = Tensor::cat(&[&data.clean, &data.noisy], 0)?;
                        let features = net.features(&both, true)?;
                        let pooled = ood_model::OodNet::pool(&features.narrow(0, 0, batch)?)?;
                        (
                            net.classify(&pooled)?,
                            net.decode(&features.narrow(0, batch, batch)?, true)?,
                        )
                    }
                };
                let loss = (ood_losses::cross_entropy(&logits, &data.labels)?
                    + ood_losses::denoising_mse(&reconstruction, &data.clean)?)?;
                opt.backward_step(&loss, 1e-3)?;
                let value = loss.to_scalar::<f32>()?;
                std::hint::black_box(value);
                Ok(())
            })?
        }
        Kind::Infer => timed(warmup, steps, || {
            let out = net.forward_all(&data.noisy, false)?;
            let a = out.logits.sum_all()?.to_scalar::<f32>()?;
            let b = out.reconstruction.sum_all()?.to_scalar::<f32>()?;
            std::hint::black_box(a + b);
            Ok(())
        })?,
    };
    // Resident memory says nothing of a GPU's.
    let peak_mib = if device.is_cpu() {
        peak_memory_mib()
    } else {
        None
    };
    drop((net, varmap, data));
    let images_per_s = batch as f64 / median;
    let flops_per_image = match (kind, step) {
        // The trunk also runs on the noised copy.
        (Kind::Train, TrainStep::Project) => {
            let (trunk, classifier, decoder) = config.macs_per_image();
            2 * (2 * trunk + classifier + decoder)
        }
        _ => config.forward_flops_per_image(),
    };
    let gflops = images_per_s * flops_per_image as f64 * kind.flop_multiple() / 1e9;
    eprintln!("{images_per_s:.1} img/s");
    Ok(ModelRow {
        model: model.to_string(),
        width: config.width,
        blocks: config.blocks,
        kernels: kernels_name(kernels),
        kind: kind.name(),
        batch,
        images_per_s,
        gflops,
        peak_mib,
        median_s: median,
        min_s: min,
        torch_images_per_s: None,
        ratio: None,
        round_ratios: Vec::new(),
        threads: plan.threads,
        warmup,
        steps,
    })
}

/// Starts a new peak-memory window: freed heap memory goes back to the system first (the
/// allocator is tuned to keep it), then the kernel's high-water mark is reset to the current
/// resident size. Linux only; elsewhere nothing happens.
fn reset_peak_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident memory (VmHWM) in MiB, where /proc tells it.
fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// torch_ref.py on the CPU: (torch version, results).
fn run_torch(args: &BenchArgs, plan: &Plan) -> Result<(String, Vec<TorchResult>)> {
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/bench/torch_ref.py");
    let script = find_script(
        args.torch_ref.as_deref(),
        &[default],
        "--torch-ref",
        "OOD_TORCH_REF",
    )?;
    if !python_says_yes("import torch") {
        bail!("python3 cannot import torch");
    }
    let widths: Vec<String> = plan.widths.iter().map(|w| w.to_string()).collect();
    eprintln!("running the PyTorch reference {} ...", script.display());
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .args(["--threads", &plan.threads.to_string(), "--widths"])
        .args(&widths)
        .args(["--train-batch", &plan.train_batch.to_string()])
        .args(["--infer-batch", &plan.infer_batch.to_string()])
        .args(["--warmup", &plan.warmup.to_string()])
        .args(["--steps", &plan.steps.to_string()])
        .arg("--no-matmul");
    let stdout = run_script(cmd, &script)?;
    let results = parse_torch_results(&stdout);
    if results.is_empty() {
        bail!("{} printed no RESULT lines", script.display());
    }
    let version = stdout
        .lines()
        .find_map(|l| l.strip_prefix("# torch "))
        .and_then(|rest| rest.split_whitespace().next())
        .map_or_else(|| "torch".to_string(), |v| format!("torch {v}"));
    Ok((version, results))
}

/// torch_anchor.py on the GPU, with the same presets, batches and steps: (its first line, the
/// fp32 results).
fn run_anchor(args: &BenchArgs, plan: &Plan) -> Result<(String, Vec<TorchResult>)> {
    let defaults = [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/cuda/torch_anchor.py"),
        PathBuf::from(".gpu/torch_anchor.py"),
    ];
    let script = find_script(
        args.torch_anchor.as_deref(),
        &defaults,
        "--torch-anchor",
        "OOD_TORCH_ANCHOR",
    )?;
    if !python_says_yes("import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)") {
        bail!("python3 cannot import torch, or torch sees no CUDA device");
    }
    eprintln!("running the PyTorch anchor {} ...", script.display());
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .args(["--device", &args.device.to_string()])
        .args(["--presets", &plan.presets.join(",")])
        .args(["--train-batch", &plan.train_batch.to_string()])
        .args(["--infer-batch", &plan.infer_batch.to_string()])
        .args(["--warmup", &plan.warmup.to_string()])
        .args(["--steps", &plan.steps.to_string()]);
    let stdout = run_script(cmd, &script)?;
    let results = parse_anchor_results(&stdout);
    if results.is_empty() {
        bail!("{} printed no fp32 RESULT lines", script.display());
    }
    let version = stdout.lines().next().unwrap_or("torch").trim().to_string();
    Ok((version, results))
}

/// The script given (flag or environment), else the first default that exists.
fn find_script(
    given: Option<&Path>,
    defaults: &[PathBuf],
    flag: &str,
    env: &str,
) -> Result<PathBuf> {
    let found = match given {
        Some(p) => p.is_file().then(|| p.to_path_buf()),
        None => defaults.iter().find(|p| p.is_file()).cloned(),
    };
    let Some(script) = found else {
        let tried = given.map_or_else(|| defaults.to_vec(), |p| vec![p.to_path_buf()]);
        let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
        bail!("no {}: give {flag} PATH or {env}", tried.join(" or "));
    };
    Ok(std::fs::canonicalize(&script).unwrap_or(script))
}

/// Whether `python3 -c CODE` exits with success.
fn python_says_yes(code: &str) -> bool {
    Command::new("python3")
        .args(["-c", code])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs a benchmark script to the end: its standard output, or an error with its last words.
fn run_script(mut cmd: Command, script: &Path) -> Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BenchError::Io(script.to_path_buf(), e))?;
    if !output.status.success() {
        // Its warnings are noise when it works; when it fails, its last words say why.
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        bail!(
            "{} failed ({}): {}",
            script.display(),
            output.status,
            last.trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

fn model_table(rows: &[ModelRow]) -> String {
    let mut s = String::from(
        "| model | kernels | kind | batch | img/s | GFLOP/s | peak MiB | torch img/s | ratio |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} | {:.1} | {:.2} | {} | {} | {} |\n",
            r.model,
            r.kernels,
            r.kind,
            r.batch,
            r.images_per_s,
            r.gflops,
            fmt_opt(r.peak_mib, 0),
            fmt_opt(r.torch_images_per_s, 1),
            ratio_cell(r),
        );
    }
    s
}

/// The ratio, then each round's in brackets when there were several.
fn ratio_cell(r: &ModelRow) -> String {
    let ratio = fmt_opt(r.ratio, 2);
    if r.round_ratios.len() < 2 {
        return ratio;
    }
    let each: Vec<String> = r.round_ratios.iter().map(|x| format!("{x:.2}")).collect();
    format!("{ratio} ({})", each.join(", "))
}

fn op_table(rows: &[OpRow], batch: usize) -> String {
    let mut s = format!(
        "ops at batch {batch} (ms per call; conv bwd = input + weight gradient as candle computes them; \
         bn: train forward, whole backward)\n\n\
         | op | fast fwd ms | fast dgrad ms | fast wgrad ms | candle fwd ms | candle bwd ms | speed-up |\n\
         |---|---:|---:|---:|---:|---:|---:|\n"
    );
    for fast in rows.iter().filter(|r| r.kernels == "fast") {
        let Some(stock) = rows
            .iter()
            .find(|r| r.kernels == "candle" && r.op == fast.op && r.width == fast.width)
        else {
            continue;
        };
        s += &format!(
            "| W={} {} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.1}x |\n",
            fast.width,
            fast.op,
            fast.fwd_ms,
            fast.dgrad_ms.unwrap_or(fast.bwd_ms),
            fmt_opt(fast.wgrad_ms, 2),
            stock.fwd_ms,
            stock.bwd_ms,
            (stock.fwd_ms + stock.bwd_ms) / (fast.fwd_ms + fast.bwd_ms),
        );
    }
    s
}

/// A convolution of the model, as torch_ref.py's `bench_ops` lists them.
struct ConvShape {
    name: &'static str,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    /// Input side.
    side: usize,
    transposed: bool,
}

fn conv_shapes(w: usize) -> Vec<ConvShape> {
    let conv = |name, cin, cout, k, stride, pad, side| ConvShape {
        name,
        cin,
        cout,
        k,
        stride,
        pad,
        side,
        transposed: false,
    };
    let up = |name, cin, cout, side| ConvShape {
        name,
        cin,
        cout,
        k: 4,
        stride: 2,
        pad: 1,
        side,
        transposed: true,
    };
    vec![
        conv("stem 3x3 1->W @28", 1, w, 3, 1, 1, 28),
        conv("s1 3x3 W->W @28", w, w, 3, 1, 1, 28),
        conv("s2a 3x3/2 W->2W 28->14", w, 2 * w, 3, 2, 1, 28),
        conv("s2 3x3 2W->2W @14", 2 * w, 2 * w, 3, 1, 1, 14),
        conv("s2sc 1x1/2 W->2W", w, 2 * w, 1, 2, 0, 28),
        conv("s3a 3x3/2 2W->4W 14->7", 2 * w, 4 * w, 3, 2, 1, 14),
        conv("s3 3x3 4W->4W @7", 4 * w, 4 * w, 3, 1, 1, 7),
        conv("s3sc 1x1/2 2W->4W", 2 * w, 4 * w, 1, 2, 0, 14),
        conv("out 3x3 W->1 @28", w, 1, 3, 1, 1, 28),
        up("up1 convT4/2 4W->2W 7->14", 4 * w, 2 * w, 7),
        up("up2 convT4/2 2W->W 14->28", 2 * w, w, 14),
    ]
}

/// Runs one op for its time alone.
fn call<T>(result: candle_core::Result<T>) -> Result<()> {
    std::hint::black_box(result?);
    Ok(())
}

/// One pass of a layer, as [`pass_times`] times it.
type Pass<'a> = &'a dyn Fn() -> candle_core::Result<Tensor>;

/// The median milliseconds of each of a layer's three passes: forward, input gradient and
/// weight gradient.
fn pass_times(steps: usize, passes: [Pass<'_>; 3]) -> Result<[f64; 3]> {
    let mut ms = [0.0; 3];
    for (t, pass) in ms.iter_mut().zip(passes) {
        *t = timed(1, steps, || call(pass()))?.0 * 1e3;
    }
    Ok(ms)
}

fn random_tensor(shape: &[usize], scale: f32, rng: &mut impl Rng) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-1.0f32..1.0) * scale)
        .collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// candle 0.11's weight gradient of a convolution (`backprop.rs`, `Op::Conv2D`): a
/// convolution of the transposed input by the transposed output gradient, dilated by the
/// stride, cropped to the kernel. For a transposed convolution the two arguments swap.
fn candle_weight_grad(
    input: &Tensor,
    grad: &Tensor,
    pad: usize,
    stride: usize,
    k: usize,
) -> candle_core::Result<Tensor> {
    let g = input
        .transpose(0, 1)?
        .conv2d(&grad.transpose(0, 1)?, pad, 1, stride, 1)?
        .transpose(0, 1)?;
    let (_, _, g0, g1) = g.dims4()?;
    Ok(if g0 != k || g1 != k {
        g.narrow(2, 0, k)?.narrow(3, 0, k)?
    } else {
        g
    })
}

/// Per-op timings at width `w`: every convolution of the model and three BatchNorms.
fn measure_ops(w: usize, batch: usize, steps: usize) -> Result<Vec<OpRow>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
    let mut rows = Vec::new();
    let ms = |(median, _): (f64, f64)| median * 1e3;
    for c in conv_shapes(w) {
        eprint!("op W={w} {} ... ", c.name);
        let x = random_tensor(&[batch, c.cin, c.side, c.side], 1.0, &mut rng)?;
        let (s, p, k) = (c.stride, c.pad, c.k);
        let (fast, stock) = if !c.transposed {
            let wt = random_tensor(&[c.cout, c.cin, k, k], 0.1, &mut rng)?;
            let fwd = ConvForward { stride: s, pad: p };
            let y = x.apply_op2_no_bwd(&wt, &fwd)?;
            let dy = random_tensor(y.dims(), 1.0, &mut rng)?;
            let dgrad_op = ConvBackwardData {
                stride: s,
                pad: p,
                h: c.side,
                w: c.side,
            };
            let wgrad_op = ConvBackwardFilter {
                stride: s,
                pad: p,
                k,
            };
            let fast = pass_times(
                steps,
                [
                    &|| x.apply_op2_no_bwd(&wt, &fwd),
                    &|| dy.apply_op2_no_bwd(&wt, &dgrad_op),
                    &|| x.apply_op2_no_bwd(&dy, &wgrad_op),
                ],
            )?;
            // candle's input gradient: a transposed convolution, padded out to the input size.
            let out_size = (y.dim(2)? - 1) * s + k - 2 * p;
            let out_padding = c.side - out_size;
            let stock = pass_times(
                steps,
                [
                    &|| x.conv2d(&wt, p, s, 1, 1),
                    &|| dy.conv_transpose2d(&wt, p, out_padding, s, 1),
                    &|| candle_weight_grad(&x, &dy, p, s, k),
                ],
            )?;
            (fast, stock)
        } else {
            // Weight laid out (in, out, k, k); output side 2 * side.
            let out_side = (c.side - 1) * s + k - 2 * p;
            let wt = random_tensor(&[c.cin, c.cout, k, k], 0.1, &mut rng)?;
            let fwd = ConvBackwardData {
                stride: s,
                pad: p,
                h: out_side,
                w: out_side,
            };
            let y = x.apply_op2_no_bwd(&wt, &fwd)?;
            let dy = random_tensor(y.dims(), 1.0, &mut rng)?;
            let dgrad_op = ConvForward { stride: s, pad: p };
            let wgrad_op = ConvBackwardFilter {
                stride: s,
                pad: p,
                k,
            };
            let fast = pass_times(
                steps,
                [
                    &|| x.apply_op2_no_bwd(&wt, &fwd),
                    &|| dy.apply_op2_no_bwd(&wt, &dgrad_op),
                    &|| dy.apply_op2_no_bwd(&x, &wgrad_op),
                ],
            )?;
            let stock = pass_times(
                steps,
                [
                    &|| x.conv_transpose2d(&wt, p, 0, s, 1),
                    &|| dy.conv2d(&wt, p, s, 1, 1),
                    &|| candle_weight_grad(&dy, &x, p, s, k),
                ],
            )?;
            (fast, stock)
        };
        eprintln!(
            "{:.1}x",
            (stock.iter().sum::<f64>()) / fast.iter().sum::<f64>()
        );
        for (kernels, t) in [("fast", fast), ("candle", stock)] {
            rows.push(OpRow {
                kind: "op",
                op: c.name.to_string(),
                width: w,
                batch,
                kernels,
                fwd_ms: t[0],
                dgrad_ms: Some(t[1]),
                wgrad_ms: Some(t[2]),
                bwd_ms: t[1] + t[2],
            });
        }
    }
    for (name, channels, side) in [
        ("bn W @28", w, 28),
        ("bn 2W @14", 2 * w, 14),
        ("bn 4W @7", 4 * w, 7),
    ] {
        eprint!("op W={w} {name} ... ");
        let x = Var::from_tensor(&random_tensor(
            &[batch, channels, side, side],
            1.0,
            &mut rng,
        )?)?;
        let g = random_tensor(&[batch, channels, side, side], 1.0, &mut rng)?;
        let layer = ops::batchnorm::BatchNorm::fresh(channels)?;
        let mut times = Vec::new();
        for kernels in [Kernels::Fast, Kernels::Candle] {
            ops::set_kernels(kernels);
            let fwd = ms(timed(1, steps, || {
                call(layer.forward_t(x.as_tensor(), true))
            })?);
            // A graph's backward can run again and again: time it alone.
            let loss = (layer.forward_t(x.as_tensor(), true)? * &g)?.sum_all()?;
            let bwd = ms(timed(1, steps, || call(loss.backward()))?);
            rows.push(OpRow {
                kind: "op",
                op: name.to_string(),
                width: w,
                batch,
                kernels: kernels_name(kernels),
                fwd_ms: fwd,
                dgrad_ms: None,
                wgrad_ms: None,
                bwd_ms: bwd,
            });
            times.push(fwd + bwd);
        }
        eprintln!("{:.1}x", times[1] / times[0]);
    }
    Ok(rows)
}

/// Threads of other processes ready to run now (the least of a few looks at `procs_running`
/// in /proc/stat, less this one), where /proc tells it.
fn other_runnable_threads() -> Option<usize> {
    let mut least: Option<usize> = None;
    for i in 0..5 {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let running: usize = stat
            .lines()
            .find_map(|l| l.strip_prefix("procs_running"))?
            .trim()
            .parse()
            .ok()?;
        let others = running.saturating_sub(1);
        least = Some(least.map_or(others, |l| l.min(others)));
    }
    least
}

/// The first "model name" of /proc/cpuinfo.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| format!("unknown ({})", std::env::consts::ARCH))
}

/// "YYYY-MM-DD HH:MM UTC" now.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TORCH_OUTPUT: &str = "\
# torch 2.5.1+cpu mkldnn=True capability=AVX512
# W=16: forward MACs/img trunk=22.94M cls=0.0006M dec=0.56M total=23.50M (hook count 23.50M) -> fwd 47.0 MFLOP/img, params=0.216M
RESULT framework=torch kind=matmul n=2048 threads=2 median_s=0.2000 GFLOPs=85.9  (torch.mm -> MKL sgemm)
RESULT framework=torch kind=train width=16 batch=128 median_step_s=0.0983 min_step_s=0.0950 images_per_s=1302.0 fwd_MFLOP_per_img=47.00 achieved_GFLOPs=183.58 epoch_49077_s=37.7
RESULT framework=torch kind=infer width=16 batch=512 median_step_s=0.1196 min_step_s=0.1100 images_per_s=4280.0 fwd_MFLOP_per_img=47.00 achieved_GFLOPs=201.16 epoch_49077_s=11.5
RESULT framework=torch kind=train width=64 batch=128 median_step_s=0.8889 min_step_s=0.8800 images_per_s=144.0 fwd_MFLOP_per_img=746.80 achieved_GFLOPs=322.62 epoch_49077_s=340.8
not a result line images_per_s=5
";

    fn row(
        model: &str,
        kernels: &'static str,
        kind: &'static str,
        width: usize,
        batch: usize,
        ips: f64,
        reference: bool,
    ) -> ModelRow {
        // A preset has blocks [1, 1, 1], torch_ref.py's model [2, 2, 2].
        ModelRow {
            model: model.into(),
            width,
            blocks: if reference { [2, 2, 2] } else { [1, 1, 1] },
            kernels,
            kind,
            batch,
            images_per_s: ips,
            gflops: 0.0,
            peak_mib: None,
            median_s: batch as f64 / ips,
            min_s: batch as f64 / ips,
            torch_images_per_s: None,
            ratio: None,
            round_ratios: Vec::new(),
            threads: 2,
            warmup: 0,
            steps: 1,
        }
    }

    #[test]
    fn rounds_give_the_median_of_each_row_the_ratio_of_the_medians_and_each_rounds_ratio() {
        // Three rounds of two rows; PyTorch measured the first row only.
        let torch = |ips: f64| TorchResult {
            model: "ref-w16".into(),
            kind: "train".into(),
            batch: 128,
            images_per_s: ips,
        };
        let round = |ours: f64, infer: f64, theirs: f64, peak: f64| {
            let mut rows = vec![
                row("ref-w16", "fast", "train", 16, 128, ours, true),
                row("ref-w16", "fast", "infer", 16, 512, infer, true),
            ];
            rows[0].peak_mib = Some(peak);
            attach_torch(&mut rows, &[torch(theirs)]);
            rows
        };
        let rows = median_of_rounds(vec![
            round(600.0, 3000.0, 500.0, 10.0),
            round(400.0, 2000.0, 800.0, 30.0),
            round(700.0, 2500.0, 600.0, 20.0),
        ]);
        assert_eq!(rows.len(), 2);
        // Medians 600 (of 400, 600, 700) and 600 (of 500, 600, 800): ratio 1.
        assert_eq!(rows[0].images_per_s, 600.0);
        assert_eq!(rows[0].torch_images_per_s, Some(600.0));
        assert_eq!(rows[0].ratio, Some(1.0));
        assert_eq!(rows[0].round_ratios, vec![1.2, 0.5, 700.0 / 600.0]);
        assert_eq!(rows[0].peak_mib, Some(30.0));
        assert_eq!(ratio_cell(&rows[0]), "1.00 (1.20, 0.50, 1.17)");
        // Step times follow the images/s: median of 128/600, 128/400, 128/700.
        assert_eq!(rows[0].median_s, 128.0 / 600.0);
        assert_eq!(rows[0].min_s, 128.0 / 700.0);
        // No PyTorch figure in any round: none in the median either.
        assert_eq!(rows[1].images_per_s, 2500.0);
        assert_eq!((rows[1].torch_images_per_s, rows[1].ratio), (None, None));
        assert_eq!(ratio_cell(&rows[1]), "-");
        // One round is left as it was; two rounds take the mean of the middle pair.
        let one = median_of_rounds(vec![round(600.0, 1.0, 500.0, 1.0)]);
        assert_eq!(
            (one[0].ratio, ratio_cell(&one[0])),
            (Some(1.2), "1.20".to_string())
        );
        assert_eq!(median(&mut [3.0, 1.0]), 2.0);
    }

    #[test]
    fn anchor_lines_are_parsed_fp32_only_and_matched_to_presets() {
        let output = "torch 2.9.0, device cuda (NVIDIA H200, CUDA 13.0, cuDNN 91200)
preset small: width 16, blocks [1, 1, 1], 9 classes, 174000 parameters
RESULT torch-cuda small train batch 64 tf32=False 11125 img/s (5.75 ms/step, peak 120 MiB)
RESULT torch-cuda small train batch 64 tf32=True 12000 img/s (5.33 ms/step, peak 120 MiB)
RESULT torch-cuda small infer batch 512 tf32=False 380865 img/s (1.34 ms/batch)
RESULT torch-cuda paper train batch 64 tf32=False 6739 img/s (9.50 ms/step)
RESULT torch-cuda paper train batch x tf32=False 1 img/s
";
        let parsed = parse_anchor_results(output);
        assert_eq!(parsed.len(), 3, "{parsed:?}");
        assert_eq!(
            parsed[0],
            TorchResult {
                model: "small".into(),
                kind: "train".into(),
                batch: 64,
                images_per_s: 11125.0
            }
        );
        let mut rows = vec![
            row("small", "candle", "train", 16, 64, 5562.5, false),
            row("small", "candle", "infer", 16, 512, 380865.0, false),
            row("paper", "candle", "infer", 64, 512, 1.0, false),
        ];
        attach_torch(&mut rows, &parsed);
        assert!((rows[0].ratio.unwrap() - 0.5).abs() < 1e-12);
        assert!((rows[1].ratio.unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(rows[2].ratio, None);
    }

    #[test]
    fn torch_result_lines_are_parsed_and_matched_to_rows() {
        let parsed = parse_torch_results(TORCH_OUTPUT);
        assert_eq!(parsed.len(), 3, "{parsed:?}");
        assert_eq!(
            parsed[0],
            TorchResult {
                model: "ref-w16".into(),
                kind: "train".into(),
                batch: 128,
                images_per_s: 1302.0
            }
        );
        assert_eq!(parsed[2].model, "ref-w64");

        let mut rows = vec![
            row("ref-w16", "fast", "train", 16, 128, 651.0, true),
            row("ref-w16", "candle", "train", 16, 128, 130.2, true),
            row("ref-w16", "fast", "infer", 16, 512, 4280.0, true),
            // another batch: no match
            row("ref-w16", "fast", "infer", 16, 256, 4000.0, true),
            // a preset of the same width is another model: no match
            row("small", "fast", "train", 16, 128, 2000.0, false),
            // torch measured no W=64 inference
            row("ref-w64", "fast", "infer", 64, 512, 200.0, true),
        ];
        attach_torch(&mut rows, &parsed);
        assert_eq!(rows[0].torch_images_per_s, Some(1302.0));
        assert!((rows[0].ratio.unwrap() - 0.5).abs() < 1e-12);
        assert!((rows[1].ratio.unwrap() - 0.1).abs() < 1e-12);
        assert!((rows[2].ratio.unwrap() - 1.0).abs() < 1e-12);
        for r in &rows[3..] {
            assert_eq!((r.torch_images_per_s, r.ratio), (None, None), "{}", r.model);
        }
        let table = model_table(&rows);
        assert!(
            table.contains("| ref-w16 | fast | train | 128 | 651.0 | 0.00 | - | 1302.0 | 0.50 |"),
            "{table}"
        );
        assert!(parse_torch_results(
            "RESULT framework=candle kind=train width=16 batch=1 images_per_s=1"
        )
        .is_empty());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_gpu_bench_without_the_feature_says_how_to_build_it() {
        let err = run(&parse(&["--device", "cuda", "--no-torch"])).unwrap_err();
        assert!(format!("{err:#}").contains("--features cuda"), "{err:#}");
    }

    /// The arguments as `ood bench ARGS` parses them.
    fn parse(args: &[&str]) -> BenchArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: BenchArgs,
        }
        let all = std::iter::once("bench").chain(args.iter().copied());
        <Cli as clap::Parser>::try_parse_from(all).unwrap().args
    }

    #[test]
    fn dates_and_medians() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        let mut calls = 0;
        let (median, min) = timed(2, 4, || {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, 6);
        assert!(min <= median);
    }

    #[test]
    fn whole_bench_runs_in_process_and_writes_json() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("bench.json");
        run(&parse(&[
            "--widths",
            "4",
            "--train-batch",
            "4",
            "--infer-batch",
            "4",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--kernels",
            "both",
            "--no-torch",
            "--ops",
            "--json",
            json.to_str().unwrap(),
        ]))
        .unwrap();
        let rows: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let models: Vec<_> = rows.iter().filter(|r| r["kind"] != "op").collect();
        // ref-w4 fast and candle, train and infer; tiny and small, train and infer.
        assert_eq!(models.len(), 8, "{rows:?}");
        for r in &models {
            for field in [
                "model",
                "width",
                "blocks",
                "kernels",
                "kind",
                "batch",
                "images_per_s",
                "gflops",
                "peak_mib",
                "median_s",
                "min_s",
                "torch_images_per_s",
                "ratio",
            ] {
                assert!(r.get(field).is_some(), "{field} missing in {r}");
            }
            assert!(r["images_per_s"].as_f64().unwrap() > 0.0, "{r}");
            assert!(r["gflops"].as_f64().unwrap() > 0.0, "{r}");
            assert!(
                r["torch_images_per_s"].is_null() && r["ratio"].is_null(),
                "{r}"
            );
            assert_eq!(r["batch"], 4);
        }
        assert!(models
            .iter()
            .any(|r| r["model"] == "ref-w4" && r["kernels"] == "candle" && r["kind"] == "train"));
        assert!(models
            .iter()
            .any(|r| r["model"] == "small" && r["kind"] == "infer"));
        let ops: Vec<_> = rows.iter().filter(|r| r["kind"] == "op").collect();
        // 11 convolutions and 3 BatchNorms, fast and candle.
        assert_eq!(ops.len(), 28);
        for r in &ops {
            assert!(r["fwd_ms"].as_f64().unwrap() > 0.0, "{r}");
            assert_eq!(r["width"], 4);
        }
    }
}
