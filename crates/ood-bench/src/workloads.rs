//! The model workloads: a training step or an inference pass of one model at one batch size,
//! timed, and the row each gives.

use candle_core::{Device, Tensor};
use ood_model::ops::{self, Kernels};
use ood_model::ModelConfig;
use ood_train::optim::{AdamW, AdamWConfig};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::machine::{peak_memory_mib, reset_peak_memory};
use crate::plan::Plan;
use crate::rounds::timed;
use crate::Result;

pub(crate) fn kernels_name(k: Kernels) -> &'static str {
    match k {
        Kernels::Fast => "fast",
        Kernels::Candle => "candle",
    }
}

/// What a timed training step computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrainStep {
    /// torch_ref.py's: the noised batch through both heads; cross-entropy + MSE to the clean one.
    Reference,
    /// `ood train`'s and torch_anchor.py's: the clean batch and its noised copy through the trunk
    /// together, the classifier on the clean half, the decoder on the noised half.
    Project,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Train,
    Infer,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Train => "train",
            Kind::Infer => "infer",
        }
    }

    /// FLOPs of a step as a multiple of the forward pass's.
    fn flop_multiple(self) -> f64 {
        match self {
            Kind::Train => 3.0,
            Kind::Infer => 1.0,
        }
    }
}

/// One model measurement (a row of the table and of the JSON).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ModelRow {
    pub(crate) model: String,
    pub(crate) width: usize,
    pub(crate) blocks: [usize; 3],
    pub(crate) kernels: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) batch: usize,
    pub(crate) images_per_s: f64,
    pub(crate) gflops: f64,
    pub(crate) peak_mib: Option<f64>,
    pub(crate) median_s: f64,
    pub(crate) min_s: f64,
    pub(crate) torch_images_per_s: Option<f64>,
    pub(crate) ratio: Option<f64>,
    /// With several rounds: each round's ratio, in order.
    pub(crate) round_ratios: Vec<f64>,
    pub(crate) threads: usize,
    pub(crate) warmup: usize,
    pub(crate) steps: usize,
}

/// Restores the kernel choice the process had when dropped.
pub(crate) struct KernelsGuard(pub(crate) Kernels);

impl Drop for KernelsGuard {
    fn drop(&mut self) {
        ops::set_kernels(self.0);
    }
}

/// Every model row of one round, in the plan's order.
pub(crate) fn measure_rows(plan: &Plan) -> Result<Vec<ModelRow>> {
    let mut rows = Vec::new();
    for (w, kernels) in &plan.kernels {
        let config = ModelConfig::new(*w, [2, 2, 2], 10);
        for &k in kernels {
            for kind in [Kind::Train, Kind::Infer] {
                rows.push(measure_model(
                    plan,
                    &format!("ref-w{w}"),
                    &config,
                    k,
                    kind,
                    TrainStep::Reference,
                )?);
            }
        }
    }
    for name in &plan.presets {
        let config = ood_model::preset(name, 9)?;
        for kind in [Kind::Train, Kind::Infer] {
            rows.push(measure_model(
                plan,
                name,
                &config,
                plan.preset_kernels,
                kind,
                plan.preset_step,
            )?);
        }
    }
    Ok(rows)
}

/// Random images in [0, 1], their noised copies and labels, as torch_ref.py makes them.
struct Data {
    clean: Tensor,
    noisy: Tensor,
    labels: Tensor,
}

impl Data {
    fn random(
        batch: usize,
        classes: usize,
        side: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = batch * side * side;
        let clean: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
        let noisy: Vec<f32> = clean
            .iter()
            .map(|&c| (c + 0.3 * standard_normal(&mut rng)).clamp(0.0, 1.0))
            .collect();
        let labels: Vec<u32> = (0..batch)
            .map(|_| rng.random_range(0..classes as u32))
            .collect();
        let shape = (batch, 1, side, side);
        Ok(Self {
            clean: Tensor::from_vec(clean, shape, device)?,
            noisy: Tensor::from_vec(noisy, shape, device)?,
            labels: Tensor::from_vec(labels, batch, device)?,
        })
    }
}

