//! Convolutions computed directly on a grid of padded input planes, with AVX-512 micro-kernels.
//!
//! The im2col route copies every input value `k x k` times before a GEMM whose shape (16 to 64
//! output channels, a few hundred pixels) uses the cores poorly. Here nothing is copied but the
//! zero padding. The input of one image is laid out as planes of `row` values per line, and the
//! output is computed on the grid of positions `q = oy * row + ox`, where every tap of every
//! output position is the input value at `q + offset(tap)`. A run of 16 consecutive positions is
//! then one unaligned vector load per tap, and a micro-kernel keeps a block of output channels
//! times positions in registers. Positions past the true output width (`ox >= wo`) are computed
//! and dropped.
//!
//! * Stride 1: one plane per channel, the input padded; tap `(ki, kj)` is at `ki * row + kj`.
//! * Stride 2: each padded channel is split into its four phases (even/odd rows and columns), so
//!   tap `(ki, kj)` reads phase `(ki % 2, kj % 2)` at `(ki / 2) * row + kj / 2`: stride 1 again.
//! * Input gradient ([`InputGrad`]): each phase `(py, px)` of the input gradient is a stride-1
//!   correlation of the padded output gradient with the taps `(ki, kj)` that reach it (all of
//!   them at stride 1, a quarter of a 4x4 kernel at stride 2); the phases are then interleaved.
//! * Weight gradient: `dw[co, ci, tap] = Σ_images Σ_q dy[co, q] · x[ci, q + offset(tap)]`, with
//!   the output gradient laid on the same grid and zero off the valid positions.
//!
//! The grid is a whole number of vectors (its last tile of positions may be shorter than the
//! others), and the per-thread buffers it lives in start on a cache line, so that the vector
//! loads of the output gradient in the weight gradient never straddle two lines.
//!
//! Where a batch has sixteen images and a layer enough channels ([`LANES_LEAST_CHANNELS`]), the
//! callers run the same planes and micro-kernels on sixteen images at once, one per vector lane
//! (`lanes`): aligned loads, and no padding position computed.
//!
//! [`available`] says whether this CPU runs them; the callers fall back to im2col otherwise.

use super::as_uninit;

#[cfg(target_arch = "x86_64")]
mod lanes;
#[cfg(target_arch = "x86_64")]
pub(super) use lanes::{filter_gradient_group, forward_group, input_gradient_group, GROUP};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// Lanes of one vector.
const V: usize = 16;
/// Vectors of grid positions per forward tile.
const QR: usize = 4;
/// Output channels per forward tile.
const CF: usize = 6;
/// Output channels per weight-gradient tile, and per forward tile where six do not fit.
const CR: usize = 4;
/// Taps `(ci, ki, kj)` per weight-gradient tile.
const TR: usize = 6;

/// The fewest input channels a forward must sum over (output channels, for an input gradient)
/// for sixteen images in the lanes (`lanes`) to beat one image at a time on the grid. Timed
/// alone on one core, the lanes lost at 16 channels (1 -> 16 and 16 -> 16 at 28x28, 16 -> 32
/// at stride 2: their transposes weigh more against fewer sums, and at 28x28 the grid wastes
/// only 8% of its positions), matched the grid at 32 and 64 channels at 28x28 and 14x14, and
/// were 1.15-1.5x faster from 128 channels and at 7x7.
pub(in crate::ops) const LANES_LEAST_CHANNELS: usize = 32;

/// The same for the weight gradient, over its input channels: the lanes were 1.1-1.9x faster
/// from 16 channels on, and slower only for the first layer's single channel.
pub(in crate::ops) const LANES_LEAST_FILTER_CHANNELS: usize = 16;

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

/// The mask of the first `k` lanes of a vector (all of them from `V` on).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn first_lanes(k: usize) -> __mmask16 {
    ((1u32 << k.min(V)) - 1) as __mmask16
}

