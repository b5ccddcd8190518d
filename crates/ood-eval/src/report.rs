//! The report folder: `report.md`, `metrics.json` and the figures of the source report.

use crate::calibration::{thin, Calibration, CalibrationSet};
use crate::evaluation::{Evaluation, EvaluationSets, TABLE_ACCEPTANCES, TRADE_OFF_ACCEPTANCES};
use crate::plots::{self, HistGroup, ImageRow, RocSeries, TradeOffSeries};
use crate::scoring::ScoredSet;
use crate::{EvalError, Result};
use ood_calibrate::roc_curve;
use std::fmt::Write as _;
use std::path::Path;

/// Images per row in the denoising grids.
const GRID_COLUMNS: usize = 10;

fn roc_series(
    label: &str,
    id: &[f64],
    ood: &[f64],
    auroc: f64,
    marker: Option<(f64, f64)>,
) -> Result<RocSeries> {
    let points = thin(&roc_curve(id, ood)?, 400)
        .iter()
        .map(|p| (p.fpr, p.tpr))
        .collect();
    Ok(RocSeries {
        label: label.to_string(),
        points,
        auroc,
        marker,
    })
}

fn grid_rows(set: &ScoredSet, count: usize, side: usize) -> Vec<ImageRow> {
    let per = side * side;
    let n = count.min(set.len());
    let take = |v: &[f32]| {
        (0..n)
            .map(|i| v[i * per..(i + 1) * per].to_vec())
            .collect::<Vec<_>>()
    };
    vec![
        ImageRow {
            label: "noised".into(),
            images: take(&set.noised),
        },
        ImageRow {
            label: "denoised".into(),
            images: take(&set.denoised),
        },
    ]
}

/// Figures of the calibration set: max-softmax histograms and synthetic OOD examples.
pub fn write_calibration_figures(
    dir: &Path,
    calibration: &Calibration,
    set: &CalibrationSet,
    side: usize,
) -> Result<()> {
    plots::score_histograms(
        &dir.join("calibration_msp_hist.png"),
        "Max softmax on the calibration set",
        "max softmax probability",
        &[
            HistGroup {
                label: "held-out digits".into(),
                values: set.in_distribution.msp.clone(),
            },
            HistGroup {
                label: "synthetic OOD".into(),
                values: set.synthetic_ood.msp.clone(),
            },
        ],
        40,
        Some(calibration.rule.msp_threshold),
    )?;
    let per = side * side;
    let n = GRID_COLUMNS.min(set.synthetic_ood.len());
    let take = |v: &[f32]| {
        (0..n)
            .map(|i| v[i * per..(i + 1) * per].to_vec())
            .collect::<Vec<_>>()
    };
    plots::image_grid(
        &dir.join("calibration_synthetic_ood.png"),
        "Synthetic OOD (report Fig. 5): digits rotated 90/270 or occluded, noised, decoded",
        &[
            ImageRow {
                label: "digit".into(),
                images: take(&set.id_pixels),
            },
            ImageRow {
                label: "synthetic OOD".into(),
                images: take(&set.synthetic_pixels),
            },
        ],
        side,
        3,
    )?;
    Ok(())
}

fn pct(v: f64) -> String {
    format!("{:.2}%", 100.0 * v)
}

