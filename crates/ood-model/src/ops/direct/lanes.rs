//! The grid convolutions on sixteen images at once, one image per vector lane: forward, input
//! gradient and weight gradient.
//!
//! The grid of [`super`] holds sixteen positions of one image in a vector. Its loads start
//! wherever a tap lands, so most of them straddle two cache lines, and it computes the padding
//! columns too: 8%, 14% and 31% more positions than it keeps at 28x28, 14x14 and 7x7. Here a
//! vector holds one position of sixteen images. The planes and the taps are those of the grid
//! ([`Planes`], [`Plan`]) with every value widened to a vector of sixteen, so the same
//! micro-kernels run on both, their loads all aligned, and only the kept positions are computed.
//!
//! * Forward and input gradient: tiles of up to four positions along each output line, in
//!   passes over the input channels (16 at a time) that keep a tile's input in the L1 cache
//!   and the pass's partial sums in the L2. The sums run in the grid's order, so both routes
//!   give the same values to the bit.
//! * Weight gradient: the grid's kernel swept over the kept positions, line by line; each
//!   accumulator sums sixteen images in its lanes before they are added up, so the result
//!   equals the grid's to rounding, not to the bit.
//!
//! The price is a 16 x 16 transpose on the way in (images to lanes) and on the way out.

use super::*;

/// Images per group: one per lane.
pub(in crate::ops) const GROUP: usize = V;

/// Input channels summed per pass over a tile: what the tile reads of them (three lines of six
/// vectors per channel at stride 1) stays in the L1 cache while every output channel block
/// reads it; the partial sums go to the output and are read back for the next channels.
const CI_CHUNK: usize = 16;

/// What the partial sums of one pass of tiles over the input channels may take: a quarter of
/// the L2 cache. Each chunk of input channels reads its weights once per pass rather than once
/// per tile: at 7x7 with 256 channels they are 2.4 MB, more than the L2 holds, and read for
/// every tile they held the kernel to three quarters of its speed (alone on one core: 113
/// against 147 GFLOP/s).
const PASS_BYTES: usize = 512 << 10;

/// Tiles per pass over the input channels (see [`PASS_BYTES`]).
fn tiles_per_pass(cout: usize) -> usize {
    (PASS_BYTES / (cout * QR * V * std::mem::size_of::<f32>())).max(1)
}

