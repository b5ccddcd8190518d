//! The calibration stage. Two rules come out of it, and the calibration says which one
//! `predict` and `evaluate` apply ([`Decision`]):
//!
//! * the **acceptance rule** (the default): one score, the min-p combination of energy,
//!   Mahalanobis and KNN p-values against the held-out digits ([`AcceptScore`]), fitted on
//!   training images and held-out digits only, with its threshold set so that a chosen
//!   fraction of held-out digits (by default 99%) is accepted. Synthetic OOD only validates it;
//! * the **report's rule** (section 3.4): a max-softmax threshold chosen on held-out digits and
//!   synthetic OOD that the decoder makes from rotated or heavily occluded digits, plus a
//!   reconstruction-error limit.
//!
//! No test image is used.

use crate::scoring::{score_images, FeatureDepth, ScoredSet};
use crate::{EvalError, Result};
use candle_core::Device;
use ood_calibrate::{
    auroc, roc_curve, threshold_at_id_acceptance, CombinedRule, DetectionStats, Detector,
    Explained, PValueCombination, PValues, RocPoint, Threshold, ThresholdRule,
};
use ood_data::batch::{stream_rng, to_unit_f32};
use ood_data::noise::{corrupt_batch, OodTransform};
use ood_model::OodNet;
use ood_train::{infer, TrainConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file name of a calibration, written beside its checkpoint.
pub const CALIBRATION_FILE: &str = "calibration.json";

const SYNTH_NOISE_STREAM: u64 = 10;
pub(crate) const ID_SCORE_STREAM: u64 = 11;
const OOD_SCORE_STREAM: u64 = 12;
const FIT_SCORE_STREAM: u64 = 13;
const PEN_REFERENCE_STREAM: u64 = 14;
pub(crate) const PEN_SCORE_STREAM: u64 = 15;
const PEN_FIT_STREAM: u64 = 16;
const PEN_FIT_SCORE_STREAM: u64 = 17;

/// Which rule `predict` and `evaluate` apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The report's rule: max softmax below its threshold or reconstruction error above its.
    /// (The default of calibration files written before the acceptance rule existed.)
    #[default]
    Report,
    /// The acceptance rule: the default score above the threshold that accepts the chosen
    /// fraction of held-out digits.
    Accept,
}

/// Neighbours the default score's KNN member counts (Sun et al. 2022, and `bench-ood`'s KNN).
pub const KNN_K: usize = 50;
/// Training rows the default score's KNN member keeps (every other one of the 20,000 it is
/// fitted on by default): what the leave-one-digit-out sweep measured it with, and 6 MB of
/// calibration.
pub const KNN_BANK: usize = 10_000;

/// The score the acceptance rule thresholds (`ood calibrate --score`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AcceptScore {
    /// Min-p of energy, Mahalanobis and KNN: the default.
    #[default]
    #[serde(rename = "energy+mahalanobis+knn")]
    EnergyMahalanobisKnn,
    /// Min-p of energy and Mahalanobis: the default until KNN joined it (the score of
    /// calibrations that do not name one).
    #[serde(rename = "energy+mahalanobis")]
    EnergyMahalanobis,
    /// Min-p of energy, Mahalanobis and KNN with the budget split [`ENERGY_LED_SHARES`]: the
    /// feature members flag only what lies beyond nearly every held-out digit, and energy,
    /// which sees unknown digits, keeps most of the held-out rejections.
    #[serde(rename = "energy-led")]
    EnergyLed,
}

/// The budget of `--score energy-led`: energy, Mahalanobis, KNN. The lever study's estimate
/// (`docs/results.md`) gave the feature members p < 0.002 each of a 1% budget, about a fifth
/// each; chosen before any test set was scored with it.
pub const ENERGY_LED_SHARES: [f64; 3] = [3.0, 1.0, 1.0];

impl AcceptScore {
    /// Every choice, by its name on the command line.
    pub const ALL: [AcceptScore; 3] = [
        AcceptScore::EnergyMahalanobisKnn,
        AcceptScore::EnergyMahalanobis,
        AcceptScore::EnergyLed,
    ];

