//! taming-transformers' `VQModel`: Encoder, vector quantizer, Decoder, with taming's tensor names
//! (`encoder.down.0.block.1.norm1.weight`, `quantize.embedding.weight`, `post_quant_conv.bias`,
//! ...), so that a taming `state_dict` loads unchanged.

use candle_core::{Module, Tensor, D};
use candle_nn::VarBuilder;
use cxr_ops::conv::Conv2d;
use cxr_ops::group_norm::GroupNorm;

use crate::VqganConfig;

/// taming's `Normalize`: GroupNorm, 32 groups, eps 1e-6; taming always follows it with swish
/// except in attention (`forward_swish` fuses the two).
fn normalize(channels: usize, vb: VarBuilder) -> candle_core::Result<GroupNorm> {
    GroupNorm::new(32, channels, 1e-6, vb)
}

fn conv3x3(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> candle_core::Result<Conv2d> {
    let padding = if stride == 1 { 1 } else { 0 };
    Conv2d::new((cin, cout, 3), stride, padding, true, vb)
}

fn conv1x1(cin: usize, cout: usize, vb: VarBuilder) -> candle_core::Result<Conv2d> {
    Conv2d::new((cin, cout, 1), 1, 0, true, vb)
}

struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    nin_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    fn new(cin: usize, cout: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            norm1: normalize(cin, vb.pp("norm1"))?,
            conv1: conv3x3(cin, cout, 1, vb.pp("conv1"))?,
            norm2: normalize(cout, vb.pp("norm2"))?,
            conv2: conv3x3(cout, cout, 1, vb.pp("conv2"))?,
            nin_shortcut: (cin != cout)
                .then(|| conv1x1(cin, cout, vb.pp("nin_shortcut")))
                .transpose()?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_swish(x)?)?;
        let shortcut = match &self.nin_shortcut {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        self.conv2
            .forward_residual(&self.norm2.forward_swish(&h)?, &shortcut)
    }
}

/// Single-head self-attention over the pixels of a feature map.
struct AttnBlock {
    norm: GroupNorm,
    q: Conv2d,
    k: Conv2d,
    v: Conv2d,
    proj_out: Conv2d,
}

