//! The settings of one run: the arguments of `ood bench` with their defaults filled in.

use candle_core::Device;
use ood_model::ops::Kernels;

use crate::machine::thread_count;
use crate::workloads::TrainStep;
use crate::{BenchArgs, KernelChoice, Result};

/// The settings of one run, defaults filled in.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) widths: Vec<usize>,
    pub(crate) train_batch: usize,
    pub(crate) infer_batch: usize,
    pub(crate) warmup: usize,
    pub(crate) steps: usize,
    /// Whether --warmup or --steps was given (else candle's slow rows get fewer steps).
    pub(crate) explicit_steps: bool,
    /// Kernels of the reference model at each width.
    pub(crate) kernels: Vec<(usize, Vec<Kernels>)>,
    /// Presets measured, with the kernels they use.
    pub(crate) presets: Vec<&'static str>,
    pub(crate) preset_kernels: Kernels,
    pub(crate) threads: usize,
    /// Where the models run; off the CPU only the presets are measured.
    pub(crate) device: Device,
    /// The training step of the preset rows.
    pub(crate) preset_step: TrainStep,
}

impl Plan {
    pub(crate) fn new(args: &BenchArgs) -> Result<Self> {
        let widths = match &args.widths {
            Some(w) => w.clone(),
            None if args.quick => vec![16],
            None => vec![16, 64],
        };
        if widths.is_empty() || widths.contains(&0) {
            bail!("--widths: give one or more widths above 0");
        }
        let device = args.device.open()?;
        let on_cpu = device.is_cpu();
        let train_batch = args.train_batch.unwrap_or(if on_cpu { 128 } else { 64 });
        if train_batch == 0 || args.infer_batch == 0 {
            bail!("--train-batch and --infer-batch must be at least 1");
        }
        let warmup = args.warmup.unwrap_or(if args.quick { 1 } else { 2 });
        let steps = args.steps.unwrap_or(if args.quick { 3 } else { 5 });
        if steps == 0 {
            bail!("--steps must be at least 1");
        }
        // torch_ref.py's model is a CPU comparison; on a GPU the presets are what users train.
        let widths = if on_cpu { widths } else { Vec::new() };
        let kernels = widths
            .iter()
            .map(|&w| {
                let k = match args.kernels {
                    KernelChoice::Fast => vec![Kernels::Fast],
                    KernelChoice::Candle => vec![Kernels::Candle],
                    // candle's stock ops are slow at large widths: a quick run skips them there.
                    KernelChoice::Both if args.quick && w > 16 => vec![Kernels::Fast],
                    KernelChoice::Both => vec![Kernels::Fast, Kernels::Candle],
                };
                (w, k)
            })
            .collect();
        Ok(Self {
            widths,
            train_batch,
            infer_batch: args.infer_batch,
            warmup,
            steps,
            explicit_steps: args.warmup.is_some() || args.steps.is_some(),
            kernels,
            presets: match (args.quick, on_cpu) {
                (true, _) => vec!["small"],
                (false, true) => vec!["tiny", "small"],
                (false, false) => vec!["tiny", "small", "paper"],
            },
            preset_kernels: match args.kernels {
                // Off the CPU candle's ops run whatever is asked: say so in the table.
                _ if !on_cpu => Kernels::Candle,
                KernelChoice::Candle => Kernels::Candle,
                _ => Kernels::Fast,
            },
            threads: thread_count(),
            preset_step: if on_cpu {
                TrainStep::Reference
            } else {
                TrainStep::Project
            },
            device,
        })
    }
}

impl Plan {
    /// Warm-up and timed steps of one row: candle's stock ops take tens of seconds a step at
    /// large widths, so by default those rows run fewer steps.
    pub(crate) fn steps_for(&self, width: usize, kernels: Kernels) -> (usize, usize) {
        if !self.explicit_steps && kernels == Kernels::Candle && width > 16 {
            (self.warmup.min(1), self.steps.min(3))
        } else {
            (self.warmup, self.steps)
        }
    }
}
