//! The OOD benchmark: every detector, measured the same way, on near, far and synthetic OOD
//! sets against the known test digits.

use crate::calibration::{synthesize_ood, AcceptScore, Calibration, KNN_BANK};
use crate::odin::{perturbed_logits, OdinConfig};
use crate::scoring::{score_images, FeatureDepth, ScoredSet};
use crate::{EvalError, Result};
use candle_core::Device;
use ood_calibrate::detectors::{
    standard_detectors, Combined, Detector, Energy, Fused, Knn, Mahalanobis, Msp, Reconstruction,
    Samples, TemperatureMsp,
};
use ood_calibrate::pvalue::{Combine, Member};
use ood_calibrate::{ood_metrics, threshold_at_id_acceptance, OodMetrics, PValueCombination};
use ood_data::batch::{stream_rng, to_unit_f32};
use ood_data::noise::OodTransform;
use ood_data::pen::drawn_digits;
use ood_data::LabeledImages;
use ood_model::OodNet;
use ood_train::TrainConfig;
use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

const FIT_STREAM: u64 = 40;
const ID_STREAM: u64 = 41;
const SET_STREAM: u64 = 42;
const CALIB_ID_STREAM: u64 = 60;
const CALIB_OOD_STREAM: u64 = 61;
const SYNTH_STREAM: u64 = 70;
const DRAWN_STREAM: u64 = 71;

/// The held-out acceptance at which the drawn-digit refusals are compared.
pub const DRAWN_ACCEPTANCE: f64 = 0.99;

/// An OOD set: a name and its images (f32 in [0, 1], 28x28 each).
#[derive(Debug, Clone)]
pub struct OodSet {
    pub name: String,
    pub pixels: Vec<f32>,
}

impl OodSet {
    pub fn from_images(name: &str, data: &LabeledImages) -> Self {
        Self {
            name: name.to_string(),
            pixels: to_unit_f32(data),
        }
    }
}

/// Synthetic OOD sets: Gaussian noise, uniform noise and digits turned a quarter turn.
pub fn synthetic_sets(known_test: &LabeledImages, count: usize, seed: u64) -> Vec<OodSet> {
    let per = known_test.images.pixels_per_image();
    let side = known_test.images.rows;
    let mut rng = stream_rng(seed, SYNTH_STREAM, 0);
    let normal = Normal::new(0.5f32, 0.25).expect("valid");
    let gaussian: Vec<f32> = (0..count * per)
        .map(|_| normal.sample(&mut rng).clamp(0.0, 1.0))
        .collect();
    let uniform: Vec<f32> = (0..count * per).map(|_| rng.random::<f32>()).collect();
    let digits = to_unit_f32(known_test);
    let n = count.min(known_test.len());
    let mut rotated = Vec::with_capacity(n * per);
    for img in digits.chunks_exact(per).take(n) {
        rotated.extend(OodTransform::Rotate90.apply(img, side, side, &mut rng));
    }
    vec![
        OodSet {
            name: "Gaussian noise".into(),
            pixels: gaussian,
        },
        OodSet {
            name: "uniform noise".into(),
            pixels: uniform,
        },
        OodSet {
            name: "rotated digits".into(),
            pixels: rotated,
        },
    ]
}

/// How to run the benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchConfig {
    /// Training images used to fit the feature-based detectors (Mahalanobis, KNN).
    pub fit_limit: usize,
    pub odin: OdinConfig,
    pub knn_k: usize,
    pub batch_size: usize,
    /// The features every feature detector reads (every stage's in results written before
    /// the option).
    #[serde(default = "crate::scoring::default_feature_depth")]
    pub features: FeatureDepth,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            fit_limit: 20_000,
            odin: OdinConfig::default(),
            knn_k: 50,
            batch_size: 500,
            features: crate::scoring::default_feature_depth(),
        }
    }
}

/// One detector on one OOD set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchRow {
    pub detector: String,
    pub ood_set: String,
    #[serde(flatten)]
    pub metrics: OodMetrics,
}

/// The benchmark's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    pub checkpoint_sha256: String,
    pub closed_set_accuracy: f64,
    pub n_in_distribution: usize,
    pub ood_sets: Vec<(String, usize)>,
    pub detectors: Vec<String>,
    pub rows: Vec<BenchRow>,
    /// The name of the default score among `detectors` (empty in results written before
    /// this field existed).
    #[serde(default)]
    pub default_score: String,
    pub config: BenchConfig,
    pub seconds: f64,
    /// Per detector, with its threshold accepting [`DRAWN_ACCEPTANCE`] of the held-out digits:
    /// the known test digits it refuses, as MNIST has them and redrawn as the drawing page
    /// sends them (`ood_data::pen`). Empty in results written before this field existed.
    #[serde(default)]
    pub drawn_refusals: Vec<DrawnRefusal>,
}

/// One detector's refusals of valid digits, as MNIST has them and as drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrawnRefusal {
    pub detector: String,
    /// Known test digits refused.
    pub test_refused: f64,
    /// The same digits redrawn, refused.
    pub drawn_refused: f64,
}

