//! BatchNorm whose training forward and backward run in one pass each, as a candle custom op.
//!
//! candle-nn's `BatchNorm::forward_train` builds about a dozen broadcast ops; their backward
//! costs some twenty times the forward and, with the page faults of all the temporaries, it
//! dominates CPU training time. [`BatchNorm`] here computes exactly the same function:
//!
//! * training: normalise every channel with the batch mean and the biased batch variance over
//!   all dimensions but the channel one (dim 1), scale by `weight`, shift by `bias`, then update
//!   `running_mean = (1 - m) * running_mean + m * mean` and
//!   `running_var = (1 - m) * running_var + m * var * k / (k - 1)` (`k` values per channel);
//! * evaluation: normalise with the running statistics,
//!
//! but for f32 tensors on the CPU (when [`crate::ops::Kernels::Fast`] is selected) it does so in
//! a [`CustomOp3`] over `(x, weight, bias)` whose forward reads `x` twice (statistics, then the
//! output) and whose backward reads `x` and the upstream gradient twice (per-channel sums, then
//! the input gradient), parallel over channels with rayon. [`BatchNorm::forward_t_relu`] fuses a
//! ReLU after the normalisation. Everywhere else it delegates to a `candle_nn::BatchNorm` built on
//! the same variables.
//!
//! The variables have candle-nn's names and initial values (`running_mean`, `running_var`,
//! `weight`, `bias`), so checkpoints are interchangeable.

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use candle_core::{
    bail, CpuStorage, CustomOp3, DType, Device, Layout, ModuleT, Result, Shape, Storage, Tensor,
    Var,
};
use rayon::prelude::*;

use super::wide;

/// candle-nn's default epsilon.
const DEFAULT_EPS: f64 = 1e-5;
/// candle-nn's default momentum.
const DEFAULT_MOMENTUM: f64 = 0.1;
/// Below this many elements the kernels stay on the calling thread.
const PAR_MIN_ELEMS: usize = 1 << 15;
/// Least number of elements a parallel task gets in the element-wise passes.
const PAR_MIN_TASK: usize = 1 << 12;

/// Batch normalisation over dim 1 of an `(N, C, ...)` tensor, with running statistics.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
    num_features: usize,
    /// candle-nn's layer over the same variables, for the stock path.
    stock: candle_nn::BatchNorm,
}

/// A [`BatchNorm`] over `num_features` channels whose variables come from `vb`, with the same
/// names and initial values as `candle_nn::batch_norm(num_features, BatchNormConfig::default(),
/// vb)`: `running_mean` 0, `running_var` 1, `weight` 1, `bias` 0; eps 1e-5, momentum 0.1.
pub fn batch_norm(num_features: usize, vb: candle_nn::VarBuilder) -> Result<BatchNorm> {
    use candle_nn::Init;
    let running_mean = vb.get_with_hints(num_features, "running_mean", Init::Const(0.))?;
    let running_var = vb.get_with_hints(num_features, "running_var", Init::Const(1.))?;
    let weight = vb.get_with_hints(num_features, "weight", Init::Const(1.))?;
    let bias = vb.get_with_hints(num_features, "bias", Init::Const(0.))?;
    BatchNorm::new(
        num_features,
        running_mean,
        running_var,
        weight,
        bias,
        DEFAULT_EPS,
        DEFAULT_MOMENTUM,
    )
}

impl BatchNorm {
    /// A freshly initialised layer of `channels` on the CPU, as candle-nn makes one: scale 1 and
    /// shift 0 as trainable variables, running mean 0 and variance 1, `eps` 1e-5, momentum 0.1.
    /// For benchmarks and tests; models build theirs from a `VarBuilder`.
    pub fn fresh(channels: usize) -> Result<Self> {
        let dev = Device::Cpu;
        let ones = Tensor::ones(channels, DType::F32, &dev)?;
        let zeros = Tensor::zeros(channels, DType::F32, &dev)?;
        Self::new(
            channels,
            zeros.clone(),
            ones.clone(),
            Var::from_tensor(&ones)?.as_tensor().clone(),
            Var::from_tensor(&zeros)?.as_tensor().clone(),
            1e-5,
            0.1,
        )
    }

    /// A layer over the given tensors. Running statistics that are variables (as those from a
    /// `VarMap` are) are updated in place, so the update shows wherever they are shared; others
    /// are copied into new variables first, as candle-nn does.
    pub fn new(
        num_features: usize,
        running_mean: Tensor,
        running_var: Tensor,
        weight: Tensor,
        bias: Tensor,
        eps: f64,
        momentum: f64,
    ) -> Result<Self> {
        let running_mean = Var::from_tensor(&running_mean)?;
        let running_var = Var::from_tensor(&running_var)?;
        // The clones of a variable's tensor are that variable, so both layers share the state.
        let stock = candle_nn::BatchNorm::new_with_momentum(
            num_features,
            running_mean.as_tensor().clone(),
            running_var.as_tensor().clone(),
            weight.clone(),
            bias.clone(),
            eps,
            momentum,
        )?;
        Ok(Self {
            weight,
            bias,
            running_mean,
            running_var,
            eps,
            momentum,
            num_features,
            stock,
        })
    }

