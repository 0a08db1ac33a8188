"""Random weights for a Hugging Face model directory that has only its config (and tokenizer):
transformers' own initialisation of the architecture config.json names, written as
model.safetensors beside it. For timing runs that need a model's shape, not its values (the
device check times the main job's fine-tuning this way: the base model's weights are too large
to carry to the GPU machine, and its step time does not depend on them).

Usage: python3 random_weights.py MODEL_DIR
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_model
from transformers import AutoConfig, AutoModelForCausalLM


def main():
    model_dir = Path(sys.argv[1])
    config = AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # save_model drops the second name of a tied tensor (a tied head), as transformers does.
    save_model(model, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    print(f"{model_dir}: {sum(p.numel() for p in model.parameters()):,} random weights")


if __name__ == "__main__":
    main()
