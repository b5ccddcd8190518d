//! The training loop: the classifier sees the clean batch, the decoder sees a noised copy, both
//! through the shared trunk in one forward pass; one backward of the summed objective.

use crate::distill::{Distillation, Teacher};
use crate::infer::{accuracy, infer};
use crate::optim::{AdamW, AdamWConfig, Schedule, WeightAverage};
use crate::{Result, TrainError};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use indicatif::{ProgressBar, ProgressStyle};
use ood_data::augment::{augment_batch, AugmentConfig};
use ood_data::batch::{stream_rng, to_unit_f32, Batch, Batcher};
use ood_data::negatives::scribbles;
use ood_data::noise::{corrupt_batch, NoiseConfig};
use ood_data::pen::{restyle_batch, PenConfig};
use ood_data::{ClassSpec, Splits};
use ood_losses::{
    distillation, energy_margin, logit_pairing, objective, EnergyMargins, LossWeights,
};
use ood_model::checkpoint::{save_checkpoint, Checkpoint, CheckpointMeta, FORMAT_VERSION};
use ood_model::{ModelConfig, OodNet};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The checkpoint's file name inside a run folder.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The per-epoch metrics (JSON lines) inside a run folder.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// The folder of an ensemble's member `i` inside the ensemble's folder.
pub fn member_dir(i: usize) -> String {
    format!("member-{i}")
}

const NOISE_STREAM: u64 = 2;
const AUGMENT_STREAM: u64 = 3;
const NEGATIVE_STREAM: u64 = 4;
const PEN_STREAM: u64 = 5;
const PAIR_STREAM: u64 = 6;

/// Outlier exposure: scribbles (`ood_data::negatives`) beside every batch, whose energy is
/// pushed above a margin while the known digits' is pushed below another
/// ([`ood_losses::energy_margin`]).
///
/// The scribbles share the trunk pass, and so BatchNorm's batch statistics, with the digits, as
/// in Hendrycks et al.'s outlier exposure; the running statistics then hold the same mix in
/// training and evaluation. A first version sent them through with BatchNorm's running
/// statistics instead, to keep them out of the statistics real digits are normalised by: the
/// network learned to tell the two normalisations apart, and validation accuracy (running
/// statistics) fell to 26% in the second epoch while training accuracy rose to 97.5%.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OutlierExposure {
    /// Scribbles per batch.
    pub negatives: usize,
    /// The weight of the energy-margin term in the objective.
    pub weight: f64,
    pub margins: EnergyMargins,
}

impl Default for OutlierExposure {
    /// Half a batch of scribbles and Liu et al.'s weight of 0.1. The margins sit on the
    /// energies of held-out *known* digits under the default model (seed 0): -7 is above about
    /// 70% of them, -3 above 99%, where a 99% acceptance puts energy's threshold. Not tuned on
    /// any OOD set.
    fn default() -> Self {
        Self {
            negatives: 32,
            weight: 0.1,
            margins: EnergyMargins {
                known: -7.0,
                negative: -3.0,
            },
        }
    }
}