    /// The name `--score` takes.
    pub fn name(self) -> &'static str {
        match self {
            AcceptScore::EnergyMahalanobisKnn => "energy+mahalanobis+knn",
            AcceptScore::EnergyMahalanobis => "energy+mahalanobis",
            AcceptScore::EnergyLed => "energy-led",
        }
    }

    /// The score, unfitted.
    pub fn combination(self) -> PValueCombination {
        self.combination_with_bank(KNN_BANK)
    }

    /// [`AcceptScore::combination`] with a KNN member that keeps `knn_bank` training rows
    /// (`ood calibrate --knn-bank`; scores without a KNN member ignore it).
    pub fn combination_with_bank(self, knn_bank: usize) -> PValueCombination {
        match self {
            AcceptScore::EnergyMahalanobisKnn => {
                PValueCombination::energy_mahalanobis_knn(KNN_K, knn_bank)
            }
            AcceptScore::EnergyMahalanobis => PValueCombination::energy_mahalanobis(),
            AcceptScore::EnergyLed => PValueCombination::energy_mahalanobis_knn(KNN_K, knn_bank)
                .with_budget(&ENERGY_LED_SHARES)
                .expect("three shares for three members"),
        }
    }
}

impl std::str::FromStr for AcceptScore {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|a| a.name()).collect();
                format!("unknown score {s:?}: use {}", names.join(" or "))
            })
    }
}

fn legacy_score() -> AcceptScore {
    AcceptScore::EnergyMahalanobis
}

/// How to calibrate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationConfig {
    /// The rule that picks the max-softmax threshold on the calibration ROC curve.
    pub msp_rule: ThresholdRule,
    /// Use the reconstruction error as a second test (models trained with a decoder).
    pub use_reconstruction: bool,
    /// Fraction of held-out digits the reconstruction test alone must accept.
    pub recon_id_acceptance: f64,
    pub batch_size: usize,
    /// The rule in force.
    #[serde(default)]
    pub decision: Decision,
    /// Fraction of held-out digits the acceptance rule accepts.
    #[serde(default = "default_accept")]
    pub accept: f64,
    /// Training images the feature detectors (Mahalanobis, KNN's bank) are fitted on.
    #[serde(default = "default_fit_limit")]
    pub fit_limit: usize,
    /// The acceptance rule's score.
    #[serde(default = "legacy_score")]
    pub score: AcceptScore,
    /// Which of the acceptance rule's references also hold a restyled copy of each held-out
    /// digit ([`reference_pens`]); read from `false` / `true` in calibrations made before the
    /// feature-members-only choice.
    #[serde(default, deserialize_with = "ReferencePens::deserialize_compat")]
    pub reference_pens: ReferencePens,
    /// The features the rule's feature members (Mahalanobis, KNN) read (every stage's in
    /// calibrations made before the option; the rule's own `features` is what it applies).
    #[serde(default = "crate::scoring::default_feature_depth")]
    pub features: FeatureDepth,
    /// Fit the feature members on the training images and a copy of each restyled by
    /// [`reference_pens`], so that their class means, covariance and KNN bank hold digits in
    /// other pens too (false in calibrations made before the option).
    #[serde(default)]
    pub fit_pens: bool,
    /// Training rows the KNN member keeps ([`KNN_BANK`] in calibrations made before the
    /// option): its neighbour search is a quarter of the served model's time at 10,000.
    #[serde(default = "default_knn_bank")]
    pub knn_bank: usize,
    /// How the rule's members read their references: the conformal step, or smoothed so
    /// that the score ranks samples beyond the last held-out digit instead of tying them
    /// (the step in calibrations made before the option).
    #[serde(default)]
    pub p_values: PValues,
}

/// Which references of the acceptance rule hold the held-out digits restyled by another pen
/// as well as the digits as MNIST has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReferencePens {
    /// None: every reference is the held-out digits as MNIST has them.
    #[default]
    Off,
    /// Every member's and the threshold's: "accepts 99% of held-out digits" then holds for
    /// digits drawn with other pens too, but every member, energy included, grows more lenient.
    All,
    /// The feature members' (Mahalanobis, KNN) alone; energy and the threshold keep the
    /// digits as MNIST has them. The feature members read the pen (stroke width and texture
    /// live in the shallow features), so they are told what digits look like in other pens
    /// and flag only what is unlike a digit in any pen; the threshold still accepts 99% of
    /// the held-out digits, so the budget they no longer spend on MNIST's digits goes to
    /// energy.
    Features,
}

impl ReferencePens {
    pub const ALL: [ReferencePens; 3] = [
        ReferencePens::Off,
        ReferencePens::All,
        ReferencePens::Features,
    ];

