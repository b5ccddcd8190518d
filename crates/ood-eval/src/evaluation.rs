//! The evaluation stage: the calibrated detector on the test set, with the unknown classes as
//! OOD (and optionally a far-OOD set such as Fashion-MNIST).

use crate::calibration::Calibration;
use crate::scoring::{score_images, ScoredSet};
use crate::Result;
use candle_core::Device;
use ood_calibrate::{
    confusion_matrix, ood_metrics, oscr, threshold_at_id_acceptance, Detector, OodMetrics,
};
use ood_data::batch::to_unit_f32;
use ood_data::pen::{drawn_set, DrawnStyle};
use ood_data::{ClassSpec, LabeledImages};
use ood_model::OodNet;
use ood_train::TrainConfig;
use serde::{Deserialize, Serialize};

const KNOWN_STREAM: u64 = 20;
const UNKNOWN_STREAM: u64 = 21;
const FAR_STREAM: u64 = 22;
const DRAWN_KNOWN_STREAM: u64 = 30;
const DRAWN_UNKNOWN_STREAM: u64 = 31;

/// The acceptances of held-out digits the trade-off curves are drawn at.
pub const TRADE_OFF_ACCEPTANCES: [f64; 17] = [
    0.80, 0.85, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.985, 0.99, 0.9925, 0.995, 0.9975,
    0.999, 0.9995, 1.0,
];

/// The acceptances of the operating-point table.
pub const TABLE_ACCEPTANCES: [f64; 3] = [0.98, 0.99, 0.995];

/// One score with its threshold set to accept a fraction of the held-out digits, on the test
/// sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatingPoint {
    pub score: String,
    /// The fraction of held-out digits the threshold accepts (asked for).
    pub accept: f64,
    /// OOD when the score is above it.
    pub threshold: f64,
    /// Known test digits accepted, right or wrong.
    pub known_accepted: f64,
    /// Known test digits accepted and classified right.
    pub known_accepted_right: f64,
    /// Unknown test digits caught.
    pub unknown_caught: f64,
    /// Each far-OOD set's name and the fraction of it caught.
    pub far_caught: Vec<(String, f64)>,
}

/// Detection metrics of one OOD set against the known test digits, per score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodSetMetrics {
    pub name: String,
    /// Fraction of this set the calibrated rule flags.
    pub flagged: f64,
    pub msp: OodMetrics,
    pub reconstruction: OodMetrics,
    /// The default score, its members and any other score compared, by name.
    #[serde(default)]
    pub scores: Vec<(String, OodMetrics)>,
}

/// Everything `ood evaluate` measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub checkpoint_sha256: String,
    /// The rule applied, in words.
    #[serde(default)]
    pub decision: String,
    pub known_classes: Vec<u8>,
    pub unknown_classes: Vec<u8>,
    pub n_known: usize,
    pub n_unknown: usize,
    /// Arg-max accuracy on known test digits, ignoring the detector.
    pub closed_set_accuracy: f64,
    /// Fraction of unknown test digits flagged OOD (the report's "zero accuracy").
    pub unknown_detection: f64,
    /// Fraction of known test digits accepted and classified correctly ("else accuracy").
    pub known_accuracy: f64,
    /// Fraction of known test digits flagged OOD.
    pub known_rejected: f64,
    /// Accuracy over all test digits with "OOD" counted as the unknown class.
    pub open_set_accuracy: f64,
    pub oscr: f64,
    /// The unknown test digits against the known ones.
    pub near: OodSetMetrics,
    /// Far-OOD sets, when given.
    pub far: Vec<OodSetMetrics>,
    /// Rows: true label; columns: predicted label, with OOD predicted as the first unknown
    /// label. Labels are `confusion_labels`.
    pub confusion_labels: Vec<u8>,
    pub confusion: Vec<Vec<usize>>,
    /// Every compared score at every acceptance of [`TRADE_OFF_ACCEPTANCES`], thresholds from
    /// held-out digits alone.
    #[serde(default)]
    pub operating_points: Vec<OperatingPoint>,
    /// The rule on the drawn-digit set (the test digits redrawn as the page sends them, see
    /// `ood_data::pen`): every pen first, then each pen alone, then every pen split by whether
    /// it kept the digit's strokes whole ([`WHOLE_STROKES`], [`BROKEN_STROKES`]).
    #[serde(default)]
    pub drawn: Vec<DrawnRow>,
}

