//! The Inception-v3 of FID: pytorch-fid's `InceptionV3` (the TensorFlow FID network ported to
//! PyTorch, weights `pt_inception-2015-12-05-6726825d.pth`), up to its 2048-d pool3 features.
//!
//! It is torchvision's Inception3 with pytorch-fid's patches: the 3 x 3 average pools of blocks
//! 5b-6e and 7b leave padding out of the mean (TensorFlow's `count_include_pad=False`), and block
//! 7c pools with a max instead. Input: images in [0, 1], resized bilinearly (no antialiasing,
//! `align_corners=False`) to 299 x 299, grey repeated over three channels, scaled to [-1, 1].
//! Tensor names are torchvision's (`Mixed_5b.branch1x1.conv.weight`, ...), so the FID weights
//! load unchanged from the `.pth` state_dict or from safetensors. Inference only: each
//! BatchNorm (eps 0.001) is folded into its convolution when loading.

use std::path::Path;

use candle_core::{Device, Module, Tensor, D};
use candle_nn::VarBuilder;
use cxr_ops::conv::Conv2d;

use crate::ClassifierError;

/// Side of the network's input.
pub const INCEPTION_SIDE: usize = 299;
/// Length of the pool3 feature vector.
pub const INCEPTION_FEATURES: usize = 2048;

/// torchvision's `BasicConv2d` (conv without bias, BatchNorm, ReLU) with the norm folded in.
struct ConvBn {
    conv: Conv2d,
    /// Zero padding (rows, columns) applied before the convolution when they differ.
    pad: (usize, usize),
}

