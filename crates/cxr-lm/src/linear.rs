//! The dense layer `y = x·Wᵀ + b`, over one of three weight layouts:
//! - rows (out, in), HF's layout: training (the weight is a `Var`) and tables shared with an
//!   embedding lookup;
//! - columns (in, out), for float inference: a prefill is then one plain GEMM (the gemm crate runs
//!   at ~200 GFLOP/s here with this layout against 90-160 with x·Wᵀ) and a decode step a streaming
//!   GEMV (`cxr_ops::gemv`), which reads each weight once, in order;
//! - quantized (GGUF blocks), through candle's quantized matmul.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Module, Result, Tensor, D};

#[derive(Clone, Debug)]
enum Weight {
    Rows(Tensor),
    Columns(Tensor),
    Quantized(Arc<QTensor>),
}

#[derive(Clone, Debug)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    lora: Option<Lora>,
}

/// A low-rank update beside a frozen weight (LoRA, Hu et al. 2021): `y += scale · x·Aᵀ·Bᵀ`, with
/// A (rank, in) and B (out, rank).
#[derive(Clone, Debug)]
pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

/// Up to this many rows a float layer uses the GEMV kernel (decode steps of small batches).
const GEMV_MAX_ROWS: usize = 8;

impl Linear {
    /// A layer over an (out, in) weight used as is (training, tied tables).
    pub fn from_weight(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear {
            weight: Weight::Rows(weight),
            bias,
            lora: None,
        }
    }

