//! `cargo xtask osr`: the field's standard MNIST open-set benchmark. Six known and four
//! unknown digits, the five splits of Neal et al. (2018) as fixed by ARPL and Vaze et al.
//! (2022); per split one model is trained on the known digits (`ood train --known K
//! --unknown U`), calibrated on its held-out known digits and evaluated on the test set, where
//! every known test digit is scored against every unknown one. Resumable like the other
//! studies: finished stages are read back from their files.

use crate::studies::{
    default_score_auroc, finish_study, num, pct, run_model, wall_time_line, SecondRule, StudyArgs,
};
use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::time::Instant;

/// The known digits of each split (the rest of 0-9 are unknown).
pub const SPLITS: [[u8; 6]; 5] = [
    [2, 4, 5, 9, 8, 3],
    [3, 2, 6, 9, 4, 0],
    [5, 8, 3, 2, 4, 6],
    [3, 7, 8, 4, 0, 5],
    [6, 3, 4, 9, 8, 2],
];

/// Published 5-split mean AUROCs on MNIST, for the table. Their splits, networks and budgets
/// differ from ours (mostly 100+ epochs on a GPU); see docs/results.md.
pub const PUBLISHED: [(&str, &str, f64); 10] = [
    ("Softmax", "Neal et al. 2018", 0.978),
    (
        "OpenMax",
        "Bendale & Boult 2016, in Neal et al. 2018",
        0.981,
    ),
    ("G-OpenMax", "Ge et al. 2017, in Neal et al. 2018", 0.984),
    ("OSRCI", "Neal et al. 2018", 0.988),
    ("C2AE", "Oza & Patel 2019", 0.989),
    ("RPL", "Chen et al. 2020", 0.989),
    ("CROSR", "Yoshihashi et al. 2019", 0.991),
    ("CAC", "Miller et al. 2021", 0.991),
    ("DSC", "as tabulated by later papers", 0.996),
    ("ARPL+CS", "Chen et al. 2021", 0.997),
];

/// `cargo xtask osr`'s arguments.
#[derive(clap::Args, Debug)]
pub struct OsrArgs {
    /// The training recipe of every model (`ood train --recipe`)
    #[arg(long, value_name = "R", default_value = "quality")]
    recipe: String,
    /// The splits to run (comma-separated, of 0-4)
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "0,1,2,3,4"
    )]
    splits: Vec<usize>,
    #[command(flatten)]
    rule: SecondRule,
    #[command(flatten)]
    study: StudyArgs,
}

/// The metrics of one split, from its evaluation (metrics.json's `evaluation`).
#[derive(Debug, Clone, PartialEq)]
struct SplitRow {
    closed_set_accuracy: Option<f64>,
    auroc_msp: Option<f64>,
    auroc_energy: Option<f64>,
    auroc_knn: Option<f64>,
    auroc_rule: Option<f64>,
    oscr: Option<f64>,
    unknown_caught: Option<f64>,
}

impl SplitRow {
    fn from_evaluation(e: &Value) -> Self {
        let near = &e["near"];
        let score = |prefix: &str| -> Option<f64> {
            near["scores"].as_array()?.iter().find_map(|p| {
                let name = p[0].as_str()?;
                (name == prefix || name.starts_with(&format!("{prefix}(")))
                    .then(|| p[1]["auroc"].as_f64())
                    .flatten()
            })
        };
        Self {
            closed_set_accuracy: e["closed_set_accuracy"].as_f64(),
            auroc_msp: near["msp"]["auroc"].as_f64(),
            auroc_energy: score("Energy"),
            auroc_knn: score("KNN"),
            auroc_rule: default_score_auroc(Some(near)).as_f64(),
            oscr: e["oscr"].as_f64(),
            unknown_caught: e["unknown_detection"].as_f64(),
        }
    }

    fn values(&self) -> [Option<f64>; 7] {
        [
            self.closed_set_accuracy,
            self.auroc_msp,
            self.auroc_energy,
            self.auroc_knn,
            self.auroc_rule,
            self.oscr,
            self.unknown_caught,
        ]
    }
}

const COLUMNS: [&str; 7] = [
    "closed-set accuracy",
    "AUROC MSP",
    "AUROC energy",
    "AUROC KNN",
    "AUROC rule's score",
    "OSCR",
    "unknown caught at 99%",
];

/// Whether column `i` is a percentage (else a 4-digit number).
fn is_percentage(i: usize) -> bool {
    i == 0 || i == 6
}

