//! The kernels: every op llm-cxr's models train and run with that candle does not do well enough
//! on the CPU, each with one dispatch by device.
//!
//! On the CPU an op runs our kernel (forward and backward written for cache and threads; each
//! module says what it beats and by how much); anywhere else (CUDA) the same op runs as a
//! composition of candle's primitives, which candle differentiates and runs with its own CUDA
//! kernels and cuBLAS. The two paths compute the same function: every op's tests compare them,
//! values and gradients, on the CPU, where [`portable`] forces the second one.
//!
//! | op | CPU kernel | elsewhere |
//! |---|---|---|
//! | [`transformer::causal_attention`] | one t x t block per head, recomputed backward | masked softmax of matmuls |
//! | [`transformer::layer_norm`], [`transformer::rms_norm`] | one pass forward, one backward | candle's slow norms |
//! | [`transformer::gelu_erf`] | vectorized erf | `gelu_erf` |
//! | [`transformer::rope`] | in place of `rotate_half` | narrow, mul, cat |
//! | [`transformer::linear`] | weight gradient in the weight's layout | `matmul` by the transpose |
//! | [`gemv::gemv`] | a few rows by a column-major weight, streamed | `matmul` |
//! | [`loss::cross_entropy_rows`] | fused log-softmax and pick | `log_softmax`, `gather` |
//! | [`conv::conv2d`], [`conv::Conv2d`] | im2col + GEMM, Winograd F(4x4, 3x3) for inference | `conv2d` |
//! | [`group_norm::GroupNorm`] | one pass per group, swish fused | candle-nn's `GroupNorm` |
//! | [`adamw::update`] | in place, one pass over weights and moments | elementwise ops, moments on the device |
//! | [`sum_of_squares`] | per-chunk f64 partials, added in order | `sqr`, `sum_all` in f64 |

#[macro_use]
mod simd;
pub mod adamw;
pub mod conv;
pub mod gemv;
pub mod group_norm;
pub mod loss;
pub mod transformer;
pub mod winograd;

use std::cell::Cell;

use candle_core::{DType, Tensor};

thread_local! {
    static PORTABLE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every op of this crate on its portable path (candle's primitives) even on the
/// CPU: what a CUDA device runs, for tests that compare the two paths and for debugging a kernel.
/// Applies to ops called from this thread inside `f`.
pub fn portable<R>(f: impl FnOnce() -> R) -> R {
    /// Puts the flag back, also when `f` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            PORTABLE.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(PORTABLE.with(|p| p.replace(true)));
    f()
}

/// Whether an op on `t` runs our CPU kernel: f32 values on the CPU, outside [`portable`].
pub(crate) fn cpu_kernel(t: &Tensor) -> bool {
    on_cpu(t) && t.dtype() == DType::F32
}

/// On the CPU, outside [`portable`].
fn on_cpu(t: &Tensor) -> bool {
    t.device().is_cpu() && !PORTABLE.with(Cell::get)
}

/// The values of a contiguous f32 CPU storage, for custom ops; `op` names the op in errors.
pub fn contiguous_f32<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(data) = s else {
        candle_core::bail!("{op}: only f32 is supported");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: inputs must be contiguous"),
    }
}

/// The sum of the squares of a tensor's values, in f64 on the CPU (one pass, no temporary).
pub fn sum_of_squares(t: &Tensor) -> candle_core::Result<f64> {
    use rayon::prelude::*;
    if !on_cpu(t) {
        return t.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar();
    }
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) = &*storage else {
        candle_core::bail!("sum_of_squares: f32 CPU tensors only");
    };
    let (a, b) = layout.contiguous_offsets().expect("made contiguous above");
    // Partial sums per fixed chunk, added in order: the same bits whatever the thread schedule.
    let parts: Vec<f64> = v[a..b]
        .par_chunks(1 << 16)
        .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
        .collect();
    Ok(parts.iter().sum())
}

/// The largest absolute difference between `a` and `b` over `b`'s largest magnitude (at least
/// 1e-3): one tolerance for gradients of very different scales.
pub fn max_relative_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
    let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    Ok(max_abs_diff(a, b)? / scale.max(1e-3))
}

/// The largest absolute difference between two tensors of the same shape (parity checks).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
    if a.dims() != b.dims() {
        candle_core::bail!("shapes differ: {:?} vs {:?}", a.dims(), b.dims());
    }
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sum_of_squares_does_not_depend_on_the_thread_count() {
        // The gradient norm scales every clipped step: its bits must not follow the threads.
        let t = Tensor::randn(0f32, 1.0, 1 << 20, &Device::Cpu).unwrap();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| sum_of_squares(&t).unwrap())
        };
        let one = run(1);
        assert!((one / (1 << 20) as f64 - 1.0).abs() < 0.01, "{one}");
        let composed = portable(|| sum_of_squares(&t).unwrap());
        assert!((composed - one).abs() < 1e-9 * one, "{composed} vs {one}");
        for threads in [2, 3, 8] {
            assert_eq!(run(threads).to_bits(), one.to_bits(), "{threads} threads");
        }
    }
}