    /// The name `--reference-pens` takes.
    pub fn name(self) -> &'static str {
        match self {
            ReferencePens::Off => "off",
            ReferencePens::All => "all",
            ReferencePens::Features => "features",
        }
    }

    /// Reads the choice, or the `true` / `false` that calibrations stored before it existed.
    fn deserialize_compat<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Flag(bool),
            Named(ReferencePens),
        }
        Ok(match Stored::deserialize(deserializer)? {
            Stored::Flag(false) => ReferencePens::Off,
            Stored::Flag(true) => ReferencePens::All,
            Stored::Named(pens) => pens,
        })
    }
}

impl std::str::FromStr for ReferencePens {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown reference pens {s:?}: use off, all or features"))
    }
}

/// The restyling of the held-out digits' second copy under `reference_pens`: each redrawn as
/// the drawing page sends a digit (enlarged, binarised, the pen widened or narrowed, prepared
/// as `ood serve` prepares a drawing), so that the references hold the digits the page will
/// send; the training restylings that no page makes (blur, elastic distortion) are left out.
pub fn reference_pens() -> ood_data::pen::PenConfig {
    use ood_data::pen::{PenConfig, PenEffect};
    PenConfig {
        canvas: 1.0,
        ..PenConfig::default()
    }
    .only(&[PenEffect::Canvas])
}

/// The restyled copies of the held-out digits that `reference_pens` adds to the references
/// (seeded by the training seed, so calibration and evaluation make the same ones).
pub(crate) fn restyled_references(pixels: &[f32], side: usize, seed: u64) -> Vec<f32> {
    restyled_copies(pixels, side, seed, PEN_REFERENCE_STREAM)
}

/// A copy of each image restyled by [`reference_pens`], drawn from its own seeded stream.
fn restyled_copies(pixels: &[f32], side: usize, seed: u64, stream: u64) -> Vec<f32> {
    let mut restyled = pixels.to_vec();
    let mut rng = stream_rng(seed, stream, 0);
    ood_data::pen::restyle_batch(&mut restyled, side, &reference_pens(), &mut rng);
    restyled
}

fn default_accept() -> f64 {
    0.99
}

fn default_fit_limit() -> usize {
    20_000
}

fn default_knn_bank() -> usize {
    KNN_BANK
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        Self {
            msp_rule: ThresholdRule::BestAccuracy,
            use_reconstruction: true,
            recon_id_acceptance: 0.99,
            batch_size: 500,
            decision: Decision::Accept,
            accept: default_accept(),
            fit_limit: default_fit_limit(),
            score: AcceptScore::default(),
            reference_pens: ReferencePens::Off,
            features: crate::scoring::default_feature_depth(),
            fit_pens: false,
            knn_bank: default_knn_bank(),
            p_values: PValues::Step,
        }
    }
}

/// A calibrated detector, tied to one checkpoint by its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub checkpoint_sha256: String,
    pub checkpoint_file: String,
    pub config: CalibrationConfig,
    /// The decision rule: OOD when max-softmax < its threshold or reconstruction error > its.
    pub rule: CombinedRule,
    /// The max-softmax threshold alone on the calibration set (as an OOD score `-msp`).
    pub msp_threshold: Threshold,
    /// The combined rule on the calibration set.
    pub calibration_stats: DetectionStats,
    pub auroc_msp: f64,
    pub auroc_recon: f64,
    /// ROC of the max-softmax score on the calibration set (OOD score `-msp`), thinned.
    pub roc_msp: Vec<RocPoint>,
    pub n_in_distribution: usize,
    pub n_synthetic_ood: usize,
    /// The transforms that made the synthetic OOD, in turn over the held-out digits.
    pub ood_transforms: Vec<String>,
    pub producer: String,
    /// The acceptance rule (absent from calibrations made before it existed).
    #[serde(default)]
    pub accept_rule: Option<AcceptRule>,
}

/// The acceptance rule: OOD when the default score exceeds the threshold that accepts the
/// fraction `accept` of the held-out digits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcceptRule {
    /// The fraction of held-out digits asked to be accepted.
    pub accept: f64,
    /// The score, fitted on training images and referenced to the held-out digits.
    pub score: PValueCombination,
    /// OOD when the score is above it.
    pub threshold: f64,
    /// The fraction of held-out digits it accepts (at least `accept`; more on ties).
    pub held_out_accepted: f64,
    /// The fraction of the synthetic OOD it flags: a check, not used to fit anything.
    pub synthetic_flagged: f64,
    /// AUROC of the score on the calibration set (held-out digits against synthetic OOD).
    pub synthetic_auroc: f64,
    /// Training images the score's feature detectors were fitted on.
    pub n_fit: usize,
    /// The features its feature detector reads.
    #[serde(default)]
    pub features: FeatureDepth,
    /// How many of the held-out references are restyled copies (`reference_pens`).
    #[serde(default)]
    pub n_restyled: usize,
    /// Whether only the feature members' references hold the restyled copies
    /// ([`ReferencePens::Features`]); see [`AcceptRule::reference_pens`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restyled_for_features_only: bool,
    /// The restyling those copies were made with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_pen: Option<ood_data::pen::PenConfig>,
}

