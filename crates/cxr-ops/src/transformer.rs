//! The transformer's ops: causal self-attention, LayerNorm, RMSNorm, exact GELU, rotary
//! embeddings, the dense layer and softmax. On the CPU each is one op forward and one hand-written
//! backward; elsewhere (and under [`crate::portable`]) a composition of candle's ops.
//!
//! Composed from candle's primitives, one layer of the 410m shape made some forty tensors per
//! step the size of the attention scores (heads x t x t) or of the activations, and candle's
//! backward adds two more per tensor (a zero gradient, then the sum into it): the backward ran
//! at a third of the GEMM rate. Here attention keeps one t x t block per head in a thread's
//! scratch and recomputes it in the backward (as FlashAttention does), norms and GELU make one
//! pass forward and one or two backward, and the dense layer's weight gradient comes out of one
//! GEMM in the weight's own (out, in) layout. Each op is checked against its portable composition,
//! values and gradients, in the tests below.

use crate::contiguous_f32 as contiguous;
use crate::group_norm::exp_fast;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor, D,
};
use rayon::prelude::*;

/// The values of an f32 storage from its layout's start (strides are the caller's business).
fn values<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: only f32 is supported");
    };
    Ok(&v[l.start_offset()..])
}

/// The values of a contiguous CPU tensor, read in place (`t.storage_and_layout()`'s guard).
fn cpu<'a>(g: &'a Storage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match g {
        Storage::Cpu(s) => contiguous(s, l, op),
        _ => candle_core::bail!("{op}: only the CPU is supported"),
    }
}

/// Binds `$name` to the values of the tensor `$t` made contiguous, without copying them again.
macro_rules! read {
    ($op:expr, $($name:ident = $t:expr),+) => {
        $(let $name = $t.contiguous()?;)+
        $(let $name = $name.storage_and_layout();)+
        $(let $name = cpu(&$name.0, $name.1, $op)?;)+
    };
}

/// A (rows, columns) operand of a GEMM: values and (row, column) strides.
#[derive(Clone, Copy)]
struct Mat<'a> {
    v: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    fn rows(v: &'a [f32], rs: usize) -> Self {
        Mat { v, rs, cs: 1 }
    }
    /// The transpose of a row-major matrix with row stride `rs`.
    fn transposed(v: &'a [f32], rs: usize) -> Self {
        Mat { v, rs: 1, cs: rs }
    }
    fn check(&self, rows: usize, cols: usize, what: &str) {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * self.rs + (cols - 1) * self.cs;
            assert!(last < self.v.len(), "gemm: {what} out of bounds");
        }
    }
}

/// `dst (m x n, row stride dst_rs) (+)= alpha · lhs (m x k) · rhs (k x n)`.
#[allow(clippy::too_many_arguments)]
fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    alpha: f32,
    threads: usize,
) {
    lhs.check(m, k, "lhs");
    rhs.check(k, n, "rhs");
    Mat::rows(dst, dst_rs).check(m, n, "dst");
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every element addressed lies inside the slices (checked above), and `dst` is
    // borrowed mutably, so nothing else writes it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.v.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.v.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            parallelism,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Causal self-attention

/// `softmax(scale · q·kᵀ + causal mask) · v` for q (b, heads, t, d) and k, v (b, kv_heads, t, d)
/// (any strides with the last dimension contiguous; heads a multiple of kv_heads), the heads
/// merged in the output: (b, t, heads·d).
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    if !crate::cpu_kernel(q) || crate::autocast_dtype().is_some() {
        return causal_attention_composed(q, k, v);
    }
    let d = q.dim(3)?;
    let op = CausalAttention {
        scale: 1.0 / (d as f32).sqrt(),
    };
    let (q, k, v) = (
        last_contiguous(q)?,
        last_contiguous(k)?,
        last_contiguous(v)?,
    );
    q.apply_op3_arc(&k, &v, std::sync::Arc::new(Box::new(op)))
}