/// Every training argument; stored in the checkpoint so that later stages and `--resume`
/// see exactly what was asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub preset: String,
    pub model: ModelConfig,
    pub known_classes: Vec<u8>,
    pub unknown_classes: Vec<u8>,
    pub validation_size: usize,
    pub limit: Option<usize>,
    pub epochs: usize,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub learning_rate: f64,
    pub warmup_steps: u64,
    /// The learning rate at the end, as a fraction of the peak.
    pub final_lr_ratio: f64,
    pub adamw: AdamWConfig,
    /// Seeds the initialisation, the batch order, the noise and the augmentation.
    pub seed: u64,
    /// Seeds the validation hold-out; `None`: `seed` does (and what checkpoints from before
    /// this option say). Members of an ensemble differ in `seed` and share this, so that no
    /// member has trained on the digits the ensemble is calibrated on.
    #[serde(default)]
    pub split_seed: Option<u64>,
    pub loss: LossWeights,
    pub noise: NoiseConfig,
    /// Train the decoder head (off for the "no decoder" ablation).
    pub train_decoder: bool,
    /// Warp each training image a little (rotation, scale, shift) before it is used; `None`:
    /// the images as they are (and what checkpoints from before this option say).
    #[serde(default)]
    pub augment: Option<AugmentConfig>,
    /// Restyle each training image after the warp: other pens, hard edges, blur, elastic
    /// distortion, the drawing page's redraw; `None`: MNIST's pen only (and what checkpoints
    /// from before this option say).
    #[serde(default)]
    pub pen: Option<PenConfig>,
    /// Keep an exponential moving average of the weights with this decay per step, and save
    /// the average as the model; `None`: the weights as trained (and what checkpoints from
    /// before this option say).
    #[serde(default)]
    pub ema_decay: Option<f64>,
    /// Train against scribbles too; `None`: no negatives (and what older checkpoints say).
    #[serde(default)]
    pub outlier_exposure: Option<OutlierExposure>,
    /// Learn from a teacher's softened outputs too ([`train_with_teacher`]); `None`: no
    /// teacher (and what older checkpoints say).
    #[serde(default)]
    pub distill: Option<Distillation>,
    /// Pen pairs, by the weight of their term: each digit (after the warp, before the pens)
    /// also passes redrawn by the page's canvas pen, at a random level and radius from the pen
    /// configuration's canvas ranges, and its logits are pulled onto the digit's
    /// ([`ood_losses::logit_pairing`]), so that a drawn digit's energy follows MNIST's.
    /// `None`: no pairs (and what older checkpoints say).
    #[serde(default)]
    pub pen_pairs: Option<f64>,
}

impl TrainConfig {
    /// The defaults for a preset and class split.
    pub fn new(preset: &str, classes: &ClassSpec) -> Result<Self> {
        Ok(Self {
            preset: preset.to_string(),
            model: ood_model::preset(preset, classes.num_known())?,
            known_classes: classes.known.clone(),
            unknown_classes: classes.unknown.clone(),
            validation_size: 5000,
            limit: None,
            epochs: 4,
            batch_size: 64,
            eval_batch_size: 500,
            learning_rate: 2e-3,
            warmup_steps: 200,
            final_lr_ratio: 0.01,
            adamw: AdamWConfig::default(),
            seed: 0,
            split_seed: None,
            loss: LossWeights::default(),
            noise: NoiseConfig::default(),
            train_decoder: true,
            augment: None,
            pen: None,
            ema_decay: None,
            outlier_exposure: None,
            distill: None,
            pen_pairs: None,
        })
    }

    /// Member `i` of an ensemble trained from this configuration: seed `seed + i`, and the
    /// validation hold-out of this configuration, shared by every member.
    pub fn ensemble_member(&self, i: usize) -> Self {
        Self {
            seed: self.seed + i as u64,
            ..self.with_explicit_split_seed()
        }
    }

    /// The same configuration with the seeds that may differ between the members of one
    /// ensemble set aside: equal for every member of a consistent ensemble.
    pub fn without_member_seed(&self) -> Self {
        Self {
            seed: 0,
            ..self.with_explicit_split_seed()
        }
    }

    /// The same configuration with the hold-out's seed written out, so that a checkpoint from
    /// before `split_seed` (`None`: the hold-out of `seed`) equals one that names it.
    pub fn with_explicit_split_seed(&self) -> Self {
        Self {
            split_seed: Some(self.split_seed()),
            ..self.clone()
        }
    }

    /// What `--resume` compares: the configuration with the hold-out's seed written out and
    /// the teacher named by its SHA-256 alone, so that the same teacher given by another path
    /// (relative against absolute, or moved) resumes and a changed one does not.
    pub fn for_resume(&self) -> Self {
        let mut c = self.with_explicit_split_seed();
        if let Some(d) = c.distill.as_mut() {
            d.teacher.clear();
        }
        c
    }

