//! `llm-cxr label`: the CheXpert-style report labeler on a CSV of reports.

use std::path::PathBuf;

use anyhow::Context;

use cxr_eval::ReportLabeler;

#[derive(clap::Args)]
pub struct Args {
    /// Reports, one per row, no header (the CheXpert labeler's input layout).
    pub reports: PathBuf,
    /// Output CSV: `Reports` and the 14 CheXpert columns (1.0, 0.0, -1.0 or empty).
    #[arg(long)]
    pub out: PathBuf,
    /// The CheXpert labeler's phrase lists (the folder holding `phrases/mention` and
    /// `phrases/unmention`; MIT licence, from the chexpert-labeler repository).
    #[arg(long, env = "LLMCXR_CHEXPERT_PHRASES")]
    pub phrases: Option<PathBuf>,
}

/// The phrase folder: the flag, else the shared data folder when it is there.
pub fn phrases_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let shared = PathBuf::from("../shared/data/chexpert-labeler-phrases");
    anyhow::ensure!(
        shared.is_dir(),
        "no CheXpert phrase lists: pass --phrases DIR (the chexpert-labeler folder holding phrases/) \
         or set LLMCXR_CHEXPERT_PHRASES"
    );
    Ok(shared)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = phrases_dir(args.phrases)?;
    let labeler = ReportLabeler::from_dir(&dir)?;
    let rows = std::fs::read(&args.reports)
        .with_context(|| format!("reading {}", args.reports.display()))?
        .split(|&b| b == b'\n')
        .count() as u64;
    let bar = super::progress(rows, "reports");
    let started = std::time::Instant::now();
    let n = cxr_eval::label_csv(&labeler, &args.reports, &args.out, &|| bar.inc(1))?;
    bar.finish_and_clear();
    tracing::info!(
        "labelled {n} reports in {:.2} s into {}",
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}
