//! Parity with HF transformers (fixtures from scripts/reference/lm_fixture.py: small random GPT-NeoX
//! and LLaMA models, their logits and greedy continuations) and with the Python `tokenizers`
//! package on the GPT-NeoX-20B tokenizer with dolly-v2's and LLM-CXR's keys.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use cxr_lm::{generate, Batch, Constraint, GenerateOptions, LanguageModel, Sampling, WeightMode};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn io(name: &str) -> (Tensor, Tensor, Vec<Vec<u32>>) {
    let t = candle_core::safetensors::load(
        fixtures().join(format!("{name}_io.safetensors")),
        &Device::Cpu,
    )
    .unwrap();
    let ids = t["input_ids"].to_dtype(candle_core::DType::U32).unwrap();
    let greedy = t["greedy"]
        .to_dtype(candle_core::DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap();
    (ids, t["logits"].clone(), greedy)
}

fn load(dir: &str, mode: WeightMode) -> cxr_lm::CausalLm {
    cxr_lm::CausalLm::load_hf(&fixtures().join(dir), mode, &Device::Cpu)
        .unwrap()
        .0
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    cxr_ops::max_abs_diff(a, b).unwrap()
}

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions {
        sampling: Sampling::greedy(),
        constraint: Constraint::Free,
        max_new_tokens: n,
        stop_ids: vec![],
    }
}

/// Logits within 1e-4 of transformers' and identical greedy continuations, for each checkpoint
/// layout: single safetensors, pytorch_model.bin, sharded safetensors with an index.
#[test]
fn logits_and_greedy_continuations_match_transformers() {
    for (dir, io_name) in [
        ("gpt_neox_tiny", "gpt_neox_tiny"),
        ("gpt_neox_tiny_bin", "gpt_neox_tiny"),
        ("gpt_neox_seq_tiny", "gpt_neox_seq_tiny"),
        ("llama_tiny", "llama_tiny"),
        ("llama_rope_llama3_tiny", "llama_rope_llama3_tiny"),
    ] {
        let model = load(dir, WeightMode::Inference);
        assert_matches_transformers(&model, io_name, dir);
    }
}

/// The ops' portable path (what a CUDA device runs) gives transformers' logits and greedy
/// continuations too, and in training the CPU kernels' loss and gradients, for both
/// architectures (attention, LayerNorm, RMSNorm, GELU, rope, the dense layer, the loss).
#[test]
fn the_portable_path_computes_what_the_cpu_kernels_compute() {
    for name in ["gpt_neox_tiny", "llama_tiny"] {
        let model = load(name, WeightMode::Inference);
        cxr_ops::portable(|| assert_matches_transformers(&model, name, name));

        let (model, _, weights) =
            cxr_lm::CausalLm::load_hf(&fixtures().join(name), WeightMode::Train, &Device::Cpu)
                .unwrap();
        let (ids, _, _) = io(name);
        let step = || {
            let loss = model.next_token_loss(&ids).unwrap();
            let grads = loss.backward().unwrap();
            let grads: Vec<(String, Tensor)> = weights
                .vars()
                .into_iter()
                .map(|(n, v)| (n, grads.get(v.as_tensor()).cloned().unwrap()))
                .collect();
            (loss.to_scalar::<f32>().unwrap(), grads)
        };
        let (kernel_loss, kernel_grads) = step();
        let (portable_loss, portable_grads) = cxr_ops::portable(step);
        assert!(
            (kernel_loss - portable_loss).abs() < 1e-5,
            "{name}: loss {kernel_loss} vs {portable_loss}"
        );
        assert!(
            kernel_grads.len() > 10,
            "{name}: {} grads",
            kernel_grads.len()
        );
        for ((n, a), (_, b)) in kernel_grads.iter().zip(&portable_grads) {
            let d = cxr_ops::max_relative_diff(a, b).unwrap();
            assert!(
                d <= 1e-4,
                "{name}: d{n} differs by {d} of its largest value"
            );
        }
    }
}

