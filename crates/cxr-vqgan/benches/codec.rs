//! `cargo bench -p cxr-vqgan`: encode and decode latency of the paper preset (random weights)
//! at batch 1 and 8, printed as JSON. Run the PyTorch peer (../shared/bench/peer_torch.py
//! --skip-lm --skip-train) in the same session on a quiet machine and compare ratios.
//! `VQGAN_BENCH_BATCHES=1` and `VQGAN_BENCH_REPEATS=3` shorten it.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use cxr_vqgan::{VqModel, VqganConfig};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // The allocator settings `llm-cxr` runs with.
    cxr_train::tune_cpu_runtime();
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let batches: Vec<usize> = env("VQGAN_BENCH_BATCHES", "1,8")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let repeats: usize = env("VQGAN_BENCH_REPEATS", "5").parse().unwrap_or(5);
    let preset = env("VQGAN_BENCH_PRESET", "paper");
    let mut config = VqganConfig::preset(&preset).expect("preset");
    // The peer benchmarks a 1-channel model.
    config.in_channels = 1;
    config.out_ch = 1;
    let device = Device::Cpu;
    // Random weights, saved and loaded as a user's weights are (constants, memory-mapped).
    let varmap = VarMap::new();
    VqModel::new(
        &config,
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
    )
    .unwrap();
    let params: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    let dir = std::env::temp_dir().join(format!("vqgan-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let weights = dir.join("vqgan.safetensors");
    varmap.save(&weights).unwrap();
    drop(varmap);
    let model = VqModel::load(&config, &weights, &device).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let r = config.resolution;
    let mut results = Vec::new();
    for &b in &batches {
        let x = Tensor::rand(-1f32, 1f32, (b, 1, r, r), &device).unwrap();
        let idx = model.encode(&x).unwrap();
        model.decode(&idx).unwrap();
        let (mut enc, mut dec) = (Vec::new(), Vec::new());
        for _ in 0..repeats {
            let t = Instant::now();
            let idx = model.encode(&x).unwrap();
            enc.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            model.decode(&idx).unwrap();
            dec.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let (e, d) = (median(enc), median(dec));
        results.push(format!(
            "{{\"batch\": {b}, \"encode_ms\": {e:.1}, \"encode_ms_per_image\": {:.1}, \"decode_ms\": {d:.1}, \"decode_ms_per_image\": {:.1}}}",
            e / b as f64,
            d / b as f64
        ));
        eprintln!("batch {b}: encode {e:.0} ms, decode {d:.0} ms");
    }
    println!(
        "{{\"preset\": \"{preset}\", \"params\": {params}, \"threads\": {}, \"results\": [{}], \"peak_rss_mb\": {:.0}}}",
        rayon_threads(),
        results.join(", "),
        cxr_train::peak_rss_mb()
    );
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
