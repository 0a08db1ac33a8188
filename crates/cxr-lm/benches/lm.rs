//! `cargo bench -p cxr-lm --bench lm`: prefill of a 300-token prompt and greedy decode of 256
//! tokens with the KV cache, as ../shared/bench/peer_torch.py measures them (decode tok/s = 255 /
//! time from token 1 to token 256; prefill computes the LM head on the last position only), for
//! random pythia-70m-like and pythia-410m-like GPT-NeoX models (vocab 51336 as the peer) in f32,
//! the 410m shape in 8 and 4 bits (Q8_0, Q4_K; 410m-q4_0 on request), SmolLM2-135M from its GGUF, and the dolly-v2-3b shape in 4 bits
//! drawing one 256-token image. Each phase runs in its own process so that its peak RSS is its own.
//! Prints one JSON object. `LM_BENCH_PHASES=70m-f32,410m-f32` picks phases, `LM_BENCH_REPEATS=3`
//! sets the repeats (median reported). `BENCH_DEVICE=cuda:0` runs on a GPU, where the phases
//! `410m-f32` and `3b-f32` (the dolly-v2-3b shape, text) are the ones to run.

use std::process::Command;
use std::time::Instant;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use cxr_lm::{
    generate, CausalLm, Constraint, GenerateOptions, GptNeoxConfig, LmConfig, Sampling, WeightMode,
    Weights,
};
use serde_json::json;

