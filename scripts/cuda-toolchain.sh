#!/usr/bin/env bash
# What `cargo build --features cuda` (or `nccl`) needs, on a machine with no GPU and no CUDA install
# (this one, CI): NVIDIA's CUDA 13.0 toolkit wheels from PyPI (nvcc, headers, cuBLAS, cuRAND, NVRTC,
# runtime) and NCCL in a venv, the unversioned library names the linker asks for, and a stub libcuda.so. The driver
# library comes with a GPU's driver, not with the toolkit: the stub only lets the link succeed, and
# on the GPU machine the real libcuda.so.1 is loaded. 13.0, not newer: the binary must run on the
# GPU machines' driver (580, CUDA 13.0).
#
# Usage: eval "$(bash scripts/cuda-toolchain.sh [DIR])"   # then: cargo build --release --features cuda
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$(mkdir -p "${1:-target/cuda-toolchain}" && realpath "${1:-target/cuda-toolchain}")"
version="13.0.2"
log() { echo "cuda-toolchain: $*" >&2; }

if [ ! -x "$dir/venv/bin/python" ]; then
    python3 -m venv "$dir/venv"
fi
cu="$(echo "$dir"/venv/lib/python3*/site-packages/nvidia/cu13)"
if [ ! -x "$cu/bin/nvcc" ]; then
    log "installing the CUDA $version toolkit wheels (about 1.2 GB)"
    "$dir/venv/bin/pip" install --quiet \
        "cuda-toolkit[nvcc,crt,nvvm,cudart,cccl,cublas,curand,nvrtc]==$version"
fi
cu="$(echo "$dir"/venv/lib/python3*/site-packages/nvidia/cu13)"
# NCCL for `--features nccl` (data-parallel training over GPUs): 2.27, the oldest CUDA 13 build, so
# the binary loads beside any newer one a GPU machine's PyTorch brings.
nccl="$(dirname "$cu")/nccl"
if [ ! -d "$nccl/lib" ]; then
    log "installing NCCL 2.27.7"
    "$dir/venv/bin/pip" install --quiet "nvidia-nccl-cu13==2.27.7"
fi

# The wheels ship libfoo.so.N only; `-lfoo` looks for libfoo.so.
links="$dir/lib"
mkdir -p "$links"
for lib in "$cu"/lib/lib*.so.* "$nccl"/lib/lib*.so.*; do
    name="$(basename "$lib")"
    ln -sf "$lib" "$links/${name%%.so*}.so"
done

# The stub driver: every cu* function cudarc declares, under libcuda.so.1's soname, each answering
# CUDA_ERROR_NO_DEVICE (100) should the stub ever be loaded instead of a driver.
if [ ! -e "$links/libcuda.so" ]; then
    sys="$(cargo metadata --format-version 1 --features cuda --manifest-path crates/llm-cxr/Cargo.toml 2>/dev/null \
        | python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))')"
    sys="$(dirname "$sys")/src/driver/sys/mod.rs"
    [ -f "$sys" ] || { log "cudarc's driver bindings not found (cargo fetch --features cuda first)"; exit 1; }
    grep -ohE 'fn cu[A-Za-z0-9_]+\(' "$sys" | sort -u | sed -E 's/fn (.*)\(/int \1(void) { return 100; }/' > "$dir/libcuda-stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$links/libcuda.so" "$dir/libcuda-stub.c"
    log "stub libcuda.so with $(wc -l < "$dir/libcuda-stub.c") functions"
fi

"$cu/bin/nvcc" --version | grep -q "release 13.0" || { log "nvcc is not 13.0"; exit 1; }
echo "export PATH=\"$cu/bin:\$PATH\""
echo "export CUDA_HOME=\"$cu\""
echo "export LIBRARY_PATH=\"$links\${LIBRARY_PATH:+:\$LIBRARY_PATH}\""
echo "export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}"   # H100/H200 unless set: no GPU here to ask
