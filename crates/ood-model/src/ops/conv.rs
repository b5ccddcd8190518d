//! Convolution and transposed convolution, forward and backward, as candle custom ops.
//!
//! On a CPU with AVX-512, convolutions of stride 1 and 2 (all but the 1x1 shortcuts of this
//! model) run on the direct kernels of `ops::direct`: no im2col, the input only padded.
//! Everything else goes through im2col and GEMM. Three ops do all the work, each a candle
//! `CustomOp2` on contiguous f32 CPU tensors (the formulas below are the im2col route; the
//! direct one computes the same sums):
//!
//! * [`ConvForward`] `(x, w) -> y`: per image, `y = W · im2col(x)`;
//! * [`ConvBackwardData`] `(dy, w) -> dx`: per image, `dx = col2im(Wᵀ · dy)`. This is also the
//!   forward of a transposed convolution, whose weight layout `(in, out, k, k)` is exactly a
//!   convolution weight `(out, in, k, k)` read the other way;
//! * [`ConvBackwardFilter`] `(x, dy) -> dw`: `dw = Σ_images dy · im2col(x)ᵀ`.
//!
//! Each op's backward is built from the other two, so both layers train. Images are spread
//! over the rayon pool (one GEMM per image, each on one thread) and per-thread buffers are
//! reused, which keeps both cores busy without sharing cache lines.

use super::direct;
use candle_core::{CpuStorage, CustomOp2, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Sizes of one convolution, seen from the convolution's side (input -> output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    /// The geometry of a convolution of an `n x cin x h x w` input with `cout` square `k x k`
    /// filters; the output size follows from stride and padding.
    fn new(
        (n, cin, h, w): (usize, usize, usize, usize),
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        Ok(Self {
            n,
            cin,
            h,
            w,
            cout,
            k,
            stride,
            pad,
            ho: out_size(h, k, stride, pad)?,
            wo: out_size(w, k, stride, pad)?,
        })
    }

    /// Fails unless the convolution's output is `ho x wo` (a gradient of another size was given).
    fn expect_output(self, ho: usize, wo: usize, what: &str) -> Result<Self> {
        if (self.ho, self.wo) != (ho, wo) {
            candle_core::bail!(
                "{what}: an input of {}x{} gives a {}x{} output, not {ho}x{wo}",
                self.h,
                self.w,
                self.ho,
                self.wo
            );
        }
        Ok(self)
    }

    fn col_rows(&self) -> usize {
        self.cin * self.k * self.k
    }
    fn out_pixels(&self) -> usize {
        self.ho * self.wo
    }
    fn in_pixels(&self) -> usize {
        self.h * self.w
    }
    /// A 1x1, stride-1, unpadded convolution needs no im2col: the image is its own column matrix.
    fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
}

/// The range of output columns `ox` whose input column `ox * stride + kj - pad` is inside
/// `0..w`.
fn valid_range(out: usize, stride: usize, offset: isize, size: usize) -> (usize, usize) {
    // need 0 <= ox * stride + offset < size
    let lo = if offset >= 0 {
        0
    } else {
        ((-offset) as usize).div_ceil(stride)
    };
    let hi = if (size as isize) - offset <= 0 {
        0
    } else {
        (((size as isize - offset) as usize).div_ceil(stride)).min(out)
    };
    (lo.min(hi), hi)
}

/// Column matrix `(cin * k * k, ho * wo)` of one image `(cin, h, w)`.
fn im2col(x: &[f32], g: &Geometry, col: &mut [f32]) {
    let (k, s, howo) = (g.k, g.stride, g.out_pixels());
    for c in 0..g.cin {
        let plane = &x[c * g.in_pixels()..(c + 1) * g.in_pixels()];
        for ki in 0..k {
            let (oy_lo, oy_hi) = valid_range(g.ho, s, ki as isize - g.pad as isize, g.h);
            for kj in 0..k {
                let row = (c * k + ki) * k + kj;
                let dst = &mut col[row * howo..(row + 1) * howo];
                let offset = kj as isize - g.pad as isize;
                let (ox_lo, ox_hi) = valid_range(g.wo, s, offset, g.w);
                dst[..oy_lo * g.wo].fill(0.0);
                dst[oy_hi * g.wo..].fill(0.0);
                for oy in oy_lo..oy_hi {
                    let iy = oy * s + ki - g.pad;
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    let line = &mut dst[oy * g.wo..(oy + 1) * g.wo];
                    line[..ox_lo].fill(0.0);
                    line[ox_hi..].fill(0.0);
                    if s == 1 {
                        let start = (ox_lo as isize + offset) as usize;
                        line[ox_lo..ox_hi].copy_from_slice(&src[start..start + ox_hi - ox_lo]);
                    } else {
                        for ox in ox_lo..ox_hi {
                            line[ox] = src[(ox as isize * s as isize + offset) as usize];
                        }
                    }
                }
            }
        }
    }
}

/// Adds a column matrix back onto one image `(cin, h, w)` (the adjoint of [`im2col`]).
fn col2im(col: &[f32], g: &Geometry, x: &mut [f32]) {
    let (k, s, howo) = (g.k, g.stride, g.out_pixels());
    for c in 0..g.cin {
        let plane = &mut x[c * g.in_pixels()..(c + 1) * g.in_pixels()];
        for ki in 0..k {
            let (oy_lo, oy_hi) = valid_range(g.ho, s, ki as isize - g.pad as isize, g.h);
            for kj in 0..k {
                let row = (c * k + ki) * k + kj;
                let src = &col[row * howo..(row + 1) * howo];
                let offset = kj as isize - g.pad as isize;
                let (ox_lo, ox_hi) = valid_range(g.wo, s, offset, g.w);
                for oy in oy_lo..oy_hi {
                    let iy = oy * s + ki - g.pad;
                    let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                    let line = &src[oy * g.wo..(oy + 1) * g.wo];
                    for ox in ox_lo..ox_hi {
                        dst[(ox as isize * s as isize + offset) as usize] += line[ox];
                    }
                }
            }
        }
    }
}