    /// The scale (gamma), shape `(C,)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The shift (beta), shape `(C,)`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// The running mean, shape `(C,)`.
    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    /// The running (unbiased) variance, shape `(C,)`.
    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }

    pub fn momentum(&self) -> f64 {
        self.momentum
    }

    /// In evaluation, this layer as `y = x * scale + shift` per channel, from the running
    /// statistics: what a convolution before it can fold into its weights and bias.
    pub fn eval_affine(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let mean: Vec<f32> = self.running_mean.as_tensor().to_vec1()?;
        let var: Vec<f32> = self.running_var.as_tensor().to_vec1()?;
        let norm = Norm::from_running(mean, &var, self.eps);
        Ok(affine(
            &self.weight.to_vec1::<f32>()?,
            &self.bias.to_vec1::<f32>()?,
            &norm,
        ))
    }

    /// `self.forward_t(x, train)?.relu()`, with the ReLU fused into the kernels on the fast path.
    pub fn forward_t_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_with(x, train, true, crate::ops::fast_path(x))
    }

    /// The forward pass, through the custom op when `fast` and the tensors allow it.
    fn forward_with(&self, x: &Tensor, train: bool, relu: bool, fast: bool) -> Result<Tensor> {
        if !(fast && self.fast_applies(x)) {
            let y = self.stock.forward_t(x, train)?;
            return if relu { y.relu() } else { Ok(y) };
        }
        let x = contiguous(x)?;
        let gamma = contiguous(&self.weight)?;
        let beta = contiguous(&self.bias)?;
        if train {
            let slot = Arc::new(Mutex::new(None));
            let op = BnOp {
                relu,
                mode: Mode::Train {
                    eps: self.eps,
                    stats: slot.clone(),
                },
            };
            let y = x.apply_op3(&gamma, &beta, op)?;
            let guard = slot.lock().map_err(|_| poisoned())?;
            let Some(stats) = guard.as_ref() else {
                bail!("batch-norm: the forward kernel left no statistics")
            };
            self.update_running_stats(stats)?;
            Ok(y)
        } else {
            let mean: Vec<f32> = self.running_mean.as_tensor().to_vec1()?;
            let var: Vec<f32> = self.running_var.as_tensor().to_vec1()?;
            let op = BnOp {
                relu,
                mode: Mode::Eval(Norm::from_running(mean, &var, self.eps)),
            };
            x.apply_op3(&gamma, &beta, op)
        }
    }

    /// Whether the custom op can compute this call; when not, the stock layer does (and reports
    /// any error in the input the same way candle-nn does).
    fn fast_applies(&self, x: &Tensor) -> bool {
        let dims = x.dims();
        x.device().is_cpu()
            && x.dtype() == DType::F32
            && dims.len() >= 2
            && x.elem_count() > 0
            && self.folds_into(dims[1])
    }

    /// Whether a convolution with `channels` outputs can fold this layer in (its variables
    /// are f32 on the CPU, one per channel).
    pub(crate) fn folds_into(&self, channels: usize) -> bool {
        let vars = [
            &self.weight,
            &self.bias,
            self.running_mean.as_tensor(),
            self.running_var.as_tensor(),
        ];
        channels == self.num_features
            && vars.iter().all(|v| {
                v.device().is_cpu() && v.dtype() == DType::F32 && v.dims() == [self.num_features]
            })
    }

    fn update_running_stats(&self, stats: &Stats) -> Result<()> {
        let m = self.momentum;
        let k = stats.count as f64;
        let unbias = k / (k - 1.0);
        let dev = self.running_mean.device();
        let rm: Vec<f32> = self.running_mean.as_tensor().to_vec1()?;
        let rv: Vec<f32> = self.running_var.as_tensor().to_vec1()?;
        let rm: Vec<f32> = rm
            .iter()
            .zip(&stats.mean)
            .map(|(&r, &b)| ((1.0 - m) * r as f64 + m * b) as f32)
            .collect();
        let rv: Vec<f32> = rv
            .iter()
            .zip(&stats.var)
            .map(|(&r, &b)| ((1.0 - m) * r as f64 + m * unbias * b) as f32)
            .collect();
        self.running_mean
            .set(&Tensor::from_vec(rm, self.num_features, dev)?)?;
        self.running_var
            .set(&Tensor::from_vec(rv, self.num_features, dev)?)
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_with(x, train, false, crate::ops::fast_path(x))
    }
}

