//! Multi-model studies: the ablations, the leave-one-digit-out sweep and the seed repeats of
//! the default settings. Each model lives in
//! its own run folder; finished stages are detected from their files and not redone, so an
//! interrupted study resumes where it stopped.

use crate::{ood, PassOn};
use anyhow::{Context, Result};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What every study takes: its folder, the data, and what goes to every `ood train`.
#[derive(clap::Args, Debug)]
#[command(mut_arg("args", |a| a.help("Passed on to every `ood train` (e.g. --seed 1 --limit 5000)")))]
pub struct StudyArgs {
    /// The study's folder (default runs/ablate, runs/sweep or runs/seeds)
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// The data root, for every `ood` command of the study
    #[arg(long, value_name = "DIR")]
    data_dir: Option<String>,
    /// Epochs of every model (to `ood train`)
    #[arg(long, value_name = "N")]
    epochs: Option<u32>,
    #[command(flatten)]
    train_args: PassOn,
}

/// The `--calibrate` option that `osr` and `sweep` share (its help says what it does); the
/// folder it writes is [`rule_folder`]'s.
#[derive(clap::Args, Debug, Default)]
pub struct SecondRule {
    /// Tabulate another rule: every model calibrated again with these `ood calibrate` flags
    /// (one string, e.g. "--score energy-led"), into `rule-<flags>/` beside its default
    /// calibration, the table into `<study>-rule-<flags>.md`. The models are reused.
    #[arg(long, value_name = "FLAGS", allow_hyphen_values = true)]
    calibrate: Option<String>,
}

impl SecondRule {
    /// The flags' words, when a second rule is asked for.
    pub(crate) fn flags(&self) -> Option<Vec<String>> {
        self.calibrate
            .as_ref()
            .map(|f| f.split_whitespace().map(String::from).collect())
    }

    /// The option as the study's table quotes it in its command line.
    pub(crate) fn command_words(&self) -> Vec<String> {
        self.calibrate
            .iter()
            .flat_map(|f| ["--calibrate".to_string(), format!("\"{f}\"")])
            .collect()
    }

    /// The table's file stem: `study`, or `study-rule-<flags>` for a second rule.
    pub(crate) fn stem(&self, study: &str) -> String {
        match self.flags() {
            Some(f) => format!("{study}-{}", rule_folder(&f)),
            None => study.to_string(),
        }
    }

    /// The model in `dir` under this rule: its metrics.json, calibrated again with the flags
    /// ([`run_rule`]) when a second rule is asked for, else `default` (the model's own).
    pub(crate) fn metrics(&self, dir: &Path, default: Value, study: &Study) -> Result<Value> {
        match self.flags() {
            Some(f) => run_rule(dir, &f, study),
            None => Ok(default),
        }
    }
}

/// `cargo xtask sweep`'s arguments.
#[derive(clap::Args, Debug)]
pub struct SweepArgs {
    #[command(flatten)]
    rule: SecondRule,
    #[command(flatten)]
    study: StudyArgs,
}

/// `cargo xtask ablate`'s arguments.
#[derive(clap::Args, Debug)]
pub struct AblateArgs {
    /// Run only these variants (comma-separated; all when absent)
    #[arg(long, value_name = "NAMES", value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(VARIANT_NAMES))]
    variants: Vec<String>,
    #[command(flatten)]
    study: StudyArgs,
}

/// `cargo xtask seeds`' arguments.
#[derive(clap::Args, Debug)]
pub struct SeedsArgs {
    /// The seeds, one model each (comma-separated)
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "0,1,2"
    )]
    seeds: Vec<u64>,
    #[command(flatten)]
    study: StudyArgs,
}

/// A study's settings as its models use them.
pub(crate) struct Study {
    /// `ood train` flags shared by every model (`--epochs 2`, `--limit 5000`, ...).
    train_flags: Vec<String>,
    /// `--data-dir DIR`, for every `ood` command.
    data_flags: Vec<String>,
    pub(crate) root: PathBuf,
}

