//! The CXR classifier: DenseNet-121 in torchxrayvision's layout (Cohen et al., `xrv.models.DenseNet`,
//! weights `densenet121-res224-all`): one input channel, 224 x 224 pixels scaled to
//! [-1024, 1024], 18 pathology outputs, and `features2` = ReLU + global average pool of the last
//! dense block (1024-d), which LLM-CXR's clinical-information-preserving VQ-GAN loss compares and
//! FID on classifier features uses.
//!
//! Tensor names are torchvision's / torchxrayvision's (`features.conv0.weight`,
//! `features.denseblock1.denselayer1.norm1.running_mean`, `classifier.weight`, ...), so a
//! state_dict saved by either loads with no renaming. Parity with a random-weight PyTorch
//! reference is tested (`scripts/reference/densenet_fixture.py`).

pub mod inception;
pub mod train;

use std::path::Path;

use candle_core::{DType, Device, Module, ModuleT, Tensor, D};
use candle_nn::{batch_norm, linear, BatchNorm, BatchNormConfig, Linear, VarBuilder};
use cxr_ops::conv::Conv2d;

pub use candle_core;
pub use candle_nn;

/// torchxrayvision's 18 outputs, in order.
pub const PATHOLOGIES: [&str; 18] = [
    "Atelectasis",
    "Consolidation",
    "Infiltration",
    "Pneumothorax",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Effusion",
    "Pneumonia",
    "Pleural_Thickening",
    "Cardiomegaly",
    "Nodule",
    "Mass",
    "Hernia",
    "Lung Lesion",
    "Fracture",
    "Lung Opacity",
    "Enlarged Cardiomediastinum",
];

/// The CheXpert observations among torchxrayvision's outputs (the 11 of the paper's Table 4), in
/// Table 4's column order, with their output index.
pub const CHEXPERT_OUTPUTS: [(cxr_data::Observation, usize); 11] = {
    use cxr_data::Observation::*;
    [
        (Atelectasis, 0),
        (Consolidation, 1),
        (Pneumothorax, 3),
        (Edema, 4),
        (PleuralEffusion, 7),
        (Pneumonia, 8),
        (Cardiomegaly, 10),
        (LungLesion, 14),
        (Fracture, 15),
        (LungOpacity, 16),
        (EnlargedCardiomediastinum, 17),
    ]
};

/// DenseNet hyper-parameters, torchvision's names.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DenseNetConfig {
    pub growth_rate: usize,
    pub block_config: Vec<usize>,
    pub num_init_features: usize,
    pub bn_size: usize,
    pub in_channels: usize,
    pub num_classes: usize,
}

impl DenseNetConfig {
    /// DenseNet-121 as torchxrayvision builds it.
    pub fn densenet121_txv() -> Self {
        Self {
            growth_rate: 32,
            block_config: vec![6, 12, 24, 16],
            num_init_features: 64,
            bn_size: 4,
            in_channels: 1,
            num_classes: PATHOLOGIES.len(),
        }
    }

