//! `llm-cxr lm init`: turns a pretrained base model (HF directory or GGUF) into the starting point
//! of LLM-CXR training: the instruction keys and the image vocabulary added, the embeddings grown,
//! saved as an HF directory (f32 safetensors) that `llm-cxr` and transformers both load.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::Device;
use cxr_lm::image_vocab::ImageInit;
use cxr_lm::init::InitOptions;
use cxr_lm::{LanguageModel, WeightMode};

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
    #[arg(long, default_value_t = InitOptions::default().codes)]
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
    #[arg(long, default_value_t = InitOptions::default().seed)]
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
    // `lm init` takes no --device: growing the tables is a copy, done on the CPU.
    let base = LanguageModel::load(&args.base, WeightMode::Train, &Device::Cpu)
        .with_context(|| format!("loading the base model {}", args.base.display()))?;
    anyhow::ensure!(
        base.image_vocab.is_none(),
        "{} already has an image vocabulary ({:?})",
        args.base.display(),
        base.image_vocab
    );
    let opts = InitOptions {
        codes: args.codes,
        image: image_init(&args)?,
        seed: args.seed,
        keep_tied_head: args.keep_tied_head,
    };
    let grown = cxr_lm::init::init(base, &opts)
        .with_context(|| format!("growing {}", args.base.display()))?;
    if grown.untied_head {
        tracing::info!("the head is untied from the embedding table");
    }
    // The VQ-GAN whose codes the model will read, recorded beside it: `data build` refuses
    // token files of any other.
    let identity_json = match &args.vqgan {
        Some(path) => Some(serde_json::to_vec_pretty(
            &vqgan_args(&args, path).identity()?,
        )?),
        None => None,
    };
    let extra: Vec<(&str, &[u8])> = identity_json
        .as_deref()
        .map(|j| (cxr_vqgan::identity::IDENTITY_FILE, j))
        .into_iter()
        .collect();
    grown.save(&args.out, &extra)?;
    println!(
        "{}: vocabulary {} -> {} rows; `### Response:\\n` = {:?}; image code k = id {} + k; written to {}",
        args.base.display(),
        grown.base_vocab_size,
        grown.config.vocab_size(),
        grown
            .tokenizer
            .token_id(cxr_lm::image_vocab::RESPONSE_KEY_NL),
        grown.image_vocab.base,
        args.out.display()
    );
    Ok(())
}

fn vqgan_args(args: &InitArgs, path: &std::path::Path) -> super::vqgan::VqganArgs {
    super::vqgan::VqganArgs {
        vqgan: path.to_path_buf(),
        config: args.vqgan_config.clone(),
    }
}

/// The start of the image rows `--image-init` and `--vqgan` ask for (default: the VQ-GAN's
/// codebook when one is given, else N(0, 0.02²)).
fn image_init(args: &InitArgs) -> anyhow::Result<ImageInit> {
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
    Ok(match (chosen, &args.vqgan) {
        (ImageInitArg::Codebook, None) => anyhow::bail!(
            "--image-init codebook starts the image rows from a VQ-GAN's codebook: give --vqgan"
        ),
        (ImageInitArg::Codebook, Some(path)) => {
            let vqgan = vqgan_args(args, path)
                .load(&Device::Cpu)
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
    })
}