/// `dst (m x n) = [dst +] lhs (m x k) · rhs (k x n)` with explicit row/column strides.
#[allow(clippy::too_many_arguments)]
fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    parallel: bool,
) {
    debug_assert!(dst.len() >= m * n);
    debug_assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    debug_assert!(rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the slices cover every element the strides address (checked above in debug
    // builds, and guaranteed by the geometry in the callers); dst does not alias lhs or rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Whether to spread images over the thread pool (enough images for every thread) rather than
/// run one image at a time with a parallel GEMM inside.
fn images_in_parallel(n: usize) -> bool {
    n >= rayon::current_num_threads()
}

/// Runs `work((image_index, image_out), scratch)` for each `per_image`-long chunk of `out`,
/// across the pool when `across`, each thread reusing its own scratch (an im2col buffer, or
/// the direct kernels' buffers).
fn for_each_image<T, S, F>(out: &mut [T], per_image: usize, across: bool, work: F)
where
    T: Send,
    S: Default + Send,
    F: Fn((usize, &mut [T]), &mut S) + Sync,
{
    if across {
        out.par_chunks_mut(per_image)
            .enumerate()
            .for_each_init(S::default, |scratch, item| work(item, scratch));
    } else {
        let mut scratch = S::default();
        out.chunks_mut(per_image)
            .enumerate()
            .for_each(|item| work(item, &mut scratch));
    }
}

/// Runs `work(first_image, batch, scratch)` for the direct kernels over `out`, the outputs of
/// images of `per_image` values each: groups of `group` images (see [`direct_group`]) while
/// they last, then single images, spread over the pool.
fn for_each_direct_batch<F>(out: &mut [MaybeUninit<f32>], per_image: usize, group: usize, work: F)
where
    F: Fn(usize, &mut [MaybeUninit<f32>], &mut direct::Scratch) + Sync,
{
    let n = out.len() / per_image;
    let grouped = n / group * group;
    let (groups, singles) = out.split_at_mut(grouped * per_image);
    let batches: Vec<_> = groups
        .chunks_mut(group * per_image)
        .enumerate()
        .map(|(k, batch)| (k * group, batch))
        .chain(
            singles
                .chunks_mut(per_image)
                .enumerate()
                .map(|(i, image)| (grouped + i, image)),
        )
        .collect();
    let run =
        |(first, batch): (usize, &mut [MaybeUninit<f32>])| with_scratch(|s| work(first, batch, s));
    if images_in_parallel(batches.len()) {
        batches.into_par_iter().for_each(run);
    } else {
        batches.into_iter().for_each(run);
    }
}

thread_local! {
    /// Each thread's buffers for the direct kernels, kept from call to call: allocated anew
    /// for every call, they were zeroed anew (`perf`: memset 2.5% of a W=64 training step,
    /// 1.1% with the buffers kept, which still clear when the layout changes).
    static SCRATCH: std::cell::RefCell<direct::Scratch> = Default::default();
}

/// Runs `f` with this thread's [`SCRATCH`] (or fresh buffers, should `f` ever run inside
/// another call of this on the same thread).
fn with_scratch<R>(f: impl FnOnce(&mut direct::Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut direct::Scratch::default()),
    })
}

/// Images per call of the direct kernels: a group of sixteen (one per vector lane, see
/// `direct::lanes`) where there are that many and the kernel sums over at least `least` of
/// `channels` (the lanes' measured break-even), else one.
fn direct_group(n: usize, channels: usize, least: usize) -> usize {
    #[cfg(test)]
    match GROUPS.with(|c| c.get()) {
        Groups::Measured => {}
        Groups::Always if n >= 16 => return 16,
        _ => return 1,
    }
    #[cfg(target_arch = "x86_64")]
    if n >= direct::GROUP && channels >= least {
        return direct::GROUP;
    }
    let _ = (n, channels, least);
    1
}

impl Geometry {
    /// Whether the direct kernels may take this convolution: on an AVX-512 CPU, and not a
    /// strided 1x1 (a subsampling and one GEMM, which im2col does well). Strides other than 1
    /// and 2 are refused by the kernels' own constructors.
    fn direct_applies(&self) -> bool {
        direct_allowed() && !(self.k == 1 && self.stride > 1)
    }

    /// The direct kernels' form of this convolution, when they apply.
    fn direct(&self) -> Option<direct::Conv> {
        if !self.direct_applies() {
            return None;
        }
        let conv = direct::Conv::new(
            self.cin,
            self.cout,
            self.k,
            self.stride,
            self.pad,
            (self.h, self.w),
        )?;
        (conv.out_size() == (self.ho, self.wo)).then_some(conv)
    }

    /// The direct kernels' form of this convolution's input gradient, when they apply.
    fn direct_input_grad(&self) -> Option<direct::InputGrad> {
        if !self.direct_applies() {
            return None;
        }
        let (size, out) = ((self.h, self.w), (self.ho, self.wo));
        direct::InputGrad::new(
            self.cin,
            self.cout,
            self.k,
            self.stride,
            self.pad,
            size,
            out,
        )
    }
}

#[cfg(test)]
thread_local! {
    /// Set by tests to hold the im2col route to candle's ops on a CPU that has AVX-512 too.
    static IM2COL_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Which images the direct kernels take in groups, for tests: where the lanes pay (the
/// default), wherever there are sixteen, or nowhere.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Groups {
    Measured,
    Always,
    Never,
}

#[cfg(test)]
thread_local! {
    /// Set by tests to compare the groups of sixteen with one image at a time.
    static GROUPS: std::cell::Cell<Groups> = const { std::cell::Cell::new(Groups::Measured) };
}

/// Whether the direct kernels may run (decided on the calling thread, before any work is
/// spread over the pool).
fn direct_allowed() -> bool {
    #[cfg(test)]
    if IM2COL_ONLY.with(|c| c.get()) {
        return false;
    }
    direct::available()
}

fn conv_forward(
    x: &[f32],
    w: &[f32],
    g: &Geometry,
    epilogue: Option<&direct::Epilogue>,
) -> Vec<f32> {
    if let Some(conv) = g.direct() {
        let (in_len, out_len) = (g.cin * g.in_pixels(), g.cout * g.out_pixels());
        // Every value written: each group's output by `forward_group`, each image's by
        // `forward_image`.
        return super::written_vec(g.n * out_len, |y| {
            let group = direct_group(g.n, g.cin, direct::LANES_LEAST_CHANNELS);
            for_each_direct_batch(y, out_len, group, |first, batch, s| {
                let x = &x[first * in_len..first * in_len + batch.len() / out_len * in_len];
                if batch.len() == out_len {
                    direct::forward_image(&conv, x, w, batch, s, epilogue)
                } else {
                    #[cfg(target_arch = "x86_64")]
                    direct::forward_group(&conv, x, w, batch, s, epilogue)
                }
            })
        });
    }
    let (howo, kk) = (g.out_pixels(), g.col_rows());
    let mut y = vec![0f32; g.n * g.cout * howo];
    let across = images_in_parallel(g.n);
    let work = |(i, y_img): (usize, &mut [f32]), col: &mut Vec<f32>| {
        let x_img = &x[i * g.cin * g.in_pixels()..(i + 1) * g.cin * g.in_pixels()];
        let cols: &[f32] = if g.is_pointwise() {
            x_img
        } else {
            col.resize(kk * howo, 0.0);
            im2col(x_img, g, col);
            col
        };
        matmul(
            (g.cout, howo, kk),
            y_img,
            false,
            w,
            (kk, 1),
            cols,
            (howo, 1),
            !across,
        );
        if let Some(e) = epilogue {
            for (channel, &shift) in y_img.chunks_exact_mut(howo).zip(&e.shift) {
                for v in channel {
                    *v += shift;
                    if e.relu {
                        *v = v.max(0.0);
                    }
                }
            }
        }
    };
    for_each_image(&mut y, g.cout * howo, across, work);
    y
}

fn conv_backward_data(dy: &[f32], w: &[f32], g: &Geometry) -> Vec<f32> {
    if let Some(grad) = g.direct_input_grad() {
        let weights = grad.phase_weights(w);
        let (in_len, out_len) = (g.cin * g.in_pixels(), g.cout * g.out_pixels());
        // Every value written: each group's gradient by `input_gradient_group`, each image's
        // by `input_gradient_image`.
        return super::written_vec(g.n * in_len, |dx| {
            let group = direct_group(g.n, g.cout, direct::LANES_LEAST_CHANNELS);
            for_each_direct_batch(dx, in_len, group, |first, batch, s| {
                let dy = &dy[first * out_len..first * out_len + batch.len() / in_len * out_len];
                if batch.len() == in_len {
                    direct::input_gradient_image(&grad, dy, &weights, batch, s)
                } else {
                    #[cfg(target_arch = "x86_64")]
                    direct::input_gradient_group(&grad, dy, &weights, batch, s)
                }
            })
        });
    }
    let (howo, kk) = (g.out_pixels(), g.col_rows());
    let mut dx = vec![0f32; g.n * g.cin * g.in_pixels()];
    let across = images_in_parallel(g.n);
    let work = |(i, dx_img): (usize, &mut [f32]), col: &mut Vec<f32>| {
        let dy_img = &dy[i * g.cout * howo..(i + 1) * g.cout * howo];
        // Wᵀ is (kk x cout): element (r, c) of it is w[c * kk + r].
        if g.is_pointwise() {
            matmul(
                (kk, howo, g.cout),
                dx_img,
                false,
                w,
                (1, kk),
                dy_img,
                (howo, 1),
                !across,
            );
        } else {
            col.resize(kk * howo, 0.0);
            matmul(
                (kk, howo, g.cout),
                col,
                false,
                w,
                (1, kk),
                dy_img,
                (howo, 1),
                !across,
            );
            col2im(col, g, dx_img);
        }
    };
    for_each_image(&mut dx, g.cin * g.in_pixels(), across, work);
    dx
}

fn conv_backward_filter(x: &[f32], dy: &[f32], g: &Geometry) -> Vec<f32> {
    let (howo, kk) = (g.out_pixels(), g.col_rows());
    let conv = g.direct();
    // Decided here, on the calling thread (see `direct_allowed`).
    let group = direct_group(g.n, g.cin, direct::LANES_LEAST_FILTER_CHANNELS);
    let accumulate_chunk = |images: std::ops::Range<usize>, parallel: bool| {
        let mut dw = vec![0f32; g.cout * kk];
        if let Some(conv) = &conv {
            let (in_len, out_len) = (g.cin * g.in_pixels(), g.cout * howo);
            with_scratch(|s| {
                // Groups of sixteen images while they last (see `direct_group`), then the rest in
                // chunks on the grid.
                let grouped = match group {
                    1 => images.start,
                    _ => images.start + images.len() / group * group,
                };
                for start in (images.start..grouped).step_by(group) {
                    let end = start + group;
                    #[cfg(target_arch = "x86_64")]
                    direct::filter_gradient_group(
                        conv,
                        &x[start * in_len..end * in_len],
                        &dy[start * out_len..end * out_len],
                        &mut dw,
                        s,
                    );
                }
                let step = direct::filter_chunk(conv);
                for start in (grouped..images.end).step_by(step) {
                    let end = (start + step).min(images.end);
                    direct::filter_gradient_images(
                        conv,
                        &x[start * in_len..end * in_len],
                        &dy[start * out_len..end * out_len],
                        &mut dw,
                        s,
                    );
                }
            });
            return dw;
        }
        let mut col = Vec::new();
        for i in images {
            let x_img = &x[i * g.cin * g.in_pixels()..(i + 1) * g.cin * g.in_pixels()];
            let dy_img = &dy[i * g.cout * howo..(i + 1) * g.cout * howo];
            let cols: &[f32] = if g.is_pointwise() {
                x_img
            } else {
                col.resize(kk * howo, 0.0);
                im2col(x_img, g, &mut col);
                &col
            };
            // dw (cout x kk) += dy (cout x howo) · colsᵀ (howo x kk)
            matmul(
                (g.cout, kk, howo),
                &mut dw,
                true,
                dy_img,
                (howo, 1),
                cols,
                (1, howo),
                parallel,
            );
        }
        dw
    };
    let threads = rayon::current_num_threads();
    if !images_in_parallel(g.n) || threads == 1 {
        return accumulate_chunk(0..g.n, threads > 1);
    }
    // Whole groups of images per thread where the groups apply.
    let per = g.n.div_ceil(threads).div_ceil(group) * group;
    let partial: Vec<Vec<f32>> = (0..threads)
        .into_par_iter()
        .map(|t| accumulate_chunk((t * per).min(g.n)..((t + 1) * per).min(g.n), false))
        .collect();
    let mut dw = partial[0].clone();
    for p in &partial[1..] {
        for (a, b) in dw.iter_mut().zip(p) {
            *a += b;
        }
    }
    dw
}

fn dims4(l: &Layout, what: &str) -> Result<(usize, usize, usize, usize)> {
    match l.dims() {
        &[a, b, c, d] => Ok((a, b, c, d)),
        d => candle_core::bail!("{what}: expected 4 dimensions, got {d:?}"),
    }
}

fn out_size(size: usize, k: usize, stride: usize, pad: usize) -> Result<usize> {
    if size + 2 * pad < k {
        candle_core::bail!("convolution kernel {k} larger than padded input {size}+2*{pad}");
    }
    Ok((size + 2 * pad - k) / stride + 1)
}

/// The gradient of the weight `w` of a convolution `input -> output`, given the output's gradient.
fn filter_gradient(
    input: &Tensor,
    out_grad: &Tensor,
    w: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    input.apply_op2_no_bwd(
        out_grad,
        &ConvBackwardFilter {
            stride,
            pad,
            k: w.dim(2)?,
        },
    )
}

/// `(x, w) -> conv2d(x, w)`.
#[derive(Debug, Clone, Copy)]
pub struct ConvForward {
    pub stride: usize,
    pub pad: usize,
}

/// `(dy, w) -> dx`, the input gradient of a convolution whose input was `h x w`.
#[derive(Debug, Clone, Copy)]
pub struct ConvBackwardData {
    pub stride: usize,
    pub pad: usize,
    pub h: usize,
    pub w: usize,
}

/// `(x, dy) -> dw`, the weight gradient of a convolution with a `k x k` kernel.
#[derive(Debug, Clone, Copy)]
pub struct ConvBackwardFilter {
    pub stride: usize,
    pub pad: usize,
    pub k: usize,
}

impl CustomOp2 for ConvForward {
    fn name(&self) -> &'static str {
        "ood-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        forward_storage((s1, l1), (s2, l2), self.stride, self.pad, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let (_, _, h, wd) = x.dims4()?;
        // The input of the first layer is the images, which want no gradient: its input
        // gradient would cost about a quarter of that layer's backward for nothing.
        let dx = if x.track_op() {
            Some(dy.apply_op2_no_bwd(
                w,
                &ConvBackwardData {
                    stride: self.stride,
                    pad: self.pad,
                    h,
                    w: wd,
                },
            )?)
        } else {
            None
        };
        let dw = filter_gradient(x, &dy, w, self.stride, self.pad)?;
        Ok((dx, Some(dw)))
    }
}

/// The forward of [`ConvForward`] and [`ConvEval`] on CPU storage: `(x, w) -> y`, through
/// `epilogue` when given.
fn forward_storage(
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    stride: usize,
    pad: usize,
    epilogue: Option<&direct::Epilogue>,
) -> Result<(CpuStorage, Shape)> {
    let (n, cin, h, w) = dims4(l1, "conv2d input")?;
    let (cout, cin_w, k, k2) = dims4(l2, "conv2d weight")?;
    let shifts = epilogue.map_or(cout, |e| e.shift.len());
    if cin != cin_w || k != k2 || shifts != cout {
        candle_core::bail!(
            "conv2d: input {:?}, weight {:?} and {shifts} output shifts do not fit",
            l1.dims(),
            l2.dims(),
        );
    }
    let g = Geometry::new((n, cin, h, w), cout, k, stride, pad)?;
    let y = conv_forward(
        super::cpu_f32(s1, l1, "conv2d input")?,
        super::cpu_f32(s2, l2, "conv2d weight")?,
        &g,
        epilogue,
    );
    Ok((CpuStorage::F32(y), Shape::from((n, cout, g.ho, g.wo))))
}

/// `(x, w) -> relu?(conv2d(x, w) + shift)`, for evaluation only (no gradient): a convolution
/// with the BatchNorm after it folded into `w` and `shift` (see [`Conv2d::forward_folded`]).
#[derive(Debug, Clone)]
struct ConvEval {
    stride: usize,
    pad: usize,
    epilogue: direct::Epilogue,
}

impl CustomOp2 for ConvEval {
    fn name(&self) -> &'static str {
        "ood-conv2d-eval"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let e = &self.epilogue;
        forward_storage((s1, l1), (s2, l2), self.stride, self.pad, Some(e))
    }
}