/// Runs every detector. `fit` are known-class training images (for Mahalanobis and KNN),
/// `validation` the calibration hold-out (for the fused detector), `known_test` the
/// in-distribution test set.
#[allow(clippy::too_many_arguments)]
pub fn bench_ood(
    nets: &[OodNet],
    train: &TrainConfig,
    calibration: &Calibration,
    fit: &LabeledImages,
    validation: &LabeledImages,
    known_test: &LabeledImages,
    ood_sets: &[OodSet],
    config: &BenchConfig,
    device: &Device,
) -> Result<BenchResult> {
    let started = std::time::Instant::now();
    let classes = train.classes();
    let score = |pixels: &[f32], stream: u64| {
        score_images(
            nets,
            pixels,
            &train.noise,
            train.seed,
            stream,
            config.batch_size,
            device,
        )
    };
    let fit = fit.clone().truncated(Some(config.fit_limit));
    let fit_labels: Vec<usize> = fit
        .labels
        .iter()
        .map(|&l| classes.class_index(l).expect("known"))
        .collect();
    let fit_set = score(&to_unit_f32(&fit), FIT_STREAM)?;
    let id = score(&to_unit_f32(known_test), ID_STREAM)?;
    let truth: Vec<usize> = known_test
        .labels
        .iter()
        .map(|&l| classes.class_index(l).expect("known"))
        .collect();
    let closed = id
        .predictions
        .iter()
        .zip(&truth)
        .filter(|(p, t)| p == t)
        .count() as f64
        / truth.len().max(1) as f64;
    let sets: Vec<ScoredSet> = ood_sets
        .iter()
        .enumerate()
        .map(|(i, s)| score(&s.pixels, SET_STREAM + i as u64))
        .collect::<Result<_>>()?;

    // Calibration set for the fused detector: held-out digits and synthetic OOD, as in calibration.
    let val_pixels = to_unit_f32(validation);
    let synth = synthesize_ood(
        nets,
        &val_pixels,
        &OodTransform::REPORT,
        train,
        config.batch_size,
        device,
    )?;
    let calib_id = score(&val_pixels, CALIB_ID_STREAM)?;
    let calib_ood = score(&synth, CALIB_OOD_STREAM)?;

    let mut detectors: Vec<Box<dyn Detector>> = standard_detectors();
    detectors.push(Box::new(Combined(calibration.rule)));
    let fit_samples = fit_set.samples(config.features)?;
    for d in detectors.iter_mut() {
        d.fit(&fit_samples, &fit_labels)?;
    }
    let mut fused = Fused::new(vec![
        Box::new(Msp),
        Box::new(Energy::default()),
        Box::new(Mahalanobis::new()),
        Box::new(Knn::new(config.knn_k)),
        Box::new(Reconstruction),
    ]);
    fused.fit(&fit_samples, &fit_labels)?;
    fused.fit_fused(
        &calib_id.samples(config.features)?,
        &calib_ood.samples(config.features)?,
    )?;
    detectors.push(Box::new(fused));
    // The default score first, then its alternatives: fitted on training images, referenced
    // to the held-out digits.
    let held_out = calib_id.samples(config.features)?;
    let default_score = AcceptScore::default().combination();
    let default_name = default_score.name();
    for mut combination in [
        default_score,
        AcceptScore::EnergyMahalanobis.combination(),
        AcceptScore::EnergyLed.combination(),
        PValueCombination::new(
            vec![
                Member::Energy(Energy::default()),
                Member::Knn(Knn::new(config.knn_k).with_max_bank(KNN_BANK, 0)),
            ],
            Combine::MinP,
        ),
    ] {
        combination.fit(&fit_samples, &fit_labels)?;
        combination.fit_reference(&held_out)?;
        detectors.push(Box::new(combination));
    }

    let mut rows = Vec::new();
    let id_samples = id.samples(config.features)?;
    let id_scores: Vec<Vec<f64>> = detectors
        .iter()
        .map(|d| d.score(&id_samples))
        .collect::<Result<_, _>>()?;
    // Valid digits in another pen: what each detector refuses at the held-out acceptance.
    let side = nets[0].config.image_size;
    let drawn = score(&drawn_digits(&to_unit_f32(known_test), side), DRAWN_STREAM)?;
    let drawn_samples = drawn.samples(config.features)?;
    let share_above = |scores: &[f64], t: f64| {
        scores.iter().filter(|&&s| s > t).count() as f64 / scores.len().max(1) as f64
    };
    let mut drawn_refusals = Vec::new();
    for (d, id_s) in detectors.iter().zip(&id_scores) {
        // The report's rule scores 0 or 1: it has no threshold to move to an acceptance.
        if d.name() == "Combined" {
            continue;
        }
        // (The fused detector was fitted on these held-out digits, so its threshold is set on
        // its own training data.)
        let t = threshold_at_id_acceptance(&d.score(&held_out)?, DRAWN_ACCEPTANCE)?;
        drawn_refusals.push(DrawnRefusal {
            detector: d.name(),
            test_refused: share_above(id_s, t),
            drawn_refused: share_above(&d.score(&drawn_samples)?, t),
        });
    }
    // ODIN: temperature-scaled max softmax of the perturbed images.
    let odin = TemperatureMsp {
        temperature: config.odin.temperature,
    };
    let odin_scores = |pixels: &[f32]| -> Result<Vec<f64>> {
        let logits = perturbed_logits(nets, pixels, &config.odin, config.batch_size, device)?;
        Ok(odin.score(&Samples::new(
            &logits,
            &[],
            &[],
            nets[0].config.num_classes,
            0,
        )?)?)
    };
    let odin_id = odin_scores(&to_unit_f32(known_test))?;
    let odin_name = format!(
        "ODIN(T={}, eps={})",
        config.odin.temperature, config.odin.epsilon
    );
    for (set, scored) in ood_sets.iter().zip(&sets) {
        let s = scored.samples(config.features)?;
        for (d, id_s) in detectors.iter().zip(&id_scores) {
            rows.push(BenchRow {
                detector: d.name(),
                ood_set: set.name.clone(),
                metrics: ood_metrics(id_s, &d.score(&s)?)?,
            });
        }
        rows.push(BenchRow {
            detector: odin_name.clone(),
            ood_set: set.name.clone(),
            metrics: ood_metrics(&odin_id, &odin_scores(&set.pixels)?)?,
        });
    }
    let mut names: Vec<String> = detectors.iter().map(|d| d.name()).collect();
    names.push(odin_name);
    Ok(BenchResult {
        checkpoint_sha256: calibration.checkpoint_sha256.clone(),
        closed_set_accuracy: closed,
        n_in_distribution: id.len(),
        ood_sets: ood_sets
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.pixels.len() / (nets[0].config.image_size * nets[0].config.image_size),
                )
            })
            .collect(),
        detectors: names,
        rows,
        default_score: default_name,
        config: config.clone(),
        seconds: started.elapsed().as_secs_f64(),
        drawn_refusals,
    })
}

