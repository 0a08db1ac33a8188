//! The fine-tuning loop on the tiny fixture models of cxr-lm: the loss is the response-token NLL
//! of the full forward, padding changes nothing, accumulation equals a bigger batch, training
//! learns, and a resumed run ends bit-identical to one never stopped.

use std::path::Path;

use candle_core::{Device, Tensor, D};
use cxr_instruct::finetune::{finetune, response_nll, FinetuneOptions, Trainable, CHECKPOINT};
use cxr_instruct::Tokenized;

mod common;
use common::{fixture, samples};

#[test]
fn loss_is_the_response_nll_of_the_full_forward() {
    let net = Trainable::load(&fixture("gpt_neox_tiny"), &Device::Cpu).unwrap();
    let s = &samples(3)[2];
    let (nll, n) = response_nll(&net.model, &[s]).unwrap();
    assert_eq!(n, s.ids.len() - s.response_start + 1 - 1);
    let ids = Tensor::new(s.ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logp = candle_nn::ops::log_softmax(&net.model.forward(&ids).unwrap(), D::Minus1)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    // Position p predicts token p + 1; only response tokens count.
    let want: f32 = (s.response_start..s.ids.len())
        .map(|q| -logp[q - 1][s.ids[q] as usize])
        .sum();
    let got = nll.to_scalar::<f32>().unwrap();
    assert!((got - want).abs() < 1e-4 * want.abs(), "{got} vs {want}");
}

#[test]
fn right_padding_changes_nothing() {
    for model in ["gpt_neox_tiny", "llama_tiny"] {
        let net = Trainable::load(&fixture(model), &Device::Cpu).unwrap();
        let s = samples(2);
        assert_ne!(s[0].ids.len(), s[1].ids.len());
        let alone: f32 = s
            .iter()
            .map(|x| {
                response_nll(&net.model, &[x])
                    .unwrap()
                    .0
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .sum();
        let (both, _) = response_nll(&net.model, &[&s[0], &s[1]]).unwrap();
        let both = both.to_scalar::<f32>().unwrap();
        assert!(
            (both - alone).abs() < 1e-4 * alone,
            "{model}: {both} vs {alone}"
        );
    }
}

fn weights(net: &Trainable) -> Vec<(String, Vec<f32>)> {
    net.tensors()
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

fn opts(out: &Path) -> FinetuneOptions {
    FinetuneOptions {
        steps: 4,
        lr: 1e-3,
        warmup_steps: 2,
        micro_batch: 2,
        grad_accum: 1,
        checkpoint_every: 1,
        out: out.to_path_buf(),
        ..Default::default()
    }
}

#[test]
fn accumulation_equals_the_bigger_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = samples(8);
    let run = |micro: usize, accum: usize, out: &str| {
        let o = FinetuneOptions {
            steps: 1,
            warmup_steps: 0,
            micro_batch: micro,
            grad_accum: accum,
            ..opts(&dir.path().join(out))
        };
        let net = finetune(
            Trainable::load(&fixture("llama_tiny"), &Device::Cpu).unwrap(),
            &data,
            &[],
            &o,
            &mut |_| {},
        )
        .unwrap();
        weights(&net)
    };
    let big = run(4, 1, "big");
    let accumulated = run(1, 4, "acc");
    for ((name, a), (_, b)) in big.iter().zip(&accumulated) {
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        // Adam's first step moves each weight by about lr (1e-3) whatever the gradient's size,
        // so rounding shows where a gradient is near eps; 1 % of a step is the bound.
        assert!(diff < 1e-5, "{name}: {diff}");
    }
}

#[test]
fn training_learns_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = samples(6);
    let validation = samples(8)[6..].to_vec();
    let mut losses = Vec::new();
    let long = FinetuneOptions {
        steps: 30,
        eval_every: 10,
        ..opts(&dir.path().join("learn"))
    };
    let mut validation_losses = Vec::new();
    finetune(
        Trainable::load(&fixture("gpt_neox_tiny"), &Device::Cpu).unwrap(),
        &data,
        &validation,
        &long,
        &mut |r| {
            losses.push(r.loss);
            if let Some(v) = r.validation_loss {
                validation_losses.push(v);
            }
            assert!(r.grad_norm.is_finite() && r.tokens > 0);
        },
    )
    .unwrap();
    let first: f64 = losses[..3].iter().sum::<f64>() / 3.0;
    let last: f64 = losses[27..].iter().sum::<f64>() / 3.0;
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    assert_eq!(validation_losses.len(), 3);

    // 4 steps straight, against 2 steps then a fresh process-like resume to 4.
    let straight = finetune(
        Trainable::load(&fixture("gpt_neox_tiny"), &Device::Cpu).unwrap(),
        &data,
        &[],
        &opts(&dir.path().join("straight")),
        &mut |_| {},
    )
    .unwrap();
    let split_dir = dir.path().join("split");
    finetune(
        Trainable::load(&fixture("gpt_neox_tiny"), &Device::Cpu).unwrap(),
        &data,
        &[],
        &FinetuneOptions {
            steps: 2,
            ..opts(&split_dir)
        },
        &mut |_| {},
    )
    .unwrap();
    assert!(split_dir.join(CHECKPOINT).is_file());
    let mut seen = Vec::new();
    let resumed = finetune(
        Trainable::load(&fixture("gpt_neox_tiny"), &Device::Cpu).unwrap(),
        &data,
        &[],
        &opts(&split_dir),
        &mut |r| seen.push(r.step),
    )
    .unwrap();
    assert_eq!(seen, [3, 4], "the resumed run starts after the checkpoint");
    assert_eq!(weights(&straight), weights(&resumed));

    // Another seed's checkpoint is refused with the file named.
    let err = finetune(
        Trainable::load(&fixture("gpt_neox_tiny"), &Device::Cpu).unwrap(),
        &data,
        &[],
        &FinetuneOptions {
            seed: 9,
            ..opts(&split_dir)
        },
        &mut |_| {},
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains(CHECKPOINT) && err.contains("seed"), "{err}");
}

#[test]
fn out_of_vocabulary_samples_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let refusal = |data: &[Tokenized]| {
        finetune(
            Trainable::load(&fixture("gpt_neox_tiny"), &Device::Cpu).unwrap(),
            data,
            &[],
            &opts(dir.path()),
            &mut |_| {},
        )
        .err()
        .unwrap()
        .to_string()
    };
    let mut data = samples(2);
    data[1].ids[3] = 5000;
    let err = refusal(&data);
    assert!(err.contains("sample s1") && err.contains("384"), "{err}");

    let mut data = samples(2);
    data[0].ids.clear();
    data[0].response_start = 0;
    let err = refusal(&data);
    assert!(
        err.contains("sample s0") && err.contains("0 tokens"),
        "{err}"
    );
}

/// LoRA: the model starts as the base, only the adapters train (both A and B move), the loss
/// falls, and the merged weights give the adapted model's logits.
#[test]
fn lora_trains_adapters_and_merges_exactly() {
    use cxr_lm::{CausalLm, LoraConfig, WeightMode};
    for (model, per_layer) in [("gpt_neox_tiny", 1), ("llama_tiny", 2)] {
        let dir = tempfile::tempdir().unwrap();
        let base_dir = fixture(model);
        let (base, config, _) =
            CausalLm::load_hf(&base_dir, WeightMode::Inference, &Device::Cpu).unwrap();
        let lora = LoraConfig {
            rank: 4,
            alpha: 8.0,
            targets: LoraConfig::default_targets(&config),
            seed: 3,
        };
        let net = Trainable::load_lora(&base_dir, lora, &Device::Cpu).unwrap();
        assert_eq!(
            net.vars.len(),
            2 * per_layer * 2,
            "{model}: A and B per target per layer"
        );
        assert!(net.vars.iter().all(|(n, _)| n.contains(".lora_")));
        let ids = Tensor::new(&[[3u32, 17, 99, 5, 42, 7]], &Device::Cpu).unwrap();
        let d = cxr_ops::max_abs_diff(
            &base.forward(&ids).unwrap(),
            &net.model.forward(&ids).unwrap(),
        )
        .unwrap();
        // B starts at zero, so the base is unchanged, up to rounding: with adapters the hidden
        // state carries a gradient and the norms take their unfused path.
        assert!(
            d < 1e-5,
            "{model}: the adapted model starts off the base by {d}"
        );
        let before = weights(&net);

        let mut losses = Vec::new();
        let o = FinetuneOptions {
            steps: 25,
            lr: 1e-2,
            ..opts(dir.path())
        };
        let net = finetune(net, &samples(6), &[], &o, &mut |r| losses.push(r.loss)).unwrap();
        assert!(
            losses[24] < 0.8 * losses[0],
            "{model}: loss {} -> {}",
            losses[0],
            losses[24]
        );
        for ((name, a), (_, b)) in before.iter().zip(weights(&net)) {
            assert!(
                a.iter().zip(&b).any(|(x, y)| x != y),
                "{model}: {name} never moved"
            );
        }

        let merged: std::collections::HashMap<String, cxr_lm::weights::Weight> = net
            .model_tensors()
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, cxr_lm::weights::Weight::Float(t)))
            .collect();
        let w = cxr_lm::Weights::new(merged, "merged", WeightMode::Inference, &Device::Cpu);
        let plain = CausalLm::new(&config, &w).unwrap();
        let d = cxr_ops::max_abs_diff(
            &plain.forward(&ids).unwrap(),
            &net.model.forward(&ids).unwrap(),
        )
        .unwrap();
        assert!(
            d < 1e-4,
            "{model}: merged weights differ from the adapted model by {d}"
        );
    }
}