/// Logits within 1e-4 of the fixture's, and its greedy continuations; returns the logits.
fn assert_matches_transformers(model: &cxr_lm::CausalLm, io_name: &str, what: &str) -> Tensor {
    let (ids, want_logits, want_greedy) = io(io_name);
    let logits = model.forward(&ids).unwrap();
    let diff = max_diff(&logits, &want_logits);
    assert!(
        diff < 1e-4,
        "{what}: logits differ from transformers by {diff}"
    );
    let prompts: Vec<Vec<u32>> = ids.to_vec2().unwrap();
    for (prompt, want) in prompts.iter().zip(&want_greedy) {
        let got = generate(
            model,
            std::slice::from_ref(prompt),
            &greedy(want.len()),
            |_, _| {},
        )
        .unwrap();
        assert_eq!(&got[0], want, "{what}: greedy continuation differs");
    }
    logits
}

/// A model fine-tuned by scripts/hf-finetune.py (transformers' Trainer, fixture from
/// scripts/reference/hf_trainer_fixture.py) comes back: the folder the script writes, and the same
/// weights in bf16 as ZeRO-3 saves them, give transformers' logits and greedy continuations, the
/// training moved them, and the `lm init` tokenizer came along.
#[test]
fn a_model_fine_tuned_by_the_trainer_script_comes_back() {
    for name in ["llama_trainer_tiny", "llama_trainer_bf16_tiny"] {
        let model = load(name, WeightMode::Inference);
        let logits = assert_matches_transformers(&model, name, name);
        let io = candle_core::safetensors::load(
            fixtures().join(format!("{name}_io.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let moved = max_diff(&logits, &io["logits_before"]);
        assert!(
            moved > 0.1,
            "{name}: training moved the logits by {moved} only"
        );
        assert!(fixtures().join(name).join("tokenizer.json").is_file());
    }
}

/// The cached step reproduces the full forward position by position (the KV cache and the rotary
/// offsets are right), and a left-padded batch gives each row what it gets alone.
#[test]
fn cached_steps_and_padded_batches_match_the_full_forward() {
    for dir in ["gpt_neox_tiny", "llama_tiny"] {
        let model = load(dir, WeightMode::Inference);
        let (ids, want_logits, _) = io(dir);
        let row = ids.narrow(0, 0, 1).unwrap();
        let mut cache = model.new_cache(32);
        // A 5-token prefill, then one token at a time.
        let first = model
            .step(&row.narrow(1, 0, 5).unwrap(), &[0], &mut cache)
            .unwrap();
        assert!(
            max_diff(
                &first,
                &want_logits
                    .get(0)
                    .unwrap()
                    .get(4)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap()
            ) < 1e-4
        );
        for t in 5..12 {
            let l = model
                .step(&row.narrow(1, t, 1).unwrap(), &[0], &mut cache)
                .unwrap();
            let d = max_diff(
                &l,
                &want_logits
                    .get(0)
                    .unwrap()
                    .get(t)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap(),
            );
            assert!(d < 1e-4, "{dir}: cached step {t} differs by {d}");
        }
        let all: Vec<Vec<u32>> = ids.to_vec2().unwrap();
        let prompts = vec![all[0][..5].to_vec(), all[1].clone(), all[0][..9].to_vec()];
        let batch = generate(&model, &prompts, &greedy(8), |_, _| {}).unwrap();
        for (p, got) in prompts.iter().zip(&batch) {
            let alone = generate(&model, std::slice::from_ref(p), &greedy(8), |_, _| {}).unwrap();
            assert_eq!(
                got, &alone[0],
                "{dir}: a padded batch row differs from the row alone"
            );
        }
    }
}

/// Continuous batching: rows that join a running batch between steps (longer and shorter than
/// what runs), leave when they end or are cancelled, draw exactly what each draws alone, greedy or
/// sampled; the padding every row shares is cut away.
#[test]
fn rows_joining_and_leaving_a_running_batch_draw_what_they_draw_alone() {
    for dir in ["gpt_neox_tiny", "llama_tiny"] {
        let model = load(dir, WeightMode::Inference);
        let vocab = model.vocab_size() as u32;
        let prompt = |n: usize, salt: u32| -> Vec<u32> {
            (0..n as u32)
                .map(|i| (i * 7 + salt * 13 + 1) % vocab)
                .collect()
        };
        let (a, b, c, d) = (prompt(5, 1), prompt(12, 2), prompt(3, 3), prompt(9, 4));
        let sampled = GenerateOptions {
            sampling: Sampling {
                temperature: 1.0,
                top_k: 0,
                top_p: 0.92,
                seed: 7,
            },
            ..greedy(6)
        };
        let alone = |p: &Vec<u32>, o: &GenerateOptions| {
            generate(&model, std::slice::from_ref(p), o, |_, _| {}).unwrap()[0].clone()
        };

        let mut batch = Batch::new(&model);
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); 4];
        // Positions each running row holds in the cache (its prompt and all but its last id).
        let mut cached = [0usize; 4];
        let lens = [a.len(), b.len(), c.len(), d.len()];
        let mut take = |drawn: Vec<cxr_lm::Drawn>, cached: &mut [usize; 4]| {
            for x in drawn {
                out[x.row].push(x.id);
                cached[x.row] = if x.last {
                    0
                } else {
                    lens[x.row] + out[x.row].len() - 1
                };
            }
        };
        take(
            batch.join(std::slice::from_ref(&a), &greedy(10)).unwrap(),
            &mut cached,
        );
        for _ in 0..3 {
            take(batch.step().unwrap(), &mut cached);
        }
        // Longer than what runs: the running row gets padding.
        take(
            batch.join(std::slice::from_ref(&b), &greedy(4)).unwrap(),
            &mut cached,
        );
        assert_eq!(batch.width(), b.len(), "{dir}");
        take(batch.step().unwrap(), &mut cached);
        // Shorter: the newcomers get padding; one samples.
        take(
            batch.join(std::slice::from_ref(&c), &greedy(10)).unwrap(),
            &mut cached,
        );
        take(
            batch.join(std::slice::from_ref(&d), &sampled).unwrap(),
            &mut cached,
        );
        assert_eq!(batch.len(), 4, "{dir}");
        take(batch.step().unwrap(), &mut cached);
        batch.cancel(&[2]).unwrap();
        cached[2] = 0;
        while !batch.is_empty() {
            take(batch.step().unwrap(), &mut cached);
            // Once b (the longest) has ended, the padding the others share is cut away.
            assert_eq!(batch.width(), *cached.iter().max().unwrap(), "{dir}");
        }
        assert_eq!(out[0], alone(&a, &greedy(10)), "{dir}: the first row");
        assert_eq!(out[1], alone(&b, &greedy(4)), "{dir}: the longer newcomer");
        assert_eq!(out[2].len(), 2, "{dir}: the cancelled row stops");
        assert_eq!(
            out[2],
            alone(&c, &greedy(10))[..2],
            "{dir}: the cancelled row"
        );
        assert_eq!(out[3], alone(&d, &sampled), "{dir}: the sampled newcomer");
        assert_eq!(batch.width(), 0, "{dir}");
    }
}

/// Every trainable tensor of each architecture receives a non-zero gradient (candle-nn's fused
/// norms, softmax and rope pass none back; the model must not use them while training).
#[test]
fn every_trainable_tensor_receives_a_gradient() {
    for dir in ["gpt_neox_tiny", "gpt_neox_seq_tiny", "llama_tiny"] {
        let (model, config, weights) =
            cxr_lm::CausalLm::load_hf(&fixtures().join(dir), WeightMode::Train, &Device::Cpu)
                .unwrap();
        let vars = weights.vars();
        assert_eq!(
            vars.len(),
            config.tensor_shapes().len(),
            "{dir}: every tensor is a Var"
        );
        let (ids, _, _) = io(dir);
        let logits = model.forward(&ids).unwrap();
        let (b, t, v) = logits.dims3().unwrap();
        let targets = ids.narrow(1, 1, t - 1).unwrap().flatten_all().unwrap();
        let pred = logits
            .narrow(1, 0, t - 1)
            .unwrap()
            .reshape((b * (t - 1), v))
            .unwrap();
        let loss = candle_nn::loss::cross_entropy(&pred, &targets).unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in &vars {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{dir}: {name} has no gradient"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "{dir}: {name} has a zero gradient");
        }
    }
}

fn shared_tokenizer() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/tokenizers/gpt-neox-20b-tokenizer.json");
    if p.is_file() {
        Some(p)
    } else {
        eprintln!(
            "skipped: {} is absent (the shared data folder)",
            p.display()
        );
        None
    }
}