    /// The seed of the validation hold-out.
    pub fn split_seed(&self) -> u64 {
        self.split_seed.unwrap_or(self.seed)
    }

    pub fn classes(&self) -> ClassSpec {
        ClassSpec {
            known: self.known_classes.clone(),
            unknown: self.unknown_classes.clone(),
        }
    }
}

/// One epoch's line in `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub step: u64,
    pub learning_rate: f64,
    pub loss: f64,
    pub cross_entropy: f64,
    pub inverse_focal: f64,
    pub std: f64,
    pub denoising: f64,
    /// The energy-margin term of outlier exposure (0 without it).
    #[serde(default)]
    pub outlier_exposure: f64,
    /// The distillation term (0 without a teacher).
    #[serde(default)]
    pub distillation: f64,
    /// The pen pairs' logit-pairing term (0 without them).
    #[serde(default)]
    pub pen_pairing: f64,
    pub train_accuracy: f64,
    pub val_accuracy: f64,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// How a call to [`train`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Finished,
    /// Stopped by the interrupt flag; the checkpoint holds the state to resume from.
    Interrupted,
}

/// What a training run leaves behind.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub outcome: Outcome,
    pub checkpoint: PathBuf,
    pub history: Vec<EpochMetrics>,
}

/// Trains into `out_dir` (created if needed), from scratch or, with `resume`, from the
/// checkpoint already there. `interrupt` is polled between batches.
pub fn train(
    config: &TrainConfig,
    splits: &Splits,
    device: &Device,
    out_dir: &Path,
    resume: bool,
    interrupt: &AtomicBool,
) -> Result<TrainSummary> {
    train_with_teacher(config, None, splits, device, out_dir, resume, interrupt)
}

