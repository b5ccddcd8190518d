//! Per-op timings (`--ops`): every convolution of the model and three BatchNorms alone, this
//! project's kernels against candle's stock ops.

use candle_core::{Device, ModuleT, Tensor, Var};
use ood_model::ops::conv::{ConvBackwardData, ConvBackwardFilter, ConvForward};
use ood_model::ops::{self, Kernels};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::rounds::timed;
use crate::workloads::kernels_name;
use crate::Result;

/// One op measurement, for one set of kernels. For BatchNorm `dgrad_ms` is the whole backward
/// and `wgrad_ms` is absent.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct OpRow {
    pub(crate) kind: &'static str,
    pub(crate) op: String,
    pub(crate) width: usize,
    pub(crate) batch: usize,
    pub(crate) kernels: &'static str,
    pub(crate) fwd_ms: f64,
    pub(crate) dgrad_ms: Option<f64>,
    pub(crate) wgrad_ms: Option<f64>,
    /// Every gradient of the op: `dgrad_ms + wgrad_ms`, or the measured backward.
    pub(crate) bwd_ms: f64,
}

/// A convolution of the model, as torch_ref.py's `bench_ops` lists them.
struct ConvShape {
    name: &'static str,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    /// Input side.
    side: usize,
    transposed: bool,
}

fn conv_shapes(w: usize) -> Vec<ConvShape> {
    let conv = |name, cin, cout, k, stride, pad, side| ConvShape {
        name,
        cin,
        cout,
        k,
        stride,
        pad,
        side,
        transposed: false,
    };
    let up = |name, cin, cout, side| ConvShape {
        name,
        cin,
        cout,
        k: 4,
        stride: 2,
        pad: 1,
        side,
        transposed: true,
    };
    vec![
        conv("stem 3x3 1->W @28", 1, w, 3, 1, 1, 28),
        conv("s1 3x3 W->W @28", w, w, 3, 1, 1, 28),
        conv("s2a 3x3/2 W->2W 28->14", w, 2 * w, 3, 2, 1, 28),
        conv("s2 3x3 2W->2W @14", 2 * w, 2 * w, 3, 1, 1, 14),
        conv("s2sc 1x1/2 W->2W", w, 2 * w, 1, 2, 0, 28),
        conv("s3a 3x3/2 2W->4W 14->7", 2 * w, 4 * w, 3, 2, 1, 14),
        conv("s3 3x3 4W->4W @7", 4 * w, 4 * w, 3, 1, 1, 7),
        conv("s3sc 1x1/2 2W->4W", 2 * w, 4 * w, 1, 2, 0, 14),
        conv("out 3x3 W->1 @28", w, 1, 3, 1, 1, 28),
        up("up1 convT4/2 4W->2W 7->14", 4 * w, 2 * w, 7),
        up("up2 convT4/2 2W->W 14->28", 2 * w, w, 14),
    ]
}

/// Runs one op for its time alone.
fn call<T>(result: candle_core::Result<T>) -> Result<()> {
    std::hint::black_box(result?);
    Ok(())
}

/// One pass of a layer, as [`pass_times`] times it.
type Pass<'a> = &'a dyn Fn() -> candle_core::Result<Tensor>;

/// The median milliseconds of each of a layer's three passes: forward, input gradient and
/// weight gradient.
fn pass_times(steps: usize, passes: [Pass<'_>; 3]) -> Result<[f64; 3]> {
    let mut ms = [0.0; 3];
    for (t, pass) in ms.iter_mut().zip(passes) {
        *t = timed(1, steps, || call(pass()))?.0 * 1e3;
    }
    Ok(ms)
}

fn random_tensor(shape: &[usize], scale: f32, rng: &mut impl Rng) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-1.0f32..1.0) * scale)
        .collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// candle 0.11's weight gradient of a convolution (`backprop.rs`, `Op::Conv2D`): a
/// convolution of the transposed input by the transposed output gradient, dilated by the
/// stride, cropped to the kernel. For a transposed convolution the two arguments swap.
fn candle_weight_grad(
    input: &Tensor,
    grad: &Tensor,
    pad: usize,
    stride: usize,
    k: usize,
) -> candle_core::Result<Tensor> {
    let g = input
        .transpose(0, 1)?
        .conv2d(&grad.transpose(0, 1)?, pad, 1, stride, 1)?
        .transpose(0, 1)?;
    let (_, _, g0, g1) = g.dims4()?;
    Ok(if g0 != k || g1 != k {
        g.narrow(2, 0, k)?.narrow(3, 0, k)?
    } else {
        g
    })
}

