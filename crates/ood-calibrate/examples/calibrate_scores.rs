//! `ood-calibrate` on its own, with no model and no candle: detectors' scores in, OOD metrics
//! and a calibrated min-p rule out, the way `ood calibrate` sets the default decision.
//!
//! ```text
//! cargo run --release -p ood-calibrate --example calibrate_scores              # synthetic scores
//! cargo run --release -p ood-calibrate --example calibrate_scores -- SCORES.csv [ACCEPT]
//! ```
//!
//! The scores are OOD scores (larger = more unusual) of one or more detectors for three sets:
//! `held_out` (in-distribution samples never trained on: the p-values' references and the
//! threshold's calibration set), `id` (in-distribution test samples) and `ood` (out-of-
//! distribution test samples). A CSV has a header `set,<detector>,<detector>...` and one row per
//! sample (`#` starts a comment line), e.g.
//!
//! ```text
//! set,energy,mahalanobis
//! held_out,-9.1,38.2
//! id,-8.7,41.0
//! ood,-4.9,44.3
//! ```
//!
//! Without a file it makes seeded synthetic scores (seed 0): 500 held-out and 500 test
//! in-distribution samples, and 300 OOD samples of two kinds, one that only the first detector
//! sees ("near": unknown digits, high energy) and one that only the second sees ("far":
//! clothing, far from every class mean), so that each detector alone misses half of the OOD and
//! their min-p combination catches both. `ACCEPT` is the share of held-out samples the rule
//! must accept (default 0.99, as `ood calibrate`).

use ood_calibrate::{ood_metrics, threshold_at_id_acceptance, Combine, OodMetrics, Reference};
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// Every detector's scores of one set, one `Vec` per detector.
type Columns = Vec<Vec<f64>>;

/// Scores of the three sets, with the detectors' names.
struct Scores {
    detectors: Vec<String>,
    held_out: Columns,
    id: Columns,
    ood: Columns,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let scores = match args.next() {
        Some(path) => read_csv(&path)?,
        None => synthetic(0),
    };
    let accept: f64 = match args.next() {
        Some(a) => a.parse().map_err(|e| format!("ACCEPT {a:?}: {e}"))?,
        None => 0.99,
    };

    println!(
        "{} held-out, {} ID and {} OOD samples; detectors: {}",
        scores.held_out[0].len(),
        scores.id[0].len(),
        scores.ood[0].len(),
        scores.detectors.join(", ")
    );
    println!();
    println!("| score | AUROC | AUPR-in | AUPR-out | FPR@95%TPR | OOD caught at 95% / 99% ID |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (d, name) in scores.detectors.iter().enumerate() {
        print_row(name, &ood_metrics(&scores.id[d], &scores.ood[d])?);
    }

    // Each detector's score becomes a conformal p-value against its held-out scores, and the
    // sample's score is -ln of the smallest: as unusual as its most unusual view.
    let references = scores
        .held_out
        .iter()
        .map(|h| Reference::new(h))
        .collect::<Result<Vec<_>, _>>()?;
    let min_p = |set: &Columns| -> Vec<f64> {
        (0..set[0].len())
            .map(|i| {
                let p: Vec<f64> = references
                    .iter()
                    .zip(set)
                    .map(|(r, column)| r.p_value(column[i]))
                    .collect();
                Combine::MinP.score(&p)
            })
            .collect()
    };
    let (held_out, id, ood) = (
        min_p(&scores.held_out),
        min_p(&scores.id),
        min_p(&scores.ood),
    );
    let name = format!("MinP[{}]", scores.detectors.join("+"));
    print_row(&name, &ood_metrics(&id, &ood)?);