impl StudyArgs {
    pub(crate) fn study(&self, default_root: &str) -> Study {
        let mut train_flags = Vec::new();
        if let Some(n) = self.epochs {
            train_flags.extend(["--epochs".to_string(), n.to_string()]);
        }
        train_flags.extend(self.train_args.args.iter().cloned());
        Study {
            train_flags,
            data_flags: self
                .data_dir
                .iter()
                .flat_map(|d| ["--data-dir".to_string(), d.clone()])
                .collect(),
            root: self.root.clone().unwrap_or_else(|| default_root.into()),
        }
    }

    /// The arguments as a command line, for the study's table (the study's own options first).
    pub(crate) fn command_line(&self, own: &[String]) -> String {
        let mut a = own.to_vec();
        if let Some(root) = &self.root {
            a.extend(["--root".to_string(), root.display().to_string()]);
        }
        let study = self.study("");
        a.extend(study.data_flags);
        a.extend(study.train_flags);
        a.join(" ")
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Whether the run folder holds a checkpoint that finished all its epochs.
fn trained(dir: &Path) -> bool {
    let ck = dir.join("checkpoint.safetensors");
    let Ok(bytes) = std::fs::read(&ck) else {
        return false;
    };
    // The safetensors header is JSON after an 8-byte length; the metadata holds epoch/epochs.
    let Some(len) = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    else {
        return false;
    };
    let Some(header) = bytes.get(8..8 + len) else {
        return false;
    };
    let Ok(h) = serde_json::from_slice::<Value>(header) else {
        return false;
    };
    let Some(meta) = h["__metadata__"]["candle-ood"]
        .as_str()
        .and_then(|m| serde_json::from_str::<Value>(m).ok())
    else {
        return false;
    };
    meta["epoch"].as_u64().is_some()
        && meta["epoch"] == meta["training"]["epochs"]
        && meta["batch_in_epoch"] == 0
}

/// The member count of `--ensemble N` among training flags.
fn ensemble_size(flags: &[String]) -> Result<Option<usize>> {
    let Some(i) = flags.iter().position(|a| a == "--ensemble") else {
        return Ok(None);
    };
    let n = flags.get(i + 1).context("--ensemble needs a value")?;
    Ok(Some(n.parse().with_context(|| format!("--ensemble {n}"))?))
}

/// `base` followed by `overrides`, without the `--flag value` pairs of `base` whose flag
/// `overrides` sets again: a variant's `--epochs 8` wins over the study's `--epochs 2`
/// (`ood train` would refuse the flag twice).
fn override_flags(base: &[String], overrides: &[String]) -> Vec<String> {
    let set_again = |flag: &str| overrides.iter().any(|o| o == flag);
    let mut out = Vec::with_capacity(base.len() + overrides.len());
    let mut i = 0;
    while i < base.len() {
        let flag = &base[i];
        let takes_value = base.get(i + 1).is_some_and(|v| !v.starts_with("--"));
        if flag.starts_with("--") && set_again(flag) {
            i += if takes_value { 2 } else { 1 };
            continue;
        }
        out.push(flag.clone());
        i += 1;
    }
    out.extend(overrides.iter().cloned());
    out
}

/// Trains (or resumes), calibrates and evaluates one model (a checkpoint, or with
/// `--ensemble N` among the flags an ensemble folder); returns evaluate's metrics.json.
pub(crate) fn run_model(
    dir: &Path,
    extra_train: &[String],
    study: &Study,
    bench: bool,
) -> Result<Value> {
    let d = dir.display().to_string();
    let flags = override_flags(&study.train_flags, extra_train);
    let ensemble = ensemble_size(&flags)?;
    let ckpt = match ensemble {
        Some(_) => d.clone(),
        None => format!("{d}/checkpoint.safetensors"),
    };
    let started = Instant::now();
    let mut ran = false;
    let finished = match ensemble {
        // `ood train --ensemble` resumes unfinished members itself.
        Some(n) => (0..n).all(|i| trained(&dir.join(format!("member-{i}")))),
        None => trained(dir),
    };
    if !finished {
        ran = true;
        let mut a = vec!["train".to_string(), "--out".into(), d.clone()];
        if ensemble.is_none() && dir.join("checkpoint.safetensors").exists() {
            a.push("--resume".into());
        }
        a.extend(flags.iter().cloned());
        a.extend(study.data_flags.iter().cloned());
        ood(&[], &a)?;
    }
    if !dir.join("report/metrics.json").exists() {
        ran = true;
        calibrate_and_evaluate(&ckpt, &[], None, &dir.join("report"), study)?;
    }
    if bench && !dir.join("bench/bench-ood.json").exists() {
        ran = true;
        let mut a = vec![
            "bench-ood".to_string(),
            ckpt,
            "--out".into(),
            format!("{d}/bench"),
            "--fit-limit".into(),
            "10000".into(),
        ];
        a.extend(study.data_flags.iter().cloned());
        ood(&[], &a)?;
    }
    if ran {
        add_wall_time(dir, started.elapsed().as_secs_f64())?;
    }
    read_json(&dir.join("report/metrics.json"))
}

/// `ood calibrate CKPT FLAGS [--out CALIBRATION]`, then `ood evaluate` into `report` with
/// that calibration (the default one beside the checkpoint when `calibration` is `None`).
fn calibrate_and_evaluate(
    ckpt: &str,
    flags: &[String],
    calibration: Option<&Path>,
    report: &Path,
    study: &Study,
) -> Result<()> {
    let mut a = vec!["calibrate".to_string(), ckpt.to_string()];
    a.extend(flags.iter().cloned());
    let mut e = vec!["evaluate".to_string(), ckpt.to_string()];
    if let Some(c) = calibration {
        let c = c.display().to_string();
        a.extend(["--out".to_string(), c.clone()]);
        e.extend(["--calibration".to_string(), c]);
    }
    a.extend(study.data_flags.iter().cloned());
    ood(&[], &a)?;
    e.extend(["--out".to_string(), report.display().to_string()]);
    e.extend(study.data_flags.iter().cloned());
    ood(&[], &e)
}

/// The folder of a trained model's second rule, calibrated with `flags`: `rule-<flags>`, the
/// flags' words joined by dashes (`--score energy-led` -> `rule-score-energy-led`).
pub(crate) fn rule_folder(flags: &[String]) -> String {
    let words: Vec<String> = flags
        .iter()
        .map(|w| {
            w.trim_start_matches('-')
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect()
        })
        .collect();
    format!("rule-{}", words.join("-"))
}

/// A model of [`run_model`] calibrated again with the `ood calibrate` flags `flags`, into
/// [`rule_folder`] beside it, and evaluated under that rule (resumable: an evaluated rule is
/// read back); returns that evaluation's metrics.json.
pub(crate) fn run_rule(dir: &Path, flags: &[String], study: &Study) -> Result<Value> {
    let sub = dir.join(rule_folder(flags));
    let report = sub.join("report");
    if !report.join("metrics.json").exists() {
        let started = Instant::now();
        let ckpt = dir.join("checkpoint.safetensors").display().to_string();
        calibrate_and_evaluate(
            &ckpt,
            flags,
            Some(&sub.join("calibration.json")),
            &report,
            study,
        )?;
        add_wall_time(dir, started.elapsed().as_secs_f64())?;
    }
    read_json(&report.join("metrics.json"))
}

/// The file in a run folder that sums the seconds every study invocation spent on the model, so
/// a resumed study still reports the whole wall time of its models.
const WALL_TIME_FILE: &str = "study-wall-seconds.txt";

fn add_wall_time(dir: &Path, seconds: f64) -> Result<()> {
    let total = model_wall_time(dir).unwrap_or(0.0) + seconds;
    write(&dir.join(WALL_TIME_FILE), &format!("{total:.1}\n"))
}

/// The seconds recorded for a model; `None` for one trained before the file existed.
fn model_wall_time(dir: &Path) -> Option<f64> {
    std::fs::read_to_string(dir.join(WALL_TIME_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The closing line of a study table: the summed wall time of its models and of this call.
pub(crate) fn wall_time_line(dirs: &[PathBuf], started: Instant) -> String {
    let recorded: Vec<f64> = dirs.iter().filter_map(|d| model_wall_time(d)).collect();
    let this_call = started.elapsed().as_secs_f64() / 60.0;
    if recorded.len() == dirs.len() {
        let total: f64 = recorded.iter().sum::<f64>() / 60.0;
        format!(
            "\nWall time: {total:.1} min over all models, summed across resumed calls (this call: {this_call:.1} min)."
        )
    } else {
        format!("\nWall time of this call: {this_call:.1} min (models already trained are not retrained).")
    }
}

/// The AUROC of the default score (`MinP[...]`) in one OOD set's metrics of metrics.json.
pub(crate) fn default_score_auroc(set: Option<&Value>) -> Value {
    set.and_then(|s| s["scores"].as_array())
        .and_then(|scores| {
            scores
                .iter()
                .find(|p| p[0].as_str().unwrap_or_default().starts_with("MinP["))
        })
        .map(|p| p[1]["auroc"].clone())
        .unwrap_or(Value::Null)
}

/// The drawn-digit set's refusals, every pen together, in an evaluation of metrics.json (null
/// for an evaluation from before the set).
pub(crate) fn drawn_refused(evaluation: &Value) -> Value {
    evaluation["drawn"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["pen"] == "all"))
        .map_or(Value::Null, |r| r["refused"].clone())
}

pub(crate) fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or("-".into(), |x| format!("{:.2}%", 100.0 * x))
}

pub(crate) fn num(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.4}"))
}

/// Writes a study's table (`STEM.md`) and rows (`STEM.json`) into its folder and prints the
/// table.
pub(crate) fn finish_study(root: &Path, stem: &str, md: &str, rows: &[Value]) -> Result<()> {
    write(&root.join(format!("{stem}.md")), md)?;
    write(
        &root.join(format!("{stem}.json")),
        &serde_json::to_string_pretty(rows)?,
    )?;
    println!("{md}");
    Ok(())
}

pub(crate) fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::create_dir_all(path.parent().unwrap())?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The ablation's variants: name, description, the `ood train` flags that make it.
const VARIANTS: [(&str, &str, &[&str]); 18] = [
    ("k0", "k = 0 (cross-entropy only, std on)", &["--k", "0"]),
    (
        "k1",
        "k = 1, std intended (the default, with the pen styles)",
        &[],
    ),
    ("k5", "k = 5", &["--k", "5"]),
    ("std-off", "std loss off", &["--lambda-std", "0"]),
    (
        "std-literal",
        "std loss with the printed sign (-std)",
        &["--std-sign", "literal"],
    ),
    (
        "no-decoder",
        "decoder off (max softmax only)",
        &["--no-decoder"],
    ),
    (
        "augment",
        "augmentation (rotation, scale, shift)",
        &["--augment"],
    ),
    (
        "ensemble",
        "ensemble of 3 (seeds s, s+1, s+2)",
        &["--ensemble", "3"],
    ),
    (
        "distilled",
        "one network distilled from the ensemble variant (weight 1, temperature 4)",
        &["--distill-from", ENSEMBLE_TEACHER],
    ),
    (
        "epochs8",
        "twice the epochs (8; the schedule's cosine stretched to them)",
        &["--epochs", "8"],
    ),
    (
        "ema",
        "moving average of the weights (decay 0.999)",
        &["--ema", "0.999"],
    ),
    (
        "outlier-exposure",
        "outlier exposure (scribbles, energy margin)",
        &["--outlier-exposure"],
    ),
    (
        "mnist-pen",
        "MNIST's pen alone (no pen styles: the quick recipe before they joined it)",
        &["--no-pen-styles"],
    ),
    (
        "pen-elastic",
        "pen styles: elastic distortion alone",
        &["--pen-styles", "elastic"],
    ),
    (
        "pen-canvas",
        "pen styles: the page's redraw alone",
        &["--pen-styles", "canvas"],
    ),
    (
        "pen-binarize",
        "pen styles: binarised (and blurred) alone",
        &["--pen-styles", "binarize"],
    ),
    (
        "pen-width",
        "pen styles: thicker and thinner strokes alone",
        &["--pen-styles", "width"],
    ),
    (
        "quality",
        "the quality recipe (16 epochs, augmentation, pen styles, weight average)",
        &["--recipe", "quality"],
    ),
];

/// Stands for the `ensemble` variant's folder among a variant's flags: the teacher of
/// `distilled`, trained first when it is not there.
const ENSEMBLE_TEACHER: &str = "<ensemble variant>";

/// The variants' names, for `--variants`.
const VARIANT_NAMES: [&str; VARIANTS.len()] = {
    let mut names = [""; VARIANTS.len()];
    let mut i = 0;
    while i < VARIANTS.len() {
        names[i] = VARIANTS[i].0;
        i += 1;
    }
    names
};

/// The ablations: k in {0, 1, 5}, the std loss off / intended / literal, the decoder off, and
/// the classifier levers (augmentation, ensemble, weight average, outlier exposure). The rates
/// are those of the calibrated rule (the default: 99% of held-out digits accepted).
pub fn ablate(args: &AblateArgs) -> Result<()> {
    let study = args.study.study("runs/ablate");
    let own = if args.variants.is_empty() {
        Vec::new()
    } else {
        vec!["--variants".to_string(), args.variants.join(",")]
    };
    let started = Instant::now();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Command: `cargo xtask ablate {}`\n",
        args.study.command_line(&own)
    );
    let _ = writeln!(md, "| variant | zeros caught | valid accepted and right | Fashion-MNIST caught | drawn digits refused | closed-set accuracy | AUROC max softmax (zeros) | AUROC max softmax (Fashion) | AUROC default score (zeros) | AUROC default score (Fashion) | histograms |\n|---|---|---|---|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    let mut dirs = Vec::new();
    for (name, what, flags) in VARIANTS {
        if !args.variants.is_empty() && !args.variants.iter().any(|v| v == name) {
            continue;
        }
        let dir = study.root.join(name);
        dirs.push(dir.clone());
        let mut flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        if let Some(teacher) = flags.iter_mut().find(|f| *f == ENSEMBLE_TEACHER) {
            let (_, _, ensemble) = VARIANTS.iter().find(|v| v.0 == "ensemble").unwrap();
            let ensemble_dir = study.root.join("ensemble");
            let ensemble: Vec<String> = ensemble.iter().map(|s| s.to_string()).collect();
            run_model(&ensemble_dir, &ensemble, &study, false)?;
            *teacher = ensemble_dir.display().to_string();
        }
        let m = run_model(&dir, &flags, &study, false)?;
        let e = &m["evaluation"];
        let fashion = e["far"].as_array().and_then(|f| f.first());
        let fashion_msp = fashion.map_or(Value::Null, |f| f["msp"]["auroc"].clone());
        let _ = writeln!(
            md,
            "| {what} | {} | {} | {} | {} | {} | {} | {} | {} | {} | [{name}]({name}/report/msp_hist.png) |",
            pct(&e["unknown_detection"]),
            pct(&e["known_accuracy"]),
            pct(&fashion.map_or(Value::Null, |f| f["flagged"].clone())),
            pct(&drawn_refused(e)),
            pct(&e["closed_set_accuracy"]),
            num(&e["near"]["msp"]["auroc"]),
            num(&fashion_msp),
            num(&default_score_auroc(Some(&e["near"]))),
            num(&default_score_auroc(fashion)),
        );
        rows.push(serde_json::json!({"variant": name, "description": what, "evaluation": e}));
    }
    let _ = writeln!(md, "{}", wall_time_line(&dirs, started));
    finish_study(&study.root, "ablation", &md, &rows)
}

/// Ten models, each trained with one digit unknown; AUROC per held-out digit.
pub fn sweep(args: &SweepArgs) -> Result<()> {
    let study = args.study.study("runs/sweep");
    let started = Instant::now();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Command: `cargo xtask sweep {}`\n",
        args.study.command_line(&args.rule.command_words())
    );
    let _ = writeln!(md, "| unknown digit | closed-set accuracy | AUROC MSP | AUROC Energy | AUROC Fused | AUROC default score | best detector | its AUROC | unknown flagged (rule) | known accepted and correct (rule) |\n|---|---|---|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    let mut dirs = Vec::new();
    // Per column, the values of every digit, for the mean row.
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); 8];
    for digit in 0..=9u8 {
        let dir = study.root.join(format!("digit{digit}"));
        dirs.push(dir.clone());
        let known: Vec<String> = (0..=9u8)
            .filter(|&d| d != digit)
            .map(|d| d.to_string())
            .collect();
        let flags = vec![
            "--known".to_string(),
            known.join(","),
            "--unknown".into(),
            digit.to_string(),
        ];
        let m = run_model(&dir, &flags, &study, true)?;
        // The benchmark's columns do not depend on the calibration; the rule's columns do.
        let m = args.rule.metrics(&dir, m, &study)?;
        let b = read_json(&dir.join("bench/bench-ood.json"))?;
        let near = b["ood_sets"][0][0].as_str().unwrap_or_default().to_string();
        let near_rows: Vec<&Value> = b["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["ood_set"] == near.as_str())
            .collect();
        // Detector names carry their parameters: "Energy(T=1)", "Fused(MSP+...)".
        let auroc_of = |prefix: &str| {
            near_rows
                .iter()
                .find(|r| {
                    let name = r["detector"].as_str().unwrap_or_default();
                    name == prefix || name.starts_with(&format!("{prefix}("))
                })
                .map(|r| r["auroc"].clone())
                .unwrap_or(Value::Null)
        };
        let (msp, energy, fused) = (auroc_of("MSP"), auroc_of("Energy"), auroc_of("Fused"));
        // The default score as the calibration made it (KNN's bank, the reference), from the
        // evaluation report like the other studies' tables: the benchmark refits its own.
        let e = &m["evaluation"];
        let default_score = default_score_auroc(Some(&e["near"]));
        // The combined rule's score is binary, so its AUROC is not comparable.
        let best = near_rows
            .iter()
            .filter(|r| r["detector"] != "Combined")
            .max_by(|a, b| {
                a["auroc"]
                    .as_f64()
                    .unwrap_or(0.0)
                    .total_cmp(&b["auroc"].as_f64().unwrap_or(0.0))
            });
        let (best_name, best_auroc) = best.map_or(("-".to_string(), Value::Null), |r| {
            let name = r["detector"].as_str().unwrap_or("-");
            // The fused score's name lists its inputs; the Fused column says which it is.
            let name = if name.starts_with("Fused(") {
                "Fused"
            } else {
                name
            };
            (name.to_string(), r["auroc"].clone())
        });
        let values = [
            &b["closed_set_accuracy"],
            &msp,
            &energy,
            &fused,
            &default_score,
            &best_auroc,
            &e["unknown_detection"],
            &e["known_accuracy"],
        ];
        for (column, v) in columns.iter_mut().zip(values) {
            column.extend(v.as_f64());
        }
        let _ = writeln!(
            md,
            "| {digit} | {} | {} | {} | {} | {} | {best_name} | {} | {} | {} |",
            pct(values[0]),
            num(&msp),
            num(&energy),
            num(&fused),
            num(&default_score),
            num(&best_auroc),
            pct(values[6]),
            pct(values[7])
        );
        rows.push(serde_json::json!({"unknown": digit, "closed_set_accuracy": b["closed_set_accuracy"], "auroc_msp": msp, "auroc_energy": energy, "auroc_fused": fused, "auroc_default": default_score, "best_detector": best_name, "best_auroc": best_auroc, "evaluation": e}));
    }
    let mean: Vec<Value> = columns
        .iter()
        .map(|c| (c.len() == 10).then(|| c.iter().sum::<f64>() / 10.0).into())
        .collect();
    let _ = writeln!(
        md,
        "| **mean** | {} | {} | {} | {} | {} | | {} | {} | {} |",
        pct(&mean[0]),
        num(&mean[1]),
        num(&mean[2]),
        num(&mean[3]),
        num(&mean[4]),
        num(&mean[5]),
        pct(&mean[6]),
        pct(&mean[7])
    );
    let _ = writeln!(md, "{}", wall_time_line(&dirs, started));
    finish_study(&study.root, &args.rule.stem("sweep"), &md, &rows)
}

/// The default settings trained with several seeds (`--seeds 0,1,2`): the headline numbers of
/// the rule in force and the default score's AUROCs per seed, with their mean and spread.
pub fn seeds(args: &SeedsArgs) -> Result<()> {
    let seeds = &args.seeds;
    let study = args.study.study("runs/seeds");
    let started = Instant::now();
    let mut md = String::new();
    let own: Vec<String> = seeds.iter().map(u64::to_string).collect();
    let own = ["--seeds".to_string(), own.join(",")];
    let _ = writeln!(
        md,
        "Command: `cargo xtask seeds {}`\n",
        args.study.command_line(&own)
    );
    // The first PERCENT_COLUMNS are rates, the rest AUROCs.
    const PERCENT_COLUMNS: usize = 5;
    let headers = [
        "valid accepted and right",
        "zeros caught",
        "Fashion-MNIST caught",
        "drawn digits refused",
        "closed-set accuracy",
        "AUROC default score (zeros)",
        "AUROC default score (Fashion)",
    ];
    let _ = writeln!(
        md,
        "| seed | {} |\n|---|{}",
        headers.join(" | "),
        "---|".repeat(headers.len())
    );
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); headers.len()];
    let mut rows = Vec::new();
    let mut dirs = Vec::new();
    for seed in seeds {
        let dir = study.root.join(format!("seed{seed}"));
        dirs.push(dir.clone());
        let m = run_model(
            &dir,
            &["--seed".to_string(), seed.to_string()],
            &study,
            false,
        )?;
        let e = &m["evaluation"];
        let fashion = e["far"].as_array().and_then(|f| f.first());
        let values = [
            e["known_accuracy"].clone(),
            e["unknown_detection"].clone(),
            fashion.map_or(Value::Null, |f| f["flagged"].clone()),
            drawn_refused(e),
            e["closed_set_accuracy"].clone(),
            default_score_auroc(Some(&e["near"])),
            default_score_auroc(fashion),
        ];
        for (column, v) in columns.iter_mut().zip(&values) {
            column.extend(v.as_f64());
        }
        let cells: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| if i < PERCENT_COLUMNS { pct(v) } else { num(v) })
            .collect();
        let _ = writeln!(md, "| {seed} | {} |", cells.join(" | "));
        rows.push(serde_json::json!({"seed": seed, "evaluation": e}));
    }
    let summary: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if c.len() != seeds.len() {
                return "-".to_string();
            }
            let n = c.len() as f64;
            let mean = c.iter().sum::<f64>() / n;
            let (lo, hi) = c
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| {
                    (l.min(x), h.max(x))
                });
            if i < PERCENT_COLUMNS {
                format!("{:.2}% ({:.2}-{:.2})", 100.0 * mean, 100.0 * lo, 100.0 * hi)
            } else {
                format!("{mean:.4} ({lo:.4}-{hi:.4})")
            }
        })
        .collect();
    let _ = writeln!(md, "| **mean (min-max)** | {} |", summary.join(" | "));
    let _ = writeln!(md, "{}", wall_time_line(&dirs, started));
    finish_study(&study.root, "seeds", &md, &rows)
}

