//! The language model of llm-cxr: GPT-NeoX (LLM-CXR's dolly-v2) and LLaMA (SmolLM2 and kin) in
//! candle, loaded from an HF directory or a GGUF file by their own tensor names; the tokenizer;
//! LLM-CXR's image vocabulary; and one generation routine with text and image constraints.
//!
//! Data flow: `load` -> [`LanguageModel`] { [`CausalLm`], [`TextTokenizer`], [`ImageVocab`] } ->
//! [`generate::generate`] (inference) or [`CausalLm::forward`] (training, full-sequence logits).

pub mod attention;
pub mod config;
pub mod generate;
pub mod gguf;
pub mod gpt_neox;
pub mod image_vocab;
pub mod init;
pub mod linear;
pub mod llama;
pub mod model;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};

use candle_core::Device;

pub use config::{GptNeoxConfig, HiddenAct, LlamaConfig, LmConfig, RopeScaling};
pub use generate::{generate, generate_until, Batch, Constraint, Drawn, GenerateOptions, Sampling};
pub use image_vocab::ImageVocab;
pub use model::{Cache, CausalLm};
pub use tokenizer::{ChatMessage, TextStream, TextTokenizer};
pub use weights::{LoraConfig, WeightMode, Weights};

#[derive(Debug, thiserror::Error)]
pub enum LmError {
    #[error("{origin}: bad model config: {reason}")]
    Config { origin: String, reason: String },
    #[error("{}: cannot read weights: {reason}", path.display())]
    Weights { path: PathBuf, reason: String },
    #[error("{origin}: tensor {name} is missing")]
    MissingTensor { origin: String, name: String },
    #[error("{origin}: tensor {name} has shape {found:?}, the config needs {expected:?}")]
    TensorShape {
        origin: String,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{origin}: tokenizer: {reason}")]
    Tokenizer { origin: String, reason: String },
    #[error("{}: {reason}", path.display())]
    Io { path: PathBuf, reason: String },
    #[error("generation: {0}")]
    Generate(String),
    /// A base model that cannot be grown into LLM-CXR's layout ([`init::init`]).
    #[error("lm init: {0}")]
    Init(String),
    #[error("tensor op failed: {0}")]
    Candle(String),
}

/// A model ready to use: network, tokenizer and, once extended, its image vocabulary.
pub struct LanguageModel {
    pub model: CausalLm,
    pub tokenizer: TextTokenizer,
    pub image_vocab: Option<ImageVocab>,
    /// The store the model was built from (its `Var`s when loaded for training).
    pub weights: Weights,
}

/// The key under which `config.json` records the image vocabulary (transformers keeps unknown keys).
pub const IMAGE_VOCAB_KEY: &str = "llm_cxr_image_vocab";

impl LanguageModel {
    /// Loads an HF model directory (config.json, tokenizer.json, weights) or a `.gguf` file.
    pub fn load(path: &Path, mode: WeightMode, device: &Device) -> Result<Self, LmError> {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            let g = gguf::read_gguf(path, device)?;
            let tokenizer =
                TextTokenizer::from_json(&g.tokenizer_json, &path.display().to_string())?
                    .with_chat(g.chat_template, g.bos_token, g.eos_token);
            let weights = Weights::new(g.tensors, &path.display().to_string(), mode, device);
            let model = CausalLm::new(&g.config, &weights)?;
            return Ok(LanguageModel {
                model,
                tokenizer,
                image_vocab: None,
                weights,
            });
        }
        if !path.is_dir() {
            return Err(LmError::Io {
                path: path.to_path_buf(),
                reason:
                    "not a model directory (config.json, tokenizer.json, weights) nor a .gguf file"
                        .into(),
            });
        }
        let (model, _, weights) = CausalLm::load_hf(path, mode, device)?;
        let (tokenizer, image_vocab) = load_tokenizer(path)?;
        Ok(LanguageModel {
            model,
            tokenizer,
            image_vocab,
            weights,
        })
    }
}

/// The tokenizer of an HF model directory, and its image vocabulary when `config.json` records
/// one (a directory made by `llm-cxr lm init` or saved by training), without loading weights.
pub fn load_tokenizer(dir: &Path) -> Result<(TextTokenizer, Option<ImageVocab>), LmError> {
    let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
    let image_vocab = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get(IMAGE_VOCAB_KEY).cloned())
        .and_then(|v| serde_json::from_value::<ImageVocab>(v).ok());
    Ok((tokenizer, image_vocab))
}

/// Writes a model as an HF directory that transformers loads: `config.json` (with the image
/// vocabulary under [`IMAGE_VOCAB_KEY`]), `model.safetensors` under the HF names, `tokenizer.json`
/// and `tokenizer_config.json`. The folder is written whole into a temporary sibling, every file
/// synced, and renamed into place ([`cxr_data::replace_dir_atomic`]): a crash leaves the old
/// folder or the new one, never a torn model, and whatever else the old folder held is gone.
pub fn save_hf(
    dir: &Path,
    config: &LmConfig,
    tensors: &[(String, candle_core::Tensor)],
    tokenizer: &TextTokenizer,
    image_vocab: Option<ImageVocab>,
) -> Result<(), LmError> {
    save_hf_with(dir, config, tensors, tokenizer, image_vocab, &[])
}

/// [`save_hf`], with extra files (name, bytes) written into the same folder in the same step.
pub fn save_hf_with(
    dir: &Path,
    config: &LmConfig,
    tensors: &[(String, candle_core::Tensor)],
    tokenizer: &TextTokenizer,
    image_vocab: Option<ImageVocab>,
    extra: &[(&str, &[u8])],
) -> Result<(), LmError> {
    let mut failed: Option<LmError> = None;
    cxr_data::replace_dir_atomic::<std::io::Error>(dir, |tmp| {
        write_hf(tmp, config, tensors, tokenizer, image_vocab, extra).map_err(|e| {
            let message = e.to_string();
            failed = Some(e);
            std::io::Error::other(message)
        })
    })
    .map_err(|e| {
        failed.take().unwrap_or_else(|| LmError::Io {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })
    })
}

fn write_hf(
    dir: &Path,
    config: &LmConfig,
    tensors: &[(String, candle_core::Tensor)],
    tokenizer: &TextTokenizer,
    image_vocab: Option<ImageVocab>,
    extra: &[(&str, &[u8])],
) -> Result<(), LmError> {
    let io = |e: String| LmError::Io {
        path: dir.to_path_buf(),
        reason: e,
    };
    let mut json = config.to_hf_json();
    if let Some(v) = image_vocab {
        json[IMAGE_VOCAB_KEY] = serde_json::to_value(v).map_err(|e| io(e.to_string()))?;
    }
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&json).map_err(|e| io(e.to_string()))?,
    )
    .map_err(|e| io(e.to_string()))?;
    let map: std::collections::HashMap<String, candle_core::Tensor> =
        tensors.iter().cloned().collect();
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    let views: Vec<(String, candle_core::Tensor)> = map.into_iter().collect();
    safetensors::serialize_to_file(
        views.iter().map(|(k, v)| (k.as_str(), v)),
        Some(metadata),
        &dir.join("model.safetensors"),
    )
    .map_err(|e| io(e.to_string()))?;
    for (name, bytes) in extra {
        std::fs::write(dir.join(name), bytes).map_err(|e| io(e.to_string()))?;
    }
    tokenizer.save(dir)
}
