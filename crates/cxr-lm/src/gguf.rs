//! GGUF (llama.cpp's self-describing file): the config from its metadata, the tensors renamed to
//! HF names, and the tokenizer rebuilt from `tokenizer.ggml.*` as a `tokenizer.json`.
//!
//! llama.cpp's converter permutes the rows of `q_proj`/`k_proj` so that its interleaved rope works;
//! we move each quantized row back (rows are independent blocks of bytes), so one rope layout,
//! HF's, serves every source. Supported: `general.architecture` = `llama` (SmolLM2, TinyLlama,
//! Llama-2/3) with a `gpt2` (byte-level BPE) tokenizer.

mod header;

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::Device;
use serde_json::json;

use crate::config::{HiddenAct, LlamaConfig, LmConfig, RopeScaling};
use crate::weights::Weight;
use crate::LmError;

/// Everything a GGUF file holds for us.
pub struct GgufModel {
    pub config: LmConfig,
    pub tensors: HashMap<String, Weight>,
    /// A `tokenizer.json` document equivalent to the GGUF vocabulary.
    pub tokenizer_json: String,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

pub use header::{MAX_METADATA_VALUES, MAX_TENSORS};

pub fn read_gguf(path: &Path, device: &Device) -> Result<GgufModel, LmError> {
    let mut file = std::fs::File::open(path).map_err(|e| LmError::Weights {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    read_gguf_from(&mut file, path, device)
}

/// [`read_gguf`] on any reader (a file, or bytes in a `Cursor` for a fuzz target); `path` only
/// names the source in errors. The header is walked and checked (alignment, counts, lengths)
/// before candle parses it, and every tensor's data range is checked against the reader's end
/// before anything is read or allocated for it.
pub fn read_gguf_from<R: Read + Seek>(
    file: &mut R,
    path: &Path,
    device: &Device,
) -> Result<GgufModel, LmError> {
    let bad = |reason: String| LmError::Weights {
        path: path.to_path_buf(),
        reason,
    };
    let facts = header::check_header(file).map_err(bad)?;
    let content = Content::read(file).map_err(|e| bad(format!("not a GGUF file: {e}")))?;
    check_tensor_ranges(&content, facts.file_size).map_err(bad)?;
    let md = &content.metadata;
    let get = |key: &str| {
        md.get(key)
            .ok_or_else(|| bad(format!("metadata {key:?} is missing")))
    };
    let arch = get("general.architecture")?
        .to_string()
        .map_err(|e| bad(e.to_string()))?
        .clone();
    if arch != "llama" {
        return Err(bad(format!(
            "architecture {arch:?} is not supported in GGUF (llama is)"
        )));
    }
    let num = |key: &str| -> Result<usize, LmError> {
        let v = get(&format!("{arch}.{key}"))?;
        v.to_u32()
            .map(|n| n as usize)
            .or_else(|_| v.to_u64().map(|n| n as usize))
            .map_err(|e| bad(format!("{key}: {e}")))
    };
    let float = |key: &str, default: f64| -> f64 {
        md.get(&format!("{arch}.{key}"))
            .and_then(|v| v.to_f32().ok())
            .map_or(default, f64::from)
    };
    let tokens: Vec<String> = get("tokenizer.ggml.tokens")?
        .to_vec()
        .map_err(|e| bad(e.to_string()))?
        .iter()
        .map(|v| v.to_string().cloned().unwrap_or_default())
        .collect();
    let hidden = num("embedding_length")?;
    let heads = num("attention.head_count")?;
    let kv_heads = num("attention.head_count_kv").unwrap_or(heads);
    if heads == 0 || kv_heads == 0 {
        return Err(bad(format!(
            "attention head count {heads} (key/value heads {kv_heads}) must be nonzero"
        )));
    }
    if !hidden.is_multiple_of(heads) {
        return Err(bad(format!(
            "embedding_length {hidden} is not a multiple of the head count {heads}"
        )));
    }
    let has_output = content.tensor_infos.contains_key("output.weight");
    // llama.cpp writes Llama 3.1's scaling as a tensor of per-frequency factors, not as
    // parameters that an HF config could hold again: refused rather than silently ignored.
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(bad(
            "rope_freqs.weight (Llama 3.1 rope scaling as llama.cpp stores it) is not supported; \
             load the model's HF directory instead"
                .into(),
        ));
    }
    let scaling_type = md
        .get(&format!("{arch}.rope.scaling.type"))
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_else(|| "none".into());
    let rope_scaling = match scaling_type.as_str() {
        "none" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: float("rope.scaling.factor", 1.0),
        }),
        other => {
            return Err(bad(format!(
                "rope scaling {other:?} is not supported (linear is)"
            )))
        }
    };
    let config = LlamaConfig {
        vocab_size: tokens.len(),
        hidden_size: hidden,
        num_hidden_layers: num("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim: hidden / heads,
        intermediate_size: num("feed_forward_length")?,
        rope_theta: float("rope.freq_base", 10_000.0),
        max_position_embeddings: num("context_length").unwrap_or(2048),
        rms_norm_eps: float("attention.layer_norm_rms_epsilon", 1e-5),
        tie_word_embeddings: !has_output,
        attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        hidden_act: HiddenAct::Silu,
        rope_scaling,
    };
    let config = LmConfig::Llama(config);
    config.validate(&path.display().to_string())?;

    let mut tensors = HashMap::new();
    for name in content.tensor_infos.keys() {
        let Some(hf) = hf_name(name) else { continue };
        let q = content
            .tensor(file, name, device)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        let q = if name.ends_with("attn_q.weight") {
            unpermute_rows(q, heads, device).map_err(|e| bad(format!("{name}: {e}")))?
        } else if name.ends_with("attn_k.weight") {
            unpermute_rows(q, kv_heads, device).map_err(|e| bad(format!("{name}: {e}")))?
        } else {
            q
        };
        let weight = match q.dtype() {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => Weight::Float(
                q.dequantize(device)
                    .map_err(|e| bad(format!("{name}: {e}")))?,
            ),
            _ => Weight::Quantized(Arc::new(q)),
        };
        tensors.insert(hf, weight);
    }

    let token_id = |key: &str| {
        md.get(key)
            .and_then(|v| v.to_u32().ok())
            .and_then(|i| tokens.get(i as usize).cloned())
    };
    let types: Vec<i32> = md
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|v| v.iter().map(|t| t.to_i32().unwrap_or(1)).collect())
        .unwrap_or_default();
    let merges: Vec<String> = md
        .get("tokenizer.ggml.merges")
        .and_then(|v| v.to_vec().ok())
        .map(|v| {
            v.iter()
                .filter_map(|m| m.to_string().ok().cloned())
                .collect()
        })
        .unwrap_or_default();
    let model_kind = md
        .get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if model_kind != "gpt2" {
        return Err(bad(format!(
            "tokenizer model {model_kind:?} is not supported (gpt2 byte-level BPE is)"
        )));
    }
    let pre = md
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    let tokenizer_json = byte_level_bpe_json(&tokens, &types, &merges, &pre);
    let chat_template = md
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned();
    Ok(GgufModel {
        config,
        tensors,
        tokenizer_json,
        chat_template,
        bos_token: token_id("tokenizer.ggml.bos_token_id"),
        eos_token: token_id("tokenizer.ggml.eos_token_id"),
    })
}

