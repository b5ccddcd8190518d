//! Project workflows: `cargo xtask <task>`. Each task runs the `ood` binary in a release
//! build (candle is about ten times slower unoptimised) with the project's defaults; the
//! arguments are read with clap (`cargo xtask --help`, `cargo xtask <task> --help`).
//!
//! It is not part of what users install (it is never published) and does none of the work
//! itself: training, calibration and evaluation are `ood`'s; the tasks choose folders and
//! defaults, chain the stages and tabulate the studies (the load test's client is its own).

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

mod digits;
mod loadtest;
mod osr;
mod release;
mod studies;

/// The project's workflows: release-build wrappers around the `ood` binary with the project's
/// defaults.
#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    after_help = "Data: --data-dir DIR (among a task's ARGS), or OOD_DATA_DIR, else assets/data."
)]
struct Cli {
    #[command(subcommand)]
    task: Option<Task>,
}

/// Arguments passed on, unread, to the `ood` command a task runs (every argument from the
/// first one that is not the task's own; a task's own options are read anywhere, see
/// [`own_options_first`]). A task that passes them elsewhere says where with `mut_arg`.
#[derive(clap::Args, Debug)]
pub(crate) struct PassOn {
    /// Passed on to the `ood` command (its help: `cargo xtask <task> -- --help`)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub(crate) args: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Train the default model into runs/default (ARGS go to `ood train`)
    Train(PassOn),
    /// Print counts and split sizes of the data (`ood data-info`)
    DataInfo(PassOn),
    /// Download MNIST from the Hugging Face hub into assets/data/mnist (`ood fetch-data`)
    FetchData(PassOn),
    /// List the model presets (`ood presets`)
    Presets(PassOn),
    /// Calibrate the default run's checkpoint (runs/default/calibration.json)
    Calibrate(PassOn),
    /// Evaluate the default run's checkpoint on the test set into runs/default/report
    Evaluate(PassOn),
    /// Every OOD detector on near/far/synthetic OOD sets (runs/default/bench-ood)
    BenchOod(PassOn),
    /// The ablations (k, std loss, decoder, and the classifier levers) into runs/ablate
    ///
    /// ARGS go to every `ood train` (e.g. --seed 1 --augment); resumable.
    Ablate(studies::AblateArgs),
    /// Ten models, each with one digit unknown, into runs/sweep (resumable)
    Sweep(studies::SweepArgs),
    /// The MNIST open-set benchmark: 6 known / 4 unknown digits, 5 splits (resumable)
    ///
    /// One model per split (`--recipe R`, default quality) into runs/osr-R/splitN; per split
    /// and as mean ± std: closed-set accuracy, AUROC of MSP, energy, KNN and the rule's score,
    /// OSCR, and unknown caught at 99% acceptance, beside the published rows.
    Osr(osr::OsrArgs),
    /// The default settings with several seeds into runs/seeds (resumable)
    ///
    /// The headline numbers per seed, with their mean and spread.
    Seeds(studies::SeedsArgs),
    /// Train, calibrate and evaluate the default model, end to end (ARGS go to `ood train`)
    Demo(PassOn),
    /// Describe a checkpoint
    Inspect {
        /// The checkpoint
        #[arg(default_value = DEFAULT_CHECKPOINT)]
        checkpoint: String,
    },
    /// Measure training and inference throughput (`ood bench`)
    ///
    /// Three rounds alternating with PyTorch unless --rounds, --quick or --no-torch is given;
    /// --quick: about a minute; --device cuda: the presets on a GPU, beside PyTorch.
    Bench(PassOn),
    /// The shipped model in assets/models/default, from a trained run
    ///
    /// RUN_DIR's checkpoint (trained first if missing) without optimizer state, recalibrated
    /// (ARGS go to `ood calibrate`), with provenance.json.
    ReleaseModel(release::ReleaseArgs),
    /// Serve the shipped model and the drawing page (`ood serve`)
    Serve(PassOn),
    /// A release `ood serve` under load, then malformed requests
    ///
    /// N clients post drawn digits for S seconds (default 32, 10); with --slow-clients M, a
    /// second run holds M slowloris connections meanwhile. Then malformed requests follow.
    /// Reports the server's memory at the start and the end. Fails if a malformed request
    /// gets no 4xx, a slow connection outlives the header timeout, or the server dies.
    Loadtest(loadtest::Args),
    /// Run what CI runs (.ci/run)
    Ci,
}

