//! A classifier checkpoint resumes only the run that wrote it: other examples, other initial
//! weights or other hyperparameters are refused, naming each difference.

use cxr_classifier::train::{train, Example, TrainOptions, CHECKPOINT};
use cxr_classifier::DenseNetConfig;

fn tiny() -> DenseNetConfig {
    DenseNetConfig {
        growth_rate: 4,
        block_config: vec![1, 1],
        num_init_features: 8,
        bn_size: 2,
        in_channels: 1,
        num_classes: 18,
    }
}

fn examples(dir: &std::path::Path, n: usize) -> Vec<Example> {
    (0..n)
        .map(|i| {
            let image = dir.join(format!("x{i}.png"));
            cxr_phantom::PhantomSpec::sample(5, i as u64)
                .render(32)
                .to_luma8()
                .save(&image)
                .unwrap();
            let mut targets = [0f32; 18];
            targets[i % 18] = 1.0;
            Example {
                image,
                targets,
                mask: [1.0; 18],
            }
        })
        .collect()
}

#[test]
fn resume_refuses_other_examples_or_settings_naming_each() {
    let dir = tempfile::tempdir().unwrap();
    let ex = examples(dir.path(), 4);
    let opts = TrainOptions {
        steps: 1,
        batch: 2,
        lr: 1e-3,
        size: 32,
        seed: 5,
        checkpoint_every: 1,
        out: dir.path().join("run"),
        init: None,
        ..Default::default()
    };
    train(&tiny(), &ex, &opts, &mut |_| {}).unwrap();
    assert!(opts.out.join(CHECKPOINT).is_file());

    let err = |ex: &[Example], o: &TrainOptions| {
        train(&tiny(), ex, o, &mut |_| {})
            .err()
            .unwrap()
            .to_string()
    };
    let e = err(
        &ex,
        &TrainOptions {
            lr: 1e-2,
            batch: 3,
            ..opts.clone()
        },
    );
    assert!(e.contains(CHECKPOINT), "{e}");
    assert!(
        e.contains("learning rate: checkpoint 1e-3, now 1e-2"),
        "{e}"
    );
    assert!(e.contains("batch: checkpoint 2, now 3"), "{e}");

    // Same images, one label changed: the data differs.
    let mut relabelled = ex.clone();
    relabelled[0].targets[0] = 0.0;
    let e = err(&relabelled, &opts);
    assert!(e.contains("training data: checkpoint sha256:"), "{e}");

    // Extending the run is allowed.
    train(
        &tiny(),
        &ex,
        &TrainOptions {
            steps: 2,
            ..opts.clone()
        },
        &mut |_| {},
    )
    .unwrap();
}
