//! VQ-GAN training on phantoms with every loss on (L1, clinical-information loss through a small
//! random DenseNet, codebook, discriminator with the adaptive weight, dead-code restarts): a run
//! stopped at a checkpoint and resumed ends with exactly the weights of a run never stopped, and
//! the reconstruction loss falls.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use cxr_classifier::{DenseNet, DenseNetConfig};
use cxr_vqgan::train::{TrainOptions, Trainer, CHECKPOINT, WEIGHTS};
use cxr_vqgan::VqganConfig;

fn config() -> VqganConfig {
    VqganConfig {
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
    }
}

fn phantoms(dir: &Path, n: u64) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let path = dir.join(format!("p{i}.png"));
            cxr_phantom::PhantomSpec::sample(5, i)
                .render(48)
                .to_luma8()
                .save(&path)
                .unwrap();
            path
        })
        .collect()
}

fn classifier() -> DenseNet {
    let cfg = DenseNetConfig {
        growth_rate: 4,
        block_config: vec![1, 1],
        num_init_features: 8,
        bn_size: 2,
        in_channels: 1,
        num_classes: 18,
    };
    let vm = VarMap::new();
    DenseNet::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    // Seeded weights (candle's own initialisation cannot be seeded, and a different classifier
    // each run would make the losses differ between runs), frozen as plain tensors.
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut names: Vec<(String, candle_core::Var)> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let tensors: Vec<(String, candle_core::Tensor)> = names
        .into_iter()
        .map(|(k, v)| {
            let values: Vec<f32> = if k.ends_with("running_var") {
                vec![1.0; v.elem_count()]
            } else {
                (0..v.elem_count())
                    .map(|_| cxr_train::sample_normal(&mut rng, 0.0, 0.1))
                    .collect()
            };
            (
                k,
                candle_core::Tensor::from_vec(values, v.shape(), &Device::Cpu).unwrap(),
            )
        })
        .collect();
    let map = tensors.into_iter().collect();
    DenseNet::new(
        &cfg,
        VarBuilder::from_tensors(map, DType::F32, &Device::Cpu),
    )
    .unwrap()
}

fn opts(out: &Path, steps: u64) -> TrainOptions {
    TrainOptions {
        steps,
        batch: 2,
        grad_accum: 2,
        lr: 1e-3,
        seed: 3,
        cip_weight: 1.0,
        cip_start: 1,
        codebook_weight: 1.0,
        disc_start: 2,
        disc_weight: 0.8,
        restart_every: 3,
        checkpoint_every: 3,
        out: out.to_path_buf(),
        init: None,
        ..Default::default()
    }
}

fn saved(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let (t, meta) = cxr_train::load_checkpoint(&dir.join(CHECKPOINT), &Device::Cpu).unwrap();
    assert!(meta.contains_key("config"));
    let mut v: Vec<(String, Vec<f32>)> = t
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn resumed_run_ends_with_the_same_weights_and_loss_falls() {
    let data = tempfile::tempdir().unwrap();
    let paths = phantoms(data.path(), 6);
    let cls = classifier();

    let straight = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(&config(), Some(&cls), &opts(straight.path(), 6)).unwrap();
    let mut l1 = Vec::new();
    let mut restarted = 0;
    while t.step < 6 {
        let r = t.step(&paths).unwrap();
        assert!(r.losses.l1.is_finite() && r.losses.cip.is_finite());
        if r.step > 2 {
            assert!(
                r.losses.d > 0.0 && r.losses.d_weight > 0.0,
                "discriminator on: {:?}",
                r.losses
            );
        }
        restarted += r.restarted;
        l1.push(r.losses.l1);
    }
    assert!(restarted > 0, "dead codes were restarted");
    assert!(l1[5] < l1[0], "L1 falls: {l1:?}");

    // Stop after the step-3 checkpoint (a new trainer stands for a new process), then resume.
    let resumed = tempfile::tempdir().unwrap();
    let mut first = Trainer::new(&config(), Some(&cls), &opts(resumed.path(), 6)).unwrap();
    for _ in 0..4 {
        first.step(&paths).unwrap();
    }
    drop(first);
    let mut second = Trainer::new(&config(), Some(&cls), &opts(resumed.path(), 6)).unwrap();
    assert_eq!(second.step, 3, "resumes from the last checkpoint");
    while second.step < 6 {
        second.step(&paths).unwrap();
    }
    let (a, b) = (saved(straight.path()), saved(resumed.path()));
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(va == vb, "{na} differs after resuming");
    }

    // The exported weights load as a model with their stored config.
    let (model, cfg) =
        cxr_vqgan::VqModel::load_auto(&straight.path().join(WEIGHTS), None, &Device::Cpu).unwrap();
    assert_eq!(cfg, config());
    let x = candle_core::Tensor::zeros((1, 1, 32, 32), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.encode(&x).unwrap().dims(), &[1, 256]);

    // Another config in the same folder is refused with the file named.
    let mut other = config();
    other.n_embed = 32;
    let err = Trainer::new(&other, Some(&cls), &opts(straight.path(), 6))
        .err()
        .unwrap();
    assert!(err.to_string().contains(CHECKPOINT), "{err}");
}
