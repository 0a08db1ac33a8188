//! A model export is written whole or not at all: `save_hf` builds the folder beside the target
//! and renames it into place, so a failed or killed export leaves the old model, and a finished
//! one holds nothing of the old folder.

use candle_core::Device;
use cxr_lm::{GptNeoxConfig, LmConfig, TextTokenizer};

const TOKENIZER: &str = r#"{"version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null, "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "a": 1, "b": 2}, "unk_token": "<unk>"}}"#;

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

#[test]
fn an_export_replaces_the_folder_whole_and_a_failed_one_leaves_it() {
    let tokenizer = TextTokenizer::from_json(TOKENIZER, "inline").unwrap();
    let config = LmConfig::GptNeox(GptNeoxConfig::pythia_like(8, 1, 2, 16));
    let tensors: Vec<(String, candle_core::Tensor)> =
        cxr_lm::weights::random_weights(&config, 1, None, &Device::Cpu)
            .unwrap()
            .into_iter()
            .filter_map(|(n, w)| match w {
                cxr_lm::weights::Weight::Float(t) => Some((n, t)),
                _ => None,
            })
            .collect();
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("model");
    std::fs::create_dir_all(&out).unwrap();
    // What an older export (or another run with fixed temporary names) left there.
    std::fs::write(out.join("config.json"), b"old config").unwrap();
    std::fs::write(out.join(".model.safetensors.tmp"), b"half").unwrap();
    std::fs::write(out.join("model-00002-of-00002.safetensors"), b"stale shard").unwrap();

    // An export that fails part-way (its last file cannot be written) leaves the old folder.
    let e = cxr_lm::save_hf_with(
        &out,
        &config,
        &tensors,
        &tokenizer,
        None,
        &[("no/such/folder.json", b"{}")],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("folder.json") || e.contains("No such file"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(out.join("config.json")).unwrap(),
        b"old config"
    );
    assert_eq!(
        names(root.path()),
        ["model"],
        "no temporaries left beside it"
    );

    cxr_lm::save_hf_with(
        &out,
        &config,
        &tensors,
        &tokenizer,
        None,
        &[("vqgan.json", b"{}")],
    )
    .unwrap();
    assert_eq!(
        names(&out),
        [
            cxr_data::EXPORT_MARKER,
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "vqgan.json"
        ]
    );
    assert_eq!(names(root.path()), ["model"]);
    let (_, loaded, _) =
        cxr_lm::CausalLm::load_hf(&out, cxr_lm::WeightMode::Inference, &Device::Cpu).unwrap();
    assert_eq!(loaded.vocab_size(), config.vocab_size());
}
