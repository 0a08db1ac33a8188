//! `cargo bench -p cxr-instruct --bench train_step`: one training step (forward, backward,
//! AdamW) at batch 1 over 512 tokens, loss on every next token, for random pythia-70m-like and
//! pythia-410m-like GPT-NeoX models (vocabulary 51336), as ../shared/bench/peer_torch.py's
//! `lm-train` phase measures it. Two warm-up steps, then the median of `TRAIN_BENCH_REPEATS`
//! (default 3). Each shape runs in its own process so that its peak RSS is its own;
//! `TRAIN_BENCH_PHASES=70m` picks shapes. Prints one JSON object.

use std::process::Command;

use cxr_instruct::finetune::{finetune, FinetuneOptions, Trainable};
use cxr_instruct::{Task, Tokenized};
use cxr_lm::{GptNeoxConfig, LmConfig};
use serde_json::json;

const SEQ: usize = 512;
const VOCAB: usize = 51336;

fn neox(hidden: usize, layers: usize, heads: usize) -> LmConfig {
    LmConfig::GptNeox(GptNeoxConfig {
        vocab_size: VOCAB,
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        intermediate_size: 4 * hidden,
        rotary_pct: 0.25,
        rotary_emb_base: 10000.0,
        max_position_embeddings: 2048,
        layer_norm_eps: 1e-5,
        use_parallel_residual: true,
        hidden_act: "gelu".into(),
        tie_word_embeddings: false,
        attention_bias: true,
    })
}

fn phase(name: &str) -> serde_json::Value {
    let config = match name {
        "70m" => neox(512, 6, 8),
        "410m" => neox(1024, 24, 16),
        other => panic!("unknown phase {other}"),
    };
    let repeats: usize = std::env::var("TRAIN_BENCH_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let tensors =
        cxr_lm::weights::random_weights(&config, 0, None, &candle_core::Device::Cpu).unwrap();
    let mut net = Trainable::from_tensors(&config, tensors).unwrap();
    let sample = Tokenized {
        task: Task::Text,
        source: "random".into(),
        ids: (0..SEQ)
            .map(|i| ((i * 7919 + 13) % (VOCAB - 1) + 1) as u32)
            .collect(),
        response_start: 1,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut times = Vec::new();
    // One step per call (a fresh folder, so no checkpoint to resume); the step's own time is
    // reported, AdamW's moment allocation (at construction) excluded, as the peer's warm-up does.
    for k in 0..repeats + 2 {
        let opts = FinetuneOptions {
            steps: 1,
            lr: 1e-5,
            warmup_steps: 0,
            clip_norm: 0.0,
            checkpoint_every: u64::MAX,
            out: dir.path().join(format!("run{k}")),
            ..Default::default()
        };
        let mut step_s = 0.0;
        net = finetune(net, std::slice::from_ref(&sample), &[], &opts, &mut |r| {
            step_s = r.seconds
        })
        .unwrap();
        if k >= 2 {
            times.push(step_s);
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    json!({
        "shape": name,
        "params": config.tensor_shapes().iter().map(|(_, d)| d.iter().product::<usize>()).sum::<usize>(),
        "seq": SEQ,
        "step_s": times[times.len() / 2],
        "step_s_all": times,
        "peak_rss_mb": cxr_train::peak_rss_mb(),
    })
}

fn main() {
    cxr_lm::tune_cpu_runtime();
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
