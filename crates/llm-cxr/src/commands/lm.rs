//! `llm-cxr lm init`: turns a pretrained base model (HF directory or GGUF) into the starting point
//! of LLM-CXR training: the instruction keys and the image vocabulary added, the embeddings grown,
//! saved as an HF directory (f32 safetensors) that `llm-cxr` and transformers both load.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::Device;
use cxr_lm::image_vocab::{ImageInit, NewRows};
use cxr_lm::weights::Weight;
use cxr_lm::{ImageVocab, LanguageModel, WeightMode};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Add LLM-CXR's keys (`### End`, `### Instruction:`, `### Response:\n`) and the image codes
    /// (id = base + code) to a base model and save it as an HF directory.
    Init(InitArgs),
}

#[derive(clap::Args, serde::Serialize)]
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
    /// How the image codes' rows start: `codebook` (each code's VQ-GAN codebook vector, mapped
    /// to the hidden size by a fixed orthogonal projection and scaled to the text rows; needs
    /// --vqgan), `normal` (N(0, 0.02²), LLM-CXR's transformers) or `mean` (the mean text row plus
    /// 1 % noise: every code nearly the same vector; for reproducing older runs). Default:
    /// `codebook` when --vqgan is given, else `normal`.
    #[arg(long, value_enum)]
    #[serde(serialize_with = "super::value_enum::name_opt")]
    pub image_init: Option<ImageInitArg>,
    /// The VQ-GAN whose codebook starts the image rows (safetensors or taming .ckpt); its
    /// codebook size must equal --codes. Its identity is recorded as OUT/vqgan.json, and
    /// `data build` then refuses token files of any other VQ-GAN.
    #[arg(long)]
    pub vqgan: Option<PathBuf>,
    /// The VQ-GAN's config (a preset or JSON file) when its weights do not carry one (taming's
    /// .ckpt); default: the one stored in the weights.
    #[arg(long, requires = "vqgan")]
    pub vqgan_config: Option<String>,
    /// Keep a tied head tied (the head is the embedding table, as SmolLM2 ships). By default a
    /// tied head is untied first, so that a code's input row and its output row learn apart.
    #[arg(long)]
    pub keep_tied_head: bool,
    /// Seed of the new rows (noise and projection).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output directory (config.json, model.safetensors, tokenizer.json, tokenizer_config.json).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ImageInitArg {
    Codebook,
    Normal,
    Mean,
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
    let chosen = args.image_init.unwrap_or_else(|| {
        if args.vqgan.is_some() {
            ImageInitArg::Codebook
        } else {
            tracing::warn!(
                "no --vqgan: the image rows start from N(0, 0.02²); give the VQ-GAN to start them \
             from its codebook, which the model learns from much faster"
            );
            ImageInitArg::Normal
        }
    });
    let image = match (chosen, &args.vqgan) {
        (ImageInitArg::Codebook, None) => anyhow::bail!(
            "--image-init codebook starts the image rows from a VQ-GAN's codebook: give --vqgan"
        ),
        (ImageInitArg::Codebook, Some(path)) => {
            let vqgan = super::vqgan::VqganArgs {
                vqgan: path.clone(),
                config: args.vqgan_config.clone(),
            }
            .load()
            .with_context(|| format!("loading the VQ-GAN {}", path.display()))?;
            let codebook = vqgan.quantizer().codebook().clone();
            anyhow::ensure!(
                codebook.dim(0)? == args.codes as usize,
                "{} has {} codes, --codes is {}",
                path.display(),
                codebook.dim(0)?,
                args.codes
            );
            ImageInit::Codebook(codebook)
        }
        (ImageInitArg::Normal, _) => ImageInit::Normal,
        (ImageInitArg::Mean, _) => ImageInit::Mean,
    };
    let mut config = lm.model.config();
    let before = config.vocab_size();
    let pieces = ImageVocab::key_pieces(&lm.tokenizer)?;
    let vocab = ImageVocab::extend(&mut lm.tokenizer, args.codes)?;
    let init = NewRows {
        keys: pieces
            .into_iter()
            .filter_map(|(key, ids)| Some((lm.tokenizer.token_id(key)?, ids)))
            .collect(),
        image_base: vocab.base,
        image,
        seed: args.seed,
    };
    let mut tensors: std::collections::HashMap<String, Weight> = lm
        .weights
        .vars()
        .into_iter()
        .map(|(name, var)| (name, Weight::Float(var.as_tensor().clone())))
        .collect();
    if !args.keep_tied_head && cxr_lm::image_vocab::untie_head(&mut tensors, &mut config)? {
        tracing::info!("the head is untied from the embedding table");
    }
    cxr_lm::image_vocab::resize_vocab(&mut tensors, &mut config, vocab.vocab_size(), &init)?;
    let mut tensors: Vec<(String, candle_core::Tensor)> = tensors
        .into_iter()
        .filter_map(|(name, w)| match w {
            Weight::Float(t) => Some((name, t)),
            Weight::Quantized(_) => None,
        })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    // The VQ-GAN whose codes the model will read, recorded beside it: `data build` refuses
    // token files of any other.
    let identity = match &args.vqgan {
        Some(path) => Some(
            super::vqgan::VqganArgs {
                vqgan: path.clone(),
                config: args.vqgan_config.clone(),
            }
            .identity()?,
        ),
        None => None,
    };
    let identity_json = identity
        .as_ref()
        .map(serde_json::to_vec_pretty)
        .transpose()?;
    let extra: Vec<(&str, &[u8])> = identity_json
        .as_deref()
        .map(|j| (cxr_vqgan::identity::IDENTITY_FILE, j))
        .into_iter()
        .collect();
    cxr_lm::save_hf_with(
        &args.out,
        &config,
        &tensors,
        &lm.tokenizer,
        Some(vocab),
        &extra,
    )?;
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
