//! What GPT-NeoX and LLaMA share: rotary position embeddings (HF's `rotate_half` layout), causal
//! self-attention with grouped-query heads and a key/value cache, left-padded batches, and the two
//! norms. Every op has a fused inference kernel and a differentiable composition; the fused ones
//! (candle-nn's `layer_norm`, `rms_norm`, `softmax_last_dim`, `rope`) pass no gradient back,
//! silently, so they are used only when nothing in the op is being tracked.

use candle_core::{DType, Device, Result, Tensor, D};

use crate::config::RopeScaling;

/// cos/sin tables for rotary embeddings on the first `dims` of each head.
#[derive(Clone, Debug)]
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
    dims: usize,
}

impl Rotary {
    pub fn new(
        dims: usize,
        base: f64,
        scaling: Option<&RopeScaling>,
        max_positions: usize,
        device: &Device,
    ) -> Result<Self> {
        let half = dims / 2;
        let mut inv_freq: Vec<f64> = (0..half)
            .map(|i| 1.0 / base.powf(2.0 * i as f64 / dims as f64))
            .collect();
        if let Some(s) = scaling {
            s.apply(&mut inv_freq);
        }
        let inv_freq: Vec<f32> = inv_freq.into_iter().map(|f| f as f32).collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let t = Tensor::arange(0u32, max_positions as u32, device)?.to_dtype(DType::F32)?;
        let freqs = t.reshape((max_positions, 1))?.broadcast_mul(&inv_freq)?;
        Ok(Rotary {
            cos: freqs.cos()?,
            sin: freqs.sin()?,
            dims,
        })
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Rotates the first `dims` channels of `x` (b, heads, t, head_dim) at `positions` (b, t).
    pub fn apply(&self, x: &Tensor, positions: &Positions) -> Result<Tensor> {
        if self.dims == 0 {
            return Ok(x.clone());
        }
        let (b, _, t, head_dim) = x.dims4()?;
        let (cos, sin) = match positions {
            Positions::Shared(start) => (
                self.cos.narrow(0, *start, t)?,
                self.sin.narrow(0, *start, t)?,
            ),
            Positions::PerRow(p) => {
                let flat = p.flatten_all()?;
                let half = self.dims / 2;
                (
                    self.cos.index_select(&flat, 0)?.reshape((b, t, half))?,
                    self.sin.index_select(&flat, 0)?.reshape((b, t, half))?,
                )
            }
        };
        // Positions shared by the rows: one pass over the strided heads, partial rotary included
        // (ours, with its backward; a 70m-shape prefill 105 -> 92 ms against narrow + copy +
        // candle's rope + cat). Per-row positions (padded batches) take the compositions below.
        if cos.rank() == 2 {
            return cxr_ops::transformer::rope(x, &cos, &sin);
        }
        let (rot, pass) = if self.dims == head_dim {
            (x.clone(), None)
        } else {
            (
                x.narrow(D::Minus1, 0, self.dims)?,
                Some(x.narrow(D::Minus1, self.dims, head_dim - self.dims)?),
            )
        };
        let rotated = if x.track_op() {
            rope_differentiable(&rot, &cos, &sin)?
        } else {
            candle_nn::rotary_emb::rope(&rot.contiguous()?, &cos, &sin)?
        };
        match pass {
            Some(pass) => Tensor::cat(&[&rotated, &pass], D::Minus1),
            None => Ok(rotated),
        }
    }
}

fn rope_differentiable(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    // cos/sin: (t, half) or (b, t, half) -> broadcastable to (b, heads, t, dims).
    let (cos, sin) = match cos.rank() {
        2 => (
            cos.unsqueeze(0)?.unsqueeze(0)?,
            sin.unsqueeze(0)?.unsqueeze(0)?,
        ),
        _ => (cos.unsqueeze(1)?, sin.unsqueeze(1)?),
    };
    let cos = Tensor::cat(&[&cos, &cos], D::Minus1)?;
    let sin = Tensor::cat(&[&sin, &sin], D::Minus1)?;
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated_half = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)? + rotated_half.broadcast_mul(&sin)?
}

/// Where the tokens of one forward pass sit: the same positions for every row, or per row
/// (left-padded batches).
#[derive(Clone, Debug)]
pub enum Positions {
    Shared(usize),
    PerRow(Tensor),
}

/// The layout of one forward pass: `offset` tokens already cached, `len` new ones, and per row the
/// number of left-padding tokens at the start of the sequence.
#[derive(Clone, Debug)]
pub struct Span {
    pub offset: usize,
    pub len: usize,
    pub pad: Vec<usize>,
}

impl Span {
    /// A whole unpadded sequence, as in training.
    pub fn full(batch: usize, len: usize) -> Self {
        Span {
            offset: 0,
            len,
            pad: vec![0; batch],
        }
    }

