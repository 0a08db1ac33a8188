//! `config.json` as transformers writes it, deserialized key by key and then turned into the typed
//! configs with transformers' defaults (`GPTNeoXConfig.__init__`, `LlamaConfig.__init__`). Every
//! optional key is an `Option`: transformers writes an unset option as `null`, which means "the
//! default" just as an absent key does, and some defaults depend on other keys (`head_dim`,
//! `num_key_value_heads`, `intermediate_size`). Keys this crate does not use are ignored.

use serde::Deserialize;

use super::{GptNeoxConfig, HiddenAct, LlamaConfig, LmConfig, RopeScaling};

/// The architecture, read first so that each is parsed with its own keys and defaults.
#[derive(Deserialize)]
struct Architecture {
    model_type: Option<String>,
}

/// The rotary settings: transformers 4 writes the scaling as `rope_scaling`, transformers 5 puts
/// the scaling, `rope_theta` and `partial_rotary_factor` into `rope_parameters`.
#[derive(Deserialize)]
struct RopeFile {
    rope_type: Option<String>,
    /// transformers 4.3x wrote "type", later releases "rope_type".
    #[serde(rename = "type")]
    legacy_type: Option<String>,
    rope_theta: Option<f64>,
    partial_rotary_factor: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
}

/// The keys shared by the rotary settings of both architectures.
#[derive(Deserialize)]
struct RopeKeys {
    rope_scaling: Option<RopeFile>,
    rope_parameters: Option<RopeFile>,
}

impl RopeKeys {
    /// A key of transformers 5's `rope_parameters`.
    fn parameter(&self, key: fn(&RopeFile) -> Option<f64>) -> Option<f64> {
        self.rope_parameters.as_ref().and_then(key)
    }

    /// The scaling; `None` for none or `rope_type` "default".
    fn scaling(&self) -> Result<Option<RopeScaling>, String> {
        let Some(s) = self.rope_scaling.as_ref().or(self.rope_parameters.as_ref()) else {
            return Ok(None);
        };
        let kind = s
            .rope_type
            .as_deref()
            .or(s.legacy_type.as_deref())
            .unwrap_or("default");
        let num = |value: Option<f64>, key: &str| {
            value.ok_or_else(|| format!("rope scaling {kind:?} needs a number {key:?}"))
        };
        let scaling = match kind {
            "default" => return Ok(None),
            "linear" => RopeScaling::Linear {
                factor: num(s.factor, "factor")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: num(s.factor, "factor")?,
                low_freq_factor: num(s.low_freq_factor, "low_freq_factor")?,
                high_freq_factor: num(s.high_freq_factor, "high_freq_factor")?,
                original_max_position_embeddings: num(
                    s.original_max_position_embeddings,
                    "original_max_position_embeddings",
                )? as usize,
            },
            other => {
                return Err(format!(
                    "rope scaling {other:?} is not supported (linear and llama3 are)"
                ))
            }
        };
        scaling.check()?;
        Ok(Some(scaling))
    }
}

/// `GPTNeoXConfig`'s keys.
#[derive(Deserialize)]
struct GptNeoxFile {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: Option<usize>,
    rotary_pct: Option<f64>,
    rotary_emb_base: Option<f64>,
    rope_theta: Option<f64>,
    max_position_embeddings: Option<usize>,
    layer_norm_eps: Option<f64>,
    use_parallel_residual: Option<bool>,
    hidden_act: Option<HiddenAct>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    #[serde(flatten)]
    rope: RopeKeys,
}

impl GptNeoxFile {
    fn into_config(self) -> Result<GptNeoxConfig, String> {
        let rope_scaling = self.rope.scaling()?;
        Ok(GptNeoxConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size.unwrap_or(4 * self.hidden_size),
            rotary_pct: self
                .rope
                .parameter(|r| r.partial_rotary_factor)
                .or(self.rotary_pct)
                .unwrap_or(0.25),
            rotary_emb_base: self
                .rope
                .parameter(|r| r.rope_theta)
                .or(self.rotary_emb_base)
                .or(self.rope_theta)
                .unwrap_or(10_000.0),
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
            layer_norm_eps: self.layer_norm_eps.unwrap_or(1e-5),
            use_parallel_residual: self.use_parallel_residual.unwrap_or(true),
            hidden_act: self.hidden_act.unwrap_or(HiddenAct::Gelu),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            attention_bias: self.attention_bias.unwrap_or(true),
            rope_scaling,
        })
    }
}

/// `LlamaConfig`'s keys (also those of Mistral and Qwen2).
#[derive(Deserialize)]
struct LlamaFile {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    intermediate_size: usize,
    rope_theta: Option<f64>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    hidden_act: Option<HiddenAct>,
    #[serde(flatten)]
    rope: RopeKeys,
}

impl LlamaFile {
    /// `bias_default`: whether q/k/v have a bias when the file does not say (Qwen2's do).
    fn into_config(self, bias_default: bool) -> Result<LlamaConfig, String> {
        let rope_scaling = self.rope.scaling()?;
        let heads = self.num_attention_heads;
        Ok(LlamaConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(heads),
            head_dim: self.head_dim.unwrap_or(self.hidden_size / heads.max(1)),
            intermediate_size: self.intermediate_size,
            rope_theta: self
                .rope
                .parameter(|r| r.rope_theta)
                .or(self.rope_theta)
                .unwrap_or(10_000.0),
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            attention_bias: self.attention_bias.unwrap_or(bias_default),
            hidden_act: self.hidden_act.unwrap_or(HiddenAct::Silu),
            rope_scaling,
        })
    }
}

/// Parses a `config.json` text into the config of its architecture (not yet validated).
pub(super) fn parse(text: &str) -> Result<LmConfig, String> {
    let json = |e: serde_json::Error| e.to_string();
    let model_type = serde_json::from_str::<Architecture>(text)
        .map_err(json)?
        .model_type
        .unwrap_or_default();
    match model_type.as_str() {
        "gpt_neox" => {
            let file: GptNeoxFile = serde_json::from_str(text).map_err(json)?;
            Ok(LmConfig::GptNeox(file.into_config()?))
        }
        "llama" | "mistral" | "qwen2" => {
            let file: LlamaFile = serde_json::from_str(text).map_err(json)?;
            Ok(LmConfig::Llama(file.into_config(model_type == "qwen2")?))
        }
        other => Err(format!(
            "model_type {other:?} is not supported (gpt_neox, llama, mistral, qwen2 are)"
        )),
    }
}