/// [`train`], learning from `teacher` too when `config.distill` asks for one: the objective
/// gains `weight * distillation(student, teacher, temperature)` on every batch of digits.
pub fn train_with_teacher(
    config: &TrainConfig,
    teacher: Option<&Teacher>,
    splits: &Splits,
    device: &Device,
    out_dir: &Path,
    resume: bool,
    interrupt: &AtomicBool,
) -> Result<TrainSummary> {
    let teacher = match (&config.distill, teacher) {
        (Some(d), Some(t)) => {
            t.check_student(config)?;
            Some((d, t))
        }
        (None, None) => None,
        (Some(d), None) => {
            return Err(TrainError::Config(format!(
                "the arguments ask to distil from {}, but no teacher was given",
                d.teacher
            )))
        }
        (None, Some(_)) => {
            return Err(TrainError::Config(
                "a teacher was given, but the arguments ask for no distillation".into(),
            ))
        }
    };
    std::fs::create_dir_all(out_dir).map_err(|e| TrainError::Io(out_dir.to_path_buf(), e))?;
    let checkpoint_path = out_dir.join(CHECKPOINT_FILE);
    let metrics_path = out_dir.join(METRICS_FILE);
    let classes = config.classes();
    let (varmap, net) = ood_model::build(&config.model, device, config.seed)?;
    let averaged = match config.ema_decay {
        Some(decay) => Some(Averaged::new(config, &varmap, decay, device)?),
        None => None,
    };
    let mut opt = AdamW::new(&varmap, config.adamw)?;
    let (mut epoch, mut first_batch, mut history) = (0, 0, Vec::new());
    if resume {
        let ck = Checkpoint::load(&checkpoint_path, device)?;
        let saved: TrainConfig = serde_json::from_value(ck.meta.training.clone()).map_err(|e| {
            TrainError::Resume(format!(
                "{}: unreadable training arguments: {e}",
                checkpoint_path.display()
            ))
        })?;
        if saved.for_resume() != config.for_resume() {
            return Err(TrainError::Resume(format!(
                "{} was trained with other arguments; resume with the same ones.\n saved: {}\n given: {}",
                checkpoint_path.display(),
                serde_json::to_string(&saved).unwrap_or_default(),
                serde_json::to_string(config).unwrap_or_default()
            )));
        }
        ck.load_into(&checkpoint_path, &varmap)?;
        let state = ck.optimizer_state();
        if let Some(a) = &averaged {
            // The checkpoint's model is the average; the live weights are in its state.
            ck.load_into(&checkpoint_path, &a.varmap)?;
            a.weights.load_live_state(&state)?;
        }
        opt.load_state(&state, ck.meta.step)?;
        epoch = ck.meta.epoch;
        first_batch = ck.meta.batch_in_epoch;
        history = read_history(&metrics_path)?;
        history.truncate(epoch);
        tracing::info!(
            epoch,
            batch = first_batch,
            "resuming from {}",
            checkpoint_path.display()
        );
    }

    let batcher = Batcher::new(&splits.train, &classes, config.batch_size)?.shuffled(config.seed);
    let batches = batcher.num_batches();
    if batches == 0 {
        return Err(TrainError::Config(format!(
            "{} training images do not fill one batch of {}",
            splits.train.len(),
            config.batch_size
        )));
    }
    let schedule = Schedule {
        peak: config.learning_rate,
        warmup_steps: config
            .warmup_steps
            .min((batches * config.epochs) as u64 / 10)
            .max(1),
        total_steps: (batches * config.epochs) as u64,
        final_ratio: config.final_lr_ratio,
    };
    let val_pixels = to_unit_f32(&splits.validation);
    let val_targets: Vec<u32> = splits
        .validation
        .labels
        .iter()
        .map(|&l| {
            classes
                .class_index(l)
                .expect("validation holds known classes") as u32
        })
        .collect();
    let side = config.model.image_size;

    while epoch < config.epochs {
        let order = batcher.order(epoch);
        let bar = progress_bar(batches as u64, epoch, config.epochs);
        bar.set_position(first_batch as u64);
        let started = Instant::now();
        let mut sums = Sums::default();
        for b in first_batch..batches {
            let step_index = (epoch * batches + b) as u64;
            let made = make_batch(config, &batcher, &order, b, step_index);
            let batch = Batch::new(made.pixels, made.class_indices, (side, side), device)?;
            let n = batch.class_indices.len();
            let lr = schedule.at(opt.step);
            // One trunk pass over the clean batch, its noised copy (for the decoder), its pen
            // pairs and the scribbles (for outlier exposure), in that order.
            let noised = match made.noised {
                Some(noised) => Some(Tensor::from_vec(noised, (n, 1, side, side), device)?),
                None => None,
            };
            let pairs = match made.pairs {
                Some(pairs) => Some(Tensor::from_vec(pairs, (n, 1, side, side), device)?),
                None => None,
            };
            let negatives = match (&config.outlier_exposure, made.scribbles) {
                (Some(oe), Some(pixels)) => {
                    let images = Tensor::from_vec(pixels, (oe.negatives, 1, side, side), device)?;
                    Some((oe, images))
                }
                _ => None,
            };
            let mut parts = vec![&batch.images];
            parts.extend(noised.as_ref());
            // The pairs' first row in the pass: after the batch and its noised copy.
            let pairs_first = parts.len() * n;
            parts.extend(pairs.as_ref());
            parts.extend(negatives.as_ref().map(|(_, images)| images));
            let features = match parts.as_slice() {
                [only] => net.features(only, true)?,
                _ => net.features(&Tensor::cat(&parts, 0)?, true)?,
            };
            let logits = net.classify(&OodNet::pool(&features.narrow(0, 0, n)?)?)?;
            let recon = match noised {
                Some(_) => Some(net.decode(&features.narrow(0, n, n)?, true)?),
                None => None,
            };
            let terms = objective(
                &logits,
                &batch.targets,
                recon.as_ref().map(|r| (r, &batch.images)),
                &config.loss,
            )?;
            let (loss, exposure) = match negatives {
                Some((oe, _)) => {
                    // The scribbles are the last rows of the pass.
                    let first = features.dim(0)? - oe.negatives;
                    let negative_logits =
                        net.classify(&OodNet::pool(&features.narrow(0, first, oe.negatives)?)?)?;
                    let margin = energy_margin(&logits, &negative_logits, oe.margins)?;
                    let value = margin.to_scalar::<f32>()? as f64;
                    ((&terms.total + (margin * oe.weight)?)?, value)
                }
                None => (terms.total.clone(), 0.0),
            };
            // `make_batch` makes the pairs exactly when `pen_pairs` is set.
            let (loss, paired) = match config.pen_pairs {
                Some(weight) => {
                    let pair_logits =
                        net.classify(&OodNet::pool(&features.narrow(0, pairs_first, n)?)?)?;
                    let term = logit_pairing(&pair_logits, &logits)?;
                    let value = term.to_scalar::<f32>()? as f64;
                    ((loss + (term * weight)?)?, value)
                }
                None => (loss, 0.0),
            };
            let (loss, distilled) = match teacher {
                Some((d, t)) => {
                    let term = distillation(&logits, &t.logits(&batch.images)?, d.temperature)?;
                    let value = term.to_scalar::<f32>()? as f64;
                    ((loss + (term * d.weight)?)?, value)
                }
                None => (loss, 0.0),
            };
            let total = loss.to_scalar::<f32>()?;
            if !total.is_finite() {
                bar.abandon();
                return Err(TrainError::NonFinite {
                    epoch: epoch + 1,
                    batch: b,
                    checkpoint: checkpoint_path.clone(),
                });
            }
            opt.backward_step(&loss, lr)?;
            if let Some(a) = &averaged {
                a.weights.update(opt.step)?;
            }
            sums.add(&terms, &logits, &batch.class_indices, total)?;
            sums.exposure += exposure;
            sums.distilled += distilled;
            sums.paired += paired;
            let ips = sums.images as f64 / started.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.4} ce {:.4} focal {:.4} std {:.4} den {:.4} | {ips:.0} img/s",
                sums.mean(sums.loss),
                sums.mean(sums.ce),
                sums.mean(sums.focal),
                sums.mean(sums.std),
                sums.mean(sums.den)
            ));
            bar.inc(1);
            if interrupt.load(Ordering::SeqCst) && b + 1 < batches {
                bar.abandon_with_message("interrupted: saving a checkpoint");
                let meta = meta_for(config, epoch, b + 1, opt.step, history.last());
                save(&checkpoint_path, &meta, &varmap, &opt, averaged.as_ref())?;
                return Ok(TrainSummary {
                    outcome: Outcome::Interrupted,
                    checkpoint: checkpoint_path,
                    history,
                });
            }
        }
        let train_seconds = started.elapsed().as_secs_f64();
        // What is saved as the model is what is validated.
        let model = averaged.as_ref().map_or(&net, |a| &a.net);
        let val = infer(
            std::slice::from_ref(model),
            &val_pixels,
            None,
            false,
            config.eval_batch_size,
            device,
        )?;
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            step: opt.step,
            learning_rate: schedule.at(opt.step.saturating_sub(1)),
            loss: sums.mean(sums.loss),
            cross_entropy: sums.mean(sums.ce),
            inverse_focal: sums.mean(sums.focal),
            std: sums.mean(sums.std),
            denoising: sums.mean(sums.den),
            outlier_exposure: sums.mean(sums.exposure),
            distillation: sums.mean(sums.distilled),
            pen_pairing: sums.mean(sums.paired),
            train_accuracy: sums.correct as f64 / sums.images.max(1) as f64,
            val_accuracy: accuracy(&val.predictions(), &val_targets),
            seconds: train_seconds,
            images_per_second: sums.images as f64 / train_seconds,
        };
        bar.finish_with_message(format!(
            "loss {:.4} | val accuracy {:.2}% | {:.0} img/s",
            metrics.loss,
            100.0 * metrics.val_accuracy,
            metrics.images_per_second
        ));
        tracing::info!(
            epoch = metrics.epoch,
            loss = metrics.loss,
            val_accuracy = metrics.val_accuracy,
            seconds = metrics.seconds,
            "epoch done"
        );
        history.push(metrics);
        epoch += 1;
        first_batch = 0;
        write_history(&metrics_path, &history)?;
        let meta = meta_for(config, epoch, 0, opt.step, history.last());
        save(&checkpoint_path, &meta, &varmap, &opt, averaged.as_ref())?;
        if interrupt.load(Ordering::SeqCst) && epoch < config.epochs {
            return Ok(TrainSummary {
                outcome: Outcome::Interrupted,
                checkpoint: checkpoint_path,
                history,
            });
        }
    }
    Ok(TrainSummary {
        outcome: Outcome::Finished,
        checkpoint: checkpoint_path,
        history,
    })
}