/// `dst.copy_from_slice(src)` for the short lines of an image (7 to 30 values), inlined into
/// the layout functions (themselves compiled for AVX-512): a call to memcpy per line cost more
/// than the copy.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
#[inline]
unsafe fn copy_row(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "copy_row lengths");
    #[cfg(target_arch = "x86_64")]
    {
        let n = src.len();
        let (d, s) = (dst.as_mut_ptr().cast::<f32>(), src.as_ptr());
        // Masked moves throughout, the mask computed for each vector: written as plain loads
        // and stores, the loop was recognised as a copy and compiled into a call to memcpy.
        let mut i = 0;
        while i < n {
            let mask = first_lanes(n - i);
            _mm512_mask_storeu_ps(d.add(i), mask, _mm512_maskz_loadu_ps(mask, s.add(i)));
            i += V;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (d, &v) in dst.iter_mut().zip(src) {
        d.write(v);
    }
}

/// `even[j] = src[2j]` and `odd[j] = src[2j + 1]` for every `j` inside `src`: a line of an
/// image split into the two column phases of a stride-2 convolution, 32 values at a time (a
/// copy value by value took most of the layout time of the stride-2 convolutions).
///
/// # Safety
/// `even` holds `src.len().div_ceil(2)` values, `odd` `src.len() / 2` (none: it may then be
/// any pointer, `even` included), neither overlapping the other nor `src`; the CPU has AVX-512
/// (on x86-64).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
#[inline]
unsafe fn split_row(even: *mut f32, odd: *mut f32, src: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        let mask = first_lanes;
        let pick_even =
            _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let pick_odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let (n, s) = (src.len(), src.as_ptr());
        let mut i = 0;
        while i < n {
            let len = (n - i).min(2 * V);
            // Masked loads read nothing past the end (wrapping_add: the address may be past it).
            let a = _mm512_maskz_loadu_ps(mask(len), s.wrapping_add(i));
            let b = _mm512_maskz_loadu_ps(mask(len.saturating_sub(V)), s.wrapping_add(i + V));
            let e = _mm512_permutex2var_ps(a, pick_even, b);
            let o = _mm512_permutex2var_ps(a, pick_odd, b);
            _mm512_mask_storeu_ps(even.add(i / 2), mask(len.div_ceil(2)), e);
            _mm512_mask_storeu_ps(odd.wrapping_add(i / 2), mask(len / 2), o);
            i += 2 * V;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (j, &v) in src.iter().enumerate() {
        if j % 2 == 0 {
            *even.add(j / 2) = v;
        } else {
            *odd.add(j / 2) = v;
        }
    }
}

/// `dst[2j + parity] = src[j]` for every `j` of `src`, the other values of `dst` untouched: one
/// column phase of a stride-2 input gradient put back in its line, 16 values at a time (the
/// inverse of [`split_row`]).
///
/// # Safety
/// `src` holds the `(dst.len() - parity).div_ceil(2)` values of the phase; the CPU has AVX-512
/// (on x86-64).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
#[inline]
unsafe fn interleave_row(dst: &mut [MaybeUninit<f32>], parity: usize, src: &[f32]) {
    let w = dst.len();
    assert!(parity < 2 && src.len() == w.saturating_sub(parity).div_ceil(2));
    #[cfg(target_arch = "x86_64")]
    {
        let mask = first_lanes;
        // Lanes of this parity, each taking the source value of its pair.
        let lanes: __mmask16 = if parity == 0 { 0x5555 } else { 0xAAAA };
        let low = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
        let high = _mm512_setr_epi32(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
        let d = dst.as_mut_ptr().cast::<f32>();
        let mut j = 0;
        while j < src.len() {
            let v = _mm512_maskz_loadu_ps(mask(src.len() - j), src.as_ptr().add(j));
            let at = 2 * j;
            _mm512_mask_storeu_ps(
                d.add(at),
                lanes & mask(w - at),
                _mm512_permutexvar_ps(low, v),
            );
            if w > at + V {
                let high_lanes = lanes & mask(w - at - V);
                _mm512_mask_storeu_ps(d.add(at + V), high_lanes, _mm512_permutexvar_ps(high, v));
            }
            j += V;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (j, &v) in src.iter().enumerate() {
        dst[2 * j + parity].write(v);
    }
}

/// `dst = src + shift`, then `max(0, .)` when `relu`: [`copy_row`] with a convolution's bias
/// (and the BatchNorm folded into it) applied on the way.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
#[inline]
unsafe fn shift_row(dst: &mut [MaybeUninit<f32>], src: &[f32], shift: f32, relu: bool) {
    assert_eq!(dst.len(), src.len(), "shift_row lengths");
    #[cfg(target_arch = "x86_64")]
    {
        let n = src.len();
        let (d, s) = (dst.as_mut_ptr().cast::<f32>(), src.as_ptr());
        let (shift, floor) = epilogue_vectors(shift, relu);
        let mut i = 0;
        while i + V <= n {
            let v = _mm512_add_ps(_mm512_loadu_ps(s.add(i)), shift);
            _mm512_storeu_ps(d.add(i), _mm512_max_ps(v, floor));
            i += V;
        }
        if i < n {
            let mask = first_lanes(n - i);
            let v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, s.add(i)), shift);
            _mm512_mask_storeu_ps(d.add(i), mask, _mm512_max_ps(v, floor));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (d, &v) in dst.iter_mut().zip(src) {
        let v = v + shift;
        d.write(if relu { v.max(0.0) } else { v });
    }
}

/// The shift and the floor that apply an epilogue as `max(v + shift, floor)`: max(v, -inf) is
/// v, so one code path serves with or without the ReLU.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn epilogue_vectors(shift: f32, relu: bool) -> (__m512, __m512) {
    let floor = if relu { 0.0 } else { f32::NEG_INFINITY };
    (_mm512_set1_ps(shift), _mm512_set1_ps(floor))
}

/// What follows a convolution in evaluation, applied as its output is written: a shift per
/// output channel (its bias, and the shift of a BatchNorm folded into it), then a ReLU or not.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Epilogue {
    pub shift: Vec<f32>,
    pub relu: bool,
}

/// How one image `(channels, h, w)` is laid out for the kernels: padded by `pad` on every side,
/// split into `stride x stride` phases of `row` values per line, `plane` values per phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Planes {
    channels: usize,
    h: usize,
    w: usize,
    pad: usize,
    stride: usize,
    row: usize,
    plane: usize,
}

impl Planes {
    /// The layout for a grid of `q` positions whose farthest tap is `reach` values into a plane.
    fn new(
        (channels, h, w): (usize, usize, usize),
        pad: usize,
        stride: usize,
        q: usize,
        reach: usize,
    ) -> Self {
        let row = (w + 2 * pad).div_ceil(stride);
        Self::with_row((channels, h, w), pad, stride, row, q + reach)
    }

    /// The same with lines of `row` values (at least the padded width), planes long enough
    /// for reads up to `reach`.
    fn with_row(
        (channels, h, w): (usize, usize, usize),
        pad: usize,
        stride: usize,
        row: usize,
        reach: usize,
    ) -> Self {
        debug_assert!(row >= (w + 2 * pad).div_ceil(stride));
        let lines = (h + 2 * pad).div_ceil(stride);
        let plane = (lines * row).max(reach).div_ceil(V) * V;
        Self {
            channels,
            h,
            w,
            pad,
            stride,
            row,
            plane,
        }
    }

    /// Values from one channel to the next.
    fn channel_stride(&self) -> usize {
        self.stride * self.stride * self.plane
    }

    fn len(&self) -> usize {
        self.channels * self.channel_stride()
    }

    /// Where input `(y, x)` of a channel lands.
    fn at(&self, y: usize, x: usize) -> usize {
        let (py, px) = (y + self.pad, x + self.pad);
        // The strides spelled out: divisions by a stride unknown at compile time cost more than
        // the copy of a short line.
        match self.stride {
            1 => py * self.row + px,
            2 => ((py % 2) * 2 + px % 2) * self.plane + (py / 2) * self.row + px / 2,
            s => ((py % s) * s + px % s) * self.plane + (py / s) * self.row + px / s,
        }
    }

    /// Lays one image `(channels, h, w)` out, zeros around.
    /// `out` must hold zeros in the padding: it is not written (see [`zeroed`]).
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
    unsafe fn fill(&self, x: &[f32], out: &mut [f32]) {
        for c in 0..self.channels {
            let src = &x[c * self.h * self.w..(c + 1) * self.h * self.w];
            let dst = &mut out[c * self.channel_stride()..(c + 1) * self.channel_stride()];
            for (y, line) in src.chunks_exact(self.w).enumerate() {
                if self.stride == 1 {
                    let at = self.at(y, 0);
                    copy_row(as_uninit(&mut dst[at..at + self.w]), line);
                } else {
                    // Stride 2 (the only other one `Conv::new` admits): the even and the odd
                    // columns go to their own phases, one after another.
                    debug_assert_eq!(self.stride, 2);
                    let even = self.at(y, 0);
                    let (even_len, odd_len) = (self.w.div_ceil(2), self.w / 2);
                    let odd = if odd_len > 0 { self.at(y, 1) } else { even };
                    assert!(even + even_len <= dst.len() && odd + odd_len <= dst.len());
                    // The two phases are apart (one line of a phase never reaches the next
                    // phase), so the two writes do not overlap.
                    let base = dst.as_mut_ptr();
                    split_row(base.add(even), base.add(odd), line);
                }
            }
        }
    }
}

/// Output positions and taps of one grid computation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    /// Offset of each tap inside one input channel's planes, in weight order.
    taps: Vec<usize>,
    /// Output lines and columns kept; position `(oy, ox)` is at `oy * row + ox`.
    ho: usize,
    wo: usize,
    row: usize,
    /// Positions computed per output channel: `ho * row` rounded up to whole vectors.
    q: usize,
}

impl Plan {
    fn new(ho: usize, wo: usize, row: usize, taps: Vec<usize>) -> Self {
        let q = (ho * row).div_ceil(V) * V;
        Self {
            taps,
            ho,
            wo,
            row,
            q,
        }
    }

    /// Copies the kept positions of `yq (channels, q)` into `y (channels, ho, wo)`, writing
    /// every value of `y`, through `epilogue` when given.
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
    unsafe fn compact(
        &self,
        yq: &[f32],
        channels: usize,
        y: &mut [MaybeUninit<f32>],
        epilogue: Option<&Epilogue>,
    ) {
        for c in 0..channels {
            let src = &yq[c * self.q..];
            let dst = &mut y[c * self.ho * self.wo..(c + 1) * self.ho * self.wo];
            for (oy, line) in dst.chunks_exact_mut(self.wo).enumerate() {
                let from = &src[oy * self.row..oy * self.row + self.wo];
                match epilogue {
                    Some(e) => shift_row(line, from, e.shift[c], e.relu),
                    None => copy_row(line, from),
                }
            }
        }
    }

    /// Lays `dy (channels, ho, wo)` on the grid `(channels, q)`, zero off the kept positions.
    /// `dyq` must hold zeros off the kept positions: they are not written (see [`zeroed`]).
    #[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
    unsafe fn spread(&self, dy: &[f32], channels: usize, dyq: &mut [f32]) {
        for c in 0..channels {
            let src = &dy[c * self.ho * self.wo..(c + 1) * self.ho * self.wo];
            let dst = &mut dyq[c * self.q..(c + 1) * self.q];
            for (oy, line) in src.chunks_exact(self.wo).enumerate() {
                copy_row(
                    as_uninit(&mut dst[oy * self.row..oy * self.row + self.wo]),
                    line,
                );
            }
        }
    }
}

/// A convolution `(cin, h, w) -> (cout, ho, wo)` with a square `k x k` kernel, stride 1 or 2
/// and padding `pad`, on the grid: its forward and its weight gradient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Conv {
    cin: usize,
    cout: usize,
    planes: Planes,
    plan: Plan,
}

