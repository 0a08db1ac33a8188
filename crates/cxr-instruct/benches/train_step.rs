//! `cargo bench -p cxr-instruct --bench train_step`: one training step (forward, backward,
//! AdamW) at batch 1 over 512 tokens, loss on every next token, for random pythia-70m-like and
//! pythia-410m-like GPT-NeoX models (vocabulary 51336), as ../shared/bench/peer_torch.py's
//! `lm-train` phase measures it. Two warm-up steps, then the median of `TRAIN_BENCH_REPEATS`
//! (default 3). Each shape runs in its own process so that its peak RSS is its own;
//! `TRAIN_BENCH_PHASES=70m` picks shapes (`3b`: the dolly-v2-3b shape, for GPUs);
//! `BENCH_DEVICE=cuda:0` runs on a GPU; `TRAIN_BENCH_PRECISION=bf16` (or `f16`) runs the
//! forward under autocast, as `llm-cxr train --precision` does. Prints one JSON object.

use std::process::Command;

use std::time::Instant;

use cxr_instruct::finetune::{response_nll, Trainable};
use cxr_instruct::{Task, Tokenized};
use cxr_lm::{GptNeoxConfig, LmConfig};
use serde_json::json;

const SEQ: usize = 512;
const VOCAB: usize = 51336;

fn neox(hidden: usize, layers: usize, heads: usize) -> LmConfig {
    LmConfig::GptNeox(GptNeoxConfig::pythia_like(hidden, layers, heads, VOCAB))
}

fn phase(name: &str) -> serde_json::Value {
    let config = match name {
        "70m" => neox(512, 6, 8),
        "410m" => neox(1024, 24, 16),
        "3b" => neox(2560, 32, 32),
        other => panic!("unknown phase {other}"),
    };
    let repeats: usize = std::env::var("TRAIN_BENCH_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let device = cxr_train::device_from_env("BENCH_DEVICE");
    let precision: cxr_train::Precision = std::env::var("TRAIN_BENCH_PRECISION")
        .map(|p| p.parse().unwrap())
        .unwrap_or_default();
    let tensors = cxr_lm::weights::random_weights(&config, 0, None, &device).unwrap();
    let net = Trainable::from_tensors(&config, tensors, &device).unwrap();
    let sample = Tokenized {
        task: Task::Text,
        source: "random".into(),
        ids: (0..SEQ)
            .map(|i| ((i * 7919 + 13) % (VOCAB - 1) + 1) as u32)
            .collect(),
        response_start: 1,
        prompt_spans: Vec::new(),
    };
    let mut opt = cxr_train::AdamW::new(
        net.vars.clone(),
        cxr_train::AdamWConfig {
            lr: 1e-5,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    // The step of `finetune` taken apart (one micro-batch, no clipping), timed as the peer
    // times its own: forward (to the loss), backward, optimizer.
    let (mut times, mut parts, mut faults) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..repeats + 2 {
        let faults0 = minor_faults();
        let t0 = Instant::now();
        let (nll, n) = precision
            .autocast(|| response_nll(&net.model, &[&sample]))
            .unwrap();
        let loss = (nll / n as f64).unwrap();
        device.synchronize().unwrap();
        let t1 = Instant::now();
        let grads = loss.backward().unwrap();
        device.synchronize().unwrap();
        let t2 = Instant::now();
        opt.step(&grads).unwrap();
        drop(grads);
        device.synchronize().unwrap();
        let t3 = Instant::now();
        if k >= 2 {
            faults.push(minor_faults() - faults0);
            times.push((t3 - t0).as_secs_f64());
            parts.push([
                (t1 - t0).as_secs_f64(),
                (t2 - t1).as_secs_f64(),
                (t3 - t2).as_secs_f64(),
            ]);
        }
    }
    let part = |i: usize| {
        let mut v: Vec<f64> = parts.iter().map(|p| p[i]).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (fwd, bwd, opt_s) = (part(0), part(1), part(2));
    times.sort_by(|a, b| a.total_cmp(b));
    json!({
        "shape": name,
        "params": config.tensor_shapes().iter().map(|(_, d)| d.iter().product::<usize>()).sum::<usize>(),
        "seq": SEQ,
        "device": format!("{:?}", device.location()),
        "precision": precision.to_string(),
        "tokens_per_s": SEQ as f64 / times[times.len() / 2],
        "step_s": times[times.len() / 2],
        "step_s_all": times,
        "fwd_s": fwd,
        "bwd_s": bwd,
        "opt_s": opt_s,
        "peak_rss_mb": cxr_train::peak_rss_mb(),
        "page_faults_per_step": faults,
    })
}

/// Minor page faults of this process so far (each a page the kernel zeroed or copied).
fn minor_faults() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes the struct it is given.
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init().ru_minflt
    }
}

fn main() {
    cxr_train::tune_cpu_runtime();
    if let Ok(name) = std::env::var("TRAIN_BENCH_CHILD") {
        println!("{}", phase(&name));
        return;
    }
    let phases = std::env::var("TRAIN_BENCH_PHASES").unwrap_or_else(|_| "70m,410m".into());
    let mut out = serde_json::Map::new();
    for name in phases.split(',') {
        let o = Command::new(std::env::current_exe().unwrap())
            .env("TRAIN_BENCH_CHILD", name)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        eprintln!("{name}: {:.2} s per step", v["step_s"]);
        out.insert(name.to_string(), v);
    }
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
