//! Detectors that read only the logits: MSP, MaxLogit, Energy and temperature-scaled MSP.

use super::{Detector, Samples};
use crate::classify::max_softmax;
use crate::{CalibrateError, Result};
use serde::{Deserialize, Serialize};

fn check_temperature(temperature: f64) -> Result<()> {
    if temperature.is_finite() && temperature > 0.0 {
        Ok(())
    } else {
        Err(CalibrateError::InvalidParameter {
            name: "temperature",
            value: temperature,
            expected: "a positive finite number",
        })
    }
}

/// Maximum softmax probability baseline (Hendrycks & Gimpel): score = `-max softmax(logits)`,
/// in `[-1, -1/num_classes]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Msp;

impl Detector for Msp {
    fn name(&self) -> String {
        "MSP".into()
    }

    fn score(&self, samples: &Samples<'_>) -> Result<Vec<f64>> {
        samples.score_logit_rows(|row| -max_softmax(row))
    }
}

/// Maximum logit (Hendrycks et al. 2022): score = `-max logit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MaxLogit;

impl Detector for MaxLogit {
    fn name(&self) -> String {
        "MaxLogit".into()
    }

    fn score(&self, samples: &Samples<'_>) -> Result<Vec<f64>> {
        samples.score_logit_rows(|row| -f64::from(max_f32(row)))
    }
}

fn max_f32(row: &[f32]) -> f32 {
    row.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Energy score (Liu et al. 2020): score = `-T · logsumexp(logits / T)`, the free energy,
/// computed stably in `f64` as `-(m + T ln Σ exp((x - m) / T))` with `m` the max logit. ID
/// samples have low energy. `temperature` must be positive and finite (checked by `score`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Energy {
    /// Temperature `T > 0`; the usual choice is `1`.
    pub temperature: f64,
}

impl Default for Energy {
    fn default() -> Self {
        Energy { temperature: 1.0 }
    }
}

/// `(m, Σ exp((x - m) / T))` with `m` the row's max: the stable pieces of a softmax at
/// temperature `T` (the sum is at least 1, so finite input gives finite results).
fn shifted_exp_sum(row: &[f32], t: f64) -> (f64, f64) {
    let m = f64::from(max_f32(row));
    let sum = row.iter().map(|&x| ((f64::from(x) - m) / t).exp()).sum();
    (m, sum)
}

/// `T · logsumexp(row / T)`, stable (finite for finite input).
fn scaled_logsumexp(row: &[f32], t: f64) -> f64 {
    let (m, sum) = shifted_exp_sum(row, t);
    m + t * sum.ln()
}

impl Detector for Energy {
    fn name(&self) -> String {
        format!("Energy(T={})", self.temperature)
    }

    fn score(&self, samples: &Samples<'_>) -> Result<Vec<f64>> {
        check_temperature(self.temperature)?;
        samples.score_logit_rows(|row| -scaled_logsumexp(row, self.temperature))
    }
}

/// Temperature-scaled MSP: score = `-max softmax(logits / T)`, computed stably in `f64`.
///
/// This is the **scoring half of ODIN** (Liang et al. 2018, who use a large `T` such as
/// `1000`). ODIN's other half, the input perturbation `x - ε · sign(-∇ₓ log S(x; T))`, needs
/// the model's gradients and is done where the model lives: **ODIN = `TemperatureMsp` applied
/// to the logits of the perturbed inputs.** With `T = 1` this equals [`Msp`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TemperatureMsp {
    /// Temperature `T > 0` (ODIN: `1000`).
    pub temperature: f64,
}

impl Default for TemperatureMsp {
    fn default() -> Self {
        TemperatureMsp {
            temperature: 1000.0,
        }
    }
}

impl Detector for TemperatureMsp {
    fn name(&self) -> String {
        format!("TempMSP(T={})", self.temperature)
    }