impl Conv {
    /// `None` for strides other than 1 and 2, or sizes that leave no output.
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        (h, w): (usize, usize),
    ) -> Option<Self> {
        let (hp, wp) = (h + 2 * pad, w + 2 * pad);
        if !(1..=2).contains(&stride) || k == 0 || hp < k || wp < k || cin == 0 || cout == 0 {
            return None;
        }
        let (ho, wo) = ((hp - k) / stride + 1, (wp - k) / stride + 1);
        let row = wp.div_ceil(stride);
        let lines = hp.div_ceil(stride);
        // Every tap of a kept position reads inside its phase plane.
        if ho - 1 + (k - 1) / stride >= lines || wo - 1 + (k - 1) / stride >= row {
            return None;
        }
        let in_plane = |ki: usize, kj: usize| (ki / stride) * row + kj / stride;
        let phase = |ki: usize, kj: usize| (ki % stride) * stride + kj % stride;
        let plan0 = Plan::new(ho, wo, row, vec![]);
        let reach = (0..k * k)
            .map(|t| in_plane(t / k, t % k))
            .max()
            .unwrap_or(0);
        let planes = Planes::new((cin, h, w), pad, stride, plan0.q, reach);
        let taps = (0..k * k)
            .map(|t| phase(t / k, t % k) * planes.plane + in_plane(t / k, t % k))
            .collect();
        Some(Self {
            cin,
            cout,
            planes,
            plan: Plan { taps, ..plan0 },
        })
    }

    pub fn out_size(&self) -> (usize, usize) {
        (self.plan.ho, self.plan.wo)
    }

    /// Values of its weights `(cout, cin, k, k)`, and of their gradient.
    fn weights_len(&self) -> usize {
        self.cout * self.cin * self.plan.taps.len()
    }
}

