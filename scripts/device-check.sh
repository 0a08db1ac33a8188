#!/usr/bin/env bash
# The GPU check (docs/gpu.md), in two halves:
#
#   bash scripts/device-check.sh build   # here: CUDA (and NCCL) builds of the llm-cxr binary, of
#                                        # crates/llm-cxr/tests/device.rs and of the LM and
#                                        # training-step benches, stripped and xz-compressed into
#                                        # .device/ (git-ignored), with the PyTorch peer and, given
#                                        # DEVICE_CHECK_DEMO (a finished demo run's folder), the
#                                        # main job's training shards and model config
#   bash scripts/device-check.sh run     # on the GPU machine (CUDA 13 driver, PyTorch, no Rust):
#                                        # the device tests on cuda:0, then our throughput and
#                                        # PyTorch eager's on the same GPU, then the main job's
#                                        # fine-tuning timed (f32, bf16); logs and JSON in $OUT
#
# The GPU machine needs no toolchain: the CUDA libraries the binaries link (cuBLAS, cuRAND, the
# runtime) come from PyTorch's nvidia wheels there, the driver's libcuda.so.1 from the system.
# `run` takes DEVICE_CHECK_SHAPES (default 410m,3b) for the throughput part, or `tests` alone;
# DEVICE_CHECK_DEVICE (default cuda:0; `cpu` is a dry run of the whole script without a GPU), and
# DEVICE_CHECK_DEMO_STEPS (default: the recorded run's) for the main job's fine-tuning.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.device

# The executable of each named test or bench target in cargo's JSON messages on stdin.
executables() {
    python3 -c '
import json, sys
want = set(sys.argv[1:])
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] in want and m.get("executable"):
        print(m["target"]["name"], m["executable"])' "$@"
}

