//! `llm-cxr gallery`: the phantom gallery shown in docs/.

use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Output folder for the strips and `gallery.md`.
    #[arg(long)]
    pub out: PathBuf,
    /// Side of each picture in pixels.
    #[arg(long, default_value_t = 192)]
    pub size: u32,
    /// Patients per row.
    #[arg(long, default_value_t = 4)]
    pub per_row: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let rows = cxr_phantom::gallery::gallery(args.seed, args.per_row);
    let bar = super::progress(rows.len() as u64, "rows");
    let mut md = String::from(
        "# Phantom gallery\n\nOne row per finding and severity; each row shows different synthetic patients \
         with that single finding, and the report of the first one. Made by `llm-cxr gallery`.\n\n\
         | finding | phantoms | report of the first (FINDINGS / IMPRESSION) |\n|---|---|---|\n",
    );
    for (r, row) in rows.iter().enumerate() {
        let mut strip = image::GrayImage::new(args.size * row.phantoms.len() as u32, args.size);
        for (c, spec) in row.phantoms.iter().enumerate() {
            let img = spec.render(args.size).to_luma8();
            image::imageops::replace(&mut strip, &img, (c as u32 * args.size) as i64, 0);
        }
        let name = format!("row-{r:02}.jpg");
        let mut bytes = Vec::new();
        strip.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
            &mut bytes, 85,
        ))?;
        super::write_atomic(&args.out.join(&name), &bytes)?;
        let first = &row.phantoms[0].sections;
        writeln!(
            md,
            "| {} | ![{}]({name}) | {} / {} |",
            row.title,
            row.title,
            first.findings.as_deref().unwrap_or(""),
            first.impression.as_deref().unwrap_or("")
        )?;
        bar.inc(1);
    }
    bar.finish();
    super::write_atomic(&args.out.join("gallery.md"), md.as_bytes())?;
    tracing::info!(
        "gallery written to {}",
        args.out.join("gallery.md").display()
    );
    Ok(())
}
