#!/usr/bin/env python3
"""Fixture for crates/cxr-lm/tests/parity.rs: a model fine-tuned by scripts/hf-finetune.py comes back.

Makes a small random LLaMA as an `lm init` folder (config, weights, a word-level tokenizer.json),
writes data in the Hugging Face form of `llm-cxr data build --hf` (manifest.json naming
hf/shard-00000.jsonl; rows of input_ids, labels with -100 before the response, task, source),
runs scripts/hf-finetune.py on it for a few steps (the script itself, as a user runs it), and
keeps the model folder it writes, plus a bf16 copy of the same weights (what ZeRO-3 saves with
bf16 on). Per folder it writes input ids, the full logits, greedy continuations, and the logits of
the model before training (the test checks that training moved them); and the data's rows with
the loss transformers computes on them through the script's collator.

    python3 -m venv venv
    venv/bin/pip install torch==2.15.0 transformers==5.24.0 safetensors==0.8.0 datasets accelerate
    venv/bin/python scripts/reference/hf_trainer_fixture.py
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..", "..")
OUT = os.path.join(REPO, "crates", "cxr-lm", "tests", "fixtures")
VOCAB = 384
NEW_TOKENS = 8


def lm_init(folder):
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64,
        rms_norm_eps=1e-5, tie_word_embeddings=False, hidden_act="silu", rope_theta=10000.0,
    )
    torch.manual_seed(7)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape)
            p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.08 * noise)
    model.save_pretrained(folder, safe_serialization=True)
    vocab = {f"t{i}": i for i in range(VOCAB)}
    Tokenizer(models.WordLevel(vocab, unk_token="t0")).save(os.path.join(folder, "tokenizer.json"))
    return model


def hf_data(folder):
    g = torch.Generator().manual_seed(3)
    os.makedirs(os.path.join(folder, "hf"))
    rows = []
    for k in range(16):
        ids = torch.randint(0, VOCAB, (int(torch.randint(12, 24, (1,), generator=g)),), generator=g).tolist()
        start = 6
        labels = [-100] * start + ids[start:]
        rows.append({"input_ids": ids, "labels": labels, "task": "vqa", "source": f"image-{k}"})
    with open(os.path.join(folder, "hf", "shard-00000.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump({"shards": [], "hf_shards": ["hf/shard-00000.jsonl"]}, f)


def write_io(model, name, before):
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(0, VOCAB, (2, 10), generator=g)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
        start = before(input_ids=ids).logits.float()
        greedy = torch.stack([
            model.generate(row[None], do_sample=False, max_new_tokens=NEW_TOKENS,
                           min_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=0)[0, row.numel():]
            for row in ids
        ])
    top2 = logits.topk(2, dim=-1).values
    print(f"{name}: min top-1 margin {float((top2[..., 0] - top2[..., 1]).min()):.4f}, "
          f"moved by training {float((logits - start).abs().max()):.4f}")
    save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous(),
               "greedy": greedy.contiguous(), "logits_before": start.contiguous()},
              os.path.join(OUT, f"{name}_io.safetensors"))


def write_trainer_loss(model, data):
    """The data's rows and the loss transformers computes on them, batched by the script's own
    collator: what the Trainer minimises, for the test that `llm-cxr train`'s loss is the same."""
    spec = importlib.util.spec_from_file_location("hf_finetune", os.path.join(REPO, "scripts", "hf-finetune.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with open(os.path.join(data, "hf", "shard-00000.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    batch = script.PadCollator(0)(rows)
    with torch.no_grad():
        loss = float(model(**batch).loss)
    print(f"trainer loss on the {len(rows)} rows: {loss:.6f}")
    with open(os.path.join(OUT, "llama_trainer_rows.json"), "w") as f:
        json.dump({"trainer_loss": loss, "rows": rows}, f)


def main():
    work = tempfile.mkdtemp()
    init, data, run = (os.path.join(work, d) for d in ["lm-init", "data", "run"])
    before = lm_init(init)
    hf_data(data)
    subprocess.run([sys.executable, os.path.join(REPO, "scripts", "hf-finetune.py"),
                    "--model", init, "--data", data, "--out", run, "--steps", "6", "--lr", "3e-2",
                    "--warmup", "1", "--micro-batch", "4", "--save-steps", "3"], check=True)
    trained = os.path.join(run, "model")
    fp32 = os.path.join(OUT, "llama_trainer_tiny")
    shutil.rmtree(fp32, ignore_errors=True)
    shutil.copytree(trained, fp32)
    os.remove(os.path.join(fp32, "training_args.bin"))  # a pickle of the run's arguments; not read
    model = AutoModelForCausalLM.from_pretrained(fp32, dtype=torch.float32).eval()
    write_io(model, "llama_trainer_tiny", before)
    write_trainer_loss(model, data)
    # The same weights rounded to bf16, saved as ZeRO-3 saves them with bf16 on.
    bf16 = os.path.join(OUT, "llama_trainer_bf16_tiny")
    shutil.rmtree(bf16, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(bf16, safe_serialization=True)
    shutil.copy(os.path.join(fp32, "tokenizer.json"), bf16)
    # Loaded afresh in f32 (a round trip of the module would round its rope frequencies too).
    model = AutoModelForCausalLM.from_pretrained(bf16, dtype=torch.float32).eval()
    write_io(model, "llama_trainer_bf16_tiny", before)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