    fn padded(&self) -> bool {
        self.pad.iter().any(|&p| p > 0)
    }

    pub fn positions(&self, device: &Device) -> Result<Positions> {
        if !self.padded() {
            return Ok(Positions::Shared(self.offset));
        }
        let mut p = Vec::with_capacity(self.pad.len() * self.len);
        for &pad in &self.pad {
            p.extend((self.offset..self.offset + self.len).map(|j| j.saturating_sub(pad) as u32));
        }
        Ok(Positions::PerRow(Tensor::from_vec(
            p,
            (self.pad.len(), self.len),
            device,
        )?))
    }

    /// Additive mask (b, 1, len, offset + len): 0 where a query may look, -inf elsewhere (the
    /// future and the left padding). `None` when nothing needs masking.
    pub fn mask(&self, device: &Device) -> Result<Option<Tensor>> {
        if self.len == 1 && !self.padded() {
            return Ok(None);
        }
        let total = self.offset + self.len;
        let b = if self.padded() { self.pad.len() } else { 1 };
        let mut m = vec![0f32; b * self.len * total];
        for (row, chunk) in m.chunks_mut(self.len * total).enumerate() {
            let pad = if self.padded() { self.pad[row] } else { 0 };
            for i in 0..self.len {
                let query = self.offset + i;
                for (key, v) in chunk[i * total..(i + 1) * total].iter_mut().enumerate() {
                    // A padding query attends to itself only, so that its row is never all -inf.
                    let visible = if query < pad {
                        key == query
                    } else {
                        key <= query && key >= pad
                    };
                    if !visible {
                        *v = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Ok(Some(Tensor::from_vec(m, (b, 1, self.len, total), device)?))
    }
}

/// The key/value cache of one layer: (b, kv_heads, capacity, head_dim), filled up to `len`.
#[derive(Clone, Debug)]
pub struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
    capacity: usize,
}

impl LayerCache {
    pub fn new(capacity: usize) -> Self {
        LayerCache {
            k: None,
            v: None,
            len: 0,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends (b, kv_heads, t, head_dim) keys and values; returns everything cached so far. A
    /// full cache grows (copied into one twice as large).
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, heads, t, d) = k.dims4()?;
        if self.len + t > self.capacity {
            self.reserve((self.len + t).max(2 * self.capacity) - self.len)?;
        }
        if self.k.is_none() {
            let zeros = Tensor::zeros((b, heads, self.capacity, d), k.dtype(), k.device())?;
            self.k = Some(zeros.clone());
            self.v = Some(zeros.zeros_like()?);
        }
        let (ck, cv) = (self.k.as_ref().unwrap_or(k), self.v.as_ref().unwrap_or(v));
        ck.slice_set(&k.contiguous()?, 2, self.len)?;
        cv.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len += t;
        Ok((ck.narrow(2, 0, self.len)?, cv.narrow(2, 0, self.len)?))
    }

    /// Makes room for `more` positions after those cached.
    pub fn reserve(&mut self, more: usize) -> Result<()> {
        let capacity = self.len + more;
        if capacity <= self.capacity {
            return Ok(());
        }
        self.k = self
            .k
            .take()
            .map(|k| pad_positions(&k, self.len, 0, capacity))
            .transpose()?;
        self.v = self
            .v
            .take()
            .map(|v| pad_positions(&v, self.len, 0, capacity))
            .transpose()?;
        self.capacity = capacity;
        Ok(())
    }

    /// Keeps the rows `rows` of the batch, in that order.
    pub fn keep_rows(&mut self, rows: &[usize]) -> Result<()> {
        if rows.is_empty() {
            *self = LayerCache::new(self.capacity);
            return Ok(());
        }
        let keep = |t: Tensor| -> Result<Tensor> {
            let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
            t.index_select(&Tensor::new(idx, t.device())?, 0)
        };
        self.k = self.k.take().map(keep).transpose()?;
        self.v = self.v.take().map(keep).transpose()?;
        Ok(())
    }

    /// Drops the first `n` positions of every row (left padding that all rows share).
    pub fn drop_front(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let cut = |t: Tensor| t.narrow(2, n, self.capacity - n)?.contiguous();
        self.k = self.k.take().map(cut).transpose()?;
        self.v = self.v.take().map(cut).transpose()?;
        self.len -= n;
        self.capacity -= n;
        Ok(())
    }

    /// Puts the rows of `other` under this cache's rows, right-aligned: the shorter side gets
    /// left padding to the longer's length. Leaves room for `room` more positions and returns the
    /// padding each side gained, (this side's, `other`'s).
    pub fn stack(&mut self, other: &LayerCache, room: usize) -> Result<(usize, usize)> {
        let len = self.len.max(other.len);
        let (grow_self, grow_other) = (len - self.len, len - other.len);
        let capacity = len + room;
        let aligned =
            |c: &LayerCache, t: &Option<Tensor>, front: usize| -> Result<Option<Tensor>> {
                t.as_ref()
                    .map(|t| pad_positions(&t.narrow(2, 0, c.len)?, c.len, front, capacity))
                    .transpose()
            };
        let stacked = |a: Option<Tensor>, b: Option<Tensor>| -> Result<Option<Tensor>> {
            Ok(match (a, b) {
                (Some(a), Some(b)) => Some(Tensor::cat(&[&a, &b], 0)?),
                (a, b) => a.or(b),
            })
        };
        let k = stacked(
            aligned(self, &self.k, grow_self)?,
            aligned(other, &other.k, grow_other)?,
        )?;
        let v = stacked(
            aligned(self, &self.v, grow_self)?,
            aligned(other, &other.v, grow_other)?,
        )?;
        *self = LayerCache {
            k,
            v,
            len,
            capacity,
        };
        Ok((grow_self, grow_other))
    }
}

/// `t` (b, h, positions, d) holding `len` filled positions, moved `front` positions right and
/// zero-padded to `capacity` positions.
fn pad_positions(t: &Tensor, len: usize, front: usize, capacity: usize) -> Result<Tensor> {
    let (b, h, _, d) = t.dims4()?;
    let zeros = |n: usize| Tensor::zeros((b, h, n, d), t.dtype(), t.device());
    let mut parts = Vec::with_capacity(3);
    if front > 0 {
        parts.push(zeros(front)?);
    }
    parts.push(t.narrow(2, 0, len)?);
    if capacity > front + len {
        parts.push(zeros(capacity - front - len)?);
    }
    Tensor::cat(&parts, 2)
}

/// One layer's self-attention after the projections: appends k, v (b, kv_heads, t, d) to the
/// layer's cache when there is one, attends with q (b, heads, t, d) and merges the heads into
/// (b, t, heads·d), ready for the output projection. `mask` is `span`'s.
pub fn self_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cache: Option<&mut LayerCache>,
    span: &Span,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, _, t, _) = q.dims4()?;
    let whole_causal = span.offset == 0 && !span.padded() && t > 1;
    let (k, v) = match cache {
        Some(c) => c.append(k, v)?,
        None if whole_causal => return cxr_ops::transformer::causal_attention(q, k, v),
        None => (k.contiguous()?, v.contiguous()?),
    };
    if whole_causal {
        return cxr_ops::transformer::causal_attention(q, &k, &v);
    }
    attend(&q.contiguous()?, &k, &v, mask)?
        .transpose(1, 2)?
        .reshape((b, t, ()))
}

/// Scaled dot-product attention of q (b, heads, t, d) over k, v (b, kv_heads, T, d).
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (b, heads, t, d) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    let scale = 1.0 / (d as f64).sqrt();
    let group = heads / kv_heads;
    // Grouped-query attention without copying the keys: fold each group's queries into rows.
    let q = q.reshape((b, kv_heads, group * t, d))?;
    let mut scores = (cxr_ops::matmul(&q, &k.t()?)? * scale)?;
    if let Some(mask) = mask {
        let total = k.dim(2)?;
        scores = scores
            .reshape((b, kv_heads, group, t, total))?
            .broadcast_add(&mask.unsqueeze(1)?)?
            .reshape((b, kv_heads, group * t, total))?;
    }
    let probs = cxr_ops::transformer::softmax(&scores)?;
    cxr_ops::matmul(&probs, v)?.reshape((b, heads, t, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_and_differentiable_rope_agree() {
        let dev = Device::Cpu;
        let rot = Rotary::new(8, 10_000.0, None, 32, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev).unwrap();
        let fast = rot.apply(&x, &Positions::Shared(4)).unwrap();
        let cos = rot.cos.narrow(0, 4, 5).unwrap();
        let sin = rot.sin.narrow(0, 4, 5).unwrap();
        let slow = rope_differentiable(&x, &cos, &sin).unwrap();
        let diff = cxr_ops::max_abs_diff(&fast, &slow).unwrap();
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn padded_mask_hides_padding_and_the_future() {
        let span = Span {
            offset: 0,
            len: 3,
            pad: vec![1, 0],
        };
        let mask = span.mask(&Device::Cpu).unwrap().unwrap();
        let m: Vec<Vec<f32>> = mask.squeeze(1).unwrap().get(0).unwrap().to_vec2().unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(
            m,
            vec![
                vec![0.0, inf, inf],
                vec![inf, 0.0, inf],
                vec![inf, 0.0, 0.0]
            ]
        );
    }
}