/// Writes `report.md`, `metrics.json` and the figures into `dir`.
#[allow(clippy::too_many_arguments)]
pub fn write_report(
    dir: &Path,
    checkpoint: &Path,
    calibration: &Calibration,
    evaluation: &Evaluation,
    sets: &EvaluationSets,
    originals_known: &[f32],
    originals_unknown: &[f32],
    side: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| EvalError::Io(dir.to_path_buf(), e))?;
    let json = serde_json::json!({ "calibration": calibration, "evaluation": evaluation });
    ood_data::atomic::write_atomic(
        &dir.join("metrics.json"),
        serde_json::to_string_pretty(&json)
            .expect("serialises")
            .as_bytes(),
    )
    .map_err(|e| EvalError::Io(dir.join("metrics.json"), e))?;

    let (known, unknown) = (&sets.known, &sets.unknown);
    let unknown_name = format!("{:?}", evaluation.unknown_classes);
    // Fig. 9: ROC curves.
    let mut curves = vec![
        roc_series(
            &format!("max softmax, unknown {unknown_name}"),
            &known.msp_ood_score(),
            &unknown.msp_ood_score(),
            evaluation.near.msp.auroc,
            Some((evaluation.known_rejected, evaluation.unknown_detection)),
        )?,
        roc_series(
            &format!("reconstruction error, unknown {unknown_name}"),
            &known.recon_error,
            &unknown.recon_error,
            evaluation.near.reconstruction.auroc,
            None,
        )?,
    ];
    for ((name, set), m) in sets.far.iter().zip(&evaluation.far) {
        curves.push(roc_series(
            &format!("max softmax, {name}"),
            &known.msp_ood_score(),
            &set.msp_ood_score(),
            m.msp.auroc,
            None,
        )?);
    }
    plots::roc_curves(
        &dir.join("roc.png"),
        "ROC on the test set (OOD positive)",
        &curves,
    )?;
    trade_off_figure(&dir.join("trade_off.png"), calibration, evaluation)?;
    // Fig. 4: max-softmax histograms.
    let mut groups = vec![
        HistGroup {
            label: "known test digits".into(),
            values: known.msp.clone(),
        },
        HistGroup {
            label: format!("unknown {unknown_name}"),
            values: unknown.msp.clone(),
        },
    ];
    for (name, set) in &sets.far {
        groups.push(HistGroup {
            label: name.clone(),
            values: set.msp.clone(),
        });
    }
    plots::score_histograms(
        &dir.join("msp_hist.png"),
        "Max softmax on the test set",
        "max softmax probability",
        &groups,
        40,
        Some(calibration.rule.msp_threshold),
    )?;
    // Fig. 7: reconstruction error by label.
    let mut by_label: Vec<(String, Vec<f64>)> = Vec::new();
    for &l in &evaluation.confusion_labels {
        let mut values: Vec<f64> = Vec::new();
        for (labels, set) in [(&sets.known_labels, known), (&sets.unknown_labels, unknown)] {
            values.extend(
                labels
                    .iter()
                    .zip(&set.recon_error)
                    .filter(|(x, _)| **x == l)
                    .map(|(_, e)| *e),
            );
        }
        let name = if evaluation.unknown_classes.contains(&l) {
            format!("{l} (OOD)")
        } else {
            l.to_string()
        };
        by_label.push((name, values));
    }
    plots::values_by_label(
        &dir.join("recon_by_label.png"),
        "Reconstruction error by label (test set)",
        "MSE",
        &by_label,
    )?;
    // Fig. 8: labels of the 200 largest reconstruction errors.
    let mut all: Vec<(f64, u8)> = sets
        .known_labels
        .iter()
        .zip(&known.recon_error)
        .map(|(l, e)| (*e, *l))
        .collect();
    all.extend(
        sets.unknown_labels
            .iter()
            .zip(&unknown.recon_error)
            .map(|(l, e)| (*e, *l)),
    );
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    let top: Vec<(String, usize)> = evaluation
        .confusion_labels
        .iter()
        .map(|&l| {
            (
                l.to_string(),
                all.iter().take(200).filter(|(_, x)| *x == l).count(),
            )
        })
        .collect();
    plots::label_counts(
        &dir.join("top200_labels.png"),
        "Labels of the 200 largest reconstruction errors",
        &top,
    )?;
    // Figs. 3 and 6: original / noised / denoised.
    for (file, title, set, originals) in [
        (
            "denoise_known.png",
            "Known digits: original, noised, denoised",
            known,
            originals_known,
        ),
        (
            "denoise_unknown.png",
            "Unknown digits: original, noised, denoised",
            unknown,
            originals_unknown,
        ),
    ] {
        let per = side * side;
        let n = GRID_COLUMNS.min(set.len());
        let mut rows = vec![ImageRow {
            label: "original".into(),
            images: (0..n)
                .map(|i| originals[i * per..(i + 1) * per].to_vec())
                .collect(),
        }];
        rows.extend(grid_rows(set, n, side));
        plots::image_grid(&dir.join(file), title, &rows, side, 3)?;
    }
    let labels: Vec<String> = evaluation
        .confusion_labels
        .iter()
        .map(|l| l.to_string())
        .collect();
    plots::confusion_matrix(
        &dir.join("confusion.png"),
        "Confusion matrix (OOD predicted as the unknown label)",
        &labels,
        &evaluation.confusion,
    )?;

    let md = markdown(checkpoint, calibration, evaluation);
    ood_data::atomic::write_atomic(&dir.join("report.md"), md.as_bytes())
        .map_err(|e| EvalError::Io(dir.join("report.md"), e))
}