    /// Width of `features2`.
    pub fn num_features(&self) -> usize {
        let mut f = self.num_init_features;
        for (i, &layers) in self.block_config.iter().enumerate() {
            f += layers * self.growth_rate;
            if i + 1 < self.block_config.len() {
                f /= 2;
            }
        }
        f
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    #[error("{path}: {source}")]
    Load {
        path: std::path::PathBuf,
        source: candle_core::Error,
    },
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

const BN: BatchNormConfig = BatchNormConfig {
    eps: 1e-5,
    remove_mean: true,
    affine: true,
    momentum: 0.1,
};

struct DenseLayer {
    norm1: BatchNorm,
    conv1: Conv2d,
    norm2: BatchNorm,
    conv2: Conv2d,
}

impl DenseLayer {
    fn new(in_features: usize, cfg: &DenseNetConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let mid = cfg.bn_size * cfg.growth_rate;
        Ok(Self {
            norm1: batch_norm(in_features, BN, vb.pp("norm1"))?,
            conv1: Conv2d::new((in_features, mid, 1), 1, 0, false, vb.pp("conv1"))?,
            norm2: batch_norm(mid, BN, vb.pp("norm2"))?,
            conv2: Conv2d::new((mid, cfg.growth_rate, 3), 1, 1, false, vb.pp("conv2"))?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let y = self.norm1.forward_t(x, train)?.relu()?;
        let y = self.conv1.forward(&y)?;
        let y = self.norm2.forward_t(&y, train)?.relu()?;
        let y = self.conv2.forward(&y)?;
        Tensor::cat(&[x, &y], 1)
    }
}

struct Transition {
    norm: BatchNorm,
    conv: Conv2d,
}

/// The classifier.
pub struct DenseNet {
    config: DenseNetConfig,
    conv0: Conv2d,
    norm0: BatchNorm,
    blocks: Vec<Vec<DenseLayer>>,
    transitions: Vec<Transition>,
    norm5: BatchNorm,
    classifier: Linear,
}

/// 3 x 3 max pooling, stride 2, padding 1 (torchvision's `pool0`), written as the maximum of nine
/// strided views so that it has a gradient: candle's `max_pool2d` has none when kernel != stride.
/// Expects non-negative input (it follows a ReLU), so zero padding equals -inf padding.
fn max_pool_3x3_s2(x: &Tensor) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (oh, ow) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    // Pad to 2 * out + 2 rows / columns: one in front, the rest behind.
    let x = x
        .pad_with_zeros(2, 1, 2 * oh + 1 - h)?
        .pad_with_zeros(3, 1, 2 * ow + 1 - w)?;
    let pick = |t: &Tensor, dim: usize, offset: usize, out: usize| -> candle_core::Result<Tensor> {
        // Rows offset, offset + 2, ..., offset + 2 (out - 1).
        let t = t.narrow(dim, offset, 2 * out)?;
        let mut shape = t.dims().to_vec();
        shape[dim] = out;
        shape.insert(dim + 1, 2);
        t.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
    };
    let mut result: Option<Tensor> = None;
    for dy in 0..3 {
        let rows = pick(&x, 2, dy, oh)?;
        for dx in 0..3 {
            let v = pick(&rows, 3, dx, ow)?;
            result = Some(match result {
                None => v,
                Some(r) => r.maximum(&v)?,
            });
        }
    }
    Ok(result.expect("nine views"))
}

/// Tensors from safetensors or a PyTorch state_dict (`.pt`, `.pth`, `.ckpt`; a Lightning-style
/// `state_dict` entry is used when present), as f32 under their own names.
pub fn var_builder(path: &Path, device: &Device) -> candle_core::Result<VarBuilder<'static>> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        // SAFETY: the file is memory-mapped read-only; it must not change while mapped.
        return unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, device) };
    }
    // Checked first (cxr_train::pth): a forged shape or string length is an error, not an
    // allocation of what it declares; tensors are then read lazily, as candle's `from_pth` does.
    // A bare state_dict has tensors at the top; a Lightning/taming checkpoint has none there.
    let check =
        |key| cxr_train::pth::check_pth(path, key).map_err(|e| candle_core::Error::Msg(e.reason));
    let mut pth = check(None)?;
    if pth.tensor_infos().is_empty() {
        pth = check(Some("state_dict"))?;
    }
    Ok(VarBuilder::from_backend(
        Box::new(pth),
        DType::F32,
        device.clone(),
    ))
}

impl DenseNet {
    pub fn new(config: &DenseNetConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let f = vb.pp("features");
        let conv0 = Conv2d::new(
            (config.in_channels, config.num_init_features, 7),
            2,
            3,
            false,
            f.pp("conv0"),
        )?;
        let norm0 = batch_norm(config.num_init_features, BN, f.pp("norm0"))?;
        let mut features = config.num_init_features;
        let mut blocks = Vec::new();
        let mut transitions = Vec::new();
        for (i, &layers) in config.block_config.iter().enumerate() {
            let bvb = f.pp(format!("denseblock{}", i + 1));
            let mut block = Vec::new();
            for l in 0..layers {
                block.push(DenseLayer::new(
                    features + l * config.growth_rate,
                    config,
                    bvb.pp(format!("denselayer{}", l + 1)),
                )?);
            }
            features += layers * config.growth_rate;
            blocks.push(block);
            if i + 1 < config.block_config.len() {
                let tvb = f.pp(format!("transition{}", i + 1));
                transitions.push(Transition {
                    norm: batch_norm(features, BN, tvb.pp("norm"))?,
                    conv: Conv2d::new((features, features / 2, 1), 1, 0, false, tvb.pp("conv"))?,
                });
                features /= 2;
            }
        }
        let norm5 = batch_norm(features, BN, f.pp("norm5"))?;
        let classifier = linear(features, config.num_classes, vb.pp("classifier"))?;
        Ok(Self {
            config: config.clone(),
            conv0,
            norm0,
            blocks,
            transitions,
            norm5,
            classifier,
        })
    }