/// Per-thread buffers.
#[derive(Default)]
pub(super) struct Scratch {
    input: Vec<f32>,
    grid: Vec<f32>,
    /// What `input` and `grid` were last laid out for (see [`zeroed`]).
    input_layout: Option<Layout>,
    grid_layout: Option<Layout>,
}

impl Scratch {
    /// Runs the forward micro-kernel over `input` into `grid`, which it writes whole, and
    /// returns the grid: `kernel.cout` lines of `kernel.plan.q` positions.
    ///
    /// # Safety
    /// The CPU has AVX-512, and `input` holds every tap of every grid position of `kernel`.
    unsafe fn forward(&mut self, kernel: &Kernel, w: &[f32], input_len: usize) -> &[f32] {
        let grid = overwritten(
            &mut self.grid,
            &mut self.grid_layout,
            kernel.cout * kernel.plan.q,
        );
        #[cfg(target_arch = "x86_64")]
        forward_grid(kernel, aligned(&self.input, input_len), w, grid);
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (kernel, w, input_len);
        grid
    }
}

/// A buffer's layout: images, what they are laid out as, and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Planes(Planes, usize),
    /// `(channels, q, row, ho, wo)` of a spread gradient, and the images.
    Grid([usize; 5], usize),
    /// Sixteen images laid out as one, each value widened to a vector (see [`lanes`]).
    Lanes(Planes),
}

/// `len` values of `buf` from its first cache-line boundary, zero wherever images laid out as
/// `layout` are not written: the padding of an image is never written, so the zeros of the
/// last call with the same layout still stand and only a new layout clears the buffer (a full
/// clear of each image cost more than the copy into it). [`aligned`] finds the same values
/// again while the buffer is not resized.
fn zeroed<'a>(
    buf: &'a mut Vec<f32>,
    last: &mut Option<Layout>,
    layout: Layout,
    len: usize,
) -> &'a mut [f32] {
    if *last != Some(layout) || buf.len() != len + V {
        buf.clear();
        buf.resize(len + V, 0.0);
    }
    *last = Some(layout);
    aligned_mut(buf, len)
}

/// `len` values of `buf` from its first cache-line boundary, for a kernel that writes them all.
fn overwritten<'a>(buf: &'a mut Vec<f32>, last: &mut Option<Layout>, len: usize) -> &'a mut [f32] {
    buf.resize(len + V, 0.0);
    // Whatever layout the buffer held is written over.
    *last = None;
    aligned_mut(buf, len)
}

/// Where the values of a scratch buffer start: its first 64-byte boundary. A scratch buffer
/// holds `V` values more than it is used for, so that every line of the grid (a multiple of
/// `V` values) and every plane starts on a cache line, and the kernels' loads of the output
/// gradient in the weight gradient do not straddle two lines (such a load costs two).
fn cache_line_offset(buf: &[f32]) -> usize {
    // By hand rather than `align_offset`, which may answer "impossible" for any pointer.
    let past = buf.as_ptr() as usize % 64;
    (64 - past) % 64 / std::mem::size_of::<f32>()
}

/// `len` values of `buf` from its first 64-byte boundary.
fn aligned(buf: &[f32], len: usize) -> &[f32] {
    let start = cache_line_offset(buf);
    &buf[start..start + len]
}

/// [`aligned`], mutable.
fn aligned_mut(buf: &mut [f32], len: usize) -> &mut [f32] {
    let start = cache_line_offset(buf);
    &mut buf[start..start + len]
}

/// Convolves one image `x (cin, h, w)` with `w (cout, cin, k, k)` into `y (cout, ho, wo)`,
/// writing every value of `y`.
pub(super) fn forward_image(
    conv: &Conv,
    x: &[f32],
    w: &[f32],
    y: &mut [MaybeUninit<f32>],
    s: &mut Scratch,
    epilogue: Option<&Epilogue>,
) {
    assert!(available(), "direct convolution called without AVX-512");
    assert_eq!(w.len(), conv.weights_len(), "direct convolution weights");
    let layout = Layout::Planes(conv.planes, 1);
    let input = zeroed(&mut s.input, &mut s.input_layout, layout, conv.planes.len());
    // SAFETY (all three calls): AVX-512 is present (asserted above).
    unsafe { conv.planes.fill(x, input) };
    let kernel = Kernel::grid(conv.cin, conv.cout, &conv.planes, &conv.plan);
    // SAFETY: AVX-512 is present (asserted above); every tap of every grid position is inside
    // the input's planes.
    let grid = unsafe { s.forward(&kernel, w, conv.planes.len()) };
    unsafe { conv.plan.compact(grid, conv.cout, y, epilogue) };
}