#[cfg(test)]
mod tests {
    use super::{override_flags, rule_folder};
    use crate::{args as strings, parse, Task};
    use std::path::PathBuf;

    #[test]
    fn a_studys_own_flags_are_read_before_and_among_the_training_flags() {
        let Ok(Task::Ablate(a)) = parse(&[
            "ablate",
            "--epochs",
            "2",
            "--seed",
            "3",
            "--augment",
            "--variants",
            "k1,ema",
            "--root=r",
            "--data-dir",
            "d",
        ]) else {
            panic!("not ablate");
        };
        assert_eq!(a.variants, strings(&["k1", "ema"]));
        let study = a.study.study("runs/ablate");
        assert_eq!(study.root, PathBuf::from("r"));
        assert_eq!(study.data_flags, strings(&["--data-dir", "d"]));
        assert_eq!(
            study.train_flags,
            strings(&["--epochs", "2", "--seed", "3", "--augment"])
        );
        assert_eq!(
            a.study.command_line(&strings(&["--variants", "k1,ema"])),
            "--variants k1,ema --root r --data-dir d --epochs 2 --seed 3 --augment"
        );

        let Ok(Task::Sweep(s)) = parse(&["sweep"]) else {
            panic!("not sweep");
        };
        let study = s.study.study("runs/sweep");
        assert_eq!(study.root, PathBuf::from("runs/sweep"));
        assert!(study.train_flags.is_empty() && study.data_flags.is_empty());
        assert_eq!(s.rule.flags(), None);
        assert_eq!(s.rule.stem("sweep"), "sweep");
        assert!(s.rule.command_words().is_empty());
        // A second rule: its flags go to `ood calibrate`, not to `ood train`, wherever given.
        let Ok(Task::Sweep(s)) = parse(&[
            "sweep",
            "--seed",
            "1",
            "--calibrate",
            "--score energy-led --knn-bank 5000",
        ]) else {
            panic!("not sweep");
        };
        assert_eq!(
            s.rule.flags(),
            Some(strings(&["--score", "energy-led", "--knn-bank", "5000"]))
        );
        assert_eq!(s.study.train_args.args, strings(&["--seed", "1"]));
        assert_eq!(
            s.rule.stem("sweep"),
            "sweep-rule-score-energy-led-knn-bank-5000"
        );
        assert_eq!(
            s.study.command_line(&s.rule.command_words()),
            "--calibrate \"--score energy-led --knn-bank 5000\" --seed 1"
        );

        let Ok(Task::Seeds(s)) = parse(&["seeds", "--ema", "0.999"]) else {
            panic!("not seeds");
        };
        assert_eq!(s.seeds, [0, 1, 2]);
        assert_eq!(s.study.train_args.args, strings(&["--ema", "0.999"]));
        let Ok(Task::Seeds(s)) = parse(&["seeds", "--ema", "0.999", "--seeds", "4,5"]) else {
            panic!("not seeds");
        };
        assert_eq!(s.seeds, [4, 5]);
    }

    #[test]
    fn a_second_rule_gets_a_folder_named_by_its_flags() {
        assert_eq!(
            rule_folder(&strings(&["--score", "energy-led"])),
            "rule-score-energy-led"
        );
        assert_eq!(
            rule_folder(&strings(&[
                "--score",
                "energy+mahalanobis",
                "--accept",
                "0.95"
            ])),
            "rule-score-energy-mahalanobis-accept-0.95"
        );
    }

    #[test]
    fn a_variant_flag_replaces_the_study_flag_and_its_value() {
        let base = strings(&["--epochs", "2", "--augment", "--seed", "1"]);
        assert_eq!(
            override_flags(&base, &strings(&["--epochs", "8"])),
            strings(&["--augment", "--seed", "1", "--epochs", "8"])
        );
        // A switch without a value, set again, is dropped once; other flags stay.
        assert_eq!(
            override_flags(&base, &strings(&["--augment"])),
            strings(&["--epochs", "2", "--seed", "1", "--augment"])
        );
        assert_eq!(override_flags(&base, &[]), base);
    }
}