impl AttnBlock {
    fn new(c: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            norm: normalize(c, vb.pp("norm"))?,
            q: conv1x1(c, c, vb.pp("q"))?,
            k: conv1x1(c, c, vb.pp("k"))?,
            v: conv1x1(c, c, vb.pp("v"))?,
            proj_out: conv1x1(c, c, vb.pp("proj_out"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let hn = self.norm.forward(x)?;
        let q = self.q.forward(&hn)?.reshape((b, c, h * w))?;
        let k = self.k.forward(&hn)?.reshape((b, c, h * w))?;
        let v = self.v.forward(&hn)?.reshape((b, c, h * w))?;
        // scores[b, i, j] = sum_c q[b, c, i] k[b, c, j] / sqrt(c); softmax over j.
        let scores = (q.transpose(1, 2)?.contiguous()?.matmul(&k)? * (c as f64).powf(-0.5))?;
        // `ops::softmax`, not the fused `softmax_last_dim`, which passes no gradient back.
        let attn = candle_nn::ops::softmax(&scores, D::Minus1)?;
        // out[b, c, i] = sum_j v[b, c, j] attn[b, i, j]
        let out = v.matmul(&attn.transpose(1, 2)?.contiguous()?)?;
        x + self.proj_out.forward(&out.reshape((b, c, h, w))?)?
    }
}

/// One resolution level: residual blocks, attention after each when the level's side is listed
/// in `attn_resolutions`, then the resampling conv (absent on the last level).
struct Level {
    blocks: Vec<ResnetBlock>,
    attns: Vec<AttnBlock>,
    resample: Option<Conv2d>,
}

impl Level {
    fn forward(&self, mut h: Tensor, up: bool) -> candle_core::Result<Tensor> {
        for (i, block) in self.blocks.iter().enumerate() {
            h = block.forward(&h)?;
            if let Some(attn) = self.attns.get(i) {
                h = attn.forward(&h)?;
            }
        }
        match (&self.resample, up) {
            (None, _) => Ok(h),
            (Some(conv), true) => {
                let (_, _, hh, ww) = h.dims4()?;
                conv.forward(&h.upsample_nearest2d(2 * hh, 2 * ww)?)
            }
            // taming pads right and bottom by one, then a stride-2 3x3 conv without padding.
            (Some(conv), false) => {
                conv.forward(&h.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?)
            }
        }
    }
}

/// A level's `count` residual blocks (`block.{i}`, the first from `block_in` to `block_out`
/// channels) and, when the level's side is in `attn_resolutions`, an attention block after each
/// (`attn.{i}`).
fn level_blocks(
    cfg: &VqganConfig,
    block_in: usize,
    block_out: usize,
    count: usize,
    side: usize,
    vb: &VarBuilder,
) -> candle_core::Result<(Vec<ResnetBlock>, Vec<AttnBlock>)> {
    let (mut blocks, mut attns) = (Vec::new(), Vec::new());
    for b in 0..count {
        let cin = if b == 0 { block_in } else { block_out };
        blocks.push(ResnetBlock::new(
            cin,
            block_out,
            vb.pp(format!("block.{b}")),
        )?);
        if cfg.attn_resolutions.contains(&side) {
            attns.push(AttnBlock::new(block_out, vb.pp(format!("attn.{b}")))?);
        }
    }
    Ok((blocks, attns))
}

struct Mid {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl Mid {
    fn new(c: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            block_1: ResnetBlock::new(c, c, vb.pp("block_1"))?,
            attn_1: AttnBlock::new(c, vb.pp("attn_1"))?,
            block_2: ResnetBlock::new(c, c, vb.pp("block_2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.block_1.forward(x)?;
        let h = self.attn_1.forward(&h)?;
        self.block_2.forward(&h)
    }
}

struct Encoder {
    conv_in: Conv2d,
    down: Vec<Level>,
    mid: Mid,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(cfg: &VqganConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let conv_in = conv3x3(cfg.in_channels, cfg.ch, 1, vb.pp("conv_in"))?;
        let mut side = cfg.resolution;
        let mut block_in = cfg.ch;
        let mut down = Vec::new();
        for (i, &mult) in cfg.ch_mult.iter().enumerate() {
            let lvb = vb.pp(format!("down.{i}"));
            let block_out = cfg.ch * mult;
            let (blocks, attns) =
                level_blocks(cfg, block_in, block_out, cfg.num_res_blocks, side, &lvb)?;
            block_in = block_out;
            let resample = (i + 1 != cfg.ch_mult.len())
                .then(|| conv3x3(block_in, block_in, 2, lvb.pp("downsample.conv")))
                .transpose()?;
            if resample.is_some() {
                side /= 2;
            }
            down.push(Level {
                blocks,
                attns,
                resample,
            });
        }
        Ok(Self {
            conv_in,
            down,
            mid: Mid::new(block_in, vb.pp("mid"))?,
            norm_out: normalize(block_in, vb.pp("norm_out"))?,
            conv_out: conv3x3(block_in, cfg.z_channels, 1, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for level in &self.down {
            h = level.forward(h, false)?;
        }
        let h = self.mid.forward(&h)?;
        self.conv_out.forward(&self.norm_out.forward_swish(&h)?)
    }
}

struct Decoder {
    conv_in: Conv2d,
    mid: Mid,
    /// Indexed as taming's `up`: level 0 is the full resolution, run last.
    up: Vec<Level>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(cfg: &VqganConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let levels = cfg.ch_mult.len();
        let mut block_in = cfg.ch * cfg.ch_mult[levels - 1];
        let mut side = cfg.grid_side();
        let conv_in = conv3x3(cfg.z_channels, block_in, 1, vb.pp("conv_in"))?;
        let mid = Mid::new(block_in, vb.pp("mid"))?;
        let mut up = Vec::new();
        for i in (0..levels).rev() {
            let lvb = vb.pp(format!("up.{i}"));
            let block_out = cfg.ch * cfg.ch_mult[i];
            let (blocks, attns) =
                level_blocks(cfg, block_in, block_out, cfg.num_res_blocks + 1, side, &lvb)?;
            block_in = block_out;
            let resample = (i != 0)
                .then(|| conv3x3(block_in, block_in, 1, lvb.pp("upsample.conv")))
                .transpose()?;
            if resample.is_some() {
                side *= 2;
            }
            up.insert(
                0,
                Level {
                    blocks,
                    attns,
                    resample,
                },
            );
        }
        Ok(Self {
            conv_in,
            mid,
            up,
            norm_out: normalize(block_in, vb.pp("norm_out"))?,
            conv_out: conv3x3(block_in, cfg.out_ch, 1, vb.pp("conv_out"))?,
        })
    }

    /// The features before `conv_out` (the adaptive GAN weight differentiates through it).
    fn forward_pre_out(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.mid.forward(&self.conv_in.forward(z)?)?;
        for level in self.up.iter().rev() {
            h = level.forward(h, true)?;
        }
        self.norm_out.forward_swish(&h)
    }
}

/// Nearest-code vector quantizer (taming's `VectorQuantizer`), codebook `n_embed x embed_dim`.
pub struct Quantizer {
    embedding: Tensor,
    beta: f64,
}

/// What quantizing a latent gives.
pub struct Quantized {
    /// Codebook vectors with the straight-through gradient, (B, embed_dim, h, w).
    pub z_q: Tensor,
    /// Row-major code indices, (B, h * w), u32.
    pub indices: Tensor,
    /// taming's (legacy) loss: `mean((sg[z_q] - z)^2) + beta * mean((z_q - sg[z])^2)`.
    pub loss: Tensor,
}

impl Quantizer {
    /// Indices of the nearest codes for latents `z` (B, embed_dim, h, w), computed as taming does
    /// (`|z|^2 + |e|^2 - 2 z.e`, first minimum), so ties break the same way.
    pub fn nearest(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = z.dims4()?;
        let flat = z.permute((0, 2, 3, 1))?.reshape((b * h * w, c))?;
        let e = &self.embedding;
        let d = flat
            .sqr()?
            .sum_keepdim(1)?
            .broadcast_add(&e.sqr()?.sum(1)?.unsqueeze(0)?)?
            .sub(&(flat.matmul(&e.t()?)? * 2.0)?)?;
        d.argmin(1)?.reshape((b, h * w))
    }

    /// Codebook vectors for indices (B, h * w) as a (B, embed_dim, side, side) map.
    pub fn lookup(&self, indices: &Tensor, side: usize) -> candle_core::Result<Tensor> {
        let (b, n) = indices.dims2()?;
        let c = self.embedding.dim(1)?;
        if n != side * side {
            candle_core::bail!("{n} codes per image, the grid needs {}", side * side);
        }
        self.embedding
            .embedding(&indices.flatten_all()?)?
            .reshape((b, side, side, c))?
            .permute((0, 3, 1, 2))?
            .contiguous()
    }

    pub fn forward(&self, z: &Tensor) -> candle_core::Result<Quantized> {
        let (_, _, h, _) = z.dims4()?;
        let indices = self.nearest(&z.detach())?;
        let e = self.lookup(&indices, h)?;
        let commit = (e.detach() - z)?.sqr()?.mean_all()?;
        let codebook = (&e - z.detach())?.sqr()?.mean_all()?;
        let loss = (commit + (codebook * self.beta)?)?;
        // Straight-through: forward value e, gradient to z as identity.
        let z_q = (z + (e - z)?.detach())?;
        Ok(Quantized { z_q, indices, loss })
    }

    pub fn codebook(&self) -> &Tensor {
        &self.embedding
    }
}

/// The whole VQ-GAN generator: `encoder -> quant_conv -> quantize -> post_quant_conv -> decoder`.
pub struct VqModel {
    config: VqganConfig,
    encoder: Encoder,
    decoder: Decoder,
    quantize: Quantizer,
    quant_conv: Conv2d,
    post_quant_conv: Conv2d,
}

/// A training forward pass.
pub struct Reconstruction {
    /// Decoded image, (B, out_ch, H, W), not clamped.
    pub image: Tensor,
    /// Decoder features before `conv_out`.
    pub pre_out: Tensor,
    pub indices: Tensor,
    pub quant_loss: Tensor,
    /// Encoder outputs before quantization, (B, embed_dim, side, side).
    pub latents: Tensor,
}

impl VqModel {
    pub fn new(config: &VqganConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        config
            .validate()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(Self {
            config: config.clone(),
            encoder: Encoder::new(config, vb.pp("encoder"))?,
            decoder: Decoder::new(config, vb.pp("decoder"))?,
            quantize: Quantizer {
                embedding: vb.pp("quantize.embedding").get_with_hints(
                    (config.n_embed, config.embed_dim),
                    "weight",
                    candle_nn::Init::Uniform {
                        lo: -1.0 / config.n_embed as f64,
                        up: 1.0 / config.n_embed as f64,
                    },
                )?,
                beta: 0.25,
            },
            quant_conv: conv1x1(config.z_channels, config.embed_dim, vb.pp("quant_conv"))?,
            post_quant_conv: conv1x1(
                config.embed_dim,
                config.z_channels,
                vb.pp("post_quant_conv"),
            )?,
        })
    }

    pub fn config(&self) -> &VqganConfig {
        &self.config
    }

    pub fn quantizer(&self) -> &Quantizer {
        &self.quantize
    }

    /// The device the weights live on: inputs and codes fed to the model are built there.
    pub fn device(&self) -> &candle_core::Device {
        self.quantize.codebook().device()
    }

    /// Latents before quantization, (B, embed_dim, side, side).
    pub fn encode_latents(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.quant_conv.forward(&self.encoder.forward(x)?)
    }

    /// Images in [-1, 1], (B, in_channels, resolution, resolution) -> codes (B, side * side), u32.
    pub fn encode(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.quantize.nearest(&self.encode_latents(x)?)
    }

    /// Codes (B, side * side) -> images, (B, out_ch, resolution, resolution), clamped to [-1, 1].
    pub fn decode(&self, indices: &Tensor) -> candle_core::Result<Tensor> {
        let z_q = self.quantize.lookup(indices, self.config.grid_side())?;
        self.decode_latents(&z_q)?.clamp(-1f32, 1f32)
    }

    /// Quantized latents -> images (not clamped).
    pub fn decode_latents(&self, z_q: &Tensor) -> candle_core::Result<Tensor> {
        let pre = self
            .decoder
            .forward_pre_out(&self.post_quant_conv.forward(z_q)?)?;
        self.decoder.conv_out.forward(&pre)
    }

    /// The training pass: encode, quantize with the straight-through gradient, decode.
    pub fn reconstruct(&self, x: &Tensor) -> candle_core::Result<Reconstruction> {
        let latents = self.encode_latents(x)?;
        let q = self.quantize.forward(&latents)?;
        let pre_out = self
            .decoder
            .forward_pre_out(&self.post_quant_conv.forward(&q.z_q)?)?;
        Ok(Reconstruction {
            image: self.decoder.conv_out.forward(&pre_out)?,
            pre_out,
            indices: q.indices,
            quant_loss: q.loss,
            latents,
        })
    }

    /// The last layer (taming's `decoder.conv_out.weight`), for the adaptive GAN weight.
    pub fn last_layer(&self) -> &Conv2d {
        &self.decoder.conv_out
    }
}
