#!/usr/bin/env python3
"""Fine-tunes an `llm-cxr lm init` folder with transformers' Trainer (optionally under DeepSpeed),
on the Hugging Face form of `llm-cxr data build --hf`, and writes a model folder that `llm-cxr
report`, `draw`, `ask`, `eval` and `serve` load as they load one of `llm-cxr train`.

For runs larger than one machine does well (LLM-CXR: ZeRO-3, bf16, 8 GPUs). The product does not
need Python; this script is the bridge. docs/hugging-face.md has the recipe and what was tested.

    python3 -m venv venv
    venv/bin/pip install torch transformers datasets accelerate   # + deepspeed on GPU machines
    venv/bin/python scripts/hf-finetune.py --model runs/demo/lm-init --data runs/hf-data \
        --out runs/hf-lm --steps 200
    # several GPUs, ZeRO-3 as the reference:
    venv/bin/deepspeed scripts/hf-finetune.py ... --bf16 --deepspeed scripts/deepspeed-zero3.json

A killed run resumes from its last checkpoint when started again with the same --out.
"""
import argparse
import json
import os
import shutil
import sys

# The files of an `lm init` folder that are not weights: carried over to the trained model, so
# that it keeps its tokenizer (image codes included) and the identity of its VQ-GAN.
CARRIED = ["tokenizer.json", "tokenizer_config.json", "vqgan.json"]
# Written into a checkpoint folder once the Trainer has saved all of it. The Trainer writes a
# checkpoint in place, file by file: a run killed meanwhile leaves a folder that cannot be resumed.
COMPLETE = "checkpoint-complete"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an `llm-cxr lm init` folder (or a trained one)")
    p.add_argument("--data", required=True, help="a folder written by `llm-cxr data build --hf`")
    p.add_argument("--out", required=True,
                   help="output folder: checkpoints/ while training, model/ at the end")
    p.add_argument("--steps", type=int, default=-1, help="optimizer steps (default: by --epochs)")
    p.add_argument("--epochs", type=float, default=5.0, help="the reference's 5 when --steps is not given")
    p.add_argument("--lr", type=float, default=5e-6, help="peak learning rate (reference 5e-6)")
    p.add_argument("--warmup", type=int, default=50, help="linear warmup steps, then constant (reference 50)")
    p.add_argument("--micro-batch", type=int, default=2, help="samples per device per micro-step (reference 2)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPUs that have it)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--save-steps", type=int, default=500, help="checkpoint every this many steps")
    p.add_argument("--deepspeed", help="a DeepSpeed config (scripts/deepspeed-zero3.json)")
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by launchers
    return p.parse_args()


def fail(message):
    sys.exit(f"hf-finetune: {message}")


def hf_shards(data):
    manifest_path = os.path.join(data, "manifest.json")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{manifest_path}: {e} (build the data with `llm-cxr data build --hf`)")
    names = manifest.get("hf_shards") or []
    if not names:
        fail(f"{manifest_path}: no Hugging Face shards; rebuild with `llm-cxr data build --hf`")
    return [os.path.join(data, n) for n in names]


class PadCollator:
    """Pads a batch to its longest sample: ids with the pad id, labels with -100 (no loss)."""

    def __init__(self, pad_id):
        self.pad_id = pad_id

    def __call__(self, rows):
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids, labels, mask = [], [], []
        for r in rows:
            pad = width - len(r["input_ids"])
            ids.append(r["input_ids"] + [self.pad_id] * pad)
            labels.append(r["labels"] + [-100] * pad)
            mask.append([1] * len(r["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
        }


def last_complete_checkpoint(folder):
    """The newest checkpoint with its mark. Unmarked ones (cut off by a kill) are passed over,
    not removed: every rank looks, and the Trainer writes over one when it saves that step again."""
    if not os.path.isdir(folder):
        return None
    done = []
    for name in os.listdir(folder):
        step = name.removeprefix("checkpoint-")
        path = os.path.join(folder, name)
        if step != name and step.isdigit() and os.path.exists(os.path.join(path, COMPLETE)):
            done.append((int(step), path))
    return max(done)[1] if done else None


def save_model(trainer, model_dir, source_dir):
    """The trained weights and config, then the `lm init` files that are not weights; written into
    a temporary sibling and renamed into place, so that a reader never sees half a model."""
    tmp = model_dir + ".tmp"
    if trainer.is_world_process_zero() and os.path.exists(tmp):
        shutil.rmtree(tmp)  # left by a run killed while saving
    trainer.save_model(tmp)  # every rank takes part (ZeRO-3 gathers the weights here)
    if not trainer.is_world_process_zero():
        return
    for name in CARRIED:
        src = os.path.join(source_dir, name)
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(tmp, name))
    if os.path.exists(model_dir):
        shutil.rmtree(model_dir)
    os.replace(tmp, model_dir)


def main():
    args = parse_args()
    for name in ["config.json", "tokenizer.json"]:
        if not os.path.exists(os.path.join(args.model, name)):
            fail(f"{args.model}: no {name}; --model takes the folder `llm-cxr lm init` writes")
    shards = hf_shards(args.data)

    import datasets
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    class MarkComplete(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            # Every rank has written its part (its own rng state, its ZeRO shards) before the mark.
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.barrier()
            if state.is_world_process_zero:
                folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
                open(os.path.join(folder, COMPLETE), "w").close()

    # The arguments first: with a ZeRO-3 config they make from_pretrained load the model already
    # split over the processes instead of whole in each.
    checkpoints = os.path.join(args.out, "checkpoints")
    training = TrainingArguments(
        output_dir=checkpoints,
        max_steps=args.steps,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        warmup_steps=args.warmup,
        lr_scheduler_type="constant_with_warmup",  # linear warmup, then constant
        weight_decay=0.0,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.grad_accum,
        bf16=args.bf16,
        deepspeed=args.deepspeed,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=2,
        logging_steps=1,
        seed=args.seed,
        data_seed=args.seed,
        report_to=[],
        remove_unused_columns=True,  # drops `task` and `source`
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    with training.main_process_first(desc="loading the shards"):
        dataset = datasets.load_dataset("json", data_files=shards, split="train")
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    if model.get_input_embeddings().num_embeddings != model.config.vocab_size:
        fail(f"{args.model}: the embedding table does not match the config's vocab_size")
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    trainer = Trainer(model=model, args=training, train_dataset=dataset,
                      data_collator=PadCollator(pad_id), callbacks=[MarkComplete()])
    last = last_complete_checkpoint(checkpoints)
    if last:
        print(f"hf-finetune: resuming from {last}", flush=True)
    trainer.train(resume_from_checkpoint=last)
    save_model(trainer, os.path.join(args.out, "model"), args.model)
    if trainer.is_world_process_zero():
        with open(os.path.join(args.out, "log.json"), "w") as f:
            json.dump(trainer.state.log_history, f, indent=1)
        print(f"hf-finetune: wrote {os.path.join(args.out, 'model')}", flush=True)


if __name__ == "__main__":
    main()
