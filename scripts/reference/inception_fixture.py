#!/usr/bin/env python3
"""Inception-v3 (FID) parity fixture for crates/cxr-classifier/tests/inception_parity.rs.

pytorch-fid's own `InceptionV3([3])` (resize to 299, scale to [-1, 1], pool3 features), built by
pytorch-fid itself with its FID patches, with weights made by a formula instead of downloaded:
the network has 24 M weights, too many to commit, so both sides compute them from the tensor's
name and index (splitmix64 of FNV-1a(name) + index; see `formula` below and `formula_weights` in
the Rust test). Only the inputs and the expected features are written (about 20 kB).

    python3 -m venv venv && venv/bin/pip install torch==2.15.0 safetensors==0.8.0 \
        pytorch-fid==0.3.0 && venv/bin/pip install --no-deps torchvision==0.29.2
    venv/bin/python scripts/reference/inception_fixture.py
"""
import os

import numpy as np
import torch
from safetensors.torch import save_file

import pytorch_fid.inception as fid

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "cxr-classifier", "tests", "fixtures")
MASK = (1 << 64) - 1


def fnv1a(name):
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def uniform(name, n):
    """n values in [0, 1): splitmix64 of (fnv1a(name) + i * golden), top 24 bits."""
    with np.errstate(over="ignore"):
        z = np.uint64(fnv1a(name)) + np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)


def formula(name, shape):
    """The value of every tensor of the state_dict, as f32."""
    n = int(np.prod(shape)) if len(shape) else 1
    u = uniform(name, n)
    if name.endswith("running_var"):
        v = 0.5 + u
    elif name.endswith("running_mean") or name.endswith("bn.bias") or name.endswith("fc.bias"):
        v = 0.2 * (u - 0.5)
    elif name.endswith("bn.weight"):
        v = 0.8 + 0.4 * u
    else:
        fan_in = int(np.prod(shape[1:]))
        # Uniform with He variance 2 / fan_in.
        v = (u - 0.5) * 2.0 * np.sqrt(3.0) * np.sqrt(2.0 / fan_in)
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def main():
    # pytorch-fid builds torchvision's Inception3 with its patches, then loads the FID weights
    # from a URL: hand it the formula's instead.
    def weights(_url, **_kw):
        template = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        return {k: formula(k, tuple(v.shape)) for k, v in template.state_dict().items()
                if not k.endswith("num_batches_tracked")}

    fid.load_state_dict_from_url = weights
    model = fid.InceptionV3([3]).eval()

    # Two 61 x 83 images in [0, 1] (resized up to 299 by the model), from the same generator.
    images = uniform("images", 2 * 61 * 83).astype(np.float32).reshape(2, 1, 61, 83)
    rgb = torch.from_numpy(images).repeat(1, 3, 1, 1)
    with torch.no_grad():
        features = model(rgb)[0].flatten(1)
        resized = torch.nn.functional.interpolate(torch.from_numpy(images), size=(299, 299),
                                                  mode="bilinear", align_corners=False)
    save_file({"images": torch.from_numpy(images).contiguous(), "features": features.contiguous(),
               "resized_corner": resized[:, :, :16, :16].contiguous()},
              os.path.join(OUT, "inception_io.safetensors"))
    # A check the Rust side repeats: the formula's first values for one tensor.
    print("Conv2d_1a_3x3.conv.weight[:4] =", formula("Conv2d_1a_3x3.conv.weight", (32, 3, 3, 3)).flatten()[:4])
    print("features", features.shape, "mean", float(features.mean()), "max", float(features.max()))


if __name__ == "__main__":
    main()
