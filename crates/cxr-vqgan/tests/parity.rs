//! Parity with taming-transformers' VQModel on random weights (fixtures written by
//! `scripts/reference/vqgan_fixture.py` from taming's own modules), and gradient flow.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use cxr_vqgan::discriminator::Discriminator;
use cxr_vqgan::{VqModel, VqganConfig};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn config() -> VqganConfig {
    VqganConfig::from_name_or_file(fixture("vqgan_small.json").to_str().unwrap()).unwrap()
}

fn io() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("vqgan_small_io.safetensors"), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    cxr_ops::max_abs_diff(a, b).unwrap()
}

/// Sets the variables of `varmap` to the fixture files' tensors of their names.
fn set_from_fixtures(varmap: &VarMap, files: &[&str]) {
    for file in files {
        let tensors = candle_core::safetensors::load(fixture(file), &Device::Cpu).unwrap();
        for (name, t) in tensors {
            varmap.data().lock().unwrap()[&name].set(&t).unwrap();
        }
    }
}

/// L1 reconstruction plus the codebook loss: the generator's loss without its critics.
fn reconstruction_loss(model: &VqModel, x: &Tensor) -> Tensor {
    let rec = model.reconstruct(x).unwrap();
    ((x - &rec.image).unwrap().abs().unwrap().mean_all().unwrap() + &rec.quant_loss).unwrap()
}

fn check(model: &VqModel) {
    let io = io();
    let x = &io["input"];
    let latents = model.encode_latents(x).unwrap();
    let err = max_abs_diff(&latents, &io["latents"]);
    assert!(err < 1e-4, "latents differ by {err}");
    let got: Vec<Vec<u32>> = model.encode(x).unwrap().to_vec2().unwrap();
    let want: Vec<Vec<i64>> = io["indices"].to_vec2().unwrap();
    let want: Vec<Vec<u32>> = want
        .iter()
        .map(|r| r.iter().map(|&v| v as u32).collect())
        .collect();
    assert_eq!(got, want, "code indices differ from taming's");
    let rec = model.decode(&model.encode(x).unwrap()).unwrap();
    let err = max_abs_diff(&rec, &io["reconstruction"]);
    assert!(err < 1e-4, "reconstruction differs by {err}");
}

#[test]
fn safetensors_weights_match_taming() {
    let cfg = config();
    assert_eq!(cfg.tokens_per_image(), 256);
    let model = VqModel::load(&cfg, &fixture("vqgan_small.safetensors"), &Device::Cpu).unwrap();
    check(&model);
}

/// The ops' portable path (what a CUDA device runs: candle's conv2d, GroupNorm and attention)
/// matches taming too, and in training gives the CPU kernels' gradients.
#[test]
fn the_portable_path_matches_taming_and_the_kernels_gradients() {
    let model =
        VqModel::load(&config(), &fixture("vqgan_small.safetensors"), &Device::Cpu).unwrap();
    cxr_ops::portable(|| check(&model));

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = VqModel::new(&config(), vb).unwrap();
    set_from_fixtures(&varmap, &["vqgan_small.safetensors"]);
    let x = io()["input"].clone();
    let step = || {
        let loss = reconstruction_loss(&model, &x);
        let grads = loss.backward().unwrap();
        let data = varmap.data().lock().unwrap();
        let mut named: Vec<(String, Tensor)> = data
            .iter()
            .filter_map(|(n, v)| Some((n.clone(), grads.get(v.as_tensor())?.clone())))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        (loss.to_scalar::<f32>().unwrap(), named)
    };
    let (kernel_loss, kernel_grads) = step();
    let (portable_loss, portable_grads) = cxr_ops::portable(step);
    assert!((kernel_loss - portable_loss).abs() < 1e-5);
    assert!(kernel_grads.len() > 20 && kernel_grads.len() == portable_grads.len());
    for ((n, a), (_, b)) in kernel_grads.iter().zip(&portable_grads) {
        let d = cxr_ops::max_relative_diff(a, b).unwrap();
        assert!(d <= 1e-3, "d{n} differs by {d} of its largest value");
    }
}

#[test]
fn lightning_checkpoint_with_loss_keys_matches_taming() {
    let model = VqModel::load(&config(), &fixture("vqgan_small.ckpt"), &Device::Cpu).unwrap();
    check(&model);
}

#[test]
fn config_travels_in_the_weights_metadata() {
    let (model, cfg) =
        VqModel::load_auto(&fixture("vqgan_small.safetensors"), None, &Device::Cpu).unwrap();
    assert_eq!(cfg, config());
    check(&model);
    // A .ckpt has no such metadata: the error says what to pass.
    let err = VqModel::load_auto(&fixture("vqgan_small.ckpt"), None, &Device::Cpu)
        .err()
        .unwrap();
    assert!(err.to_string().contains("--config"), "{err}");
}

#[test]
fn discriminator_matches_taming_in_eval_mode() {
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[fixture("discriminator_small.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
    }
    .unwrap();
    let disc = Discriminator::new(1, 8, 3, vb.pp("loss.discriminator")).unwrap();
    let io = io();
    let logits = disc.forward_t(&io["input"], false).unwrap();
    let err = max_abs_diff(&logits, &io["disc_logits"]);
    assert!(err < 1e-4, "discriminator logits differ by {err}");
}

#[test]
fn wrong_shapes_are_named_errors() {
    let mut cfg = config();
    cfg.n_embed = 128;
    let err = VqModel::load(&cfg, &fixture("vqgan_small.safetensors"), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("vqgan_small.safetensors"), "{err}");
    let err = VqModel::load(&config(), Path::new("/nonexistent/v.ckpt"), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("/nonexistent/v.ckpt"), "{err}");
}

/// Every trainable tensor of the generator and the discriminator receives a non-zero gradient
/// (candle-nn's fused norms and softmax would silently pass none back).
#[test]
fn every_trainable_tensor_gets_a_gradient() {
    let cfg = config();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = VqModel::new(&cfg, vb.clone()).unwrap();
    let disc = Discriminator::new(1, 8, 3, vb.pp("loss.discriminator")).unwrap();
    // Start from the fixture's weights so that codes are spread and attention is not uniform.
    set_from_fixtures(
        &varmap,
        &["vqgan_small.safetensors", "discriminator_small.safetensors"],
    );
    let x = io()["input"].clone();
    let rec = model.reconstruct(&x).unwrap();
    let loss = reconstruction_loss(&model, &x);
    let d = disc
        .forward_t(&rec.image, true)
        .unwrap()
        .mean_all()
        .unwrap();
    let grads = (loss + d).unwrap().backward().unwrap();
    let mut missing = Vec::new();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            continue;
        }
        let nonzero = grads.get(var.as_tensor()).is_some_and(|g| {
            g.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        });
        if !nonzero {
            missing.push(name.clone());
        }
    }
    // Codes no input maps to get no gradient, as in taming; every other tensor must.
    missing.retain(|n| n != "quantize.embedding.weight");
    assert!(missing.is_empty(), "no gradient for {missing:?}");
    let g = grads
        .get(varmap.data().lock().unwrap()["quantize.embedding.weight"].as_tensor())
        .expect("codebook gradient");
    assert!(
        g.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    );
}
