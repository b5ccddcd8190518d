//! Stride-1 convolutions computed directly on a padded grid, with AVX-512 micro-kernels.
//!
//! The im2col route copies every input value `k x k` times before a GEMM whose shape (16 to 64
//! output channels, a few hundred pixels) uses the cores poorly. Here nothing is copied but the
//! zero padding: the input of one image is padded into planes of `hp x wp`, and the output is
//! computed on the grid of positions `q = oy * wp + ox` of the padded width, where the tap
//! `(ki, kj)` of every output position is the input value at `q + ki * wp + kj`. A run of 16
//! consecutive grid positions is then one unaligned vector load per tap, and a micro-kernel keeps
//! a block of output channels times grid positions in registers. The `k - 1` columns per row
//! past the true output width (`ox >= wo`) are computed and dropped.
//!
//! * forward: `y[co, q] = Σ_{ci, ki, kj} w[co, ci, ki, kj] · xp[ci, q + ki·wp + kj]`;
//! * input gradient: the same forward on the output gradient padded by `k - 1 - pad`, with the
//!   weights flipped in space and their channel axes swapped (a full correlation);
//! * weight gradient: `dw[co, ci, ki, kj] = Σ_images Σ_q dy[co, q] · xp[ci, q + ki·wp + kj]`,
//!   with the output gradient laid on the same grid and zero in the dropped columns.
//!
//! [`available`] says whether this CPU runs them; the callers fall back to im2col otherwise.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Lanes of one vector.
const V: usize = 16;
/// Vectors of grid positions per forward tile.
const QR: usize = 4;
/// Output channels per forward and weight-gradient tile.
const CR: usize = 4;
/// Taps `(ci, ki, kj)` per weight-gradient tile.
const TR: usize = 6;

/// Whether the CPU has AVX-512 (checked once; the result is cached by std).
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A stride-1 convolution `(cin, h, w) -> (cout, ho, wo)` laid on the padded grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Grid {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub h: usize,
    pub w: usize,
    pub pad: usize,
    wp: usize,
    ho: usize,
    wo: usize,
    /// Grid positions computed per output channel: `ho * wp` rounded up to whole tiles.
    q: usize,
    /// Length of one padded input plane: every tap of every computed position is inside it.
    plane: usize,
}

impl Grid {
    /// `None` when the sizes leave no output.
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        (h, w): (usize, usize),
        pad: usize,
    ) -> Option<Self> {
        let (hp, wp) = (h + 2 * pad, w + 2 * pad);
        if hp < k || wp < k || k == 0 {
            return None;
        }
        let (ho, wo) = (hp - k + 1, wp - k + 1);
        let q = (ho * wp).div_ceil(V * QR) * (V * QR);
        let reach = q + (k - 1) * wp + (k - 1);
        let plane = reach.max(hp * wp).div_ceil(V) * V;
        Some(Self {
            cin,
            cout,
            k,
            h,
            w,
            pad,
            wp,
            ho,
            wo,
            q,
            plane,
        })
    }

    pub fn out_size(&self) -> (usize, usize) {
        (self.ho, self.wo)
    }

    fn taps(&self) -> usize {
        self.k * self.k
    }

    /// The input gradient's convolution: output gradient `(cout, ho, wo)` -> `(cin, h, w)`.
    /// `None` when the padding exceeds `k - 1` (no full correlation with a non-negative padding).
    pub fn transposed(&self) -> Option<Self> {
        let pad = (self.k - 1).checked_sub(self.pad)?;
        let g = Self::new(self.cout, self.cin, self.k, (self.ho, self.wo), pad)?;
        debug_assert_eq!(g.out_size(), (self.h, self.w));
        Some(g)
    }
}

/// Pads one image `(cin, h, w)` into `cin` planes of `grid.plane` values (zeros around).
fn pad_image(x: &[f32], g: &Grid, xp: &mut [f32]) {
    xp.fill(0.0);
    for c in 0..g.cin {
        let src = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        let dst = &mut xp[c * g.plane..(c + 1) * g.plane];
        for (y, row) in src.chunks_exact(g.w).enumerate() {
            let at = (y + g.pad) * g.wp + g.pad;
            dst[at..at + g.w].copy_from_slice(row);
        }
    }
}

/// Copies the valid columns of the grid output `(cout, q)` into `(cout, ho, wo)`.
fn compact(yq: &[f32], g: &Grid, y: &mut [f32]) {
    for c in 0..g.cout {
        let src = &yq[c * g.q..];
        let dst = &mut y[c * g.ho * g.wo..(c + 1) * g.ho * g.wo];
        for (oy, row) in dst.chunks_exact_mut(g.wo).enumerate() {
            row.copy_from_slice(&src[oy * g.wp..oy * g.wp + g.wo]);
        }
    }
}