/// One batch's host-side inputs, as [`make_batch`] makes them.
struct MadeBatch {
    /// The digits after the warp and the pens.
    pixels: Vec<f32>,
    class_indices: Vec<u32>,
    /// Their noised copy, for the decoder (when it is trained).
    noised: Option<Vec<f32>>,
    /// Outlier exposure's scribbles (when it is on).
    scribbles: Option<Vec<f32>>,
    /// The digits after the warp, redrawn by the canvas pen (with `pen_pairs`).
    pairs: Option<Vec<f32>>,
}

/// Batch `b` of `order` as training step `step_index` sees it, each random effect drawn from
/// its own stream of that step (so `--resume` from any batch is exact).
fn make_batch(
    config: &TrainConfig,
    batcher: &Batcher,
    order: &[usize],
    b: usize,
    step_index: u64,
) -> MadeBatch {
    let side = config.model.image_size;
    let (mut pixels, class_indices) = batcher.host_batch(order, b);
    if let Some(augment) = &config.augment {
        let mut rng = stream_rng(config.seed, AUGMENT_STREAM, step_index);
        augment_batch(&mut pixels, side, augment, &mut rng);
    }
    // The pairs are drawn from the warped digit, not from what the pens made of it.
    let pairs = config.pen_pairs.map(|_| {
        let canvas_only = PenConfig {
            elastic: 0.0,
            canvas: 1.0,
            ..config.pen.unwrap_or_default()
        };
        let mut copy = pixels.clone();
        let mut rng = stream_rng(config.seed, PAIR_STREAM, step_index);
        restyle_batch(&mut copy, side, &canvas_only, &mut rng);
        copy
    });
    if let Some(pen) = &config.pen {
        let mut rng = stream_rng(config.seed, PEN_STREAM, step_index);
        restyle_batch(&mut pixels, side, pen, &mut rng);
    }
    let noised = config.train_decoder.then(|| {
        let mut noised = pixels.clone();
        let mut rng = stream_rng(config.seed, NOISE_STREAM, step_index);
        corrupt_batch(&mut noised, side, side, &config.noise, &mut rng);
        noised
    });
    let scribbles = config.outlier_exposure.map(|oe| {
        let mut rng = stream_rng(config.seed, NEGATIVE_STREAM, step_index);
        scribbles(oe.negatives, side, &mut rng)
    });
    MadeBatch {
        pixels,
        class_indices,
        noised,
        scribbles,
        pairs,
    }
}