const PROMPT: usize = 300;
/// Tokens decoded after the prompt; `LM_BENCH_NEW_TOKENS` changes it (0: prefill only, to profile).
fn new_tokens() -> usize {
    std::env::var("LM_BENCH_NEW_TOKENS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn neox(hidden: usize, layers: usize, heads: usize, vocab: usize) -> LmConfig {
    LmConfig::GptNeox(GptNeoxConfig::pythia_like(hidden, layers, heads, vocab))
}

fn random_model(config: &LmConfig, quantize: Option<GgmlDType>) -> CausalLm {
    let device = cxr_train::device_from_env("BENCH_DEVICE");
    let tensors = cxr_lm::weights::random_weights(config, 0, quantize, &device).unwrap();
    let w = Weights::new(tensors, "random", WeightMode::Inference, &device);
    CausalLm::new(config, &w).unwrap()
}

fn params(config: &LmConfig) -> usize {
    config
        .tensor_shapes()
        .iter()
        .map(|(_, d)| d.iter().product::<usize>())
        .sum()
}

/// Prefill and decode timings of one model.
fn measure(
    model: &CausalLm,
    repeats: usize,
    constraint: Constraint,
    new: usize,
) -> serde_json::Value {
    let vocab = model.vocab_size() as u32;
    let prompt: Vec<u32> = (0..PROMPT as u32)
        .map(|i| (i * 7919 + 13) % vocab.min(50000))
        .collect();
    let ids = Tensor::new(prompt.as_slice(), model.device())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut prefill = Vec::new();
    for r in 0..repeats + 1 {
        let mut cache = model.new_cache(PROMPT);
        let t = Instant::now();
        let h = model.step_hidden(&ids, &[0], &mut cache).unwrap();
        model.head().forward(&h).unwrap();
        model.device().synchronize().unwrap();
        if r > 0 {
            prefill.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let options = GenerateOptions {
        sampling: Sampling::greedy(),
        constraint,
        max_new_tokens: new,
        stop_ids: vec![],
    };
    let mut decode = Vec::new();
    let mut ttft = Vec::new();
    let mut total = Vec::new();
    for r in 0..repeats + 1 {
        let mut stamps = Vec::with_capacity(new);
        let t = Instant::now();
        let out = generate(model, std::slice::from_ref(&prompt), &options, |_, _| {
            stamps.push(Instant::now())
        })
        .unwrap();
        assert_eq!(out[0].len(), new);
        if r > 0 {
            total.push(t.elapsed().as_secs_f64());
            ttft.push((stamps[0] - t).as_secs_f64() * 1e3);
            decode.push((new - 1) as f64 / (stamps[new - 1] - stamps[0]).as_secs_f64());
        }
    }
    let prefill_ms = median(prefill.clone());
    json!({
        "prompt_len": PROMPT, "new_tokens": new, "repeats": repeats,
        "prefill_ms": prefill_ms, "prefill_tok_s": PROMPT as f64 / prefill_ms * 1e3, "prefill_ms_samples": prefill,
        "ttft_ms": median(ttft), "decode_tok_s": median(decode.clone()), "decode_tok_s_samples": decode,
        "generate_total_s": median(total),
    })
}

fn run_phase(phase: &str, repeats: usize) -> serde_json::Value {
    let vocab = 50304 + 1024 + 8; // the peer's vocabulary
    let started = Instant::now();
    let (config, quant) = match phase {
        "70m-f32" => (neox(512, 6, 8, vocab), None),
        "410m-f32" => (neox(1024, 24, 16, vocab), None),
        "410m-q8_0" => (neox(1024, 24, 16, vocab), Some(GgmlDType::Q8_0)),
        "410m-q4_0" => (neox(1024, 24, 16, vocab), Some(GgmlDType::Q4_0)),
        "410m-q4k" => (neox(1024, 24, 16, vocab), Some(GgmlDType::Q4K)),
        "dolly-3b-q4k-image" => (neox(2560, 32, 32, 51305), Some(GgmlDType::Q4K)),
        "3b-f32" => (neox(2560, 32, 32, vocab), None),
        "smollm2-gguf" => {
            let path = std::env::var("LM_BENCH_GGUF")
                .unwrap_or_else(|_| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(path);
            if !path.is_file() {
                return json!({"skipped": format!("{} is absent (scripts/fetch-smollm2.sh)", path.display())});
            }
            let lm =
                cxr_lm::LanguageModel::load(&path, WeightMode::Inference, &Device::Cpu).unwrap();
            let load_s = started.elapsed().as_secs_f64();
            let mut r = measure(&lm.model, repeats, Constraint::Free, new_tokens());
            r["load_s"] = json!(load_s);
            r["peak_rss_mb"] = json!(cxr_train::peak_rss_mb());
            return r;
        }
        other => panic!("unknown phase {other}"),
    };
    let model = random_model(&config, quant);
    let build_s = started.elapsed().as_secs_f64();
    let constraint = if phase.ends_with("-image") {
        Constraint::Image {
            image_ids: 50281..51305,
            count: new_tokens(),
        }
    } else {
        Constraint::Free
    };
    let repeats = if phase.starts_with("dolly") {
        1
    } else {
        repeats
    };
    let mut r = measure(&model, repeats, constraint, new_tokens());
    r["params"] = json!(params(&config));
    r["build_s"] = json!(build_s);
    r["weights"] = json!(quant.map_or("f32".to_string(), |q| format!("{q:?}")));
    r["peak_rss_mb"] = json!(cxr_train::peak_rss_mb());
    r
}

fn main() {
    cxr_train::tune_cpu_runtime();
    let repeats: usize = std::env::var("LM_BENCH_REPEATS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    if let Ok(phase) = std::env::var("LM_BENCH_PHASE") {
        println!("{}", run_phase(&phase, repeats));
        return;
    }
    let phases = std::env::var("LM_BENCH_PHASES").unwrap_or_else(|_| {
        "70m-f32,410m-f32,410m-q8_0,410m-q4k,smollm2-gguf,dolly-3b-q4k-image".into()
    });
    let exe = std::env::current_exe().unwrap();
    let mut results = serde_json::Map::new();
    for phase in phases.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        eprintln!("lm bench: {phase}");
        let out = Command::new(&exe)
            .env("LM_BENCH_PHASE", phase)
            .arg("--bench")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let value = text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .unwrap_or_else(|| json!({"error": String::from_utf8_lossy(&out.stderr).to_string()}));
        eprintln!("  {value}");
        results.insert(phase.to_string(), value);
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{}",
        json!({"bench": "lm", "date_utc": chrono_free_date(), "threads": threads, "results": results})
    );
}

fn chrono_free_date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