impl CustomOp2 for ConvBackwardData {
    fn name(&self) -> &'static str {
        "ood-conv2d-backward-data"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, cout, ho, wo) = dims4(l1, "output gradient")?;
        let (cout_w, cin, k, _) = dims4(l2, "conv weight")?;
        if cout != cout_w {
            candle_core::bail!(
                "conv backward: gradient {:?} and weight {:?} do not fit",
                l1.dims(),
                l2.dims()
            );
        }
        let g = Geometry::new((n, cin, self.h, self.w), cout, k, self.stride, self.pad)?
            .expect_output(ho, wo, "conv backward")?;
        let dx = conv_backward_data(
            super::cpu_f32(s1, l1, "output gradient")?,
            super::cpu_f32(s2, l2, "conv weight")?,
            &g,
        );
        Ok((CpuStorage::F32(dx), Shape::from((n, cin, self.h, self.w))))
    }

    /// As the forward of a transposed convolution `(x, w) -> y`: `dx = conv(dy, w)` and
    /// `dw = filter gradient of a convolution with input dy and output gradient x`.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = dy.apply_op2_no_bwd(
            w,
            &ConvForward {
                stride: self.stride,
                pad: self.pad,
            },
        )?;
        let dw = filter_gradient(&dy, x, w, self.stride, self.pad)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp2 for ConvBackwardFilter {
    fn name(&self) -> &'static str {
        "ood-conv2d-backward-filter"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, cin, h, w) = dims4(l1, "conv input")?;
        let (n2, cout, ho, wo) = dims4(l2, "output gradient")?;
        if n != n2 {
            candle_core::bail!("conv filter gradient: batch {n} vs {n2}");
        }
        let g = Geometry::new((n, cin, h, w), cout, self.k, self.stride, self.pad)?.expect_output(
            ho,
            wo,
            "conv filter gradient",
        )?;
        let dw = conv_backward_filter(
            super::cpu_f32(s1, l1, "conv input")?,
            super::cpu_f32(s2, l2, "output gradient")?,
            &g,
        );
        Ok((
            CpuStorage::F32(dw),
            Shape::from((cout, cin, self.k, self.k)),
        ))
    }
}

