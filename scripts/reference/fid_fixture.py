#!/usr/bin/env python3
"""FID parity fixture for crates/cxr-eval/tests/fid_parity.rs.

Two pairs of feature sets (300 x 32, float32) and their Frechet distance computed exactly as
pytorch-fid does (np.cov with N-1, scipy.linalg.sqrtm of sigma1 @ sigma2, real part).

    python3 -m venv venv && venv/bin/pip install numpy==2.4.6 scipy==1.17.1 safetensors==0.8.0 torch==2.15.0
    venv/bin/python scripts/reference/fid_fixture.py
"""
import json
import os

import numpy as np
from scipy import linalg
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "cxr-eval", "tests", "fixtures")


def fid(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def main():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(32, 32)) / 6
    real = rng.normal(size=(300, 32)).astype(np.float32)
    close = (real @ (np.eye(32) + 0.1 * mix) + 0.05).astype(np.float32)
    far = (rng.normal(size=(300, 32)) @ mix * 3 + 1.0).astype(np.float32)
    save_file({"real": real, "close": close, "far": far}, os.path.join(OUT, "fid_features.safetensors"))
    values = {"real_close": fid(real, close), "real_far": fid(real, far), "real_real": fid(real, real),
              # Fewer samples than dimensions (20 x 20 <= 32 x 32): llm-cxr's sample-space path.
              "few_real_far": fid(real[:20], far[:20])}
    with open(os.path.join(OUT, "fid_reference.json"), "w") as f:
        json.dump(values, f, indent=1)
    print(values)


if __name__ == "__main__":
    main()