/// The portable path: the masked softmax of the scores, each group's queries folded into rows
/// (grouped-query attention without copying the keys).
fn causal_attention_composed(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let kvh = k.dim(1)?;
    let group = h / kvh;
    let q = q.contiguous()?.reshape((b, kvh, group * t, d))?;
    let scores = (crate::matmul(&q, &k.contiguous()?.t()?)? * (1.0 / (d as f64).sqrt()))?;
    // The (t, t) causal mask, made on the device, over each group's t rows.
    let (dev, dtype) = (q.device(), q.dtype());
    let pos = Tensor::arange(0u32, t as u32, dev)?;
    let seen = pos.unsqueeze(1)?.broadcast_ge(&pos.unsqueeze(0)?)?;
    let mask = seen.where_cond(
        &Tensor::zeros((t, t), dtype, dev)?,
        &Tensor::full(f32::NEG_INFINITY, (t, t), dev)?.to_dtype(dtype)?,
    )?;
    let scores = scores
        .reshape((b, kvh, group, t, t))?
        .broadcast_add(&mask)?
        .reshape((b, kvh, group * t, t))?;
    crate::matmul(&softmax(&scores)?, &v.contiguous()?)?
        .reshape((b, h, t, d))?
        .transpose(1, 2)?
        .reshape((b, t, h * d))
}

/// Softmax over the last dimension: candle's fused op when no gradient is wanted, else its
/// differentiable composition.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

fn last_contiguous(x: &Tensor) -> Result<Tensor> {
    if x.stride().last() == Some(&1) {
        Ok(x.clone())
    } else {
        x.contiguous()
    }
}

struct CausalAttention {
    scale: f32,
}

/// The (b, heads, t, d) shape of q and the kv head count, checked.
fn attention_dims(
    q: &Layout,
    k: &Layout,
    v: &Layout,
) -> Result<(usize, usize, usize, usize, usize)> {
    let (b, h, t, d) = q.shape().dims4()?;
    let (kb, kvh, kt, kd) = k.shape().dims4()?;
    if (kb, kt, kd) != (b, t, d) || v.shape() != k.shape() || kvh == 0 || h % kvh != 0 {
        candle_core::bail!(
            "causal attention: q {:?} does not fit k {:?} and v {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    for l in [q, k, v] {
        if l.stride()[3] != 1 {
            candle_core::bail!("causal attention: the head dimension must be contiguous");
        }
    }
    Ok((b, h, kvh, t, d))
}

/// One (batch row, head) matrix (t, d) of a 4-d layout: offset and row stride.
fn head_matrix<'a>(v: &'a [f32], l: &Layout, bi: usize, head: usize) -> Mat<'a> {
    let s = l.stride();
    Mat::rows(&v[bi * s[0] + head * s[1]..], s[2])
}

/// Row-wise causal softmax of the (t, t) scores in place: row i keeps columns 0..=i.
fn causal_softmax(p: &mut [f32], t: usize) {
    for (i, row) in p.chunks_mut(t).enumerate() {
        let (seen, future) = row.split_at_mut(i + 1);
        softmax_row(seen);
        future.fill(0.0);
    }
}