/// How many images the weight gradient lays on the grid at once. Each tile of output channels
/// times taps sums over all of them before reducing its vectors (a reduction every few
/// positions would cost as much as the sums at 7x7), and what one tile reads (the gradients of
/// its channels and about two input planes, in every image) should stay in the L1 cache.
pub(super) fn filter_chunk(conv: &Conv) -> usize {
    let per_image = (CR * conv.plan.q + 2 * conv.planes.plane) * std::mem::size_of::<f32>();
    ((32 << 10) / per_image.max(1)).clamp(1, 32)
}

/// Adds to `dw (cout, cin, k, k)` the weight gradient of the images `x (m, cin, h, w)` whose
/// output gradients are `dy (m, cout, ho, wo)`.
pub(super) fn filter_gradient_images(
    conv: &Conv,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    s: &mut Scratch,
) {
    assert!(available(), "direct convolution called without AVX-512");
    let p = &conv.plan;
    let (in_len, out_len) = (
        conv.cin * conv.planes.h * conv.planes.w,
        conv.cout * p.ho * p.wo,
    );
    let m = x.len() / in_len;
    assert!(
        x.len() == m * in_len && dy.len() == m * out_len,
        "direct weight gradient sizes"
    );
    assert_eq!(dw.len(), conv.weights_len(), "direct weight gradient");
    let (image_in, image_out) = (conv.planes.len(), conv.cout * p.q);
    let layout = Layout::Planes(conv.planes, m);
    let input = zeroed(&mut s.input, &mut s.input_layout, layout, m * image_in);
    let layout = Layout::Grid([conv.cout, p.q, p.row, p.ho, p.wo], m);
    let grid = zeroed(&mut s.grid, &mut s.grid_layout, layout, m * image_out);
    for i in 0..m {
        // SAFETY (both calls): AVX-512 is present (asserted above).
        unsafe {
            conv.planes.fill(
                &x[i * in_len..(i + 1) * in_len],
                &mut input[i * image_in..(i + 1) * image_in],
            );
            p.spread(
                &dy[i * out_len..(i + 1) * out_len],
                conv.cout,
                &mut grid[i * image_out..(i + 1) * image_out],
            );
        }
    }
    let kernel = Kernel::grid(conv.cin, conv.cout, &conv.planes, p);
    #[cfg(target_arch = "x86_64")]
    {
        // The whole grid of each image, as one line.
        let sweep = Sweep {
            images: m,
            lines: 1,
            per_line: p.q / V,
            x_image: image_in,
            x_line: 0,
            dy_image: image_out,
            dy_line: 0,
            dy_channel: p.q,
        };
        // SAFETY: AVX-512 is present (asserted above); input holds m images of planes, grid m
        // images of cout rows of q, dw cout x cin x taps values.
        unsafe {
            let (x, dy) = (
                aligned(&s.input, m * image_in),
                aligned(&s.grid, m * image_out),
            );
            filter_sweep(&kernel, x, dy, &sweep, dw)
        };
    }
}

/// One phase `(py, px)` of an input gradient: its taps and where its positions land.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Phase {
    py: usize,
    px: usize,
    /// `ki * k + kj` of each tap, in the order of `plan.taps`.
    kernel_taps: Vec<usize>,
    plan: Plan,
}

/// The input gradient of a convolution (the forward of a transposed convolution): the output
/// gradient `(cout, ho, wo)` -> `(cin, h, w)`, phase by phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct InputGrad {
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    h: usize,
    w: usize,
    planes: Planes,
    phases: Vec<Phase>,
}

impl InputGrad {
    /// The input gradient of [`Conv::new`]`(cin, cout, k, stride, pad, (h, w))`; `None` where
    /// that convolution has no grid form, or its output is not `(ho, wo)`.
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        (h, w): (usize, usize),
        (ho, wo): (usize, usize),
    ) -> Option<Self> {
        if Conv::new(cin, cout, k, stride, pad, (h, w))?.out_size() != (ho, wo) {
            return None;
        }
        let s = stride;
        // Input (iy, ix) gets tap (ki, kj) of output ((iy + pad - ki) / s, ...) when divisible;
        // with the output gradient padded by `border` (enough for the farthest tap back), that
        // is line a + (py + pad - ki) / s + border of the padded gradient for iy = s * a + py.
        let border = (k - 1).saturating_sub(pad).div_ceil(s);
        let phase_size = |p: usize, n: usize| (n - p).div_ceil(s);
        // Lines long enough that no tap of a kept position wraps into the next line.
        let row = (0..s.min(w))
            .map(|px| phase_size(px, w) + (px + pad) / s + border)
            .max()
            .unwrap_or(0)
            .max(wo + 2 * border);
        let mut phases = Vec::new();
        let mut q_max = 0;
        for py in 0..s.min(h) {
            for px in 0..s.min(w) {
                let (ha, wa) = (phase_size(py, h), phase_size(px, w));
                let reach = |d: usize, p: usize| -> Option<usize> {
                    // (p + pad - d) / s + border, when exact and not negative
                    let num = (p + pad + border * s).checked_sub(d)?;
                    (num % s == 0).then_some(num / s)
                };
                let mut kernel_taps = Vec::new();
                let mut offsets = Vec::new();
                for ki in 0..k {
                    for kj in 0..k {
                        if let (Some(dy), Some(dx)) = (reach(ki, py), reach(kj, px)) {
                            kernel_taps.push(ki * k + kj);
                            offsets.push(dy * row + dx);
                        }
                    }
                }
                let plan = Plan::new(ha, wa, row, offsets);
                q_max = q_max.max(plan.q + plan.taps.iter().copied().max().unwrap_or(0));
                phases.push(Phase {
                    py,
                    px,
                    kernel_taps,
                    plan,
                });
            }
        }
        let planes = Planes::with_row((cout, ho, wo), border, 1, row, q_max);
        Some(Self {
            cin,
            cout,
            k,
            stride,
            h,
            w,
            planes,
            phases,
        })
    }

    /// The weights each phase reads, `(cin, cout, taps)` for the kernel: one vector per phase.
    pub fn phase_weights(&self, w: &[f32]) -> Vec<Vec<f32>> {
        let kk = self.k * self.k;
        assert_eq!(w.len(), self.cout * self.cin * kk, "input gradient weights");
        self.phases
            .iter()
            .map(|ph| {
                let n = ph.kernel_taps.len();
                let mut out = vec![0f32; self.cin * self.cout * n];
                for ci in 0..self.cin {
                    for co in 0..self.cout {
                        for (t, &kt) in ph.kernel_taps.iter().enumerate() {
                            out[(ci * self.cout + co) * n + t] = w[(co * self.cin + ci) * kk + kt];
                        }
                    }
                }
                out
            })
            .collect()
    }
}

