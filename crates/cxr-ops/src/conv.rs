//! 2-D convolution (f32, CPU) as im2col + GEMM, with a backward pass made of GEMMs too.
//!
//! candle's own CPU conv2d is fine forward, but its backward runs the input gradient through a
//! direct `conv_transpose2d` loop and the weight gradient as a convolution with the output
//! gradient as kernel: about 6x the forward time, which made every convolutional trainer here
//! slow. This op computes, per tile of output positions (`cols` = the im2col of that tile):
//!
//! - forward: `y[:, tile] = W · cols`
//! - weight gradient: `dW += dy[:, tile] · colsᵀ`
//! - input gradient: `dx += col2im(Wᵀ · dy[:, tile])`
//!
//! so backward costs about twice the forward. Tiles run in parallel on rayon's pool; each GEMM
//! is the `gemm` crate's (the one candle's matmul uses), single-threaded inside a tile.

use candle_core::{CpuStorage, CustomOp2, Layout, Module, Result, Shape, Tensor};
use rayon::prelude::*;

/// Shapes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    b: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn new(x: &[usize], w: &[usize], stride: usize, pad: usize) -> Result<Self> {
        let (&[b, cin, h, wd], &[cout, wcin, kh, kw]) = (x, w) else {
            candle_core::bail!("conv2d expects 4-d input and weight, got {x:?} and {w:?}");
        };
        if cin != wcin {
            candle_core::bail!("conv2d: input has {cin} channels, the weight expects {wcin}");
        }
        if h + 2 * pad < kh || wd + 2 * pad < kw || stride == 0 {
            candle_core::bail!("conv2d: kernel {kh}x{kw} larger than padded input {h}x{wd}");
        }
        Ok(Self {
            b,
            cin,
            h,
            w: wd,
            cout,
            kh,
            kw,
            stride,
            pad,
            ho: (h + 2 * pad - kh) / stride + 1,
            wo: (wd + 2 * pad - kw) / stride + 1,
        })
    }

    /// Rows of the im2col matrix.
    fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    /// Output positions per image.
    fn n(&self) -> usize {
        self.ho * self.wo
    }

    /// A 1x1 stride-1 convolution needs no im2col: the input is its own column matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// (image, first output position, count) tiles, at most ~1 MiB of columns each, and at
    /// least as many as there are threads.
    fn tiles(&self) -> Vec<(usize, usize, usize)> {
        let threads = rayon::current_num_threads().max(1);
        let n = self.n();
        let by_cache = ((1 << 18) / self.k().max(1)).max(32);
        let by_threads = n.div_ceil(threads.div_ceil(self.b)).max(1);
        let tile = by_cache.min(by_threads).min(n);
        (0..self.b)
            .flat_map(|b| {
                (0..n)
                    .step_by(tile)
                    .map(move |n0| (b, n0, tile.min(n - n0)))
            })
            .collect()
    }

    /// Splits tiles into one contiguous group per thread.
    fn groups(&self) -> Vec<Vec<(usize, usize, usize)>> {
        let tiles = self.tiles();
        let threads = rayon::current_num_threads().max(1);
        let per = tiles.len().div_ceil(threads).max(1);
        tiles.chunks(per).map(<[_]>::to_vec).collect()
    }

    /// Calls `f(j, iy, ix0, run)` for each run of output positions `j..j + run` of the tile
    /// that lie on one output row, with the input row `iy` and first input column `ix0` (signed:
    /// padding) that kernel offset (`ky`, `kx`) reads for them.
    fn runs(
        &self,
        n0: usize,
        count: usize,
        ky: usize,
        kx: usize,
        mut f: impl FnMut(usize, isize, isize, usize),
    ) {
        let (s, p) = (self.stride as isize, self.pad as isize);
        let mut j = 0;
        while j < count {
            let o = n0 + j;
            let (oy, ox0) = (o / self.wo, o % self.wo);
            let run = (self.wo - ox0).min(count - j);
            f(
                j,
                oy as isize * s + ky as isize - p,
                ox0 as isize * s + kx as isize - p,
                run,
            );
            j += run;
        }
    }

    /// The positions `t` in `0..run` whose input column `ix0 + t * stride` lies inside the image.
    fn valid(&self, ix0: isize, run: usize) -> std::ops::Range<usize> {
        let s = self.stride as isize;
        let first = if ix0 < 0 { ((-ix0) + s - 1) / s } else { 0 } as usize;
        let last = ((self.w as isize - 1 - ix0).div_euclid(s) + 1).clamp(0, run as isize) as usize;
        first.min(last)..last
    }

    /// Fills `cols` ([k, count], row-major) with the input patches of output positions
    /// `n0..n0 + count` of one image `x` ([cin, h, w]).
    fn im2col(&self, x: &[f32], n0: usize, count: usize, cols: &mut [f32]) {
        for c in 0..self.cin {
            let plane = &x[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let row = (c * self.kh + ky) * self.kw + kx;
                    let dst = &mut cols[row * count..(row + 1) * count];
                    self.runs(n0, count, ky, kx, |j, iy, ix0, run| {
                        let seg = &mut dst[j..j + run];
                        if iy < 0 || iy >= self.h as isize {
                            seg.fill(0.0);
                            return;
                        }
                        let src = &plane[iy as usize * self.w..(iy as usize + 1) * self.w];
                        let ok = self.valid(ix0, run);
                        seg[..ok.start].fill(0.0);
                        seg[ok.end..].fill(0.0);
                        if self.stride == 1 {
                            let a = (ix0 + ok.start as isize) as usize;
                            seg[ok.clone()].copy_from_slice(&src[a..a + ok.len()]);
                        } else {
                            for t in ok {
                                seg[t] = src[(ix0 + (t * self.stride) as isize) as usize];
                            }
                        }
                    });
                }
            }
        }
    }

    /// Adds `cols` ([k, count]) back into the image gradient `dx` ([cin, h, w]).
    fn col2im(&self, cols: &[f32], n0: usize, count: usize, dx: &mut [f32]) {
        for c in 0..self.cin {
            let plane = &mut dx[c * self.h * self.w..(c + 1) * self.h * self.w];
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let row = (c * self.kh + ky) * self.kw + kx;
                    let src = &cols[row * count..(row + 1) * count];
                    self.runs(n0, count, ky, kx, |j, iy, ix0, run| {
                        if iy < 0 || iy >= self.h as isize {
                            return;
                        }
                        let dst = &mut plane[iy as usize * self.w..(iy as usize + 1) * self.w];
                        let seg = &src[j..j + run];
                        let ok = self.valid(ix0, run);
                        if self.stride == 1 {
                            let a = (ix0 + ok.start as isize) as usize;
                            for (d, v) in dst[a..a + ok.len()].iter_mut().zip(&seg[ok]) {
                                *d += v;
                            }
                        } else {
                            for t in ok {
                                dst[(ix0 + (t * self.stride) as isize) as usize] += seg[t];
                            }
                        }
                    });
                }
            }
        }
    }
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]` with explicit (row, column) strides.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
) {
    // SAFETY: callers pass pointers to buffers that hold every addressed element, and no other
    // thread writes the destination region concurrently.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// A raw pointer that tiles writing disjoint regions may share.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub(crate) *mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// An output buffer of `n` values that `write` fills completely (every element, through the
/// pointer it is given) before anything reads it; skips the zeroing a `vec![0.0; n]` pays,
/// which was a tenth of VQ-GAN inference.
///
/// # Safety
/// `write` must initialise all `n` elements.
pub(crate) unsafe fn filled_by(n: usize, write: impl FnOnce(SharedMut)) -> Vec<f32> {
    let mut buf: Vec<std::mem::MaybeUninit<f32>> = Vec::with_capacity(n);
    // SAFETY: MaybeUninit needs no initialisation.
    unsafe { buf.set_len(n) };
    write(SharedMut(buf.as_mut_ptr().cast()));
    let mut buf = std::mem::ManuallyDrop::new(buf);
    // SAFETY: the caller wrote every element; same allocation, length and capacity.
    unsafe { Vec::from_raw_parts(buf.as_mut_ptr().cast(), buf.len(), buf.capacity()) }
}

impl SharedMut {
    /// Taking `self` makes closures capture the whole (Send) wrapper, not its raw field.
    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    crate::contiguous_f32(s, l, "conv2d")
}

#[derive(Debug, Clone)]
struct Conv2dOp {
    stride: usize,
    pad: usize,
    /// Inference only: a bias the output starts from, so that no separate pass adds it.
    bias: Option<std::sync::Arc<[f32]>>,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "cxr-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(xl.dims(), wl.dims(), self.stride, self.pad)?;
        let (x, w) = (contiguous_f32(xs, xl)?, contiguous_f32(ws, wl)?);
        let (n, k) = (g.n(), g.k());
        if let Some(bias) = &self.bias {
            if bias.len() != g.cout {
                candle_core::bail!("conv2d: {} bias values for {} channels", bias.len(), g.cout);
            }
        }
        let accumulate = self.bias.is_some();
        let run = |yp: SharedMut| {
            if let Some(bias) = &self.bias {
                // Every output row starts as its channel's bias; the GEMMs add onto it.
                (0..g.b * g.cout).into_par_iter().for_each(|i| {
                    for j in 0..n {
                        // SAFETY: row i lies inside the buffer and this task alone writes it.
                        unsafe { yp.ptr().add(i * n + j).write(bias[i % g.cout]) };
                    }
                });
            }
            g.tiles()
                .into_par_iter()
                .for_each_init(Vec::new, |cols, (b, n0, count)| {
                    let xb = &x[b * g.cin * g.h * g.w..(b + 1) * g.cin * g.h * g.w];
                    let (rhs, rhs_rs) = if g.pointwise() {
                        (xb[n0..].as_ptr(), n)
                    } else {
                        cols.resize(k * count, 0.0);
                        g.im2col(xb, n0, count, cols);
                        (cols.as_ptr(), count)
                    };
                    // SAFETY: tile (b, n0..n0+count) owns those columns of image b's output.
                    let dst = unsafe { yp.ptr().add(b * g.cout * n + n0) };
                    gemm(
                        (g.cout, count, k),
                        dst,
                        n,
                        accumulate,
                        w.as_ptr(),
                        (k, 1),
                        rhs,
                        (rhs_rs, 1),
                    );
                });
        };
        // SAFETY: the tiles cover every output position of every image and channel (without a
        // bias the GEMMs overwrite, with one they add to the rows filled first).
        let y = unsafe { filled_by(g.b * g.cout * n, run) };
        Ok((CpuStorage::F32(y), Shape::from((g.b, g.cout, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = dy.apply_op2_no_bwd(
            w,
            &InputGrad {
                op: self.clone(),
                x_dims: x.dims().to_vec(),
            },
        )?;
        let dw = x.apply_op2_no_bwd(
            &dy,
            &WeightGrad {
                op: self.clone(),
                w_dims: w.dims().to_vec(),
            },
        )?;
        Ok((Some(dx), Some(dw)))
    }
}

struct InputGrad {
    op: Conv2dOp,
    x_dims: Vec<usize>,
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "cxr-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        dys: &CpuStorage,
        dyl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(&self.x_dims, wl.dims(), self.op.stride, self.op.pad)?;
        let (dy, w) = (contiguous_f32(dys, dyl)?, contiguous_f32(ws, wl)?);
        let (n, k, img) = (g.n(), g.k(), g.cin * g.h * g.w);
        // One full-size accumulator per thread group, summed at the end: tiles of one image
        // overlap in the input rows they touch.
        let partials: Vec<Vec<f32>> = g
            .groups()
            .into_par_iter()
            .map(|tiles| {
                let mut dx = vec![0f32; g.b * img];
                let mut cols = Vec::new();
                for (b, n0, count) in tiles {
                    let dyb = dy[b * g.cout * n + n0..].as_ptr();
                    let dxb = &mut dx[b * img..(b + 1) * img];
                    if g.pointwise() {
                        let dst = dxb[n0..].as_mut_ptr();
                        gemm(
                            (k, count, g.cout),
                            dst,
                            n,
                            true,
                            w.as_ptr(),
                            (1, k),
                            dyb,
                            (n, 1),
                        );
                    } else {
                        cols.resize(k * count, 0.0);
                        let dst = cols.as_mut_ptr();
                        gemm(
                            (k, count, g.cout),
                            dst,
                            count,
                            false,
                            w.as_ptr(),
                            (1, k),
                            dyb,
                            (n, 1),
                        );
                        g.col2im(&cols, n0, count, dxb);
                    }
                }
                dx
            })
            .collect();
        let mut it = partials.into_iter();
        let mut dx = it.next().unwrap_or_else(|| vec![0f32; g.b * img]);
        for p in it {
            dx.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        Ok((CpuStorage::F32(dx), Shape::from(self.x_dims.clone())))
    }
}

struct WeightGrad {
    op: Conv2dOp,
    w_dims: Vec<usize>,
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "cxr-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        dys: &CpuStorage,
        dyl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(xl.dims(), &self.w_dims, self.op.stride, self.op.pad)?;
        let (x, dy) = (contiguous_f32(xs, xl)?, contiguous_f32(dys, dyl)?);
        let (n, k, img) = (g.n(), g.k(), g.cin * g.h * g.w);
        let partials: Vec<Vec<f32>> = g
            .groups()
            .into_par_iter()
            .map(|tiles| {
                let mut dw = vec![0f32; g.cout * k];
                let mut cols = Vec::new();
                for (b, n0, count) in tiles {
                    let xb = &x[b * img..(b + 1) * img];
                    let (rhs, rhs_cs) = if g.pointwise() {
                        (xb[n0..].as_ptr(), n)
                    } else {
                        cols.resize(k * count, 0.0);
                        g.im2col(xb, n0, count, &mut cols);
                        (cols.as_ptr(), count)
                    };
                    let dyb = dy[b * g.cout * n + n0..].as_ptr();
                    // dW[cout, k] += dy[cout, count] · colsᵀ[count, k]
                    gemm(
                        (g.cout, k, count),
                        dw.as_mut_ptr(),
                        k,
                        true,
                        dyb,
                        (n, 1),
                        rhs,
                        (1, rhs_cs),
                    );
                }
                dw
            })
            .collect();
        let mut it = partials.into_iter();
        let mut dw = it.next().unwrap_or_else(|| vec![0f32; g.cout * k]);
        for p in it {
            dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        Ok((CpuStorage::F32(dw), Shape::from(self.w_dims.clone())))
    }
}

/// `y + bias[c]` over (B, C, ...) with a fast backward: candle's broadcast-add backward reduces
/// the gradient over the broadcast dimensions in one strided fold, which showed up as 12 % of a
/// VQ-GAN training step; here it is a contiguous sum per channel.
struct ChannelBias;

impl CustomOp2 for ChannelBias {
    fn name(&self) -> &'static str {
        "cxr-channel-bias"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, b) = (contiguous_f32(ys, yl)?, contiguous_f32(bs, bl)?);
        let d = yl.dims();
        let (c, inner) = (d[1], d[2..].iter().product::<usize>());
        if b.len() != c {
            candle_core::bail!("channel bias: {} values for {c} channels", b.len());
        }
        let mut out = y.to_vec();
        out.par_chunks_mut(inner)
            .enumerate()
            .for_each(|(i, row)| row.iter_mut().for_each(|v| *v += b[i % c]));
        Ok((CpuStorage::F32(out), yl.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        b: &Tensor,
        _out: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = dout.dims();
        let inner: usize = d[2..].iter().product();
        let db = dout
            .contiguous()?
            .reshape((d[0], d[1], inner))?
            .sum(2)?
            .sum(0)?
            .reshape(b.shape())?;
        Ok((Some(dout.clone()), Some(db)))
    }
}

/// `conv2d(x, weight)` with square stride and zero padding, differentiable in both.
pub fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if !crate::cpu_kernel(x) {
        return x.conv2d(weight, padding, stride, 1, 1);
    }
    x.contiguous()?.apply_op2(
        &weight.contiguous()?,
        Conv2dOp {
            stride,
            pad: padding,
            bias: None,
        },
    )
}

/// A convolution layer with PyTorch's tensor names (`weight`, `bias`) and default
/// initialisation (uniform in ±1/sqrt(fan_in)).
///
/// When no gradient is wanted (neither input nor weight is tracked) and the layer is a 3 x 3,
/// stride 1, padding 1 convolution over a large map, the forward pass runs Winograd F(4, 3)
/// (`crate::winograd`) with the transformed weights kept after the first call.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
    winograd: std::sync::Arc<std::sync::OnceLock<WinogradLayer>>,
}

#[derive(Debug)]
struct WinogradLayer {
    weights: crate::winograd::WinogradWeights,
    bias: Option<Vec<f32>>,
}

/// Inference through Winograd; the layer's transformed weights are shared, not copied.
struct WinogradOp(std::sync::Arc<std::sync::OnceLock<WinogradLayer>>);

impl candle_core::CustomOp1 for WinogradOp {
    fn name(&self) -> &'static str {
        "cxr-winograd-conv3x3"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(s, l, None)
    }
}

/// The same with a residual (of the output's shape) added in the output pass.
impl CustomOp2 for WinogradOp {
    fn name(&self) -> &'static str {
        "cxr-winograd-conv3x3-residual"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        skip: &CpuStorage,
        skip_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run(s, l, Some(contiguous_f32(skip, skip_l)?))
    }
}

impl WinogradOp {
    fn run(&self, s: &CpuStorage, l: &Layout, skip: Option<&[f32]>) -> Result<(CpuStorage, Shape)> {
        let layer = self.0.get().expect("initialised before the op runs");
        let x = contiguous_f32(s, l)?;
        let (b, cin, h, w) = l.shape().dims4()?;
        let cout = layer.weights.cout();
        if skip.is_some_and(|s| s.len() != b * cout * h * w) {
            candle_core::bail!("residual does not have the convolution's output shape");
        }
        let y = crate::winograd::conv3x3(
            x,
            (b, cin, h, w),
            &layer.weights,
            layer.bias.as_deref(),
            skip,
        );
        Ok((CpuStorage::F32(y), Shape::from((b, cout, h, w))))
    }
}

/// Winograd pays where maps are large; small maps with many channels would only grow the
/// transformed weights (4x the parameters).
fn winograd_worthwhile(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> bool {
    let (&[_, _, h, wd], &[_, cin, 3, 3]) = (x.dims(), w.dims()) else {
        return false;
    };
    stride == 1
        && padding == 1
        && h * wd >= 32 * 32
        && cin >= 16
        && crate::cpu_kernel(x)
        && !x.track_op()
        && !w.track_op()
}

impl Conv2d {
    pub fn new(
        (cin, cout, k): (usize, usize, usize),
        stride: usize,
        padding: usize,
        bias: bool,
        vb: candle_nn::VarBuilder,
    ) -> Result<Self> {
        let bound = 1.0 / ((cin * k * k) as f64).sqrt();
        let init = candle_nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        Ok(Self {
            weight: vb.get_with_hints((cout, cin, k, k), "weight", init)?,
            bias: bias
                .then(|| vb.get_with_hints(cout, "bias", init))
                .transpose()?,
            stride,
            padding,
            winograd: Default::default(),
        })
    }

    /// A layer from given tensors (weight `(cout, cin, kh, kw)`, bias `(cout)`), e.g. a
    /// convolution with a BatchNorm folded into it.
    pub fn from_tensors(
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        padding: usize,
    ) -> Self {
        Self {
            weight,
            bias,
            stride,
            padding,
            winograd: Default::default(),
        }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    pub fn padding(&self) -> usize {
        self.padding
    }
}

impl Conv2d {
    /// The Winograd op when this call can take it (transformed weights made on first use).
    fn winograd_op(&self, x: &Tensor) -> Result<Option<WinogradOp>> {
        if !winograd_worthwhile(x, &self.weight, self.stride, self.padding) {
            return Ok(None);
        }
        if self.winograd.get().is_none() {
            let (cout, cin) = (self.weight.dim(0)?, self.weight.dim(1)?);
            let w: Vec<f32> = self.weight.flatten_all()?.to_vec1()?;
            let bias = self.bias.as_ref().map(|b| b.to_vec1::<f32>()).transpose()?;
            let _ = self.winograd.set(WinogradLayer {
                weights: crate::winograd::WinogradWeights::new(&w, cout, cin),
                bias,
            });
        }
        Ok(Some(WinogradOp(self.winograd.clone())))
    }

    /// `forward(x) + skip`, the residual added in the convolution's output pass when it can be.
    pub fn forward_residual(&self, x: &Tensor, skip: &Tensor) -> Result<Tensor> {
        if let Some(op) = self.winograd_op(x)? {
            if !skip.track_op() {
                return x.contiguous()?.apply_op2_no_bwd(&skip.contiguous()?, &op);
            }
        }
        self.forward(x)? + skip
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(op) = self.winograd_op(x)? {
            return x.contiguous()?.apply_op1_no_bwd(&op);
        }
        if !crate::cpu_kernel(x) {
            let y = x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?;
            return match &self.bias {
                Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
                None => Ok(y),
            };
        }
        match &self.bias {
            // Inference: the output starts from the bias (no extra pass, no copy).
            Some(b) if !x.track_op() && !self.weight.track_op() && !b.track_op() => {
                let op = Conv2dOp {
                    stride: self.stride,
                    pad: self.padding,
                    bias: Some(b.to_vec1::<f32>()?.into()),
                };
                x.contiguous()?
                    .apply_op2_no_bwd(&self.weight.contiguous()?, &op)
            }
            Some(b) => conv2d(x, &self.weight, self.stride, self.padding)?
                .apply_op2(&b.contiguous()?, ChannelBias),
            None => conv2d(x, &self.weight, self.stride, self.padding),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        crate::max_abs_diff(a, b).unwrap()
    }

    /// Forward and both gradients equal the portable path's (candle's conv2d) for every shape kind
    /// we use.
    #[test]
    fn matches_candle_forward_and_backward() {
        let dev = Device::Cpu;
        for &(b, cin, h, w, cout, k, stride, pad) in &[
            (2, 3, 9, 7, 4, 3, 1, 1),
            (1, 5, 8, 8, 6, 3, 2, 0),
            (2, 4, 6, 5, 3, 1, 1, 0),
            (1, 2, 11, 11, 3, 7, 2, 3),
            (3, 8, 5, 5, 8, 4, 1, 1),
            (1, 3, 4, 4, 2, 1, 2, 0),
        ] {
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1., (b, cin, h, w), &dev).unwrap()).unwrap();
            let wt = Var::from_tensor(&Tensor::randn(0f32, 1., (cout, cin, k, k), &dev).unwrap())
                .unwrap();
            let ours = conv2d(&x, &wt, stride, pad).unwrap();
            let theirs = crate::portable(|| conv2d(&x, &wt, stride, pad)).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            assert!(
                max_diff(&ours, &theirs) < 1e-4,
                "forward {b} {cin} {h} {w} {cout} {k} {stride} {pad}"
            );
            let r = Tensor::randn(0f32, 1., ours.dims(), &dev).unwrap();
            let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [&x, &wt] {
                let (a, c) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(
                    max_diff(a, c) < 1e-3,
                    "gradient {b} {cin} {h} {w} {cout} {k} {stride} {pad}"
                );
            }
        }
    }

    /// The module takes the Winograd path for untracked 3 x 3 layers on large maps and gives
    /// what the GEMM path gives, bias included.
    #[test]
    fn layer_inference_path_matches_training_path() {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &dev);
        let layer = Conv2d::new((16, 8, 3), 1, 1, true, vb).unwrap();
        let frozen = Conv2d {
            weight: layer.weight.detach(),
            bias: layer.bias.as_ref().map(Tensor::detach),
            ..layer.clone()
        };
        let x = Tensor::randn(0f32, 1., (2, 16, 33, 35), &dev).unwrap();
        assert!(winograd_worthwhile(&x, &frozen.weight, 1, 1));
        assert!(
            !winograd_worthwhile(&x, &layer.weight, 1, 1),
            "tracked weights train"
        );
        // The bias gradient through the channel-bias op equals the sum of the output gradient.
        let xv = candle_core::Var::from_tensor(&x).unwrap();
        let grads = layer
            .forward(&xv)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let db: Vec<f32> = grads
            .get(layer.bias.as_ref().unwrap())
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            db.iter().all(|&g| (g - (2 * 33 * 35) as f32).abs() < 1e-2),
            "{db:?}"
        );
        let fast = frozen.forward(&x).unwrap();
        assert!(frozen.winograd.get().is_some());
        let reference = layer.forward(&x).unwrap();
        assert!(max_diff(&fast, &reference) < 1e-4);
        // A stride-2 layer takes the GEMM path with the bias folded in.
        let vb2 = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &dev);
        let strided = Conv2d::new((16, 8, 3), 2, 0, true, vb2.pp("s2")).unwrap();
        let strided_frozen = Conv2d {
            weight: strided.weight.detach(),
            bias: strided.bias.as_ref().map(Tensor::detach),
            ..strided.clone()
        };
        let a = strided_frozen.forward(&x).unwrap();
        let b = strided.forward(&x).unwrap();
        assert!(max_diff(&a, &b) < 1e-5);
        let skip = Tensor::randn(0f32, 1., reference.dims(), &dev).unwrap();
        let fused = frozen.forward_residual(&x, &skip).unwrap();
        assert!(max_diff(&fused, &(reference + &skip).unwrap()) < 1e-4);
    }

    /// A layer with bias, training and inference: the portable path (what CUDA runs) gives the
    /// kernels' values and gradients.
    #[test]
    fn the_layer_computes_the_same_on_the_portable_path() {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &dev);
        let layer = Conv2d::new((16, 8, 3), 1, 1, true, vb).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 16, 33, 35), &dev).unwrap()).unwrap();
        let ours = layer.forward(&x).unwrap();
        let portable = crate::portable(|| layer.forward(&x)).unwrap();
        assert!(max_diff(&ours, &portable) < 1e-4);
        let r = Tensor::randn(0f32, 1., ours.dims(), &dev).unwrap();
        let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (portable * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let bias = layer.bias.as_ref().unwrap();
        for t in [x.as_tensor(), &layer.weight, bias] {
            assert!(max_diff(g1.get(t).unwrap(), g2.get(t).unwrap()) < 1e-3);
        }
        // Inference (nothing tracked): Winograd with the bias folded in, against candle's conv2d.
        let frozen = Conv2d::from_tensors(layer.weight.detach(), Some(bias.detach()), 1, 1);
        let x = x.as_tensor().detach();
        let inference = frozen.forward(&x).unwrap();
        assert!(frozen.winograd.get().is_some());
        let portable = crate::portable(|| frozen.forward(&x)).unwrap();
        assert!(max_diff(&inference, &portable) < 1e-4);
    }
}