fn contiguous(t: &Tensor) -> Result<Tensor> {
    if t.is_contiguous() {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("batch-norm: statistics lock poisoned".into())
}

// ---------------------------------------------------------------------------------------------
// The custom op.

/// Per-channel normalisation: `xhat = (x - mean) * inv_std`.
#[derive(Clone, Debug)]
struct Norm {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

impl Norm {
    /// From running statistics: `inv_std = 1 / sqrt(var + eps)`, computed in f64.
    fn from_running(mean: Vec<f32>, var: &[f32], eps: f64) -> Self {
        let inv_std = var
            .iter()
            .map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32)
            .collect();
        Self { mean, inv_std }
    }
}

/// What the training forward measured.
#[derive(Debug)]
struct Stats {
    norm: Norm,
    /// Batch mean per channel.
    mean: Vec<f64>,
    /// Biased batch variance per channel.
    var: Vec<f64>,
    /// Values per channel.
    count: usize,
}

enum Mode {
    /// Batch statistics, measured by the forward kernel and kept for the backward.
    Train {
        eps: f64,
        stats: Arc<Mutex<Option<Stats>>>,
    },
    /// Given (running) statistics, not differentiated.
    Eval(Norm),
}

/// `y = (x - mean) * inv_std * gamma + beta` per channel (dim 1), optionally followed by a ReLU;
/// arguments `(x, gamma, beta)`, all contiguous f32 on the CPU.
struct BnOp {
    relu: bool,
    mode: Mode,
}

impl CustomOp3 for BnOp {
    fn name(&self) -> &'static str {
        match (&self.mode, self.relu) {
            (Mode::Train { .. }, false) => "ood-batch-norm-train",
            (Mode::Train { .. }, true) => "ood-batch-norm-train-relu",
            (Mode::Eval(_), false) => "ood-batch-norm-eval",
            (Mode::Eval(_), true) => "ood-batch-norm-eval-relu",
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1)?;
        let gamma = f32_slice(s2, l2)?;
        let beta = f32_slice(s3, l3)?;
        let dims = Dims::of(l1.shape(), gamma.len(), beta.len())?;
        let out = match &self.mode {
            Mode::Train { eps, stats } => {
                let (mean, var) = channel_stats(x, dims);
                let norm = Norm {
                    mean: mean.iter().map(|&m| m as f32).collect(),
                    inv_std: var
                        .iter()
                        .map(|&v| (1.0 / (v + eps).sqrt()) as f32)
                        .collect(),
                };
                let out = normalise(x, gamma, beta, &norm, dims, self.relu);
                *stats.lock().map_err(|_| poisoned())? = Some(Stats {
                    norm,
                    mean,
                    var,
                    count: dims.n * dims.s,
                });
                out
            }
            Mode::Eval(norm) => normalise(x, gamma, beta, norm, dims, self.relu),
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let x = contiguous(x)?;
        let gamma = contiguous(gamma)?;
        let beta = contiguous(beta)?;
        let dy = contiguous(grad_res)?;
        let (dx, dgamma, dbeta) = {
            let (xs, xl) = x.storage_and_layout();
            let (gs, gl) = gamma.storage_and_layout();
            let (bs, bl) = beta.storage_and_layout();
            let (ds, dl) = dy.storage_and_layout();
            let xv = storage_f32(&xs, xl)?;
            let gv = storage_f32(&gs, gl)?;
            let bv = storage_f32(&bs, bl)?;
            let dv = storage_f32(&ds, dl)?;
            let dims = Dims::of(xl.shape(), gv.len(), bv.len())?;
            if dv.len() != xv.len() {
                bail!(
                    "batch-norm backward: gradient shape {:?} for input {:?}",
                    dl.shape(),
                    xl.shape()
                )
            }
            match &self.mode {
                Mode::Train { stats, .. } => {
                    let guard = stats.lock().map_err(|_| poisoned())?;
                    let Some(stats) = guard.as_ref() else {
                        bail!("batch-norm backward: the forward left no statistics")
                    };
                    backward(xv, dv, gv, bv, &stats.norm, dims, self.relu, true)
                }
                Mode::Eval(norm) => backward(xv, dv, gv, bv, norm, dims, self.relu, false),
            }
        };
        let c = gamma.elem_count();
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dgamma, c, dev)?),
            Some(Tensor::from_vec(dbeta, c, dev)?),
        ))
    }
}

/// An input seen as `(n, c, s)`: batch, channels, values per channel and sample.
#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    c: usize,
    s: usize,
}

impl Dims {
    fn of(shape: &Shape, gammas: usize, betas: usize) -> Result<Self> {
        let dims = shape.dims();
        if dims.len() < 2 {
            bail!("batch-norm: input must have at least two dimensions ({shape:?})")
        }
        let (n, c) = (dims[0], dims[1]);
        let s = dims[2..].iter().product();
        if gammas != c || betas != c {
            bail!("batch-norm: {c} channels in {shape:?} but {gammas} weights and {betas} biases")
        }
        if n * s == 0 {
            bail!("batch-norm: empty input {shape:?}")
        }
        Ok(Self { n, c, s })
    }

    fn len(&self) -> usize {
        self.n * self.c * self.s
    }

    /// The values of channel `ch` in sample `b`.
    fn chunk<'a>(&self, v: &'a [f32], b: usize, ch: usize) -> &'a [f32] {
        let start = (b * self.c + ch) * self.s;
        &v[start..start + self.s]
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    super::cpu_f32(s, l, "batch-norm")
}

fn storage_f32<'a>(s: &'a Storage, l: &Layout) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(s) => f32_slice(s, l),
        _ => bail!("batch-norm: the fast kernels run on the CPU only"),
    }
}

// ---------------------------------------------------------------------------------------------
// Kernels.

/// `f(i)` for `i` in `0..count`, in parallel when `work` (elements touched) is large enough.
fn par_map<T: Send>(count: usize, work: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    if work >= PAR_MIN_ELEMS && count > 1 {
        (0..count).into_par_iter().map(f).collect()
    } else {
        (0..count).map(f).collect()
    }
}

