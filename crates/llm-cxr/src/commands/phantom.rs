//! `llm-cxr phantom`: the synthetic dataset generator.

use std::path::PathBuf;

use anyhow::Context;

use cxr_phantom::{write_tree, TreeOptions, TreeSummary};

#[derive(clap::Args, serde::Serialize)]
pub struct Args {
    /// Number of images (one frontal image per study; subjects have 1-3 studies).
    #[arg(long, default_value_t = 5000)]
    pub n: u64,
    /// Image side in pixels.
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    /// Seed: the same seed gives the same dataset, bit for bit.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output folder. An interrupted run resumes: images already written are kept.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write a 12-bit DICOM (synthetic patient tags) beside each JPEG.
    #[arg(long)]
    pub dicom: bool,
    /// JPEG quality (1-100).
    #[arg(long, default_value_t = TreeOptions::DEFAULT_JPEG_QUALITY, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub jpeg_quality: u8,
}

/// Generates the tree with a progress bar; shared with `demo`.
pub fn generate(args: &Args) -> anyhow::Result<TreeSummary> {
    anyhow::ensure!(args.n > 0, "--n must be at least 1");
    anyhow::ensure!(
        (16..=4096).contains(&args.size),
        "--size must be within 16..=4096"
    );
    let bar = super::progress(args.n, "phantoms");
    let opts = TreeOptions {
        out: args.out.clone(),
        n: args.n,
        size: args.size,
        seed: args.seed,
        dicom: args.dicom,
        jpeg_quality: args.jpeg_quality,
    };
    let summary = write_tree(&opts, &|| bar.inc(1))
        .with_context(|| format!("writing the phantom dataset to {}", args.out.display()))?;
    bar.finish();
    tracing::info!(
        images = summary.images,
        rendered = summary.rendered,
        reused = summary.reused,
        subjects = summary.subjects,
        "phantom dataset written to {}",
        args.out.display()
    );
    Ok(summary)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let summary = generate(&args)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
