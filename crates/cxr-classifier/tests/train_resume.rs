//! Training on phantoms: a run stopped after its checkpoint and resumed ends with exactly the
//! weights of a run never stopped; the loss falls on a batch seen again and again.

use cxr_classifier::candle_core::Device;
use cxr_classifier::train::{examples, train, TrainOptions, CHECKPOINT};
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

fn phantom_examples(dir: &std::path::Path, n: u64) -> Vec<cxr_classifier::train::Example> {
    let opts = cxr_phantom::TreeOptions {
        out: dir.to_path_buf(),
        n,
        size: 64,
        seed: 9,
        dicom: false,
        jpeg_quality: 95,
    };
    cxr_phantom::write_tree(&opts, &|| {}).unwrap();
    let ds = cxr_data::open_dataset(cxr_data::DatasetKind::Mimic, dir).unwrap();
    examples(ds.records())
}

fn weights(dir: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    let (t, _) = cxr_train::load_checkpoint(&dir.join(CHECKPOINT), &Device::Cpu).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = t
        .into_iter()
        .filter(|(k, _)| !k.starts_with("adamw."))
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn resumed_run_ends_with_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let ex = phantom_examples(&dir.path().join("data"), 6);
    assert_eq!(ex.len(), 6);
    let opts = |out: &str, steps| TrainOptions {
        steps,
        batch: 3,
        lr: 1e-3,
        size: 32,
        seed: 5,
        checkpoint_every: 2,
        out: dir.path().join(out),
        init: None,
        ..Default::default()
    };
    train(&tiny(), &ex, &opts("straight", 5), &mut |_| {}).unwrap();
    // "Killed" after step 2 (its checkpoint is all that survives), then started again.
    train(&tiny(), &ex, &opts("resumed", 2), &mut |_| {}).unwrap();
    let mut resumed_steps = Vec::new();
    train(&tiny(), &ex, &opts("resumed", 5), &mut |r| {
        resumed_steps.push(r.step)
    })
    .unwrap();
    assert_eq!(
        resumed_steps,
        vec![3, 4, 5],
        "resumption starts after the checkpoint"
    );
    let (a, b) = (
        weights(&dir.path().join("straight")),
        weights(&dir.path().join("resumed")),
    );
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let diff = va
            .iter()
            .zip(vb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(diff == 0.0, "{na} differs by {diff}");
    }
    // A checkpoint from another seed is refused, not silently mixed.
    let mut other = opts("resumed", 6);
    other.seed = 6;
    let e = train(&tiny(), &ex, &other, &mut |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("another seed"), "{e}");
}

#[test]
fn loss_falls_on_repeated_data() {
    let dir = tempfile::tempdir().unwrap();
    let ex = phantom_examples(&dir.path().join("data"), 4);
    let mut losses = Vec::new();
    let opts = TrainOptions {
        steps: 30,
        batch: 4,
        lr: 1e-2,
        size: 32,
        seed: 1,
        checkpoint_every: 100,
        out: dir.path().join("run"),
        init: None,
        ..Default::default()
    };
    train(&tiny(), &ex, &opts, &mut |r| losses.push(r.loss)).unwrap();
    let first = losses[..3].iter().sum::<f32>() / 3.0;
    let last = losses[losses.len() - 3..].iter().sum::<f32>() / 3.0;
    assert!(last < first * 0.7, "loss {first} -> {last}: {losses:?}");
}
