//! A VQ-GAN checkpoint resumes only the run that wrote it: other training images, other initial
//! weights or other hyperparameters are refused, naming each difference.

use std::path::{Path, PathBuf};

use cxr_vqgan::train::{TrainOptions, Trainer, CHECKPOINT};
use cxr_vqgan::VqganConfig;

fn config() -> VqganConfig {
    VqganConfig {
        resolution: 16,
        in_channels: 1,
        out_ch: 1,
        ch: 32,
        ch_mult: vec![1, 1],
        num_res_blocks: 1,
        attn_resolutions: vec![],
        z_channels: 32,
        n_embed: 16,
        embed_dim: 8,
    }
}

fn images(dir: &Path, n: u64, size: u32) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let path = dir.join(format!("p{i}.png"));
            cxr_phantom::PhantomSpec::sample(5, i)
                .render(size)
                .to_luma8()
                .save(&path)
                .unwrap();
            path
        })
        .collect()
}

fn opts(out: &Path) -> TrainOptions {
    TrainOptions {
        steps: 1,
        batch: 2,
        lr: 1e-3,
        checkpoint_every: 1,
        cip_weight: 0.0,
        out: out.to_path_buf(),
        ..Default::default()
    }
}

#[test]
fn resume_refuses_other_images_or_settings_naming_each() {
    let data = tempfile::tempdir().unwrap();
    let paths = images(data.path(), 4, 24);
    let out = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(&config(), None, &opts(out.path())).unwrap();
    t.step(&paths).unwrap();
    drop(t);
    assert!(out.path().join(CHECKPOINT).is_file());

    let e = Trainer::new(
        &config(),
        None,
        &TrainOptions {
            lr: 2e-3,
            disc_weight: 0.5,
            ..opts(out.path())
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains(CHECKPOINT), "{e}");
    assert!(
        e.contains("learning rate: checkpoint 1e-3, now 2e-3"),
        "{e}"
    );
    assert!(
        e.contains("discriminator weight: checkpoint 0.8, now 0.5"),
        "{e}"
    );

    // Same settings, other images (one more): refused at the first step.
    let more = images(data.path(), 5, 24);
    let mut t = Trainer::new(&config(), None, &opts(out.path())).unwrap();
    let e = t.step(&more).err().unwrap().to_string();
    assert!(e.contains("training images: checkpoint sha256:"), "{e}");

    // Same images: resumes and goes on.
    let mut t = Trainer::new(
        &config(),
        None,
        &TrainOptions {
            steps: 2,
            ..opts(out.path())
        },
    )
    .unwrap();
    assert_eq!(t.step, 1);
    t.step(&paths).unwrap();
}
