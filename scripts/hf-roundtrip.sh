#!/usr/bin/env bash
# The Hugging Face round trip, end to end on CPU (docs/hugging-face.md): from a finished main job
# (`llm-cxr demo --out DEMO`), build its training data again with --hf, fine-tune its `lm init`
# folder with transformers' Trainer (scripts/hf-finetune.py), kill the run once and resume it, then
# bring the model back to `report`, `ask`, `draw`, `eval vqa` and `serve`.
#
# Usage: PYTHON=venv/bin/python bash scripts/hf-roundtrip.sh DEMO OUT [STEPS]
#   PYTHON: a Python with torch, transformers, datasets and accelerate (default python3)
#   LLMCXR: the llm-cxr binary (default target/release/llm-cxr)
#   DEEPSPEED: a DeepSpeed config (scripts/deepspeed-zero3.json): the Trainer runs under DeepSpeed,
#     one process; without a GPU on DeepSpeed's CPU accelerator (DS_ACCELERATOR=cpu, gloo), which
#     needs `deepspeed` in PYTHON and ninja + a C++ compiler (it builds its shared-memory op)
set -euo pipefail
usage="usage: hf-roundtrip.sh DEMO OUT [STEPS (even, >= 2)]"
demo="$(realpath "${1:?$usage}")"
mkdir -p "${2:?$usage}"
out="$(realpath "$2")"
steps="${3:-40}"
[ "$steps" -ge 2 ] && [ $((steps % 2)) -eq 0 ] || { echo "$usage" >&2; exit 2; }
py="${PYTHON:-python3}"
bin="$(realpath "${LLMCXR:-$(dirname "$0")/../target/release/llm-cxr}")"
cd "$(dirname "$0")/.."
vqgan="$demo/vqgan/vqgan.safetensors"
for f in "$demo/stages/data-build.json" "$demo/lm-init/config.json" "$vqgan" "$demo/eval/questions.csv"; do
    [ -e "$f" ] || { echo "hf-roundtrip: $f is missing: DEMO must be a finished main job" >&2; exit 1; }
done
step() { echo "== $*" >&2; }

step "1. the main job's data build again, with --hf"
command_line="$("$py" - "$demo/stages/data-build.json" <<'PY'
import json, sys
cmd = json.load(open(sys.argv[1]))["command"]
i = cmd.index("--out")
del cmd[i:i + 2]  # the output folder is ours
print("\n".join(cmd))
PY
)"
mapfile -t build <<< "$command_line"
"$bin" "${build[@]}" --hf --out "$out/data"

step "2. fine-tune with transformers' Trainer; killed after its first checkpoint, then resumed"
half=$((steps / 2))
finetune=("$py" scripts/hf-finetune.py --model "$demo/lm-init" --data "$out/data" --out "$out/hf"
    --steps "$steps" --lr 2e-4 --warmup 10 --micro-batch 4 --save-steps "$half" --seed 1)
if [ -n "${DEEPSPEED:-}" ]; then
    finetune+=(--deepspeed "$(realpath "$DEEPSPEED")")
    # One process, no launcher: the rendezvous a launcher would set; the CPU accelerator when
    # there is no GPU, and the Python's bin (ninja) on PATH for its op build.
    export MASTER_ADDR=127.0.0.1 MASTER_PORT="${MASTER_PORT:-29517}" RANK=0 LOCAL_RANK=0 WORLD_SIZE=1
    "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
        || export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
    PATH="$(dirname "$py"):$PATH"
fi
rm -rf "$out/hf"
"${finetune[@]}" > "$out/finetune-1.log" 2>&1 &
pid=$!
trap 'kill -9 $pid 2>/dev/null || true' EXIT
mark="$out/hf/checkpoints/checkpoint-$half/checkpoint-complete"
for _ in $(seq 3600); do
    [ -e "$mark" ] || ! kill -0 $pid 2>/dev/null && break
    sleep 0.5
done
kill -9 $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
[ -e "$mark" ] || { cat "$out/finetune-1.log" >&2; echo "hf-finetune never marked checkpoint $half" >&2; exit 1; }
# A later checkpoint cut off by a kill while it was written: no mark, so the resume passes it over.
mkdir -p "$out/hf/checkpoints/checkpoint-$((half + 1))"
echo partial > "$out/hf/checkpoints/checkpoint-$((half + 1))/model.safetensors"
"${finetune[@]}" > "$out/finetune-2.log" 2>&1 || { cat "$out/finetune-2.log" >&2; exit 1; }
grep -q "resuming from .*/checkpoint-$half\$" "$out/finetune-2.log" \
    || { echo "the second run did not resume from checkpoint $half" >&2; exit 1; }
grep -E "resuming|wrote" "$out/finetune-2.log" >&2
model="$out/hf/model"

step "3. report, ask and draw with the model the Trainer wrote"
mapfile -t images < <(find "$demo/phantoms/files" -name '*.jpg' | sort | head -4)
"$bin" report "${images[@]}" --model "$model" --vqgan "$vqgan" --temperature 0 \
    --max-new-tokens 80 --out "$out/reports.csv"
head -20 "$demo/eval/questions.csv" > "$out/questions.csv"
"$bin" ask --from "$out/questions.csv" --model "$model" --vqgan "$vqgan" --temperature 0 \
    --max-new-tokens 24 --out "$out/answers.csv"
"$bin" draw "Large right pleural effusion." "No acute cardiopulmonary process." \
    --model "$model" --vqgan "$vqgan" --seed 1 --out "$out/draws"

step "4. eval vqa on its answers"
"$bin" eval vqa "$out/answers.csv" --model "hf-finetune, $steps steps" --out "$out/eval-vqa"

step "5. serve it and ask for a report over HTTP"
"$bin" serve --model "$model" --vqgan "$vqgan" --port 0 > "$out/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
port=""
for _ in $(seq 240); do
    kill -0 $server 2>/dev/null || break
    port=$(grep -oE 'serving on http://127\.0\.0\.1:[0-9]+' "$out/serve.log" | head -1 | cut -d: -f3 || true)
    [ -n "$port" ] && curl -sf "http://127.0.0.1:$port/health" > /dev/null && break
    port=""
    sleep 0.5
done
[ -n "$port" ] || { cat "$out/serve.log" >&2; echo "serve did not come up" >&2; exit 1; }
curl -sf -F "image=@${images[0]}" -F max_tokens=40 -F temperature=0 \
    "http://127.0.0.1:$port/v1/report" > "$out/served-report.json"
kill $server
echo "hf-roundtrip: done; outputs under $out" >&2
