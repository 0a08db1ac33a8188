//! What a fine-tuning run is made of, recorded in its checkpoint (`cxr_train::RunRecord`): a
//! resume with other training data, another base model or other hyperparameters is refused,
//! naming each difference.
//!
//! Recorded: the training samples (a SHA-256 of every sample, in order), the base model (its
//! config, tokenizer and weight files), the learning rates, the warmup, weight decay, samples per
//! step, clipping, seed, objective and LoRA settings. Not recorded, so free to change on resume:
//! the total step count (the schedule is a warmup then a constant rate, so extending a finished
//! run continues it exactly as a longer run would have gone), how the samples of a step are cut
//! into micro-batches (the same sum, in less memory), and the checkpoint and validation cadence.

use cxr_train::{Fingerprint, RunRecord};

use crate::finetune::{FinetuneOptions, Trainable};
use crate::Tokenized;

/// The fingerprint of the training samples: every sample's task, ids and loss spans, in order.
pub fn data_fingerprint(samples: &[Tokenized]) -> String {
    let mut f = Fingerprint::new();
    for s in samples {
        let json = serde_json::to_string(s).expect("samples serialise");
        f.str(&json);
    }
    f.finish()
}

/// The record of a run of `net` on `train` with `opts`.
pub fn run_record(net: &Trainable, train: &[Tokenized], opts: &FinetuneOptions) -> RunRecord {
    RunRecord::new()
        .with("training data", data_fingerprint(train))
        .with("base model", &net.base)
        .with("learning rate", format!("{:e}", opts.lr))
        .with(
            "image rows' learning rate",
            opts.image_lr
                .map_or("the base rate".to_string(), |(first, lr)| {
                    format!("{lr:e} from id {first}")
                }),
        )
        .with("warmup steps", opts.warmup_steps)
        .with("weight decay", format!("{:e}", opts.weight_decay))
        .with(
            "samples per step",
            opts.micro_batch.max(1) * opts.grad_accum.max(1),
        )
        .with("gradient clipping", format!("{:e}", opts.clip_norm))
        .with("seed", opts.seed)
        .with(
            "softmax",
            if opts.modes.is_some() {
                "codes among codes and text among text"
            } else {
                "full"
            },
        )
        .with(
            "LoRA",
            net.lora.as_ref().map_or("none".to_string(), |(_, l)| {
                format!(
                    "rank {}, alpha {}, targets {}, seed {}",
                    l.rank,
                    l.alpha,
                    l.targets.join("+"),
                    l.seed
                )
            }),
        )
}