    /// Loads weights from safetensors or a PyTorch state_dict (`.pt`, `.pth`, `.ckpt`; a
    /// Lightning-style `state_dict` entry is used when present), tensor names unchanged.
    pub fn load(
        config: &DenseNetConfig,
        path: &Path,
        device: &Device,
    ) -> Result<Self, ClassifierError> {
        let err = |source| ClassifierError::Load {
            path: path.to_path_buf(),
            source,
        };
        let vb = var_builder(path, device).map_err(err)?;
        Self::new(config, vb).map_err(err)
    }

    pub fn config(&self) -> &DenseNetConfig {
        &self.config
    }

    /// The device the weights live on: inputs fed to the network are built there.
    pub fn device(&self) -> &Device {
        self.classifier.weight().device()
    }

    /// `features2`: ReLU and global average pool of the last dense block, (B, 1024).
    pub fn features2(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let x = self.conv0.forward(x)?;
        let x = self.norm0.forward_t(&x, train)?.relu()?;
        let mut x = max_pool_3x3_s2(&x)?;
        for (i, block) in self.blocks.iter().enumerate() {
            for layer in block {
                x = layer.forward_t(&x, train)?;
            }
            if let Some(t) = self.transitions.get(i) {
                let y = t.norm.forward_t(&x, train)?.relu()?;
                x = t.conv.forward(&y)?.avg_pool2d(2)?;
            }
        }
        let x = self.norm5.forward_t(&x, train)?.relu()?;
        x.mean(D::Minus1)?.mean(D::Minus1)
    }

    /// Logits for the 18 pathologies, (B, 18); apply a sigmoid for probabilities.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.classify(&self.features2(x, train)?)
    }

    /// Logits from `features2`, when both are wanted from one pass.
    pub fn classify(&self, features2: &Tensor) -> candle_core::Result<Tensor> {
        self.classifier.forward(features2)
    }
}

/// Turns a loaded CXR into torchxrayvision's input: 1 channel, `size` x `size` (224), values in
/// [-1024, 1024], through llm-cxr's one preprocessing (Lanczos short side, centre crop).
pub fn txv_input(
    img: &cxr_image::GrayImage,
    size: u32,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let x = cxr_image::preprocess(img, &cxr_image::Preprocess { size, channels: 1 });
    txv_scale(&Tensor::from_vec(
        x.data,
        (1, 1, size as usize, size as usize),
        device,
    )?)
}

/// A batch of images in [-1, 1], (B, C, H, W), as torchxrayvision's input: the channel mean
/// (a one-channel batch is unchanged), scaled to [-1024, 1024]. The one place that scaling is
/// written: [`txv_input`], the VQ-GAN's clinical-information loss and its evaluation use it.
pub fn txv_scale(x: &Tensor) -> candle_core::Result<Tensor> {
    x.mean_keepdim(1)? * 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn densenet121_has_1024_features() {
        assert_eq!(DenseNetConfig::densenet121_txv().num_features(), 1024);
    }

    #[test]
    fn max_pool_matches_a_direct_loop() {
        let dev = Device::Cpu;
        for (h, w) in [(8, 8), (7, 9), (5, 6)] {
            let data: Vec<f32> = (0..h * w).map(|i| ((i * 37) % 23) as f32).collect();
            let x = Tensor::from_vec(data.clone(), (1, 1, h, w), &dev).unwrap();
            let y = max_pool_3x3_s2(&x).unwrap();
            let (oh, ow) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
            assert_eq!(y.dims(), &[1, 1, oh, ow]);
            let got: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            for i in 0..oh {
                for j in 0..ow {
                    let mut m = 0f32;
                    for dy in 0..3 {
                        for dx in 0..3 {
                            let (r, c) = ((2 * i + dy) as i64 - 1, (2 * j + dx) as i64 - 1);
                            if r >= 0 && c >= 0 && (r as usize) < h && (c as usize) < w {
                                m = m.max(data[r as usize * w + c as usize]);
                            }
                        }
                    }
                    assert_eq!(got[i * ow + j], m, "({h},{w}) at ({i},{j})");
                }
            }
        }
    }
}
