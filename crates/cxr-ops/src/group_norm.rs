//! GroupNorm, optionally followed by swish (`x * sigmoid(x)`), as one CPU op with a hand-written
//! backward. candle-nn's GroupNorm is a chain of about ten tensor ops (each a pass over memory,
//! each kept for backprop), which dominated small convolutional models here; this op makes one
//! pass for the statistics and one for the output, and its backward two more.
//!
//! Per (image, group) with `x̂ = (x - mean) / sqrt(var + eps)` and `y = gamma x̂ + beta`:
//! `dgamma = Σ dy x̂`, `dbeta = Σ dy`,
//! `dx = rstd (gamma dy - mean(gamma dy) - x̂ mean(gamma dy x̂))`,
//! where `dy` already includes swish's derivative `s (1 + y (1 - s))`, `s = sigmoid(y)`.

use candle_core::{CpuStorage, CustomOp3, Layout, Module, Result, Shape, Tensor};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy)]
struct GroupNormOp {
    groups: usize,
    eps: f64,
    swish: bool,
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    crate::contiguous_f32(s, l, "group_norm")
}

/// (batch, channels, elements per channel) of a (B, C, ...) input.
fn dims(l: &Layout, groups: usize) -> Result<(usize, usize, usize)> {
    let d = l.dims();
    if d.len() < 2 || !d[1].is_multiple_of(groups) {
        candle_core::bail!("group_norm: {d:?} does not split into {groups} channel groups");
    }
    Ok((d[0], d[1], d[2..].iter().product()))
}

/// Mean and 1/std of one group's values (sums in f64).
fn stats(v: &[f32], eps: f64) -> (f32, f32) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

/// `exp(x)` to about 1e-7 relative error, written so that loops over it vectorise (libm's
/// `expf` is a call per element): `x = n ln 2 + r` with `n` rounded by the 1.5 * 2^23 trick
/// (no SSE4.1 needed) and `ln 2` in two parts (Cody-Waite), `e^r` by a degree-6 polynomial on
/// |r| <= 0.35, and `2^n` set in the exponent bits.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let z = x * std::f32::consts::LOG2_E + ROUND;
    let n = z - ROUND;
    // The rounded integer sits in z's low mantissa bits: no float-to-int conversion needed.
    let ni = z.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    f32::from_bits(((ni + 127) as u32) << 23) * p
}

#[inline(always)]
fn sigmoid(y: f32) -> f32 {
    1.0 / (1.0 + exp_fast(-y))
}

/// `out = a x + b`, then swish when asked.
#[inline(always)]
fn affine_generic(out: &mut [f32], x: &[f32], (a, b): (f32, f32), swish: bool) {
    if swish {
        for (o, &xv) in out.iter_mut().zip(x) {
            let y = a * xv + b;
            *o = y * sigmoid(y);
        }
    } else {
        for (o, &xv) in out.iter_mut().zip(x) {
            *o = a * xv + b;
        }
    }
}

dispatch_simd!(
    affine_generic,
    affine,
    (out: &mut [f32], x: &[f32], ab: (f32, f32), swish: bool)
);

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "cxr-group-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, gamma, beta) = (slice(xs, xl)?, slice(gs, gl)?, slice(bs, bl)?);
        let (_, c, hw) = dims(xl, self.groups)?;
        let per_group = c / self.groups * hw;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(per_group)
            .zip(x.par_chunks(per_group))
            .enumerate()
            .for_each(|(i, (out, v))| {
                let (mean, rstd) = stats(v, self.eps);
                let c0 = (i % self.groups) * (c / self.groups);
                for (k, (o, ch)) in out.chunks_mut(hw).zip(v.chunks(hw)).enumerate() {
                    let (a, b) = (
                        gamma[c0 + k] * rstd,
                        beta[c0 + k] - gamma[c0 + k] * rstd * mean,
                    );
                    affine(o, ch, (a, b), self.swish);
                }
            });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _out: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(
            &dout.contiguous()?,
            &gamma.contiguous()?,
            &GroupNormGrad {
                op: *self,
                beta: beta.detach(),
            },
        )?;
        let (n, c) = (x.elem_count(), gamma.elem_count());
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dgamma = packed.narrow(0, n, c)?.reshape(gamma.shape())?;
        let dbeta = packed.narrow(0, n + c, c)?.reshape(beta.shape())?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// The backward as one op: `[dx | dgamma | dbeta]`, flat.
struct GroupNormGrad {
    op: GroupNormOp,
    beta: Tensor,
}