impl AcceptRule {
    /// Fits `score` on `fit` (training images and their class indices), its feature members
    /// reading `features`, references it to the held-out digits (and, as `pens` says, to
    /// `restyled`, a restyled copy of each) and sets its threshold on the threshold's
    /// references alone.
    #[allow(clippy::too_many_arguments)]
    pub fn fit(
        score: AcceptScore,
        knn_bank: usize,
        p_values: PValues,
        features: FeatureDepth,
        fit: &ScoredSet,
        fit_labels: &[usize],
        held_out: &ScoredSet,
        restyled: Option<&ScoredSet>,
        pens: ReferencePens,
        synthetic: &ScoredSet,
        accept: f64,
    ) -> Result<Self> {
        let has_knn = matches!(
            score,
            AcceptScore::EnergyMahalanobisKnn | AcceptScore::EnergyLed
        );
        if has_knn && knn_bank < KNN_K {
            return Err(EvalError::Calibration(format!(
                "a KNN bank of {knn_bank} rows cannot hold the {KNN_K} neighbours the score {} \
                 reads: keep at least {KNN_K} (--knn-bank)",
                score.name()
            )));
        }
        if has_knn && fit.len() < KNN_K {
            return Err(EvalError::Calibration(format!(
                "the score {} needs at least {KNN_K} training images for its KNN member, and the \
                 model's training set has {}: train on more images, or calibrate with --score {}",
                score.name(),
                fit.len(),
                AcceptScore::EnergyMahalanobis.name()
            )));
        }
        let restyled = restyled.filter(|_| pens != ReferencePens::Off);
        if pens != ReferencePens::Off && restyled.is_none() {
            return Err(EvalError::Calibration(format!(
                "reference pens {:?} without the restyled held-out digits",
                pens.name()
            )));
        }
        let mut score = score
            .combination_with_bank(knn_bank)
            .with_p_values(p_values);
        score.fit(&fit.samples(features)?, fit_labels)?;
        // The threshold's references: the held-out digits, with their restyled copies
        // (a copy of the set, made only then) when every member is referenced to them.
        let with_restyled;
        let threshold_set = match (pens, restyled) {
            (ReferencePens::All, Some(r)) => {
                let mut both = held_out.clone();
                both.append(r.clone());
                with_restyled = both;
                &with_restyled
            }
            _ => held_out,
        };
        match (pens, restyled) {
            (ReferencePens::Features, Some(r)) => score.fit_reference_widened(
                &held_out.samples(features)?,
                Some(&r.samples(features)?),
                |m| m.reads_features(),
            )?,
            _ => score.fit_reference(&threshold_set.samples(features)?)?,
        }
        let id = score.score(&threshold_set.samples(features)?)?;
        let ood = score.score(&synthetic.samples(features)?)?;
        let threshold = threshold_at_id_acceptance(&id, accept)?;
        let share = |s: &[f64], flagged: bool| {
            s.iter().filter(|&&x| (x > threshold) == flagged).count() as f64 / s.len().max(1) as f64
        };
        Ok(Self {
            accept,
            threshold,
            held_out_accepted: share(&id, false),
            synthetic_flagged: share(&ood, true),
            synthetic_auroc: auroc(&id, &ood)?,
            n_fit: fit.len(),
            score,
            features,
            n_restyled: restyled.map_or(0, ScoredSet::len),
            restyled_for_features_only: pens == ReferencePens::Features,
            reference_pen: restyled.map(|_| reference_pens()),
        })
    }

    /// Which references hold the restyled copies (a rule from before the feature-members-only
    /// choice that has any held them in every reference).
    pub fn reference_pens(&self) -> ReferencePens {
        match (self.n_restyled, self.restyled_for_features_only) {
            (0, _) => ReferencePens::Off,
            (_, true) => ReferencePens::Features,
            (_, false) => ReferencePens::All,
        }
    }

    /// The score of every image of a set.
    pub fn scores(&self, set: &ScoredSet) -> Result<Vec<f64>> {
        Ok(self.score.score(&set.samples(self.features)?)?)
    }

