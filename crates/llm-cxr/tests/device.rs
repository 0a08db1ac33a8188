//! The device check (docs/gpu.md, scripts/device-check.sh): the same computations on the CPU's
//! kernels and on the device `CXR_TEST_DEVICE` names (`cuda:0` on a GPU machine), compared within
//! stated tolerances. Unset, the device is the CPU on the ops' portable path (what CUDA runs, with
//! candle's CPU kernels), so CI runs every check too. The fixtures are the parity tests' (small
//! random models with transformers' and taming's outputs); `CXR_REPO` names the repository when
//! the test binary runs outside the tree it was built in (the GPU machine).

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use cxr_lm::{generate, CausalLm, Constraint, GenerateOptions, Sampling, WeightMode};

/// Logits and weights on the device against the CPU's: f32 everywhere, other summation orders.
const TOLERANCE: f32 = 1e-3;

fn repo() -> PathBuf {
    std::env::var_os("CXR_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")))
}

fn fixture(krate: &str, name: &str) -> PathBuf {
    let path = repo()
        .join("crates")
        .join(krate)
        .join("tests/fixtures")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing (set CXR_REPO)",
        path.display()
    );
    path
}

/// Runs `f` on the device under test (on the CPU: on the portable path).
fn on_device<R>(f: impl FnOnce(&Device) -> R) -> R {
    let device = cxr_train::device_from_env("CXR_TEST_DEVICE");
    if device.is_cpu() {
        cxr_ops::portable(|| f(&device))
    } else {
        f(&device)
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    cxr_ops::max_abs_diff(&a.to_device(&Device::Cpu).unwrap(), b).unwrap()
}

fn io(name: &str) -> (Tensor, Tensor, Vec<Vec<u32>>) {
    let t = candle_core::safetensors::load(
        fixture("cxr-lm", &format!("{name}_io.safetensors")),
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

fn load_lm(name: &str, mode: WeightMode, device: &Device) -> (CausalLm, cxr_lm::Weights) {
    let (model, _, weights) = CausalLm::load_hf(&fixture("cxr-lm", name), mode, device).unwrap();
    (model, weights)
}

/// Both architectures: the device's logits within the tolerance of transformers' (and of the
/// CPU's), and the same greedy continuations.
#[test]
fn lm_logits_and_greedy_continuations_on_the_device() {
    for name in ["gpt_neox_tiny", "llama_tiny"] {
        let (ids, want, greedy) = io(name);
        let (cpu_model, _) = load_lm(name, WeightMode::Inference, &Device::Cpu);
        let cpu_logits = cpu_model.forward(&ids).unwrap();
        on_device(|dev| {
            let (model, _) = load_lm(name, WeightMode::Inference, dev);
            let logits = model.forward(&ids.to_device(dev).unwrap()).unwrap();
            let (d_ref, d_cpu) = (max_diff(&logits, &want), max_diff(&logits, &cpu_logits));
            println!("{name}: logits vs transformers {d_ref:.2e}, vs CPU {d_cpu:.2e}");
            assert!(d_ref < TOLERANCE && d_cpu < TOLERANCE, "{name}");
            let options = GenerateOptions {
                sampling: Sampling::greedy(),
                constraint: Constraint::Free,
                max_new_tokens: greedy[0].len(),
                stop_ids: vec![],
            };
            let prompts: Vec<Vec<u32>> = ids.to_vec2().unwrap();
            for (prompt, want) in prompts.iter().zip(&greedy) {
                let got = generate(&model, std::slice::from_ref(prompt), &options, |_, _| {})
                    .unwrap()
                    .remove(0);
                assert_eq!(&got, want, "{name}: greedy continuation");
            }
        });
    }
}

/// One fine-tuning step (next-token loss, backward, gradient clipping, AdamW) of each LM
/// fixture: the device's loss, gradient norm and updated weights are the CPU's.
#[test]
fn a_fine_tuning_step_on_the_device() {
    for name in ["gpt_neox_tiny", "llama_tiny"] {
        let (ids, _, _) = io(name);
        let step = |dev: &Device| {
            let (model, weights) = load_lm(name, WeightMode::Train, dev);
            let loss = model.next_token_loss(&ids.to_device(dev).unwrap()).unwrap();
            let grads = loss.backward().unwrap();
            let mut opt = cxr_train::AdamW::new(
                weights.vars(),
                cxr_train::AdamWConfig {
                    lr: 1e-2,
                    ..Default::default()
                },
            )
            .unwrap();
            let norm = opt.grad_norm(&grads).unwrap();
            opt.step_scaled(&grads, (0.5 / norm).min(1.0)).unwrap();
            let after: Vec<(String, Tensor)> = weights
                .vars()
                .into_iter()
                .map(|(n, v)| (n, v.as_tensor().to_device(&Device::Cpu).unwrap()))
                .collect();
            (loss.to_scalar::<f32>().unwrap(), norm, after)
        };
        let (cpu_loss, cpu_norm, cpu_after) = step(&Device::Cpu);
        let (loss, norm, after) = on_device(step);
        println!("{name} step: loss {loss} vs {cpu_loss}, gradient norm {norm} vs {cpu_norm}");
        assert!((loss - cpu_loss).abs() < 1e-4 && ((norm - cpu_norm) / cpu_norm).abs() < 1e-4);
        assert_eq!(after.len(), cpu_after.len());
        for ((n, a), (_, b)) in after.iter().zip(&cpu_after) {
            let d = max_diff(a, b);
            assert!(d < TOLERANCE, "{name}: {n} differs by {d} after the step");
        }
    }
}

/// Mixed precision: the loss and every weight gradient of each LM fixture with bf16 and f16
/// products (cuBLAS's half GEMMs on a GPU) against the CPU's emulation of the same rounding.
#[test]
fn half_precision_products_on_the_device() {
    for name in ["gpt_neox_tiny", "llama_tiny"] {
        let (ids, _, _) = io(name);
        for precision in [cxr_train::Precision::Bf16, cxr_train::Precision::F16] {
            let step = |dev: &Device| {
                let (model, weights) = load_lm(name, WeightMode::Train, dev);
                let ids = ids.to_device(dev).unwrap();
                let loss = precision.autocast(|| model.next_token_loss(&ids)).unwrap();
                let grads = loss.backward().unwrap();
                let g: Vec<(String, Tensor)> = weights
                    .vars()
                    .into_iter()
                    .map(|(n, v)| {
                        let g = grads.get(v.as_tensor()).unwrap();
                        assert_eq!(g.dtype(), candle_core::DType::F32, "{n}");
                        (n, g.to_device(&Device::Cpu).unwrap())
                    })
                    .collect();
                (loss.to_scalar::<f32>().unwrap(), g)
            };
            let (cpu_loss, cpu_grads) = step(&Device::Cpu);
            let (loss, grads) = on_device(step);
            let full = on_device(|dev| {
                let (model, _) = load_lm(name, WeightMode::Train, dev);
                let ids = ids.to_device(dev).unwrap();
                model
                    .next_token_loss(&ids)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            });
            println!("{name} {precision}: loss {loss} vs {cpu_loss} (f32: {full})");
            assert_ne!(
                loss, full,
                "{name} {precision}: the products were not rounded"
            );
            assert!(
                (loss - cpu_loss).abs() < 1e-3 * cpu_loss,
                "{name} {precision}"
            );
            for ((n, a), (_, b)) in grads.iter().zip(&cpu_grads) {
                let d = cxr_ops::max_relative_diff(a, b).unwrap();
                assert!(
                    d < 2e-2,
                    "{name} {precision}: {n}'s gradient differs by {d}"
                );
            }
        }
    }
}

/// The VQ-GAN fixture on the device: taming's code indices, its reconstruction within the
/// tolerance.
#[test]
fn vqgan_encode_and_decode_on_the_device() {
    let config = cxr_vqgan::VqganConfig::from_name_or_file(
        fixture("cxr-vqgan", "vqgan_small.json").to_str().unwrap(),
    )
    .unwrap();
    let io = candle_core::safetensors::load(
        fixture("cxr-vqgan", "vqgan_small_io.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    on_device(|dev| {
        let model = cxr_vqgan::VqModel::load(
            &config,
            &fixture("cxr-vqgan", "vqgan_small.safetensors"),
            dev,
        )
        .unwrap();
        let x = io["input"].to_device(dev).unwrap();
        let codes = model.encode(&x).unwrap();
        let got: Vec<Vec<u32>> = codes.to_vec2().unwrap();
        let want: Vec<Vec<i64>> = io["indices"].to_vec2().unwrap();
        let want: Vec<Vec<u32>> = want
            .iter()
            .map(|r| r.iter().map(|&v| v as u32).collect())
            .collect();
        assert_eq!(got, want, "code indices");
        let d = max_diff(&model.decode(&codes).unwrap(), &io["reconstruction"]);
        println!("vqgan: reconstruction vs taming {d:.2e}");
        assert!(d < TOLERANCE);
    });
}

/// The image models' trainers on the device: the classifier (a small DenseNet) and the VQ-GAN
/// (every loss on: L1, the clinical-information loss through a DenseNet, codebook, the
/// discriminator with its adaptive weight) trained three steps on phantoms there and on the
/// CPU, at a small rate (1e-5): Adam moves each weight by about the rate whatever its gradient,
/// so a gradient near zero summed in another order can move a weight the other way; at this
/// rate that moves no loss by more than 1e-3, against the first step's 1e-4.
#[test]
fn image_model_training_steps_on_the_device() {
    use candle_nn::{VarBuilder, VarMap};
    use cxr_classifier::{DenseNet, DenseNetConfig};
    let dir = tempfile::tempdir().unwrap();
    let tree = cxr_phantom::TreeOptions {
        out: dir.path().join("data"),
        n: 6,
        size: 48,
        seed: 9,
        dicom: false,
        jpeg_quality: 95,
    };
    cxr_phantom::write_tree(&tree, &|| {}).unwrap();
    let ds = cxr_data::open_dataset(cxr_data::DatasetKind::Mimic, &tree.out).unwrap();
    let examples = cxr_classifier::train::examples(ds.records());
    let images: Vec<PathBuf> = examples.iter().map(|e| e.image.clone()).collect();
    let dense = DenseNetConfig {
        growth_rate: 4,
        block_config: vec![1, 1],
        num_init_features: 8,
        bn_size: 2,
        in_channels: 1,
        num_classes: 18,
    };
    // One random DenseNet for the VQ-GAN's feature loss, read from one file on both devices.
    let frozen = dir.path().join("densenet.safetensors");
    let vm = VarMap::new();
    DenseNet::new(
        &dense,
        VarBuilder::from_varmap(&vm, candle_core::DType::F32, &Device::Cpu),
    )
    .unwrap();
    vm.save(&frozen).unwrap();
    let agree = |what: &str, step: usize, a: f32, b: f32| {
        let tol = if step == 0 { 1e-4 } else { 1e-3 };
        assert!(
            (a - b).abs() <= tol * b.abs().max(1e-3),
            "{what}, step {}: {a} on the device vs {b} on the CPU",
            step + 1
        );
    };

    let classifier_losses = |dev: &Device, out: &str| {
        let opts = cxr_classifier::train::TrainOptions {
            steps: 3,
            batch: 3,
            lr: 1e-5,
            size: 32,
            seed: 5,
            checkpoint_every: 10,
            out: dir.path().join(out),
            init: None,
            device: dev.clone(),
        };
        let mut losses = Vec::new();
        cxr_classifier::train::train(&dense, &examples, &opts, &mut |r| losses.push(r.loss))
            .unwrap();
        losses
    };
    let cpu = classifier_losses(&Device::Cpu, "classifier-cpu");
    let dev = on_device(|d| classifier_losses(d, "classifier-device"));
    println!("classifier losses: {dev:?} vs {cpu:?}");
    for (step, (a, b)) in dev.iter().zip(&cpu).enumerate() {
        agree("classifier loss", step, *a, *b);
    }

    let vqgan_losses = |dev: &Device, out: &str| {
        let classifier =
            DenseNet::new(&dense, cxr_classifier::var_builder(&frozen, dev).unwrap()).unwrap();
        let config = cxr_vqgan::VqganConfig {
            resolution: 32,
            in_channels: 1,
            out_ch: 1,
            ch: 32,
            ch_mult: vec![1, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![16],
            z_channels: 32,
            n_embed: 64,
            embed_dim: 16,
        };
        let opts = cxr_vqgan::train::TrainOptions {
            steps: 3,
            batch: 2,
            lr: 1e-5,
            seed: 3,
            cip_start: 0,
            disc_start: 0,
            restart_every: 0,
            checkpoint_every: 10,
            out: dir.path().join(out),
            device: dev.clone(),
            ..Default::default()
        };
        let mut trainer =
            cxr_vqgan::train::Trainer::new(&config, Some(&classifier), &opts).unwrap();
        (0..3)
            .map(|k| trainer.step(&images[2 * k..2 * k + 2]).unwrap().losses)
            .collect::<Vec<_>>()
    };
    let cpu = vqgan_losses(&Device::Cpu, "vqgan-cpu");
    let dev = on_device(|d| vqgan_losses(d, "vqgan-device"));
    for (step, (a, b)) in dev.iter().zip(&cpu).enumerate() {
        println!("vqgan step {}: {a:?} vs {b:?}", step + 1);
        agree("vqgan L1", step, a.l1, b.l1);
        agree("vqgan feature loss", step, a.cip, b.cip);
        agree("vqgan codebook loss", step, a.quant, b.quant);
        agree("vqgan generator loss", step, a.g, b.g);
        agree("vqgan discriminator loss", step, a.d, b.d);
    }
}

/// Image-conditioned learning on the device: the GPT-NeoX fixture fine-tuned there on four
/// (image codes, report) pairs in both directions (codes -> text, text -> codes, LLM-CXR's two
/// tasks in miniature) writes each pair's own report for its codes and draws each report's own
/// codes, so its outputs depend on its inputs.
#[test]
fn image_conditioned_memorization_on_the_device() {
    const READ: u32 = 250;
    const DRAW: u32 = 251;
    let image = |i: u32| -> Vec<u32> { (0..8).map(|j| 256 + (i * 37 + j * 11) % 64).collect() };
    let text = |i: u32| -> Vec<u32> { (0..6).map(|j| 10 + (i * 53 + j * 29) % 190).collect() };
    let mut rows = Vec::new();
    for i in 0..4 {
        rows.push([image(i), vec![READ], text(i)].concat());
        rows.push([text(i), vec![DRAW], image(i)].concat());
    }
    let width = rows[0].len();
    on_device(|dev| {
        let (model, weights) = load_lm("gpt_neox_tiny", WeightMode::Train, dev);
        let ids = Tensor::from_vec(rows.concat(), (rows.len(), width), dev).unwrap();
        let mut opt = cxr_train::AdamW::new(
            weights.vars(),
            cxr_train::AdamWConfig {
                lr: 1e-2,
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        let mut loss = f32::NAN;
        for _ in 0..300 {
            let l = model.next_token_loss(&ids).unwrap();
            loss = l.to_scalar::<f32>().unwrap();
            opt.step(&l.backward().unwrap()).unwrap();
        }
        println!("memorization: loss {loss} after 300 steps");
        let greedy = |prompt: Vec<u32>, n: usize| {
            let options = GenerateOptions {
                sampling: Sampling::greedy(),
                constraint: Constraint::Free,
                max_new_tokens: n,
                stop_ids: vec![],
            };
            generate(&model, &[prompt], &options, |_, _| {})
                .unwrap()
                .remove(0)
        };
        for i in 0..4 {
            let read = greedy([image(i), vec![READ]].concat(), 6);
            assert_eq!(read, text(i), "pair {i}: the report written for its codes");
            let drawn = greedy([text(i), vec![DRAW]].concat(), 8);
            assert_eq!(drawn, image(i), "pair {i}: the codes drawn for its report");
        }
    });
}

/// NCCL on the device (a binary built with `--features nccl`): every GPU of the machine a rank
/// (one GPU: one rank, NCCL refuses two ranks on one GPU), each rank's gradient summed through
/// NCCL's all-reduce; the sum of each rank's tensor is the sum of all.
#[cfg(feature = "nccl")]
#[test]
fn nccl_sums_over_the_gpus() {
    use cxr_train::ranks::{NcclId, NcclRank};
    use cxr_train::Ranks;
    let device = cxr_train::device_from_env("CXR_TEST_DEVICE");
    if device.is_cpu() {
        println!("nccl: no GPU under test (CXR_TEST_DEVICE), nothing to sum");
        return;
    }
    let world =
        candle_core::cuda_backend::cudarc::driver::CudaContext::device_count().unwrap() as usize;
    let id = NcclId::new().unwrap();
    let sums: Vec<Vec<f32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                scope.spawn(move || {
                    let dev = Device::new_cuda(rank).unwrap();
                    let ranks = NcclRank::join(&dev, rank, world, id).unwrap();
                    let t = Tensor::new(&[rank as f32 + 1.0, 2.0, -3.0], &dev).unwrap();
                    let sum = ranks.all_reduce_sum(&t).unwrap();
                    sum.to_vec1::<f32>().unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let w = world as f32;
    println!("nccl: {world} rank(s), sums {sums:?}");
    for sum in sums {
        assert_eq!(sum, [w * (w + 1.0) / 2.0, 2.0 * w, -3.0 * w]);
    }
}
