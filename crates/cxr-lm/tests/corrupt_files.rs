//! Crafted model files: each corruption must end in an error that names the file and the problem,
//! never a panic, an abort or an allocation sized by a forged length.

use candle_core::Device;
use cxr_lm::gguf::{read_gguf, MAX_METADATA_VALUES, MAX_TENSORS};

/// GGUF metadata values used by these tests.
enum V {
    U32(u32),
    Str(&'static str),
    Strs(Vec<&'static str>),
    /// An array of `n` u8 elements (written as zeros).
    Bytes(u64),
}

struct TensorSpec {
    name: &'static str,
    /// In GGUF order (innermost first), as written on disk.
    dims: Vec<u64>,
    /// GGML type id (0 = f32).
    dtype: u32,
    offset: u64,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A GGUF v3 file: header, metadata, tensor infos, padding to 32, then `data`.
fn gguf_bytes(kv: &[(&str, V)], tensors: &[TensorSpec], data: &[u8]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kv.len() as u64).to_le_bytes());
    for (key, value) in kv {
        put_str(&mut out, key);
        match value {
            V::U32(v) => {
                out.extend(4u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            V::Str(s) => {
                out.extend(8u32.to_le_bytes());
                put_str(&mut out, s);
            }
            V::Strs(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|s| put_str(&mut out, s));
            }
            V::Bytes(n) => {
                out.extend(9u32.to_le_bytes());
                out.extend(0u32.to_le_bytes());
                out.extend(n.to_le_bytes());
                out.resize(out.len() + *n as usize, 0);
            }
        }
    }
    for t in tensors {
        put_str(&mut out, t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        t.dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
        out.extend(t.dtype.to_le_bytes());
        out.extend(t.offset.to_le_bytes());
    }
    out.resize(out.len().div_ceil(32) * 32, 0);
    out.extend(data);
    out
}

/// The metadata of a one-layer llama with two heads; `edit` changes it.
fn llama_kv(edit: impl FnOnce(&mut Vec<(&'static str, V)>)) -> Vec<(&'static str, V)> {
    let mut kv = vec![
        ("general.architecture", V::Str("llama")),
        ("llama.embedding_length", V::U32(8)),
        ("llama.attention.head_count", V::U32(2)),
        ("llama.block_count", V::U32(1)),
        ("llama.feed_forward_length", V::U32(16)),
        ("llama.context_length", V::U32(64)),
        ("tokenizer.ggml.tokens", V::Strs(vec!["a", "b"])),
        ("tokenizer.ggml.model", V::Str("gpt2")),
        ("tokenizer.ggml.merges", V::Strs(vec![])),
    ];
    edit(&mut kv);
    kv
}

fn set(kv: &mut [(&'static str, V)], key: &str, value: V) {
    kv.iter_mut().find(|(k, _)| *k == key).unwrap().1 = value;
}

/// Writes `bytes` as `m.gguf` in a fresh folder and returns the error reading it gives.
fn gguf_error(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, bytes).unwrap();
    match read_gguf(&path, &Device::Cpu) {
        Ok(_) => panic!("the corrupt GGUF was accepted"),
        Err(e) => {
            let e = e.to_string();
            assert!(
                e.contains("m.gguf"),
                "the error does not name the file: {e}"
            );
            e
        }
    }
}

fn q_proj(dims: Vec<u64>, offset: u64) -> TensorSpec {
    TensorSpec {
        name: "blk.0.attn_q.weight",
        dims,
        dtype: 0,
        offset,
    }
}

#[test]
fn valid_crafted_gguf_loads() {
    // The baseline the corruptions below start from: an 8x8 f32 q_proj that loads.
    let bytes = gguf_bytes(&llama_kv(|_| {}), &[q_proj(vec![8, 8], 0)], &[0u8; 256]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, bytes).unwrap();
    let model = read_gguf(&path, &Device::Cpu).unwrap();
    assert!(model
        .tensors
        .contains_key("model.layers.0.self_attn.q_proj.weight"));
}

#[test]
fn gguf_alignment_zero_is_refused() {
    for (alignment, says) in [
        (0, "general.alignment is 0"),
        (48, "general.alignment is 48"),
    ] {
        let kv = llama_kv(|kv| kv.push(("general.alignment", V::U32(alignment))));
        let e = gguf_error(&gguf_bytes(&kv, &[], &[]));
        assert!(e.contains(says) && e.contains("power of two"), "{e}");
    }
}

#[test]
fn gguf_head_count_zero_is_refused() {
    let kv = llama_kv(|kv| set(kv, "llama.attention.head_count", V::U32(0)));
    let e = gguf_error(&gguf_bytes(&kv, &[], &[]));
    assert!(e.contains("head count 0"), "{e}");
    let kv = llama_kv(|kv| set(kv, "llama.attention.head_count", V::U32(3)));
    let e = gguf_error(&gguf_bytes(&kv, &[], &[]));
    assert!(e.contains("not a multiple of the head count 3"), "{e}");
}

#[test]
fn gguf_wrapping_dimension_product_is_refused() {
    // 2^32 x 2^32 wraps to 0 elements: candle would read 0 bytes for a 2^64-element tensor.
    let t = q_proj(vec![1 << 32, 1 << 32], 0);
    let e = gguf_error(&gguf_bytes(&llama_kv(|_| {}), &[t], &[0u8; 64]));
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("overflow"),
        "{e}"
    );
}

#[test]
fn gguf_tensor_without_elements_is_refused() {
    // Found by the fuzzer: candle views a zero-length buffer as f32 through a dangling,
    // misaligned pointer (undefined behaviour; an abort with debug assertions).
    let t = q_proj(vec![0, 8], 0);
    let e = gguf_error(&gguf_bytes(&llama_kv(|_| {}), &[t], &[0u8; 64]));
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("no elements"),
        "{e}"
    );
}

#[test]
fn gguf_tensor_data_past_the_end_is_refused() {
    // Offset beyond the file, then a tensor longer than the data, then a truncated file.
    let t = q_proj(vec![8, 8], 1 << 40);
    let e = gguf_error(&gguf_bytes(&llama_kv(|_| {}), &[t], &[0u8; 256]));
    assert!(e.contains("run past the end of the file"), "{e}");
    let t = q_proj(vec![8, 1 << 20], 0);
    let e = gguf_error(&gguf_bytes(&llama_kv(|_| {}), &[t], &[0u8; 256]));
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("run past the end"),
        "{e}"
    );
    let mut bytes = gguf_bytes(&llama_kv(|_| {}), &[q_proj(vec![8, 8], 0)], &[0u8; 256]);
    bytes.truncate(bytes.len() - 100);
    let e = gguf_error(&bytes);
    assert!(e.contains("run past the end of the file"), "{e}");
}

#[test]
fn gguf_q_proj_rows_not_whole_heads_are_refused() {
    // 6 rows cannot be 2 heads of an even dimension (llama.cpp's permutation needs it).
    let t = q_proj(vec![8, 6], 0);
    let e = gguf_error(&gguf_bytes(&llama_kv(|_| {}), &[t], &[0u8; 192]));
    assert!(e.contains("6 rows are not 2 heads"), "{e}");
}

#[test]
fn gguf_forged_lengths_are_refused_before_allocating() {
    // A string claiming 2^60 bytes.
    let mut bytes = gguf_bytes(&llama_kv(|_| {}), &[], &[]);
    let at = 24 + 8; // first key's length: after magic, version, two counts
    bytes[24..at].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let e = gguf_error(&bytes);
    assert!(e.contains("claims 1152921504606846976 bytes"), "{e}");
    // An array claiming 2^60 elements of u8.
    let kv = llama_kv(|kv| kv.push(("x.bytes", V::Bytes(0))));
    let mut bytes = gguf_bytes(&kv, &[], &[]);
    let key = bytes.windows(7).position(|w| w == b"x.bytes").unwrap();
    let pos = key + 7 + 8; // after the key, the value type and the element type
    bytes[pos..pos + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let e = gguf_error(&bytes);
    assert!(e.contains("x.bytes"), "{e}");
    assert!(e.contains("more than") || e.contains("needs"), "{e}");
    // A tensor count beyond the limit.
    let mut bytes = gguf_bytes(&llama_kv(|_| {}), &[], &[]);
    bytes[8..16].copy_from_slice(&(MAX_TENSORS + 1).to_le_bytes());
    let e = gguf_error(&bytes);
    assert!(e.contains("65537 tensors"), "{e}");
}

#[test]
fn gguf_metadata_value_limit_is_enforced() {
    // Each u8 element would become a 32-byte value in candle's metadata map.
    let kv = llama_kv(|kv| kv.push(("x.bytes", V::Bytes(MAX_METADATA_VALUES + 1))));
    let e = gguf_error(&gguf_bytes(&kv, &[], &[]));
    assert!(e.contains("more than 4194304 values"), "{e}");
}

/// A safetensors file holding one f32 tensor `w` of shape [2, 3].
fn safetensors_bytes() -> Vec<u8> {
    let data: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 3], &data).unwrap();
    safetensors::serialize([("w", view)], None).unwrap()
}

fn safetensors_error(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let e = cxr_lm::weights::read_hf_tensors(&path, &Device::Cpu)
        .expect_err("the corrupt safetensors was accepted")
        .to_string();
    assert!(
        e.contains("m.safetensors"),
        "the error does not name the file: {e}"
    );
    e
}

#[test]
fn safetensors_header_claiming_2_pow_60_bytes_is_refused() {
    let mut bytes = safetensors_bytes();
    bytes[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let e = safetensors_error(&bytes);
    assert!(e.contains("header too large"), "{e}");
}

#[test]
fn truncated_safetensors_is_refused() {
    let bytes = safetensors_bytes();
    // Inside the tensor data, inside the header, inside the length prefix.
    for (keep, says) in [
        (bytes.len() - 4, "incomplete metadata"),
        (20, "invalid header length"),
        (4, "header too small"),
    ] {
        let e = safetensors_error(&bytes[..keep]);
        assert!(e.contains(says), "{keep}: {e}");
    }
}

#[test]
fn safetensors_offsets_out_of_range_are_refused() {
    let bytes = safetensors_bytes();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    // The same header length, with the tensor's end moved past the data.
    let forged = header.replace("[0,24]", "[0,99]");
    assert_eq!(forged.len(), header.len(), "{header}");
    let mut out = bytes.clone();
    out[8..8 + n].copy_from_slice(forged.as_bytes());
    let e = safetensors_error(&out);
    assert!(
        e.contains("invalid shape, data type, or offset for tensor"),
        "{e}"
    );
    // A shape that disagrees with its byte range.
    let forged = header.replace("[2,3]", "[9,9]");
    out[8..8 + n].copy_from_slice(forged.as_bytes());
    let e = safetensors_error(&out);
    assert!(
        e.contains("invalid shape, data type, or offset for tensor"),
        "{e}"
    );
}

#[test]
fn weight_map_shards_must_be_plain_file_names() {
    let dir = tempfile::tempdir().unwrap();
    for shard in [
        "../x.safetensors",
        "/etc/passwd",
        "sub/x.safetensors",
        "..",
        "a\\b",
    ] {
        let index = serde_json::json!({"weight_map": {"w": shard}});
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
        let e = cxr_lm::weights::weight_files(dir.path())
            .expect_err("an escaping shard name was accepted")
            .to_string();
        assert!(
            e.contains("model.safetensors.index.json") && e.contains("not a plain file name"),
            "{shard}: {e}"
        );
    }
    let index = serde_json::json!({"weight_map": {"w": "model-00001-of-00002.safetensors"}});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let files = cxr_lm::weights::weight_files(dir.path()).unwrap();
    assert_eq!(
        files,
        vec![dir.path().join("model-00001-of-00002.safetensors")]
    );
}

#[test]
fn chat_template_that_loops_for_ever_runs_out_of_fuel() {
    // 10^10 iterations: without a bound this renders for hours and 10 GB of output.
    let template =
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
    let kv = llama_kv(|kv| kv.push(("tokenizer.chat_template", V::Str(template))));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    std::fs::write(&path, gguf_bytes(&kv, &[], &[])).unwrap();
    let g = read_gguf(&path, &Device::Cpu).unwrap();
    let tok = cxr_lm::TextTokenizer::from_json(&g.tokenizer_json, "m.gguf")
        .unwrap()
        .with_chat(g.chat_template, None, None);
    let message = cxr_lm::ChatMessage {
        role: "user".into(),
        content: "hi".into(),
    };
    let e = tok.render_chat(&[message]).unwrap_err().to_string();
    assert!(
        e.contains("m.gguf") && e.contains("chat template") && e.contains("fuel"),
        "{e}"
    );
}
