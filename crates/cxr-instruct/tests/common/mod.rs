//! What the fine-tuning tests share: cxr-lm's tiny fixture models and deterministic samples.

use std::path::{Path, PathBuf};

use cxr_instruct::{Task, Tokenized};

/// A fixture model folder of cxr-lm (`gpt_neox_tiny`, `llama_tiny`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cxr-lm/tests/fixtures")
        .join(name)
}

/// Deterministic samples of ids below 384 (the fixtures' vocabulary), of 12 to 20 tokens.
pub fn samples(n: usize) -> Vec<Tokenized> {
    (0..n)
        .map(|k| {
            let len = 12 + (k * 5) % 9;
            Tokenized {
                task: Task::Text,
                source: format!("s{k}"),
                ids: (0..len)
                    .map(|i| ((i * 37 + k * 11) % 383) as u32 + 1)
                    .collect(),
                response_start: 5 + k % 4,
                prompt_spans: Vec::new(),
            }
        })
        .collect()
}