/// Refuses any tensor whose element count overflows, is not whole blocks of its type, or whose
/// data runs past `file_end`: candle computes these with unchecked products, and a wrapped one
/// would slice out of range.
fn check_tensor_ranges(content: &Content, file_end: u64) -> Result<(), String> {
    for (name, info) in &content.tensor_infos {
        let dims = info.shape.dims();
        let elems = dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| format!("tensor {name}: dimensions {dims:?} overflow"))?;
        if elems == 0 {
            return Err(format!("tensor {name}: has no elements ({dims:?})"));
        }
        let block = info.ggml_dtype.block_size();
        if !elems.is_multiple_of(block) {
            return Err(format!(
                "tensor {name}: {elems} elements are not whole blocks of {block} ({:?})",
                info.ggml_dtype
            ));
        }
        let bytes = (elems / block)
            .checked_mul(info.ggml_dtype.type_size())
            .and_then(|b| u64::try_from(b).ok())
            .ok_or_else(|| format!("tensor {name}: size of {dims:?} overflows"))?;
        let start = content.tensor_data_offset.checked_add(info.offset);
        match start.and_then(|s| s.checked_add(bytes).map(|e| (s, e))) {
            Some((_, end)) if end <= file_end => {}
            _ => {
                return Err(format!(
                    "tensor {name}: {bytes} bytes at offset {} run past the end of the file ({file_end} bytes)",
                    info.offset
                ))
            }
        }
    }
    Ok(())
}

/// GGUF tensor name -> HF name (llama family).
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Undoes llama.cpp's `permute(w, n_head)`: GGUF row `h·d + 2j + i` is HF row `h·d + i·d/2 + j`.
fn unpermute_rows(q: QTensor, heads: usize, device: &Device) -> candle_core::Result<QTensor> {
    let (rows, cols) = q.shape().dims2()?;
    let dtype = q.dtype();
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        candle_core::bail!("{rows} rows are not {heads} heads of an even dimension");
    }
    if !cols.is_multiple_of(dtype.block_size()) {
        candle_core::bail!("{cols} columns are not whole blocks of {dtype:?}");
    }
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let data = q.data()?;
    if data.len() != rows * row_bytes {
        candle_core::bail!(
            "{} bytes of data for {rows} rows of {row_bytes}",
            data.len()
        );
    }
    let d = rows / heads;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..d / 2 {
                let src = h * d + 2 * j + i;
                let dst = h * d + i * (d / 2) + j;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    qtensor_from_ggml(dtype, &out, vec![rows, cols], device)
}

