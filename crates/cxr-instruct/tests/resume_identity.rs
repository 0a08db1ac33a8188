//! A checkpoint resumes only the run that wrote it: other training data, another base model or
//! other hyperparameters are refused, naming each difference; more steps are allowed.

use std::path::{Path, PathBuf};

use candle_core::Device;
use cxr_instruct::finetune::{finetune, FinetuneOptions, Trainable, CHECKPOINT};
use cxr_instruct::{Task, Tokenized};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cxr-lm/tests/fixtures")
        .join(name)
}

fn samples(n: usize, salt: usize) -> Vec<Tokenized> {
    (0..n)
        .map(|k| Tokenized {
            task: Task::Text,
            source: format!("s{k}"),
            ids: (0..14)
                .map(|i| ((i * 37 + k * 11 + salt) % 383) as u32 + 1)
                .collect(),
            response_start: 5,
            prompt_spans: Vec::new(),
        })
        .collect()
}

fn opts(out: &Path) -> FinetuneOptions {
    FinetuneOptions {
        steps: 2,
        lr: 1e-3,
        warmup_steps: 2,
        micro_batch: 2,
        checkpoint_every: 1,
        out: out.to_path_buf(),
        ..Default::default()
    }
}

fn run(model: &str, data: &[Tokenized], opts: &FinetuneOptions) -> Result<(), String> {
    finetune(
        Trainable::load(&fixture(model), &Device::Cpu).unwrap(),
        data,
        &[],
        opts,
        &mut |_| {},
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

#[test]
fn resume_refuses_other_data_model_or_settings_naming_each() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let data = samples(6, 0);
    run("gpt_neox_tiny", &data, &opts(&out)).unwrap();
    assert!(out.join(CHECKPOINT).is_file());

    let e = run(
        "gpt_neox_tiny",
        &data,
        &FinetuneOptions {
            lr: 2e-3,
            warmup_steps: 3,
            ..opts(&out)
        },
    )
    .unwrap_err();
    assert!(e.contains(CHECKPOINT), "{e}");
    assert!(
        e.contains("learning rate: checkpoint 1e-3, now 2e-3"),
        "{e}"
    );
    assert!(e.contains("warmup steps: checkpoint 2, now 3"), "{e}");

    // Other samples (same count, other ids): the data fingerprint differs.
    let e = run("gpt_neox_tiny", &samples(6, 1), &opts(&out)).unwrap_err();
    assert!(e.contains("training data: checkpoint sha256:"), "{e}");
    assert!(!e.contains("learning rate"), "{e}");

    // Another base model with the same shapes: weights that differ by one byte.
    let other = dir.path().join("other-base");
    std::fs::create_dir_all(&other).unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("gpt_neox_tiny").join(name), other.join(name)).unwrap();
    }
    let mut bytes = std::fs::read(other.join("model.safetensors")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(other.join("model.safetensors"), bytes).unwrap();
    let e = finetune(
        Trainable::load(&other, &Device::Cpu).unwrap(),
        &data,
        &[],
        &opts(&out),
        &mut |_| {},
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("base model: checkpoint sha256:"), "{e}");

    // The image rows' rate and the objective are part of the run too.
    let e = run(
        "gpt_neox_tiny",
        &data,
        &FinetuneOptions {
            image_lr: Some((300, 1e-2)),
            ..opts(&out)
        },
    )
    .unwrap_err();
    assert!(
        e.contains("image rows' learning rate: checkpoint the base rate, now 1e-2 from id 300"),
        "{e}"
    );

    // Extending the run is allowed: the schedule does not depend on the total.
    run(
        "gpt_neox_tiny",
        &data,
        &FinetuneOptions {
            steps: 3,
            ..opts(&out)
        },
    )
    .unwrap();
}
