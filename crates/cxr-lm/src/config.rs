//! Model configurations, read straight from a Hugging Face `config.json` (or built from GGUF
//! metadata). Field names and defaults follow transformers' `GPTNeoXConfig` and `LlamaConfig`;
//! transformers 5 moved the rotary settings into `rope_parameters`, and both spellings are read.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::LmError;

mod json;

/// The longest context a config may declare (1M tokens; Llama 3.1 declares 131,072): the rotary
/// tables are allocated from it when the model is built.
pub const MAX_POSITIONS: usize = 1 << 20;
/// Positions x head dimension: each of the cos and sin tables holds half this many f32
/// (at most 512 MiB each; Llama 3.1 needs 1/16 of it).
pub const MAX_ROPE_TABLE: usize = 1 << 28;

/// Which architecture a checkpoint holds, from `config.json`'s `model_type`.
#[derive(Debug, Clone, PartialEq)]
pub enum LmConfig {
    GptNeox(GptNeoxConfig),
    Llama(LlamaConfig),
}

/// GPT-NeoX (pythia, dolly-v2): partial rotary, parallel residual, LayerNorm, untied head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptNeoxConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    /// Fraction of each head's dimensions that is rotated.
    pub rotary_pct: f64,
    pub rotary_emb_base: f64,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    pub use_parallel_residual: bool,
    pub hidden_act: HiddenAct,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
}

impl GptNeoxConfig {
    /// A pythia-style shape (4x MLP, rotary on a quarter of each head, parallel residual, untied
    /// head), as the peer benchmark builds them: for tests and benchmarks.
    pub fn pythia_like(hidden: usize, layers: usize, heads: usize, vocab: usize) -> Self {
        GptNeoxConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: 4 * hidden,
            rotary_pct: 0.25,
            rotary_emb_base: 10000.0,
            max_position_embeddings: 2048,
            layer_norm_eps: 1e-5,
            use_parallel_residual: true,
            hidden_act: HiddenAct::Gelu,
            tie_word_embeddings: false,
            attention_bias: true,
            rope_scaling: None,
        }
    }
}

/// The MLP's activation, `config.json`'s `hidden_act`: GPT-NeoX takes one of the GELUs, LLaMA
/// SiLU (checked by [`LmConfig::validate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum HiddenAct {
    /// The exact GELU (erf), transformers' "gelu".
    Gelu,
    /// The tanh approximation of GPT-2 ("gelu_new") ...
    GeluNew,
    /// ... and its faster spelling ("gelu_fast"): the same function.
    GeluFast,
    Silu,
}

impl HiddenAct {
    /// The name `config.json` gives it.
    pub fn name(self) -> &'static str {
        match self {
            HiddenAct::Gelu => "gelu",
            HiddenAct::GeluNew => "gelu_new",
            HiddenAct::GeluFast => "gelu_fast",
            HiddenAct::Silu => "silu",
        }
    }
}

impl TryFrom<String> for HiddenAct {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        [
            HiddenAct::Gelu,
            HiddenAct::GeluNew,
            HiddenAct::GeluFast,
            HiddenAct::Silu,
        ]
        .into_iter()
        .find(|act| act.name() == name)
        .ok_or_else(|| format!("hidden_act {name:?} is not supported"))
    }
}

/// LLaMA and its relatives (SmolLM2, TinyLlama, Llama-2/3, Qwen2): RMSNorm, SwiGLU, grouped-query
/// attention, rotary on the whole head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v (Qwen2 style); the output projection never has one.
    pub attention_bias: bool,
    pub hidden_act: HiddenAct,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
}

/// How the rotary frequencies are rescaled for contexts longer than pretraining's: HF's
/// `rope_scaling` (transformers 4) or the scaling keys of `rope_parameters` (transformers 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Positions divided by `factor`: every frequency divided by it.
    Linear { factor: f64 },
    /// Llama 3.1: wavelengths longer than `original_max_position_embeddings / low_freq_factor`
    /// are stretched by `factor`, those shorter than `.. / high_freq_factor` kept, and the band
    /// between blended.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