/// A `tokenizer.json` for a GPT-2 style byte-level BPE vocabulary. Control tokens (type 3) and
/// user-defined ones (type 4) become added tokens, matched before BPE as HF does.
fn byte_level_bpe_json(tokens: &[String], types: &[i32], merges: &[String], pre: &str) -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3) | Some(4)))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": types.get(i) == Some(&3)})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    // llama.cpp's "smollm" and "starcoder" pre-tokenizers split digits one by one first.
    let pre_tokenizer = if matches!(pre, "smollm" | "starcoder" | "refact") {
        json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]})
    } else {
        byte_level.clone()
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges},
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hf() {
        assert_eq!(
            hf_name("blk.3.attn_q.weight").unwrap(),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").unwrap(),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    /// A GGUF holding only metadata (and, when asked, llama.cpp's `rope_freqs.weight`).
    fn write_gguf(path: &Path, scaling: Option<&str>, rope_freqs: bool) {
        use candle_core::quantized::gguf_file::Value as V;
        let mut md: Vec<(&str, V)> = vec![
            ("general.architecture", V::String("llama".into())),
            ("llama.embedding_length", V::U32(8)),
            ("llama.attention.head_count", V::U32(2)),
            ("llama.block_count", V::U32(1)),
            ("llama.feed_forward_length", V::U32(16)),
            ("llama.context_length", V::U32(64)),
            (
                "tokenizer.ggml.tokens",
                V::Array(vec![V::String("a".into()), V::String("b".into())]),
            ),
            ("tokenizer.ggml.model", V::String("gpt2".into())),
            ("tokenizer.ggml.merges", V::Array(vec![])),
        ];
        if let Some(kind) = scaling {
            md.push(("llama.rope.scaling.type", V::String(kind.into())));
            md.push(("llama.rope.scaling.factor", V::F32(4.0)));
        }
        let freqs = QTensor::quantize(
            &candle_core::Tensor::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap(),
            GgmlDType::F32,
        )
        .unwrap();
        let tensors: Vec<(&str, &QTensor)> = if rope_freqs {
            vec![("rope_freqs.weight", &freqs)]
        } else {
            vec![]
        };
        let md: Vec<(&str, &V)> = md.iter().map(|(k, v)| (*k, v)).collect();
        let mut f = std::fs::File::create(path).unwrap();
        candle_core::quantized::gguf_file::write(&mut f, &md, &tensors).unwrap();
    }

    #[test]
    fn rope_scaling_is_read_from_metadata_and_llama_cpp_freq_factors_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        write_gguf(&path, Some("linear"), false);
        let LmConfig::Llama(c) = read_gguf(&path, &Device::Cpu).unwrap().config else {
            panic!()
        };
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 4.0 }));
        write_gguf(&path, None, false);
        let LmConfig::Llama(c) = read_gguf(&path, &Device::Cpu).unwrap().config else {
            panic!()
        };
        assert_eq!(c.rope_scaling, None);
        write_gguf(&path, Some("yarn"), false);
        let err = read_gguf(&path, &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("m.gguf") && err.contains("yarn"), "{err}");
        write_gguf(&path, None, true);
        let err = read_gguf(&path, &Device::Cpu).err().unwrap().to_string();
        assert!(
            err.contains("m.gguf") && err.contains("rope_freqs"),
            "{err}"
        );
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // 2 heads of dim 4, 32 columns of f32: row r holds the value r.
        let (heads, d, cols) = (2, 4, 32);
        let rows = heads * d;
        // llama.cpp: gguf row h·d + 2j + i holds HF row h·d + i·d/2 + j.
        let mut data = Vec::new();
        for r in 0..rows {
            let (h, rest) = (r / d, r % d);
            let (j, i) = (rest / 2, rest % 2);
            let hf_row = h * d + i * d / 2 + j;
            for _ in 0..cols {
                data.extend_from_slice(&(hf_row as f32).to_le_bytes());
            }
        }
        let q = qtensor_from_ggml(GgmlDType::F32, &data, vec![rows, cols], &Device::Cpu).unwrap();
        let back = unpermute_rows(q, heads, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        let first: Vec<f32> = back
            .to_vec2::<f32>()
            .unwrap()
            .iter()
            .map(|r| r[0])
            .collect();
        assert_eq!(first, (0..rows).map(|r| r as f32).collect::<Vec<_>>());
    }
}
