//! The evaluation stage: the calibrated detector on the test set, with the unknown classes as
//! OOD (and optionally a far-OOD set such as Fashion-MNIST).

use crate::calibration::Calibration;
use crate::scoring::{score_images, ScoredSet};
use crate::Result;
use candle_core::Device;
use ood_calibrate::{confusion_matrix, ood_metrics, oscr, OodMetrics};
use ood_data::batch::to_unit_f32;
use ood_data::{ClassSpec, LabeledImages};
use ood_model::OodNet;
use ood_train::TrainConfig;
use serde::{Deserialize, Serialize};

const KNOWN_STREAM: u64 = 20;
const UNKNOWN_STREAM: u64 = 21;
const FAR_STREAM: u64 = 22;

/// Detection metrics of one OOD set against the known test digits, per score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodSetMetrics {
    pub name: String,
    /// Fraction of this set the calibrated rule flags.
    pub flagged: f64,
    pub msp: OodMetrics,
    pub reconstruction: OodMetrics,
}

/// Everything `ood evaluate` measures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub checkpoint_sha256: String,
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
}

/// The scored test sets, kept for figures.
pub struct EvaluationSets {
    pub known: ScoredSet,
    pub known_labels: Vec<u8>,
    pub unknown: ScoredSet,
    pub unknown_labels: Vec<u8>,
    pub far: Vec<(String, ScoredSet)>,
}

fn flagged(calibration: &Calibration, set: &ScoredSet) -> Vec<bool> {
    set.msp
        .iter()
        .zip(&set.recon_error)
        .map(|(&m, &e)| calibration.rule.is_ood(m, e))
        .collect()
}

fn fraction(flags: &[bool]) -> f64 {
    flags.iter().filter(|&&f| f).count() as f64 / flags.len().max(1) as f64
}

fn set_metrics(
    name: &str,
    calibration: &Calibration,
    known: &ScoredSet,
    ood: &ScoredSet,
) -> Result<OodSetMetrics> {
    Ok(OodSetMetrics {
        name: name.to_string(),
        flagged: fraction(&flagged(calibration, ood)),
        msp: ood_metrics(&known.msp_ood_score(), &ood.msp_ood_score())?,
        reconstruction: ood_metrics(&known.recon_error, &ood.recon_error)?,
    })
}

/// Evaluates on the known and unknown test digits and on any `far` sets.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    net: &OodNet,
    train: &TrainConfig,
    calibration: &Calibration,
    test_known: &LabeledImages,
    test_unknown: &LabeledImages,
    far: &[(String, LabeledImages)],
    batch_size: usize,
    device: &Device,
) -> Result<(Evaluation, EvaluationSets)> {
    let classes: ClassSpec = train.classes();
    let score = |d: &LabeledImages, stream: u64| {
        score_images(
            net,
            &to_unit_f32(d),
            &train.noise,
            train.seed,
            stream,
            batch_size,
            device,
        )
    };
    let known = score(test_known, KNOWN_STREAM)?;
    let unknown = score(test_unknown, UNKNOWN_STREAM)?;
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
    let known_flags = flagged(calibration, &known);
    let unknown_flags = flagged(calibration, &unknown);
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

    let mut far_metrics = Vec::new();
    let mut far_sets = Vec::new();
    for (i, (name, data)) in far.iter().enumerate() {
        let set = score(data, FAR_STREAM + i as u64)?;
        far_metrics.push(set_metrics(name, calibration, &known, &set)?);
        far_sets.push((name.clone(), set));
    }
    let evaluation = Evaluation {
        checkpoint_sha256: calibration.checkpoint_sha256.clone(),
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
            &unknown,
        )?,
        far: far_metrics,
        confusion_labels: labels,
        confusion,
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