#[inline(always)]
fn softmax_row_generic(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut sum = 0.0;
    for x in row.iter_mut() {
        *x = exp_fast(*x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inv);
}

crate::dispatch_simd!(softmax_row_generic, softmax_row, (row: &mut [f32]));

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "cxr-lm-causal-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, h, kvh, t, d) = attention_dims(ql, kl, vl)?;
        let name = self.name();
        let (q, k, v) = (
            values(qs, ql, name)?,
            values(ks, kl, name)?,
            values(vs, vl, name)?,
        );
        let group = h / kvh;
        // One output block (group heads x t x d) per (batch row, kv head), then merged.
        let blocks: Vec<Vec<f32>> = (0..b * kvh)
            .into_par_iter()
            .map(|unit| {
                let (bi, kv) = (unit / kvh, unit % kvh);
                let km = head_matrix(k, kl, bi, kv);
                let vm = head_matrix(v, vl, bi, kv);
                let mut p = vec![0f32; t * t];
                let mut out = vec![0f32; group * t * d];
                for (g, o) in out.chunks_mut(t * d).enumerate() {
                    let qm = head_matrix(q, ql, bi, kv * group + g);
                    let kt = Mat {
                        v: km.v,
                        rs: 1,
                        cs: km.rs,
                    };
                    gemm((t, t, d), &mut p, t, false, qm, kt, self.scale, 1);
                    causal_softmax(&mut p, t);
                    gemm((t, d, t), o, d, false, Mat::rows(&p, t), vm, 1.0, 1);
                }
                out
            })
            .collect();
        let mut merged = vec![0f32; b * t * h * d];
        for (unit, block) in blocks.iter().enumerate() {
            let (bi, kv) = (unit / kvh, unit % kvh);
            for (g, o) in block.chunks(t * d).enumerate() {
                let head = kv * group + g;
                for (i, row) in o.chunks(d).enumerate() {
                    let at = (bi * t + i) * h * d + head * d;
                    merged[at..at + d].copy_from_slice(row);
                }
            }
        }
        Ok((CpuStorage::F32(merged), Shape::from((b, t, h * d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        d_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, h, t, d) = q.dims4()?;
        let kvh = k.dim(1)?;
        let group = h / kvh;
        read!(self.name(), qv = q, kv = k, vv = v, dov = d_out);
        let mut dq = vec![0f32; b * h * t * d];
        let mut dk = vec![0f32; b * kvh * t * d];
        let mut dv = vec![0f32; b * kvh * t * d];
        let scale = self.scale;
        dq.par_chunks_mut(group * t * d)
            .zip(dk.par_chunks_mut(t * d))
            .zip(dv.par_chunks_mut(t * d))
            .enumerate()
            .for_each(|(unit, ((dq, dk), dv))| {
                let (bi, kvi) = (unit / kvh, unit % kvh);
                let km = &kv[unit * t * d..(unit + 1) * t * d];
                let vm = &vv[unit * t * d..(unit + 1) * t * d];
                let mut p = vec![0f32; t * t];
                let mut dp = vec![0f32; t * t];
                for (g, dq) in dq.chunks_mut(t * d).enumerate() {
                    let head = kvi * group + g;
                    let qm = &qv[(bi * h + head) * t * d..(bi * h + head + 1) * t * d];
                    // The head's rows of d_out (b, t, heads·d).
                    let dom = Mat::rows(&dov[bi * t * h * d + head * d..], h * d);
                    gemm(
                        (t, t, d),
                        &mut p,
                        t,
                        false,
                        Mat::rows(qm, d),
                        Mat::transposed(km, d),
                        scale,
                        1,
                    );
                    causal_softmax(&mut p, t);
                    // dv += pᵀ·dout; dp = dout·vᵀ.
                    gemm((t, d, t), dv, d, true, Mat::transposed(&p, t), dom, 1.0, 1);
                    gemm(
                        (t, t, d),
                        &mut dp,
                        t,
                        false,
                        dom,
                        Mat::transposed(vm, d),
                        1.0,
                        1,
                    );
                    // ds = p ⊙ (dp - Σⱼ pᵢⱼ dpᵢⱼ), times the scale; zero above the diagonal.
                    for (i, (pr, dr)) in p.chunks(t).zip(dp.chunks_mut(t)).enumerate() {
                        let dot: f32 = pr[..=i].iter().zip(&dr[..=i]).map(|(a, b)| a * b).sum();
                        for (x, &pv) in dr[..=i].iter_mut().zip(&pr[..=i]) {
                            *x = pv * (*x - dot) * scale;
                        }
                        dr[i + 1..].fill(0.0);
                    }
                    // dq = ds·k; dk += dsᵀ·q.
                    gemm(
                        (t, d, t),
                        dq,
                        d,
                        false,
                        Mat::rows(&dp, t),
                        Mat::rows(km, d),
                        1.0,
                        1,
                    );
                    gemm(
                        (t, d, t),
                        dk,
                        d,
                        true,
                        Mat::transposed(&dp, t),
                        Mat::rows(qm, d),
                        1.0,
                        1,
                    );
                }
            });
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, (b, h, t, d), dev)?),
            Some(Tensor::from_vec(dk, (b, kvh, t, d), dev)?),
            Some(Tensor::from_vec(dv, (b, kvh, t, d), dev)?),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm and RMSNorm over the last dimension

/// Rows per parallel task of the norms.
const NORM_ROWS: usize = 16;

/// Mean (0 for RMSNorm) and 1/sqrt(var + eps) of one row, sums in f64.
fn row_stats(x: &[f32], eps: f64, centre: bool) -> (f32, f32) {
    let n = x.len() as f64;
    let mean = if centre {
        x.iter().map(|&v| v as f64).sum::<f64>() / n
    } else {
        0.0
    };
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

/// `(x - mean) · rstd · w (+ bias)` per row; `centre` false gives RMSNorm.
fn norm_forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, eps: f64, centre: bool) -> Vec<f32> {
    let n = w.len();
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(n * NORM_ROWS)
        .zip(x.par_chunks(n * NORM_ROWS))
        .for_each(|(y, x)| {
            for (y, x) in y.chunks_mut(n).zip(x.chunks(n)) {
                let (mean, rstd) = row_stats(x, eps, centre);
                for (j, (o, xv)) in y.iter_mut().zip(x).enumerate() {
                    *o = (xv - mean) * rstd * w[j] + bias.map_or(0.0, |b| b[j]);
                }
            }
        });
    y
}

/// Gradients of a norm: dx (as x), dw (n) and dbias (n), with x̂ = (x - mean)·rstd:
/// `dw = Σ dy x̂`, `dbias = Σ dy`, `dx = rstd (w dy - mean(w dy) - x̂ mean(w dy x̂))`, the middle
/// term only when centred.
fn norm_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    eps: f64,
    centre: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = w.len();
    let mut dx = vec![0f32; x.len()];
    // Each band of rows sums its own dw / db; the bands are then added in order, so that the
    // result does not depend on how the threads happened to split the work.
    let parts: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(n * NORM_ROWS)
        .zip(x.par_chunks(n * NORM_ROWS))
        .zip(dy.par_chunks(n * NORM_ROWS))
        .map(|((dx, x), dy)| {
            let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
            let mut wdy = vec![0f32; n];
            for ((dx, x), dy) in dx.chunks_mut(n).zip(x.chunks(n)).zip(dy.chunks(n)) {
                let (mean, rstd) = row_stats(x, eps, centre);
                let (mut sum_wdy, mut sum_wdy_xhat) = (0f32, 0f32);
                for j in 0..n {
                    let xhat = (x[j] - mean) * rstd;
                    dw[j] += dy[j] * xhat;
                    db[j] += dy[j];
                    wdy[j] = w[j] * dy[j];
                    sum_wdy += wdy[j];
                    sum_wdy_xhat += wdy[j] * xhat;
                }
                let mean_wdy = if centre { sum_wdy / n as f32 } else { 0.0 };
                let mean_wdy_xhat = sum_wdy_xhat / n as f32;
                for j in 0..n {
                    let xhat = (x[j] - mean) * rstd;
                    dx[j] = rstd * (wdy[j] - mean_wdy - xhat * mean_wdy_xhat);
                }
            }
            (dw, db)
        })
        .collect();
    let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
    for (pw, pb) in &parts {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    (dx, dw, db)
}

fn norm_dims(x: &Layout, w: &Layout, op: &str) -> Result<usize> {
    let n = w.shape().elem_count();
    if x.dims().last() != Some(&n) || w.dims().len() != 1 {
        candle_core::bail!(
            "{op}: weight {:?} does not fit input {:?}",
            w.dims(),
            x.dims()
        );
    }
    Ok(n)
}

/// LayerNorm over the last dimension with weight and bias, differentiable in all three. Without
/// gradients it is candle's op (fast, on every device).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if !(x.track_op() || weight.track_op() || bias.track_op()) {
        return candle_nn::ops::layer_norm(&x.contiguous()?, weight, bias, eps as f32);
    }
    if !crate::cpu_kernel(x) {
        return candle_nn::ops::layer_norm_slow(x, weight, bias, eps as f32);
    }
    x.contiguous()?.apply_op3_arc(
        weight,
        bias,
        std::sync::Arc::new(Box::new(LayerNorm { eps })),
    )
}