/// Mean and sample standard deviation of the values, when every split has one.
fn mean_std(values: &[Option<f64>]) -> Option<(f64, f64)> {
    let v: Vec<f64> = values.iter().copied().collect::<Option<_>>()?;
    if v.is_empty() {
        return None;
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    Some((mean, var.sqrt()))
}

fn cell(i: usize, v: Option<f64>) -> String {
    let v = v.map_or(Value::Null, Value::from);
    if is_percentage(i) {
        pct(&v)
    } else {
        num(&v)
    }
}

fn mean_cell(i: usize, values: &[Option<f64>]) -> String {
    match mean_std(values) {
        Some((m, s)) if is_percentage(i) => format!("{:.2}% ± {:.2}", 100.0 * m, 100.0 * s),
        Some((m, s)) => format!("{m:.4} ± {s:.4}"),
        None => "-".into(),
    }
}

/// The unknown digits of a split.
fn unknown_of(known: &[u8]) -> Vec<u8> {
    (0..=9).filter(|d| !known.contains(d)).collect()
}

fn digits(d: &[u8]) -> String {
    d.iter().map(u8::to_string).collect::<Vec<_>>().join(",")
}

pub fn run(args: &OsrArgs) -> Result<()> {
    if let Some(bad) = args.splits.iter().find(|&&s| s >= SPLITS.len()) {
        bail!("--splits: split {bad} does not exist (0-4)");
    }
    let study = args
        .study
        .study(&format!("runs/osr-{}", args.recipe.replace('/', "-")));
    let started = Instant::now();
    let mut own: Vec<String> = vec![
        "--recipe".into(),
        args.recipe.clone(),
        "--splits".into(),
        args.splits
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(","),
    ];
    own.extend(args.rule.command_words());
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Command: `cargo xtask osr {}`\n",
        args.study.command_line(&own)
    );
    let _ = writeln!(
        md,
        "| split | known | unknown | {} |\n|---|---|---|{}",
        COLUMNS.join(" | "),
        "---|".repeat(COLUMNS.len())
    );
    let mut rows = Vec::new();
    let mut dirs = Vec::new();
    let mut columns: Vec<Vec<Option<f64>>> = vec![Vec::new(); COLUMNS.len()];
    for &split in &args.splits {
        let known = SPLITS[split];
        let unknown = unknown_of(&known);
        let dir = study.root.join(format!("split{split}"));
        dirs.push(dir.clone());
        let flags = vec![
            "--recipe".to_string(),
            args.recipe.clone(),
            "--known".into(),
            digits(&known),
            "--unknown".into(),
            digits(&unknown),
        ];
        let m = run_model(&dir, &flags, &study, false)?;
        let m = args.rule.metrics(&dir, m, &study)?;
        let e = &m["evaluation"];
        let row = SplitRow::from_evaluation(e);
        let cells: Vec<String> = row
            .values()
            .iter()
            .enumerate()
            .map(|(i, v)| cell(i, *v))
            .collect();
        for (column, v) in columns.iter_mut().zip(row.values()) {
            column.push(v);
        }
        let _ = writeln!(
            md,
            "| {split} | {} | {} | {} |",
            digits(&known),
            digits(&unknown),
            cells.join(" | ")
        );
        rows.push(json!({"split": split, "known": known, "unknown": unknown, "evaluation": e}));
    }
    let means: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| mean_cell(i, c))
        .collect();
    let _ = writeln!(md, "| **mean ± std** | | | {} |", means.join(" | "));
    let _ = writeln!(
        md,
        "\nPublished 5-split mean AUROCs on MNIST (their splits, networks and training budgets differ):\n\n| method | source | AUROC |\n|---|---|---|"
    );
    for (method, source, auroc) in PUBLISHED {
        let _ = writeln!(md, "| {method} | {source} | {auroc:.3} |");
    }
    let _ = writeln!(md, "{}", wall_time_line(&dirs, started));
    finish_study(&study.root, &args.rule.stem("osr"), &md, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_splits_are_six_known_digits_and_their_complement() {
        for known in SPLITS {
            let unknown = unknown_of(&known);
            assert_eq!(unknown.len(), 4);
            let mut all: Vec<u8> = known.iter().chain(&unknown).copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..=9).collect::<Vec<u8>>());
        }
        assert_eq!(unknown_of(&SPLITS[0]), vec![0, 1, 6, 7]);
    }

    #[test]
    fn a_row_reads_its_scores_by_name() {
        let e = json!({
            "closed_set_accuracy": 0.99,
            "oscr": 0.98,
            "unknown_detection": 0.75,
            "near": {
                "msp": {"auroc": 0.97},
                "scores": [
                    ["Energy(T=1)", {"auroc": 0.991}],
                    ["Mahalanobis", {"auroc": 0.95}],
                    ["KNN(k=50)", {"auroc": 0.993}],
                    ["MinP[Energy(T=1)+Mahalanobis+KNN(k=50); budget 60/20/20%]", {"auroc": 0.992}]
                ]
            }
        });
        let r = SplitRow::from_evaluation(&e);
        assert_eq!(
            r.values(),
            [
                Some(0.99),
                Some(0.97),
                Some(0.991),
                Some(0.993),
                Some(0.992),
                Some(0.98),
                Some(0.75)
            ]
        );
    }

    #[test]
    fn mean_and_spread_by_hand() {
        let (m, s) = mean_std(&[Some(1.0), Some(2.0), Some(3.0)]).unwrap();
        assert_eq!(m, 2.0);
        assert!((s - 1.0).abs() < 1e-12);
        assert_eq!(mean_std(&[Some(1.0), None]), None);
        assert_eq!(mean_cell(1, &[Some(0.99), Some(0.995)]), "0.9925 ± 0.0035");
        assert_eq!(mean_cell(0, &[Some(0.99), Some(0.99)]), "99.00% ± 0.00");
    }
}