/// `conv2d(x, w)` with square stride and padding, no dilation or groups.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    if super::fast_path(x) {
        x.contiguous()?
            .apply_op2(&w.contiguous()?, ConvForward { stride, pad })
    } else {
        x.conv2d(w, pad, stride, 1, 1)
    }
}

/// `conv_transpose2d(x, w)` with `w` laid out `(in, out, k, k)` as in PyTorch and candle.
pub fn conv_transpose2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    pad: usize,
    output_padding: usize,
) -> Result<Tensor> {
    if super::fast_path(x) {
        let (_, _, h, wd) = x.dims4()?;
        let k = w.dim(2)?;
        let size = |s: usize| (s - 1) * stride + k + output_padding - 2 * pad;
        x.contiguous()?.apply_op2(
            &w.contiguous()?,
            ConvBackwardData {
                stride,
                pad,
                h: size(h),
                w: size(wd),
            },
        )
    } else {
        x.conv_transpose2d(w, pad, output_padding, stride, 1)
    }
}

/// A convolution layer with the same variable names and initialisation as candle-nn's.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    pad: usize,
}

impl Conv2d {
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get_with_hints(
            (cout, cin, k, k),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let bias = if bias {
            let bound = 1. / ((cin * k * k) as f64).sqrt();
            Some(vb.get_with_hints(
                cout,
                "bias",
                candle_nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            stride,
            pad,
        })
    }
}

impl Conv2d {
    /// In evaluation, `bn(self(x))` (then a ReLU when `relu`) as one convolution: the
    /// BatchNorm's per-channel scale folded into the weights, its shift (and this layer's bias)
    /// added as the output is written. `None` where the fast kernels do not take `x`; then
    /// the layers run one after the other. Not for training: it has no gradient.
    pub fn forward_folded(
        &self,
        x: &Tensor,
        bn: &super::batchnorm::BatchNorm,
        relu: bool,
    ) -> Result<Option<Tensor>> {
        let cout = self.weight.dim(0)?;
        if !(super::fast_path(x) && super::fast_path(&self.weight) && bn.folds_into(cout)) {
            return Ok(None);
        }
        let (scale, mut shift) = bn.eval_affine()?;
        if let Some(bias) = &self.bias {
            for ((s, &k), &b) in shift.iter_mut().zip(&scale).zip(&bias.to_vec1::<f32>()?) {
                *s += b * k;
            }
        }
        let scale = Tensor::from_vec(scale, (cout, 1, 1, 1), x.device())?;
        let w = self.weight.broadcast_mul(&scale)?.contiguous()?;
        let op = ConvEval {
            stride: self.stride,
            pad: self.pad,
            epilogue: direct::Epilogue { shift, relu },
        };
        x.contiguous()?.apply_op2_no_bwd(&w, &op).map(Some)
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = conv2d(x, &self.weight, self.stride, self.pad)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        }
    }
}

