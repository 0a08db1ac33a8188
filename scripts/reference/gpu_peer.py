"""PyTorch eager on one GPU, the reference for llm-cxr's GPU throughput (docs/gpu.md).

The same measurements as our benches with BENCH_DEVICE=cuda:0, on the same random GPT-NeoX shapes
(GptNeoxConfig::pythia_like: rotary 0.25, parallel residual, exact GELU, untied head):
- training (crates/cxr-instruct/benches/train_step.rs): one step at batch 1 over 512 tokens, loss
  on every next token, backward, AdamW; two warm-up steps, the median of --repeats; tokens/s.
- generation (crates/cxr-lm/benches/lm.rs): a 300-token prompt, then 256 greedy tokens with the KV
  cache; decode tokens/s = 255 / (time from token 1 to token 256).
f32 by default, as ours; eager attention. --autocast bfloat16 trains f32 weights with bf16 products
(torch.autocast), as `llm-cxr train --precision bf16` does; --only picks one of the two measurements.
Prints one JSON object (and writes it to --out).
Needs torch (CUDA) and transformers; no weights are downloaded.
"""

import argparse
import json
import statistics
import time

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
from transformers.generation.streamers import BaseStreamer

SHAPES = {"70m": (512, 6, 8), "410m": (1024, 24, 16), "3b": (2560, 32, 32)}
VOCAB = 50304 + 1024 + 8
SEQ, PROMPT, NEW = 512, 300, 256


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_for(shape, dtype, device):
    hidden, layers, heads = SHAPES[shape]
    config = GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=4 * hidden, rotary_pct=0.25,
        rotary_emb_base=10000, max_position_embeddings=2048, layer_norm_eps=1e-5,
        use_parallel_residual=True, hidden_act="gelu", tie_word_embeddings=False,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(config).to(device=device, dtype=dtype)


def ids(n, device):
    return torch.tensor([[(i * 7919 + 13) % (VOCAB - 1) + 1 for i in range(n)]], device=device)


def train(shape, dtype, device, repeats, autocast=None):
    model = model_for(shape, dtype, device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    x = ids(SEQ, device)
    times = []
    for k in range(repeats + 2):
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if k >= 2:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    del model, opt
    return {"step_s": step, "step_s_all": times, "tokens_per_s": SEQ / step, "peak_mb": peak}


class Stamps(BaseStreamer):
    """Times of the tokens generate() emits (its first call is the prompt)."""

    def __init__(self, device):
        self.device, self.times, self.prompt_seen = device, [], False

    def put(self, value):
        if self.prompt_seen:
            sync(self.device)
            self.times.append(time.perf_counter())
        self.prompt_seen = True

    def end(self):
        pass


@torch.no_grad()
def generate(shape, dtype, device, repeats):
    model = model_for(shape, dtype, device).eval()
    x = ids(PROMPT, device)
    decode, prefill = [], []
    for k in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        model(input_ids=x, use_cache=True)
        sync(device)
        if k > 0:
            prefill.append((time.perf_counter() - t0) * 1e3)
        stamps = Stamps(device)
        model.generate(
            input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=NEW,
            min_new_tokens=NEW, do_sample=False, use_cache=True, streamer=stamps,
            pad_token_id=0,
        )
        if k > 0:
            decode.append((NEW - 1) / (stamps.times[-1] - stamps.times[0]))
    del model
    return {"prefill_ms": statistics.median(prefill), "decode_tok_s": statistics.median(decode),
            "decode_tok_s_samples": decode}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="410m,3b")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--autocast", choices=("bfloat16", "float16"))
    ap.add_argument("--only", choices=("train", "generate"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args()
    dtype, device = getattr(torch, a.dtype), torch.device(a.device)
    autocast = getattr(torch, a.autocast) if a.autocast else None
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = {"torch": torch.__version__, "gpu": gpu, "dtype": a.dtype, "autocast": a.autocast}
    for shape in a.shapes.split(","):
        out[shape] = {}
        if a.only != "generate":
            out[shape]["train"] = train(shape, dtype, device, a.repeats, autocast)
        if a.only != "train":
            out[shape]["generate"] = generate(shape, dtype, device, a.repeats)
    text = json.dumps(out)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