/// The input gradient `dx (cin, h, w)` of one image from its output gradient `dy (cout, ho, wo)`
/// and the weights of [`InputGrad::phase_weights`], writing every value of `dx`: the phases
/// cover every input position (`InputGrad::new`), and a phase without taps is zero.
pub(super) fn input_gradient_image(
    g: &InputGrad,
    dy: &[f32],
    weights: &[Vec<f32>],
    dx: &mut [MaybeUninit<f32>],
    s: &mut Scratch,
) {
    assert!(available(), "direct convolution called without AVX-512");
    let layout = Layout::Planes(g.planes, 1);
    let input = zeroed(&mut s.input, &mut s.input_layout, layout, g.planes.len());
    // SAFETY (this call and the compaction below): AVX-512 is present (asserted above).
    unsafe { g.planes.fill(dy, input) };
    if g.phases.iter().any(|ph| ph.plan.taps.is_empty()) {
        dx.fill(MaybeUninit::new(0.0));
    }
    for (ph, w) in g.phases.iter().zip(weights) {
        if ph.plan.taps.is_empty() {
            continue;
        }
        let kernel = Kernel::grid(g.cout, g.cin, &g.planes, &ph.plan);
        // SAFETY: AVX-512 is present (asserted above); every tap of every grid position of
        // every phase is inside the padded gradient's planes (`InputGrad::new` sized them).
        let grid = unsafe { s.forward(&kernel, w, g.planes.len()) };
        let p = &ph.plan;
        if g.stride == 1 {
            unsafe { p.compact(grid, g.cin, dx, None) };
            continue;
        }
        debug_assert_eq!(g.stride, 2);
        for c in 0..g.cin {
            let src = &grid[c * p.q..];
            let dst = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
            for a in 0..p.ho {
                let line = &mut dst[(2 * a + ph.py) * g.w..(2 * a + ph.py + 1) * g.w];
                // SAFETY: AVX-512 is present (asserted above); the phase's `wo` values are
                // the columns of parity `px` of a line of `w`.
                unsafe { interleave_row(line, ph.px, &src[a * p.row..a * p.row + p.wo]) };
            }
        }
    }
}

/// What the micro-kernels read: `cin` input channels `channel_stride` apart, `cout` outputs.
struct Kernel<'a> {
    cin: usize,
    cout: usize,
    channel_stride: usize,
    plan: &'a Plan,
}

impl<'a> Kernel<'a> {
    /// The kernel of `cin -> cout` channels over one image laid out as `planes`.
    fn grid(cin: usize, cout: usize, planes: &Planes, plan: &'a Plan) -> Self {
        Self {
            cin,
            cout,
            channel_stride: planes.channel_stride(),
            plan,
        }
    }
}

/// `yq[co, q] = Σ_{ci, t} w[co, ci, t] · x[ci * channel_stride + taps[t] + q]`, `w` laid out
/// `(cout, cin, taps)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn forward_grid(kn: &Kernel, x: &[f32], w: &[f32], yq: &mut [f32]) {
    let p = kn.plan;
    debug_assert!(yq.len() >= kn.cout * p.q && w.len() >= kn.cout * kn.cin * p.taps.len());
    debug_assert!(p
        .taps
        .iter()
        .all(|&t| (kn.cin - 1) * kn.channel_stride + t + p.q <= x.len()));
    // Tiles of positions outside, channel blocks inside: the tile's input stays in L1.
    for q0 in (0..p.q).step_by(V * QR) {
        let span = Span {
            x: q0,
            y: q0,
            y_stride: p.q,
            ci: 0..kn.cin,
            add: false,
        };
        // The last tile may be short: the grid is whole vectors, not whole tiles, which
        // spares up to three vectors of positions per line of tiles (a 14x14 image on lines of
        // 16 is 14 vectors: 16 in whole tiles).
        forward_tile(kn, x, w, (p.q - q0) / V, &span, yq);
    }
}

/// Where one tile of the forward kernel reads and writes: `R` vectors of the input planes from
/// `x` on (each channel's planes `channel_stride` apart), and of the output from `y` on (each
/// channel's `y_stride` apart), summing over the input channels `ci`, onto what the output
/// holds when `add`.
#[cfg(target_arch = "x86_64")]
struct Span {
    x: usize,
    y: usize,
    y_stride: usize,
    ci: std::ops::Range<usize>,
    add: bool,
}

