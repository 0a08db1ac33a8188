//! The AdamW update (`torch.optim.AdamW`: decoupled weight decay, bias correction) of one
//! variable. On the CPU the variable and its moments are updated in place, in one pass over
//! memory: no temporary tensors (the moments of a 50k-row embedding would otherwise cost several
//! 100 MB of fresh allocations per step). Elsewhere the moments are tensors on the variable's
//! device and the update is candle's elementwise ops.

use candle_core::{CpuStorage, DType, Layout, Result, Tensor, Var};
use rayon::prelude::*;

/// The constants of one step.
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub lr: f32,
    /// Elements from `.0` on use rate `.1` and decay `.2` instead (fresh vocabulary rows).
    pub tail: Option<(usize, f32, f32)>,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// The weight's factor, `1 - lr · weight_decay`.
    pub decay: f32,
    /// Bias corrections, `1 - beta^t`.
    pub bc1: f32,
    pub bc2: f32,
    /// Gradients are multiplied by this first (clipping).
    pub grad_scale: f32,
}

/// First and second moments of one variable, element for element (contiguous order).
pub enum Moments {
    /// For the CPU kernel.
    Host { m: Vec<f32>, v: Vec<f32> },
    /// f32 tensors on the variable's device, for the portable path.
    Device { m: Tensor, v: Tensor },
}

impl Moments {
    /// Zero moments for `var`, of the kind its device updates with.
    pub fn zeros(var: &Var) -> Result<Self> {
        if crate::cpu_kernel(var) {
            let n = var.elem_count();
            return Ok(Moments::Host {
                m: vec![0.0; n],
                v: vec![0.0; n],
            });
        }
        let zeros = || Tensor::zeros(var.shape(), DType::F32, var.device());
        Ok(Moments::Device {
            m: zeros()?,
            v: zeros()?,
        })
    }

    /// Moments for `var` from saved tensors (any dtype and device, `var`'s element count).
    pub fn load(var: &Var, m: &Tensor, v: &Tensor) -> Result<Self> {
        for t in [m, v] {
            if t.elem_count() != var.elem_count() {
                candle_core::bail!(
                    "AdamW: {} moments for {} weights",
                    t.elem_count(),
                    var.elem_count()
                );
            }
        }
        let host = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
        let device = |t: &Tensor| {
            t.to_dtype(DType::F32)?
                .to_device(var.device())?
                .reshape(var.shape())
        };
        Ok(if crate::cpu_kernel(var) {
            Moments::Host {
                m: host(m)?,
                v: host(v)?,
            }
        } else {
            Moments::Device {
                m: device(m)?,
                v: device(v)?,
            }
        })
    }

    /// The moments as tensors of `var`'s shape on its device.
    pub fn tensors(&self, var: &Var) -> Result<(Tensor, Tensor)> {
        match self {
            Moments::Host { m, v } => Ok((
                Tensor::from_slice(m, var.shape(), var.device())?,
                Tensor::from_slice(v, var.shape(), var.device())?,
            )),
            Moments::Device { m, v } => Ok((m.clone(), v.clone())),
        }
    }
}

/// One AdamW step of `var` from its gradient.
pub fn update(var: &Var, grad: &Tensor, moments: &mut Moments, step: &AdamWStep) -> Result<()> {
    let g = grad.detach().to_dtype(DType::F32)?.contiguous()?;
    match moments {
        Moments::Host { m, v } => {
            let op = Update {
                moments: std::sync::Mutex::new((m, v)),
                step,
            };
            var.as_tensor().inplace_op2(&g, &op)
        }
        Moments::Device { m, v } => {
            let g = g.reshape(var.shape())?;
            let (new_m, new_v, new_p) = composed(var.as_tensor(), &g, m, v, step)?;
            (*m, *v) = (new_m, new_v);
            var.set(&new_p)
        }
    }
}

/// The portable step: new (m, v, p) from candle's elementwise ops, the tail rows at their rate.
fn composed(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    s: &AdamWStep,
) -> Result<(Tensor, Tensor, Tensor)> {
    let g = (g * s.grad_scale as f64)?;
    let m = ((m * s.beta1 as f64)? + (&g * (1.0 - s.beta1) as f64)?)?;
    let v = ((v * s.beta2 as f64)? + (g.sqr()? * (1.0 - s.beta2) as f64)?)?;
    let update = ((&m / s.bc1 as f64)? / ((&v / s.bc2 as f64)?.sqrt()? + s.eps as f64)?)?;
    let p32 = p.detach().to_dtype(DType::F32)?;
    let step = |p: &Tensor, u: &Tensor, lr: f32, decay: f32| (p * decay as f64)? - (u * lr as f64)?;
    let n = p.elem_count();
    let new_p = match s.tail {
        Some((start, lr, decay)) if start < n => {
            let (flat_p, flat_u) = (p32.flatten_all()?, update.flatten_all()?);
            let head = step(
                &flat_p.narrow(0, 0, start)?,
                &flat_u.narrow(0, 0, start)?,
                s.lr,
                s.decay,
            )?;
            let tail = step(
                &flat_p.narrow(0, start, n - start)?,
                &flat_u.narrow(0, start, n - start)?,
                lr,
                decay,
            )?;
            Tensor::cat(&[head, tail], 0)?.reshape(p.shape())?
        }
        _ => step(&p32, &update, s.lr, s.decay)?,
    };
    Ok((m, v, new_p.to_dtype(p.dtype())?))
}

