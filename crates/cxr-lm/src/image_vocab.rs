//! LLM-CXR's image vocabulary (brief section 1; `training/trainer.py:load_tokenizer` and
//! `get_inject_vq_fun` of the reference): the instruction keys are special tokens, `### Response:\n`
//! is added when absent, and VQ code k becomes id `base + k` with `base` the tokenizer's length after
//! that (50281 for dolly-v2-3b). The ids are not tokenizer entries; only the model's embedding and
//! head grow. In a prompt, the `image` token of `<image>` is replaced by the image's ids.

use std::collections::HashMap;
use std::ops::Range;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;

use crate::config::LmConfig;
use crate::tokenizer::TextTokenizer;
use crate::weights::Weight;
use crate::LmError;

pub const INTRO: &str =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.";
pub const INSTRUCTION_KEY: &str = "### Instruction:";
pub const RESPONSE_KEY: &str = "### Response:";
pub const RESPONSE_KEY_NL: &str = "### Response:\n";
pub const END_KEY: &str = "### End";
pub const IMAGE_PLACEHOLDER: &str = "<image>";

/// Where the image codes sit in the vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageVocab {
    /// Id of code 0.
    pub base: u32,
    /// Number of codes (the VQ-GAN's `n_embed`).
    pub codes: u32,
}

impl ImageVocab {
    /// Adds LLM-CXR's keys to `tokenizer` (existing ones keep their ids) and places `codes` image
    /// ids after it.
    pub fn extend(tokenizer: &mut TextTokenizer, codes: u32) -> Result<Self, LmError> {
        for key in [END_KEY, INSTRUCTION_KEY, RESPONSE_KEY_NL] {
            tokenizer.add_special_token(key)?;
        }
        Ok(ImageVocab {
            base: tokenizer.len() as u32,
            codes,
        })
    }

    pub fn ids(&self) -> Range<u32> {
        self.base..self.base + self.codes
    }

    /// The model's vocabulary size once the image ids are added.
    pub fn vocab_size(&self) -> usize {
        (self.base + self.codes) as usize
    }

    pub fn id(&self, code: u32) -> u32 {
        self.base + code
    }

    pub fn code(&self, id: u32) -> Option<u32> {
        self.ids().contains(&id).then(|| id - self.base)
    }

    /// Tokenizes `text` and replaces the `image` token inside each `<image>` with `codes` (the
    /// reference's injection: `<` and `>` stay).
    pub fn encode_with_image(
        &self,
        tokenizer: &TextTokenizer,
        text: &str,
        codes: &[u32],
    ) -> Result<Vec<u32>, LmError> {
        let enc = tokenizer.encoding(text)?;
        let spans: Vec<usize> = text
            .match_indices(IMAGE_PLACEHOLDER)
            .map(|(i, _)| i)
            .collect();
        let mut out = Vec::with_capacity(enc.len() + codes.len() * spans.len());
        let inner = |s: usize| s + 1..s + IMAGE_PLACEHOLDER.len() - 1;
        let mut replaced = vec![false; spans.len()];
        for (id, &(start, end)) in enc.get_ids().iter().zip(enc.get_offsets()) {
            match spans
                .iter()
                .position(|&s| start >= inner(s).start && end <= inner(s).end && end > start)
            {
                Some(k) => {
                    if !replaced[k] {
                        out.extend(codes.iter().map(|&c| self.id(c)));
                        replaced[k] = true;
                    }
                }
                None => out.push(*id),
            }
        }
        if let Some(k) = replaced.iter().position(|r| !r) {
            return Err(LmError::Tokenizer {
                origin: format!("prompt at byte {}", spans[k]),
                reason: "`<image>` was not tokenized as `<`, `image`, `>`, so the image cannot be placed".into(),
            });
        }
        Ok(out)
    }
}

/// Grows the embedding table and the LM head of a checkpoint to `vocab` rows (a model that
/// already has more, such as pythia's padded 50304, keeps its size). New rows are the
/// mean of the old rows plus Gaussian noise of 1 % of their standard deviation (seeded), close to
/// transformers' `resize_token_embeddings(mean_resizing=True)`; LLM-CXR used transformers 4.28,
/// which drew them from N(0, 0.02²). Quantized tables are dequantized first.
pub fn resize_vocab(
    tensors: &mut HashMap<String, Weight>,
    config: &mut LmConfig,
    vocab: usize,
    seed: u64,
) -> Result<(), LmError> {
    let names: &[&str] = match config {
        LmConfig::GptNeox(_) => &["gpt_neox.embed_in.weight", "embed_out.weight"],
        LmConfig::Llama(_) => &["model.embed_tokens.weight", "lm_head.weight"],
    };
    let vocab = vocab.max(config.vocab_size());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for name in names {
        let Some(w) = tensors.get(*name) else {
            continue;
        };
        let err = |e: candle_core::Error| LmError::Candle(format!("{name}: {e}"));
        let table = match w {
            Weight::Float(t) => t.clone(),
            Weight::Quantized(q) => q.dequantize(&Device::Cpu).map_err(err)?,
        };
        let (rows, dim) = table.dims2().map_err(err)?;
        if rows >= vocab {
            continue;
        }
        let mean = table.mean_keepdim(0).map_err(err)?;
        let std = table
            .broadcast_sub(&mean)
            .and_then(|d| d.sqr())
            .and_then(|d| d.mean_all())
            .and_then(|v| v.to_scalar::<f32>())
            .map_err(err)?
            .sqrt();
        let n_new = vocab - rows;
        let noise: Vec<f32> = (0..n_new * dim)
            .map(|_| cxr_train::sample_normal(&mut rng, 0.0, 0.01 * std))
            .collect();
        let noise = Tensor::from_vec(noise, (n_new, dim), table.device()).map_err(err)?;
        let new_rows = noise.broadcast_add(&mean).map_err(err)?;
        let grown = Tensor::cat(&[&table, &new_rows], 0)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(err)?;
        tensors.insert(name.to_string(), Weight::Float(grown));
    }
    config.set_vocab_size(vocab);
    Ok(())
}