/// Where the single-model tasks read the default run's checkpoint.
const DEFAULT_CHECKPOINT: &str = "runs/default/checkpoint.safetensors";

/// clap reads a task's own options only until the first argument it passes on (in
/// `cargo xtask ablate --augment --variants k1`, `--variants k1` would go to `ood train`); the
/// tasks have always taken them anywhere. This moves a task's own options, with their values,
/// in front of the rest (up to a `--`), so that clap sees them.
fn own_options_first(argv: Vec<String>) -> Vec<String> {
    let cli = Cli::command();
    let Some(task) = argv.get(1).and_then(|name| cli.find_subcommand(name)) else {
        return argv;
    };
    let own: Vec<&str> = task
        .get_arguments()
        .filter(|a| a.get_action().takes_values())
        .filter_map(|a| a.get_long())
        .collect();
    let mut front = argv[..2].to_vec();
    let mut rest = Vec::new();
    let mut it = argv[2..].iter().cloned();
    while let Some(a) = it.next() {
        if a == "--" {
            rest.push(a);
            rest.extend(it.by_ref());
            break;
        }
        let long = a
            .strip_prefix("--")
            .map(|n| n.split_once('=').map_or(n, |(n, _)| n));
        if long.is_some_and(|n| own.contains(&n)) {
            let attached = a.contains('=');
            front.push(a);
            if !attached {
                front.extend(it.next());
            }
        } else {
            rest.push(a);
        }
    }
    front.extend(rest);
    front
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The cargo feature a `--device` argument needs (`--device cuda[:N]` -> cuda, metal -> metal).
fn device_feature(args: &[String]) -> Option<&'static str> {
    let value = args.iter().enumerate().find_map(|(i, a)| {
        if a == "--device" {
            args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix("--device=")
        }
    })?;
    ["cuda", "metal"]
        .into_iter()
        .find(|f| value == *f || value.starts_with(&format!("{f}:")))
}

/// `cargo VERB --quiet --release --package ood-cli --bin ood` from the workspace root: the one
/// way every task builds or runs the release `ood`.
pub(crate) fn cargo_ood(verb: &str) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root()).args([
        verb,
        "--quiet",
        "--release",
        "--package",
        "ood-cli",
        "--bin",
        "ood",
    ]);
    cmd
}

