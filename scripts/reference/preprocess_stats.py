#!/usr/bin/env python3
"""Reference statistics of LLM-CXR's preprocessing on every image in ../shared/data.

Writes crates/cxr-image/tests/fixtures/shared_data_preprocess.tsv, which the Rust test
`shared_data_images_match_pil_reference` reads. Run from the repository root:

    python3 -m pip install pillow==13.0.0   # the version that wrote the committed fixture
    python3 scripts/reference/preprocess_stats.py

The pipeline is LLM-CXR's `encode_cxr_all.py` (brief section 2) with the image reduced to gray
first, as llm-cxr does: PIL `convert("L")` (ITU-R 601 luma), resize the short side to 256 with
LANCZOS (torchvision `Resize(256)` sizing: long side = int(256 * long / short)), center crop 256
(offset = round((side - 256) / 2)), then x / 255 * 2 - 1.
"""
import glob
import os

from PIL import Image

N = 256
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
DATA = os.path.join(ROOT, "..", "shared", "data")
OUT = os.path.join(ROOT, "crates", "cxr-image", "tests", "fixtures", "shared_data_preprocess.tsv")


def preprocess(path):
    im = Image.open(path)
    width, height = im.size
    im = im.convert("L")
    if width <= height:
        size = (N, int(N * height / width))
    else:
        size = (int(N * width / height), N)
    im = im.resize(size, Image.LANCZOS)
    left = int(round((size[0] - N) / 2.0))
    top = int(round((size[1] - N) / 2.0))
    im = im.crop((left, top, left + N, top + N))
    values = [v / 255.0 * 2.0 - 1.0 for v in im.tobytes()]
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    return width, height, mean, std


def main():
    files = sorted(glob.glob(os.path.join(DATA, "covid-cxr-ccby", "images", "*")))
    files += sorted(glob.glob(os.path.join(DATA, "nih-tbx-samples", "*.png")))
    with open(OUT, "w") as f:
        f.write("file\twidth\theight\tmean\tstd\n")
        for path in files:
            w, h, mean, std = preprocess(path)
            rel = os.path.relpath(path, DATA)
            f.write(f"{rel}\t{w}\t{h}\t{mean:.6f}\t{std:.6f}\n")
    print(f"wrote {len(files)} rows to {OUT}")


if __name__ == "__main__":
    main()
