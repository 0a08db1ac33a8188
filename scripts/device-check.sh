#!/usr/bin/env bash
# The GPU check (docs/gpu.md), in two halves:
#
#   bash scripts/device-check.sh build   # here: a CUDA build of crates/llm-cxr/tests/device.rs,
#                                        # stripped and gzipped into .device/ (git-ignored)
#   bash scripts/device-check.sh run     # on the GPU machine (CUDA 13 driver, PyTorch, no Rust):
#                                        # the device tests on cuda:0, a log in $OUT if set
#
# The GPU machine needs no toolchain: the CUDA libraries the binary links (cuBLAS, cuRAND, the
# runtime) come from PyTorch's nvidia wheels there, the driver's libcuda.so.1 from the system.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.device

case "${1:-}" in
build)
    eval "$(bash scripts/cuda-toolchain.sh "${CUDA_TOOLCHAIN:-target/cuda-toolchain}")"
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda}"
    exe="$(cargo test --release --locked -p llm-cxr --features cuda --test device --no-run \
        --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "device" and m.get("executable"):
        print(m["executable"])')"
    [ -x "$exe" ] || { echo "device-check: no test binary built" >&2; exit 1; }
    mkdir -p "$dir"
    strip -o "$dir/device-tests" "$exe"
    gzip -f -9 "$dir/device-tests"
    ls -l "$dir"
    echo "device-check: carry $dir, then run: bash scripts/device-check.sh run"
    ;;
run)
    [ -f "$dir/device-tests.gz" ] || { echo "device-check: $dir/device-tests.gz missing (build it first)" >&2; exit 1; }
    gunzip -c "$dir/device-tests.gz" > /tmp/device-tests && chmod +x /tmp/device-tests
    libs="$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))')"
    export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    log="${OUT:-/tmp}/device-check.log"
    set -o pipefail
    CXR_TEST_DEVICE="${CXR_TEST_DEVICE:-cuda:0}" CXR_REPO="$PWD" \
        /tmp/device-tests --test-threads 1 --nocapture 2>&1 | tee "$log"
    ;;
*)
    echo "usage: bash scripts/device-check.sh build|run" >&2
    exit 2
    ;;
esac
