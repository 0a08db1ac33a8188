#!/usr/bin/env python3
"""Language-model parity fixtures for crates/cxr-lm/tests/parity.rs.

Builds small random GPT-NeoX and LLaMA models with HF transformers (every parameter randomised,
norms included, so that a swapped or ignored tensor shows), saves them the way users' checkpoints
come (GPT-NeoX: model.safetensors and a pytorch_model.bin copy; LLaMA: sharded safetensors with
their index) and writes, per model, the input ids, full logits and greedy continuations. It also
writes the ids of a corpus of report-like text under the GPT-NeoX-20B tokenizer with dolly-v2's
and LLM-CXR's added tokens, from the Python `tokenizers` package.

    python3 -m venv venv
    venv/bin/pip install torch==2.15.0 transformers==5.24.0 safetensors==0.8.0 tokenizers
    venv/bin/python scripts/reference/lm_fixture.py
"""
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "crates", "cxr-lm", "tests", "fixtures")
TOKENIZER = os.path.join(HERE, "..", "..", "..", "shared", "data", "tokenizers", "gpt-neox-20b-tokenizer.json")
VOCAB = 384
NEW_TOKENS = 10


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.08 * noise)


def write_io(model, name, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, 12), generator=g)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
        greedy = []
        for row in ids:
            out = model.generate(
                row[None], do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                eos_token_id=None, pad_token_id=0,
            )
            greedy.append(out[0, row.numel():])
        greedy = torch.stack(greedy)
    # The greedy test needs clear winners: report the smallest top-1 margin on the way.
    top2 = logits.topk(2, dim=-1).values
    print(f"{name}: min top-1 margin in the logits {float((top2[..., 0] - top2[..., 1]).min()):.4f}")
    save_file(
        {"input_ids": ids.to(torch.int64).contiguous(), "logits": logits.contiguous(),
         "greedy": greedy.to(torch.int64).contiguous()},
        os.path.join(OUT, f"{name}_io.safetensors"),
    )


def gpt_neox():
    cfg = GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=160, rotary_pct=0.25, rotary_emb_base=10000, max_position_embeddings=64,
        layer_norm_eps=1e-5, use_parallel_residual=True, hidden_act="gelu", tie_word_embeddings=False,
    )
    model = GPTNeoXForCausalLM(cfg).eval()
    randomise(model, 1)
    d = os.path.join(OUT, "gpt_neox_tiny")
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, safe_serialization=True)
    # The same weights as a PyTorch pickle, as older checkpoints (dolly-v2) ship them.
    b = os.path.join(OUT, "gpt_neox_tiny_bin")
    shutil.rmtree(b, ignore_errors=True)
    os.makedirs(b)
    shutil.copy(os.path.join(d, "config.json"), b)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(b, "pytorch_model.bin"))
    write_io(model, "gpt_neox_tiny", 11)

    # The sequential-residual variant (use_parallel_residual=False, as some pythia-like models).
    cfg.use_parallel_residual = False
    model = GPTNeoXForCausalLM(cfg).eval()
    randomise(model, 2)
    d = os.path.join(OUT, "gpt_neox_seq_tiny")
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, safe_serialization=True)
    write_io(model, "gpt_neox_seq_tiny", 12)


def llama():
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, rope_theta=100000.0, max_position_embeddings=64,
        rms_norm_eps=1e-5, tie_word_embeddings=False, hidden_act="silu",
    )
    model = LlamaForCausalLM(cfg).eval()
    randomise(model, 3)
    d = os.path.join(OUT, "llama_tiny")
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, safe_serialization=True, max_shard_size="200KB")
    write_io(model, "llama_tiny", 13)


def llama_scaled():
    # Llama 3.1's rope scaling, sized so that the tiny head's eight frequencies fall in all three
    # bands: kept (wavelength < 8), blended (8..32), divided by the factor (> 32).
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64,
        rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu",
        rope_parameters={
            "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
        },
    )
    model = LlamaForCausalLM(cfg).eval()
    randomise(model, 5)
    d = os.path.join(OUT, "llama_rope_llama3_tiny")
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, safe_serialization=True)
    write_io(model, "llama_rope_llama3_tiny", 17)


CORPUS = [
    "FINDINGS: PA and lateral views of the chest. There is a moderate right pleural effusion with adjacent atelectasis.",
    "IMPRESSION:\n1. No acute cardiopulmonary process.\n2. Stable cardiomegaly.",
    "Heart size is mildly enlarged. No pneumothorax. ET tube terminates 4.5 cm above the carina.",
    "Small left apical pneumothorax, decreased from ___ (previously 1.2 cm).",
    "Bibasilar opacities may reflect atelectasis; pneumonia cannot be excluded.",
    "Interval placement of a right PICC line with tip in the mid SVC.  No   focal consolidation.",
    "Compared to prior study dated 03/14/2019, the left lower lobe consolidation has resolved.",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nGenerate free-text radiology reports for the entered chest X-ray images.\n\nInput:\n<image>\n\n"
    "### Response:\nNo acute intrathoracic process.\n\n### End",
    "### Instruction:\nIs there a pleural effusion on the left?\n\n### Response:\nYes, a small one.",
    "Mild pulmonary vascular congestion ~ interstitial edema vs. atypical infection (clinical correlation advised).",
    "Degenerative changes of the thoracic spine; old healed fractures of the left 5th-7th ribs.",
    "Lungs: clear. Pleura: no effusion. Mediastinum: normal contour. Bones: unremarkable. \u00b0C \u00e9 \u2013 \u2264 5 mm",
    "\tTabs\tand\nnewlines\n\n\nand trailing spaces   ",
    "Sternotomy wires and a left-sided pacemaker with leads in the right atrium and ventricle are unchanged.",
]


def dolly_base_tokenizer():
    """GPT-NeoX-20B as dolly-v2 starts from it: ids 0-50276. The shared file also carries four added
    tokens at 50277-50280 (<|im_start|>, <|im_end|>, assistant, RWKV) that dolly's does not have."""
    with open(TOKENIZER) as f:
        doc = json.load(f)
    doc["added_tokens"] = [t for t in doc["added_tokens"] if t["id"] <= 50276]
    return Tokenizer.from_str(json.dumps(doc))


def tokenizer():
    tok = dolly_base_tokenizer()
    # dolly-v2's keys (ids 50277-50279), then LLM-CXR's "### Response:\n" (50280).
    tok.add_special_tokens([AddedToken(t, special=True) for t in ["### End", "### Instruction:", "### Response:"]])
    tok.add_special_tokens([AddedToken("### Response:\n", special=True)])
    ids = [tok.encode(t).ids for t in CORPUS]
    with open(os.path.join(OUT, "tokenizer_ids.json"), "w") as f:
        json.dump({"vocab_size_with_added": tok.get_vocab_size(True),
                   "key_ids": [tok.token_to_id(t) for t in ["### End", "### Instruction:", "### Response:", "### Response:\n"]],
                   "texts": CORPUS, "ids": ids}, f, indent=0)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    gpt_neox()
    llama()
    llama_scaled()
    tokenizer()