/// Transposes a 16 x 16 block of values in registers: `rows[j][i]` becomes `rows[i][j]`.
#[inline(always)]
unsafe fn transpose(rows: &mut [__m512; 16]) {
    let r = rows;
    let mut t = [_mm512_setzero_ps(); 16];
    // Pairs of values, then pairs of pairs, then 128-bit quarters twice over.
    for k in 0..8 {
        t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    for k in 0..4 {
        r[4 * k] = _mm512_shuffle_ps::<0x44>(t[4 * k], t[4 * k + 2]);
        r[4 * k + 1] = _mm512_shuffle_ps::<0xEE>(t[4 * k], t[4 * k + 2]);
        r[4 * k + 2] = _mm512_shuffle_ps::<0x44>(t[4 * k + 1], t[4 * k + 3]);
        r[4 * k + 3] = _mm512_shuffle_ps::<0xEE>(t[4 * k + 1], t[4 * k + 3]);
    }
    for k in 0..2 {
        for j in 0..4 {
            t[8 * k + j] = _mm512_shuffle_f32x4::<0x88>(r[8 * k + j], r[8 * k + 4 + j]);
            t[8 * k + 4 + j] = _mm512_shuffle_f32x4::<0xDD>(r[8 * k + j], r[8 * k + 4 + j]);
        }
    }
    for j in 0..8 {
        r[j] = _mm512_shuffle_f32x4::<0x88>(t[j], t[8 + j]);
        r[8 + j] = _mm512_shuffle_f32x4::<0xDD>(t[j], t[8 + j]);
    }
}

impl Planes {
    /// Lays sixteen images `(GROUP, channels, h, w)` out as the planes of [`Planes::fill`] with
    /// each value widened to the vector of the sixteen images' values, zeros around.
    /// `out` must hold zeros in the padding: it is not written (see [`zeroed`]).
    #[target_feature(enable = "avx512f")]
    unsafe fn fill_lanes(&self, x: &[f32], out: &mut [f32]) {
        let image = self.channels * self.h * self.w;
        assert!(x.len() == GROUP * image && out.len() == self.len() * V);
        let (x, o) = (x.as_ptr(), out.as_mut_ptr());
        let mut rows = [_mm512_setzero_ps(); 16];
        let hw = self.h * self.w;
        for c in 0..self.channels {
            let dst = o.add(c * self.channel_stride() * V);
            // A channel's values in runs of sixteen across its lines (a 7x7 channel is four
            // transposes, not seven), each value then stored where its `(y, x)` lands.
            let (mut y, mut xi) = (0, 0);
            for p0 in (0..hw).step_by(V) {
                let n = (hw - p0).min(V);
                let src = x.add(c * hw + p0);
                for (i, row) in rows.iter_mut().enumerate() {
                    *row = _mm512_maskz_loadu_ps(first_lanes(n), src.add(i * image));
                }
                transpose(&mut rows);
                for row in rows.iter().take(n) {
                    _mm512_store_ps(dst.add(self.at(y, xi) * V), *row);
                    xi += 1;
                    if xi == self.w {
                        (y, xi) = (y + 1, 0);
                    }
                }
            }
        }
    }
}

impl Plan {
    /// This plan with its taps widened to vectors (see the module's documentation).
    fn widened(&self) -> Self {
        Self {
            taps: self.taps.iter().map(|t| t * V).collect(),
            ..self.clone()
        }
    }

    /// Runs the forward micro-kernel over the kept positions, `(cout, ho, wo)` vectors of
    /// `y`: `kn.plan` is widened and `x` is laid out by [`Planes::fill_lanes`].
    #[target_feature(enable = "avx512f")]
    unsafe fn forward_lanes(&self, kn: &Kernel, x: &[f32], w: &[f32], y: &mut [f32]) {
        let (ho, wo) = (self.ho, self.wo);
        assert!(y.len() >= kn.cout * ho * wo * V);
        debug_assert!(kn.plan.taps.iter().all(|&t| {
            (kn.cin - 1) * kn.channel_stride + t + ((ho - 1) * self.row + wo) * V <= x.len()
        }));
        let tiles: Vec<(usize, usize)> = (0..ho)
            .flat_map(|oy| (0..wo).step_by(QR).map(move |ox| (oy, ox)))
            .collect();
        for batch in tiles.chunks(tiles_per_pass(kn.cout)) {
            for ci in (0..kn.cin).step_by(CI_CHUNK) {
                for &(oy, ox) in batch {
                    let span = Span {
                        x: (oy * self.row + ox) * V,
                        y: (oy * wo + ox) * V,
                        y_stride: ho * wo * V,
                        ci: ci..(ci + CI_CHUNK).min(kn.cin),
                        add: ci > 0,
                    };
                    forward_tile(kn, x, w, wo - ox, &span, y);
                }
            }
        }
    }

    /// Writes the kept positions of `grid (channels, ho, wo)` vectors, image by image, into
    /// `out (GROUP, channels, ho, wo)`, through `epilogue` when given.
    #[target_feature(enable = "avx512f")]
    unsafe fn spill_lanes(
        &self,
        grid: &[f32],
        channels: usize,
        out: &mut [MaybeUninit<f32>],
        epilogue: Option<&Epilogue>,
    ) {
        let hw = self.ho * self.wo;
        let image = channels * hw;
        assert!(grid.len() >= image * V && out.len() == GROUP * image);
        let o = out.as_mut_ptr().cast::<f32>();
        let mut rows = [_mm512_setzero_ps(); 16];
        for c in 0..channels {
            let (shift, floor) = match epilogue {
                Some(e) => epilogue_vectors(e.shift[c], e.relu),
                None => epilogue_vectors(0.0, false),
            };
            // A channel's positions are consecutive in the grid and in each image: runs of
            // sixteen across lines.
            for p0 in (0..hw).step_by(V) {
                let n = (hw - p0).min(V);
                load_positions(&mut rows, grid.as_ptr().add((c * hw + p0) * V), n);
                transpose(&mut rows);
                for (i, row) in rows.iter().enumerate() {
                    let v = _mm512_max_ps(_mm512_add_ps(*row, shift), floor);
                    _mm512_mask_storeu_ps(o.add(i * image + c * hw + p0), first_lanes(n), v);
                }
            }
        }
    }

    /// Writes the kept positions of `grid (channels, ho, wo)` vectors, phase `(py, px)` of the
    /// stride-2 input gradients `out (GROUP, channels, h, w)`: position `(a, b)` goes to line
    /// `2a + py`, column `2b + px`; the other phases' values are left as they are.
    #[target_feature(enable = "avx512f")]
    unsafe fn spill_phase(
        &self,
        grid: &[f32],
        channels: usize,
        out: &mut [MaybeUninit<f32>],
        (h, w): (usize, usize),
        (py, px): (usize, usize),
    ) {
        let image = channels * h * w;
        let (ho, wo) = (self.ho, self.wo);
        assert!(grid.len() >= channels * ho * wo * V && out.len() == GROUP * image);
        let mut rows = [_mm512_setzero_ps(); 16];
        let mut values = [0f32; V];
        for c in 0..channels {
            for a in 0..ho {
                let line = (c * h + 2 * a + py) * w;
                for b in (0..wo).step_by(V) {
                    let n = (wo - b).min(V);
                    load_positions(&mut rows, grid.as_ptr().add(((c * ho + a) * wo + b) * V), n);
                    transpose(&mut rows);
                    for (i, row) in rows.iter().enumerate() {
                        _mm512_storeu_ps(values.as_mut_ptr(), *row);
                        let columns = 2 * b..(2 * (b + n)).min(w);
                        let dst = &mut out[i * image + line..][columns];
                        interleave_row(dst, px, &values[..n]);
                    }
                }
            }
        }
    }
}

/// Loads `n` consecutive position vectors from `src` into `rows`, zeros after them.
#[inline(always)]
unsafe fn load_positions(rows: &mut [__m512; 16], src: *const f32, n: usize) {
    for (j, row) in rows.iter_mut().enumerate() {
        *row = if j < n {
            _mm512_load_ps(src.add(j * V))
        } else {
            _mm512_setzero_ps()
        };
    }
}

/// Lays sixteen images `x` out in the lanes of `planes` in `buf` (zero where nothing is
/// written, see [`zeroed`]) and returns how many values that takes.
///
/// # Safety
/// The CPU has AVX-512.
unsafe fn lay_out(
    buf: &mut Vec<f32>,
    last: &mut Option<Layout>,
    planes: &Planes,
    x: &[f32],
) -> usize {
    let len = planes.len() * V;
    planes.fill_lanes(x, zeroed(buf, last, Layout::Lanes(*planes), len));
    len
}

impl<'a> Kernel<'a> {
    /// The kernel of `cin -> cout` channels over `planes` laid out in the lanes, with `wide`
    /// the plan's taps widened ([`Plan::widened`]).
    fn lanes(cin: usize, cout: usize, planes: &Planes, wide: &'a Plan) -> Self {
        let grid = Self::grid(cin, cout, planes, wide);
        Self {
            channel_stride: grid.channel_stride * V,
            ..grid
        }
    }
}

/// Convolves sixteen images `x (GROUP, cin, h, w)` with `w (cout, cin, k, k)` into
/// `y (GROUP, cout, ho, wo)`, writing every value of `y`: [`forward_image`] on each of them.
pub(in crate::ops) fn forward_group(
    conv: &Conv,
    x: &[f32],
    w: &[f32],
    y: &mut [MaybeUninit<f32>],
    s: &mut Scratch,
    epilogue: Option<&Epilogue>,
) {
    assert!(available(), "direct convolution called without AVX-512");
    let p = &conv.plan;
    assert_eq!(w.len(), conv.weights_len(), "direct weights");
    assert_eq!(
        y.len(),
        GROUP * conv.cout * p.ho * p.wo,
        "direct group output"
    );
    // SAFETY (all three calls): AVX-512 is present (asserted above); the planes hold every tap
    // of every kept position (`Conv::new`), widened as the taps are.
    let len = unsafe { lay_out(&mut s.input, &mut s.input_layout, &conv.planes, x) };
    let wide = p.widened();
    let kernel = Kernel::lanes(conv.cin, conv.cout, &conv.planes, &wide);
    let grid = overwritten(&mut s.grid, &mut s.grid_layout, conv.cout * p.ho * p.wo * V);
    unsafe { p.forward_lanes(&kernel, aligned(&s.input, len), w, grid) };
    unsafe { p.spill_lanes(grid, conv.cout, y, epilogue) };
}

/// The input gradients `dx (GROUP, cin, h, w)` of sixteen images from their output gradients
/// `dy (GROUP, cout, ho, wo)`, writing every value of `dx`: [`input_gradient_image`] on each.
pub(in crate::ops) fn input_gradient_group(
    g: &InputGrad,
    dy: &[f32],
    weights: &[Vec<f32>],
    dx: &mut [MaybeUninit<f32>],
    s: &mut Scratch,
) {
    assert!(available(), "direct convolution called without AVX-512");
    assert_eq!(
        dx.len(),
        GROUP * g.cin * g.h * g.w,
        "direct group input gradient"
    );
    // SAFETY (this call and those below): AVX-512 is present (asserted above).
    let len = unsafe { lay_out(&mut s.input, &mut s.input_layout, &g.planes, dy) };
    if g.phases.iter().any(|ph| ph.plan.taps.is_empty()) {
        dx.fill(MaybeUninit::new(0.0));
    }
    for (ph, wt) in g.phases.iter().zip(weights) {
        let p = &ph.plan;
        if p.taps.is_empty() {
            continue;
        }
        let wide = p.widened();
        let kernel = Kernel::lanes(g.cout, g.cin, &g.planes, &wide);
        let grid = overwritten(&mut s.grid, &mut s.grid_layout, g.cin * p.ho * p.wo * V);
        // SAFETY: every tap of every kept position of every phase is inside the padded
        // gradient's planes (`InputGrad::new` sized them).
        unsafe { p.forward_lanes(&kernel, aligned(&s.input, len), wt, grid) };
        if g.stride == 1 {
            unsafe { p.spill_lanes(grid, g.cin, dx, None) };
        } else {
            debug_assert_eq!(g.stride, 2);
            unsafe { p.spill_phase(grid, g.cin, dx, (g.h, g.w), (ph.py, ph.px)) };
        }
    }
}

/// Adds to `dw (cout, cin, k, k)` the weight gradient of sixteen images `x (GROUP, cin, h, w)`
/// whose output gradients are `dy (GROUP, cout, ho, wo)`: [`filter_gradient_images`] on them,
/// over the kept positions only (the grid's gradient is zero on the others).
pub(in crate::ops) fn filter_gradient_group(
    conv: &Conv,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    s: &mut Scratch,
) {
    assert!(available(), "direct convolution called without AVX-512");
    let p = &conv.plan;
    assert_eq!(dw.len(), conv.weights_len(), "direct weight gradient");
    // SAFETY (all three calls): AVX-512 is present (asserted above).
    let in_len = unsafe { lay_out(&mut s.input, &mut s.input_layout, &conv.planes, x) };
    // The output gradient as planes without padding: line `oy` of a channel at `oy * wo`.
    let gradient = Planes::with_row((conv.cout, p.ho, p.wo), 0, 1, p.wo, 0);
    let out_len = unsafe { lay_out(&mut s.grid, &mut s.grid_layout, &gradient, dy) };
    let wide = p.widened();
    let kernel = Kernel::lanes(conv.cin, conv.cout, &conv.planes, &wide);
    let sweep = Sweep {
        images: 1,
        lines: p.ho,
        per_line: p.wo,
        x_image: 0,
        x_line: p.row * V,
        dy_image: 0,
        dy_line: p.wo * V,
        dy_channel: gradient.channel_stride() * V,
    };
    // SAFETY: every tap of every kept position is inside the input's planes (`Conv::new`).
    unsafe {
        let (x, dy) = (aligned(&s.input, in_len), aligned(&s.grid, out_len));
        filter_sweep(&kernel, x, dy, &sweep, dw)
    };
}
