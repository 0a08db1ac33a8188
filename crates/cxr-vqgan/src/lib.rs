//! The image tokenizer: taming-transformers' VQ-GAN (`VQModel`), which turns a chest X-ray into a
//! grid of discrete codes (16 x 16 = 256 for LLM-CXR) and codes back into an image.
//!
//! - [`VqganConfig`] mirrors taming's `ddconfig` plus `n_embed` / `embed_dim`; presets are JSON
//!   files in `presets/` (`paper`: LLM-CXR's f16 model; `demo`: a small CPU model for phantoms, 16 x 16 codes at 64 px; `demo-8x8`: the same with one
//!   more downsampling, 8 x 8 codes).
//! - [`VqModel`] loads taming checkpoints (`.ckpt` with a `state_dict`, `loss.*` ignored) and
//!   safetensors with the tensor names unchanged.
//! - [`tokens`]: the one token-file format (`.npy`, row-major grid); [`identity`]: which
//!   VQ-GAN made a folder of them.
//! - [`train`]: L1 + clinical-information loss + codebook/commitment + PatchGAN (taming's loss
//!   without LPIPS), resumable.
//! - [`metrics`]: PSNR, SSIM, codebook usage and perplexity.

pub mod discriminator;
pub mod identity;
pub mod metrics;
mod model;
pub mod tokens;
pub mod train;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

pub use model::{Quantized, Quantizer, Reconstruction, VqModel};

/// taming's `ddconfig` (the Encoder/Decoder arguments) and the quantizer's size.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VqganConfig {
    /// Input side in pixels (square).
    pub resolution: usize,
    pub in_channels: usize,
    pub out_ch: usize,
    /// Base channel count; every level's width `ch * ch_mult[i]` must be a multiple of 32
    /// (GroupNorm with 32 groups).
    pub ch: usize,
    /// One entry per level; `len - 1` halvings.
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Sides (in pixels of the feature map) at which attention follows each residual block.
    pub attn_resolutions: Vec<usize>,
    pub z_channels: usize,
    /// Codebook size.
    pub n_embed: usize,
    /// Code vector width.
    pub embed_dim: usize,
}

const PRESETS: [(&str, &str); 3] = [
    ("paper", include_str!("../presets/paper.json")),
    ("demo", include_str!("../presets/demo.json")),
    ("demo-8x8", include_str!("../presets/demo-8x8.json")),
];

#[derive(Debug, thiserror::Error)]
pub enum VqganError {
    #[error("unknown preset {0:?} (known: paper, demo, demo-8x8; or give a JSON file)")]
    UnknownPreset(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("invalid VQ-GAN config: {0}")]
    Config(String),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl VqganConfig {
    pub fn preset(name: &str) -> Result<Self, VqganError> {
        let (_, json) = PRESETS
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| VqganError::UnknownPreset(name.to_string()))?;
        Ok(serde_json::from_str(json).expect("embedded presets parse"))
    }

    /// A preset name or a path to a JSON file with the same fields.
    pub fn from_name_or_file(s: &str) -> Result<Self, VqganError> {
        let path = Path::new(s);
        if !path.is_file() {
            return Self::preset(s);
        }
        let text = std::fs::read_to_string(path)?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| VqganError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Halvings of the side: `len(ch_mult) - 1`.
    pub fn downsample_factor(&self) -> usize {
        1 << (self.ch_mult.len().saturating_sub(1))
    }

    /// The side of the code grid (16 for the paper's f16 at 256 px).
    pub fn grid_side(&self) -> usize {
        self.resolution / self.downsample_factor()
    }

    /// Codes per image.
    pub fn tokens_per_image(&self) -> usize {
        self.grid_side() * self.grid_side()
    }

    pub fn validate(&self) -> Result<(), VqganError> {
        let bad = |m: String| Err(VqganError::Config(m));
        if self.ch_mult.is_empty() || self.num_res_blocks == 0 {
            return bad("ch_mult and num_res_blocks must be non-empty / positive".into());
        }
        if !self.resolution.is_multiple_of(self.downsample_factor()) {
            return bad(format!(
                "resolution {} is not divisible by the downsampling factor {}",
                self.resolution,
                self.downsample_factor()
            ));
        }
        for w in self.ch_mult.iter().map(|m| self.ch * m).chain([self.ch]) {
            if w % 32 != 0 {
                return bad(format!(
                    "width {w} is not a multiple of 32 (GroupNorm groups)"
                ));
            }
        }
        if self.n_embed == 0 || self.n_embed > u16::MAX as usize + 1 || self.embed_dim == 0 {
            return bad(format!("n_embed {} must be in 1..=65536", self.n_embed));
        }
        if ![1, 3].contains(&self.in_channels) || ![1, 3].contains(&self.out_ch) {
            return bad("in_channels and out_ch must be 1 or 3".into());
        }
        Ok(())
    }
}

impl VqModel {
    /// Loads weights from safetensors or a PyTorch checkpoint (taming's `last.ckpt`: its
    /// `state_dict` entry; or a bare state_dict), tensor names unchanged. Keys the generator does
    /// not use (`loss.*`, the discriminator, LPIPS) are ignored.
    pub fn load(config: &VqganConfig, path: &Path, device: &Device) -> Result<Self, VqganError> {
        let err = |e: candle_core::Error| VqganError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let vb = cxr_classifier::var_builder(path, device).map_err(err)?;
        Self::new(config, vb).map_err(err)
    }