/// The rule on test digits redrawn with one pen (or every pen: `pen` is `"all"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrawnRow {
    pub pen: String,
    pub n_known: usize,
    /// Arg-max accuracy on the redrawn known digits, ignoring the detector.
    pub closed_set_accuracy: f64,
    /// Redrawn known digits accepted and classified right.
    pub accepted_right: f64,
    /// Redrawn known digits flagged OOD.
    pub refused: f64,
    pub n_unknown: usize,
    /// Redrawn unknown digits flagged OOD.
    pub unknown_caught: f64,
}

/// The names of the drawn-digit rows that split the set by whether the pen broke a digit's
/// strokes ([`ood_data::pen::breaks_strokes`]).
pub const WHOLE_STROKES: &str = "whole strokes";
pub const BROKEN_STROKES: &str = "broken strokes";

/// The drawn-digit rows: known and unknown test digits redrawn by [`drawn_set`], image `i`
/// in pen [`DrawnStyle::of_index`]`(i)`; every pen, each pen, then every pen split by whether
/// it broke the digit's strokes (`known_broken`, `unknown_broken`: its `broken`).
fn drawn_rows(
    calibration: &Calibration,
    known: &ScoredSet,
    truth: &[usize],
    unknown: &ScoredSet,
    (known_broken, unknown_broken): (&[bool], &[bool]),
) -> Result<Vec<DrawnRow>> {
    let known_flags = calibration.flags(known)?;
    let unknown_flags = calibration.flags(unknown)?;
    let row = |pen: &str, keep: &dyn Fn(usize) -> bool, keep_unknown: &dyn Fn(usize) -> bool| {
        let (mut n, mut right, mut accepted_right, mut refused) = (0, 0, 0, 0);
        for (i, (&p, &t)) in known.predictions.iter().zip(truth).enumerate() {
            if keep(i) {
                n += 1;
                right += usize::from(p == t);
                accepted_right += usize::from(p == t && !known_flags[i]);
                refused += usize::from(known_flags[i]);
            }
        }
        let kept: Vec<bool> = (0..unknown_flags.len())
            .filter(|&i| keep_unknown(i))
            .map(|i| unknown_flags[i])
            .collect();
        let share = |v: usize| v as f64 / n.max(1) as f64;
        DrawnRow {
            pen: pen.to_string(),
            n_known: n,
            closed_set_accuracy: share(right),
            accepted_right: share(accepted_right),
            refused: share(refused),
            n_unknown: kept.len(),
            unknown_caught: fraction(&kept),
        }
    };
    let mut rows = vec![row("all", &|_| true, &|_| true)];
    for style in DrawnStyle::ALL {
        let pen = |i| DrawnStyle::of_index(i) == style;
        rows.push(row(style.name(), &pen, &pen));
    }
    for (name, broken) in [(WHOLE_STROKES, false), (BROKEN_STROKES, true)] {
        rows.push(row(name, &|i| known_broken[i] == broken, &|i| {
            unknown_broken[i] == broken
        }));
    }
    Ok(rows)
}

impl Evaluation {
    /// The operating point of `score` at acceptance `accept`, if measured.
    pub fn operating_point(&self, score: &str, accept: f64) -> Option<&OperatingPoint> {
        self.operating_points
            .iter()
            .find(|p| p.score == score && (p.accept - accept).abs() < 1e-12)
    }

    /// The names of the compared scores, in order.
    pub fn score_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for p in &self.operating_points {
            if !names.contains(&p.score.as_str()) {
                names.push(&p.score);
            }
        }
        names
    }
}

