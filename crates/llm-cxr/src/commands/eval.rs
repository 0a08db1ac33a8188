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
    /// Generated images against the reports they were drawn from: the DenseNet-121 classifier's
    /// probabilities scored against the reports' CheXpert labels (AUROC / F1 over 11
    /// observations, the paper's Table 4), and FID on the classifier's 1024-d features against
    /// real images.
    Image(ImageArgs),
}

#[derive(clap::Args)]
pub struct ImageArgs {
    /// CSV with an `image` column (generated image path, relative to the CSV's folder or
    /// absolute) and a `report` column (the report it was generated from).
    pub generated: PathBuf,
    /// DenseNet-121 weights in torchxrayvision's layout (safetensors, or a PyTorch state_dict).
    #[arg(long)]
    pub classifier: PathBuf,
    /// CSV with an `image` column of real images, for FID.
    #[arg(long)]
    pub real: Option<PathBuf>,
    /// Folder for image-metrics.json, image-metrics.md and image-roc.png (one ROC panel per observation).
    #[arg(long)]
    pub out: PathBuf,
    /// Probability at or above which the classifier calls a finding (F1).
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f64,
    /// How uncertain (-1) report labels count.
    #[arg(long, value_enum, default_value = "negative")]
    pub uncertain: Uncertain,
    #[arg(long, env = "LLMCXR_CHEXPERT_PHRASES")]
    pub phrases: Option<PathBuf>,
    /// Images per classifier batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value = "llm-cxr")]
    pub model: String,
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// CSV with a `generated` and a `reference` column (other columns are ignored).
    pub pairs: PathBuf,
    /// Folder for report-metrics.json, report-metrics.md and report-roc.png (one ROC panel per observation).
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
        Command::Image(a) => image(a),
    }
}

fn policy(u: Uncertain) -> UncertainPolicy {
    match u {
        Uncertain::Negative => UncertainPolicy::Negative,
        Uncertain::Positive => UncertainPolicy::Positive,
        Uncertain::Ignore => UncertainPolicy::Ignore,
    }
}

/// Reads named columns of a CSV, resolving an `image` column against the CSV's folder.
fn read_columns(path: &std::path::Path, names: &[&str]) -> anyhow::Result<Vec<Vec<String>>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let header = reader
        .headers()
        .with_context(|| format!("{}: no CSV header", path.display()))?
        .clone();
    let cols: Vec<usize> = names
        .iter()
        .map(|name| {
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
        })
        .collect::<anyhow::Result<_>>()?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let mut rows = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let row = row.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
        rows.push(
            cols.iter()
                .zip(names)
                .map(|(&c, &name)| {
                    let v = row.get(c).unwrap_or("").to_string();
                    if name == "image" {
                        base.join(v).display().to_string()
                    } else {
                        v
                    }
                })
                .collect(),
        );
    }
    anyhow::ensure!(!rows.is_empty(), "{}: no rows", path.display());
    Ok(rows)
}

/// Per image: the 18 probabilities, and the 1024-d features2.
type Classified = (Vec<[f32; 18]>, Vec<Vec<f32>>);

/// Classifier probabilities and features2 of every image, in order, with a progress bar.
fn classify(
    model: &cxr_classifier::DenseNet,
    paths: &[String],
    batch: usize,
    what: &str,
) -> anyhow::Result<Classified> {
    use cxr_classifier::candle_core::{Device, Tensor};
    let bar = super::progress(paths.len() as u64, what);
    let (mut probs, mut feats) = (Vec::new(), Vec::new());
    for chunk in paths.chunks(batch.max(1)) {
        let inputs = chunk
            .par_iter()
            .map(|p| {
                let img = cxr_image::load_image(std::path::Path::new(p))?;
                Ok(cxr_classifier::txv_input(&img, 224, &Device::Cpu)?)
            })
            .collect::<anyhow::Result<Vec<Tensor>>>()?;
        let x = Tensor::cat(&inputs, 0)?;
        let f = model.features2(&x, false)?;
        let p = cxr_classifier::candle_nn::ops::sigmoid(&model.classify(&f)?)?;
        for row in p.to_vec2::<f32>()? {
            let mut a = [0f32; 18];
            a.copy_from_slice(&row[..18]);
            probs.push(a);
        }
        feats.extend(f.to_vec2::<f32>()?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok((probs, feats))
}

fn image(args: ImageArgs) -> anyhow::Result<()> {
    use cxr_eval::image_metrics::{frechet_distance, image_metrics};
    let labeler = ReportLabeler::from_dir(&super::label::phrases_dir(args.phrases)?)?;
    let config = cxr_classifier::DenseNetConfig::densenet121_txv();
    let model = cxr_classifier::DenseNet::load(
        &config,
        &args.classifier,
        &cxr_classifier::candle_core::Device::Cpu,
    )?;
    let rows = read_columns(&args.generated, &["image", "report"])?;
    let paths: Vec<String> = rows.iter().map(|r| r[0].clone()).collect();
    let labels: Vec<_> = rows.par_iter().map(|r| labeler.label(&r[1])).collect();
    let (probs, feats) = classify(&model, &paths, args.batch, "generated")?;
    let table = image_metrics(&probs, &labels, args.threshold, policy(args.uncertain));
    let fid = match &args.real {
        Some(real) => {
            let real_paths: Vec<String> = read_columns(real, &["image"])?
                .into_iter()
                .map(|r| r[0].clone())
                .collect();
            let (_, real_feats) = classify(&model, &real_paths, args.batch, "real")?;
            anyhow::ensure!(
                feats.len() > 1 && real_feats.len() > 1,
                "FID needs at least two images on each side"
            );
            Some(frechet_distance(&feats, &real_feats))
        }
        None => None,
    };
    let json = serde_json::json!({"clinical": table, "fid_classifier_features": fid});
    super::write_atomic(
        &args.out.join("image-metrics.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    let mut md = format!(
        "# Image evaluation: {}

{}",
        args.model,
        table.to_markdown(&args.model)
    );
    if let Some(f) = fid {
        md += &format!("
FID on the classifier's 1024-d features: {f:.4} (LLM-CXR published, torchxrayvision features: 0.714).
");
    }
    super::write_atomic(&args.out.join("image-metrics.md"), md.as_bytes())?;
    write_roc_png(
        &args.out.join("image-roc.png"),
        &format!("Image ROC: {}", args.model),
        &table.per_observation,
    )?;
    println!("{md}");
    Ok(())
}

fn report(args: ReportArgs) -> anyhow::Result<()> {
    let labeler = ReportLabeler::from_dir(&super::label::phrases_dir(args.phrases)?)?;
    let pairs: Vec<(String, String)> = read_columns(&args.pairs, &["generated", "reference"])?
        .into_iter()
        .map(|mut r| (std::mem::take(&mut r[0]), std::mem::take(&mut r[1])))
        .collect();
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
        uncertain: policy(args.uncertain),
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
    write_roc_png(
        &args.out.join("report-roc.png"),
        &format!("Report ROC: {}", args.model),
        &table.per_observation,
    )?;
    println!("{md}");
    Ok(())
}

/// One ROC panel per observation, as the tables list them.
fn write_roc_png(
    path: &std::path::Path,
    title: &str,
    scores: &[cxr_eval::report_metrics::ObservationScores],
) -> anyhow::Result<()> {
    let panels: Vec<crate::plot::RocPanel> = scores
        .iter()
        .map(|s| crate::plot::RocPanel {
            name: &s.observation,
            curve: &s.roc,
            auroc: s.auroc,
        })
        .collect();
    super::write_atomic(path, &crate::plot::roc_grid(title, &panels)?)
}
