//! AdamW whose state can be saved and restored (candle-nn's keeps its moments private, and an
//! exact `--resume` needs them), the warm-up + cosine learning-rate schedule, and the optional
//! moving average of the weights (`ood train --ema`).

use candle_core::{Result, Tensor, Var};
use candle_nn::VarMap;
use std::collections::HashMap;

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, applied to convolution and linear weights only.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 5e-4,
        }
    }
}

struct Param {
    name: String,
    var: Var,
    decay: bool,
    m: Tensor,
    v: Tensor,
}

/// AdamW over the trainable variables of a `VarMap`, in name order.
pub struct AdamW {
    params: Vec<Param>,
    config: AdamWConfig,
    /// Steps taken so far.
    pub step: u64,
}

impl AdamW {
    /// All variables but BatchNorm running statistics.
    pub fn new(varmap: &VarMap, config: AdamWConfig) -> Result<Self> {
        let vars = varmap
            .data()
            .lock()
            .expect("the var map lock is never poisoned");
        let mut params: Vec<Param> = vars
            .iter()
            .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
            .map(|(n, v)| {
                Ok(Param {
                    name: n.clone(),
                    var: v.clone(),
                    decay: v.rank() > 1,
                    m: v.zeros_like()?,
                    v: v.zeros_like()?,
                })
            })
            .collect::<Result<_>>()?;
        params.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self {
            params,
            config,
            step: 0,
        })
    }

    /// One update from the gradients of `loss`.
    pub fn backward_step(&mut self, loss: &Tensor, lr: f64) -> Result<()> {
        let grads = loss.backward()?;
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        for p in &mut self.params {
            let Some(g) = grads.get(&p.var) else { continue };
            // A gradient from candle's stock backward is itself a tracked tensor whose graph
            // reaches this step's activations. Kept in a moment undetached, it would chain
            // every step's graph to the next: memory growing with every step (issue 10).
            let g = g.detach();
            let g = &g;
            p.m = ((&p.m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            p.v = ((&p.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&p.m / bias1)? / ((&p.v / bias2)?.sqrt()? + c.eps)?)?;
            let theta = p.var.as_tensor();
            let decayed = if p.decay && c.weight_decay > 0.0 {
                (theta * (1.0 - lr * c.weight_decay))?
            } else {
                theta.clone()
            };
            p.var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`m.<var>`, `v.<var>`), for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .flat_map(|p| {
                [
                    (format!("m.{}", p.name), p.m.clone()),
                    (format!("v.{}", p.name), p.v.clone()),
                ]
            })
            .collect()
    }

    /// Restores the moments saved by [`AdamW::state`] and the step count.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for p in &mut self.params {
            for (key, slot) in [("m", &mut p.m), ("v", &mut p.v)] {
                let name = format!("{key}.{}", p.name);
                let t = state.get(&name).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimizer state {name} missing"))
                })?;
                *slot = t.to_device(p.var.device())?.reshape(p.var.shape())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// An exponential moving average of every variable of a model: its weights and its BatchNorm
/// running statistics, as timm's `ModelEmaV2` keeps them. The averages live in a second
/// `VarMap`, so a second net built on it evaluates the averaged model.
pub struct WeightAverage {
    /// `(name, live variable, its average)`, in name order.
    pairs: Vec<(String, Var, Var)>,
    decay: f64,
}

/// The prefix of the live weights in the training state of a checkpoint whose model weights
/// are the averages: `--resume` needs both.
const LIVE_PREFIX: &str = "live.";

impl WeightAverage {
    /// Starts every average at the live variable's value. The two maps must hold the same
    /// names and shapes (two builds of one model configuration).
    pub fn new(live: &VarMap, average: &VarMap, decay: f64) -> Result<Self> {
        let live = live
            .data()
            .lock()
            .expect("the var map lock is never poisoned");
        let average = average
            .data()
            .lock()
            .expect("the var map lock is never poisoned");
        let mut pairs = Vec::with_capacity(live.len());
        for (name, var) in live.iter() {
            let avg = average.get(name).ok_or_else(|| {
                candle_core::Error::Msg(format!("the averaged model has no variable {name}"))
            })?;
            avg.set(var.as_tensor())?;
            pairs.push((name.clone(), var.clone(), avg.clone()));
        }
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self { pairs, decay })
    }

    /// The decay after `step` optimizer steps: `min(decay, (1 + step) / (10 + step))`, so that
    /// the first steps, far from where training ends, do not linger in the average.
    pub fn decay_at(&self, step: u64) -> f64 {
        self.decay.min((1.0 + step as f64) / (10.0 + step as f64))
    }

    /// Folds the live values into the averages after optimizer step `step` (1 for the first).
    pub fn update(&self, step: u64) -> Result<()> {
        let d = self.decay_at(step);
        for (_, live, avg) in &self.pairs {
            let next = ((avg.as_tensor() * d)? + (live.as_tensor() * (1.0 - d))?)?;
            avg.set(&next)?;
        }
        Ok(())
    }

    /// Copies of the live values as named tensors (`live.<var>`), for the checkpoint's
    /// training state. Copies, because a variable's tensor shares its storage, which the
    /// next step overwrites in place.
    pub fn live_state(&self) -> Result<Vec<(String, Tensor)>> {
        self.pairs
            .iter()
            .map(|(name, live, _)| Ok((format!("{LIVE_PREFIX}{name}"), live.as_tensor().copy()?)))
            .collect()
    }

    /// Restores the live values saved by [`WeightAverage::live_state`] (the averages come
    /// from the checkpoint's model weights).
    pub fn load_live_state(&self, state: &HashMap<String, Tensor>) -> Result<()> {
        for (name, live, _) in &self.pairs {
            let key = format!("{LIVE_PREFIX}{name}");
            let t = state
                .get(&key)
                .ok_or_else(|| candle_core::Error::Msg(format!("training state {key} missing")))?;
            live.set(&t.to_device(live.device())?.reshape(live.shape())?)?;
        }
        Ok(())
    }
}

