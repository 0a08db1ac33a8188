//! `llm-cxr preprocess`: the one image loader and LLM-CXR's preprocessing, on any files.

use std::path::PathBuf;

use anyhow::Context;
use rayon::prelude::*;

use cxr_image::{load_image, preprocess, Preprocess};

#[derive(clap::Args)]
pub struct Args {
    /// DICOM, PNG or JPEG files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Output side N: the short side is resized to N (Lanczos), then the centre N x N is kept.
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    /// 1 (gray) or 3 (gray replicated, as LLM-CXR's VQ-GAN input).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=3))]
    pub channels: u8,
    /// Save what the model sees as 8-bit PNGs in this folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct Row {
    file: String,
    width: u32,
    height: u32,
    mean: f64,
    std: f64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.channels == 1 || args.channels == 3,
        "--channels must be 1 or 3"
    );
    anyhow::ensure!(args.size > 0, "--size must be positive");
    let cfg = Preprocess {
        size: args.size,
        channels: args.channels,
    };
    let bar = super::progress(args.files.len() as u64, "images");
    let results: Vec<anyhow::Result<Row>> = args
        .files
        .par_iter()
        .map(|path| {
            let img = load_image(path)?;
            let out = preprocess(&img, &cfg);
            if let Some(dir) = &args.out {
                let plane = &out.data[..(cfg.size * cfg.size) as usize];
                let bytes: Vec<u8> = plane
                    .iter()
                    .map(|v| ((v + 1.0) * 127.5).round() as u8)
                    .collect();
                let png =
                    image::GrayImage::from_raw(cfg.size, cfg.size, bytes).context("buffer size")?;
                let stem = path
                    .file_stem()
                    .map_or("image".into(), |s| s.to_string_lossy().into_owned());
                let mut encoded = Vec::new();
                png.write_to(
                    &mut std::io::Cursor::new(&mut encoded),
                    image::ImageFormat::Png,
                )?;
                super::write_atomic(&dir.join(format!("{stem}.png")), &encoded)?;
            }
            let (mean, std) = out.mean_std();
            bar.inc(1);
            Ok(Row {
                file: path.display().to_string(),
                width: img.width,
                height: img.height,
                mean,
                std,
            })
        })
        .collect();
    bar.finish_and_clear();
    let mut failed = 0;
    for r in results {
        match r {
            Ok(row) => println!("{}", serde_json::to_string(&row)?),
            Err(e) => {
                failed += 1;
                eprintln!("error: {e:#}");
            }
        }
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} files could not be read",
        args.files.len()
    );
    Ok(())
}