/// Lays an output gradient `(cout, ho, wo)` on the grid `(cout, q)`, zero off the valid columns.
fn spread(dy: &[f32], g: &Grid, dyq: &mut [f32]) {
    dyq.fill(0.0);
    for c in 0..g.cout {
        let src = &dy[c * g.ho * g.wo..(c + 1) * g.ho * g.wo];
        let dst = &mut dyq[c * g.q..(c + 1) * g.q];
        for (oy, row) in src.chunks_exact(g.wo).enumerate() {
            dst[oy * g.wp..oy * g.wp + g.wo].copy_from_slice(row);
        }
    }
}

/// Per-thread buffers of the forward.
#[derive(Default)]
pub(super) struct Scratch {
    xp: Vec<f32>,
    yq: Vec<f32>,
}

/// Convolves one image `x (cin, h, w)` with `w (cout, cin, k, k)` into `y (cout, ho, wo)`.
pub(super) fn forward_image(x: &[f32], w: &[f32], g: &Grid, y: &mut [f32], s: &mut Scratch) {
    assert!(available(), "direct convolution called without AVX-512");
    s.xp.resize(g.cin * g.plane, 0.0);
    s.yq.resize(g.cout * g.q, 0.0);
    pad_image(x, g, &mut s.xp);
    // SAFETY: AVX-512 is present (asserted above); the buffers have the sizes the kernel reads
    // and writes (cin planes, cout rows of q, cout x cin x k x k weights).
    #[cfg(target_arch = "x86_64")]
    unsafe {
        forward_grid(&s.xp, w, g, &mut s.yq)
    };
    compact(&s.yq, g, y);
}

/// The weights of the input-gradient convolution: `w (cout, cin, k, k)` -> `(cin, cout, k, k)`
/// flipped in both spatial axes.
pub(super) fn flipped_weights(w: &[f32], cout: usize, cin: usize, k: usize) -> Vec<f32> {
    let kk = k * k;
    let mut out = vec![0f32; w.len()];
    for co in 0..cout {
        for ci in 0..cin {
            for t in 0..kk {
                out[(ci * cout + co) * kk + (kk - 1 - t)] = w[(co * cin + ci) * kk + t];
            }
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn forward_grid(xp: &[f32], w: &[f32], g: &Grid, yq: &mut [f32]) {
    debug_assert!(xp.len() >= g.cin * g.plane && yq.len() >= g.cout * g.q);
    debug_assert!(w.len() >= g.cout * g.cin * g.taps());
    let offsets: Vec<usize> = (0..g.taps()).map(|t| (t / g.k) * g.wp + t % g.k).collect();
    let mut co = 0;
    while co + CR <= g.cout {
        forward_block::<CR>(xp, w, g, &offsets, co, yq);
        co += CR;
    }
    while co < g.cout {
        forward_block::<1>(xp, w, g, &offsets, co, yq);
        co += 1;
    }
}

/// Output channels `co..co + C` over the whole grid, `QR` vectors of positions at a time.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn forward_block<const C: usize>(
    xp: &[f32],
    w: &[f32],
    g: &Grid,
    offsets: &[usize],
    co: usize,
    yq: &mut [f32],
) {
    let kk = g.taps();
    let w_stride = g.cin * kk;
    let (xp, w, yq) = (xp.as_ptr(), w.as_ptr(), yq.as_mut_ptr());
    for q0 in (0..g.q).step_by(V * QR) {
        let mut acc = [[_mm512_setzero_ps(); QR]; C];
        for ci in 0..g.cin {
            let x_ci = xp.add(ci * g.plane + q0);
            let w_ci = w.add(co * w_stride + ci * kk);
            for (t, &off) in offsets.iter().enumerate() {
                let xs = x_ci.add(off);
                let mut xv = [_mm512_setzero_ps(); QR];
                for (r, v) in xv.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(xs.add(r * V));
                }
                for (c, row) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(*w_ci.add(c * w_stride + t));
                    for (a, &x) in row.iter_mut().zip(&xv) {
                        *a = _mm512_fmadd_ps(wv, x, *a);
                    }
                }
            }
        }
        for (c, row) in acc.iter().enumerate() {
            for (r, a) in row.iter().enumerate() {
                _mm512_storeu_ps(yq.add((co + c) * g.q + q0 + r * V), *a);
            }
        }
    }
}

/// Per-thread buffers of the weight gradient.
#[derive(Default)]
pub(super) struct FilterScratch {
    xp: Vec<f32>,
    dyq: Vec<f32>,
}

