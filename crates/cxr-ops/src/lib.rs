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
//! | [`matmul`] under [`autocast`] | inputs rounded to bf16/f16, f32 GEMM, output rounded | cuBLAS in bf16/f16 |
//!
//! Mixed precision works as `torch.autocast`: inside [`autocast`], the matrix products of the
//! dense layers and of attention take their inputs in a half type (the f32 master weights are
//! cast at each use, a differentiable cast, so their gradients come back in f32) and give their
//! results back in f32; norms, softmax, activations, the residual stream and the loss stay f32.

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
    static AUTOCAST: Cell<Option<DType>> = const { Cell::new(None) };
}

/// Puts a thread-local setting back when dropped, also when the scope panics.
struct Restore<T: Copy + 'static>(&'static std::thread::LocalKey<Cell<T>>, T);

impl<T: Copy + 'static> Drop for Restore<T> {
    fn drop(&mut self) {
        self.0.with(|c| c.set(self.1));
    }
}

/// Runs `f` with every op of this crate on its portable path (candle's primitives) even on the
/// CPU: what a CUDA device runs, for tests that compare the two paths and for debugging a kernel.
/// Applies to ops called from this thread inside `f`.
pub fn portable<R>(f: impl FnOnce() -> R) -> R {
    let _restore = Restore(&PORTABLE, PORTABLE.with(|p| p.replace(true)));
    f()
}

/// Runs `f` with the matrix products of this crate's ops (and [`matmul`]) in `dtype` (bf16 or
/// f16; f32 is a no-op): mixed precision as `torch.autocast` does it (see the crate's docs).
/// Applies to ops called from this thread inside `f`; the backward follows the graph the
/// forward built, so it needs no scope.
pub fn autocast<R>(dtype: DType, f: impl FnOnce() -> R) -> R {
    let half = matches!(dtype, DType::BF16 | DType::F16).then_some(dtype);
    let _restore = Restore(&AUTOCAST, AUTOCAST.with(|a| a.replace(half)));
    f()
}

/// The half type of the enclosing [`autocast`], if any.
pub fn autocast_dtype() -> Option<DType> {
    AUTOCAST.with(Cell::get)
}

/// `a · b` (candle's batched matmul), in the [`autocast`] type when one is set and the inputs are
/// f32: the inputs are rounded to it, multiplied with f32 accumulation, and the product is
/// rounded to it and handed back in f32. On a GPU that is cuBLAS's half GEMM (tensor cores);
/// candle's CPU backend has no bf16 GEMM, so the CPU computes the same rounding in f32.
pub fn matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let Some(half) = autocast_dtype().filter(|_| a.dtype() == DType::F32) else {
        return a.matmul(b);
    };
    let (a, b) = (a.to_dtype(half)?, b.to_dtype(half)?);
    if a.device().is_cpu() {
        let product = a.to_dtype(DType::F32)?.matmul(&b.to_dtype(DType::F32)?)?;
        return product.to_dtype(half)?.to_dtype(DType::F32);
    }
    a.matmul(&b)?.to_dtype(DType::F32)
}

/// Whether an op on `t` runs our CPU kernel: f32 values on the CPU, outside [`portable`]. The
/// kernels of ops with matrix products compute in f32 only, so they also check
/// [`autocast_dtype`].
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

    #[test]
    fn autocast_products_round_as_a_half_gemm_and_give_f32_gradients() {
        let dev = Device::Cpu;
        let a = candle_core::Var::randn(0f32, 1.0, (3, 64, 48), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (3, 48, 40), &dev).unwrap();
        let exact = matmul(a.as_tensor(), &b).unwrap();
        // f16: candle's CPU backend has an f16 GEMM, the rounding a GPU does.
        let f16 = DType::F16;
        let native = a
            .to_dtype(f16)
            .unwrap()
            .matmul(&b.to_dtype(f16).unwrap())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let ours = autocast(f16, || matmul(a.as_tensor(), &b)).unwrap();
        assert_eq!(ours.dtype(), DType::F32);
        // Within one f16 rounding of the product (sums in another order may round apart).
        let ulp = (native.abs().unwrap() * (1.0 / 1024.0)).unwrap();
        let over = ((ours.clone() - &native).unwrap().abs().unwrap() - ulp)
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(over <= 1e-6, "{over}");
        // bf16: every value a bf16, near the f32 product and not equal to it.
        let bf16 = autocast(DType::BF16, || matmul(a.as_tensor(), &b)).unwrap();
        let round_trip = bf16
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert_eq!(max_abs_diff(&bf16, &round_trip).unwrap(), 0.0);
        let d = max_relative_diff(&bf16, &exact).unwrap();
        assert!(d > 0.0 && d < 2e-2, "{d}");
        // The gradient reaches the f32 variable in f32, close to the f32 one.
        let grad = |dtype: DType| {
            let y = autocast(dtype, || matmul(a.as_tensor(), &b)).unwrap();
            let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            g.get(a.as_tensor()).unwrap().clone()
        };
        let (g32, g16) = (grad(DType::F32), grad(DType::BF16));
        assert_eq!(g16.dtype(), DType::F32);
        let d = max_relative_diff(&g16, &g32).unwrap();
        assert!(d > 0.0 && d < 3e-2, "{d}");
        // The scope ends with the call, and f32 is no scope at all.
        assert_eq!(autocast_dtype(), None);
        assert_eq!(autocast(DType::F32, autocast_dtype), None);
        assert_eq!(
            max_abs_diff(&matmul(a.as_tensor(), &b).unwrap(), &exact).unwrap(),
            0.0
        );
    }
}
