//! Phantom generation throughput at 256 px (`cargo bench -p cxr-phantom`), printed as JSON.
//!
//! Measures the whole `llm-cxr phantom` path (sample, render, JPEG encode, atomic writes of image
//! and report, CSVs) on all cores, and rendering alone on one core. The target is 50
//! images/s on 2 cores; there is no reference implementation to race, so the ratio is against
//! that target. Set PHANTOM_BENCH_N to change the image count (default 600).

use std::time::Instant;

use cxr_phantom::{write_tree, PhantomSpec, TreeOptions};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let n: u64 = std::env::var("PHANTOM_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let size = 256;
    let mut full = Vec::new();
    for rep in 0..4 {
        let dir = tempfile::tempdir().expect("temp dir");
        let opts = TreeOptions {
            out: dir.path().to_path_buf(),
            n,
            size,
            seed: 100 + rep,
            dicom: false,
            jpeg_quality: TreeOptions::DEFAULT_JPEG_QUALITY,
        };
        let t = Instant::now();
        write_tree(&opts, &|| {}).expect("write tree");
        let rate = n as f64 / t.elapsed().as_secs_f64();
        if rep > 0 {
            full.push(rate); // the first run warms the page cache and allocator
        }
    }
    let mut render = Vec::new();
    for rep in 0..3 {
        let t = Instant::now();
        let k = 60;
        for i in 0..k {
            std::hint::black_box(PhantomSpec::sample(7, rep * k + i).render(size));
        }
        render.push(k as f64 / t.elapsed().as_secs_f64());
    }
    let full_rate = median(full.clone());
    println!(
        "{}",
        serde_json::json!({
            "bench": "phantom_generation",
            "size": size,
            "images": n,
            "threads": rayon::current_num_threads(),
            "full_pipeline_images_per_s": full_rate,
            "full_pipeline_samples": full,
            "render_only_1_thread_images_per_s": median(render),
            "target_images_per_s": 50.0,
            "ratio_vs_target": full_rate / 50.0,
        })
    );
}
