//! `llm-cxr eval`: score generated outputs against references, in the paper's tables.

use std::path::PathBuf;

use anyhow::Context;
use rayon::prelude::*;

use cxr_eval::nlg::{self, Candidate};
use cxr_eval::report_metrics::{report_metrics, AurocScore, ReportMetricOptions, UncertainPolicy};
use cxr_eval::ReportLabeler;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Generated reports against reference reports: CheXpert-label AUROC / F1 per observation
    /// with micro, macro and weighted means (the paper's Table 1), the Jaccard index of the
    /// labels, and BLEU-1..4, METEOR, ROUGE-L, CIDEr-D.
    Report(ReportArgs),
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// CSV with a `generated` and a `reference` column (other columns are ignored).
    pub pairs: PathBuf,
    /// Folder for report-metrics.json and report-metrics.md.
    #[arg(long)]
    pub out: PathBuf,
    /// The CheXpert labeler's phrase lists (see `llm-cxr label --help`).
    #[arg(long, env = "LLMCXR_CHEXPERT_PHRASES")]
    pub phrases: Option<PathBuf>,
    /// How uncertain (-1) labels count, in references and generated reports.
    #[arg(long, value_enum, default_value = "negative")]
    pub uncertain: Uncertain,
    /// The score of a generated label for AUROC: binary (1 positive, else 0; AUROC is then the
    /// balanced accuracy) or three-level (uncertain 0.5).
    #[arg(long, value_enum, default_value = "binary")]
    pub auroc_score: Score,
    /// Row name of your model in the table.
    #[arg(long, default_value = "llm-cxr")]
    pub model: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Uncertain {
    Negative,
    Positive,
    Ignore,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Score {
    Binary,
    ThreeLevel,
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Report(a) => report(a),
    }
}

fn read_pairs(path: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let header = reader
        .headers()
        .with_context(|| format!("{}: no CSV header", path.display()))?
        .clone();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
            .with_context(|| {
                format!(
                    "{}: no column named {name} (columns: {})",
                    path.display(),
                    header.iter().collect::<Vec<_>>().join(", ")
                )
            })
    };
    let (g, r) = (col("generated")?, col("reference")?);
    let mut pairs = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let row = row.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
        pairs.push((
            row.get(g).unwrap_or("").to_string(),
            row.get(r).unwrap_or("").to_string(),
        ));
    }
    anyhow::ensure!(!pairs.is_empty(), "{}: no rows", path.display());
    Ok(pairs)
}

fn report(args: ReportArgs) -> anyhow::Result<()> {
    let labeler = ReportLabeler::from_dir(&super::label::phrases_dir(args.phrases)?)?;
    let pairs = read_pairs(&args.pairs)?;
    let bar = super::progress(pairs.len() as u64, "reports");
    let labelled: Vec<_> = pairs
        .par_iter()
        .map(|(g, r)| {
            let out = (labeler.label(g), labeler.label(r));
            bar.inc(1);
            out
        })
        .collect();
    bar.finish_and_clear();
    let (generated, reference): (Vec<_>, Vec<_>) = labelled.into_iter().unzip();
    let opts = ReportMetricOptions {
        uncertain: match args.uncertain {
            Uncertain::Negative => UncertainPolicy::Negative,
            Uncertain::Positive => UncertainPolicy::Positive,
            Uncertain::Ignore => UncertainPolicy::Ignore,
        },
        auroc_score: match args.auroc_score {
            Score::Binary => AurocScore::Binary,
            Score::ThreeLevel => AurocScore::ThreeLevel,
        },
    };
    let table = report_metrics(&generated, &reference, opts);
    let corpus: Vec<Candidate> = pairs
        .iter()
        .map(|(g, r)| Candidate {
            hypothesis: nlg::tokenize(g),
            references: vec![nlg::tokenize(r)],
        })
        .collect();
    let nlg_scores = nlg::score(&corpus);
    let json = serde_json::json!({"clinical": table, "nlg": nlg_scores});
    let text = serde_json::to_string_pretty(&json)?;
    super::write_atomic(&args.out.join("report-metrics.json"), text.as_bytes())?;
    let md = format!(
        "# Report evaluation: {}\n\n{}\n| BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | METEOR | ROUGE-L | CIDEr-D |\n|---|---|---|---|---|---|---|\n| {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n\nLLM-CXR published: BLEU-1 0.092, BLEU-4 0.015, METEOR 0.069, ROUGE-L 0.162, CIDEr 0.525. METEOR here uses exact and stem matching only.\n",
        args.model,
        table.to_markdown(&args.model),
        nlg_scores.bleu[0],
        nlg_scores.bleu[1],
        nlg_scores.bleu[2],
        nlg_scores.bleu[3],
        nlg_scores.meteor,
        nlg_scores.rouge_l,
        nlg_scores.cider_d
    );
    super::write_atomic(&args.out.join("report-metrics.md"), md.as_bytes())?;
    println!("{md}");
    Ok(())
}
