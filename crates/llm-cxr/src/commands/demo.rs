//! `llm-cxr demo`: the main job on the embedded default. Today it exercises every stage that
//! exists (phantom dataset -> MIMIC-CXR-JPG loader -> the one image loader -> LLM-CXR
//! preprocessing -> stage pools and statistics -> gallery); later stages (VQ-GAN, language
//! model, evaluation) join it as they land.

use std::path::PathBuf;

use anyhow::Context;
use rayon::prelude::*;

use cxr_data::{open_dataset, DatasetKind};
use cxr_image::{load_image, preprocess, Preprocess};

#[derive(clap::Args)]
pub struct Args {
    /// Working folder for everything the demo writes.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Number of phantom images.
    #[arg(long, default_value_t = 500)]
    pub n: u64,
    /// Phantom image side.
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let data_dir = args.out.join("phantoms");
    tracing::info!(
        "1/4 generating {} phantom CXRs with reports in {}",
        args.n,
        data_dir.display()
    );
    let tree = super::phantom::generate(&super::phantom::Args {
        n: args.n,
        size: args.size,
        seed: args.seed,
        out: data_dir.clone(),
        dicom: false,
        jpeg_quality: 95,
    })?;

    tracing::info!("2/4 reading them back through the MIMIC-CXR-JPG loader");
    let ds = open_dataset(DatasetKind::Mimic, &data_dir)?;
    let summary = super::dataset::summarise(ds.as_ref());
    anyhow::ensure!(
        summary.images as u64 == args.n,
        "the loader found {} images, expected {}",
        summary.images,
        args.n
    );

    tracing::info!(
        "3/4 loading and preprocessing every image as LLM-CXR does (256 px, 3 channels, [-1, 1])"
    );
    let cfg = Preprocess::default();
    let bar = super::progress(ds.records().len() as u64, "preprocess");
    let stats: Vec<(f64, f64)> = ds
        .records()
        .par_iter()
        .map(|r| {
            let img = load_image(&r.image_path)?;
            let x = preprocess(&img, &cfg);
            bar.inc(1);
            anyhow::Ok(x.mean_std())
        })
        .collect::<anyhow::Result<_>>()?;
    bar.finish();
    let n = stats.len() as f64;
    let mean = stats.iter().map(|s| s.0).sum::<f64>() / n;
    let std = stats.iter().map(|s| s.1).sum::<f64>() / n;

    tracing::info!("4/4 writing the gallery");
    super::gallery::run(super::gallery::Args {
        out: args.out.join("gallery"),
        size: 160,
        per_row: 4,
        seed: args.seed,
    })?;

    let report = serde_json::json!({
        "phantoms": tree,
        "dataset": summary,
        "preprocessed": {"images": stats.len(), "size": cfg.size, "channels": cfg.channels, "mean": mean, "std": std},
        "gallery": args.out.join("gallery/gallery.md").display().to_string(),
        "seconds": started.elapsed().as_secs_f64(),
    });
    let text = serde_json::to_string_pretty(&report)?;
    super::write_atomic(&args.out.join("demo-summary.json"), text.as_bytes())
        .context("writing the demo summary")?;
    println!("{text}");
    tracing::info!(
        "demo finished in {:.1} s; summary in {}",
        started.elapsed().as_secs_f64(),
        args.out.join("demo-summary.json").display()
    );
    Ok(())
}
