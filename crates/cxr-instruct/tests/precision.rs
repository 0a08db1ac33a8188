//! Mixed precision on the tiny fixture models: bf16 and f16 products with f32 master weights
//! train as f32 does (close, not equal), on both architectures and on both op paths; a
//! half-precision run resumes to the weights of one never stopped, loss scale included; a
//! checkpoint of another precision is refused.

use std::path::Path;

use candle_core::{DType, Device};
use cxr_instruct::finetune::{finetune, response_nll, FinetuneOptions, Trainable, CHECKPOINT};
use cxr_instruct::Tokenized;
use cxr_train::Precision;

mod common;
use common::{fixture, samples};

fn opts(out: &Path, precision: Precision) -> FinetuneOptions {
    FinetuneOptions {
        steps: 6,
        lr: 3e-3,
        warmup_steps: 1,
        micro_batch: 2,
        grad_accum: 2,
        checkpoint_every: 2,
        out: out.to_path_buf(),
        precision,
        ..Default::default()
    }
}

/// Losses of a run and its final weights, flattened; every step applied.
fn train(model: &str, o: &FinetuneOptions) -> (Vec<f64>, Vec<f32>) {
    let (losses, applied, weights) = train_all(model, o);
    assert!(
        applied.iter().all(|&a| a),
        "a step was skipped: {applied:?}"
    );
    (losses, weights)
}

