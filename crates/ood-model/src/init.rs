//! Seeded weight initialisation. candle's CPU random generator cannot be seeded, so every
//! variable is redrawn here with `rand` from the run's seed, in name order.

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// Overwrites every variable of `varmap`: convolution weights He-normal (fan-in), linear
/// weights uniform in +-1/sqrt(fan-in), biases zero, BatchNorm scale one, shift zero, running
/// mean zero and running variance one.
pub fn seeded_init(varmap: &VarMap, seed: u64) -> candle_core::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let vars = varmap
        .data()
        .lock()
        .expect("the var map lock is never poisoned");
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        let values = initial_values(name, var, &mut rng);
        let t = Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

fn initial_values(name: &str, var: &Var, rng: &mut impl Rng) -> Vec<f32> {
    let dims = var.dims();
    let n = var.elem_count();
    let leaf = name.rsplit('.').next().unwrap_or(name);
    match (leaf, dims.len()) {
        ("running_var", _) => vec![1.0; n],
        ("weight", 1) => vec![1.0; n],
        ("running_mean" | "bias", _) => vec![0.0; n],
        ("weight", 4) => {
            // Conv weights are (out, in, k, k); transposed ones (in, out, k, k). Either way the
            // fan-in PyTorch uses is dims[1] * k * k.
            let fan_in = (dims[1] * dims[2] * dims[3]) as f32;
            let normal = Normal::new(0.0, (2.0 / fan_in).sqrt()).expect("positive std");
            (0..n).map(|_| normal.sample(rng)).collect()
        }
        ("weight", 2) => {
            let bound = 1.0 / (dims[1] as f32).sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        }
        _ => panic!("no initialisation rule for variable {name} of shape {dims:?}"),
    }
}