impl RopeScaling {
    pub(crate) fn check(&self) -> Result<(), String> {
        match *self {
            RopeScaling::Linear { factor } if factor > 0.0 => Ok(()),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } if factor > 0.0
                && low_freq_factor > 0.0
                && high_freq_factor > low_freq_factor
                && original_max_position_embeddings > 0 =>
            {
                Ok(())
            }
            _ => Err(format!(
                "rope scaling {self:?}: factors must be positive, high_freq_factor above low_freq_factor"
            )),
        }
    }

    /// Rescales the inverse frequencies of a rotary embedding in place (transformers'
    /// `_compute_linear_scaling_rope_parameters` and `_compute_llama3_parameters`).
    pub fn apply(&self, inv_freq: &mut [f64]) {
        match *self {
            RopeScaling::Linear { factor } => inv_freq.iter_mut().for_each(|f| *f /= factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = original_max_position_embeddings as f64;
                let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
                for f in inv_freq {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
    }
}

impl LmConfig {
    /// Parses a `config.json` text; `origin` names the file in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, LmError> {
        let bad = |reason: String| LmError::Config {
            origin: origin.to_string(),
            reason,
        };
        let config = json::parse(text).map_err(bad)?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Checks the shapes fit together, so that a bad config fails here and not inside a matmul
    /// (or a division by a zero head count), and bounds the rotary tables built from it.
    pub fn validate(&self, origin: &str) -> Result<(), LmError> {
        let bad = |reason: String| {
            Err(LmError::Config {
                origin: origin.to_string(),
                reason,
            })
        };
        let (positions, head_dim) = match self {
            LmConfig::GptNeox(c) => (
                c.max_position_embeddings,
                c.hidden_size / c.num_attention_heads.max(1),
            ),
            LmConfig::Llama(c) => (c.max_position_embeddings, c.head_dim),
        };
        if positions == 0 || positions > MAX_POSITIONS {
            return bad(format!(
                "max_position_embeddings {positions} is outside 1..={MAX_POSITIONS}"
            ));
        }
        if positions
            .checked_mul(head_dim)
            .is_none_or(|n| n > MAX_ROPE_TABLE)
        {
            return bad(format!(
                "max_position_embeddings {positions} x head dimension {head_dim} exceeds {MAX_ROPE_TABLE} (the rotary table limit)"
            ));
        }
        match self {
            LmConfig::GptNeox(c) => {
                if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
                    return bad(format!(
                        "hidden_size {} is not a multiple of num_attention_heads {}",
                        c.hidden_size, c.num_attention_heads
                    ));
                }
                if !(0.0..=1.0).contains(&c.rotary_pct) {
                    return bad(format!("rotary_pct {} is outside [0, 1]", c.rotary_pct));
                }
                if c.hidden_act == HiddenAct::Silu {
                    return bad(format!(
                        "hidden_act {:?} is not supported",
                        c.hidden_act.name()
                    ));
                }
            }
            LmConfig::Llama(c) => {
                if c.num_attention_heads == 0 || c.head_dim == 0 {
                    return bad(format!(
                        "num_attention_heads {} and head_dim {} must be nonzero",
                        c.num_attention_heads, c.head_dim
                    ));
                }
                if c.num_key_value_heads == 0 || c.num_attention_heads % c.num_key_value_heads != 0
                {
                    return bad(format!(
                        "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                        c.num_attention_heads, c.num_key_value_heads
                    ));
                }
                if c.head_dim % 2 != 0 {
                    return bad(format!("head_dim {} is odd", c.head_dim));
                }
                if c.hidden_act != HiddenAct::Silu {
                    return bad(format!(
                        "hidden_act {:?} is not supported",
                        c.hidden_act.name()
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            LmConfig::GptNeox(c) => c.vocab_size,
            LmConfig::Llama(c) => c.vocab_size,
        }
    }

    pub fn set_vocab_size(&mut self, n: usize) {
        match self {
            LmConfig::GptNeox(c) => c.vocab_size = n,
            LmConfig::Llama(c) => c.vocab_size = n,
        }
    }

    pub fn max_position_embeddings(&self) -> usize {
        match self {
            LmConfig::GptNeox(c) => c.max_position_embeddings,
            LmConfig::Llama(c) => c.max_position_embeddings,
        }
    }

    /// Every tensor of the architecture under its HF name, with its shape (what a checkpoint of
    /// this config holds).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out: Vec<(String, Vec<usize>)> = Vec::new();
        let mut add = |name: String, dims: &[usize]| out.push((name, dims.to_vec()));
        match self {
            LmConfig::GptNeox(c) => {
                let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
                add("gpt_neox.embed_in.weight".into(), &[v, h]);
                for n in 0..c.num_hidden_layers {
                    let l = format!("gpt_neox.layers.{n}");
                    for norm in ["input_layernorm", "post_attention_layernorm"] {
                        add(format!("{l}.{norm}.weight"), &[h]);
                        add(format!("{l}.{norm}.bias"), &[h]);
                    }
                    let mut linear = |name: &str, o: usize, inp: usize, bias: bool| {
                        add(format!("{l}.{name}.weight"), &[o, inp]);
                        if bias {
                            add(format!("{l}.{name}.bias"), &[o]);
                        }
                    };
                    linear("attention.query_key_value", 3 * h, h, c.attention_bias);
                    linear("attention.dense", h, h, c.attention_bias);
                    linear("mlp.dense_h_to_4h", i, h, true);
                    linear("mlp.dense_4h_to_h", h, i, true);
                }
                add("gpt_neox.final_layer_norm.weight".into(), &[h]);
                add("gpt_neox.final_layer_norm.bias".into(), &[h]);
                if !c.tie_word_embeddings {
                    add("embed_out.weight".into(), &[v, h]);
                }
            }
            LmConfig::Llama(c) => {
                let (h, i, v, d) = (c.hidden_size, c.intermediate_size, c.vocab_size, c.head_dim);
                let (q, kv) = (c.num_attention_heads * d, c.num_key_value_heads * d);
                add("model.embed_tokens.weight".into(), &[v, h]);
                for n in 0..c.num_hidden_layers {
                    let l = format!("model.layers.{n}");
                    add(format!("{l}.input_layernorm.weight"), &[h]);
                    add(format!("{l}.post_attention_layernorm.weight"), &[h]);
                    for (name, o) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                        add(format!("{l}.self_attn.{name}.weight"), &[o, h]);
                        if c.attention_bias {
                            add(format!("{l}.self_attn.{name}.bias"), &[o]);
                        }
                    }
                    add(format!("{l}.self_attn.o_proj.weight"), &[h, q]);
                    add(format!("{l}.mlp.gate_proj.weight"), &[i, h]);
                    add(format!("{l}.mlp.up_proj.weight"), &[i, h]);
                    add(format!("{l}.mlp.down_proj.weight"), &[h, i]);
                }
                add("model.norm.weight".into(), &[h]);
                if !c.tie_word_embeddings {
                    add("lm_head.weight".into(), &[v, h]);
                }
            }
        }
        out
    }

    /// The `config.json` a transformers release can load (transformers 4.x field names, which 5.x
    /// still reads).
    pub fn to_hf_json(&self) -> Value {
        match self {
            LmConfig::GptNeox(c) => {
                let mut v = serde_json::to_value(c).unwrap_or_default();
                v["model_type"] = "gpt_neox".into();
                v["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]);
                v["torch_dtype"] = "float32".into();
                v
            }
            LmConfig::Llama(c) => {
                let mut v = serde_json::to_value(c).unwrap_or_default();
                v["model_type"] = "llama".into();
                v["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
                v["mlp_bias"] = false.into();
                v["torch_dtype"] = "float32".into();
                v
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dolly_v2_3b_config() {
        let text = r#"{"model_type":"gpt_neox","hidden_size":2560,"num_hidden_layers":32,
            "num_attention_heads":32,"intermediate_size":10240,"vocab_size":50280,"rotary_pct":0.25,
            "rotary_emb_base":10000,"max_position_embeddings":2048,"layer_norm_eps":1e-5,
            "use_parallel_residual":true,"hidden_act":"gelu","tie_word_embeddings":false}"#;
        let LmConfig::GptNeox(c) = LmConfig::from_json(text, "dolly").unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.hidden_size, c.num_hidden_layers, c.vocab_size),
            (2560, 32, 50280)
        );
        assert_eq!(c.rotary_pct, 0.25);
        assert!(c.use_parallel_residual && !c.tie_word_embeddings);
    }

    #[test]
    fn null_takes_the_default_and_hidden_act_is_checked_per_architecture() {
        let neox = r#"{"model_type":"gpt_neox","hidden_size":64,"num_hidden_layers":2,
            "num_attention_heads":4,"vocab_size":100,"intermediate_size":null,ACT}"#;
        let parse = |act: &str| LmConfig::from_json(&neox.replace("ACT", act), "n.json");
        let LmConfig::GptNeox(c) = parse(r#""hidden_act":null"#).unwrap() else {
            panic!()
        };
        assert_eq!((c.intermediate_size, c.hidden_act), (256, HiddenAct::Gelu));
        let LmConfig::GptNeox(c) = parse(r#""hidden_act":"gelu_new""#).unwrap() else {
            panic!()
        };
        assert_eq!(c.hidden_act, HiddenAct::GeluNew);
        for act in ["silu", "relu"] {
            let err = parse(&format!(r#""hidden_act":"{act}""#))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("n.json")
                    && err.contains(&format!("hidden_act \"{act}\" is not supported")),
                "{err}"
            );
        }
        // Written back under transformers' name.
        let config = parse(r#""hidden_act":"gelu_fast""#).unwrap();
        assert_eq!(config.to_hf_json()["hidden_act"], "gelu_fast");
    }

    #[test]
    fn reads_rope_scaling_in_both_spellings_and_writes_it_back() {
        let base = r#"{"model_type":"llama","hidden_size":64,"num_hidden_layers":2,
            "num_attention_heads":4,"intermediate_size":128,"vocab_size":100,SCALING}"#;
        let parse =
            |scaling: &str| LmConfig::from_json(&base.replace("SCALING", scaling), "c.json");
        // transformers 4.3x: "rope_scaling" with "type".
        let LmConfig::Llama(c) = parse(r#""rope_scaling":{"type":"linear","factor":4.0}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 4.0 }));
        // transformers 5: the scaling keys inside "rope_parameters".
        let v5 = r#""rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}"#;
        let config = parse(v5).unwrap();
        let LmConfig::Llama(c) = &config else {
            panic!()
        };
        assert_eq!(c.rope_theta, 500000.0);
        assert!(
            matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0)
        );
        // Saved and read again, the scaling stays.
        let again = LmConfig::from_json(&config.to_hf_json().to_string(), "saved").unwrap();
        assert_eq!(again, config);
        // Default is none; others are named in the error.
        let LmConfig::Llama(c) = parse(r#""rope_scaling":{"rope_type":"default"}"#).unwrap() else {
            panic!()
        };
        assert_eq!(c.rope_scaling, None);
        let err = parse(r#""rope_scaling":{"rope_type":"yarn","factor":4.0}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.json") && err.contains("yarn"), "{err}");
        let err = parse(r#""rope_scaling":{"rope_type":"linear"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("factor"), "{err}");
    }

    #[test]
    fn llama3_scaling_keeps_high_stretches_low_and_blends_between() {
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 32,
        };
        // Wavelengths 2π/f: 4 (kept, under 32/4), 16 (blended), 64 (stretched, over 32/1).
        let tau = 2.0 * std::f64::consts::PI;
        let mut f = [tau / 4.0, tau / 16.0, tau / 64.0];
        s.apply(&mut f);
        assert!((f[0] - tau / 4.0).abs() < 1e-12);
        // smooth = (32/16 - 1) / (4 - 1) = 1/3: (2/3)·f/8 + (1/3)·f.
        let want = tau / 16.0 * (2.0 / 3.0 / 8.0 + 1.0 / 3.0);
        assert!((f[1] - want).abs() < 1e-12, "{} {want}", f[1]);
        assert!((f[2] - tau / 64.0 / 8.0).abs() < 1e-12);
        let mut g = [1.0, 0.5];
        RopeScaling::Linear { factor: 2.0 }.apply(&mut g);
        assert_eq!(g, [0.5, 0.25]);
    }

    #[test]
    fn reads_transformers_5_rope_parameters_and_rejects_bad_shapes() {
        let text = r#"{"model_type":"llama","hidden_size":64,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":2,"intermediate_size":128,
            "vocab_size":100,"rope_parameters":{"rope_theta":100000.0,"rope_type":"default"}}"#;
        let LmConfig::Llama(c) = LmConfig::from_json(text, "x").unwrap() else {
            panic!()
        };
        assert_eq!((c.head_dim, c.rope_theta), (16, 100000.0));
        let bad = text.replace("\"num_key_value_heads\":2", "\"num_key_value_heads\":3");
        let err = LmConfig::from_json(&bad, "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cfg.json") && err.contains("num_key_value_heads"),
            "{err}"
        );
        let err = LmConfig::from_json(r#"{"model_type":"bert"}"#, "b")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bert"), "{err}");
    }
}