    /// Loads weights with the given config, or else the config stored in the safetensors
    /// metadata (`config`, as `llm-cxr vqgan train` writes it).
    pub fn load_auto(
        path: &Path,
        config: Option<&VqganConfig>,
        device: &Device,
    ) -> Result<(Self, VqganConfig), VqganError> {
        let config = match config {
            Some(c) => c.clone(),
            None => stored_config(path)?,
        };
        Ok((Self::load(&config, path, device)?, config))
    }
}

/// The config stored in a safetensors file's metadata.
pub fn stored_config(path: &Path) -> Result<VqganConfig, VqganError> {
    let err = |message: String| VqganError::File {
        path: path.to_path_buf(),
        message,
    };
    let missing =
        || err("holds no VQ-GAN config; pass --config (a preset name or a JSON file)".to_string());
    if path.extension().is_none_or(|e| e != "safetensors") {
        return Err(missing());
    }
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    // SAFETY: read-only map of a file that must not change while mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(e.to_string()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&map)
        .map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("config"))
        .ok_or_else(missing)?;
    let config: VqganConfig =
        serde_json::from_str(json).map_err(|e| err(format!("stored config: {e}")))?;
    config.validate()?;
    Ok(config)
}

/// A loaded CXR as the VQ-GAN's input: LLM-CXR's preprocessing (Lanczos short side, centre crop,
/// [-1, 1]) at the config's resolution and channel count, (1, C, R, R).
pub fn vqgan_input(
    img: &cxr_image::GrayImage,
    config: &VqganConfig,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let r = config.resolution;
    let x = cxr_image::preprocess(
        img,
        &cxr_image::Preprocess {
            size: r as u32,
            channels: config.in_channels as u8,
        },
    );
    Tensor::from_vec(x.data, (1, config.in_channels, r, r), device)
}

/// Decoded images in [-1, 1], (B, C, H, W) -> 8-bit grey images (channel mean), as LLM-CXR maps
/// decodes to [0, 1].
pub fn to_gray_images(images: &Tensor) -> candle_core::Result<Vec<image::GrayImage>> {
    let (b, _, h, w) = images.dims4()?;
    let gray = ((images.mean(1)?.clamp(-1f32, 1f32)? + 1.0)? * 127.5)?.round()?;
    let data: Vec<f32> = gray.flatten_all()?.to_vec1()?;
    Ok((0..b)
        .map(|i| {
            let px = data[i * h * w..(i + 1) * h * w]
                .iter()
                .map(|&v| v as u8)
                .collect();
            image::GrayImage::from_raw(w as u32, h as u32, px).expect("sized buffer")
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_give_their_grids() {
        let paper = VqganConfig::preset("paper").unwrap();
        assert_eq!(paper.grid_side(), 16);
        assert_eq!(paper.tokens_per_image(), 256);
        paper.validate().unwrap();
        let demo = VqganConfig::preset("demo").unwrap();
        demo.validate().unwrap();
        let small = VqganConfig::preset("demo-8x8").unwrap();
        small.validate().unwrap();
        assert_eq!(small.tokens_per_image(), 64);
        assert!(VqganConfig::preset("nope").is_err());
    }

    #[test]
    fn bad_configs_are_named() {
        let mut c = VqganConfig::preset("demo").unwrap();
        c.ch = 40;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("multiple of 32"));
        let mut c = VqganConfig::preset("demo").unwrap();
        c.resolution = 66;
        assert!(c.validate().unwrap_err().to_string().contains("divisible"));
    }
}