/// The scored test sets, kept for figures.
pub struct EvaluationSets {
    pub known: ScoredSet,
    pub known_labels: Vec<u8>,
    pub unknown: ScoredSet,
    pub unknown_labels: Vec<u8>,
    pub far: Vec<(String, ScoredSet)>,
}

fn fraction(flags: &[bool]) -> f64 {
    flags.iter().filter(|&&f| f).count() as f64 / flags.len().max(1) as f64
}

/// Named columns of OOD scores, one value per image of a set.
pub type ScoreColumns = Vec<(String, Vec<f64>)>;

/// The scores compared, per image of a set, as (name, OOD scores): MSP, then, when the
/// calibration has the acceptance rule, each member of its score and the score itself.
pub fn score_columns(calibration: &Calibration, set: &ScoredSet) -> Result<ScoreColumns> {
    let mut columns = vec![("MSP".to_string(), set.msp_ood_score())];
    if let Some(rule) = &calibration.accept_rule {
        let explained = rule.explain(set)?;
        for (m, member) in rule.score.members().iter().enumerate() {
            columns.push((
                member.detector().name(),
                explained.iter().map(|e| e.members[m].1).collect(),
            ));
        }
        columns.push((
            rule.score.name(),
            explained.iter().map(|e| e.score).collect(),
        ));
    }
    Ok(columns)
}

fn set_metrics(
    name: &str,
    calibration: &Calibration,
    known: &ScoredSet,
    known_columns: &[(String, Vec<f64>)],
    ood: &ScoredSet,
    ood_columns: &[(String, Vec<f64>)],
) -> Result<OodSetMetrics> {
    Ok(OodSetMetrics {
        name: name.to_string(),
        flagged: fraction(&calibration.flags(ood)?),
        msp: ood_metrics(&known.msp_ood_score(), &ood.msp_ood_score())?,
        reconstruction: ood_metrics(&known.recon_error, &ood.recon_error)?,
        scores: known_columns
            .iter()
            .zip(ood_columns)
            .skip(1) // MSP has its own field
            .map(|((name, k), (_, o))| Ok((name.clone(), ood_metrics(k, o)?)))
            .collect::<Result<_>>()?,
    })
}

/// Every score at every acceptance of [`TRADE_OFF_ACCEPTANCES`]: the threshold from the
/// held-out digits' scores, the rates on the test sets.
fn operating_points(
    held_out: &[(String, Vec<f64>)],
    known: &[(String, Vec<f64>)],
    correct: &[bool],
    unknown: &[(String, Vec<f64>)],
    far: &[(String, ScoreColumns)],
) -> Result<Vec<OperatingPoint>> {
    let share = |scores: &[f64], t: f64| {
        scores.iter().filter(|&&s| s > t).count() as f64 / scores.len().max(1) as f64
    };
    let mut points = Vec::new();
    for (c, (name, held)) in held_out.iter().enumerate() {
        for &accept in &TRADE_OFF_ACCEPTANCES {
            let t = threshold_at_id_acceptance(held, accept)?;
            let k = &known[c].1;
            let right = k
                .iter()
                .zip(correct)
                .filter(|(&s, &ok)| ok && s <= t)
                .count();
            points.push(OperatingPoint {
                score: name.clone(),
                accept,
                threshold: t,
                known_accepted: 1.0 - share(k, t),
                known_accepted_right: right as f64 / k.len().max(1) as f64,
                unknown_caught: share(&unknown[c].1, t),
                far_caught: far
                    .iter()
                    .map(|(set, columns)| (set.clone(), share(&columns[c].1, t)))
                    .collect(),
            });
        }
    }
    Ok(points)
}

