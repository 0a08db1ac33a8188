//! `cxr_lm::init`: a base model with a tied head grows the three keys and the image codes, its
//! head untied, and saves as an HF directory that loads back with the vocabulary; a model that
//! already has one is refused.

use candle_core::{Device, Tensor};
use cxr_lm::image_vocab::{ImageInit, RESPONSE_KEY_NL};
use cxr_lm::init::{init, InitOptions};
use cxr_lm::{GptNeoxConfig, LanguageModel, LmConfig, TextTokenizer, WeightMode, Weights};

const TOKENIZER: &str = r####"{"version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [], "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null, "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "a": 1, "b": 2, "###": 3, "End": 4,
    "Instruction": 5, "Response": 6, ":": 7}, "unk_token": "<unk>"}}"####;

fn tied_base() -> LanguageModel {
    let mut neox = GptNeoxConfig::pythia_like(8, 1, 2, 8);
    neox.tie_word_embeddings = true;
    let config = LmConfig::GptNeox(neox);
    let tensors = cxr_lm::weights::random_weights(&config, 3, None, &Device::Cpu).unwrap();
    let weights = Weights::new(tensors, "random tied", WeightMode::Train, &Device::Cpu);
    LanguageModel {
        model: cxr_lm::CausalLm::new(&config, &weights).unwrap(),
        tokenizer: TextTokenizer::from_json(TOKENIZER, "inline").unwrap(),
        image_vocab: None,
        weights,
    }
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

#[test]
fn a_tied_base_grows_keys_and_codes_with_its_own_head_and_reloads() {
    let base = tied_base();
    let embed_before = rows(
        &base
            .weights
            .vars()
            .into_iter()
            .find(|(n, _)| n == "gpt_neox.embed_in.weight")
            .unwrap()
            .1
            .as_tensor()
            .clone(),
    );
    let opts = InitOptions {
        codes: 5,
        image: ImageInit::Normal,
        ..InitOptions::default()
    };
    let grown = init(base, &opts).unwrap();
    assert!(grown.untied_head);
    assert_eq!(grown.base_vocab_size, 8);
    // The three keys (`### End`, `### Instruction:`, `### Response:\n`) join the 8 words; the
    // codes follow them.
    assert_eq!(grown.image_vocab.base, 11);
    assert_eq!(grown.config.vocab_size(), 11 + 5);
    let names: Vec<&str> = grown.tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted: {names:?}");
    let table = |name: &str| rows(&grown.tensors.iter().find(|(n, _)| n == name).unwrap().1);
    let (embed, head) = (table("gpt_neox.embed_in.weight"), table("embed_out.weight"));
    assert_eq!((embed.len(), head.len()), (16, 16));
    // The text rows are kept; the head starts as a copy of the table.
    assert_eq!(&embed[..8], &embed_before[..]);
    assert_eq!(&head[..8], &embed_before[..]);
    // Each image code has a row of its own.
    assert_ne!(embed[11], embed[12]);

    let dir = tempfile::tempdir().unwrap();
    grown.save(dir.path(), &[("note.json", b"{}")]).unwrap();
    assert!(dir.path().join("note.json").is_file());
    let back = LanguageModel::load(dir.path(), WeightMode::Train, &Device::Cpu).unwrap();
    assert_eq!(back.image_vocab, Some(grown.image_vocab));
    assert_eq!(back.tokenizer.token_id(RESPONSE_KEY_NL), Some(10));
    assert!(back
        .weights
        .vars()
        .iter()
        .any(|(n, _)| n == "embed_out.weight"));

    let e = init(back, &InitOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("already has an image vocabulary"), "{e}");
}

#[test]
fn keep_tied_head_leaves_the_head_tied() {
    let grown = init(
        tied_base(),
        &InitOptions {
            codes: 3,
            keep_tied_head: true,
            ..InitOptions::default()
        },
    )
    .unwrap();
    assert!(!grown.untied_head);
    assert!(grown.tensors.iter().all(|(n, _)| n != "embed_out.weight"));
    assert!(matches!(&grown.config, LmConfig::GptNeox(c) if c.tie_word_embeddings));
}

#[test]
fn zero_codes_and_an_inference_load_are_refused() {
    let e = init(
        tied_base(),
        &InitOptions {
            codes: 0,
            ..InitOptions::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("at least one code"), "{e}");
    let base = tied_base();
    let dir = tempfile::tempdir().unwrap();
    let grown = init(base, &InitOptions::default()).unwrap();
    grown.save(dir.path(), &[]).unwrap();
    let mut loaded = LanguageModel::load(dir.path(), WeightMode::Inference, &Device::Cpu).unwrap();
    loaded.image_vocab = None;
    let e = init(loaded, &InitOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("WeightMode::Train"), "{e}");
}