/// RMSNorm over the last dimension, differentiable in input and weight. Without gradients it is
/// candle's op.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if !(x.track_op() || weight.track_op()) {
        return candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32);
    }
    if !crate::cpu_kernel(x) {
        return candle_nn::ops::rms_norm_slow(x, weight, eps as f32);
    }
    x.contiguous()?
        .apply_op2_arc(weight, std::sync::Arc::new(Box::new(RmsNorm { eps })))
}

struct LayerNorm {
    eps: f64,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "cxr-lm-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        norm_dims(xl, wl, name)?;
        norm_dims(xl, bl, name)?;
        let (x, w, b) = (
            contiguous(xs, xl, name)?,
            contiguous(ws, wl, name)?,
            contiguous(bs, bl, name)?,
        );
        Ok((
            CpuStorage::F32(norm_forward(x, w, Some(b), self.eps, true)),
            xl.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _out: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        read!(self.name(), xv = x, wv = w, dyv = dy);
        let (dx, dw, db) = norm_backward(xv, wv, dyv, self.eps, true);
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
            Some(Tensor::from_vec(db, b.shape(), b.device())?),
        ))
    }
}

struct RmsNorm {
    eps: f64,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "cxr-lm-rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        norm_dims(xl, wl, name)?;
        let (x, w) = (contiguous(xs, xl, name)?, contiguous(ws, wl, name)?);
        Ok((
            CpuStorage::F32(norm_forward(x, w, None, self.eps, false)),
            xl.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _out: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        read!(self.name(), xv = x, wv = w, dyv = dy);
        let (dx, dw, _) = norm_backward(xv, wv, dyv, self.eps, false);
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Exact GELU

/// Exact (erf) GELU, differentiable. candle's calls libm's scalar `erff` per element; erf here is
/// Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7), vectorized and split across threads.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if !crate::cpu_kernel(x) {
        return x.gelu_erf();
    }
    x.contiguous()?
        .apply_op1_arc(std::sync::Arc::new(Box::new(GeluErf)))
}

struct GeluErf;

/// Elements per parallel task of the elementwise ops.
const CHUNK: usize = 1 << 14;

#[inline(always)]
fn erf(z: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152,
        1.061_405_4,
    ];
    let az = z.abs();
    let t = 1.0 / (1.0 + P * az);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let erf_abs = 1.0 - poly * exp_fast(-az * az);
    if z < 0.0 {
        -erf_abs
    } else {
        erf_abs
    }
}

