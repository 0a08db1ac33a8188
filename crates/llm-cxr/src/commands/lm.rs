//! `llm-cxr lm init`: turns a pretrained base model (HF directory or GGUF) into the starting point
//! of LLM-CXR training: the instruction keys and the image vocabulary added, the embeddings grown,
//! saved as an HF directory (f32 safetensors) that `llm-cxr` and transformers both load.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::Device;
use cxr_lm::weights::Weight;
use cxr_lm::{ImageVocab, LanguageModel, WeightMode};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Add LLM-CXR's keys (`### End`, `### Instruction:`, `### Response:\n`) and the image codes
    /// (id = base + code) to a base model and save it as an HF directory.
    Init(InitArgs),
}

#[derive(clap::Args)]
pub struct InitArgs {
    /// The base model: an HF directory or a GGUF file (dequantized to f32).
    #[arg(
        long,
        env = "LLMCXR_MODEL",
        default_value = super::chat::DEFAULT_MODEL
    )]
    pub base: PathBuf,
    /// Number of image codes (the VQ-GAN's codebook size: 1024 for the paper preset, 512 for demo).
    #[arg(long, default_value_t = 1024)]
    pub codes: u32,
    /// Seed of the new embedding rows.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output directory (config.json, model.safetensors, tokenizer.json, tokenizer_config.json).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(command: Command) -> anyhow::Result<()> {
    let Command::Init(args) = command;
    anyhow::ensure!(args.codes > 0, "--codes must be at least 1");
    let mut lm = LanguageModel::load(&args.base, WeightMode::Train, &Device::Cpu)
        .with_context(|| format!("loading the base model {}", args.base.display()))?;
    anyhow::ensure!(
        lm.image_vocab.is_none(),
        "{} already has an image vocabulary ({:?})",
        args.base.display(),
        lm.image_vocab
    );
    let mut config = lm.model.config();
    let before = config.vocab_size();
    let vocab = ImageVocab::extend(&mut lm.tokenizer, args.codes)?;
    let mut tensors: std::collections::HashMap<String, Weight> = lm
        .weights
        .vars()
        .into_iter()
        .map(|(name, var)| (name, Weight::Float(var.as_tensor().clone())))
        .collect();
    cxr_lm::image_vocab::resize_vocab(&mut tensors, &mut config, vocab.vocab_size(), args.seed)?;
    let mut tensors: Vec<(String, candle_core::Tensor)> = tensors
        .into_iter()
        .filter_map(|(name, w)| match w {
            Weight::Float(t) => Some((name, t)),
            Weight::Quantized(_) => None,
        })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    cxr_lm::save_hf(&args.out, &config, &tensors, &lm.tokenizer, Some(vocab))?;
    println!(
        "{}: vocabulary {} -> {} rows; `### Response:\\n` = {:?}; image code k = id {} + k; written to {}",
        args.base.display(),
        before,
        config.vocab_size(),
        lm.tokenizer.token_id(cxr_lm::image_vocab::RESPONSE_KEY_NL),
        vocab.base,
        args.out.display()
    );
    Ok(())
}
