//! The `ood` command line: a thin layer that parses arguments and calls the library crates.
//!
//! Everything here is argument parsing, printing and wiring; the work itself lives in
//! `ood-data`, `ood-model`, `ood-train`, `ood-calibrate`, `ood-eval` and `ood-serve`. [`run`] is the whole program, so
//! tests can drive it in-process.
//!
//! It is not where any of that work is done (a change to training, scoring or serving belongs
//! in those crates), and it holds none of the project's workflows (`cargo xtask`).
//!
//! ```
//! // The same as running `ood presets` in a shell.
//! ood_cli::run(["ood", "presets"])?;
//! # Ok::<(), anyhow::Error>(())
//! ```

mod commands;

use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

pub use commands::train::TrainArgs;

/// Train, calibrate and evaluate MNIST classifiers that flag unknown inputs.
#[derive(Debug, Parser)]
#[command(name = "ood", version, about)]
pub struct Cli {
    /// Compute threads (default: RAYON_NUM_THREADS, else every core).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Log more (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Where datasets are found.
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// Data root holding mnist/ (and fashion-mnist/); else $OOD_DATA_DIR, else assets/data.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the image counts, label histograms and split sizes of the data.
    DataInfo {
        #[command(flatten)]
        data: DataArgs,
        /// Seed of the validation hold-out.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Download MNIST from the Hugging Face hub into DATA_DIR/mnist (needs the `hub` feature).
    FetchData {
        #[command(flatten)]
        data: DataArgs,
    },
    /// List the model presets with parameter counts and forward FLOPs per image.
    Presets,
    /// Train a model; writes OUT/checkpoint.safetensors and OUT/metrics.jsonl.
    Train(Box<TrainArgs>),
    /// Calibrate a checkpoint's OOD thresholds on held-out digits and synthetic OOD.
    Calibrate(Box<commands::eval::CalibrateArgs>),
    /// Evaluate a calibrated checkpoint on the test set; writes a report folder.
    Evaluate(Box<commands::eval::EvaluateArgs>),
    /// Compare every OOD detector on near, far and synthetic OOD sets.
    BenchOod(Box<commands::eval::BenchOodArgs>),
    /// Measure training and inference throughput on this machine.
    Bench(Box<commands::bench::BenchArgs>),
    /// Classify image files, or say they are unknown (default: with the shipped model).
    Predict(Box<commands::predict::PredictArgs>),
    /// Serve predictions over HTTP, with a page to draw digits on (default: the shipped model).
    Serve(Box<commands::serve::ServeArgs>),
    /// Copy a checkpoint without its training state (what inference needs; cannot be resumed).
    Strip {
        checkpoint: PathBuf,
        /// Where to write the stripped checkpoint.
        #[arg(long)]
        out: PathBuf,
    },
    /// Describe a checkpoint: configuration, classes, epoch, metrics.
    Inspect {
        checkpoint: PathBuf,
        /// Print the metadata as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the program on `args` (the first item is the program name).
pub fn run<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(|e| {
        // --help and --version are not errors.
        if !e.use_stderr() {
            let _ = e.print();
            std::process::exit(0);
        }
        anyhow::anyhow!(e.to_string().trim_end().to_string())
    })?;
    // A server says what it serves by default; the other commands only warn.
    let quiet = if matches!(cli.command, Command::Serve(_)) {
        "warn,ood_serve=info,tower_http=info"
    } else {
        "warn"
    };
    init_logging(cli.verbose, quiet);
    ood_model::configure_threads(cli.threads);
    ood_model::tune_allocator();
    match cli.command {
        Command::DataInfo { data, seed } => commands::data::info(&data, seed),
        Command::FetchData { data } => commands::data::fetch(&data),
        Command::Presets => commands::inspect::presets(),
        Command::Train(args) => commands::train::run(&args),
        Command::Calibrate(args) => commands::eval::calibrate(&args),
        Command::Evaluate(args) => commands::eval::evaluate(&args),
        Command::BenchOod(args) => commands::eval::bench_ood(&args),
        Command::Bench(args) => commands::bench::run(&args),
        Command::Predict(args) => commands::predict::run(&args),
        Command::Serve(args) => commands::serve::run(&args),
        Command::Strip { checkpoint, out } => commands::inspect::strip(&checkpoint, &out),
        Command::Inspect { checkpoint, json } => commands::inspect::checkpoint(&checkpoint, json),
    }
}

fn init_logging(verbose: u8, quiet: &str) {
    let default = match verbose {
        0 => quiet,
        1 => "info,ood=debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("OOD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // A second call (tests run the program many times in one process) is harmless.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
