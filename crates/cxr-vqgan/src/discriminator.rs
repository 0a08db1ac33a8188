//! taming's PatchGAN discriminator (`NLayerDiscriminator`, from pix2pix) with its names
//! (`main.0.weight`, `main.2.weight`, `main.3.running_mean`, ...) and its hinge loss.

use candle_core::{ModuleT, Tensor};
use candle_nn::{batch_norm, BatchNorm, VarBuilder};
use cxr_ops::conv::Conv2d;

/// One `Conv2d(k4, p1)` and, on inner layers, BatchNorm and LeakyReLU(0.2).
struct Layer {
    conv: Conv2d,
    norm: Option<BatchNorm>,
    leaky: bool,
}

pub struct Discriminator {
    layers: Vec<Layer>,
}

impl Discriminator {
    /// `NLayerDiscriminator(input_nc, ndf, n_layers)` with BatchNorm (taming's default).
    pub fn new(
        input_nc: usize,
        ndf: usize,
        n_layers: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let main = vb.pp("main");
        // Index into `main` as nn.Sequential numbers its children.
        let mut idx = 0;
        let mut layers = vec![Layer {
            conv: Conv2d::new((input_nc, ndf, 4), 2, 1, true, main.pp(idx))?,
            norm: None,
            leaky: true,
        }];
        idx += 2;
        let mut mult = 1;
        for n in 1..=n_layers {
            let prev = mult;
            mult = (1 << n).min(8);
            let stride = if n < n_layers { 2 } else { 1 };
            let conv = Conv2d::new((ndf * prev, ndf * mult, 4), stride, 1, false, main.pp(idx))?;
            let norm = batch_norm(ndf * mult, 1e-5, main.pp(idx + 1))?;
            layers.push(Layer {
                conv,
                norm: Some(norm),
                leaky: true,
            });
            idx += 3;
        }
        layers.push(Layer {
            conv: Conv2d::new((ndf * mult, 1, 4), 1, 1, true, main.pp(idx))?,
            norm: None,
            leaky: false,
        });
        Ok(Self { layers })
    }

    /// Patch logits, (B, 1, h, w).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for l in &self.layers {
            h = l.conv.forward_t(&h, train)?;
            if let Some(n) = &l.norm {
                h = n.forward_t(&h, train)?;
            }
            if l.leaky {
                // LeakyReLU(0.2) = max(x, 0.2 x).
                h = h.maximum(&(&h * 0.2)?)?;
            }
        }
        Ok(h)
    }
}

/// `0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))`.
pub fn hinge_d_loss(logits_real: &Tensor, logits_fake: &Tensor) -> candle_core::Result<Tensor> {
    let real = (1.0 - logits_real)?.relu()?.mean_all()?;
    let fake = (logits_fake + 1.0)?.relu()?.mean_all()?;
    (real + fake)? * 0.5
}
