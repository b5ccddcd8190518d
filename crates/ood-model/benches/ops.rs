//! Micro-benchmarks of the CPU kernels against candle's stock ops: `cargo bench -p ood-model`
//! (a few minutes on two cores; `cargo bench -p ood-model -- conv3x3_16` for one group).
//!
//! Each group is one layer shape at batch 128; its functions are `fast_fwd`, `candle_fwd`,
//! `fast_bwd` and `candle_bwd`. A backward is timed alone: the forward graph is built once and
//! its backward (all gradients: input, weight, and for BatchNorm scale and shift) runs again
//! each iteration. candle's slowest ops take longer than the 2-second measurement window;
//! criterion says so ("Unable to complete 10 samples") and measures the ten samples anyway.

use candle_core::{Device, ModuleT, Result, Tensor, Var};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode};
use ood_model::ops::batchnorm::BatchNorm;
use ood_model::ops::conv::{ConvBackwardData, ConvForward};
use ood_model::ops::{set_kernels, Kernels};
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::time::Duration;

const BATCH: usize = 128;

fn random(shape: &[usize], scale: f32, rng: &mut impl Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-1.0f32..1.0) * scale)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    // Flat sampling: ten samples of equal iteration counts, so slow ops finish in ten calls.
    g.sampling_mode(SamplingMode::Flat);
    g
}

type ConvFn<'a> = dyn Fn(&Tensor, &Tensor) -> Result<Tensor> + 'a;

/// Forward and backward of `op(x, w)` (`x`, `w` as variables), the fast op against candle's.
fn fwd_bwd(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    x: &Tensor,
    w: &Tensor,
    fast: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    stock: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) {
    let xv = Var::from_tensor(x).unwrap();
    let wv = Var::from_tensor(w).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let out = fast(x, w).unwrap();
    let dy = random(out.dims(), 1.0, &mut rng);
    let ops: [(&str, &ConvFn<'_>); 2] = [("fast", &fast), ("candle", &stock)];
    for (name, op) in ops {
        g.bench_function(format!("{name}_fwd"), |b| {
            b.iter(|| black_box(op(x, w).unwrap()))
        });
        let loss = (op(xv.as_tensor(), wv.as_tensor()).unwrap() * &dy)
            .unwrap()
            .sum_all()
            .unwrap();
        g.bench_function(format!("{name}_bwd"), |b| {
            b.iter(|| black_box(loss.backward().unwrap()))
        });
    }
}

/// 3x3 stride-1 convolutions of the trunk: W -> W at 28x28 and 4W -> 4W at 7x7, W = 16, 64.
fn conv3x3(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    for (channels, side) in [(16, 28), (64, 7), (64, 28), (256, 7)] {
        let mut g = group(c, &format!("conv3x3_{channels}ch_{side}x{side}_b{BATCH}"));
        let x = random(&[BATCH, channels, side, side], 1.0, &mut rng);
        let w = random(&[channels, channels, 3, 3], 0.1, &mut rng);
        fwd_bwd(
            &mut g,
            &x,
            &w,
            |x, w| x.apply_op2(w, ConvForward { stride: 1, pad: 1 }),
            |x, w| x.conv2d(w, 1, 1, 1, 1),
        );
        g.finish();
    }
}

/// The decoder's second transposed convolution at W = 16: 2W -> W, 14x14 -> 28x28.
fn conv_transpose(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (cin, cout, side) = (32, 16, 14);
    let mut g = group(
        c,
        &format!("convT4x4s2_{cin}to{cout}ch_{side}to{}_b{BATCH}", 2 * side),
    );
    let x = random(&[BATCH, cin, side, side], 1.0, &mut rng);
    let w = random(&[cin, cout, 4, 4], 0.1, &mut rng);
    let out = 2 * side;
    fwd_bwd(
        &mut g,
        &x,
        &w,
        |x, w| {
            x.apply_op2(
                w,
                ConvBackwardData {
                    stride: 2,
                    pad: 1,
                    h: out,
                    w: out,
                },
            )
        },
        |x, w| x.conv_transpose2d(w, 1, 0, 2, 1),
    );
    g.finish();
}

/// BatchNorm in training mode (batch statistics, running-statistics update), forward and
/// backward: the one-pass custom op against candle-nn's layer.
fn batch_norm(c: &mut Criterion) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    for (channels, side) in [(16, 28), (256, 7)] {
        let mut g = group(
            c,
            &format!("batchnorm_train_{channels}ch_{side}x{side}_b{BATCH}"),
        );
        let x = Var::from_tensor(&random(&[BATCH, channels, side, side], 1.0, &mut rng)).unwrap();
        let dy = random(&[BATCH, channels, side, side], 1.0, &mut rng);
        let layer = BatchNorm::fresh(channels).unwrap();
        for (name, kernels) in [("fast", Kernels::Fast), ("candle", Kernels::Candle)] {
            set_kernels(kernels);
            g.bench_function(format!("{name}_fwd"), |b| {
                b.iter(|| black_box(layer.forward_t(x.as_tensor(), true).unwrap()))
            });
            let loss = (layer.forward_t(x.as_tensor(), true).unwrap() * &dy)
                .unwrap()
                .sum_all()
                .unwrap();
            g.bench_function(format!("{name}_bwd"), |b| {
                b.iter(|| black_box(loss.backward().unwrap()))
            });
        }
        set_kernels(Kernels::Fast);
        g.finish();
    }
}

fn config() -> Criterion {
    // The same thread count and allocator settings as the `ood` binary.
    ood_model::configure_threads(None);
    ood_model::tune_allocator();
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = conv3x3, conv_transpose, batch_norm
}
criterion_main!(benches);