impl CustomOp3 for GroupNormGrad {
    fn name(&self) -> &'static str {
        "cxr-group-norm-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, dout, gamma) = (slice(xs, xl)?, slice(ds, dl)?, slice(gs, gl)?);
        let beta_t = self.beta.flatten_all()?.to_vec1::<f32>()?;
        let (_, c, hw) = dims(xl, self.op.groups)?;
        let cg = c / self.op.groups;
        let per_group = cg * hw;
        // Per (image, group): dx for the group and the group channels' dgamma / dbeta parts.
        let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = x
            .par_chunks(per_group)
            .zip(dout.par_chunks(per_group))
            .enumerate()
            .map(|(i, (v, d))| {
                let (mean, rstd) = stats(v, self.op.eps);
                let c0 = (i % self.op.groups) * cg;
                let (mut dg, mut db) = (vec![0f32; cg], vec![0f32; cg]);
                // g = gamma * dy (dy through swish when present), summed with and without x̂.
                let mut gdy = vec![0f32; per_group];
                let (mut sum_g, mut sum_gx) = (0f64, 0f64);
                for k in 0..cg {
                    let (gm, bt) = (gamma[c0 + k], beta_t[c0 + k]);
                    for j in 0..hw {
                        let idx = k * hw + j;
                        let xh = (v[idx] - mean) * rstd;
                        let mut dy = d[idx];
                        if self.op.swish {
                            let y = gm * xh + bt;
                            let s = sigmoid(y);
                            dy *= s * (1.0 + y * (1.0 - s));
                        }
                        dg[k] += dy * xh;
                        db[k] += dy;
                        let g = gm * dy;
                        gdy[idx] = g;
                        sum_g += g as f64;
                        sum_gx += (g * xh) as f64;
                    }
                }
                let n = per_group as f64;
                let (mg, mgx) = ((sum_g / n) as f32, (sum_gx / n) as f32);
                let dx: Vec<f32> = gdy
                    .iter()
                    .zip(v)
                    .map(|(&g, &xv)| rstd * (g - mg - (xv - mean) * rstd * mgx))
                    .collect();
                (dx, dg, db)
            })
            .collect();
        let mut out = Vec::with_capacity(x.len() + 2 * c);
        let (mut dgamma, mut dbeta) = (vec![0f32; c], vec![0f32; c]);
        for (i, (dx, dg, db)) in parts.into_iter().enumerate() {
            out.extend(dx);
            let c0 = (i % self.op.groups) * cg;
            for k in 0..cg {
                dgamma[c0 + k] += dg[k];
                dbeta[c0 + k] += db[k];
            }
        }
        out.extend(dgamma);
        out.extend(dbeta);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// GroupNorm with PyTorch's tensor names (`weight`, `bias`; initialised to 1 and 0).
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn new(
        groups: usize,
        channels: usize,
        eps: f64,
        vb: candle_nn::VarBuilder,
    ) -> Result<Self> {
        if !channels.is_multiple_of(groups) {
            candle_core::bail!("GroupNorm: {groups} groups do not divide {channels} channels");
        }
        Ok(Self {
            weight: vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.0))?,
            groups,
            eps,
        })
    }

    fn apply(&self, x: &Tensor, swish: bool) -> Result<Tensor> {
        if !crate::cpu_kernel(x) {
            let y = self.composed(x)?;
            return if swish { y.silu() } else { Ok(y) };
        }
        x.contiguous()?.apply_op3(
            &self.weight,
            &self.bias,
            GroupNormOp {
                groups: self.groups,
                eps: self.eps,
                swish,
            },
        )
    }

    /// The portable path: candle-nn's GroupNorm (statistics in f32 for 16-bit inputs).
    fn composed(&self, x: &Tensor) -> Result<Tensor> {
        let channels = self.weight.dim(0)?;
        candle_nn::GroupNorm::new(
            self.weight.clone(),
            self.bias.clone(),
            channels,
            self.groups,
            self.eps,
        )?
        .forward(x)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, false)
    }

    /// `swish(group_norm(x))` in one pass.
    pub fn forward_swish(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fast_exp_is_accurate_over_the_range_used() {
        for k in -8700..=8800 {
            let x = k as f32 / 100.0;
            let (got, want) = (exp_fast(x), x.exp());
            assert!(
                ((got - want) / want).abs() < 5e-6,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert!(exp_fast(-1000.0) < 1e-37 && exp_fast(1000.0) > 1e38);
    }

    /// Output and all three gradients equal the portable path's (candle-nn's GroupNorm, + swish).
    #[test]
    fn matches_composed_ops_forward_and_backward() {
        let dev = Device::Cpu;
        for swish in [false, true] {
            let x = Var::from_tensor(
                &(Tensor::randn(0f32, 2., (2, 8, 5, 3), &dev).unwrap() + 0.5).unwrap(),
            )
            .unwrap();
            let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 8, &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 8, &dev).unwrap()).unwrap();
            let norm = GroupNorm {
                weight: w.as_tensor().clone(),
                bias: b.as_tensor().clone(),
                groups: 4,
                eps: 1e-6,
            };
            let ours = norm.apply(&x, swish).unwrap();
            let reference = crate::portable(|| norm.apply(&x, swish)).unwrap();
            let diff = |a: &Tensor, c: &Tensor| crate::max_abs_diff(a, c).unwrap();
            assert!(diff(&ours, &reference) < 1e-5, "forward, swish {swish}");
            let r = Tensor::randn(0f32, 1., ours.dims(), &dev).unwrap();
            let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (reference * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (name, v) in [("x", &x), ("weight", &w), ("bias", &b)] {
                let e = diff(g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(e < 1e-4, "d{name} differs by {e}, swish {swish}");
            }
        }
    }
}