/// Linear warm-up to the peak rate, then cosine decay to `final_ratio` of it.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub peak: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub final_ratio: f64,
}

impl Schedule {
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let floor = self.peak * self.final_ratio;
        floor + (self.peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::{Init, VarBuilder};

    #[test]
    fn schedule_warms_up_then_decays() {
        let s = Schedule {
            peak: 1.0,
            warmup_steps: 10,
            total_steps: 110,
            final_ratio: 0.1,
        };
        assert!((s.at(0) - 0.1).abs() < 1e-12);
        assert!((s.at(9) - 1.0).abs() < 1e-12);
        assert!((s.at(10) - 1.0).abs() < 1e-12);
        assert!((s.at(60) - 0.55).abs() < 1e-12);
        assert!((s.at(110) - 0.1).abs() < 1e-12);
        assert!(s.at(30) > s.at(50));
    }

    #[test]
    fn adamw_minimises_a_quadratic_and_round_trips_its_state() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let w = vb.get_with_hints((2, 2), "w", Init::Const(3.0)).unwrap();
        let mut opt = AdamW::new(
            &vm,
            AdamWConfig {
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        for _ in 0..300 {
            let loss = w.sqr().unwrap().sum_all().unwrap();
            opt.backward_step(&loss, 0.05).unwrap();
        }
        let left = w
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(left < 0.1, "{left}");
        let state: HashMap<_, _> = opt.state().into_iter().collect();
        let mut again = AdamW::new(&vm, AdamWConfig::default()).unwrap();
        again.load_state(&state, opt.step).unwrap();
        assert_eq!(again.step, 300);
        assert!(again.load_state(&HashMap::new(), 0).is_err());
    }

    fn one_var_map(value: f32) -> (VarMap, Var) {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        vb.get_with_hints(2, "w", Init::Const(value as f64))
            .unwrap();
        let var = vm.data().lock().unwrap()["w"].clone();
        (vm, var)
    }

    fn values(var: &Var) -> Vec<f32> {
        var.as_tensor().to_vec1().unwrap()
    }

    #[test]
    fn the_weight_average_follows_its_formula_and_round_trips() {
        let (live_map, live) = one_var_map(1.0);
        let (avg_map, avg) = one_var_map(-5.0);
        let ema = WeightAverage::new(&live_map, &avg_map, 0.9).unwrap();
        // Starts at the live value, not at its own initialisation.
        assert_eq!(values(&avg), [1.0, 1.0]);
        // Step 1: decay min(0.9, 2/11); step 100: 0.9.
        assert!((ema.decay_at(1) - 2.0 / 11.0).abs() < 1e-12);
        assert_eq!(ema.decay_at(100), 0.9);
        live.set(&Tensor::new(&[3f32, 1.0], &Device::Cpu).unwrap())
            .unwrap();
        ema.update(1).unwrap();
        let d = 2.0 / 11.0;
        let want = (d + 3.0 * (1.0 - d)) as f32;
        assert!((values(&avg)[0] - want).abs() < 1e-6, "{:?}", values(&avg));
        assert_eq!(values(&avg)[1], 1.0);
        ema.update(100).unwrap();
        let want = 0.9 * want + 0.1 * 3.0;
        assert!((values(&avg)[0] - want).abs() < 1e-6);
        // The live values come back from the state; the average is left alone.
        let state: HashMap<_, _> = ema.live_state().unwrap().into_iter().collect();
        live.set(&Tensor::new(&[0f32, 0.0], &Device::Cpu).unwrap())
            .unwrap();
        ema.load_live_state(&state).unwrap();
        assert_eq!(values(&live), [3.0, 1.0]);
        assert!((values(&avg)[0] - want).abs() < 1e-6);
        assert!(ema.load_live_state(&HashMap::new()).is_err());
    }
}
