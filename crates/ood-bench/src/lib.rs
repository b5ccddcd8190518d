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
        return Err($crate::BenchError::Invalid(format!($($arg)*)))
    };
}

mod machine;
mod op_timings;
mod plan;
mod report;
mod rounds;
mod torch;
mod workloads;

use ood_model::ops;
use ood_model::DeviceChoice;
use std::path::PathBuf;
use std::time::Instant;

use machine::{cpu_model, other_runnable_threads, utc_now};
use op_timings::measure_ops;
use plan::Plan;
use report::{model_table, op_table, print_header, JsonRow};
use rounds::median_of_rounds;
use torch::{attach_torch, run_anchor, run_torch};
use workloads::{measure_rows, KernelsGuard};

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
    /// Where to measure: cpu, cuda, cuda:N, metal or metal:N (a build with that feature); on a
    /// GPU the presets tiny, small and paper are measured with candle's ops, the only ones there.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// PyTorch's GPU anchor, run with --device cuda when torch sees a GPU
    /// [default: ../shared/cuda/torch_anchor.py beside the workspace, else .gpu/torch_anchor.py].
    #[arg(long, value_name = "PATH", env = "OOD_TORCH_ANCHOR")]
    pub torch_anchor: Option<PathBuf>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use machine::utc_string;
    use rounds::timed;
    use time::{OffsetDateTime, UtcOffset};

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
        let at = |secs: i64| utc_string(OffsetDateTime::from_unix_timestamp(secs).unwrap());
        assert_eq!(at(0), "1970-01-01 00:00 UTC");
        // Day 19,782 is a leap day; the seconds are cut, not rounded.
        assert_eq!(
            at(19_782 * 86_400 + 13 * 3600 + 5 * 60 + 59),
            "2024-02-29 13:05 UTC"
        );
        assert_eq!(at(-86_400), "1969-12-31 00:00 UTC");
        // A time at another offset is written in UTC.
        let east = OffsetDateTime::UNIX_EPOCH.to_offset(UtcOffset::from_hms(2, 0, 0).unwrap());
        assert_eq!(utc_string(east), "1970-01-01 00:00 UTC");
        assert_eq!(utc_now().len(), "1970-01-01 00:00 UTC".len());
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