    /// The score of every image with its parts (each member's raw score and p-value).
    pub fn explain(&self, set: &ScoredSet) -> Result<Vec<Explained>> {
        Ok(self.score.explain(&set.samples(self.features)?)?)
    }
}

impl Calibration {
    /// The rule in force, in words.
    pub fn describe(&self) -> String {
        match (self.config.decision, &self.accept_rule) {
            (Decision::Accept, Some(a)) => {
                // -ln(min p / w) > t is p_i < w_i exp(-t) for some member: its p-value limit.
                let in_p = match a.score.p_limits(a.threshold) {
                    Some(limits) if limits.windows(2).all(|w| w[0] == w[1]) => {
                        format!(", i.e. when a p-value is below {:.4}", limits[0])
                    }
                    Some(limits) => {
                        let each: Vec<String> = a
                            .score
                            .members()
                            .iter()
                            .zip(&limits)
                            .enumerate()
                            .map(|(i, (m, l))| {
                                let is = if i == 0 { " is" } else { "" };
                                format!("{}{is} below {l:.4}", m.detector().name())
                            })
                            .collect();
                        format!(", i.e. when the p-value of {}", each.join(" or of "))
                    }
                    None => String::new(),
                };
                let mut restyled = match a.reference_pens() {
                    ReferencePens::Off => "",
                    ReferencePens::All => ", each also restyled by another pen",
                    ReferencePens::Features => {
                        "; the feature members' references also hold each restyled by another pen"
                    }
                }
                .to_string();
                if self.config.fit_pens {
                    restyled += "; the feature members fitted on training digits in other pens too";
                }
                format!(
                    "OOD when {} > {:.4}{in_p} (accepts {:.2}% of held-out digits{restyled})",
                    a.score.name(),
                    a.threshold,
                    100.0 * a.held_out_accepted
                )
            }
            _ => format!("{} (the report's rule)", self.report_rule_text()),
        }
    }

    /// The report's rule in words: "OOD when max softmax < t or reconstruction error > e".
    pub fn report_rule_text(&self) -> String {
        let recon = self
            .rule
            .recon_threshold
            .map_or("off".into(), |t| format!("> {t:.5}"));
        format!(
            "OOD when max softmax < {:.4} or reconstruction error {recon}",
            self.rule.msp_threshold
        )
    }

    /// Which images of a set the rule in force flags as OOD.
    pub fn flags(&self, set: &ScoredSet) -> Result<Vec<bool>> {
        Ok(self.explain(set)?.into_iter().map(|d| d.unknown).collect())
    }

    /// Whether the rule in force looks at the reconstruction error (of a noised copy, which
    /// costs a second trunk pass per image): the report's rule with its reconstruction test,
    /// or an acceptance rule with a reconstruction member.
    pub fn reads_reconstruction_error(&self) -> bool {
        match (self.config.decision, &self.accept_rule) {
            (Decision::Accept, Some(a)) => a
                .score
                .members()
                .iter()
                .any(|m| matches!(m, ood_calibrate::Member::Reconstruction(_))),
            _ => self.rule.recon_threshold.is_some(),
        }
    }

    /// The decision on every image of a set, with what it rests on: each value the rule
    /// looks at, with its threshold or p-value.
    pub fn explain(&self, set: &ScoredSet) -> Result<Vec<DecisionDetail>> {
        match (self.config.decision, &self.accept_rule) {
            (Decision::Accept, Some(a)) => {
                let limits = a.score.p_limits(a.threshold);
                Ok(a.explain(set)?
                    .into_iter()
                    .map(|e| DecisionDetail {
                        unknown: e.score > a.threshold,
                        parts: std::iter::once(Part {
                            name: a.score.name(),
                            value: e.score,
                            threshold: Some(a.threshold),
                            flagged_above: true,
                            p_value: None,
                            p_limit: None,
                        })
                        .chain(e.members.into_iter().enumerate().map(
                            |(i, (name, value, p))| Part {
                                name,
                                value,
                                threshold: None,
                                flagged_above: true,
                                p_value: Some(p),
                                p_limit: limits.as_ref().map(|l| l[i]),
                            },
                        ))
                        .collect(),
                    })
                    .collect())
            }
            (Decision::Accept, None) => Err(EvalError::Calibration(format!(
                "the calibration of {} asks for the acceptance rule but holds none: calibrate again",
                self.checkpoint_file
            ))),
            (Decision::Report, _) => Ok(set
                .msp
                .iter()
                .zip(&set.recon_error)
                .map(|(&m, &e)| DecisionDetail {
                    unknown: self.rule.is_ood(m, e),
                    parts: vec![
                        Part {
                            name: "max softmax".into(),
                            value: m,
                            threshold: Some(self.rule.msp_threshold),
                            flagged_above: false,
                            p_value: None,
                            p_limit: None,
                        },
                        Part {
                            name: "reconstruction error".into(),
                            value: e,
                            threshold: self.rule.recon_threshold,
                            flagged_above: true,
                            p_value: None,
                            p_limit: None,
                        },
                    ],
                })
                .collect()),
        }
    }
}

