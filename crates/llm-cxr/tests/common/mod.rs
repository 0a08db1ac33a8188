//! What the binary's test files share: running `llm-cxr`, and small models to run it with.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn llm_cxr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llm-cxr"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run llm-cxr")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// An LLM-CXR starting point from the tiny GPT-NeoX fixture and dolly's tokenizer, through
/// `lm init` (64 image codes); None when the shared tokenizer is absent.
pub fn tiny_llm_cxr(dir: &Path) -> Option<PathBuf> {
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/tokenizers/gpt-neox-20b-tokenizer.json");
    if !tokenizer.is_file() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "{} is absent (CI=true: CI must have it)",
                tokenizer.display()
            );
        }
        eprintln!("SKIP: {} is absent", tokenizer.display());
        return None;
    }
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../cxr-lm/tests/fixtures/gpt_neox_tiny");
    let base = dir.join("base");
    std::fs::create_dir_all(&base).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("config.json")).unwrap()).unwrap();
    // Room for a report and a 4 x 4 image; the weights do not depend on it.
    config["max_position_embeddings"] = 512.into();
    std::fs::write(base.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        fixture.join("model.safetensors"),
        base.join("model.safetensors"),
    )
    .unwrap();
    std::fs::copy(&tokenizer, base.join("tokenizer.json")).unwrap();
    let model = dir.join("llm-cxr-tiny");
    let o = llm_cxr(&[
        "lm",
        "init",
        "--base",
        base.to_str().unwrap(),
        "--codes",
        "64",
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    Some(model)
}

/// A VQ-GAN with random weights (16 px, 8 x 8 codes from `n_embed`), saved as DIR/NAME.safetensors
/// beside its config DIR/NAME.json; returns both paths.
pub fn random_vqgan(dir: &Path, n_embed: usize, name: &str) -> (PathBuf, PathBuf) {
    use cxr_classifier::candle_core::{DType, Device};
    use cxr_classifier::candle_nn::{VarBuilder, VarMap};
    let config_path = dir.join(format!("{name}.json"));
    let json = format!(
        r#"{{"resolution": 16, "in_channels": 1, "out_ch": 1, "ch": 32, "ch_mult": [1, 1],
            "num_res_blocks": 1, "attn_resolutions": [], "z_channels": 32, "n_embed": {n_embed},
            "embed_dim": 8}}"#
    );
    std::fs::write(&config_path, json).unwrap();
    let config = cxr_vqgan::VqganConfig::from_name_or_file(config_path.to_str().unwrap()).unwrap();
    let varmap = VarMap::new();
    cxr_vqgan::VqModel::new(
        &config,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let weights = dir.join(format!("{name}.safetensors"));
    varmap.save(&weights).unwrap();
    (weights, config_path)
}
