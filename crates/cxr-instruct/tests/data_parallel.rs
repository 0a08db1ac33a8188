//! Data-parallel fine-tuning with ranks as threads on the CPU (`cxr_train::ThreadRanks`): two
//! ranks take the steps one rank takes, a killed two-rank run resumes to the weights of one
//! never stopped, and a rank that fails stops the others instead of leaving them waiting.

use std::path::Path;

use candle_core::Device;
use cxr_instruct::finetune::{finetune, finetune_rank, FinetuneOptions, Trainable};
use cxr_instruct::Tokenized;
use cxr_train::{Ranks, ThreadRanks};

mod common;
use common::{fixture, samples};

fn opts(out: &Path, grad_accum: usize) -> FinetuneOptions {
    FinetuneOptions {
        steps: 4,
        lr: 2e-3,
        warmup_steps: 1,
        micro_batch: 2,
        grad_accum,
        checkpoint_every: 1,
        out: out.to_path_buf(),
        ..Default::default()
    }
}

fn weights(net: &Trainable) -> Vec<f32> {
    net.tensors()
        .into_iter()
        .flat_map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

/// Every rank's result (final weights and reported losses), in rank order.
type RankOutcome = Result<(Vec<f32>, Vec<f64>), String>;

/// Runs `world` ranks as threads; rank r trains on `data(r)`.
fn run_ranks(
    model: &str,
    world: usize,
    o: &FinetuneOptions,
    data: impl Fn(usize) -> Vec<Tokenized> + Sync,
) -> Vec<RankOutcome> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = ThreadRanks::group(world)
            .into_iter()
            .map(|ranks| {
                let data = &data;
                scope.spawn(move || {
                    let net = Trainable::load(&fixture(model), &Device::Cpu).unwrap();
                    let mut losses = Vec::new();
                    finetune_rank(net, &data(ranks.rank()), &[], o, &ranks, &mut |r| {
                        losses.push(r.loss)
                    })
                    .map(|net| (weights(&net), losses))
                    .map_err(|e| e.to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn two_ranks_take_the_steps_one_rank_takes() {
    let dir = tempfile::tempdir().unwrap();
    let data = samples(16);
    for model in ["gpt_neox_tiny", "llama_tiny"] {
        for accum in [2, 4] {
            let out = |name: &str| dir.path().join(format!("{model}-{accum}-{name}"));
            let mut losses = Vec::new();
            let one = finetune(
                Trainable::load(&fixture(model), &Device::Cpu).unwrap(),
                &data,
                &[],
                &opts(&out("one"), accum),
                &mut |r| losses.push(r.loss),
            )
            .unwrap();
            let one = weights(&one);
            let two = run_ranks(model, 2, &opts(&out("two"), accum), |_| data.clone());
            let (w0, l0) = two[0].clone().unwrap();
            let (w1, l1) = two[1].clone().unwrap();
            assert_eq!(w0, w1, "{model}: the ranks hold the same weights");
            assert_eq!(l0, l1);
            for (a, b) in l0.iter().zip(&losses) {
                assert!(
                    (a - b).abs() < 1e-5 * b,
                    "{model} {accum}: {l0:?} vs {losses:?}"
                );
            }
            if accum == 2 {
                // One micro-batch per rank: the sum is the single rank's, bit for bit.
                assert_eq!(w0, one, "{model}");
            } else {
                // (g0 + g2) + (g1 + g3) against ((g0 + g1) + g2) + g3: rounding apart, which
                // Adam's normalised steps amplify where a gradient is near zero (each weight
                // moves up to 4 x 2e-3 in these four steps).
                let d = w0
                    .iter()
                    .zip(&one)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(d > 0.0 && d < 1e-3, "{model}: {d}");
            }
            assert_ne!(
                w0,
                weights(&Trainable::load(&fixture(model), &Device::Cpu).unwrap())
            );
        }
    }
}

#[test]
fn a_killed_two_rank_run_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = samples(16);
    let model = "gpt_neox_tiny";
    let straight = run_ranks(model, 2, &opts(&dir.path().join("straight"), 2), |_| {
        data.clone()
    });
    let split = dir.path().join("split");
    let first = run_ranks(
        model,
        2,
        &FinetuneOptions {
            steps: 2,
            ..opts(&split, 2)
        },
        |_| data.clone(),
    );
    assert!(first.iter().all(Result::is_ok));
    let resumed = run_ranks(model, 2, &opts(&split, 2), |_| data.clone());
    let (_, losses) = resumed[0].clone().unwrap();
    assert_eq!(
        losses.len(),
        2,
        "the resumed ranks start after the checkpoint"
    );
    assert_eq!(
        resumed[0].clone().unwrap().0,
        straight[0].clone().unwrap().0
    );
    assert_eq!(
        resumed[1].clone().unwrap().0,
        straight[0].clone().unwrap().0
    );
}

#[test]
fn a_failing_rank_stops_the_others_and_steps_must_split_evenly() {
    let dir = tempfile::tempdir().unwrap();
    // Rank 1's data has a token outside the vocabulary: it fails before its first step, and
    // rank 0, waiting for its gradients, stops with an error instead of hanging.
    let outcome = run_ranks("gpt_neox_tiny", 2, &opts(dir.path(), 2), |rank| {
        let mut data = samples(8);
        if rank == 1 {
            data[3].ids[2] = 9999;
        }
        data
    });
    let errors: Vec<String> = outcome.into_iter().map(|r| r.unwrap_err()).collect();
    assert!(errors[0].contains("another rank failed"), "{}", errors[0]);
    assert!(errors[1].contains("sample s3"), "{}", errors[1]);

    let outcome = run_ranks("gpt_neox_tiny", 2, &opts(dir.path(), 3), |_| samples(8));
    let err = outcome[0].clone().unwrap_err();
    assert!(err.contains("multiple of the rank count"), "{err}");
}