/// A vector of `len` values whose `i`th run of `s` values `f(i, run)` writes, every value of
/// it; in parallel for large outputs. The vector is not zeroed first: that would be one more
/// pass over memory.
fn par_fill(
    len: usize,
    s: usize,
    f: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let mut out = Vec::<f32>::with_capacity(len);
    let runs = &mut out.spare_capacity_mut()[..len];
    if len >= PAR_MIN_ELEMS {
        runs.par_chunks_mut(s)
            .with_min_len(PAR_MIN_TASK.div_ceil(s))
            .enumerate()
            .for_each(|(i, o)| f(i, o));
    } else {
        runs.chunks_mut(s).enumerate().for_each(|(i, o)| f(i, o));
    }
    // SAFETY: the runs cover `0..len`, and each call of `f` (the private kernels below, which
    // zip the run with input runs of the same length) initialises its run in full.
    unsafe { out.set_len(len) };
    out
}

/// Independent partial sums in the reductions below: two AVX-512 vectors' worth. With fewer
/// (eight, one vector), every add waited for the one before it, and the statistics took 8% of a
/// training step (`perf`).
const LANES: usize = 32;

/// Sum with [`LANES`] independent accumulators.
#[inline(always)]
fn sum_lanes(v: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `sum((v - m)^2)` with [`LANES`] independent accumulators.
#[inline(always)]
fn sq_dev_lanes(v: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&x| (x - m) * (x - m)).sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            let d = x - m;
            *a += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Mean and biased variance of every channel. Each `(sample, channel)` run is summed in f32
/// around its own mean (it is in cache for the second look) and the runs are merged in f64
/// (Chan et al.), so the variance does not suffer from cancellation.
fn channel_stats(x: &[f32], d: Dims) -> (Vec<f64>, Vec<f64>) {
    let stats = par_map(d.c, d.len(), |ch| {
        let (mut count, mut mean, mut m2) = (0f64, 0f64, 0f64);
        let sf = d.s as f64;
        for b in 0..d.n {
            let v = d.chunk(x, b, ch);
            let (cm, cm2) = wide(
                #[inline(always)]
                || {
                    let cm = sum_lanes(v) / d.s as f32;
                    (cm, sq_dev_lanes(v, cm) as f64)
                },
            );
            let total = count + sf;
            let delta = cm as f64 - mean;
            mean += delta * sf / total;
            m2 += cm2 + delta * delta * count * sf / total;
            count = total;
        }
        (mean, m2 / count)
    });
    stats.into_iter().unzip()
}

/// Per-channel `(scale, shift)` with `y = x * scale + shift`.
fn affine(gamma: &[f32], beta: &[f32], norm: &Norm) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = gamma
        .iter()
        .zip(&norm.inv_std)
        .map(|(&g, &i)| g * i)
        .collect();
    let shift = beta
        .iter()
        .zip(&norm.mean)
        .zip(&scale)
        .map(|((&b, &m), &k)| b - m * k)
        .collect();
    (scale, shift)
}

fn normalise(x: &[f32], gamma: &[f32], beta: &[f32], norm: &Norm, d: Dims, relu: bool) -> Vec<f32> {
    let (scale, shift) = affine(gamma, beta, norm);
    par_fill(d.len(), d.s, |i, o| {
        let ch = i % d.c;
        let (k, t) = (scale[ch], shift[ch]);
        let xs = &x[i * d.s..(i + 1) * d.s];
        wide(
            #[inline(always)]
            || {
                if relu {
                    for (o, &x) in o.iter_mut().zip(xs) {
                        o.write((x * k + t).max(0.0));
                    }
                } else {
                    for (o, &x) in o.iter_mut().zip(xs) {
                        o.write(x * k + t);
                    }
                }
            },
        )
    })
}

/// candle's ReLU derivative times `g`: `g * 1` where the ReLU's input `pre` is >= 0, else
/// `g * 0`, so non-finite gradients propagate as in candle. The 0/1 factor comes from the sign
/// of `pre` (`copysign`, bit operations) rather than from a comparison, which the compiler
/// turns into a branch here, mispredicted half the time (3x slower). The one difference from
/// candle's `pre >= 0`: `pre == -0.0` counts as negative.
#[inline(always)]
pub(super) fn relu_grad(pre: f32, g: f32) -> f32 {
    g * (0.5 + 0.5f32.copysign(pre))
}

/// `(sum(g), sum(g * xhat))` over a run, where `g` is `dy` masked by the ReLU when `RELU`.
#[inline(always)]
fn grad_sums<const RELU: bool>(x: &[f32], dy: &[f32], p: [f32; 4]) -> (f32, f32) {
    let [mean, inv, k, t] = p;
    let mut a = [0f32; LANES];
    let mut b = [0f32; LANES];
    let xc = x.chunks_exact(LANES);
    let dc = dy.chunks_exact(LANES);
    let (mut ta, mut tb) = (0f32, 0f32);
    for (&x, &g) in xc.remainder().iter().zip(dc.remainder()) {
        let g = if RELU { relu_grad(x * k + t, g) } else { g };
        ta += g;
        tb += g * ((x - mean) * inv);
    }
    for (xs, gs) in xc.zip(dc) {
        let xs: &[f32; LANES] = xs.try_into().unwrap();
        let gs: &[f32; LANES] = gs.try_into().unwrap();
        for j in 0..LANES {
            let (x, g) = (xs[j], gs[j]);
            let g = if RELU { relu_grad(x * k + t, g) } else { g };
            a[j] += g;
            b[j] += g * ((x - mean) * inv);
        }
    }
    (a.iter().sum::<f32>() + ta, b.iter().sum::<f32>() + tb)
}