    /// A float inference layer: the (out, in) weight is stored transposed, once.
    pub fn for_inference(weight: &Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Linear {
            weight: Weight::Columns(weight.t()?.contiguous()?),
            bias,
            lora: None,
        })
    }

    pub fn quantized(q: Arc<QTensor>, bias: Option<Tensor>) -> Self {
        Linear {
            weight: Weight::Quantized(q),
            bias,
            lora: None,
        }
    }

    /// The weight as a float (out, in) tensor (dequantized if needed).
    pub fn weight(&self) -> Result<Tensor> {
        match &self.weight {
            Weight::Rows(w) => Ok(w.clone()),
            Weight::Columns(wt) => wt.t(),
            Weight::Quantized(q) => q.dequantize(&q.device()),
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The layer with a low-rank update added to its output.
    pub fn with_lora(mut self, lora: Lora) -> Self {
        self.lora = Some(lora);
        self
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self.weight, Weight::Quantized(_))
    }

    /// The layer restricted to the outputs in `range` (e.g. the image rows of an LM head).
    pub fn outputs(&self, range: std::ops::Range<usize>) -> Result<Linear> {
        let bias = match &self.bias {
            Some(b) => Some(b.narrow(0, range.start, range.len())?),
            None => None,
        };
        let weight = match &self.weight {
            Weight::Columns(wt) => {
                Weight::Columns(wt.narrow(1, range.start, range.len())?.contiguous()?)
            }
            _ => Weight::Columns(
                self.weight()?
                    .narrow(0, range.start, range.len())?
                    .t()?
                    .contiguous()?,
            ),
        };
        Ok(Linear {
            weight,
            bias,
            lora: None,
        })
    }

    /// Rows of the weight (an embedding lookup): ids of any shape -> (..., in).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        match &self.weight {
            Weight::Rows(w) => QMatMul::Tensor(w.clone()).embedding(ids),
            Weight::Quantized(q) => QMatMul::QTensor(q.clone()).embedding(ids),
            Weight::Columns(wt) => {
                let mut dims = ids.dims().to_vec();
                dims.push(wt.dim(0)?);
                wt.index_select(&ids.flatten_all()?, 1)?
                    .t()?
                    .contiguous()?
                    .reshape(dims)
            }
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.forward_frozen(x)?;
        let Some(l) = &self.lora else {
            return Ok(y);
        };
        let in_dim = x.dim(D::Minus1)?;
        let x2 = x.reshape((x.elem_count() / in_dim.max(1), in_dim))?;
        let delta = cxr_ops::matmul(&cxr_ops::matmul(&x2, &l.a.t()?)?, &l.b.t()?)?;
        let delta = (delta * l.scale)?;
        let delta = delta.reshape(y.shape())?;
        y + delta
    }

    fn forward_frozen(&self, x: &Tensor) -> Result<Tensor> {
        let in_dim = x.dim(D::Minus1)?;
        let rows = x.elem_count() / in_dim.max(1);
        let y = match &self.weight {
            // Many rows (a prefill): candle's quantized kernels are slow there (11.5 s for a
            // 300-token prefill of the 410m shape in Q4_0), so the weight is dequantized for the
            // one GEMM, in the layout the gemm crate is fast with (W·xᵀ, then one transpose).
            Weight::Quantized(q) if rows > GEMV_MAX_ROWS => {
                let w = q.dequantize(&q.device())?;
                let out_dim = w.dim(0)?;
                let mut dims = x.dims().to_vec();
                if let Some(last) = dims.last_mut() {
                    *last = out_dim;
                }
                let xt = x.reshape((rows, in_dim))?.t()?.contiguous()?;
                w.matmul(&xt)?.t()?.contiguous()?.reshape(dims)?
            }
            Weight::Quantized(q) => QMatMul::QTensor(q.clone()).forward(&x.contiguous()?)?,
            Weight::Rows(w)
                if (x.track_op() || w.track_op() || cxr_ops::autocast_dtype().is_some())
                    && x.dtype() == DType::F32 =>
            {
                let mut dims = x.dims().to_vec();
                if let Some(last) = dims.last_mut() {
                    *last = w.dim(0)?;
                }
                // The bias is added inside the op.
                return cxr_ops::transformer::linear(
                    &x.reshape((rows, in_dim))?,
                    w,
                    self.bias.as_ref(),
                )?
                .reshape(dims);
            }
            Weight::Rows(w) => QMatMul::Tensor(w.clone()).forward(x)?,
            Weight::Columns(wt) => {
                let out_dim = wt.dim(1)?;
                let mut dims = x.dims().to_vec();
                if let Some(last) = dims.last_mut() {
                    *last = out_dim;
                }
                let x2 = x.reshape((rows, in_dim))?;
                // Under autocast (LoRA's frozen base in mixed precision), a half product too.
                let y = if rows <= GEMV_MAX_ROWS
                    && !x.track_op()
                    && cxr_ops::autocast_dtype().is_none()
                {
                    cxr_ops::gemv::gemv(&x2, wt)?
                } else {
                    cxr_ops::matmul(&x2, wt)?
                };
                y.reshape(dims)?
            }
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn all_layouts_compute_the_same_layer() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (1000, 67), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 1000, &dev).unwrap();
        let rows = Linear::from_weight(w.clone(), Some(b.clone()));
        let cols = Linear::for_inference(&w, Some(b.clone())).unwrap();
        for m in [1, 3, 8, 9, 40] {
            let x = Tensor::randn(0f32, 1.0, (1, m, 67), &dev).unwrap();
            let want = rows.forward(&x).unwrap();
            let got = cols.forward(&x).unwrap();
            let d = cxr_ops::max_abs_diff(&want, &got).unwrap();
            assert!(d < 1e-4, "m={m}: {d}");
        }
        let sub = cols.outputs(10..20).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 67), &dev).unwrap();
        let d = cxr_ops::max_abs_diff(
            &sub.forward(&x).unwrap(),
            &rows.forward(&x).unwrap().narrow(1, 10, 10).unwrap(),
        )
        .unwrap();
        assert!(d < 1e-4);
        let ids = Tensor::new(&[[3u32, 999]], &dev).unwrap();
        let e = (cols.embed(&ids).unwrap() - rows.embed(&ids).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap();
        assert_eq!(e.to_scalar::<f32>().unwrap(), 0.0);
    }
}
