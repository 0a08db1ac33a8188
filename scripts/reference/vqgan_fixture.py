#!/usr/bin/env python3
"""VQ-GAN parity fixture for crates/cxr-vqgan/tests/parity.rs.

Builds taming-transformers' VQModel from taming's own modules (Encoder, Decoder, VectorQuantizer,
NLayerDiscriminator; PyPI `taming-transformers==0.0.1`, imported without pytorch-lightning, which
only the LightningModule wrapper needs) for a reduced config, with random weights (GroupNorm and
BatchNorm affine parameters and statistics randomised too), and writes:

- vqgan_small.ckpt: a Lightning-style checkpoint ({"state_dict": ...}) including `loss.*` keys,
  as taming's `last.ckpt` has them;
- vqgan_small.safetensors: the generator's tensors, names unchanged;
- vqgan_small_io.safetensors: an input batch, its latents, indices, decoded reconstruction and
  the discriminator's eval-mode logits on the input.

    python3 -m venv venv
    venv/bin/pip install torch==2.15.0 safetensors==0.8.0 numpy
    venv/bin/pip install --no-deps taming-transformers==0.0.1
    venv/bin/python scripts/reference/vqgan_fixture.py
"""
import json
import os

import torch
from safetensors.torch import save_file
from taming.modules.diffusionmodules.model import Encoder, Decoder
from taming.modules.vqvae.quantize import VectorQuantizer
from taming.modules.discriminator.model import NLayerDiscriminator, weights_init

DISC_NDF = 8
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "cxr-vqgan", "tests", "fixtures")

CONFIG = dict(resolution=32, in_channels=1, out_ch=1, ch=32, ch_mult=[1, 1], num_res_blocks=1,
              attn_resolutions=[16], z_channels=32, n_embed=64, embed_dim=16)


class VQModel(torch.nn.Module):
    """taming.models.vqgan.VQModel's tensors and encode/decode, without Lightning."""

    def __init__(self, cfg):
        super().__init__()
        dd = dict(cfg)
        n_embed, embed_dim = dd.pop("n_embed"), dd.pop("embed_dim")
        dd["double_z"] = False
        self.encoder = Encoder(**dd)
        self.decoder = Decoder(**dd)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=0.25)
        self.quant_conv = torch.nn.Conv2d(dd["z_channels"], embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(embed_dim, dd["z_channels"], 1)


def main():
    torch.manual_seed(0)
    model = VQModel(CONFIG).eval()
    disc = NLayerDiscriminator(input_nc=CONFIG["out_ch"], ndf=DISC_NDF, n_layers=3).apply(weights_init).eval()
    with torch.no_grad():
        for m in list(model.modules()) + list(disc.modules()):
            if isinstance(m, (torch.nn.GroupNorm, torch.nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        # Codes spread like encoder outputs, so that the nearest code is not always the same.
        model.quantize.embedding.weight.normal_(0.0, 0.5)

    r = CONFIG["resolution"]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, r), torch.linspace(-1, 1, r), indexing="ij")
    smooth = torch.stack([torch.sin(3 * xx) * torch.cos(2 * yy), torch.tanh(xx * yy * 4)])[:, None]
    x = (0.7 * smooth + 0.3 * (torch.rand(2, 1, r, r) * 2 - 1)).clamp(-1, 1)

    with torch.no_grad():
        h = model.quant_conv(model.encoder(x))
        quant, _, info = model.quantize(h)
        indices = info[2].view(x.shape[0], -1)
        side = h.shape[-1]
        z_q = model.quantize.embedding(indices.view(-1)).view(x.shape[0], side, side, -1).permute(0, 3, 1, 2)
        rec = model.decoder(model.post_quant_conv(z_q)).clamp(-1, 1)
        logits = disc(x)

    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    full = dict(sd)
    full.update({f"loss.discriminator.{k}": v for k, v in disc.state_dict().items()})
    full["loss.perceptual_loss.scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    os.makedirs(OUT, exist_ok=True)
    torch.save({"state_dict": full, "global_step": 7, "epoch": 0}, os.path.join(OUT, "vqgan_small.ckpt"))
    save_file(sd, os.path.join(OUT, "vqgan_small.safetensors"), metadata={"config": json.dumps(CONFIG)})
    save_file({f"loss.discriminator.{k}": v.float().contiguous() for k, v in disc.state_dict().items()
               if v.dtype.is_floating_point},
              os.path.join(OUT, "discriminator_small.safetensors"))
    save_file({"input": x.contiguous(), "latents": h.contiguous(), "indices": indices.to(torch.int64).contiguous(),
               "reconstruction": rec.contiguous(), "disc_logits": logits.contiguous()},
              os.path.join(OUT, "vqgan_small_io.safetensors"))
    with open(os.path.join(OUT, "vqgan_small.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
    print("indices", indices.tolist())
    print("distinct codes", len(set(indices.view(-1).tolist())))


if __name__ == "__main__":
    main()