/// A transposed convolution layer without bias, named as candle-nn's.
#[derive(Debug, Clone)]
pub struct ConvTranspose2d {
    weight: Tensor,
    stride: usize,
    pad: usize,
}

impl ConvTranspose2d {
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let bound = 1. / (cout as f64).sqrt() / k as f64;
        let weight = vb.get_with_hints(
            (cin, cout, k, k),
            "weight",
            candle_nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        Ok(Self {
            weight,
            stride,
            pad,
        })
    }
}

impl Module for ConvTranspose2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv_transpose2d(x, &self.weight, self.stride, self.pad, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    fn random(shape: &[usize], rng: &mut impl Rng) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
        assert_eq!(a.dims(), b.dims(), "{what}: shapes");
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * scale,
                "{what}[{i}]: fast {x} vs candle {y}"
            );
        }
    }

    /// Output and both gradients of `f` through the fast op and through candle's.
    fn compare(
        x: &Tensor,
        w: &Tensor,
        fast: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
        stock: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
        what: &str,
        rng: &mut impl Rng,
    ) {
        let run = |f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>| {
            let (xv, wv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
            let y = f(xv.as_tensor(), wv.as_tensor()).unwrap();
            (xv, wv, y)
        };
        let (fx, fw, fy) = run(&fast);
        let (sx, sw, sy) = run(&stock);
        assert_close(&fy, &sy, &format!("{what} output"));
        let r = random(fy.dims(), rng);
        let fg = (&fy * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let sg = (&sy * &r).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(
            fg.get(&fx).unwrap(),
            sg.get(&sx).unwrap(),
            &format!("{what} input gradient"),
        );
        assert_close(
            fg.get(&fw).unwrap(),
            sg.get(&sw).unwrap(),
            &format!("{what} weight gradient"),
        );
    }

    #[test]
    fn convolution_matches_candle() {
        on_both_routes(convolution_matches_candle_on_this_route);
    }

    fn convolution_matches_candle_on_this_route() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        // (batch, cin, cout, size, k, stride, pad)
        let cases = [
            (1, 1, 4, 28, 3, 1, 1),
            (3, 5, 7, 9, 3, 2, 1),
            (4, 8, 16, 14, 3, 2, 1),
            (2, 6, 3, 7, 1, 1, 0),
            (5, 4, 8, 14, 1, 2, 0),
            (1, 3, 2, 8, 3, 1, 0),
            (3, 2, 3, 11, 5, 3, 2),
        ];
        for (n, cin, cout, size, k, stride, pad) in cases {
            let x = random(&[n, cin, size, size], &mut rng);
            let w = random(&[cout, cin, k, k], &mut rng);
            let what = format!("conv n{n} cin{cin} cout{cout} {size}px k{k} s{stride} p{pad}");
            compare(
                &x,
                &w,
                |x, w| x.apply_op2(w, ConvForward { stride, pad }),
                |x, w| x.conv2d(w, pad, stride, 1, 1),
                &what,
                &mut rng,
            );
        }
    }

    /// Runs `f` once on each route: the direct kernels (where the CPU has them), then im2col.
    fn on_both_routes(f: impl Fn()) {
        f();
        IM2COL_ONLY.with(|c| c.set(true));
        f();
        IM2COL_ONLY.with(|c| c.set(false));
    }

    #[test]
    fn an_input_that_wants_no_gradient_gets_none_and_the_weights_still_theirs() {
        // The images entering the first layer: a plain tensor, not a variable.
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let x = random(&[3, 1, 28, 28], &mut rng);
        let w = random(&[16, 1, 3, 3], &mut rng);
        let r = random(&[3, 16, 28, 28], &mut rng);
        let grads = |f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>| {
            let wv = Var::from_tensor(&w).unwrap();
            let y = f(&x, wv.as_tensor()).unwrap();
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            (g.get(&x).cloned(), g.get(&wv).unwrap().clone())
        };
        let (fast_dx, fast_dw) = grads(&|x, w| x.apply_op2(w, ConvForward { stride: 1, pad: 1 }));
        // candle's own op computes the images' gradient all the same, and stores it.
        let (stock_dx, stock_dw) = grads(&|x, w| x.conv2d(w, 1, 1, 1, 1));
        assert!(fast_dx.is_none() && stock_dx.is_some());
        assert_close(&fast_dw, &stock_dw, "weight gradient");
    }

    #[test]
    fn random_shapes_match_candle() {
        on_both_routes(random_shapes);
    }

    #[test]
    fn model_shapes_match_candle() {
        on_both_routes(model_shapes);
    }

    #[test]
    fn folded_batch_norm_matches_convolution_then_batch_norm() {
        on_both_routes(folded_shapes);
    }

    /// `Conv2d::forward_folded` against the layers one after the other, in evaluation, with
    /// running statistics, scales and shifts away from their initial values, with and without a
    /// bias and a ReLU; 1x1 stride-2 shortcuts included.
    fn folded_shapes() {
        use crate::ops::batchnorm::BatchNorm;
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let dev = Device::Cpu;
        for case in 0..24 {
            let (k, stride) = [(3, 1), (3, 2), (1, 2), (1, 1), (5, 1)][case % 5];
            let pad = k / 2;
            let size = rng.random_range(k.max(2)..=15);
            let (n, cin, cout) = (
                [1, 2, 5][rng.random_range(0..3)],
                rng.random_range(1..=9),
                rng.random_range(1..=11),
            );
            let bias = case % 2 == 0;
            let conv = Conv2d {
                weight: random(&[cout, cin, k, k], &mut rng),
                bias: bias.then(|| random(&[cout], &mut rng)),
                stride,
                pad,
            };
            let positive =
                |rng: &mut rand::rngs::StdRng| (random(&[cout], rng).abs().unwrap() + 0.2).unwrap();
            let bn = BatchNorm::new(
                cout,
                random(&[cout], &mut rng),
                positive(&mut rng),
                positive(&mut rng),
                random(&[cout], &mut rng),
                1e-5,
                0.1,
            )
            .unwrap();
            let x = random(&[n, cin, size, size], &mut rng);
            for relu in [false, true] {
                let what = format!("case {case}: n{n} cin{cin} cout{cout} {size}px k{k} s{stride} bias {bias} relu {relu}");
                let got = conv.forward_folded(&x, &bn, relu).unwrap().expect(&what);
                let y =
                    candle_nn::ModuleT::forward_t(&bn, &x.apply(&conv).unwrap(), false).unwrap();
                let want = if relu { y.relu().unwrap() } else { y };
                assert_close(&got, &want, &what);
            }
        }
        // Not on the fast kernels: the caller runs the layers one after the other.
        let x = Tensor::zeros((1, 2, 5, 5), candle_core::DType::F64, &dev).unwrap();
        let conv = Conv2d {
            weight: Tensor::zeros((3, 2, 3, 3), candle_core::DType::F64, &dev).unwrap(),
            bias: None,
            stride: 1,
            pad: 1,
        };
        let bn = BatchNorm::fresh(3).unwrap();
        assert!(conv.forward_folded(&x, &bn, false).unwrap().is_none());
        // A BatchNorm of another width does not fold in.
        let x = random(&[1, 2, 5, 5], &mut rng);
        let conv = Conv2d {
            weight: random(&[3, 2, 3, 3], &mut rng),
            ..conv
        };
        let bn = BatchNorm::fresh(4).unwrap();
        assert!(conv.forward_folded(&x, &bn, false).unwrap().is_none());
    }

    /// Groups of sixteen images (one per vector lane) against the same kernels one image at a
    /// time: the sums run in the same order, so forward (with and without an epilogue) and
    /// input gradient agree to the bit; the weight gradient to rounding. Batches of 16, 17, 19
    /// and 35 (groups and single images together), strides 1 and 2, 1x1 to 5x5 kernels, odd
    /// sizes, lines longer than a vector, channel counts on and off the tiles and the chunks
    /// of input channels; and each against candle's ops.
    #[test]
    fn groups_of_sixteen_images_match_one_image_at_a_time() {
        if !direct::available() {
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        // (batch, cin, cout, size, k, stride, pad)
        let cases = [
            (16, 3, 5, 7, 3, 1, 1),
            (17, 16, 16, 14, 3, 1, 1),
            (35, 18, 9, 9, 3, 2, 1),
            (16, 4, 8, 28, 3, 2, 1),
            (16, 2, 3, 21, 1, 1, 0),
            (19, 5, 4, 11, 4, 2, 1),
            (16, 33, 6, 5, 5, 1, 2),
            (16, 3, 2, 37, 3, 1, 0),
        ];
        for (n, cin, cout, size, k, stride, pad) in cases {
            let what = format!("n{n} cin{cin} cout{cout} {size}px k{k} s{stride} p{pad}");
            let g = Geometry::new((n, cin, size, size), cout, k, stride, pad).unwrap();
            assert!(g.direct().is_some(), "{what}: no direct form");
            let values = |len: usize, rng: &mut rand::rngs::StdRng| -> Vec<f32> {
                (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
            };
            let x = values(n * cin * size * size, &mut rng);
            let w = values(cout * cin * k * k, &mut rng);
            let dy = values(n * cout * g.ho * g.wo, &mut rng);
            let epilogue = direct::Epilogue {
                shift: values(cout, &mut rng),
                relu: true,
            };
            let run = || {
                (
                    conv_forward(&x, &w, &g, None),
                    conv_forward(&x, &w, &g, Some(&epilogue)),
                    conv_backward_data(&dy, &w, &g),
                    conv_backward_filter(&x, &dy, &g),
                )
            };
            GROUPS.with(|c| c.set(Groups::Always));
            let grouped = run();
            GROUPS.with(|c| c.set(Groups::Never));
            let single = run();
            GROUPS.with(|c| c.set(Groups::Measured));
            assert!(grouped.0 == single.0, "{what}: forward");
            assert!(grouped.1 == single.1, "{what}: forward with its epilogue");
            assert!(grouped.2 == single.2, "{what}: input gradient");
            // The weight gradient sums sixteen images in the lanes of a vector, in another
            // order than one image at a time: equal to rounding.
            let scale = single.3.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            for (i, (a, b)) in grouped.3.iter().zip(&single.3).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * scale,
                    "{what}: weight gradient [{i}]: {a} vs {b}"
                );
            }
            let x = Tensor::from_vec(x, (n, cin, size, size), &Device::Cpu).unwrap();
            let w = Tensor::from_vec(w, (cout, cin, k, k), &Device::Cpu).unwrap();
            compare(
                &x,
                &w,
                |x, w| x.apply_op2(w, ConvForward { stride, pad }),
                |x, w| x.conv2d(w, pad, stride, 1, 1),
                &what,
                &mut rng,
            );
        }
    }

    #[test]
    fn the_direct_route_runs_where_the_cpu_has_it() {
        assert_eq!(direct_allowed(), direct::available());
        let g = Geometry::new((2, 16, 28, 28), 16, 3, 1, 1).unwrap();
        assert_eq!(g.direct().is_some(), direct::available());
        // Strided 1x1 shortcuts stay on im2col.
        let g = Geometry::new((2, 16, 28, 28), 32, 1, 2, 0).unwrap();
        assert!(g.direct().is_none());
    }

    /// Random shapes: batch 1 and odd batches, odd sizes, 1x1 to 5x5 kernels, strides 1 and 2,
    /// paddings from 0 to k - 1, channel counts on and off the micro-kernels' tiles.
    fn random_shapes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        for case in 0..40 {
            let k = [1, 3, 3, 3, 5][rng.random_range(0..5)];
            let stride = if case % 3 == 2 { 2 } else { 1 };
            let pad = rng.random_range(0..k);
            let size = rng.random_range(k.max(2)..=17);
            let (n, cin, cout) = (
                [1, 2, 3, 5][rng.random_range(0..4)],
                rng.random_range(1..=9),
                rng.random_range(1..=11),
            );
            let x = random(&[n, cin, size, size], &mut rng);
            let w = random(&[cout, cin, k, k], &mut rng);
            let what =
                format!("case {case}: n{n} cin{cin} cout{cout} {size}px k{k} s{stride} p{pad}");
            compare(
                &x,
                &w,
                |x, w| x.apply_op2(w, ConvForward { stride, pad }),
                |x, w| x.conv2d(w, pad, stride, 1, 1),
                &what,
                &mut rng,
            );
        }
    }

    /// The direct kernels' tiles at the model's own sizes (16 to 64 channels; 28, 14 and 7 px),
    /// and lines long enough (33 to 67 px) for the stride-2 layouts to work in several pieces.
    fn model_shapes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (n, cin, cout, size, stride) in [
            (3, 1, 16, 28, 1),
            (2, 16, 16, 28, 1),
            (3, 32, 32, 14, 1),
            (2, 64, 64, 7, 1),
            (2, 16, 1, 28, 1),
            (17, 8, 4, 7, 1),
            (2, 16, 32, 28, 2),
            (2, 32, 64, 14, 2),
            (1, 3, 5, 67, 2),
            (2, 2, 3, 33, 2),
        ] {
            let x = random(&[n, cin, size, size], &mut rng);
            let w = random(&[cout, cin, 3, 3], &mut rng);
            compare(
                &x,
                &w,
                |x, w| x.apply_op2(w, ConvForward { stride, pad: 1 }),
                |x, w| x.conv2d(w, 1, stride, 1, 1),
                &format!("n{n} cin{cin} cout{cout} {size}px s{stride}"),
                &mut rng,
            );
        }
    }

    #[test]
    fn transposed_convolution_matches_candle() {
        on_both_routes(transposed_convolution_matches_candle_on_this_route);
    }

    fn transposed_convolution_matches_candle_on_this_route() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        // (batch, cin, cout, size, k, stride, pad, output_padding)
        let cases = [
            (2, 8, 4, 7, 4, 2, 1, 0),
            (1, 4, 2, 14, 4, 2, 1, 0),
            (3, 3, 5, 5, 3, 1, 1, 0),
            (5, 2, 3, 6, 3, 2, 1, 1),
            (1, 3, 1, 4, 1, 1, 0, 0),
        ];
        for (n, cin, cout, size, k, stride, pad, op) in cases {
            let x = random(&[n, cin, size, size], &mut rng);
            let w = random(&[cin, cout, k, k], &mut rng);
            let what =
                format!("convT n{n} cin{cin} cout{cout} {size}px k{k} s{stride} p{pad} op{op}");
            let size_out = |s: usize| (s - 1) * stride + k + op - 2 * pad;
            compare(
                &x,
                &w,
                |x, w| {
                    x.apply_op2(
                        w,
                        ConvBackwardData {
                            stride,
                            pad,
                            h: size_out(size),
                            w: size_out(size),
                        },
                    )
                },
                |x, w| x.conv_transpose2d(w, pad, op, stride, 1),
                &what,
                &mut rng,
            );
        }
    }

    #[test]
    fn gradients_of_the_wrong_size_are_refused() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let x = random(&[2, 3, 8, 8], &mut rng);
        let w = random(&[4, 3, 3, 3], &mut rng);
        // Stride 1, padding 1 keeps 8x8; a 7x7 output gradient cannot belong to this convolution.
        let dy = random(&[2, 4, 7, 7], &mut rng);
        let filter = ConvBackwardFilter {
            stride: 1,
            pad: 1,
            k: 3,
        };
        let err = x.apply_op2_no_bwd(&dy, &filter).unwrap_err().to_string();
        assert!(err.contains("gives a 8x8 output, not 7x7"), "{err}");
        let data = ConvBackwardData {
            stride: 1,
            pad: 1,
            h: 8,
            w: 8,
        };
        let err = dy.apply_op2_no_bwd(&w, &data).unwrap_err().to_string();
        assert!(err.contains("gives a 8x8 output, not 7x7"), "{err}");
        // The right size passes.
        let dy = random(&[2, 4, 8, 8], &mut rng);
        assert_eq!(
            x.apply_op2_no_bwd(&dy, &filter).unwrap().dims(),
            &[4, 3, 3, 3]
        );
        assert_eq!(
            dy.apply_op2_no_bwd(&w, &data).unwrap().dims(),
            &[2, 3, 8, 8]
        );
    }

    #[test]
    fn switch_selects_the_path_and_both_agree_in_a_layer() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let x = random(&[2, 3, 10, 10], &mut rng);
        let w = random(&[4, 3, 3, 3], &mut rng);
        let fast = conv2d(&x, &w, 2, 1).unwrap();
        let stock = x.conv2d(&w, 1, 2, 1, 1).unwrap();
        assert_close(&fast, &stock, "dispatch");
        assert_eq!(valid_range(14, 2, -1, 28), (1, 14));
        assert_eq!(valid_range(28, 1, 1, 28), (0, 27));
    }
}