/// The result as Markdown: AUROC and FPR@95 tables with detectors as rows, OOD sets as columns.
pub fn markdown(result: &BenchResult) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "In-distribution: {} known test digits (closed-set accuracy {:.2}%). OOD sets: {}.\n",
        result.n_in_distribution,
        100.0 * result.closed_set_accuracy,
        result
            .ood_sets
            .iter()
            .map(|(n, c)| format!("{n} ({c})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let sets: Vec<&String> = result.ood_sets.iter().map(|(n, _)| n).collect();
    for (title, get) in [
        (
            "AUROC",
            (|m: &OodMetrics| format!("{:.4}", m.auroc)) as fn(&OodMetrics) -> String,
        ),
        ("FPR at 95% TPR", |m: &OodMetrics| {
            format!("{:.2}%", 100.0 * m.fpr_at_95_tpr)
        }),
        ("AUPR (OOD positive)", |m: &OodMetrics| {
            format!("{:.4}", m.aupr_out)
        }),
        (
            "Caught at 99% of known test digits accepted",
            |m: &OodMetrics| format!("{:.2}%", 100.0 * m.detection_at_99_id),
        ),
    ] {
        let _ = writeln!(
            s,
            "**{title}**\n\n| detector | {} |\n|---|{}",
            sets.iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(" | "),
            "---|".repeat(sets.len())
        );
        for d in &result.detectors {
            let cells: Vec<String> = sets
                .iter()
                .map(|set| {
                    result
                        .rows
                        .iter()
                        .find(|r| &r.detector == d && &&r.ood_set == set)
                        .map_or("-".into(), |r| get(&r.metrics))
                })
                .collect();
            let mark = if *d == result.default_score {
                " (the default)"
            } else {
                ""
            };
            let _ = writeln!(s, "| {d}{mark} | {} |", cells.join(" | "));
        }
        s.push('\n');
    }
    if !result.drawn_refusals.is_empty() {
        let _ = writeln!(
            s,
            "**Valid digits refused, each detector's threshold accepting {:.0}% of the held-out digits: the known test digits as MNIST has them, and redrawn as the drawing page sends them (canvas, thin and thick pens in turn)**\n\n| detector | test digits refused | drawn digits refused |\n|---|---|---|",
            100.0 * DRAWN_ACCEPTANCE
        );
        for r in &result.drawn_refusals {
            let _ = writeln!(
                s,
                "| {} | {:.2}% | {:.2}% |",
                r.detector,
                100.0 * r.test_refused,
                100.0 * r.drawn_refused
            );
        }
    }
    s
}

/// Writes `bench-ood.json` and `bench-ood.md` into `dir`, atomically.
pub fn write_bench(dir: &Path, result: &BenchResult) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| EvalError::Io(dir.to_path_buf(), e))?;
    let json = serde_json::to_string_pretty(result).expect("serialises");
    for (name, text) in [("bench-ood.json", json), ("bench-ood.md", markdown(result))] {
        let path = dir.join(name);
        ood_data::atomic::write_atomic(&path, text.as_bytes())
            .map_err(|e| EvalError::Io(path.clone(), e))?;
    }
    Ok(())
}