/// Losses of a run, whether each step's update was applied, and its final weights.
fn train_all(model: &str, o: &FinetuneOptions) -> (Vec<f64>, Vec<bool>, Vec<f32>) {
    let (mut losses, mut applied) = (Vec::new(), Vec::new());
    let net = finetune(
        Trainable::load(&fixture(model), &Device::Cpu).unwrap(),
        &samples(8),
        &[],
        o,
        &mut |r| {
            losses.push(r.loss);
            applied.push(r.applied);
        },
    )
    .unwrap();
    let mut flat = Vec::new();
    for (name, t) in net.tensors() {
        assert_eq!(t.dtype(), DType::F32, "{name}: master weights stay f32");
        flat.extend(t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    (losses, applied, flat)
}

/// The largest first moment AdamW holds in a run's checkpoint.
fn largest_moment(out: &Path) -> f32 {
    let (tensors, _) = cxr_train::load_checkpoint(&out.join(CHECKPOINT), &Device::Cpu).unwrap();
    tensors
        .iter()
        .filter(|(name, _)| name.starts_with("adamw.m."))
        .map(|(_, t)| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap())
        .map(|m| m.to_scalar::<f32>().unwrap())
        .fold(0.0, f32::max)
}

#[test]
fn half_precision_trains_as_f32_does() {
    let dir = tempfile::tempdir().unwrap();
    for model in ["gpt_neox_tiny", "llama_tiny"] {
        let out = |name: &str| dir.path().join(format!("{model}-{name}"));
        let (l32, w32) = train(model, &opts(&out("f32"), Precision::F32));
        let start: f32 = w32.iter().map(|w| w.abs()).fold(0.0, f32::max);
        for precision in [Precision::Bf16, Precision::F16] {
            let o = opts(&out(&precision.to_string()), precision);
            let (l, w) = train(model, &o);
            let what = format!("{model} {precision}");
            // One rounding of the products: the first loss within 1 % of f32's.
            assert!(
                (l[0] - l32[0]).abs() < 1e-2 * l32[0],
                "{what}: {l:?} vs {l32:?}"
            );
            assert!(l[5] < 0.8 * l[0], "{what} learns: {l:?}");
            assert!(
                l.iter().zip(&l32).all(|(a, b)| (a - b).abs() < 5e-2 * b),
                "{what}: {l:?} vs {l32:?}"
            );
            let diff = w
                .iter()
                .zip(&w32)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            // The products were rounded (not f32 under another name), and the weights stayed
            // close to f32's after six steps of 3e-3.
            assert!(
                diff > 0.0 && diff < 0.05 * start,
                "{what}: {diff} of {start}"
            );
            // The optimizer saw the true gradients: an f16 loss scale left in them would show
            // 65536 times over in the moments.
            let ratio = largest_moment(&o.out) / largest_moment(&out("f32"));
            assert!(
                (0.5..2.0).contains(&ratio),
                "{what}: moments {ratio} x f32's"
            );
        }
    }
}

#[test]
fn on_the_portable_path_half_precision_computes_what_the_cpu_kernels_do() {
    // The GPU runs the portable path; on the CPU, under autocast, the norms, GELU, rope and
    // the loss still run our kernels. Both must give the same loss and gradients, within what
    // one bf16 rounding flipped by an f32 difference in the last place moves.
    for model in ["gpt_neox_tiny", "llama_tiny"] {
        let net = Trainable::load(&fixture(model), &Device::Cpu).unwrap();
        let data = samples(3);
        let batch: Vec<&Tokenized> = data.iter().collect();
        let step = || {
            let (nll, _) = Precision::Bf16
                .autocast(|| response_nll(&net.model, &batch))
                .unwrap();
            let grads = nll.backward().unwrap();
            let g: Vec<_> = net
                .vars
                .iter()
                .map(|(_, v)| grads.get(v.as_tensor()).unwrap().clone())
                .collect();
            (nll.to_scalar::<f32>().unwrap(), g)
        };
        let (loss, grads) = step();
        let (loss_p, grads_p) = cxr_ops::portable(step);
        assert!(
            (loss - loss_p).abs() < 1e-4 * loss,
            "{model}: {loss} vs {loss_p}"
        );
        for ((name, _), (g, gp)) in net.vars.iter().zip(grads.iter().zip(&grads_p)) {
            let d = cxr_ops::max_relative_diff(gp, g).unwrap();
            assert!(d < 1e-2, "{model} {name}: {d}");
        }
    }
}

#[test]
fn a_half_precision_run_resumes_exactly_and_refuses_another_precision() {
    let dir = tempfile::tempdir().unwrap();
    let model = "gpt_neox_tiny";
    let (_, straight) = train(model, &opts(&dir.path().join("straight"), Precision::F16));
    let split = dir.path().join("split");
    train(
        model,
        &FinetuneOptions {
            steps: 2,
            ..opts(&split, Precision::F16)
        },
    );
    let meta = cxr_train::load_checkpoint(&split.join(CHECKPOINT), &Device::Cpu)
        .unwrap()
        .1;
    assert_eq!(meta["precision"], "f16");
    assert_eq!(
        cxr_train::LossScale::read_from(&meta).map(|s| s.scale),
        Some(cxr_train::LossScale::INITIAL)
    );
    let err = finetune(
        Trainable::load(&fixture(model), &Device::Cpu).unwrap(),
        &samples(8),
        &[],
        &opts(&split, Precision::Bf16),
        &mut |_| {},
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains(CHECKPOINT) && err.contains("f16") && err.contains("bf16"),
        "{err}"
    );
    let (_, resumed) = train(model, &opts(&split, Precision::F16));
    assert_eq!(straight, resumed);
}

#[test]
fn overflowing_f16_steps_are_skipped_and_a_run_resumes_across_them() {
    // A loss scale far too large: the first steps' f16 gradients overflow; each is skipped
    // (the weights do not move) and the scale halves until they fit.
    let dir = tempfile::tempdir().unwrap();
    let model = "gpt_neox_tiny";
    let o = |out: &str, steps| FinetuneOptions {
        steps,
        initial_loss_scale: 2f64.powi(28),
        ..opts(&dir.path().join(out), Precision::F16)
    };
    let (losses, applied, straight) = train_all(model, &o("straight", 12));
    // (Measured: nine skips, 2^28 down to 2^19, then every step applied.)
    let skipped = applied.iter().take_while(|&&a| !a).count();
    assert!(skipped > 2 && applied[11], "{applied:?}");
    assert!(losses[11] < losses[0], "{losses:?}");
    // Skipped steps change nothing: a run of only those steps ends where it started.
    let (_, _, w) = train_all(model, &o("skipped", skipped as u64));
    let (_, _, w0) = train_all(
        model,
        &FinetuneOptions {
            lr: 0.0,
            ..o("zero", 1)
        },
    );
    assert_eq!(w, w0);
    // Killed after step 2 (with skips behind it) and resumed: the straight run's weights.
    let split = dir.path().join("split");
    train_all(model, &o("split", 2));
    let meta = cxr_train::load_checkpoint(&split.join(CHECKPOINT), &Device::Cpu)
        .unwrap()
        .1;
    let updates: u64 = meta["optimizer_updates"].parse().unwrap();
    assert_eq!(updates, applied[..2].iter().filter(|&&a| a).count() as u64);
    let (_, _, resumed) = train_all(model, &o("split", 12));
    assert_eq!(resumed, straight);
}