/// dolly-v2's tokenizer: GPT-NeoX-20B with ids 0-50276 (the shared file carries four extra added
/// tokens at 50277-50280 that dolly's does not have) and dolly's three keys at 50277-50279.
pub fn dolly_base_tokenizer(path: &Path) -> cxr_lm::TextTokenizer {
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let added = doc["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["id"].as_u64().unwrap() <= 50276)
        .cloned()
        .collect();
    doc["added_tokens"] = serde_json::Value::Array(added);
    let mut tok = cxr_lm::TextTokenizer::from_json(&doc.to_string(), "dolly-v2 tokenizer").unwrap();
    for key in ["### End", "### Instruction:", "### Response:"] {
        tok.add_special_token(key).unwrap();
    }
    tok
}

#[test]
fn tokenizer_ids_and_llm_cxr_vocabulary_match_the_reference() {
    let Some(path) = shared_tokenizer() else {
        return;
    };
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tokenizer_ids.json")).unwrap(),
    )
    .unwrap();
    let mut tok = dolly_base_tokenizer(&path);
    let vocab = cxr_lm::ImageVocab::extend(&mut tok, 1024).unwrap();
    assert_eq!(vocab.base, 50281, "LLM-CXR's CXR_VQ_TOKENIZER_LEN");
    assert_eq!(vocab.vocab_size(), 51305);
    assert_eq!(
        tok.len() as u64,
        fixture["vocab_size_with_added"].as_u64().unwrap()
    );
    let keys: Vec<u32> = [
        "### End",
        "### Instruction:",
        "### Response:",
        "### Response:\n",
    ]
    .iter()
    .map(|k| tok.token_id(k).unwrap())
    .collect();
    assert_eq!(keys, vec![50277, 50278, 50279, 50280]);
    for (text, ids) in fixture["texts"]
        .as_array()
        .unwrap()
        .iter()
        .zip(fixture["ids"].as_array().unwrap())
    {
        let want: Vec<u32> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tok.encode(text.as_str().unwrap()).unwrap(),
            want,
            "{text:?}"
        );
    }
    // The reference injects an image by replacing the `image` of `<`, `image`, `>` with its ids.
    let prompt = "Input:\n<image>\n\n### Response:\n";
    let plain = tok.encode(prompt).unwrap();
    let codes: Vec<u32> = (0..256).map(|k| (k * 7) % 1024).collect();
    let injected = vocab.encode_with_image(&tok, prompt, &codes).unwrap();
    let image_token = tok.token_id("image").unwrap();
    let at = plain.iter().position(|&t| t == image_token).unwrap();
    assert_eq!(injected.len(), plain.len() - 1 + 256);
    assert_eq!(&injected[..at], &plain[..at]);
    assert_eq!(
        injected[at..at + 256]
            .iter()
            .map(|&i| vocab.code(i).unwrap())
            .collect::<Vec<_>>(),
        codes
    );
    assert_eq!(&injected[at + 256..], &plain[at + 1..]);
}