impl ConvBn {
    fn load(
        vb: &VarBuilder,
        (cin, cout): (usize, usize),
        (kh, kw): (usize, usize),
        stride: usize,
        pad: (usize, usize),
    ) -> candle_core::Result<Self> {
        // The hints only matter for a fresh VarMap (a random network, as tests build).
        let weight = vb.pp("conv").get_with_hints(
            (cout, cin, kh, kw),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let bn = vb.pp("bn");
        let one = candle_nn::Init::Const(1.0);
        let gamma = bn.get_with_hints(cout, "weight", one)?;
        let beta = bn.get(cout, "bias")?;
        let mean = bn.get(cout, "running_mean")?;
        let var = bn.get_with_hints(cout, "running_var", one)?;
        let scale = (gamma / (var + 1e-3)?.sqrt()?)?;
        let weight = weight.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?;
        let bias = (beta - (mean * &scale)?)?;
        let same = pad.0 == pad.1;
        Ok(Self {
            conv: Conv2d::from_tensors(weight, Some(bias), stride, if same { pad.0 } else { 0 }),
            pad: if same { (0, 0) } else { pad },
        })
    }

    fn square(
        vb: &VarBuilder,
        name: &str,
        c: (usize, usize),
        k: usize,
        stride: usize,
        pad: usize,
    ) -> candle_core::Result<Self> {
        Self::load(&vb.pp(name), c, (k, k), stride, (pad, pad))
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = match self.pad {
            (0, 0) => x.clone(),
            (ph, pw) => x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?,
        };
        self.conv.forward(&x)?.relu()
    }
}

/// 3 x 3 average pool, stride 1, padding 1, padding left out of each mean.
fn avg_pool_3x3_exclude_pad(x: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let sums = x
        .pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?
        .avg_pool2d_with_stride((3, 3), (1, 1))?;
    let inside = |i: usize, n: usize| 3 - usize::from(i == 0) - usize::from(i + 1 == n);
    let factors: Vec<f32> = (0..h)
        .flat_map(|i| (0..w).map(move |j| 9.0 / (inside(i, h) * inside(j, w)) as f32))
        .collect();
    sums.broadcast_mul(&Tensor::from_vec(factors, (1, 1, h, w), x.device())?)
}

/// 3 x 3 max pool, stride 1, padding 1: edge replication equals -inf padding, since every
/// window holds the cell it replicates.
fn max_pool_3x3_same(x: &Tensor) -> candle_core::Result<Tensor> {
    x.pad_with_same(2, 1, 1)?
        .pad_with_same(3, 1, 1)?
        .max_pool2d_with_stride((3, 3), (1, 1))
}

fn max_pool_3x3_s2(x: &Tensor) -> candle_core::Result<Tensor> {
    x.max_pool2d_with_stride((3, 3), (2, 2))
}

/// Block A (Mixed_5b-d).
struct BlockA {
    b1: ConvBn,
    b5: [ConvBn; 2],
    b3: [ConvBn; 3],
    pool: ConvBn,
}

impl BlockA {
    fn load(vb: VarBuilder, cin: usize, pool_features: usize) -> candle_core::Result<Self> {
        Ok(Self {
            b1: ConvBn::square(&vb, "branch1x1", (cin, 64), 1, 1, 0)?,
            b5: [
                ConvBn::square(&vb, "branch5x5_1", (cin, 48), 1, 1, 0)?,
                ConvBn::square(&vb, "branch5x5_2", (48, 64), 5, 1, 2)?,
            ],
            b3: [
                ConvBn::square(&vb, "branch3x3dbl_1", (cin, 64), 1, 1, 0)?,
                ConvBn::square(&vb, "branch3x3dbl_2", (64, 96), 3, 1, 1)?,
                ConvBn::square(&vb, "branch3x3dbl_3", (96, 96), 3, 1, 1)?,
            ],
            pool: ConvBn::square(&vb, "branch_pool", (cin, pool_features), 1, 1, 0)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Tensor::cat(
            &[
                self.b1.forward(x)?,
                chain(&self.b5, x)?,
                chain(&self.b3, x)?,
                self.pool.forward(&avg_pool_3x3_exclude_pad(x)?)?,
            ],
            1,
        )
    }
}

fn chain(layers: &[ConvBn], x: &Tensor) -> candle_core::Result<Tensor> {
    layers.iter().try_fold(x.clone(), |x, l| l.forward(&x))
}

/// Block B (Mixed_6a): grid reduction 35 -> 17.
struct BlockB {
    b3: ConvBn,
    b3dbl: [ConvBn; 3],
}

impl BlockB {
    fn load(vb: VarBuilder, cin: usize) -> candle_core::Result<Self> {
        Ok(Self {
            b3: ConvBn::square(&vb, "branch3x3", (cin, 384), 3, 2, 0)?,
            b3dbl: [
                ConvBn::square(&vb, "branch3x3dbl_1", (cin, 64), 1, 1, 0)?,
                ConvBn::square(&vb, "branch3x3dbl_2", (64, 96), 3, 1, 1)?,
                ConvBn::square(&vb, "branch3x3dbl_3", (96, 96), 3, 2, 0)?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Tensor::cat(
            &[
                self.b3.forward(x)?,
                chain(&self.b3dbl, x)?,
                max_pool_3x3_s2(x)?,
            ],
            1,
        )
    }
}

/// Block C (Mixed_6b-e): factorised 7 x 7 convolutions.
struct BlockC {
    b1: ConvBn,
    b7: [ConvBn; 3],
    b7dbl: [ConvBn; 5],
    pool: ConvBn,
}

impl BlockC {
    fn load(vb: VarBuilder, cin: usize, c7: usize) -> candle_core::Result<Self> {
        let row = |name: &str, c| ConvBn::load(&vb.pp(name), c, (1, 7), 1, (0, 3));
        let col = |name: &str, c| ConvBn::load(&vb.pp(name), c, (7, 1), 1, (3, 0));
        Ok(Self {
            b1: ConvBn::square(&vb, "branch1x1", (cin, 192), 1, 1, 0)?,
            b7: [
                ConvBn::square(&vb, "branch7x7_1", (cin, c7), 1, 1, 0)?,
                row("branch7x7_2", (c7, c7))?,
                col("branch7x7_3", (c7, 192))?,
            ],
            b7dbl: [
                ConvBn::square(&vb, "branch7x7dbl_1", (cin, c7), 1, 1, 0)?,
                col("branch7x7dbl_2", (c7, c7))?,
                row("branch7x7dbl_3", (c7, c7))?,
                col("branch7x7dbl_4", (c7, c7))?,
                row("branch7x7dbl_5", (c7, 192))?,
            ],
            pool: ConvBn::square(&vb, "branch_pool", (cin, 192), 1, 1, 0)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Tensor::cat(
            &[
                self.b1.forward(x)?,
                chain(&self.b7, x)?,
                chain(&self.b7dbl, x)?,
                self.pool.forward(&avg_pool_3x3_exclude_pad(x)?)?,
            ],
            1,
        )
    }
}

/// Block D (Mixed_7a): grid reduction 17 -> 8.
struct BlockD {
    b3: [ConvBn; 2],
    b7x3: [ConvBn; 4],
}

impl BlockD {
    fn load(vb: VarBuilder, cin: usize) -> candle_core::Result<Self> {
        Ok(Self {
            b3: [
                ConvBn::square(&vb, "branch3x3_1", (cin, 192), 1, 1, 0)?,
                ConvBn::square(&vb, "branch3x3_2", (192, 320), 3, 2, 0)?,
            ],
            b7x3: [
                ConvBn::square(&vb, "branch7x7x3_1", (cin, 192), 1, 1, 0)?,
                ConvBn::load(&vb.pp("branch7x7x3_2"), (192, 192), (1, 7), 1, (0, 3))?,
                ConvBn::load(&vb.pp("branch7x7x3_3"), (192, 192), (7, 1), 1, (3, 0))?,
                ConvBn::square(&vb, "branch7x7x3_4", (192, 192), 3, 2, 0)?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Tensor::cat(
            &[
                chain(&self.b3, x)?,
                chain(&self.b7x3, x)?,
                max_pool_3x3_s2(x)?,
            ],
            1,
        )
    }
}

/// Block E (Mixed_7b with an average pool, Mixed_7c with pytorch-fid's max pool).
struct BlockE {
    b1: ConvBn,
    b3: ConvBn,
    b3_split: [ConvBn; 2],
    b3dbl: [ConvBn; 2],
    b3dbl_split: [ConvBn; 2],
    pool: ConvBn,
    max_pool: bool,
}

impl BlockE {
    fn load(vb: VarBuilder, cin: usize, max_pool: bool) -> candle_core::Result<Self> {
        let split = |a: &str, b: &str| -> candle_core::Result<[ConvBn; 2]> {
            Ok([
                ConvBn::load(&vb.pp(a), (384, 384), (1, 3), 1, (0, 1))?,
                ConvBn::load(&vb.pp(b), (384, 384), (3, 1), 1, (1, 0))?,
            ])
        };
        Ok(Self {
            b1: ConvBn::square(&vb, "branch1x1", (cin, 320), 1, 1, 0)?,
            b3: ConvBn::square(&vb, "branch3x3_1", (cin, 384), 1, 1, 0)?,
            b3_split: split("branch3x3_2a", "branch3x3_2b")?,
            b3dbl: [
                ConvBn::square(&vb, "branch3x3dbl_1", (cin, 448), 1, 1, 0)?,
                ConvBn::square(&vb, "branch3x3dbl_2", (448, 384), 3, 1, 1)?,
            ],
            b3dbl_split: split("branch3x3dbl_3a", "branch3x3dbl_3b")?,
            pool: ConvBn::square(&vb, "branch_pool", (cin, 192), 1, 1, 0)?,
            max_pool,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b3 = self.b3.forward(x)?;
        let b3dbl = chain(&self.b3dbl, x)?;
        let pooled = if self.max_pool {
            max_pool_3x3_same(x)?
        } else {
            avg_pool_3x3_exclude_pad(x)?
        };
        Tensor::cat(
            &[
                self.b1.forward(x)?,
                self.b3_split[0].forward(&b3)?,
                self.b3_split[1].forward(&b3)?,
                self.b3dbl_split[0].forward(&b3dbl)?,
                self.b3dbl_split[1].forward(&b3dbl)?,
                self.pool.forward(&pooled)?,
            ],
            1,
        )
    }
}

/// pytorch-fid's Inception-v3, input to pool3.
pub struct InceptionV3 {
    stem: [ConvBn; 5],
    mixed_5: [BlockA; 3],
    mixed_6a: BlockB,
    mixed_6: [BlockC; 4],
    mixed_7a: BlockD,
    mixed_7: [BlockE; 2],
}

impl InceptionV3 {
    pub fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            stem: [
                ConvBn::square(&vb, "Conv2d_1a_3x3", (3, 32), 3, 2, 0)?,
                ConvBn::square(&vb, "Conv2d_2a_3x3", (32, 32), 3, 1, 0)?,
                ConvBn::square(&vb, "Conv2d_2b_3x3", (32, 64), 3, 1, 1)?,
                ConvBn::square(&vb, "Conv2d_3b_1x1", (64, 80), 1, 1, 0)?,
                ConvBn::square(&vb, "Conv2d_4a_3x3", (80, 192), 3, 1, 0)?,
            ],
            mixed_5: [
                BlockA::load(vb.pp("Mixed_5b"), 192, 32)?,
                BlockA::load(vb.pp("Mixed_5c"), 256, 64)?,
                BlockA::load(vb.pp("Mixed_5d"), 288, 64)?,
            ],
            mixed_6a: BlockB::load(vb.pp("Mixed_6a"), 288)?,
            mixed_6: [
                BlockC::load(vb.pp("Mixed_6b"), 768, 128)?,
                BlockC::load(vb.pp("Mixed_6c"), 768, 160)?,
                BlockC::load(vb.pp("Mixed_6d"), 768, 160)?,
                BlockC::load(vb.pp("Mixed_6e"), 768, 192)?,
            ],
            mixed_7a: BlockD::load(vb.pp("Mixed_7a"), 768)?,
            mixed_7: [
                BlockE::load(vb.pp("Mixed_7b"), 1280, false)?,
                BlockE::load(vb.pp("Mixed_7c"), 2048, true)?,
            ],
        })
    }

    /// Loads the FID weights from a PyTorch state_dict (`.pth`) or safetensors.
    pub fn load(path: &Path, device: &Device) -> Result<Self, ClassifierError> {
        let err = |source| ClassifierError::Load {
            path: path.to_path_buf(),
            source,
        };
        Self::new(crate::var_builder(path, device).map_err(err)?).map_err(err)
    }

    /// The device the weights live on: inputs fed to the network are built there.
    pub fn device(&self) -> &Device {
        self.stem[0].conv.weight().device()
    }

    /// Pool3 features (B, 2048) of a (B, 3, 299, 299) batch scaled to [-1, 1].
    pub fn features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let [c1a, c2a, c2b, c3b, c4a] = &self.stem;
        let x = c2b.forward(&c2a.forward(&c1a.forward(x)?)?)?;
        let x = max_pool_3x3_s2(&x)?;
        let mut x = max_pool_3x3_s2(&c4a.forward(&c3b.forward(&x)?)?)?;
        for b in &self.mixed_5 {
            x = b.forward(&x)?;
        }
        x = self.mixed_6a.forward(&x)?;
        for b in &self.mixed_6 {
            x = b.forward(&x)?;
        }
        x = self.mixed_7a.forward(&x)?;
        for b in &self.mixed_7 {
            x = b.forward(&x)?;
        }
        x.mean(D::Minus1)?.mean(D::Minus1)
    }
}

/// PyTorch's bilinear resize (`F.interpolate(mode="bilinear", align_corners=False)`, no
/// antialiasing) of one row-major plane.
pub fn resize_bilinear(src: &[f32], (h, w): (usize, usize), (oh, ow): (usize, usize)) -> Vec<f32> {
    // For each output index: the two source indices and the weight of the second.
    let taps = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f32)> {
        let scale = n_in as f32 / n_out as f32;
        (0..n_out)
            .map(|o| {
                let s = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (s as usize).min(n_in - 1);
                let i1 = if i0 + 1 < n_in { i0 + 1 } else { i0 };
                (i0, i1, s - i0 as f32)
            })
            .collect()
    };
    let (rows, cols) = (taps(h, oh), taps(w, ow));
    let mut out = Vec::with_capacity(oh * ow);
    for &(r0, r1, ly) in &rows {
        for &(c0, c1, lx) in &cols {
            let top = (1.0 - lx) * src[r0 * w + c0] + lx * src[r0 * w + c1];
            let bottom = (1.0 - lx) * src[r1 * w + c0] + lx * src[r1 * w + c1];
            out.push((1.0 - ly) * top + ly * bottom);
        }
    }
    out
}

/// One image as the network's input (1, 3, 299, 299): resized from [0, 1], grey repeated over
/// the three channels, scaled to [-1, 1], as pytorch-fid feeds RGB images.
pub fn inception_input(img: &cxr_image::GrayImage, device: &Device) -> candle_core::Result<Tensor> {
    let plane = resize_bilinear(
        &img.pixels,
        (img.height as usize, img.width as usize),
        (INCEPTION_SIDE, INCEPTION_SIDE),
    );
    let scaled: Vec<f32> = plane.iter().map(|v| 2.0 * v - 1.0).collect();
    let one = Tensor::from_vec(scaled, (1, 1, INCEPTION_SIDE, INCEPTION_SIDE), device)?;
    Tensor::cat(&[&one, &one, &one], 1)
}