/// One decision and what it rests on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionDetail {
    /// Flagged as OOD.
    pub unknown: bool,
    /// The rule's score first (acceptance rule) or its two tests (report's rule).
    pub parts: Vec<Part>,
}

/// A value a decision looks at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    pub name: String,
    pub value: f64,
    /// The threshold the value is compared with, when it is compared with one.
    pub threshold: Option<f64>,
    /// Whether values above the threshold (else below) count as OOD.
    pub flagged_above: bool,
    /// The p-value against the held-out digits, for a member of the default score.
    pub p_value: Option<f64>,
    /// The p-value below which this member flags the input (min-p members; each member has
    /// its own under a weighted budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_limit: Option<f64>,
}

/// The calibration set's scores, kept for figures.
pub struct CalibrationSet {
    pub in_distribution: ScoredSet,
    pub synthetic_ood: ScoredSet,
    /// The held-out digits and the synthetic OOD images, f32 in [0, 1].
    pub id_pixels: Vec<f32>,
    pub synthetic_pixels: Vec<f32>,
}

/// Synthetic OOD from in-distribution images: transform `i % transforms.len()` applied to
/// image `i`, noised as in training, and passed through the decoder.
pub fn synthesize_ood(
    nets: &[OodNet],
    pixels: &[f32],
    transforms: &[OodTransform],
    train: &TrainConfig,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<f32>> {
    let side = nets[0].config.image_size;
    let mut rng = stream_rng(train.seed, SYNTH_NOISE_STREAM, 0);
    let mut transformed = Vec::with_capacity(pixels.len());
    for (i, img) in pixels.chunks_exact(side * side).enumerate() {
        transformed.extend(transforms[i % transforms.len()].apply(img, side, side, &mut rng));
    }
    corrupt_batch(&mut transformed, side, side, &train.noise, &mut rng);
    Ok(infer(nets, &transformed, None, true, batch_size, device)?.reconstructions)
}

/// Keeps at most `max` points of a curve, always the first and the last.
pub fn thin<T: Clone>(points: &[T], max: usize) -> Vec<T> {
    if points.len() <= max || max < 2 {
        return points.to_vec();
    }
    let step = (points.len() - 1) as f64 / (max - 1) as f64;
    (0..max)
        .map(|i| points[(i as f64 * step).round() as usize].clone())
        .collect()
}

/// Calibrates `nets` (one model, or an ensemble) on the validation hold-out of its training split; `fit` are training
/// images of the known classes (the first `config.fit_limit` are used).
#[allow(clippy::too_many_arguments)]
pub fn calibrate(
    nets: &[OodNet],
    train: &TrainConfig,
    fit: &ood_data::LabeledImages,
    validation: &ood_data::LabeledImages,
    checkpoint: &Path,
    config: &CalibrationConfig,
    device: &Device,
) -> Result<(Calibration, CalibrationSet)> {
    let transforms = OodTransform::REPORT;
    let id_pixels = to_unit_f32(validation);
    let ood_pixels = synthesize_ood(
        nets,
        &id_pixels,
        &transforms,
        train,
        config.batch_size,
        device,
    )?;
    let id = score_images(
        nets,
        &id_pixels,
        &train.noise,
        train.seed,
        ID_SCORE_STREAM,
        config.batch_size,
        device,
    )?;
    let ood = score_images(
        nets,
        &ood_pixels,
        &train.noise,
        train.seed,
        OOD_SCORE_STREAM,
        config.batch_size,
        device,
    )?;
    let classes = train.classes();
    let fit = fit.clone().truncated(Some(config.fit_limit));
    let mut fit_labels = fit
        .labels
        .iter()
        .map(|&l| {
            classes.class_index(l).ok_or_else(|| {
                EvalError::Calibration(format!("fit image label {l} is not a known class"))
            })
        })
        .collect::<Result<Vec<usize>>>()?;
    let fit_pixels = to_unit_f32(&fit);
    let mut fit_set = score_images(
        nets,
        &fit_pixels,
        &train.noise,
        train.seed,
        FIT_SCORE_STREAM,
        config.batch_size,
        device,
    )?;
    if config.fit_pens {
        let side = nets[0].config.image_size;
        fit_set.append(score_images(
            nets,
            &restyled_copies(&fit_pixels, side, train.seed, PEN_FIT_STREAM),
            &train.noise,
            train.seed,
            PEN_FIT_SCORE_STREAM,
            config.batch_size,
            device,
        )?);
        fit_labels.extend_from_within(..);
    }
    let restyled = match config.reference_pens {
        ReferencePens::Off => None,
        ReferencePens::All | ReferencePens::Features => Some(score_images(
            nets,
            &restyled_references(&id_pixels, nets[0].config.image_size, train.seed),
            &train.noise,
            train.seed,
            PEN_SCORE_STREAM,
            config.batch_size,
            device,
        )?),
    };
    let accept_rule = AcceptRule::fit(
        config.score,
        config.knn_bank,
        config.p_values,
        config.features,
        &fit_set,
        &fit_labels,
        &id,
        restyled.as_ref(),
        config.reference_pens,
        &ood,
        config.accept,
    )?;
    let use_recon = config.use_reconstruction && train.train_decoder;
    let rule = CombinedRule::calibrate(
        &id.msp,
        &ood.msp,
        config.msp_rule,
        use_recon.then_some(id.recon_error.as_slice()),
        config.recon_id_acceptance,
    )?;
    let (id_s, ood_s) = (id.msp_ood_score(), ood.msp_ood_score());
    let calibration = Calibration {
        checkpoint_sha256: crate::model_sha256(checkpoint)?,
        checkpoint_file: checkpoint.display().to_string(),
        config: config.clone(),
        rule,
        msp_threshold: config.msp_rule.choose(&id_s, &ood_s)?,
        calibration_stats: rule.evaluate(
            &id.msp,
            Some(&id.recon_error),
            &ood.msp,
            Some(&ood.recon_error),
        )?,
        auroc_msp: auroc(&id_s, &ood_s)?,
        auroc_recon: auroc(&id.recon_error, &ood.recon_error)?,
        roc_msp: thin(&roc_curve(&id_s, &ood_s)?, 200),
        n_in_distribution: id.len(),
        n_synthetic_ood: ood.len(),
        ood_transforms: transforms.iter().map(|t| t.name()).collect(),
        producer: concat!("candle-ood ", env!("CARGO_PKG_VERSION")).to_string(),
        accept_rule: Some(accept_rule),
    };
    Ok((
        calibration,
        CalibrationSet {
            in_distribution: id,
            synthetic_ood: ood,
            id_pixels,
            synthetic_pixels: ood_pixels,
        },
    ))
}

/// The default place of a model's calibration: beside a checkpoint file, inside an ensemble
/// folder.
pub fn default_calibration_path(checkpoint: &Path) -> PathBuf {
    if checkpoint.is_dir() {
        checkpoint.join(CALIBRATION_FILE)
    } else {
        checkpoint.with_file_name(CALIBRATION_FILE)
    }
}

/// Writes the calibration as pretty JSON, atomically.
pub fn write_calibration(path: &Path, calibration: &Calibration) -> Result<()> {
    let text = serde_json::to_string_pretty(calibration).expect("the calibration serialises");
    ood_data::atomic::write_atomic(path, text.as_bytes())
        .map_err(|e| EvalError::Io(path.to_path_buf(), e))
}

/// Reads a calibration and checks that it was made for `checkpoint`.
pub fn read_calibration(path: &Path, checkpoint: &Path) -> Result<Calibration> {
    read_calibration_for(path, checkpoint, &crate::model_sha256(checkpoint)?)
}

/// [`read_calibration`] for a model whose SHA-256 is already known (it was just loaded).
pub fn read_calibration_for(
    path: &Path,
    checkpoint: &Path,
    checkpoint_sha256: &str,
) -> Result<Calibration> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        EvalError::Calibration(format!(
            "{}: {e} (run `ood calibrate {}` first)",
            path.display(),
            checkpoint.display()
        ))
    })?;
    parse_calibration(&text, path, checkpoint, checkpoint_sha256)
}