case "${1:-}" in
build)
    env="$(bash scripts/cuda-toolchain.sh "${CUDA_TOOLCHAIN:-target/cuda-toolchain}")"
    eval "$env"
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda}"
    rm -rf "$dir" && mkdir -p "$dir"
    # One build of the four targets: the feature turns on candle's CUDA (and NCCL) for all.
    cargo build --release --locked -p llm-cxr -p cxr-lm -p cxr-instruct --features llm-cxr/nccl \
        --bin llm-cxr --test device --bench lm --bench train_step --message-format=json \
        | executables llm-cxr device lm train_step > "$dir/targets"
    [ "$(wc -l < "$dir/targets")" -eq 4 ] || { echo "device-check: a target was not built" >&2; exit 1; }
    # xz: a third of gzip's size for these binaries, so that all four fit in one carry.
    while read -r name exe; do
        strip -o "$dir/$name" "$exe"
        xz -9 -T0 -f "$dir/$name"
    done < "$dir/targets"
    rm "$dir/targets"
    cp scripts/reference/gpu_peer.py scripts/reference/random_weights.py "$dir/"
    # The main job's fine-tuning, timed there: its training shards, its model's config and
    # tokenizer (the weights are made there, random) and its recorded command line, from a
    # finished run of `llm-cxr demo` (DEVICE_CHECK_DEMO=its output folder).
    if [ -n "${DEVICE_CHECK_DEMO:-}" ]; then
        demo="$DEVICE_CHECK_DEMO"
        for f in data-train/manifest.json lm-init/config.json stages/train-100.json stages/train-200.json; do
            [ -f "$demo/$f" ] || { echo "device-check: $demo/$f missing (a finished demo run?)" >&2; exit 1; }
        done
        tar -C "$demo" -cJf "$dir/demo.tar.xz" data-train stages/train-100.json stages/train-200.json \
            $(cd "$demo" && ls lm-init/* | grep -v safetensors)
    fi
    ls -l "$dir"
    du -sh "$dir"
    echo "device-check: carry $dir, then run: bash scripts/device-check.sh run"
    ;;
run)
    for f in llm-cxr device lm train_step; do
        [ -f "$dir/$f.xz" ] || { echo "device-check: $dir/$f.xz missing (build it first)" >&2; exit 1; }
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
            "$dir/$f.xz" "/tmp/$f" && chmod +x "/tmp/$f"
    done
    # cuBLAS 13, cuRAND, cudart 13, NCCL: PyTorch's nvidia wheels, else the toolkit's folder.
    libs="$(python3 -c 'import nvidia, os; print(":".join(d for p in nvidia.__path__ for d in (os.path.join(p, "cu13", "lib"), os.path.join(p, "nccl", "lib")) if os.path.isdir(d)))' 2>/dev/null || true)"
    [ -d /usr/local/cuda/lib64 ] && libs="${libs:+$libs:}/usr/local/cuda/lib64"
    export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    if ldd /tmp/device | grep "not found"; then
        echo "device-check: libraries missing (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)" >&2
        exit 1
    fi
    out="${OUT:-/tmp}"
    device="${DEVICE_CHECK_DEVICE:-cuda:0}"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
    set -o pipefail
    echo "== device tests"
    CXR_TEST_DEVICE="$device" CXR_REPO="$PWD" \
        /tmp/device --test-threads 1 --nocapture 2>&1 | tee "$out/device-tests.log"
    [ "${2:-}" = tests ] && exit 0
    shapes="${DEVICE_CHECK_SHAPES:-410m,3b}"
    gen_phases="$(echo "$shapes" | sed -E 's/([^,]+)/\1-f32/g')"
    echo "== llm-cxr: training step ($shapes; f32, then bf16 products)"
    BENCH_DEVICE="$device" TRAIN_BENCH_PHASES="$shapes" /tmp/train_step > "$out/ours-train.json"
    BENCH_DEVICE="$device" TRAIN_BENCH_PHASES="$shapes" TRAIN_BENCH_PRECISION=bf16 \
        /tmp/train_step > "$out/ours-train-bf16.json"
    echo "== llm-cxr: generation ($gen_phases)"
    BENCH_DEVICE="$device" LM_BENCH_PHASES="$gen_phases" LM_BENCH_REPEATS=3 /tmp/lm > "$out/ours-generate.json"
    echo "== PyTorch eager ($shapes; f32, then training under bf16 autocast)"
    python3 "$dir/gpu_peer.py" --shapes "$shapes" --device "$device" --out "$out/torch.json" > /dev/null
    python3 "$dir/gpu_peer.py" --shapes "$shapes" --device "$device" --autocast bfloat16 --only train \
        --out "$out/torch-bf16.json" > /dev/null
    demo_s=()
    if [ -f "$dir/demo.tar.xz" ]; then
        echo "== the main job's fine-tuning (full profile, its shards, random weights of its model's shape)"
        rm -rf /tmp/demo && mkdir -p /tmp/demo && tar -C /tmp/demo -xJf "$dir/demo.tar.xz"
        python3 "$dir/random_weights.py" /tmp/demo/lm-init
        for precision in f32 bf16; do
            # The recorded command of the stage that ends the fine-tuning, from step 0, here.
            mapfile -t cmd < <(python3 -c '
import json, sys
c = json.load(open("/tmp/demo/stages/train-200.json"))["command"]
paths = {"--model": "/tmp/demo/lm-init", "--data": "/tmp/demo/data-train", "--out": sys.argv[1]}
if sys.argv[2]:
    paths["--steps"] = sys.argv[2]
out = []
for i, a in enumerate(c):
    if a in ("--device", "--precision") or (i and c[i - 1] in ("--device", "--precision")):
        continue  # given below
    out.append(paths.get(c[i - 1], a) if i else a)
print("\n".join(out))' "/tmp/demo/out-$precision" "${DEVICE_CHECK_DEMO_STEPS:-}")
            start=$(date +%s.%N)
            /tmp/llm-cxr "${cmd[@]}" --device "$device" --precision "$precision" 2>&1 | tail -2 | tee "$out/demo-$precision.log"
            demo_s+=("$(python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$start" "$(date +%s.%N)")")
            cp "/tmp/demo/out-$precision/train-log.csv" "$out/demo-$precision-train-log.csv"
        done
    fi
    python3 - "$out" "$shapes" "${demo_s[@]}" <<'EOF' | tee "$out/summary.json"
import json, sys
out, shapes = sys.argv[1], sys.argv[2].split(",")
load = lambda name: json.load(open(f"{out}/{name}.json"))
train, train16 = load("ours-train"), load("ours-train-bf16")
gen = load("ours-generate")["results"]
torch, torch16 = load("torch"), load("torch-bf16")
rows = {}
for s in shapes:
    ours_t, ours_t16, ours_g = train[s]["tokens_per_s"], train16[s]["tokens_per_s"], gen[f"{s}-f32"]["decode_tok_s"]
    peer_t, peer_t16 = torch[s]["train"]["tokens_per_s"], torch16[s]["train"]["tokens_per_s"]
    peer_g = torch[s]["generate"]["decode_tok_s"]
    rows[s] = {"train_tok_s": ours_t, "torch_train_tok_s": peer_t, "train_ratio": ours_t / peer_t,
               "bf16_train_tok_s": ours_t16, "torch_autocast_train_tok_s": peer_t16,
               "bf16_train_ratio": ours_t16 / peer_t16,
               "decode_tok_s": ours_g, "torch_decode_tok_s": peer_g, "decode_ratio": ours_g / peer_g}
summary = {"gpu": torch["gpu"], "torch": torch["torch"], "shapes": rows}
if len(sys.argv) > 3:
    # The same stages' wall time on the CPU where the demo ran (steps 1-100, then 101-200).
    cpu = sum(json.load(open(f"/tmp/demo/stages/train-{n}.json"))["seconds"] for n in (100, 200))
    summary["demo_fine_tuning_s"] = {"f32": float(sys.argv[3]), "bf16": float(sys.argv[4]),
                                     "recorded_cpu": cpu, "goal": 600}
print(json.dumps(summary, indent=1))
EOF
    ;;
*)
    echo "usage: bash scripts/device-check.sh build | run [tests]" >&2
    exit 2
    ;;
esac