/// Per-op timings at width `w`: every convolution of the model and three BatchNorms.
pub(crate) fn measure_ops(w: usize, batch: usize, steps: usize) -> Result<Vec<OpRow>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
    let mut rows = Vec::new();
    let ms = |(median, _): (f64, f64)| median * 1e3;
    for c in conv_shapes(w) {
        eprint!("op W={w} {} ... ", c.name);
        let x = random_tensor(&[batch, c.cin, c.side, c.side], 1.0, &mut rng)?;
        let (s, p, k) = (c.stride, c.pad, c.k);
        let (fast, stock) = if !c.transposed {
            let wt = random_tensor(&[c.cout, c.cin, k, k], 0.1, &mut rng)?;
            let fwd = ConvForward { stride: s, pad: p };
            let y = x.apply_op2_no_bwd(&wt, &fwd)?;
            let dy = random_tensor(y.dims(), 1.0, &mut rng)?;
            let dgrad_op = ConvBackwardData {
                stride: s,
                pad: p,
                h: c.side,
                w: c.side,
            };
            let wgrad_op = ConvBackwardFilter {
                stride: s,
                pad: p,
                k,
            };
            let fast = pass_times(
                steps,
                [
                    &|| x.apply_op2_no_bwd(&wt, &fwd),
                    &|| dy.apply_op2_no_bwd(&wt, &dgrad_op),
                    &|| x.apply_op2_no_bwd(&dy, &wgrad_op),
                ],
            )?;
            // candle's input gradient: a transposed convolution, padded out to the input size.
            let out_size = (y.dim(2)? - 1) * s + k - 2 * p;
            let out_padding = c.side - out_size;
            let stock = pass_times(
                steps,
                [
                    &|| x.conv2d(&wt, p, s, 1, 1),
                    &|| dy.conv_transpose2d(&wt, p, out_padding, s, 1),
                    &|| candle_weight_grad(&x, &dy, p, s, k),
                ],
            )?;
            (fast, stock)
        } else {
            // Weight laid out (in, out, k, k); output side 2 * side.
            let out_side = (c.side - 1) * s + k - 2 * p;
            let wt = random_tensor(&[c.cin, c.cout, k, k], 0.1, &mut rng)?;
            let fwd = ConvBackwardData {
                stride: s,
                pad: p,
                h: out_side,
                w: out_side,
            };
            let y = x.apply_op2_no_bwd(&wt, &fwd)?;
            let dy = random_tensor(y.dims(), 1.0, &mut rng)?;
            let dgrad_op = ConvForward { stride: s, pad: p };
            let wgrad_op = ConvBackwardFilter {
                stride: s,
                pad: p,
                k,
            };
            let fast = pass_times(
                steps,
                [
                    &|| x.apply_op2_no_bwd(&wt, &fwd),
                    &|| dy.apply_op2_no_bwd(&wt, &dgrad_op),
                    &|| dy.apply_op2_no_bwd(&x, &wgrad_op),
                ],
            )?;
            let stock = pass_times(
                steps,
                [
                    &|| x.conv_transpose2d(&wt, p, 0, s, 1),
                    &|| dy.conv2d(&wt, p, s, 1, 1),
                    &|| candle_weight_grad(&dy, &x, p, s, k),
                ],
            )?;
            (fast, stock)
        };
        eprintln!(
            "{:.1}x",
            (stock.iter().sum::<f64>()) / fast.iter().sum::<f64>()
        );
        for (kernels, t) in [("fast", fast), ("candle", stock)] {
            rows.push(OpRow {
                kind: "op",
                op: c.name.to_string(),
                width: w,
                batch,
                kernels,
                fwd_ms: t[0],
                dgrad_ms: Some(t[1]),
                wgrad_ms: Some(t[2]),
                bwd_ms: t[1] + t[2],
            });
        }
    }
    for (name, channels, side) in [
        ("bn W @28", w, 28),
        ("bn 2W @14", 2 * w, 14),
        ("bn 4W @7", 4 * w, 7),
    ] {
        eprint!("op W={w} {name} ... ");
        let x = Var::from_tensor(&random_tensor(
            &[batch, channels, side, side],
            1.0,
            &mut rng,
        )?)?;
        let g = random_tensor(&[batch, channels, side, side], 1.0, &mut rng)?;
        let layer = ops::batchnorm::BatchNorm::fresh(channels)?;
        let mut times = Vec::new();
        for kernels in [Kernels::Fast, Kernels::Candle] {
            ops::set_kernels(kernels);
            let fwd = ms(timed(1, steps, || {
                call(layer.forward_t(x.as_tensor(), true))
            })?);
            // A graph's backward can run again and again: time it alone.
            let loss = (layer.forward_t(x.as_tensor(), true)? * &g)?.sum_all()?;
            let bwd = ms(timed(1, steps, || call(loss.backward()))?);
            rows.push(OpRow {
                kind: "op",
                op: name.to_string(),
                width: w,
                batch,
                kernels: kernels_name(kernels),
                fwd_ms: fwd,
                dgrad_ms: None,
                wgrad_ms: None,
                bwd_ms: bwd,
            });
            times.push(fwd + bwd);
        }
        eprintln!("{:.1}x", times[1] / times[0]);
    }
    Ok(rows)
}
