//! AdamW whose state can be saved and restored (candle-nn's keeps its moments private, and an
//! exact `--resume` needs them), and the warm-up + cosine learning-rate schedule.

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
}
