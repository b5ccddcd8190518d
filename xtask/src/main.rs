//! Project workflows: `cargo xtask <task>`. Each task runs the `ood` binary in a release
//! build (candle is about ten times slower unoptimised) with the project's defaults.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

mod digits;
mod loadtest;
mod release;
mod studies;

const USAGE: &str = "usage: cargo xtask <task> [args...]

tasks:
  train [ARGS]      train the default model into runs/default (ARGS go to `ood train`)
  data-info [ARGS]  print counts and split sizes of the data (`ood data-info`)
  fetch-data        download MNIST from the Hugging Face hub into assets/data/mnist
  presets           list the model presets
  calibrate [ARGS]  calibrate the default run's checkpoint (runs/default/calibration.json)
  evaluate [ARGS]   evaluate it on the test set into runs/default/report
  bench-ood [ARGS]  every OOD detector on near/far/synthetic OOD sets (runs/default/bench-ood)
  ablate [ARGS]     the ablations (k, std loss, decoder, and the classifier levers) into
                    runs/ablate (ARGS go to every `ood train`, e.g. --epochs 2 --seed 1;
                    --root DIR moves the study; --variants k0,k1 runs only those: k0 k1 k5
                    std-off std-literal no-decoder augment ensemble epochs8 ema
                    outlier-exposure)
  sweep [ARGS]      ten models, each with one digit unknown, into runs/sweep (resumable)
  seeds [ARGS]      the default settings with --seeds 0,1,2 (default) into runs/seeds: the
                    headline numbers per seed with mean and spread (resumable)
  demo              train, calibrate and evaluate the default model, end to end
  inspect [CKPT]    describe a checkpoint (default runs/default/checkpoint.safetensors)
  bench [ARGS]      measure training and inference throughput (`ood bench`, three rounds
                    alternating with PyTorch unless --rounds, --quick or --no-torch is given;
                    --quick: about a minute; --device cuda: the presets on a GPU, beside PyTorch)
  release-model [--from RUN_DIR] [ARGS]
                    the shipped model in assets/models/default: RUN_DIR's checkpoint (default
                    runs/default, trained first if missing) without optimizer state,
                    recalibrated (ARGS go to `ood calibrate`), with provenance.json
  serve [ARGS]      serve the shipped model and the drawing page (`ood serve`)
  loadtest [--clients N] [--seconds S] [-- SERVE ARGS]
                    a release `ood serve` under N clients for S seconds (default 32, 10), then
                    malformed requests; fails if one gets no 4xx or the server dies
  ci                run what CI runs (.ci/run)

Data: --data-dir DIR, or OOD_DATA_DIR, else assets/data.";

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

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((task, rest)) = args.split_first() else {
        println!("{USAGE}");
        return Ok(());
    };
    let default_checkpoint = "runs/default/checkpoint.safetensors".to_string();
    match task.as_str() {
        "train" => {
            let mut a = vec!["train".to_string()];
            a.extend(with_default(rest, "--out", "runs/default"));
            ood(&[], &a)
        }
        "bench" => ood(&[], &bench_args(rest)),
        "data-info" | "presets" | "serve" => {
            let mut a = vec![task.clone()];
            a.extend(rest.iter().cloned());
            ood(&[], &a)
        }
        "fetch-data" => {
            let mut a = vec!["fetch-data".to_string()];
            a.extend(with_default(rest, "--data-dir", "assets/data"));
            ood(&["hub"], &a)
        }
        "calibrate" => {
            let mut a = vec!["calibrate".to_string(), default_checkpoint];
            a.extend(rest.iter().cloned());
            ood(&[], &a)
        }
        "evaluate" => {
            let mut a = vec!["evaluate".to_string(), default_checkpoint];
            a.extend(with_default(rest, "--out", "runs/default/report"));
            ood(&[], &a)
        }
        "bench-ood" => {
            let mut a = vec!["bench-ood".to_string(), default_checkpoint];
            a.extend(with_default(rest, "--out", "runs/default/bench-ood"));
            ood(&[], &a)
        }
        "release-model" => release::run(rest),
        "loadtest" => loadtest::run(rest),
        "ablate" => studies::ablate(rest),
        "sweep" => studies::sweep(rest),
        "seeds" => studies::seeds(rest),
        "demo" => {
            let mut a = vec!["train".to_string()];
            a.extend(with_default(rest, "--out", "runs/default"));
            ood(&[], &a)?;
            ood(&[], &["calibrate".to_string(), default_checkpoint.clone()])?;
            ood(
                &[],
                &[
                    "evaluate".into(),
                    default_checkpoint,
                    "--out".into(),
                    "runs/default/report".into(),
                ],
            )
        }
        "inspect" => {
            let ckpt = rest.first().cloned().unwrap_or(default_checkpoint);
            ood(&[], &["inspect".to_string(), ckpt])
        }
        "ci" => {
            let status = Command::new("bash")
                .arg(".ci/run")
                .current_dir(workspace_root())
                .status()?;
            if !status.success() {
                bail!(".ci/run failed ({status})");
            }
            Ok(())
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task {other:?}\n\n{USAGE}"),
    }
}

/// Owned arguments from literals, for the tests of every module.
#[cfg(test)]
pub(crate) fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::{args, bench_args, device_feature};

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