/// Runs `cargo run --release -p ood-cli [--features F] -- ARGS` from the workspace root, with
/// the feature a `--device` in ARGS needs added (so `cargo xtask bench --device cuda` works).
pub(crate) fn ood(features: &[&str], args: &[String]) -> Result<()> {
    let features: Vec<&str> = features
        .iter()
        .copied()
        .chain(device_feature(args))
        .collect();
    let mut cmd = cargo_ood("run");
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    cmd.arg("--").args(args);
    let status = cmd.status().context("running cargo")?;
    if !status.success() {
        bail!("`ood {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn with_default(args: &[String], flag: &str, value: &str) -> Vec<String> {
    let mut out = args.to_vec();
    if !args
        .iter()
        .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    {
        out.extend([flag.to_string(), value.to_string()]);
    }
    out
}

/// `ood bench` with ARGS, in three rounds that alternate with PyTorch unless ARGS ask for a
/// number of rounds, a quick run or no PyTorch: one round leaves PyTorch, measured last, at
/// the mercy of this machine's drifting speed.
fn bench_args(rest: &[String]) -> Vec<String> {
    let mut a = vec!["bench".to_string()];
    if rest.iter().any(|x| x == "--quick" || x == "--no-torch") {
        a.extend(rest.iter().cloned());
    } else {
        a.extend(with_default(rest, "--rounds", "3"));
    }
    a
}

/// `ood SUBCOMMAND FIXED... ARGS`, with `FLAG VALUE` added where given unless ARGS set FLAG.
fn ood_args(
    sub: &str,
    fixed: &[String],
    args: &[String],
    default: Option<(&str, &str)>,
) -> Vec<String> {
    let mut a = vec![sub.to_string()];
    a.extend(fixed.iter().cloned());
    match default {
        Some((flag, value)) => a.extend(with_default(args, flag, value)),
        None => a.extend(args.iter().cloned()),
    }
    a
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    let Some(task) = Cli::parse_from(own_options_first(argv.clone())).task else {
        Cli::command().print_help()?;
        return Ok(());
    };
    let ckpt = [DEFAULT_CHECKPOINT.to_string()];
    let out = |dir| Some(("--out", dir));
    let (run_dir, report) = ("runs/default", "runs/default/report");
    match task {
        Task::Train(p) => ood(&[], &ood_args("train", &[], &p.args, out(run_dir))),
        Task::Bench(p) => ood(&[], &bench_args(&p.args)),
        Task::DataInfo(p) => ood(&[], &ood_args("data-info", &[], &p.args, None)),
        Task::Presets(p) => ood(&[], &ood_args("presets", &[], &p.args, None)),
        Task::Serve(p) => ood(&[], &ood_args("serve", &[], &p.args, None)),
        Task::FetchData(p) => {
            let data_dir = Some(("--data-dir", "assets/data"));
            ood(&["hub"], &ood_args("fetch-data", &[], &p.args, data_dir))
        }
        Task::Calibrate(p) => ood(&[], &ood_args("calibrate", &ckpt, &p.args, None)),
        Task::Evaluate(p) => ood(&[], &ood_args("evaluate", &ckpt, &p.args, out(report))),
        Task::BenchOod(p) => {
            let bench_dir = out("runs/default/bench-ood");
            ood(&[], &ood_args("bench-ood", &ckpt, &p.args, bench_dir))
        }
        Task::ReleaseModel(a) => release::run(&a),
        Task::Loadtest(a) => loadtest::run(&a),
        Task::Ablate(a) => studies::ablate(&a),
        Task::Sweep(a) => studies::sweep(&a),
        Task::Seeds(a) => studies::seeds(&a),
        Task::Osr(a) => osr::run(&a),
        Task::Demo(p) => {
            ood(&[], &ood_args("train", &[], &p.args, out(run_dir)))?;
            ood(&[], &ood_args("calibrate", &ckpt, &[], None))?;
            ood(&[], &ood_args("evaluate", &ckpt, &[], out(report)))
        }
        Task::Inspect { checkpoint } => ood(&[], &ood_args("inspect", &[checkpoint], &[], None)),
        Task::Ci => {
            let status = Command::new("bash")
                .arg(".ci/run")
                .current_dir(workspace_root())
                .status()?;
            if !status.success() {
                bail!(".ci/run failed ({status})");
            }
            Ok(())
        }
    }
}

/// Owned arguments from literals, for the tests of every module.
#[cfg(test)]
pub(crate) fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// The task `cargo xtask ARGS` runs, as `main` parses it.
#[cfg(test)]
fn parse(a: &[&str]) -> Result<Task, clap::Error> {
    let mut argv = args(&["xtask"]);
    argv.extend(args(a));
    Ok(Cli::try_parse_from(own_options_first(argv))?
        .task
        .expect("a task"))
}

#[cfg(test)]
mod tests {
    use super::{args, bench_args, device_feature, parse, Cli, Task};
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn pass_on_tasks_hand_every_argument_to_ood() {
        let Ok(Task::Train(p)) = parse(&["train", "--epochs", "2", "--out", "x", "--help"]) else {
            panic!("not train");
        };
        assert_eq!(p.args, args(&["--epochs", "2", "--out", "x", "--help"]));
        // `--` first: the rest is `ood`'s, its help included.
        let Ok(Task::Calibrate(p)) = parse(&["calibrate", "--", "--help"]) else {
            panic!("not calibrate");
        };
        assert_eq!(p.args, args(&["--help"]));
        let Ok(Task::Bench(p)) = parse(&["bench", "-q", "--device=cuda"]) else {
            panic!("not bench");
        };
        assert_eq!(p.args, args(&["-q", "--device=cuda"]));
    }

    #[test]
    fn a_tasks_own_options_are_read_anywhere() {
        let Ok(Task::ReleaseModel(r)) = parse(&[
            "release-model",
            "--score",
            "energy-led",
            "--from",
            "runs/x",
            "--recipe",
            "quick",
        ]) else {
            panic!("not release-model");
        };
        assert_eq!(r.from, std::path::PathBuf::from("runs/x"));
        assert_eq!(r.recipe, "quick");
        assert_eq!(r.calibrate.args, args(&["--score", "energy-led"]));
        // After `--`, nothing is the task's own.
        let Ok(Task::ReleaseModel(r)) = parse(&["release-model", "--", "--from", "x"]) else {
            panic!("not release-model");
        };
        assert_eq!(r.from, std::path::PathBuf::from("runs/quality"));
        assert_eq!(r.recipe, "quality");
        assert_eq!(r.calibrate.args, args(&["--from", "x"]));
    }

    #[test]
    fn errors_name_what_is_wrong() {
        for (argv, says) in [
            (&["bogus"][..], "unrecognized subcommand 'bogus'"),
            (&["inspect", "a", "b"], "unexpected argument 'b'"),
            (
                &["ablate", "--variants", "k9"],
                "invalid value 'k9' for '--variants",
            ),
            (
                &["seeds", "--seeds", "1,x"],
                "invalid value 'x' for '--seeds",
            ),
            (
                &["sweep", "--epochs", "two"],
                "invalid value 'two' for '--epochs",
            ),
            (
                &["release-model", "--from"],
                "a value is required for '--from",
            ),
        ] {
            let e = parse(argv).expect_err(&format!("{argv:?} parsed"));
            assert!(e.to_string().contains(says), "{argv:?}: {e}");
        }
    }

    #[test]
    fn bench_runs_three_rounds_unless_told_otherwise() {
        assert_eq!(bench_args(&[]), args(&["bench", "--rounds", "3"]));
        assert_eq!(
            bench_args(&args(&["--widths", "64"])),
            args(&["bench", "--widths", "64", "--rounds", "3"])
        );
        for given in [
            &["--rounds", "5"][..],
            &["--rounds=1"],
            &["--quick"],
            &["--no-torch"],
        ] {
            let mut want = args(&["bench"]);
            want.extend(args(given));
            assert_eq!(bench_args(&args(given)), want, "{given:?}");
        }
    }

    #[test]
    fn a_device_argument_selects_its_feature() {
        assert_eq!(
            device_feature(&args(&["bench", "--device", "cuda"])),
            Some("cuda")
        );
        assert_eq!(device_feature(&args(&["--device=cuda:1"])), Some("cuda"));
        assert_eq!(
            device_feature(&args(&["--device", "metal:0"])),
            Some("metal")
        );
        assert_eq!(device_feature(&args(&["--device", "cpu"])), None);
        assert_eq!(device_feature(&args(&["--device", "cudax"])), None);
        assert_eq!(device_feature(&args(&["bench", "--quick"])), None);
        assert_eq!(device_feature(&args(&["--device"])), None);
    }
}