/// `dx` of a run: `kx * (g - a - xhat * b)`; with `a = b = 0` for the evaluation mode.
#[inline(always)]
fn grad_x<const RELU: bool>(
    out: &mut [MaybeUninit<f32>],
    x: &[f32],
    dy: &[f32],
    p: [f32; 4],
    q: [f32; 3],
) {
    let [mean, inv, k, t] = p;
    let [kx, a, b] = q;
    for ((o, &x), &g) in out.iter_mut().zip(x).zip(dy) {
        let g = if RELU { relu_grad(x * k + t, g) } else { g };
        o.write(kx * (g - a - (x - mean) * inv * b));
    }
}

/// Gradients of `(x, gamma, beta)`. With batch statistics (`train`), the mean and variance
/// depend on `x`: `dx = gamma * inv_std * (g - mean(g) - xhat * mean(g * xhat))`; with given
/// statistics `dx = gamma * inv_std * g`. Always `dgamma = sum(g * xhat)`, `dbeta = sum(g)`.
#[allow(clippy::too_many_arguments)]
fn backward(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    beta: &[f32],
    norm: &Norm,
    d: Dims,
    relu: bool,
    train: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (scale, shift) = affine(gamma, beta, norm);
    let params = |ch: usize| [norm.mean[ch], norm.inv_std[ch], scale[ch], shift[ch]];
    let sums = par_map(d.c, 2 * d.len(), |ch| {
        let p = params(ch);
        let (mut sg, mut sgx) = (0f64, 0f64);
        for b in 0..d.n {
            let (xs, gs) = (d.chunk(x, b, ch), d.chunk(dy, b, ch));
            let (a, b) = wide(
                #[inline(always)]
                || {
                    if relu {
                        grad_sums::<true>(xs, gs, p)
                    } else {
                        grad_sums::<false>(xs, gs, p)
                    }
                },
            );
            sg += a as f64;
            sgx += b as f64;
        }
        (sg, sgx)
    });
    let count = (d.n * d.s) as f64;
    let dx = par_fill(d.len(), d.s, |i, o| {
        let ch = i % d.c;
        let p = params(ch);
        let kx = gamma[ch] * norm.inv_std[ch];
        let q = if train {
            let (sg, sgx) = sums[ch];
            [kx, (sg / count) as f32, (sgx / count) as f32]
        } else {
            [kx, 0.0, 0.0]
        };
        let (xs, gs) = (&x[i * d.s..(i + 1) * d.s], &dy[i * d.s..(i + 1) * d.s]);
        wide(
            #[inline(always)]
            || {
                if relu {
                    grad_x::<true>(o, xs, gs, p, q)
                } else {
                    grad_x::<false>(o, xs, gs, p, q)
                }
            },
        )
    });
    let dgamma = sums.iter().map(|&(_, sgx)| sgx as f32).collect();
    let dbeta = sums.iter().map(|&(sg, _)| sg as f32).collect();
    (dx, dgamma, dbeta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};
    use candle_nn::{BatchNormConfig, VarBuilder, VarMap};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use rand_distr::StandardNormal;

    const TOL: f32 = 1e-4;

    fn randn(rng: &mut StdRng, dims: &[usize], mean: f32, std: f32) -> Tensor {
        let len = dims.iter().product();
        let v: Vec<f32> = (0..len)
            .map(|_| mean + std * rng.sample::<f32, _>(StandardNormal))
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    /// Largest difference relative to the reference's largest magnitude.
    fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
        assert_eq!(got.dims(), want.dims(), "shapes differ");
        let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let err = g
            .iter()
            .zip(&w)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        if g.iter().any(|v| !v.is_finite()) {
            return f32::INFINITY;
        }
        err / scale
    }

    fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
        let e = rel_err(got, want);
        assert!(e <= TOL, "{what}: relative error {e} > {TOL}");
    }

    fn var(vm: &VarMap, name: &str) -> Var {
        vm.data().lock().unwrap().get(name).unwrap().clone()
    }

    /// candle-nn's layer and ours, in separate var maps holding the same random values.
    struct Pair {
        vm_ref: VarMap,
        bn_ref: candle_nn::BatchNorm,
        vm: VarMap,
        bn: BatchNorm,
    }

    fn pair(rng: &mut StdRng, c: usize) -> Pair {
        let dev = Device::Cpu;
        let vm_ref = VarMap::new();
        let bn_ref = candle_nn::batch_norm(
            c,
            BatchNormConfig::default(),
            VarBuilder::from_varmap(&vm_ref, DType::F32, &dev).pp("bn"),
        )
        .unwrap();
        let vm = VarMap::new();
        let bn = batch_norm(c, VarBuilder::from_varmap(&vm, DType::F32, &dev).pp("bn")).unwrap();
        let weight = randn(rng, &[c], 1.0, 0.5);
        let bias = randn(rng, &[c], 0.0, 0.5);
        let rmean = randn(rng, &[c], 2.0, 1.0);
        let rvar = randn(rng, &[c], 0.0, 1.0)
            .abs()
            .unwrap()
            .affine(2.0, 0.5)
            .unwrap();
        for (name, value) in [
            ("bn.weight", &weight),
            ("bn.bias", &bias),
            ("bn.running_mean", &rmean),
            ("bn.running_var", &rvar),
        ] {
            var(&vm_ref, name).set(value).unwrap();
            var(&vm, name).set(value).unwrap();
        }
        Pair {
            vm_ref,
            bn_ref,
            vm,
            bn,
        }
    }

    /// Input with a per-channel offset and spread, so that the mean matters.
    fn input(rng: &mut StdRng, dims: &[usize]) -> Tensor {
        let x = randn(rng, dims, 0.0, 1.0);
        let mut bshape = vec![1; dims.len()];
        bshape[1] = dims[1];
        let offset = randn(rng, &[dims[1]], 3.0, 2.0)
            .reshape(bshape.as_slice())
            .unwrap();
        let spread = randn(rng, &[dims[1]], 0.0, 1.0)
            .abs()
            .unwrap()
            .affine(1.0, 0.2)
            .unwrap()
            .reshape(bshape.as_slice())
            .unwrap();
        x.broadcast_mul(&spread)
            .unwrap()
            .broadcast_add(&offset)
            .unwrap()
    }

    /// `x` moved so that no ReLU input of `p` is within 1e-3 of 0: there, rounding in the
    /// two implementations may pick different sides of the kink.
    fn away_from_kinks(p: &Pair, x: &Tensor, train: bool) -> Tensor {
        let dims = x.dims().to_vec();
        let (n, c) = (dims[0], dims[1]);
        let s: usize = dims[2..].iter().product();
        let mut v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let get = |name: &str| -> Vec<f64> {
            let t = var(&p.vm_ref, name).as_tensor().to_vec1::<f32>().unwrap();
            t.iter().map(|&x| x as f64).collect()
        };
        let (w, b) = (get("bn.weight"), get("bn.bias"));
        for _ in 0..10 {
            let (mean, var) = if train {
                (0..c)
                    .map(|ch| {
                        let vals = (0..n).flat_map(|i| (0..s).map(move |j| (i * c + ch) * s + j));
                        let vals: Vec<f64> = vals.map(|k| v[k] as f64).collect();
                        let m = vals.iter().sum::<f64>() / vals.len() as f64;
                        let var = vals.iter().map(|x| (x - m) * (x - m)).sum::<f64>();
                        (m, var / vals.len() as f64)
                    })
                    .unzip()
            } else {
                (get("bn.running_mean"), get("bn.running_var"))
            };
            let mut moved = 0;
            for (k, x) in v.iter_mut().enumerate() {
                let ch = (k / s) % c;
                let scale = w[ch] / (var[ch] + 1e-5).sqrt();
                let pre = (*x as f64 - mean[ch]) * scale + b[ch];
                if pre.abs() < 1e-3 {
                    *x += (0.01 * pre.signum() / scale) as f32;
                    moved += 1;
                }
            }
            if moved == 0 {
                return Tensor::from_vec(v, dims, &Device::Cpu).unwrap();
            }
        }
        panic!("could not move the input away from the ReLU kinks")
    }

    struct Run {
        y: Tensor,
        dx: Tensor,
        dw: Tensor,
        db: Tensor,
    }

    /// Forward and backward of `f` on `x` with loss `(y * r).sum()` (or `y.sum()`).
    fn run(f: impl Fn(&Tensor) -> Tensor, x: &Tensor, r: Option<&Tensor>, vm: &VarMap) -> Run {
        let xv = Var::from_tensor(&x.copy().unwrap()).unwrap();
        let y = f(xv.as_tensor());
        let loss = match r {
            Some(r) => (&y * r).unwrap().sum_all().unwrap(),
            None => y.sum_all().unwrap(),
        };
        let grads = loss.backward().unwrap();
        let grad = |t: &Tensor| grads.get(t).expect("missing gradient").clone();
        Run {
            dx: grad(xv.as_tensor()),
            dw: grad(var(vm, "bn.weight").as_tensor()),
            db: grad(var(vm, "bn.bias").as_tensor()),
            y,
        }
    }

    impl Pair {
        /// candle-nn's BatchNorm (then a ReLU when `relu`) on `x`, with the loss `sum(y * r)`.
        fn reference(&self, x: &Tensor, r: Option<&Tensor>, train: bool, relu: bool) -> Run {
            let f = |x: &Tensor| {
                let y = self.bn_ref.forward_t(x, train).unwrap();
                if relu {
                    y.relu().unwrap()
                } else {
                    y
                }
            };
            run(f, x, r, &self.vm_ref)
        }

        /// Ours, through `forward_with(x, train, relu, fast)`.
        fn ours(&self, x: &Tensor, r: Option<&Tensor>, train: bool, relu: bool, fast: bool) -> Run {
            let f = |x: &Tensor| self.bn.forward_with(x, train, relu, fast).unwrap();
            run(f, x, r, &self.vm)
        }
    }

    fn assert_runs_close(what: &str, got: &Run, want: &Run) {
        assert_close(&format!("{what}: output"), &got.y, &want.y);
        assert_close(&format!("{what}: dx"), &got.dx, &want.dx);
        assert_close(&format!("{what}: dgamma"), &got.dw, &want.dw);
        assert_close(&format!("{what}: dbeta"), &got.db, &want.db);
    }

    fn assert_stats_close(what: &str, p: &Pair) {
        for name in ["bn.running_mean", "bn.running_var"] {
            let got = var(&p.vm, name);
            let want = var(&p.vm_ref, name);
            assert_close(
                &format!("{what}: {name}"),
                got.as_tensor(),
                want.as_tensor(),
            );
        }
        // The layer's own view is the var map's.
        assert_close(
            &format!("{what}: layer running mean"),
            p.bn.running_mean(),
            var(&p.vm, "bn.running_mean").as_tensor(),
        );
    }

    const SHAPES: [&[usize]; 4] = [&[1, 3, 5, 5], &[7, 4, 6, 6], &[4, 16, 28, 28], &[5, 8]];

    #[test]
    fn training_matches_candle_nn() {
        let mut rng = StdRng::seed_from_u64(1);
        for dims in SHAPES {
            let what = format!("train {dims:?}");
            let p = pair(&mut rng, dims[1]);
            let x = input(&mut rng, dims);
            let r = randn(&mut rng, dims, 0.0, 1.0);
            let want = p.reference(&x, Some(&r), true, false);
            let got = p.ours(&x, Some(&r), true, false, true);
            assert_runs_close(&what, &got, &want);
            assert_stats_close(&what, &p);
            // The output really is normalised per channel.
            if dims.len() == 4 {
                let b = p.bn.bias().reshape((1, (), 1)).unwrap();
                let w = p.bn.weight().reshape((1, (), 1)).unwrap();
                let xhat = got
                    .y
                    .flatten_from(2)
                    .unwrap()
                    .broadcast_sub(&b)
                    .unwrap()
                    .broadcast_div(&w)
                    .unwrap();
                let mean = xhat.mean_keepdim(D::Minus1).unwrap().mean(0).unwrap();
                let max = mean
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(max < 1e-3, "{what}: channel means {max}");
            }
        }
    }

    #[test]
    fn second_step_and_eval_match_candle_nn() {
        let mut rng = StdRng::seed_from_u64(2);
        for dims in SHAPES {
            let p = pair(&mut rng, dims[1]);
            for step in 0..2 {
                let x = input(&mut rng, dims);
                p.bn_ref.forward_t(&x, true).unwrap();
                p.bn.forward_with(&x, true, false, true).unwrap();
                assert_stats_close(&format!("step {step} {dims:?}"), &p);
            }
            let x = input(&mut rng, dims);
            let r = randn(&mut rng, dims, 0.0, 1.0);
            let want = p.reference(&x, Some(&r), false, false);
            let got = p.ours(&x, Some(&r), false, false, true);
            assert_runs_close(&format!("eval {dims:?}"), &got, &want);
            // Evaluation leaves the running statistics alone.
            assert_stats_close(&format!("after eval {dims:?}"), &p);
        }
    }

    #[test]
    fn fused_relu_matches_forward_then_relu() {
        let mut rng = StdRng::seed_from_u64(3);
        for dims in SHAPES {
            for train in [true, false] {
                let p = pair(&mut rng, dims[1]);
                let x = away_from_kinks(&p, &input(&mut rng, dims), train);
                let r = randn(&mut rng, dims, 0.0, 1.0);
                for loss in [Some(&r), None] {
                    let what = format!("relu train={train} {dims:?} weighted={}", loss.is_some());
                    let want = p.reference(&x, loss, train, true);
                    let got = p.ours(&x, loss, train, true, true);
                    assert_runs_close(&what, &got, &want);
                    let unfused = run(
                        |x| {
                            p.bn.forward_with(x, train, false, true)
                                .unwrap()
                                .relu()
                                .unwrap()
                        },
                        &x,
                        loss,
                        &p.vm,
                    );
                    assert_runs_close(&format!("{what} vs unfused"), &got, &unfused);
                    // Ours ran twice: keep the running statistics in step.
                    p.bn_ref.forward_t(&x, train).unwrap();
                }
                assert_stats_close(&format!("relu train={train} {dims:?}"), &p);
            }
        }
    }

    #[test]
    fn non_contiguous_input() {
        let mut rng = StdRng::seed_from_u64(4);
        let p = pair(&mut rng, 6);
        // (N, H, C, W) seen as (N, C, H, W).
        let x = input(&mut rng, &[3, 5, 6, 7]).transpose(1, 2).unwrap();
        assert!(!x.is_contiguous());
        let r = randn(&mut rng, &[3, 6, 5, 7], 0.0, 1.0);
        let f_ref = |x: &Tensor| {
            p.bn_ref
                .forward_t(&x.transpose(1, 2).unwrap(), true)
                .unwrap()
        };
        let f = |x: &Tensor| {
            let x = x.transpose(1, 2).unwrap();
            assert!(!x.is_contiguous());
            p.bn.forward_with(&x, true, false, true).unwrap()
        };
        let x = x.transpose(1, 2).unwrap().contiguous().unwrap();
        let want = run(f_ref, &x, Some(&r), &p.vm_ref);
        let got = run(f, &x, Some(&r), &p.vm);
        assert_runs_close("non-contiguous", &got, &want);
        assert_stats_close("non-contiguous", &p);
    }

    #[test]
    fn stock_path_shares_the_variables() {
        let mut rng = StdRng::seed_from_u64(5);
        let p = pair(&mut rng, 4);
        let x = input(&mut rng, &[6, 4, 3, 3]);
        let r = randn(&mut rng, &[6, 4, 3, 3], 0.0, 1.0);
        let want = p.reference(&x, Some(&r), true, false);
        let got = p.ours(&x, Some(&r), true, false, false);
        assert_runs_close("stock", &got, &want);
        assert_stats_close("stock", &p);
        // The public entry points agree with both paths whichever kernels are selected.
        let y = p.bn.forward_t(&x, false).unwrap();
        let want = p.bn_ref.forward_t(&x, false).unwrap();
        assert_close("forward_t", &y, &want);
        let y = p.bn.forward_t_relu(&x, false).unwrap();
        assert_close("forward_t_relu", &y, &want.relu().unwrap());
    }

    #[test]
    fn variable_names_and_init_match_candle_nn() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let bn = batch_norm(5, VarBuilder::from_varmap(&vm, DType::F32, &dev).pp("b")).unwrap();
        let mut names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(
            names,
            ["b.bias", "b.running_mean", "b.running_var", "b.weight"]
        );
        let v = |name: &str| var(&vm, name).as_tensor().to_vec1::<f32>().unwrap();
        assert_eq!(v("b.bias"), [0.0; 5]);
        assert_eq!(v("b.running_mean"), [0.0; 5]);
        assert_eq!(v("b.running_var"), [1.0; 5]);
        assert_eq!(v("b.weight"), [1.0; 5]);
        assert_eq!((bn.eps(), bn.momentum()), (1e-5, 0.1));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut rng = StdRng::seed_from_u64(6);
        let p = pair(&mut rng, 4);
        for dims in [&[2, 3, 4, 4][..], &[8][..]] {
            let x = randn(&mut rng, dims, 0.0, 1.0);
            for fast in [true, false] {
                assert!(
                    p.bn.forward_with(&x, true, false, fast).is_err(),
                    "{dims:?}"
                );
            }
        }
    }

    /// Times 20 training steps on (256, 16, 28, 28) for both paths:
    /// `cargo test --release -p ood-model --lib batchnorm_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn batchnorm_speed() {
        let mut rng = StdRng::seed_from_u64(7);
        let dims = [256, 16, 28, 28];
        let p = pair(&mut rng, 16);
        let x = input(&mut rng, &dims);
        let xv = Var::from_tensor(&x).unwrap();
        // Mean and least time of 20 runs.
        let time = |f: &dyn Fn()| {
            f();
            let mut times = vec![];
            for _ in 0..20 {
                let t = std::time::Instant::now();
                f();
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let mean = times.iter().sum::<f64>() / 20.0;
            (mean, times.iter().cloned().fold(f64::INFINITY, f64::min))
        };
        // The kernels alone, on slices (no allocation of tensors, no autograd).
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let dy: Vec<f32> = xs.iter().map(|v| v.sin()).collect();
        let d = Dims {
            n: 256,
            c: 16,
            s: 784,
        };
        let (mean, var) = channel_stats(&xs, d);
        let norm = Norm {
            mean: mean.iter().map(|&m| m as f32).collect(),
            inv_std: var
                .iter()
                .map(|&v| (1.0 / (v + 1e-5).sqrt()) as f32)
                .collect(),
        };
        let (g, b) = (vec![0.7f32; 16], vec![0.1f32; 16]);
        let stats = time(&|| {
            std::hint::black_box(channel_stats(&xs, d));
        });
        eprintln!("kernel: statistics {:.2} ms (min {:.2})", stats.0, stats.1);
        for relu in [false, true] {
            let fwd = time(&|| {
                std::hint::black_box(normalise(&xs, &g, &b, &norm, d, relu));
            });
            let bwd = time(&|| {
                std::hint::black_box(backward(&xs, &dy, &g, &b, &norm, d, relu, true));
            });
            eprintln!(
                "kernel relu={relu:<5}: normalise {:.2} ms (min {:.2}), backward {:.2} ms (min {:.2})",
                fwd.0, fwd.1, bwd.0, bwd.1
            );
        }
        // `y.backward()` seeds the backward with ones; that allocation is common to both paths.
        for fast in [false, true] {
            for relu in [false, true] {
                let fwd = time(&|| {
                    p.bn.forward_with(&x, true, relu, fast).unwrap();
                });
                let y = p.bn.forward_with(xv.as_tensor(), true, relu, fast).unwrap();
                let bwd = time(&|| {
                    let grads = y.backward().unwrap();
                    assert!(grads.get(xv.as_tensor()).is_some());
                });
                eprintln!(
                    "fast={fast:<5} relu={relu:<5} forward {:6.2} ms (min {:6.2}), \
                     backward {:6.2} ms (min {:6.2}), 20 forward+backward {:7.1} ms",
                    fwd.0,
                    fwd.1,
                    bwd.0,
                    bwd.1,
                    20.0 * (fwd.0 + bwd.0),
                );
            }
        }
    }
}