/// How many images the weight gradient lays on the grid at once: enough to amortise the
/// reduction of each tile's vector sums, few enough to stay in the L2 cache.
pub(super) fn filter_chunk(g: &Grid) -> usize {
    let per_image = (g.cin * g.plane + g.cout * g.q) * std::mem::size_of::<f32>();
    ((512 << 10) / per_image.max(1)).clamp(1, 16)
}

/// Adds to `dw (cout, cin, k, k)` the weight gradient of the images `x (m, cin, h, w)` with output
/// gradients `dy (m, cout, ho, wo)`.
pub(super) fn filter_gradient_images(
    x: &[f32],
    dy: &[f32],
    g: &Grid,
    dw: &mut [f32],
    s: &mut FilterScratch,
) {
    assert!(available(), "direct convolution called without AVX-512");
    let (in_len, out_len) = (g.cin * g.h * g.w, g.cout * g.ho * g.wo);
    let m = x.len() / in_len;
    debug_assert_eq!(dy.len(), m * out_len);
    s.xp.resize(m * g.cin * g.plane, 0.0);
    s.dyq.resize(m * g.cout * g.q, 0.0);
    for i in 0..m {
        pad_image(
            &x[i * in_len..(i + 1) * in_len],
            g,
            &mut s.xp[i * g.cin * g.plane..(i + 1) * g.cin * g.plane],
        );
        spread(
            &dy[i * out_len..(i + 1) * out_len],
            g,
            &mut s.dyq[i * g.cout * g.q..(i + 1) * g.cout * g.q],
        );
    }
    // SAFETY: AVX-512 is present (asserted above); xp holds m images of cin planes, dyq m images
    // of cout rows of q, dw cout x cin x k x k values.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        filter_grid(&s.xp, &s.dyq, g, m, dw)
    };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn filter_grid(xp: &[f32], dyq: &[f32], g: &Grid, m: usize, dw: &mut [f32]) {
    let kk = g.taps();
    let taps = g.cin * kk;
    debug_assert!(dw.len() >= g.cout * taps);
    // Offset of tap (ci, ki, kj) in one image's padded planes.
    let offsets: Vec<usize> = (0..taps)
        .map(|t| (t / kk) * g.plane + ((t % kk) / g.k) * g.wp + t % g.k)
        .collect();
    let mut co = 0;
    while co < g.cout {
        let c = if co + CR <= g.cout { CR } else { 1 };
        let mut t = 0;
        while t < taps {
            match (c, taps - t >= TR) {
                (CR, true) => filter_block::<CR, TR>(xp, dyq, g, m, &offsets, co, t, dw),
                (CR, false) => filter_block::<CR, 1>(xp, dyq, g, m, &offsets, co, t, dw),
                (_, true) => filter_block::<1, TR>(xp, dyq, g, m, &offsets, co, t, dw),
                (_, false) => filter_block::<1, 1>(xp, dyq, g, m, &offsets, co, t, dw),
            }
            t += if taps - t >= TR { TR } else { 1 };
        }
        co += c;
    }
}

/// `dw[co..co + C, taps t..t + T] += Σ_images Σ_q dy[co, q] · xp[tap offset + q]`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn filter_block<const C: usize, const T: usize>(
    xp: &[f32],
    dyq: &[f32],
    g: &Grid,
    m: usize,
    offsets: &[usize],
    co: usize,
    t0: usize,
    dw: &mut [f32],
) {
    let taps = g.cin * g.taps();
    let mut acc = [[_mm512_setzero_ps(); T]; C];
    for i in 0..m {
        let x_img = xp.as_ptr().add(i * g.cin * g.plane);
        let dy_img = dyq.as_ptr().add(i * g.cout * g.q + co * g.q);
        let mut x_taps = [x_img; T];
        for (t, p) in x_taps.iter_mut().enumerate() {
            *p = x_img.add(offsets[t0 + t]);
        }
        for q in (0..g.q).step_by(V) {
            let mut xv = [_mm512_setzero_ps(); T];
            for (v, p) in xv.iter_mut().zip(&x_taps) {
                *v = _mm512_loadu_ps(p.add(q));
            }
            for (c, row) in acc.iter_mut().enumerate() {
                let d = _mm512_loadu_ps(dy_img.add(c * g.q + q));
                for (a, &x) in row.iter_mut().zip(&xv) {
                    *a = _mm512_fmadd_ps(d, x, *a);
                }
            }
        }
    }
    for (c, row) in acc.iter().enumerate() {
        for (t, a) in row.iter().enumerate() {
            dw[(co + c) * taps + t0 + t] += _mm512_reduce_add_ps(*a);
        }
    }
}
