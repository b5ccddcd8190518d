//! Fast CPU kernels as candle custom ops, with candle's stock ops behind a switch.
//!
//! candle 0.11 computes a convolution's input gradient with a direct (non-GEMM) transposed
//! convolution, and BatchNorm's training backward through a dozen broadcast ops; together they
//! dominate CPU training time. The ops here do the same maths with direct AVX-512 kernels on a
//! padded grid (`direct`, for strides 1 and 2) or through im2col and the `gemm` crate candle
//! already uses (elsewhere), and BatchNorm in one pass. They run only for f32 tensors on the
//! CPU; anywhere else (CUDA, Metal, other dtypes) the stock candle ops run.
//!
//! [`set_kernels`] (or `OOD_KERNELS=candle|fast` in the environment) picks the path, so both
//! can be benchmarked and tested against each other.

pub mod batchnorm;
pub mod conv;
mod direct;
pub mod residual;

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, Ordering};

/// Which implementation the layers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// candle's own ops everywhere.
    Candle,
    /// This crate's CPU kernels where they apply (f32 on the CPU), candle's elsewhere.
    Fast,
}

const UNSET: u8 = 0;
static KERNELS: AtomicU8 = AtomicU8::new(UNSET);

fn encode(k: Kernels) -> u8 {
    match k {
        Kernels::Candle => 1,
        Kernels::Fast => 2,
    }
}

/// Chooses the implementation for every layer from now on.
pub fn set_kernels(kernels: Kernels) {
    KERNELS.store(encode(kernels), Ordering::Relaxed);
}

/// The current choice: set by [`set_kernels`], else `$OOD_KERNELS`, else [`Kernels::Fast`].
pub fn kernels() -> Kernels {
    match KERNELS.load(Ordering::Relaxed) {
        1 => Kernels::Candle,
        2 => Kernels::Fast,
        _ => {
            let k = match std::env::var("OOD_KERNELS").as_deref() {
                Ok("candle") => Kernels::Candle,
                _ => Kernels::Fast,
            };
            set_kernels(k);
            k
        }
    }
}

/// Whether the fast path applies to `t`.
pub(crate) fn fast_path(t: &candle_core::Tensor) -> bool {
    kernels() == Kernels::Fast && t.device().is_cpu() && t.dtype() == candle_core::DType::F32
}

/// The values of a contiguous f32 CPU tensor, or an error naming `what` (the op and argument).
pub(crate) fn cpu_f32<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(data) = s else {
        candle_core::bail!("{what}: the fast kernels take f32 tensors only")
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: the fast kernels take contiguous tensors only"),
    }
}

/// A vector of `len` values, all of which `write` must write: the memory is not zeroed first,
/// which for the outputs of these kernels was one more pass over memory (4-5% of serving).
pub(crate) fn written_vec(len: usize, write: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut out = Vec::<f32>::with_capacity(len);
    write(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: the callers' kernels write every value of the slice they are given (each says how
    // next to its call), and `f32` has no invalid bit patterns once written.
    unsafe { out.set_len(len) };
    out
}

/// `values` seen as possibly uninitialised, for kernels that only write through it.
pub(crate) fn as_uninit(values: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and whatever is written through the
    // result is an initialised `f32`.
    unsafe { &mut *(values as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// Runs `f` compiled for AVX-512 where the CPU has it. The element-wise loops of these kernels
/// are otherwise built for the baseline x86-64 (SSE2, four lanes). `f` is inlined into a
/// function that enables the feature, and is vectorised there; pass a closure marked
/// `#[inline(always)]` so it surely is. The results are the same either way: the loops' sums
/// name their accumulators, so wider vectors do not reorder them.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if direct::available() {
        #[target_feature(enable = "avx512f")]
        unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has AVX-512 (checked above).
        return unsafe { with_avx512(f) };
    }
    f()
}