/// The CPU kernel: the variable and its moments updated in place.
struct Update<'a> {
    moments: std::sync::Mutex<(&'a mut [f32], &'a mut [f32])>,
    step: &'a AdamWStep,
}

impl Update<'_> {
    fn apply(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], lr: f32, decay: f32) {
        let s = self.step;
        for i in 0..p.len() {
            let gi = g[i] * s.grad_scale;
            m[i] = s.beta1 * m[i] + (1.0 - s.beta1) * gi;
            v[i] = s.beta2 * v[i] + (1.0 - s.beta2) * gi * gi;
            let update = (m[i] / s.bc1) / ((v[i] / s.bc2).sqrt() + s.eps);
            p[i] = p[i] * decay - lr * update;
        }
    }
}

impl candle_core::InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "cxr-adamw"
    }

    fn cpu_fwd(
        &self,
        ps: &mut CpuStorage,
        pl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (ps, gs) else {
            candle_core::bail!("AdamW: f32 variables and gradients only");
        };
        let (Some((p0, p1)), Some((g0, g1))) = (pl.contiguous_offsets(), gl.contiguous_offsets())
        else {
            candle_core::bail!("AdamW: contiguous variables and gradients only");
        };
        let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
        let mut guard = self.moments.lock().expect("moments lock");
        let (m, v) = &mut *guard;
        if p.len() != g.len() || m.len() != p.len() || v.len() != p.len() {
            candle_core::bail!(
                "AdamW: {} values, {} gradients, {} moments",
                p.len(),
                g.len(),
                m.len()
            );
        }
        const CHUNK: usize = 1 << 14;
        let tail_start = self.step.tail.map_or(usize::MAX, |t| t.0);
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .enumerate()
            .for_each(|(k, ((p, g), (m, v)))| {
                // The chunk's elements before the tail, then those in it: two plain loops.
                let split = tail_start.saturating_sub(k * CHUNK).min(p.len());
                let (p0, p1) = p.split_at_mut(split);
                let (m0, m1) = m.split_at_mut(split);
                let (v0, v1) = v.split_at_mut(split);
                self.apply(p0, &g[..split], m0, v0, self.step.lr, self.step.decay);
                if let Some((_, lr, decay)) = self.step.tail {
                    self.apply(p1, &g[split..], m1, v1, lr, decay);
                }
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Five steps with clipping and a faster tail, from the same start: the portable path (what
    /// CUDA runs) ends with the kernel's weights and moments.
    #[test]
    fn the_portable_step_is_the_kernels() {
        let start = Tensor::randn(0f32, 1.0, (40_000, 3), &Device::Cpu).unwrap();
        let (a, b) = (
            Var::from_tensor(&start).unwrap(),
            Var::from_tensor(&start).unwrap(),
        );
        let mut ma = Moments::zeros(&a).unwrap();
        let mut mb = crate::portable(|| Moments::zeros(&b)).unwrap();
        assert!(matches!(ma, Moments::Host { .. }) && matches!(mb, Moments::Device { .. }));
        for t in 1..=5 {
            let g = Tensor::randn(0f32, 1.0, (40_000, 3), &Device::Cpu).unwrap();
            let s = AdamWStep {
                lr: 1e-2,
                tail: Some((35_000 * 3, 1e-1, 1.0 - 1e-3)),
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                decay: 1.0 - 1e-4,
                bc1: 1.0 - 0.9f32.powi(t),
                bc2: 1.0 - 0.999f32.powi(t),
                grad_scale: 0.5,
            };
            update(&a, &g, &mut ma, &s).unwrap();
            update(&b, &g, &mut mb, &s).unwrap();
        }
        let moved = crate::max_abs_diff(a.as_tensor(), &start).unwrap();
        assert!(moved > 0.1, "the tail moved by {moved}");
        let d = crate::max_abs_diff(a.as_tensor(), b.as_tensor()).unwrap();
        assert!(d < 1e-6, "weights differ by {d}");
        let ((m1, v1), (m2, v2)) = (ma.tensors(&a).unwrap(), mb.tensors(&b).unwrap());
        assert!(crate::max_abs_diff(&m1, &m2).unwrap() < 1e-6);
        assert!(crate::max_abs_diff(&v1, &v2).unwrap() < 1e-6);
        // Saved moments load into either kind.
        let back = Moments::load(&b, &m1, &v1).unwrap();
        assert!(matches!(back, Moments::Host { .. }));
        let err = Moments::load(&b, &m1.narrow(0, 0, 5).unwrap(), &v1)
            .err()
            .unwrap();
        assert!(err.to_string().contains("moments for"), "{err}");
    }
}
