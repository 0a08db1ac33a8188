//! GEMV: `y (m, n) = x (m, k) · Wt (k, n)` for the few rows of a decode step, with the weight
//! stored column-major (in, out), read once, in order. candle's matmul runs it as a GEMM, which
//! for one row reads the weight at a fraction of the memory bandwidth.

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `x (m, k) · wt (k, n)`, not differentiable (inference).
pub fn gemv(x: &Tensor, wt: &Tensor) -> Result<Tensor> {
    if crate::cpu_kernel(x) {
        x.contiguous()?.apply_op2_no_bwd(wt, &Gemv)
    } else {
        x.matmul(wt)
    }
}

/// `y (m, n) = x (m, k) · Wt (k, n)` for a few rows: columns are split among threads, and each
/// thread streams its slice of every weight row once, four rows at a time, with its outputs in L1.
struct Gemv;

impl candle_core::CustomOp2 for Gemv {
    fn name(&self) -> &'static str {
        "cxr-gemv"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (k2, n) = wl.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("gemv: x has {k} columns, the weight {k2} rows")
        }
        let (CpuStorage::F32(x), CpuStorage::F32(w), Some((xs0, xs1)), Some((ws0, ws1))) =
            (xs, ws, xl.contiguous_offsets(), wl.contiguous_offsets())
        else {
            candle_core::bail!("gemv needs contiguous f32 operands")
        };
        let (x, w) = (&x[xs0..xs1], &w[ws0..ws1]);
        // Each task takes a contiguous band of weight rows, so that every thread streams memory
        // in order (what the prefetchers reward), into its own partial sums; bands are then added.
        let tasks = rayon::current_num_threads().clamp(1, k.div_ceil(64).max(1));
        let band = k.div_ceil(tasks).next_multiple_of(4);
        let partials: Vec<Vec<f32>> = (0..k)
            .step_by(band)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|k0| {
                let k1 = (k0 + band).min(k);
                let mut out = vec![0f32; m * n];
                gemv_band(x, w, (m, k, n), (k0, k1), &mut out);
                out
            })
            .collect();
        let mut parts = partials.into_iter();
        let mut y = parts.next().unwrap_or_else(|| vec![0f32; m * n]);
        for p in parts {
            add_into(&mut y, &p);
        }
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }
}

/// `out (m, n) += x[:, k0..k1] · w[k0..k1, :]`, four weight rows per pass over the outputs.
#[inline(always)]
fn gemv_band_generic(
    x: &[f32],
    w: &[f32],
    (m, k, n): (usize, usize, usize),
    (k0, k1): (usize, usize),
    out: &mut [f32],
) {
    for r in 0..m {
        let xr = &x[r * k..(r + 1) * k];
        let y = &mut out[r * n..(r + 1) * n];
        let mut kk = k0;
        while kk + 4 <= k1 {
            let (a, b, c, d) = (xr[kk], xr[kk + 1], xr[kk + 2], xr[kk + 3]);
            let rows = &w[kk * n..(kk + 4) * n];
            let (w0, rest) = rows.split_at(n);
            let (w1, rest) = rest.split_at(n);
            let (w2, w3) = rest.split_at(n);
            for j in 0..n {
                y[j] += a * w0[j] + b * w1[j] + c * w2[j] + d * w3[j];
            }
            kk += 4;
        }
        while kk < k1 {
            let a = xr[kk];
            for (yv, wv) in y.iter_mut().zip(&w[kk * n..(kk + 1) * n]) {
                *yv += a * wv;
            }
            kk += 1;
        }
    }
}

crate::dispatch_simd!(
    gemv_band_generic,
    gemv_band,
    (x: &[f32], w: &[f32], dims: (usize, usize, usize), band: (usize, usize), out: &mut [f32])
);

#[inline(always)]
fn add_into_generic(y: &mut [f32], p: &[f32]) {
    for (a, b) in y.iter_mut().zip(p) {
        *a += b;
    }
}

crate::dispatch_simd!(add_into_generic, add_into, (y: &mut [f32], p: &[f32]));

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_the_portable_matmul() {
        for (m, k, n) in [(1, 67, 1000), (3, 128, 33), (8, 5, 7), (2, 1, 9)] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            let wt = Tensor::randn(0f32, 1.0, (k, n), &Device::Cpu).unwrap();
            let ours = gemv(&x, &wt).unwrap();
            let portable = crate::portable(|| gemv(&x, &wt)).unwrap();
            let d = crate::max_abs_diff(&ours, &portable).unwrap();
            assert!(d < 1e-4, "{m}x{k}x{n}: {d}");
        }
    }
}