/// Parses a calibration read from `path` (a file, or the name of one embedded in a binary) and
/// checks that it was made for the checkpoint `checkpoint` whose SHA-256 is `checkpoint_sha256`.
pub fn parse_calibration(
    text: &str,
    path: &Path,
    checkpoint: &Path,
    checkpoint_sha256: &str,
) -> Result<Calibration> {
    let calibration: Calibration = serde_json::from_str(text).map_err(|e| {
        EvalError::Calibration(format!("{}: not a calibration file: {e}", path.display()))
    })?;
    let sha = checkpoint_sha256;
    if calibration.checkpoint_sha256 != sha {
        return Err(EvalError::Calibration(format!(
            "{} was made for another checkpoint (sha256 {}), not {} (sha256 {sha}): calibrate this checkpoint again",
            path.display(),
            calibration.checkpoint_sha256,
            checkpoint.display()
        )));
    }
    Ok(calibration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_score_is_named_alike_on_the_command_line_and_in_files() {
        for score in AcceptScore::ALL {
            assert_eq!(score.name().parse::<AcceptScore>(), Ok(score));
            assert_eq!(
                serde_json::to_value(score).unwrap(),
                serde_json::json!(score.name())
            );
        }
        let err = "energy".parse::<AcceptScore>().unwrap_err();
        assert!(err.contains("energy+mahalanobis+knn"), "{err}");
        assert_eq!(
            AcceptScore::default().combination().name(),
            format!("MinP[Energy(T=1)+Mahalanobis+KNN(k={KNN_K})]")
        );
    }

    #[test]
    fn a_configuration_that_names_no_knn_bank_kept_the_default_bank() {
        let mut config = serde_json::to_value(CalibrationConfig {
            knn_bank: 2_500,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config["knn_bank"], 2_500);
        config.as_object_mut().unwrap().remove("knn_bank");
        let old: CalibrationConfig = serde_json::from_value(config).unwrap();
        assert_eq!(old.knn_bank, KNN_BANK);
    }

    #[test]
    fn a_configuration_that_names_no_p_values_kept_the_step() {
        let mut config = serde_json::to_value(CalibrationConfig {
            p_values: PValues::Smooth,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config["p_values"], "smooth");
        config.as_object_mut().unwrap().remove("p_values");
        let old: CalibrationConfig = serde_json::from_value(config).unwrap();
        assert_eq!(old.p_values, PValues::Step);
    }

    #[test]
    fn a_configuration_that_names_no_score_had_the_earlier_default() {
        let mut config = serde_json::to_value(CalibrationConfig::default()).unwrap();
        assert_eq!(config["score"], "energy+mahalanobis+knn");
        config.as_object_mut().unwrap().remove("score");
        let old: CalibrationConfig = serde_json::from_value(config).unwrap();
        assert_eq!(old.score, AcceptScore::EnergyMahalanobis);
    }

    #[test]
    fn the_feature_depth_is_named_alike_on_the_command_line_and_in_files() {
        for depth in FeatureDepth::ALL {
            assert_eq!(depth.name().parse::<FeatureDepth>(), Ok(depth));
            assert_eq!(
                serde_json::to_value(depth).unwrap(),
                serde_json::json!(depth.name())
            );
        }
        assert!("deep".parse::<FeatureDepth>().is_err());
        // A configuration from before the option was calibrated on every stage's features.
        let mut config = serde_json::to_value(CalibrationConfig {
            features: FeatureDepth::Last,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config["features"], "last");
        config.as_object_mut().unwrap().remove("features");
        let old: CalibrationConfig = serde_json::from_value(config).unwrap();
        assert_eq!(old.features, FeatureDepth::AllStages);
    }

    #[test]
    fn reference_pens_read_the_flag_of_earlier_calibrations() {
        for pens in ReferencePens::ALL {
            assert_eq!(pens.name().parse::<ReferencePens>(), Ok(pens));
            let config = CalibrationConfig {
                reference_pens: pens,
                ..Default::default()
            };
            let json = serde_json::to_value(&config).unwrap();
            assert_eq!(json["reference_pens"], pens.name());
            let back: CalibrationConfig = serde_json::from_value(json).unwrap();
            assert_eq!(back.reference_pens, pens);
        }
        assert!("some".parse::<ReferencePens>().is_err());
        let mut json = serde_json::to_value(CalibrationConfig::default()).unwrap();
        for (flag, pens) in [(true, ReferencePens::All), (false, ReferencePens::Off)] {
            json["reference_pens"] = serde_json::json!(flag);
            let old: CalibrationConfig = serde_json::from_value(json.clone()).unwrap();
            assert_eq!(old.reference_pens, pens);
        }
        json.as_object_mut().unwrap().remove("reference_pens");
        let older: CalibrationConfig = serde_json::from_value(json).unwrap();
        assert_eq!(older.reference_pens, ReferencePens::Off);
    }
}