/// The Hugging Face form trains what `llm-cxr train` trains: on a model fine-tuned by
/// scripts/hf-finetune.py (fixture from scripts/reference/hf_trainer_fixture.py), the loss that
/// transformers computes on the Hugging Face rows through the script's collator equals our response
/// loss (full softmax) on the same samples, and `data build --hf` writes those very rows.
#[test]
fn the_trainers_loss_on_the_hugging_face_rows_is_ours_on_the_samples() {
    use cxr_instruct::build::HfSample;
    let text = std::fs::read_to_string(fixture("llama_trainer_rows.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let want = doc["trainer_loss"].as_f64().unwrap();
    let rows: Vec<HfSample> = serde_json::from_value(doc["rows"].clone()).unwrap();
    let samples: Vec<Tokenized> = rows
        .iter()
        .map(|r| Tokenized {
            task: r.task,
            source: r.source.clone(),
            ids: r.input_ids.clone(),
            response_start: r.labels.iter().position(|&l| l != -100).unwrap(),
            prompt_spans: Vec::new(),
        })
        .collect();
    for (s, r) in samples.iter().zip(&rows) {
        assert_eq!(&HfSample::from(s), r);
    }
    let (model, _, _) = cxr_lm::CausalLm::load_hf(
        &fixture("llama_trainer_tiny"),
        cxr_lm::WeightMode::Inference,
        &Device::Cpu,
    )
    .unwrap();
    let ours = cxr_instruct::finetune::evaluate(&model, &samples, 4, None).unwrap();
    assert!(
        (ours - want).abs() < 1e-5 * want,
        "ours {ours}, transformers {want}"
    );
}