/// One draw of N(0, 1) (Box-Muller).
fn standard_normal(rng: &mut impl Rng) -> f32 {
    let u1 = 1.0 - rng.random::<f64>(); // in (0, 1]
    let u2 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

fn measure_model(
    plan: &Plan,
    model: &str,
    config: &ModelConfig,
    kernels: Kernels,
    kind: Kind,
    step: TrainStep,
) -> Result<ModelRow> {
    ops::set_kernels(kernels);
    let batch = match kind {
        Kind::Train => plan.train_batch,
        Kind::Infer => plan.infer_batch,
    };
    eprint!(
        "{model} {} {} batch {batch} ... ",
        kernels_name(kernels),
        kind.name()
    );
    reset_peak_memory();
    let device = &plan.device;
    let (varmap, net) = ood_model::build(config, device, 0)?;
    let data = Data::random(batch, config.num_classes, config.image_size, 0, device)?;
    let (warmup, steps) = plan.steps_for(config.width, kernels);
    let (median, min) = match kind {
        Kind::Train => {
            let adam = AdamWConfig {
                weight_decay: 0.0,
                ..Default::default()
            };
            let mut opt = AdamW::new(&varmap, adam)?;
            timed(warmup, steps, || {
                let (logits, reconstruction) = match step {
                    TrainStep::Reference => {
                        let out = net.forward_all(&data.noisy, true)?;
                        (out.logits, out.reconstruction)
                    }
                    TrainStep::Project => {
                        let both = Tensor::cat(&[&data.clean, &data.noisy], 0)?;
                        let features = net.features(&both, true)?;
                        let pooled = ood_model::OodNet::pool(&features.narrow(0, 0, batch)?)?;
                        (
                            net.classify(&pooled)?,
                            net.decode(&features.narrow(0, batch, batch)?, true)?,
                        )
                    }
                };
                let loss = (ood_losses::cross_entropy(&logits, &data.labels)?
                    + ood_losses::denoising_mse(&reconstruction, &data.clean)?)?;
                opt.backward_step(&loss, 1e-3)?;
                let value = loss.to_scalar::<f32>()?;
                std::hint::black_box(value);
                Ok(())
            })?
        }
        Kind::Infer => timed(warmup, steps, || {
            let out = net.forward_all(&data.noisy, false)?;
            let a = out.logits.sum_all()?.to_scalar::<f32>()?;
            let b = out.reconstruction.sum_all()?.to_scalar::<f32>()?;
            std::hint::black_box(a + b);
            Ok(())
        })?,
    };
    // Resident memory says nothing of a GPU's.
    let peak_mib = if device.is_cpu() {
        peak_memory_mib()
    } else {
        None
    };
    drop((net, varmap, data));
    let images_per_s = batch as f64 / median;
    let flops_per_image = match (kind, step) {
        // The trunk also runs on the noised copy.
        (Kind::Train, TrainStep::Project) => {
            let (trunk, classifier, decoder) = config.macs_per_image();
            2 * (2 * trunk + classifier + decoder)
        }
        _ => config.forward_flops_per_image(),
    };
    let gflops = images_per_s * flops_per_image as f64 * kind.flop_multiple() / 1e9;
    eprintln!("{images_per_s:.1} img/s");
    Ok(ModelRow {
        model: model.to_string(),
        width: config.width,
        blocks: config.blocks,
        kernels: kernels_name(kernels),
        kind: kind.name(),
        batch,
        images_per_s,
        gflops,
        peak_mib,
        median_s: median,
        min_s: min,
        torch_images_per_s: None,
        ratio: None,
        round_ratios: Vec::new(),
        threads: plan.threads,
        warmup,
        steps,
    })
}

/// A row as the tests write them: `ips` images/s, no PyTorch figure.
#[cfg(test)]
pub(crate) fn row(
    model: &str,
    kernels: &'static str,
    kind: &'static str,
    width: usize,
    batch: usize,
    ips: f64,
    reference: bool,
) -> ModelRow {
    // A preset has blocks [1, 1, 1], torch_ref.py's model [2, 2, 2].
    ModelRow {
        model: model.into(),
        width,
        blocks: if reference { [2, 2, 2] } else { [1, 1, 1] },
        kernels,
        kind,
        batch,
        images_per_s: ips,
        gflops: 0.0,
        peak_mib: None,
        median_s: batch as f64 / ips,
        min_s: batch as f64 / ips,
        torch_images_per_s: None,
        ratio: None,
        round_ratios: Vec::new(),
        threads: 2,
        warmup: 0,
        steps: 1,
    }
}