#[inline(always)]
fn gelu_generic(x: &[f32], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// `dx = dy · (Φ(x) + x φ(x))`.
#[inline(always)]
fn gelu_grad_generic(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
        let cdf = 0.5 * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
        let pdf = INV_SQRT_2PI * exp_fast(-0.5 * v * v);
        *o = g * (cdf + v * pdf);
    }
}

crate::dispatch_simd!(gelu_generic, gelu_simd, (x: &[f32], y: &mut [f32]));
crate::dispatch_simd!(gelu_grad_generic, gelu_grad_simd, (x: &[f32], dy: &[f32], dx: &mut [f32]));

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "cxr-lm-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| gelu_simd(x, y));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _out: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        read!(self.name(), x = x, dy = dy);
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
            .for_each(|(dx, (x, dy))| gelu_grad_simd(x, dy, dx));
        Ok(Some(Tensor::from_vec(dx, _out.shape(), _out.device())?))
    }
}

// ---------------------------------------------------------------------------------------------
// Rotary embeddings

/// Rotates the first `2·half` channels of each head of x (b, heads, t, head_dim; any strides
/// with the last dimension contiguous) by the (t, half) cos/sin tables, HF's `rotate_half`
/// layout; the other channels pass. Differentiable in x. Out: contiguous (b, heads, t, head_dim).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !crate::cpu_kernel(x) {
        return rope_composed(x, cos, sin);
    }
    let op = Rope { inverse: false };
    last_contiguous(x)?.apply_op3_arc(
        &cos.contiguous()?,
        &sin.contiguous()?,
        std::sync::Arc::new(Box::new(op)),
    )
}

