//! DenseNet against a random-weight PyTorch reference (scripts/reference/densenet_fixture.py):
//! the same logits and features2 in eval and train mode, from safetensors and from PyTorch files,
//! and every trainable tensor receives a gradient.

use std::path::{Path, PathBuf};

use cxr_classifier::candle_core::{DType, Device, Tensor, Var};
use cxr_classifier::candle_nn::{VarBuilder, VarMap};
use cxr_classifier::{DenseNet, DenseNetConfig};

fn small() -> DenseNetConfig {
    DenseNetConfig {
        growth_rate: 8,
        block_config: vec![2, 2, 2, 2],
        num_init_features: 16,
        bn_size: 2,
        in_channels: 1,
        num_classes: 18,
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn io() -> std::collections::HashMap<String, Tensor> {
    cxr_classifier::candle_core::safetensors::load(
        fixtures().join("densenet_small_io.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn max_rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1.0);
    diff / scale
}

#[test]
fn eval_and_train_outputs_match_pytorch() {
    let io = io();
    for file in [
        "densenet_small.safetensors",
        "densenet_small_state_dict.pt",
        "densenet_small_lightning.ckpt",
    ] {
        let model = DenseNet::load(&small(), &fixtures().join(file), &Device::Cpu)
            .unwrap_or_else(|e| panic!("{e}"));
        let x = &io["input"];
        let logits = model.forward_t(x, false).unwrap();
        let err = max_rel_err(&logits, &io["logits_eval"]);
        assert!(err < 1e-4, "{file}: eval logits differ by {err}");
        let feats = model.features2(x, false).unwrap();
        assert_eq!(feats.dims(), &[2, small().num_features()]);
        assert!(
            max_rel_err(&feats, &io["features2_eval"]) < 1e-4,
            "{file}: features2"
        );
        let train = model.forward_t(x, true).unwrap();
        let err = max_rel_err(&train, &io["logits_train"]);
        assert!(err < 1e-4, "{file}: train-mode logits differ by {err}");
    }
}

#[test]
fn every_trainable_tensor_gets_a_gradient() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = DenseNet::new(&small(), vb).unwrap();
    let x = (Tensor::rand(0f32, 1f32, (2, 1, 32, 32), &Device::Cpu).unwrap() * 1024.0).unwrap();
    let loss = model
        .forward_t(&x, true)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let vars: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut trainable = 0;
    for (name, var) in vars {
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            continue; // statistics, not parameters
        }
        trainable += 1;
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} gets no gradient"));
        let norm = g
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "{name} has an all-zero gradient");
    }
    assert!(trainable > 40, "only {trainable} trainable tensors found");
}