/// Every output channel at `min(vectors, QR)` vectors of positions (see [`Span`]).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn forward_tile(
    kn: &Kernel,
    x: &[f32],
    w: &[f32],
    vectors: usize,
    span: &Span,
    y: &mut [f32],
) {
    match vectors {
        QR.. => forward_channels::<QR>(kn, x, w, span, y),
        3 => forward_channels::<3>(kn, x, w, span, y),
        2 => forward_channels::<2>(kn, x, w, span, y),
        _ => forward_channels::<1>(kn, x, w, span, y),
    }
}

/// Every output channel at `R` vectors of positions.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn forward_channels<const R: usize>(
    kn: &Kernel,
    x: &[f32],
    w: &[f32],
    span: &Span,
    y: &mut [f32],
) {
    let mut co = 0;
    while co < kn.cout {
        // 6 x 4 accumulators (29 of the 32 registers with the four input vectors and a weight):
        // 10 loads for 24 multiply-adds where 4 x 4 needs 8 for 16. Timed alone, 1.05-1.15x
        // faster on the grid, up to 1.05x in the lanes. Eight channels left are two blocks of
        // four, not six and two of one.
        co += match kn.cout - co {
            8 => forward_block::<CR, R>(kn, x, w, co, span, y),
            CF.. => forward_block::<CF, R>(kn, x, w, co, span, y),
            CR.. => forward_block::<CR, R>(kn, x, w, co, span, y),
            _ => forward_block::<1, R>(kn, x, w, co, span, y),
        };
    }
}

/// Output channels `co..co + C` at `R` vectors of positions.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn forward_block<const C: usize, const R: usize>(
    kn: &Kernel,
    x: &[f32],
    w: &[f32],
    co: usize,
    span: &Span,
    y: &mut [f32],
) -> usize {
    let taps = &kn.plan.taps;
    let nt = taps.len();
    let w_stride = kn.cin * nt;
    let (x, w, y) = (x.as_ptr(), w.as_ptr(), y.as_mut_ptr());
    let out = |c: usize, r: usize| y.add((co + c) * span.y_stride + span.y + r * V);
    let mut acc = [[_mm512_setzero_ps(); R]; C];
    if span.add {
        for (c, row) in acc.iter_mut().enumerate() {
            for (r, a) in row.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(out(c, r));
            }
        }
    }
    for ci in span.ci.clone() {
        let x_ci = x.add(ci * kn.channel_stride + span.x);
        let w_ci = w.add(co * w_stride + ci * nt);
        for (t, &off) in taps.iter().enumerate() {
            let xs = x_ci.add(off);
            let mut xv = [_mm512_setzero_ps(); R];
            for (r, v) in xv.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(xs.add(r * V));
            }
            for (c, row) in acc.iter_mut().enumerate() {
                let wv = _mm512_set1_ps(*w_ci.add(c * w_stride + t));
                for (a, &xr) in row.iter_mut().zip(&xv) {
                    *a = _mm512_fmadd_ps(wv, xr, *a);
                }
            }
        }
    }
    for (c, row) in acc.iter().enumerate() {
        for (r, a) in row.iter().enumerate() {
            _mm512_storeu_ps(out(c, r), *a);
        }
    }
    C
}

/// The positions a weight gradient sums over: `images` of `lines` lines of `per_line` vectors,
/// each line's vectors consecutive in the input planes and in the output gradient; from one
/// image, line or output channel to the next the planes move on by `x_image` and `x_line`, the
/// gradient by `dy_image`, `dy_line` and `dy_channel` values.
#[cfg(target_arch = "x86_64")]
struct Sweep {
    images: usize,
    lines: usize,
    per_line: usize,
    x_image: usize,
    x_line: usize,
    dy_image: usize,
    dy_line: usize,
    dy_channel: usize,
}

/// `dw[co, ci, t] += Σ_positions dy[co, position] · x[ci * channel_stride + taps[t] + position]`
/// over the positions of `sweep`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn filter_sweep(kn: &Kernel, x: &[f32], dy: &[f32], sweep: &Sweep, dw: &mut [f32]) {
    let nt = kn.plan.taps.len();
    let taps = kn.cin * nt;
    debug_assert!(dw.len() >= kn.cout * taps);
    // Offset of tap (ci, t) in one image's planes.
    let offsets: Vec<usize> = (0..taps)
        .map(|t| (t / nt) * kn.channel_stride + kn.plan.taps[t % nt])
        .collect();
    // Taps in ranges of whole input channels whose input, over all the sweep's positions,
    // stays in the L2 cache while every block of output channels reads it. Read whole for each
    // block, the input of a 64 -> 128 convolution at stride 2 (3.9 MB for sixteen images) came
    // from the L3 cache 32 times over.
    let channel_bytes = kn.channel_stride * sweep.images.max(1) * std::mem::size_of::<f32>();
    let range = (FILTER_PASS_BYTES / channel_bytes).max(1) * nt;
    for first in (0..taps).step_by(range) {
        let end = (first + range).min(taps);
        let mut co = 0;
        while co < kn.cout {
            let c = if co + CR <= kn.cout { CR } else { 1 };
            let mut t = first;
            while t < end {
                let wide = end - t >= TR;
                let at = (co, t);
                match (c == CR, wide) {
                    (true, true) => filter_block::<CR, TR>(kn, x, dy, sweep, &offsets, at, dw),
                    (true, false) => filter_block::<CR, 1>(kn, x, dy, sweep, &offsets, at, dw),
                    (false, true) => filter_block::<1, TR>(kn, x, dy, sweep, &offsets, at, dw),
                    (false, false) => filter_block::<1, 1>(kn, x, dy, sweep, &offsets, at, dw),
                }
                t += if wide { TR } else { 1 };
            }
            co += c;
        }
    }
}