/// The portable path: `x·cos + rotate_half(x)·sin` on the rotated channels, the rest appended.
fn rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (half, hd) = (cos.dim(1)?, x.dim(3)?);
    let rot = x.narrow(D::Minus1, 0, 2 * half)?;
    let (x1, x2) = (
        rot.narrow(D::Minus1, 0, half)?,
        rot.narrow(D::Minus1, half, half)?,
    );
    let c = Tensor::cat(&[cos, cos], D::Minus1)?.to_dtype(x.dtype())?;
    let s = Tensor::cat(&[sin, sin], D::Minus1)?.to_dtype(x.dtype())?;
    let rotated = (rot.broadcast_mul(&c)?
        + Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?.broadcast_mul(&s)?)?;
    if 2 * half == hd {
        return Ok(rotated);
    }
    Tensor::cat(
        &[&rotated, &x.narrow(D::Minus1, 2 * half, hd - 2 * half)?],
        D::Minus1,
    )
}

struct Rope {
    /// Rotate by -θ (the backward).
    inverse: bool,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "cxr-lm-rope"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (b, h, t, hd) = xl.shape().dims4()?;
        let (ct, half) = cl.shape().dims2()?;
        if ct != t || sl.shape() != cl.shape() || 2 * half > hd || xl.stride()[3] != 1 {
            candle_core::bail!("rope: tables {:?} do not fit {:?}", cl.dims(), xl.dims());
        }
        let (x, cos, sin) = (
            values(xs, xl, name)?,
            contiguous(cs, cl, name)?,
            contiguous(ss, sl, name)?,
        );
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let st = xl.stride();
        let mut y = vec![0f32; b * h * t * hd];
        y.par_chunks_mut(t * hd).enumerate().for_each(|(unit, y)| {
            let (bi, head) = (unit / h, unit % h);
            for (i, row) in y.chunks_mut(hd).enumerate() {
                let at = bi * st[0] + head * st[1] + i * st[2];
                let xr = &x[at..at + hd];
                let (c, s) = (
                    &cos[i * half..(i + 1) * half],
                    &sin[i * half..(i + 1) * half],
                );
                for j in 0..half {
                    let (x1, x2, sj) = (xr[j], xr[j + half], sign * s[j]);
                    row[j] = x1 * c[j] - x2 * sj;
                    row[j + half] = x2 * c[j] + x1 * sj;
                }
                row[2 * half..].copy_from_slice(&xr[2 * half..]);
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((b, h, t, hd))))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _out: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = Rope {
            inverse: !self.inverse,
        };
        let dx = last_contiguous(dy)?.apply_op3_no_bwd(cos, sin, &op)?;
        Ok((Some(dx), None, None))
    }
}

// ---------------------------------------------------------------------------------------------
// The dense layer

/// `x (rows, in) · wᵀ (+ bias)` for a weight w (out, in), differentiable in all. The weight
/// gradient `dyᵀ·x` comes out in w's own layout (candle's matmul of a transposed weight yields it
/// transposed, then copies it), and the bias is added in the same op (a broadcast add is one more
/// node, with its own gradient buffers, per layer).
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    if !crate::cpu_kernel(x) || crate::autocast_dtype().is_some() {
        let y = crate::matmul(x, &w.t()?)?;
        return match bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        };
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match bias {
        Some(b) => x.apply_op3_arc(
            &w,
            &b.contiguous()?,
            std::sync::Arc::new(Box::new(LinearOp)),
        ),
        None => x.apply_op2_arc(&w, std::sync::Arc::new(Box::new(LinearOp))),
    }
}

struct LinearOp;