    // The threshold is set on the held-out samples alone: no OOD sample is used to choose it.
    let threshold = threshold_at_id_acceptance(&held_out, accept)?;
    let share = |s: &[f64]| s.iter().filter(|&&x| x > threshold).count() as f64 / s.len() as f64;
    println!();
    println!(
        "rule: OOD when {name} > {threshold:.4}, i.e. when a p-value is below {:.4} \
         (set to accept {:.1}% of the held-out samples)",
        (-threshold).exp(),
        100.0 * accept
    );
    println!(
        "held out: {:.1}% accepted; ID test: {:.1}% accepted; OOD test: {:.1}% flagged",
        100.0 * (1.0 - share(&held_out)),
        100.0 * (1.0 - share(&id)),
        100.0 * share(&ood)
    );
    Ok(())
}

fn print_row(name: &str, m: &OodMetrics) {
    println!(
        "| {name} | {:.4} | {:.4} | {:.4} | {:.4} | {:.1}% / {:.1}% |",
        m.auroc,
        m.aupr_in,
        m.aupr_out,
        m.fpr_at_95_tpr,
        100.0 * m.detection_at_95_id,
        100.0 * m.detection_at_99_id
    );
}

/// Two detectors' scores, seeded. The shapes are made up but of the kind `ood calibrate` sees:
/// an energy-like score (about -9 for known digits) and a Mahalanobis-like distance (about 40).
fn synthetic(seed: u64) -> Scores {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut draw = |n: usize, energy: (f64, f64), distance: (f64, f64)| -> Columns {
        let (e, d) = (
            Normal::new(energy.0, energy.1).unwrap(),
            Normal::new(distance.0, distance.1).unwrap(),
        );
        let pairs: Vec<(f64, f64)> = (0..n)
            .map(|_| (e.sample(&mut rng), d.sample(&mut rng)))
            .collect();
        vec![
            pairs.iter().map(|p| p.0).collect(),
            pairs.iter().map(|p| p.1).collect(),
        ]
    };
    let digit = ((-9.0, 1.5), (40.0, 6.0));
    let held_out = draw(500, digit.0, digit.1);
    let id = draw(500, digit.0, digit.1);
    // Near OOD: high energy, ordinary distance; far OOD: ordinary energy, a large distance.
    let mut ood = draw(150, (-4.5, 1.5), (44.0, 7.0));
    let far = draw(150, (-8.5, 1.5), (75.0, 12.0));
    for (column, more) in ood.iter_mut().zip(far) {
        column.extend(more);
    }
    Scores {
        detectors: vec!["energy".into(), "mahalanobis".into()],
        held_out,
        id,
        ood,
    }
}

fn read_csv(path: &str) -> Result<Scores, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let (_, header) = lines.next().ok_or(format!("{path}: no header line"))?;
    let mut header = header.split(',').map(str::trim);
    if header.next() != Some("set") {
        return Err(format!("{path}: the header must start with `set`").into());
    }
    let detectors: Vec<String> = header.map(String::from).collect();
    if detectors.is_empty() {
        return Err(format!("{path}: the header names no detector").into());
    }
    let empty = || vec![Vec::new(); detectors.len()];
    let (mut held_out, mut id, mut ood) = (empty(), empty(), empty());
    for (n, line) in lines {
        let mut fields = line.split(',').map(str::trim);
        let set = match fields.next() {
            Some("held_out") => &mut held_out,
            Some("id") => &mut id,
            Some("ood") => &mut ood,
            other => {
                let other = other.unwrap_or_default();
                return Err(
                    format!("{path}:{n}: set {other:?} is none of held_out, id, ood").into(),
                );
            }
        };
        let values: Vec<f64> = fields
            .map(|f| f.parse().map_err(|e| format!("{path}:{n}: {f:?}: {e}")))
            .collect::<Result<_, _>>()?;
        if values.len() != detectors.len() {
            return Err(format!(
                "{path}:{n}: {} scores for {} detectors",
                values.len(),
                detectors.len()
            )
            .into());
        }
        for (column, v) in set.iter_mut().zip(values) {
            column.push(v);
        }
    }
    for (name, set) in [("held_out", &held_out), ("id", &id), ("ood", &ood)] {
        if set[0].is_empty() {
            return Err(format!("{path}: no {name} rows").into());
        }
    }
    Ok(Scores {
        detectors,
        held_out,
        id,
        ood,
    })
}
