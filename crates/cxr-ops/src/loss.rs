//! Softmax cross-entropy in one op on the CPU (f32; elsewhere candle's log_softmax and gather): per row of logits (n, vocab) and a target id, the
//! negative log-likelihood; backward writes softmax - one-hot straight into the gradient.
//!
//! Built from candle's ops (log_softmax, gather) the loss of a 512-token sample over a 51k
//! vocabulary made about ten logits-sized (100 MB) temporaries per step, each one mapped and
//! zero-faulted by the kernel; this op makes one (the gradient).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// The values of a contiguous f32 storage.
fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    crate::contiguous_f32(s, l, &format!("cross-entropy: {what}"))
}

/// Logits as rows: values, rows, vocabulary.
fn rows<'a>(s: &'a CpuStorage, l: &Layout) -> Result<(&'a [f32], usize, usize)> {
    let (n, vocab) = l.shape().dims2()?;
    Ok((f32s(s, l, "logits")?, n, vocab))
}

fn targets<'a>(s: &'a CpuStorage, l: &Layout, n: usize, vocab: usize) -> Result<&'a [u32]> {
    let CpuStorage::U32(t) = s else {
        candle_core::bail!("cross-entropy: targets must be u32");
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("cross-entropy: targets must be contiguous");
    };
    let t = &t[a..b];
    if t.len() != n {
        candle_core::bail!("cross-entropy: {} targets for {n} rows", t.len());
    }
    if let Some(&bad) = t.iter().find(|&&x| x as usize >= vocab) {
        candle_core::bail!("cross-entropy: target {bad} outside the vocabulary of {vocab}");
    }
    Ok(t)
}

/// (max, log of the sum of exp(x - max)) of one row.
fn log_sum_exp(row: &[f32]) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
    (max, sum.ln())
}

struct CrossEntropy;

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cxr-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        ls: &CpuStorage,
        ll: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (logits, n, vocab) = rows(ls, ll)?;
        let t = targets(ts, tl, n, vocab)?;
        let nll: Vec<f32> = logits
            .par_chunks(vocab)
            .zip(t.par_iter())
            .map(|(row, &target)| {
                let (max, lse) = log_sum_exp(row);
                max + lse - row[target as usize]
            })
            .collect();
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _nll: &Tensor,
        grad_nll: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = logits.contiguous()?.apply_op3_no_bwd(
            &targets.contiguous()?,
            &grad_nll.contiguous()?,
            &CrossEntropyGrad,
        )?;
        Ok((Some(g), None))
    }
}

/// d nll / d logits = grad * (softmax - one-hot(target)).
struct CrossEntropyGrad;

impl CustomOp3 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "cxr-cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        ls: &CpuStorage,
        ll: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (logits, n, vocab) = rows(ls, ll)?;
        let t = targets(ts, tl, n, vocab)?;
        let g = f32s(gs, gl, "gradient")?;
        let mut out = vec![0f32; n * vocab];
        out.par_chunks_mut(vocab)
            .zip(logits.par_chunks(vocab))
            .zip(t.par_iter().zip(g.par_iter()))
            .for_each(|((o, row), (&target, &scale))| {
                let (max, lse) = log_sum_exp(row);
                let shift = max + lse;
                for (o, &x) in o.iter_mut().zip(row) {
                    *o = scale * (x - shift).exp();
                }
                o[target as usize] -= scale;
            });
        Ok((CpuStorage::F32(out), ll.shape().clone()))
    }
}

/// Per-row negative log-likelihood of `targets` (n, u32) under `logits` (n, vocab), differentiable
/// with respect to the logits.
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if !crate::cpu_kernel(logits) {
        return cross_entropy_composed(logits, targets);
    }
    logits
        .contiguous()?
        .apply_op2(&targets.contiguous()?, CrossEntropy)
}

/// The portable path, in f32 whatever the logits' dtype.
fn cross_entropy_composed(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, vocab) = logits.dims2()?;
    if targets.dtype() != DType::U32 {
        candle_core::bail!("cross-entropy: targets must be u32");
    }
    if targets.elem_count() != n {
        candle_core::bail!(
            "cross-entropy: {} targets for {n} rows",
            targets.elem_count()
        );
    }
    let targets = &targets.flatten_all()?;
    if n > 0 {
        let bad = targets.max(0)?.to_scalar::<u32>()?;
        if bad as usize >= vocab {
            candle_core::bail!("cross-entropy: target {bad} outside the vocabulary of {vocab}");
        }
    }
    let log_probs = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    log_probs
        .gather(&targets.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_log_softmax_and_its_gradient() {
        let dev = Device::Cpu;
        let values: Vec<f32> = (0..3 * 7)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.7)
            .collect();
        let logits = Var::from_vec(values, (3, 7), &dev).unwrap();
        let targets = Tensor::new(&[2u32, 0, 6], &dev).unwrap();
        let weights = Tensor::new(&[1.0f32, 2.0, 0.5], &dev).unwrap();

        let ours = cross_entropy_rows(logits.as_tensor(), &targets).unwrap();
        let reference =
            crate::portable(|| cross_entropy_rows(logits.as_tensor(), &targets)).unwrap();
        let diff = crate::max_abs_diff(&ours, &reference).unwrap();
        assert!(diff < 1e-5, "loss {diff}");

        let g_ours = (ours * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g_ref = (reference * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let a = g_ours.get(logits.as_tensor()).unwrap();
        let b = g_ref.get(logits.as_tensor()).unwrap();
        let diff = crate::max_abs_diff(a, b).unwrap();
        assert!(diff < 1e-5, "gradient {diff}");
    }

    #[test]
    fn refuses_targets_outside_the_vocabulary() {
        let dev = Device::Cpu;
        let logits = Tensor::zeros((2, 4), candle_core::DType::F32, &dev).unwrap();
        let targets = Tensor::new(&[1u32, 4], &dev).unwrap();
        let err = cross_entropy_rows(&logits, &targets)
            .unwrap_err()
            .to_string();
        assert!(err.contains("target 4"), "{err}");
        let err = crate::portable(|| cross_entropy_rows(&logits, &targets))
            .unwrap_err()
            .to_string();
        assert!(err.contains("target 4"), "{err}");
    }
}
