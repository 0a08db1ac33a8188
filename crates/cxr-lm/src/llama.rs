//! LLaMA and its relatives (SmolLM2, TinyLlama, Llama-2/3 without rope scaling, Qwen2 with q/k/v
//! bias), as transformers' `modeling_llama.py`: RMSNorm, rotary on the whole head (`rotate_half`
//! layout), grouped-query attention, SwiGLU, tied or untied `lm_head`. Weights load by their HF
//! names; GGUF files are renamed and un-permuted to this layout on load (see `gguf.rs`).

use candle_core::{Result, Tensor};

use crate::attention::{self_attention, LayerCache, Rotary, Span};
use crate::config::LlamaConfig;
use crate::weights::{Linear, Weights};
use crate::LmError;
use cxr_ops::transformer::rms_norm;

#[derive(Clone, Debug)]
struct Layer {
    input_layernorm: Tensor,
    post_attention_layernorm: Tensor,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

#[derive(Clone, Debug)]
pub struct Llama {
    embed_tokens: Linear,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    rotary: Rotary,
    config: LlamaConfig,
}

impl Llama {
    pub fn load(config: &LlamaConfig, w: &Weights) -> std::result::Result<Self, LmError> {
        let (h, i, d) = (
            config.hidden_size,
            config.intermediate_size,
            config.head_dim,
        );
        let (heads, kv_heads) = (config.num_attention_heads, config.num_key_value_heads);
        let bias = config.attention_bias;
        let model = w.pp("model");
        let embed_tokens = model.table("embed_tokens.weight", (config.vocab_size, h))?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for n in 0..config.num_hidden_layers {
            let l = model.pp(format!("layers.{n}"));
            layers.push(Layer {
                input_layernorm: l.tensor("input_layernorm.weight", &[h])?,
                post_attention_layernorm: l.tensor("post_attention_layernorm.weight", &[h])?,
                q_proj: l.linear("self_attn.q_proj", (heads * d, h), bias)?,
                k_proj: l.linear("self_attn.k_proj", (kv_heads * d, h), bias)?,
                v_proj: l.linear("self_attn.v_proj", (kv_heads * d, h), bias)?,
                o_proj: l.linear("self_attn.o_proj", (h, heads * d), false)?,
                gate_proj: l.linear("mlp.gate_proj", (i, h), false)?,
                up_proj: l.linear("mlp.up_proj", (i, h), false)?,
                down_proj: l.linear("mlp.down_proj", (h, i), false)?,
            });
        }
        let norm = model.tensor("norm.weight", &[h])?;
        let lm_head = if w.contains("lm_head.weight") {
            w.linear("lm_head", (config.vocab_size, h), false)?
        } else if config.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            return Err(LmError::MissingTensor {
                origin: "the checkpoint".into(),
                name: "lm_head.weight".into(),
            });
        };
        let rotary = Rotary::new(
            d,
            config.rope_theta,
            config.rope_scaling.as_ref(),
            config.max_position_embeddings,
            w.device(),
        )
        .map_err(|e| LmError::Candle(e.to_string()))?;
        Ok(Llama {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Final hidden states (b, t, hidden) of `ids` (b, t).
    pub fn hidden(
        &self,
        ids: &Tensor,
        span: &Span,
        mut cache: Option<&mut [LayerCache]>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let c = &self.config;
        let (heads, kv_heads, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let eps = c.rms_norm_eps;
        let positions = span.positions(ids.device())?;
        let mask = span.mask(ids.device())?;
        let mut x = self.embed_tokens.embed(ids)?;
        for (n, layer) in self.layers.iter().enumerate() {
            let a = rms_norm(&x, &layer.input_layernorm, eps)?;
            let split = |lin: &Linear, hs: usize| -> Result<Tensor> {
                lin.forward(&a)?.reshape((b, t, hs, d))?.transpose(1, 2)
            };
            let q = self
                .rotary
                .apply(&split(&layer.q_proj, heads)?, &positions)?;
            let k = self
                .rotary
                .apply(&split(&layer.k_proj, kv_heads)?, &positions)?;
            let v = split(&layer.v_proj, kv_heads)?;
            let layer_cache = cache.as_deref_mut().map(|c| &mut c[n]);
            let attn = self_attention(&q, &k, &v, layer_cache, span, mask.as_ref())?;
            let attn = layer.o_proj.forward(&attn)?;
            x = (x + attn)?;
            let m = rms_norm(&x, &layer.post_attention_layernorm, eps)?;
            let gate = candle_nn::ops::silu(&layer.gate_proj.forward(&m)?)?;
            let m = layer
                .down_proj
                .forward(&(gate * layer.up_proj.forward(&m)?)?)?;
            x = (x + m)?;
        }
        rms_norm(&x, &self.norm, eps)
    }

    pub fn head(&self) -> &Linear {
        &self.lm_head
    }

    pub fn embeddings(&self) -> &Linear {
        &self.embed_tokens
    }
}