/// Evaluates on the known and unknown test digits and on any `far` sets; `held_out` are the
/// calibration's held-out digits, from which the operating points' thresholds are set.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    nets: &[OodNet],
    train: &TrainConfig,
    calibration: &Calibration,
    held_out: &LabeledImages,
    test_known: &LabeledImages,
    test_unknown: &LabeledImages,
    far: &[(String, LabeledImages)],
    batch_size: usize,
    device: &Device,
) -> Result<(Evaluation, EvaluationSets)> {
    let classes: ClassSpec = train.classes();
    let score_pixels = |pixels: &[f32], stream: u64| {
        score_images(
            nets,
            pixels,
            &train.noise,
            train.seed,
            stream,
            batch_size,
            device,
        )
    };
    let score = |d: &LabeledImages, stream: u64| score_pixels(&to_unit_f32(d), stream);
    // Each test set as [0, 1] pixels once: scored as MNIST has it, redrawn, and split by
    // whether the redraw broke its strokes.
    let (known_pixels, unknown_pixels) = (to_unit_f32(test_known), to_unit_f32(test_unknown));
    let known = score_pixels(&known_pixels, KNOWN_STREAM)?;
    let unknown = score_pixels(&unknown_pixels, UNKNOWN_STREAM)?;
    let side = nets[0].config.image_size;
    let (drawn_known_set, drawn_unknown_set) = (
        drawn_set(&known_pixels, side),
        drawn_set(&unknown_pixels, side),
    );
    let drawn_known = score_pixels(&drawn_known_set.images, DRAWN_KNOWN_STREAM)?;
    let drawn_unknown = score_pixels(&drawn_unknown_set.images, DRAWN_UNKNOWN_STREAM)?;
    let (known_broken, unknown_broken) = (drawn_known_set.broken, drawn_unknown_set.broken);
    let truth: Vec<usize> = test_known
        .labels
        .iter()
        .map(|&l| {
            classes
                .class_index(l)
                .expect("known test digits are known classes")
        })
        .collect();
    let correct: Vec<bool> = known
        .predictions
        .iter()
        .zip(&truth)
        .map(|(p, t)| p == t)
        .collect();
    let known_flags = calibration.flags(&known)?;
    let unknown_flags = calibration.flags(&unknown)?;
    let accepted_correct = correct
        .iter()
        .zip(&known_flags)
        .filter(|(c, f)| **c && !**f)
        .count();
    let unknown_caught = unknown_flags.iter().filter(|&&f| f).count();

    // Confusion over labels: known labels map through the classifier, OOD to the unknown label.
    let unknown_label = classes.unknown.first().copied().unwrap_or(0);
    let mut labels: Vec<u8> = classes
        .known
        .iter()
        .chain(&classes.unknown)
        .copied()
        .collect();
    labels.sort_unstable();
    let index_of = |l: u8| labels.iter().position(|&x| x == l).expect("label listed");
    let predict = |set: &ScoredSet, flags: &[bool]| -> Vec<usize> {
        set.predictions
            .iter()
            .zip(flags)
            .map(|(&p, &f)| index_of(if f { unknown_label } else { classes.known[p] }))
            .collect()
    };
    let mut true_idx: Vec<usize> = test_known.labels.iter().map(|&l| index_of(l)).collect();
    true_idx.extend(test_unknown.labels.iter().map(|&l| index_of(l)));
    let mut pred_idx = predict(&known, &known_flags);
    pred_idx.extend(predict(&unknown, &unknown_flags));
    let confusion = confusion_matrix(&true_idx, &pred_idx, labels.len())?;
    let right = true_idx
        .iter()
        .zip(&pred_idx)
        .filter(|(t, p)| t == p)
        .count();

    let known_columns = score_columns(calibration, &known)?;
    let unknown_columns = score_columns(calibration, &unknown)?;
    let mut far_metrics = Vec::new();
    let mut far_sets = Vec::new();
    let mut far_columns = Vec::new();
    for (i, (name, data)) in far.iter().enumerate() {
        let set = score(data, FAR_STREAM + i as u64)?;
        let columns = score_columns(calibration, &set)?;
        far_metrics.push(set_metrics(
            name,
            calibration,
            &known,
            &known_columns,
            &set,
            &columns,
        )?);
        far_columns.push((name.clone(), columns));
        far_sets.push((name.clone(), set));
    }
    // The same noise stream as the calibration's held-out scores, and, when the rule was
    // referenced to restyled copies too, the same copies: the operating points then set their
    // thresholds on what the rule's threshold was set on.
    let mut held = score(held_out, crate::calibration::ID_SCORE_STREAM)?;
    if calibration
        .accept_rule
        .as_ref()
        .is_some_and(|a| a.reference_pens() == crate::calibration::ReferencePens::All)
    {
        held.append(score_pixels(
            &crate::calibration::restyled_references(&to_unit_f32(held_out), side, train.seed),
            crate::calibration::PEN_SCORE_STREAM,
        )?);
    }
    let points = operating_points(
        &score_columns(calibration, &held)?,
        &known_columns,
        &correct,
        &unknown_columns,
        &far_columns,
    )?;
    let evaluation = Evaluation {
        checkpoint_sha256: calibration.checkpoint_sha256.clone(),
        decision: calibration.describe(),
        known_classes: classes.known.clone(),
        unknown_classes: classes.unknown.clone(),
        n_known: known.len(),
        n_unknown: unknown.len(),
        closed_set_accuracy: fraction(&correct),
        unknown_detection: unknown_caught as f64 / unknown.len().max(1) as f64,
        known_accuracy: accepted_correct as f64 / known.len().max(1) as f64,
        known_rejected: fraction(&known_flags),
        open_set_accuracy: right as f64 / true_idx.len().max(1) as f64,
        oscr: oscr(&known.msp_ood_score(), &correct, &unknown.msp_ood_score())?,
        near: set_metrics(
            &format!("unknown digits {:?}", classes.unknown),
            calibration,
            &known,
            &known_columns,
            &unknown,
            &unknown_columns,
        )?,
        far: far_metrics,
        confusion_labels: labels,
        confusion,
        operating_points: points,
        drawn: drawn_rows(
            calibration,
            &drawn_known,
            &truth,
            &drawn_unknown,
            (&known_broken, &unknown_broken),
        )?,
    };
    let sets = EvaluationSets {
        known,
        known_labels: test_known.labels.clone(),
        unknown,
        unknown_labels: test_unknown.labels.clone(),
        far: far_sets,
    };
    Ok((evaluation, sets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(values: &[f64]) -> Vec<(String, Vec<f64>)> {
        vec![("S".to_string(), values.to_vec())]
    }

    #[test]
    fn operating_points_by_hand() {
        // Held-out scores 1..4: accepting 75% puts the threshold at 3 (flagged when > 3).
        let points = operating_points(
            &column(&[4.0, 1.0, 3.0, 2.0]),
            &column(&[1.0, 5.0, 2.0, 3.0]),
            &[true, true, false, true],
            &column(&[4.0, 5.0, 0.0]),
            &[("far".to_string(), column(&[3.0, 3.5]))],
        )
        .unwrap();
        assert_eq!(points.len(), TRADE_OFF_ACCEPTANCES.len());
        let at = |a: f64| {
            points
                .iter()
                .find(|p| (p.accept - a).abs() < 1e-12)
                .unwrap()
        };
        // 0.80 of 4 needs 4 (3.2 rounded up): the threshold is the largest held-out score.
        assert_eq!(at(0.80).threshold, 4.0);
        let p = at(1.0);
        assert_eq!(p.threshold, 4.0);
        // Known 1, 2, 3 accepted (5 is flagged); of them 1 and 3 are classified right.
        assert_eq!(p.known_accepted, 0.75);
        assert_eq!(p.known_accepted_right, 0.5);
        // Unknown: only 5 is above 4.
        assert!((p.unknown_caught - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(p.far_caught, vec![("far".to_string(), 0.0)]);
        assert_eq!(p.score, "S");
    }
}