/// The moving average of `--ema`: its own variables, a net built on them, and the averaging.
struct Averaged {
    varmap: VarMap,
    net: OodNet,
    weights: WeightAverage,
}

impl Averaged {
    fn new(config: &TrainConfig, live: &VarMap, decay: f64, device: &Device) -> Result<Self> {
        let (varmap, net) = ood_model::build(&config.model, device, config.seed)?;
        let weights = WeightAverage::new(live, &varmap, decay)?;
        Ok(Self {
            varmap,
            net,
            weights,
        })
    }
}

/// Writes the checkpoint: the model's weights (the average, under `--ema`) and the state
/// `--resume` needs (the optimizer's moments, and under `--ema` the live weights).
fn save(
    path: &Path,
    meta: &CheckpointMeta,
    varmap: &VarMap,
    opt: &AdamW,
    averaged: Option<&Averaged>,
) -> Result<()> {
    let mut state = opt.state();
    let model = match averaged {
        Some(a) => {
            state.extend(a.weights.live_state()?);
            &a.varmap
        }
        None => varmap,
    };
    save_checkpoint(path, meta, model, &state)?;
    Ok(())
}

fn meta_for(
    config: &TrainConfig,
    epoch: usize,
    batch: usize,
    step: u64,
    last: Option<&EpochMetrics>,
) -> CheckpointMeta {
    CheckpointMeta {
        format_version: FORMAT_VERSION,
        preset: config.preset.clone(),
        model: config.model.clone(),
        known_classes: config.known_classes.clone(),
        unknown_classes: config.unknown_classes.clone(),
        seed: config.seed,
        epoch,
        batch_in_epoch: batch,
        step,
        training: serde_json::to_value(config).expect("the config serialises"),
        metrics: serde_json::to_value(last).expect("metrics serialise"),
        producer: concat!("candle-ood ", env!("CARGO_PKG_VERSION")).to_string(),
    }
}