impl LinearOp {
    fn forward(
        &self,
        (xs, xl): (&CpuStorage, &Layout),
        (ws, wl): (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let name = "cxr-lm-linear";
        let (rows, inp) = xl.shape().dims2()?;
        let (out, w_in) = wl.shape().dims2()?;
        if w_in != inp || bias.is_some_and(|(_, bl)| bl.dims() != [out]) {
            candle_core::bail!(
                "linear: weight {:?} does not fit input {:?}",
                wl.dims(),
                xl.dims()
            );
        }
        let (x, w) = (contiguous(xs, xl, name)?, contiguous(ws, wl, name)?);
        let mut y = vec![0f32; rows * out];
        if let Some((bs, bl)) = bias {
            let b = contiguous(bs, bl, name)?;
            y.chunks_mut(out).for_each(|row| row.copy_from_slice(b));
        }
        let threads = rayon::current_num_threads();
        let (x, wt) = (Mat::rows(x, inp), Mat::transposed(w, inp));
        gemm(
            (rows, out, inp),
            &mut y,
            out,
            bias.is_some(),
            x,
            wt,
            1.0,
            threads,
        );
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }

    /// dx = dy·w, dw = dyᵀ·x and, when asked, dbias = the column sums of dy.
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        bias: bool,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let (rows, inp) = x.dims2()?;
        let out = w.dim(0)?;
        read!("cxr-lm-linear", xv = x, wv = w, dyv = dy);
        let threads = rayon::current_num_threads();
        let mut dx = vec![0f32; rows * inp];
        gemm(
            (rows, inp, out),
            &mut dx,
            inp,
            false,
            Mat::rows(dyv, out),
            Mat::rows(wv, inp),
            1.0,
            threads,
        );
        let mut dw = vec![0f32; out * inp];
        let dyt = Mat::transposed(dyv, out);
        gemm(
            (out, inp, rows),
            &mut dw,
            inp,
            false,
            dyt,
            Mat::rows(xv, inp),
            1.0,
            threads,
        );
        let db = bias.then(|| {
            let mut db = vec![0f32; out];
            for row in dyv.chunks(out) {
                db.iter_mut().zip(row).for_each(|(a, b)| *a += b);
            }
            db
        });
        let dev = x.device();
        Ok((
            Tensor::from_vec(dx, (rows, inp), dev)?,
            Tensor::from_vec(dw, (out, inp), dev)?,
            db.map(|db| Tensor::from_vec(db, out, dev)).transpose()?,
        ))
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "cxr-lm-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward((xs, xl), (ws, wl), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _out: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, dy, false)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "cxr-lm-linear-bias"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward((xs, xl), (ws, wl), Some((bs, bl)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _out: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.backward(x, w, dy, true)?;
        Ok((Some(dx), Some(dw), db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Values and gradients (of `Σ f(inputs) ⊙ r` for a fixed random r) of an op on its CPU
    /// kernel and on its portable path (what CUDA runs).
    fn assert_same(inputs: &[Tensor], op: impl Fn(&[Tensor]) -> Result<Tensor>, tol: f32) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (a, b) = (op(&ts).unwrap(), crate::portable(|| op(&ts)).unwrap());
        assert_eq!(a.dims(), b.dims());
        let d = crate::max_abs_diff(&a, &b).unwrap();
        assert!(d < tol, "values differ by {d}");
        let r = Tensor::randn(0f32, 1.0, a.shape(), &Device::Cpu).unwrap();
        let ga = (a * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (n, v) in ts.iter().enumerate() {
            let (x, y) = (ga.get(v).unwrap(), gb.get(v).unwrap());
            let d = crate::max_abs_diff(x, y).unwrap();
            assert!(d < tol, "gradient {n} differs by {d}");
            assert!(
                x.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0
            );
        }
    }

    fn randn(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn causal_attention_matches_the_masked_softmax_with_grouped_and_strided_heads() {
        let (b, h, kvh, t, d) = (2, 4, 2, 9, 8);
        let qkv = [
            randn(&[b, h, t, d]),
            randn(&[b, kvh, t, d]),
            randn(&[b, kvh, t, d]),
        ];
        assert_same(&qkv, |x| causal_attention(&x[0], &x[1], &x[2]), 1e-4);
        // Heads taken from a fused (b, t, heads, 3·d) projection, as GPT-NeoX does: strided.
        let strided = |x: &[Tensor]| {
            let x = x[0].transpose(1, 2)?;
            causal_attention(
                &x.narrow(D::Minus1, 0, d)?,
                &x.narrow(D::Minus1, d, d)?,
                &x.narrow(D::Minus1, 2 * d, d)?,
            )
        };
        assert_same(&[randn(&[b, t, h, 3 * d])], strided, 1e-4);
        // The portable path's mask: the first position sees only itself.
        let [q, k, v] = &qkv;
        let first = crate::portable(|| causal_attention(q, k, v)).unwrap();
        let v0 = v.narrow(2, 0, 1).unwrap().squeeze(2).unwrap(); // (b, kvh, d)
        let want = v0
            .unsqueeze(2)
            .unwrap()
            .repeat((1, 1, h / kvh, 1))
            .unwrap()
            .reshape((b, h * d))
            .unwrap();
        let got = first.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
        assert!(crate::max_abs_diff(&got, &want).unwrap() < 1e-6);
    }

    #[test]
    fn norms_match_candles_compositions() {
        let (x, w, bias) = (randn(&[3, 5, 64]), randn(&[64]), randn(&[64]));
        assert_same(
            &[x.clone(), w.clone(), bias],
            |t| layer_norm(&t[0], &t[1], &t[2], 1e-5),
            1e-4,
        );
        assert_same(&[x, w], |t| rms_norm(&t[0], &t[1], 1e-5), 1e-4);
    }

    #[test]
    fn norm_weight_gradients_do_not_depend_on_the_thread_count() {
        // dw and db sum over every row; a reduction whose tree follows the threads' split gives
        // other bits with another pool (or another schedule), and training stops being repeatable.
        let (rows, n) = (4096, 64);
        let values = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (x, w, dy) = (
            values(randn(&[rows, n])),
            values(randn(&[n])),
            values(randn(&[rows, n])),
        );
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| norm_backward(&x, &w, &dy, 1e-5, true))
        };
        let one = run(1);
        for threads in [2, 3, 8] {
            assert!(
                run(threads) == one,
                "{threads} threads give other bits than one"
            );
        }
    }

    #[test]
    fn gelu_matches_candles_exact_gelu() {
        let x = (randn(&[100_000]) * 3.0).unwrap();
        assert_same(&[x], |t| gelu_erf(&t[0]), 2e-6);
    }

    #[test]
    fn rope_matches_rotate_half_on_part_of_each_head() {
        let (t, half) = (6, 4);
        let angles = randn(&[t, half]);
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let x = [randn(&[2, 3, t, 2 * half + 4])];
        assert_same(&x, |x| rope(&x[0], &cos, &sin), 1e-5);
        // Channel j and j + half of position i turn by the angle (i, j); the last four pass.
        let y = rope(&x[0], &cos, &sin).unwrap();
        let at = |t: &Tensor, c: usize| -> f32 {
            t.narrow(3, c, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[7]
        };
        let (i, j) = (7 % t, 1);
        let a: Vec<f32> = angles.flatten_all().unwrap().to_vec1().unwrap();
        let (c, s) = (a[i * half + j].cos(), a[i * half + j].sin());
        let want = at(&x[0], j) * c - at(&x[0], j + half) * s;
        assert!((at(&y, j) - want).abs() < 1e-5);
        assert_eq!(at(&y, 2 * half + 1), at(&x[0], 2 * half + 1));
    }

    #[test]
    fn linear_matches_a_matmul_by_the_transposed_weight() {
        assert_same(
            &[randn(&[13, 24]), randn(&[40, 24])],
            |t| linear(&t[0], &t[1], None),
            1e-4,
        );
        assert_same(
            &[randn(&[13, 24]), randn(&[40, 24]), randn(&[40])],
            |t| linear(&t[0], &t[1], Some(&t[2])),
            1e-4,
        );
    }
}
