#!/usr/bin/env python3
"""DenseNet parity fixture for crates/cxr-classifier/tests/parity.rs.

A small DenseNet (growth 8, blocks 2-2-2-2, 16 initial features, bn_size 2, 1 input channel,
18 outputs) with random weights and random BatchNorm statistics, in torchvision's / torchxrayvision's
module tree and tensor names, written as safetensors with an input batch, the logits and
`features2` in eval mode, and the logits in train mode (batch statistics).

torchvision itself cannot be installed beside torch 2.15 from PyPI here, so the module is written out
below exactly as torchvision.models.densenet defines it (`_DenseLayer`, `_DenseBlock`, `_Transition`,
`features.conv0/norm0/relu0/pool0`, `features.norm5`, `classifier`), with torchxrayvision's
`features2` (ReLU + adaptive average pool).

    python3 -m venv venv && venv/bin/pip install torch==2.15.0 safetensors==0.8.0
    venv/bin/python scripts/reference/densenet_fixture.py
"""
import os
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "cxr-classifier", "tests", "fixtures")


class DenseLayer(nn.Module):
    def __init__(self, num_input_features, growth_rate, bn_size):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)

    def forward(self, x):
        y = self.conv1(self.relu1(self.norm1(x)))
        y = self.conv2(self.relu2(self.norm2(y)))
        return torch.cat([x, y], 1)


class Transition(nn.Sequential):
    def __init__(self, num_input_features, num_output_features):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    def __init__(self, growth_rate, block_config, num_init_features, bn_size, in_channels, num_classes):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(in_channels, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = nn.Sequential()
            for j in range(num_layers):
                block.add_module("denselayer%d" % (j + 1), DenseLayer(num_features + j * growth_rate, growth_rate, bn_size))
            self.features.add_module("denseblock%d" % (i + 1), block)
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module("transition%d" % (i + 1), Transition(num_features, num_features // 2))
                num_features = num_features // 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)

    def features2(self, x):
        return torch.flatten(F.adaptive_avg_pool2d(F.relu(self.features(x)), (1, 1)), 1)

    def forward(self, x):
        return self.classifier(self.features2(x))


def main():
    torch.manual_seed(0)
    model = DenseNet(8, (2, 2, 2, 2), 16, 2, 1, 18)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.2 if p.dim() > 1 else 0.5) + (1.0 if name.endswith("norm1.weight") else 0.0))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.3)
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
    x = (torch.rand(2, 1, 64, 64) * 2 - 1) * 1024
    # Saved before the train-mode pass, which updates the running statistics.
    weights = {k: v.clone().contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    model.eval()
    with torch.no_grad():
        logits = model(x)
        feats = model.features2(x)
    model.train()
    with torch.no_grad():
        logits_train = model(x)
    os.makedirs(OUT, exist_ok=True)
    save_file(weights, os.path.join(OUT, "densenet_small.safetensors"))
    save_file({"input": x, "logits_eval": logits, "features2_eval": feats, "logits_train": logits_train},
              os.path.join(OUT, "densenet_small_io.safetensors"))
    # The same weights as PyTorch files: a plain state_dict and a Lightning-style checkpoint.
    torch.save(weights, os.path.join(OUT, "densenet_small_state_dict.pt"))
    torch.save({"state_dict": weights, "epoch": 3}, os.path.join(OUT, "densenet_small_lightning.ckpt"))
    print("wrote", OUT, sum(v.numel() for v in weights.values()), "weights")


if __name__ == "__main__":
    main()