fn progress_bar(len: u64, epoch: usize, epochs: usize) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "epoch {}/{epochs} {{bar:30}} {{pos}}/{{len}} [{{elapsed}}<{{eta}}] {{msg}}",
            epoch + 1
        ))
        .expect("the template is valid"),
    );
    bar
}

#[derive(Default)]
struct Sums {
    loss: f64,
    ce: f64,
    focal: f64,
    std: f64,
    den: f64,
    exposure: f64,
    distilled: f64,
    paired: f64,
    batches: usize,
    images: usize,
    correct: usize,
}

impl Sums {
    fn add(
        &mut self,
        t: &ood_losses::LossTerms,
        logits: &Tensor,
        targets: &[u32],
        total: f32,
    ) -> candle_core::Result<()> {
        self.loss += total as f64;
        self.ce += t.cross_entropy.to_scalar::<f32>()? as f64;
        self.focal += t.inverse_focal.to_scalar::<f32>()? as f64;
        self.std += t.std.to_scalar::<f32>()? as f64;
        if let Some(d) = &t.denoising {
            self.den += d.to_scalar::<f32>()? as f64;
        }
        let pred = logits.argmax(1)?.to_vec1::<u32>()?;
        self.correct += pred.iter().zip(targets).filter(|(p, t)| p == t).count();
        self.batches += 1;
        self.images += targets.len();
        Ok(())
    }

    fn mean(&self, v: f64) -> f64 {
        v / self.batches.max(1) as f64
    }
}

/// Reads `metrics.jsonl` (an absent file is an empty history).
pub fn read_history(path: &Path) -> Result<Vec<EpochMetrics>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::Io(path.to_path_buf(), e)),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| TrainError::Config(format!("{} line {}: {e}", path.display(), i + 1)))
        })
        .collect()
}

fn write_history(path: &Path, history: &[EpochMetrics]) -> Result<()> {
    let mut text = String::new();
    for m in history {
        text.push_str(&serde_json::to_string(m).expect("metrics serialise"));
        text.push('\n');
    }
    ood_data::atomic::write_atomic(path, text.as_bytes())
        .map_err(|e| TrainError::Io(path.to_path_buf(), e))
}
