//! LLM-CXR's starting point made from a base model (`llm-cxr lm init`): the instruction keys and
//! the image codes added to its tokenizer, its embedding table and head grown to match (a tied
//! head untied first unless asked not to), the result saved as an HF directory.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use crate::image_vocab::{self, ImageInit, ImageVocab, NewRows};
use crate::weights::Weight;
use crate::{LanguageModel, LmConfig, LmError, TextTokenizer, WeightMode};

/// How a base model is grown.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Number of image codes: the VQ-GAN's codebook size (1024 for the paper's preset).
    pub codes: u32,
    /// How the image codes' rows start.
    pub image: ImageInit,
    /// Seed of the new rows (noise and projection).
    pub seed: u64,
    /// Keep a tied head tied (by default a tied head is untied first, so that a code's input
    /// row and its output row learn apart; see [`image_vocab::untie_head`]).
    pub keep_tied_head: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            codes: 1024,
            image: ImageInit::Normal,
            seed: 42,
            keep_tied_head: false,
        }
    }
}

/// A base model grown into LLM-CXR's starting point, ready to save.
pub struct InitModel {
    pub config: LmConfig,
    /// Every weight in f32, sorted by name.
    pub tensors: Vec<(String, Tensor)>,
    pub tokenizer: TextTokenizer,
    pub image_vocab: ImageVocab,
    /// Rows the base model's vocabulary had.
    pub base_vocab_size: usize,
    /// Whether a tied head was untied.
    pub untied_head: bool,
}

/// Grows `base` (loaded with [`crate::WeightMode::Train`]) as `opts` says. A model that already
/// has an image vocabulary is refused.
pub fn init(base: LanguageModel, opts: &InitOptions) -> Result<InitModel, LmError> {
    if let Some(vocab) = base.image_vocab {
        return Err(LmError::Init(format!(
            "the model already has an image vocabulary ({vocab:?})"
        )));
    }
    if opts.codes == 0 {
        return Err(LmError::Init(
            "the image vocabulary needs at least one code".into(),
        ));
    }
    if base.weights.mode() != WeightMode::Train {
        return Err(LmError::Init(
            "the base model must be loaded with WeightMode::Train (its weights as f32 variables)"
                .into(),
        ));
    }
    let mut tokenizer = base.tokenizer;
    let mut config = base.model.config();
    let base_vocab_size = config.vocab_size();
    let pieces = ImageVocab::key_pieces(&tokenizer)?;
    let image_vocab = ImageVocab::extend(&mut tokenizer, opts.codes)?;
    let rows = NewRows {
        keys: pieces
            .into_iter()
            .filter_map(|(key, ids)| Some((tokenizer.token_id(key)?, ids)))
            .collect(),
        image_base: image_vocab.base,
        image: opts.image.clone(),
        seed: opts.seed,
    };
    let mut weights: HashMap<String, Weight> = base
        .weights
        .vars()
        .into_iter()
        .map(|(name, var)| (name, Weight::Float(var.as_tensor().clone())))
        .collect();
    let untied_head = !opts.keep_tied_head && image_vocab::untie_head(&mut weights, &mut config)?;
    image_vocab::resize_vocab(&mut weights, &mut config, image_vocab.vocab_size(), &rows)?;
    let mut tensors: Vec<(String, Tensor)> = weights
        .into_iter()
        .filter_map(|(name, w)| match w {
            Weight::Float(t) => Some((name, t)),
            Weight::Quantized(_) => None,
        })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(InitModel {
        config,
        tensors,
        tokenizer,
        image_vocab,
        base_vocab_size,
        untied_head,
    })
}

impl InitModel {
    /// Writes the HF directory (config.json, model.safetensors, the tokenizer files) and the
    /// `extra` files (name, bytes) in one atomic step.
    pub fn save(&self, dir: &Path, extra: &[(&str, &[u8])]) -> Result<(), LmError> {
        crate::save_hf_with(
            dir,
            &self.config,
            &self.tensors,
            &self.tokenizer,
            Some(self.image_vocab),
            extra,
        )
    }
}