/// The trade-off figure: unknown caught against valid digits accepted and right, one curve per
/// score as its held-out acceptance moves, a dot at the operating point in force.
fn trade_off_figure(path: &Path, calibration: &Calibration, e: &Evaluation) -> Result<()> {
    let in_force = calibration
        .accept_rule
        .as_ref()
        .filter(|_| calibration.config.decision == crate::calibration::Decision::Accept);
    let curves: Vec<TradeOffSeries> = e
        .score_names()
        .into_iter()
        .map(|name| {
            let points: Vec<(f64, f64)> = TRADE_OFF_ACCEPTANCES
                .iter()
                .filter_map(|&a| e.operating_point(name, a))
                .map(|p| (p.known_accepted_right, p.unknown_caught))
                .collect();
            let marker = in_force
                .filter(|a| ood_calibrate::Detector::name(&a.score) == name)
                .map(|_| (e.known_accuracy, e.unknown_detection));
            TradeOffSeries {
                label: name.to_string(),
                points,
                marker,
            }
        })
        .collect();
    let x_min = e
        .operating_points
        .iter()
        .filter(|p| p.accept >= 0.95)
        .map(|p| p.known_accepted_right)
        .fold(1.0f64, f64::min)
        .min(0.95)
        - 0.005;
    plots::trade_off_curves(
        path,
        &format!(
            "Unknown {:?} caught against valid digits accepted and right",
            e.unknown_classes
        ),
        x_min,
        &curves,
    )?;
    Ok(())
}

/// Each score at the acceptances of [`TABLE_ACCEPTANCES`], thresholds from held-out digits.
pub fn operating_table(e: &Evaluation) -> String {
    let mut s = String::new();
    let far: Vec<&str> = e
        .operating_points
        .first()
        .map(|p| p.far_caught.iter().map(|(n, _)| n.as_str()).collect())
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "| score | held-out digits accepted | threshold | valid accepted | valid accepted and right | unknown {:?} caught |{}\n|---|---|---|---|---|---|{}",
        e.unknown_classes,
        far.iter().map(|n| format!(" {n} caught |")).collect::<String>(),
        "---|".repeat(far.len())
    );
    for name in e.score_names() {
        for &a in &TABLE_ACCEPTANCES {
            let Some(p) = e.operating_point(name, a) else {
                continue;
            };
            let _ = writeln!(
                s,
                "| {name} | {} | {:.4} | {} | {} | {} |{}",
                pct(a),
                p.threshold,
                pct(p.known_accepted),
                pct(p.known_accepted_right),
                pct(p.unknown_caught),
                p.far_caught
                    .iter()
                    .map(|(_, v)| format!(" {} |", pct(*v)))
                    .collect::<String>()
            );
        }
    }
    s
}

/// The headline table as Markdown (also what `ood evaluate` prints).
pub fn summary_table(evaluation: &Evaluation) -> String {
    let e = evaluation;
    let mut s = String::new();
    let u = format!("{:?}", e.unknown_classes);
    if !e.decision.is_empty() {
        let _ = writeln!(s, "Rule: {}.\n", e.decision);
    }
    let _ = writeln!(s, "| metric | value |\n|---|---|");
    let rows = [
        (
            format!("unknown {u} flagged OOD (\"zero accuracy\")"),
            pct(e.unknown_detection),
        ),
        (
            "known accepted and correct (\"else accuracy\")".into(),
            pct(e.known_accuracy),
        ),
        ("known rejected as OOD".into(), pct(e.known_rejected)),
        (
            "closed-set accuracy (known)".into(),
            pct(e.closed_set_accuracy),
        ),
        (
            "open-set accuracy (all test digits)".into(),
            pct(e.open_set_accuracy),
        ),
        ("OSCR (max softmax)".into(), format!("{:.4}", e.oscr)),
    ];
    for (metric, value) in rows {
        let _ = writeln!(s, "| {metric} | {value} |");
    }
    if let Some(all) = e.drawn.first() {
        let _ = writeln!(
            s,
            "| drawn digits (canvas, thin, thick pens) accepted and correct | {} |\n| drawn digits refused as OOD | {} |\n| drawn unknown {u} flagged OOD | {} |",
            pct(all.accepted_right),
            pct(all.refused),
            pct(all.unknown_caught)
        );
    }
    let _ = writeln!(s, "\n| OOD set | score | AUROC | FPR@95%TPR | AUPR-in | AUPR-out | flagged by rule |\n|---|---|---|---|---|---|---|");
    for m in std::iter::once(&e.near).chain(&e.far) {
        let scores = [
            ("max softmax", &m.msp),
            ("reconstruction", &m.reconstruction),
        ]
        .into_iter()
        .chain(m.scores.iter().map(|(n, o)| (n.as_str(), o)));
        for (score, o) in scores {
            let _ = writeln!(
                s,
                "| {} | {score} | {:.4} | {} | {:.4} | {:.4} | {} |",
                m.name,
                o.auroc,
                pct(o.fpr_at_95_tpr),
                o.aupr_in,
                o.aupr_out,
                pct(m.flagged)
            );
        }
    }
    s
}