/// What the input read by one range of taps of the weight gradient may take: a quarter of the
/// L2 cache.
#[cfg(target_arch = "x86_64")]
const FILTER_PASS_BYTES: usize = 512 << 10;

/// `dw[co..co + C, taps t0..t0 + T]` for `(co, t0)`, summed over the positions of `sweep`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn filter_block<const C: usize, const T: usize>(
    kn: &Kernel,
    x: &[f32],
    dy: &[f32],
    sweep: &Sweep,
    offsets: &[usize],
    (co, t0): (usize, usize),
    dw: &mut [f32],
) {
    let mut acc = [[_mm512_setzero_ps(); T]; C];
    for i in 0..sweep.images {
        for line in 0..sweep.lines {
            let x_line = x.as_ptr().add(i * sweep.x_image + line * sweep.x_line);
            let dy_line = dy
                .as_ptr()
                .add(i * sweep.dy_image + co * sweep.dy_channel + line * sweep.dy_line);
            let mut x_taps = [x_line; T];
            for (t, p) in x_taps.iter_mut().enumerate() {
                *p = x_line.add(offsets[t0 + t]);
            }
            for j in 0..sweep.per_line {
                let q = j * V;
                // The gradients first and one tap at a time: C x T accumulators, C gradients
                // and one input vector fit the 32 registers without spilling.
                let mut d = [_mm512_setzero_ps(); C];
                for (c, v) in d.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(dy_line.add(c * sweep.dy_channel + q));
                }
                for (t, p) in x_taps.iter().enumerate() {
                    let xt = _mm512_loadu_ps(p.add(q));
                    for (row, &dc) in acc.iter_mut().zip(&d) {
                        row[t] = _mm512_fmadd_ps(dc, xt, row[t]);
                    }
                }
            }
        }
    }
    let taps = kn.cin * kn.plan.taps.len();
    for (c, row) in acc.iter().enumerate() {
        for (t, a) in row.iter().enumerate() {
            dw[(co + c) * taps + t0 + t] += _mm512_reduce_add_ps(*a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planes_place_each_input_in_its_phase() {
        // 5x5 padded by 1 is 7x7; stride 2 splits it into phases of 4 lines of 4.
        let p = Planes::new((1, 5, 5), 1, 2, 0, 0);
        assert_eq!((p.row, p.plane), (4, 16));
        // input (0, 0) is padded (1, 1): odd line, odd column, phase 3, at (0, 0)
        assert_eq!(p.at(0, 0), 3 * 16);
        // input (1, 2) is padded (2, 3): phase (0, 1) = 1, at line 1, column 1
        assert_eq!(p.at(1, 2), 16 + 4 + 1);
    }

    #[test]
    fn stride_two_planes_hold_every_input_where_at_says() {
        if !available() {
            return;
        }
        // Widths below, at and past the 32 values split at once, odd and even, both paddings.
        for (w, pad) in [
            (1, 1),
            (2, 0),
            (5, 1),
            (16, 1),
            (31, 0),
            (32, 1),
            (33, 1),
            (70, 1),
        ] {
            let (channels, h) = (2, 3);
            let p = Planes::new((channels, h, w), pad, 2, 0, 0);
            let x: Vec<f32> = (0..channels * h * w).map(|i| i as f32 + 1.0).collect();
            let mut out = vec![0f32; p.len()];
            // SAFETY: AVX-512 is present (checked above).
            unsafe { p.fill(&x, &mut out) };
            let mut expected = vec![0f32; p.len()];
            for c in 0..channels {
                for y in 0..h {
                    for xi in 0..w {
                        expected[c * p.channel_stride() + p.at(y, xi)] = x[(c * h + y) * w + xi];
                    }
                }
            }
            assert_eq!(out, expected, "width {w}, padding {pad}");
        }
    }

    #[test]
    fn scratch_values_start_on_a_cache_line_and_keep_their_place() {
        let planes = Planes::new((3, 5, 5), 1, 1, 0, 0);
        let mut buf = Vec::new();
        let mut last = None;
        for len in [1, 17, 1000] {
            let layout = Layout::Planes(planes, len);
            let first = zeroed(&mut buf, &mut last, layout, len);
            assert_eq!(first.len(), len);
            assert_eq!(first.as_ptr() as usize % 64, 0, "{len} values");
            first[len - 1] = 7.0;
            let at = first.as_ptr();
            // The same layout again: the same values, not cleared; `aligned` finds them.
            let again = zeroed(&mut buf, &mut last, layout, len);
            assert_eq!((again.as_ptr(), again[len - 1]), (at, 7.0));
            assert_eq!(aligned(&buf, len).as_ptr(), at);
        }
    }

    #[test]
    fn each_input_gradient_phase_gets_its_share_of_the_taps() {
        // A 4x4 kernel at stride 2 gives each of the four phases a 2x2 share; a 3x3 kernel at
        // stride 2 gives 1x1, 1x2, 2x1 and 2x2; a 1x1 kernel at stride 2 reaches one phase.
        let taps = |k, pad, size| {
            let conv = Conv::new(1, 1, k, 2, pad, (size, size)).unwrap();
            let g = InputGrad::new(1, 1, k, 2, pad, (size, size), conv.out_size()).unwrap();
            g.phases
                .iter()
                .map(|ph| ph.kernel_taps.len())
                .collect::<Vec<_>>()
        };
        assert_eq!(taps(4, 1, 8), vec![4, 4, 4, 4]);
        assert_eq!(taps(3, 1, 8), vec![1, 2, 2, 4]);
        assert_eq!(taps(1, 0, 8), vec![1, 0, 0, 0]);
    }
}
