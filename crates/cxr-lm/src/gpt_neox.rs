//! GPT-NeoX (pythia, dolly-v2: LLM-CXR's base model), as transformers' `modeling_gpt_neox.py`:
//! a fused `query_key_value` projection laid out [heads, 3, head_dim], rotary embeddings on the first
//! `rotary_pct` of each head, LayerNorm, exact GELU, the parallel residual
//! `x + attn(ln1(x)) + mlp(ln2(x))` and an untied `embed_out`. Weights load by their HF names.

use candle_core::{Result, Tensor, D};

use crate::attention::{self_attention, LayerCache, Rotary, Span};
use crate::config::{GptNeoxConfig, HiddenAct};
use crate::weights::{Linear, Weights};
use crate::LmError;
use cxr_ops::transformer::layer_norm;

#[derive(Clone, Debug)]
struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Norm {
    fn load(w: &Weights, size: usize, eps: f64) -> std::result::Result<Self, LmError> {
        Ok(Norm {
            weight: w.tensor("weight", &[size])?,
            bias: w.tensor("bias", &[size])?,
            eps,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

#[derive(Clone, Debug)]
struct Layer {
    input_layernorm: Norm,
    post_attention_layernorm: Norm,
    query_key_value: Linear,
    dense: Linear,
    dense_h_to_4h: Linear,
    dense_4h_to_h: Linear,
}

#[derive(Clone, Debug)]
pub struct GptNeox {
    embed_in: Linear,
    layers: Vec<Layer>,
    final_layer_norm: Norm,
    embed_out: Linear,
    rotary: Rotary,
    config: GptNeoxConfig,
}

impl GptNeox {
    pub fn load(config: &GptNeoxConfig, w: &Weights) -> std::result::Result<Self, LmError> {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let bias = config.attention_bias;
        let eps = config.layer_norm_eps;
        let model = w.pp("gpt_neox");
        let embed_in = model.table("embed_in.weight", (config.vocab_size, h))?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for n in 0..config.num_hidden_layers {
            let l = model.pp(format!("layers.{n}"));
            layers.push(Layer {
                input_layernorm: Norm::load(&l.pp("input_layernorm"), h, eps)?,
                post_attention_layernorm: Norm::load(&l.pp("post_attention_layernorm"), h, eps)?,
                query_key_value: l.linear("attention.query_key_value", (3 * h, h), bias)?,
                dense: l.linear("attention.dense", (h, h), bias)?,
                dense_h_to_4h: l.linear("mlp.dense_h_to_4h", (i, h), true)?,
                dense_4h_to_h: l.linear("mlp.dense_4h_to_h", (h, i), true)?,
            });
        }
        let final_layer_norm = Norm::load(&model.pp("final_layer_norm"), h, eps)?;
        // transformers 5 calls the head `lm_head` in a raw state_dict; checkpoints call it `embed_out`.
        let embed_out = if w.contains("embed_out.weight") {
            w.linear("embed_out", (config.vocab_size, h), false)?
        } else if w.contains("lm_head.weight") || !config.tie_word_embeddings {
            w.linear("lm_head", (config.vocab_size, h), false)?
        } else {
            embed_in.clone()
        };
        let head_dim = h / config.num_attention_heads;
        let rotary_dims = ((head_dim as f64 * config.rotary_pct) as usize) & !1;
        let rotary = Rotary::new(
            rotary_dims,
            config.rotary_emb_base,
            config.rope_scaling.as_ref(),
            config.max_position_embeddings,
            w.device(),
        )
        .map_err(|e| LmError::Candle(e.to_string()))?;
        Ok(GptNeox {
            embed_in,
            layers,
            final_layer_norm,
            embed_out,
            rotary,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &GptNeoxConfig {
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
        let heads = self.config.num_attention_heads;
        let head_dim = self.config.hidden_size / heads;
        let positions = span.positions(ids.device())?;
        let mask = span.mask(ids.device())?;
        let mut x = self.embed_in.embed(ids)?;
        for (n, layer) in self.layers.iter().enumerate() {
            let a = layer.input_layernorm.forward(&x)?;
            let qkv = layer
                .query_key_value
                .forward(&a)?
                .reshape((b, t, heads, 3 * head_dim))?
                .transpose(1, 2)?;
            let q = self
                .rotary
                .apply(&qkv.narrow(D::Minus1, 0, head_dim)?, &positions)?;
            let k = self
                .rotary
                .apply(&qkv.narrow(D::Minus1, head_dim, head_dim)?, &positions)?;
            let v = qkv.narrow(D::Minus1, 2 * head_dim, head_dim)?;
            let layer_cache = cache.as_deref_mut().map(|c| &mut c[n]);
            let attn = self_attention(&q, &k, &v, layer_cache, span, mask.as_ref())?;
            let attn = layer.dense.forward(&attn)?;
            x = if self.config.use_parallel_residual {
                let m = self.mlp(layer, &layer.post_attention_layernorm.forward(&x)?)?;
                ((x + attn)? + m)?
            } else {
                let x = (x + attn)?;
                let m = self.mlp(layer, &layer.post_attention_layernorm.forward(&x)?)?;
                (x + m)?
            };
        }
        self.final_layer_norm.forward(&x)
    }

    fn mlp(&self, layer: &Layer, x: &Tensor) -> Result<Tensor> {
        let h = layer.dense_h_to_4h.forward(x)?;
        let h = match self.config.hidden_act {
            HiddenAct::Gelu => cxr_ops::transformer::gelu_erf(&h)?,
            // gelu_new and gelu_fast: the tanh approximation.
            _ => h.gelu()?,
        };
        layer.dense_4h_to_h.forward(&h)
    }

    pub fn head(&self) -> &Linear {
        &self.embed_out
    }

    pub fn embeddings(&self) -> &Linear {
        &self.embed_in
    }
}