/// The rule on the drawn-digit set, per pen.
pub fn drawn_table(e: &Evaluation) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## Drawn digits\n\nThe test digits redrawn as the drawing page sends them (enlarged, binarised, the pen widened or narrowed, prepared as `ood serve` prepares a drawing; pens in turn, see `ood_data::pen`). The last two rows split every pen's digits by whether the pen kept their strokes whole or broke them into more pieces than the canvas pen leaves (the fine pen drops the faint stretches of a scanned stroke).\n\n| pen | known | closed-set accuracy | accepted and correct | refused | unknown | unknown caught |\n|---|---|---|---|---|---|---|"
    );
    for r in &e.drawn {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.pen,
            r.n_known,
            pct(r.closed_set_accuracy),
            pct(r.accepted_right),
            pct(r.refused),
            r.n_unknown,
            pct(r.unknown_caught)
        );
    }
    s
}

fn markdown(checkpoint: &Path, c: &Calibration, e: &Evaluation) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# OOD evaluation\n");
    let _ = writeln!(
        s,
        "Checkpoint `{}` (sha256 `{}`).\n",
        checkpoint.display(),
        e.checkpoint_sha256
    );
    let _ = writeln!(
        s,
        "Known classes {:?}, unknown {:?}: {} known and {} unknown test images.\n",
        e.known_classes, e.unknown_classes, e.n_known, e.n_unknown
    );
    if let Some(a) = &c.accept_rule {
        let _ = writeln!(
            s,
            "Acceptance rule: the score is fitted on {} training images and referenced to the {} held-out digits; its threshold accepts {} of them. It flags {} of the synthetic OOD (AUROC {:.4}), which it was not fitted on.\n",
            a.n_fit,
            c.n_in_distribution,
            pct(a.held_out_accepted),
            pct(a.synthetic_flagged),
            a.synthetic_auroc
        );
    }
    let _ = writeln!(
        s,
        "The report's rule (calibrated on {} held-out digits and {} synthetic OOD images made from {}): {}. Calibration-set AUROC: max softmax {:.4}, reconstruction {:.4}.\n",
        c.n_in_distribution,
        c.n_synthetic_ood,
        c.ood_transforms.join(", "),
        c.report_rule_text(),
        c.auroc_msp,
        c.auroc_recon
    );
    s.push_str(&summary_table(e));
    let _ = writeln!(
        s,
        "\n## Operating points (thresholds from held-out digits only)\n\n![trade-off](trade_off.png)\n"
    );
    s.push_str(&operating_table(e));
    if !e.drawn.is_empty() {
        s.push_str(&drawn_table(e));
    }
    let ood_as = e
        .unknown_classes
        .first()
        .map_or("-".to_string(), |l| l.to_string());
    let _ = writeln!(
        s,
        "\n## Confusion matrix (rows: true label, columns: predicted; OOD counts as {ood_as})\n"
    );
    let _ = writeln!(
        s,
        "| true \\ predicted | {} |",
        e.confusion_labels
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(s, "|---|{}", "---|".repeat(e.confusion_labels.len()));
    for (l, row) in e.confusion_labels.iter().zip(&e.confusion) {
        let _ = writeln!(
            s,
            "| {l} | {} |",
            row.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let _ = writeln!(s, "\n## Figures\n");
    for (f, t) in [
        ("roc.png", "ROC curves (report Fig. 9)"),
        ("msp_hist.png", "Max-softmax histograms (Fig. 4)"),
        (
            "recon_by_label.png",
            "Reconstruction error by label (Fig. 7)",
        ),
        (
            "top200_labels.png",
            "Labels of the 200 largest reconstruction errors (Fig. 8)",
        ),
        ("denoise_known.png", "Denoising known digits (Fig. 6)"),
        ("denoise_unknown.png", "Denoising unknown digits (Fig. 3)"),
        ("confusion.png", "Confusion matrix"),
    ] {
        let _ = writeln!(s, "### {t}\n\n![{t}]({f})\n");
    }
    s
}
