//! The PyTorch anchor: torch_ref.py on the CPU, torch_anchor.py on a GPU, run with the same
//! settings, and their figures set beside ours.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::plan::Plan;
use crate::workloads::ModelRow;
use crate::{BenchArgs, BenchError, Result};

/// A PyTorch measurement: a `RESULT framework=torch kind=train|infer ...` line of torch_ref.py
/// or a `RESULT torch-cuda PRESET train|infer batch N tf32=False X img/s` line of torch_anchor.py.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TorchResult {
    /// The row's model name: `ref-wW` for torch_ref.py, the preset for torch_anchor.py.
    pub(crate) model: String,
    pub(crate) kind: String,
    pub(crate) batch: usize,
    pub(crate) images_per_s: f64,
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
pub(crate) fn attach_torch(rows: &mut [ModelRow], torch: &[TorchResult]) {
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

/// torch_ref.py on the CPU: (torch version, results).
pub(crate) fn run_torch(args: &BenchArgs, plan: &Plan) -> Result<(String, Vec<TorchResult>)> {
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
pub(crate) fn run_anchor(args: &BenchArgs, plan: &Plan) -> Result<(String, Vec<TorchResult>)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::model_table;
    use crate::workloads::row;

    const TORCH_OUTPUT: &str = "\
# torch 2.5.1+cpu mkldnn=True capability=AVX512
# W=16: forward MACs/img trunk=22.94M cls=0.0006M dec=0.56M total=23.50M (hook count 23.50M) -> fwd 47.0 MFLOP/img, params=0.216M
RESULT framework=torch kind=matmul n=2048 threads=2 median_s=0.2000 GFLOPs=85.9  (torch.mm -> MKL sgemm)
RESULT framework=torch kind=train width=16 batch=128 median_step_s=0.0983 min_step_s=0.0950 images_per_s=1302.0 fwd_MFLOP_per_img=47.00 achieved_GFLOPs=183.58 epoch_49077_s=37.7
RESULT framework=torch kind=infer width=16 batch=512 median_step_s=0.1196 min_step_s=0.1100 images_per_s=4280.0 fwd_MFLOP_per_img=47.00 achieved_GFLOPs=201.16 epoch_49077_s=11.5
RESULT framework=torch kind=train width=64 batch=128 median_step_s=0.8889 min_step_s=0.8800 images_per_s=144.0 fwd_MFLOP_per_img=746.80 achieved_GFLOPs=322.62 epoch_49077_s=340.8
not a result line images_per_s=5
";

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
}