    fn score(&self, samples: &Samples<'_>) -> Result<Vec<f64>> {
        let t = self.temperature;
        check_temperature(t)?;
        // The largest probability is exp(0) / sum.
        samples.score_logit_rows(|row| -1.0 / shifted_exp_sum(row, t).1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::test_support::{close, logits};

    #[test]
    fn logit_detectors_order_and_hand_values() {
        let ln3 = 3f64.ln() as f32;
        let peaked = [8.0f32, 0.0, 0.0, 0.0];
        let flat = [1.0f32, 1.0, 1.0, 1.0];
        let l = logits(&[&peaked, &flat]);
        let s = Samples::new(&l, &[], &[], 4, 0).unwrap();
        let dets: Vec<Box<dyn Detector>> = vec![
            Box::new(Msp),
            Box::new(MaxLogit),
            Box::new(Energy { temperature: 1.0 }),
            Box::new(Energy { temperature: 5.0 }),
            Box::new(TemperatureMsp { temperature: 1.0 }),
            Box::new(TemperatureMsp {
                temperature: 1000.0,
            }),
        ];
        for d in &dets {
            let sc = d.score(&s).unwrap();
            assert_eq!(sc.len(), 2);
            assert!(sc[0] < sc[1], "{}: {sc:?}", d.name());
        }

        let one = [0.0f32, ln3];
        let s = Samples::new(&one, &[], &[], 2, 0).unwrap();
        let e = Energy { temperature: 1.0 }.score(&s).unwrap()[0];
        assert!(close(e, -(4f64.ln()), 1e-7), "{e}");
        assert!(close(Msp.score(&s).unwrap()[0], -0.75, 1e-7));
        assert!(close(
            TemperatureMsp { temperature: 1.0 }.score(&s).unwrap()[0],
            -0.75,
            1e-7
        ));
        assert_eq!(MaxLogit.score(&s).unwrap()[0], -f64::from(ln3));
        // T = 2 on doubled logits is T = 1 on the originals (Energy scales by T).
        let two = [0.0f32, 2.0 * ln3];
        let s2 = Samples::new(&two, &[], &[], 2, 0).unwrap();
        let e2 = Energy { temperature: 2.0 }.score(&s2).unwrap()[0];
        assert!(close(e2, -2.0 * 4f64.ln(), 1e-6), "{e2}");
        let t2 = TemperatureMsp { temperature: 2.0 }.score(&s2).unwrap()[0];
        assert!(close(t2, -0.75, 1e-7));
        // Stable for huge logits.
        let huge = [1e30f32, 1e30, -1e30];
        let s = Samples::new(&huge, &[], &[], 3, 0).unwrap();
        let e = Energy { temperature: 1.0 }.score(&s).unwrap()[0];
        assert_eq!(e, -(f64::from(1e30f32) + 2f64.ln()));
        assert_eq!(Msp.score(&s).unwrap()[0], -0.5);
        assert!(TemperatureMsp { temperature: 1e-3 }.score(&s).unwrap()[0].is_finite());
        // Names.
        assert_eq!(Energy { temperature: 1.0 }.name(), "Energy(T=1)");
        assert_eq!(
            TemperatureMsp {
                temperature: 1000.0
            }
            .name(),
            "TempMSP(T=1000)"
        );
    }

    #[test]
    fn logit_detector_errors() {
        let s = Samples::new(&[0.0, 1.0], &[], &[], 2, 0).unwrap();
        for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                Energy { temperature: t }.score(&s),
                Err(CalibrateError::InvalidParameter {
                    name: "temperature",
                    ..
                })
            ));
            assert!(TemperatureMsp { temperature: t }.score(&s).is_err());
        }
        let no_logits = Samples::new(&[], &[1.0, 2.0], &[], 0, 1).unwrap();
        assert_eq!(
            Msp.score(&no_logits),
            Err(CalibrateError::MissingInput { what: "logits" })
        );
        let nan = [0.0, f32::NAN];
        let s = Samples::new(&nan, &[], &[], 2, 0).unwrap();
        assert_eq!(
            MaxLogit.score(&s),
            Err(CalibrateError::NaN {
                what: "logits",
                index: 1
            })
        );
        let inf = [f32::INFINITY, 0.0];
        let s = Samples::new(&inf, &[], &[], 2, 0).unwrap();
        assert!(matches!(
            Energy::default().score(&s),
            Err(CalibrateError::NonFinite { .. })
        ));
        assert_eq!(Msp.score(&Samples::default()).unwrap(), Vec::<f64>::new());
    }
}