/// A random model in LLM-CXR's layout (dolly-v2-3b's GPT-NeoX config, reduced in width and depth,
/// with vocabulary 51305) generates both constrained modes; its extended vocabulary survives a
/// save as an HF directory and a reload.
#[test]
fn llm_cxr_layout_generates_text_and_images_and_saves_as_hf() {
    let Some(path) = shared_tokenizer() else {
        return;
    };
    let mut tokenizer = dolly_base_tokenizer(&path);
    let vocab = cxr_lm::ImageVocab::extend(&mut tokenizer, 1024).unwrap();
    let mut config = cxr_lm::LmConfig::GptNeox(cxr_lm::GptNeoxConfig::pythia_like(64, 2, 4, 50280));
    let mut tensors = cxr_lm::weights::random_weights(&config, 7, None, &Device::Cpu).unwrap();
    let init = cxr_lm::image_vocab::NewRows {
        keys: Vec::new(),
        image_base: vocab.base,
        image: cxr_lm::image_vocab::ImageInit::Normal,
        seed: 1,
    };
    cxr_lm::image_vocab::resize_vocab(&mut tensors, &mut config, vocab.vocab_size(), &init)
        .unwrap();
    assert_eq!(config.vocab_size(), 51305);
    let weights = cxr_lm::Weights::new(
        tensors,
        "random dolly layout",
        WeightMode::Train,
        &Device::Cpu,
    );
    let model = cxr_lm::CausalLm::new(&config, &weights).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tensors: Vec<(String, Tensor)> = weights
        .vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    cxr_lm::save_hf(dir.path(), &config, &tensors, &tokenizer, Some(vocab)).unwrap();
    let lm = LanguageModel::load(dir.path(), WeightMode::Inference, &Device::Cpu).unwrap();
    assert_eq!(lm.image_vocab, Some(vocab));
    assert_eq!(lm.model.vocab_size(), 51305);
    assert_eq!(lm.tokenizer.token_id("### Response:\n"), Some(50280));

    let reload_logits = lm
        .model
        .forward(&Tensor::new(&[[5u32, 50281, 51304]], &Device::Cpu).unwrap())
        .unwrap();
    let logits = model
        .forward(&Tensor::new(&[[5u32, 50281, 51304]], &Device::Cpu).unwrap())
        .unwrap();
    assert!(max_diff(&logits, &reload_logits) < 1e-6);

    let text = "Below is an instruction that describes a task.\n\n### Instruction:\nGenerate a chest X-ray.\n\nInput:\nNo acute process.\n\n### Response:\n";
    let prompt = lm.tokenizer.encode(text).unwrap();
    let sampling = Sampling {
        temperature: 1.0,
        top_k: 0,
        top_p: 0.92,
        seed: 3,
    };
    let image = GenerateOptions {
        sampling: sampling.clone(),
        constraint: Constraint::Image {
            image_ids: vocab.ids(),
            count: 256,
        },
        max_new_tokens: 300,
        stop_ids: vec![50277],
    };
    let out = generate(
        &lm.model,
        &[prompt.clone(), prompt[3..].to_vec()],
        &image,
        |_, _| {},
    )
    .unwrap();
    for row in &out {
        assert_eq!(row.len(), 256);
        assert!(row.iter().all(|&id| vocab.code(id).is_some()));
    }
    let text_mode = GenerateOptions {
        sampling,
        constraint: Constraint::Text {
            image_ids: vocab.ids(),
        },
        max_new_tokens: 40,
        stop_ids: vec![50277],
    };
    let out = generate(&lm.model, &[prompt], &text_mode, |_, _| {}).unwrap();
    assert!(!out[0].is_empty() && out[0].iter().all(|&id| vocab.code(id).is_none()));
}
