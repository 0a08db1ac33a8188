//! `llm-cxr eval`: score generated outputs against references, in the paper's tables.

use std::path::{Path, PathBuf};

use anyhow::Context;

use cxr_classifier::candle_core::Device;
use cxr_eval::evaluations::{IMAGE_METRICS_JSON, REPORT_METRICS_JSON, VQA_METRICS_JSON};
use cxr_eval::report_metrics::{
    AurocScore, ObservationScores, ReportMetricOptions, UncertainPolicy,
};
use cxr_eval::{
    Evaluations, ImageEvalOptions, ImageEvaluation, ImageModels, Presentation, ReportEvaluation,
    ReportLabeler, VqaEvaluation,
};

use crate::html::{Cell, Page};

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
    /// Generated answers to questions about images against reference answers: yes/no accuracy
    /// on closed questions, and agreement of the answers' CheXpert labels, per question type.
    Vqa(VqaArgs),
    /// Every evaluation whose input is given, into one folder and one HTML page.
    All(AllArgs),
}

/// Options every evaluation shares.
#[derive(clap::Args, Clone, serde::Serialize)]
pub struct Common {
    /// Output folder: JSON, markdown tables, ROC PNGs, and index.html showing them with sample
    /// cases.
    #[arg(long)]
    pub out: PathBuf,
    /// The CheXpert labeler's phrase lists (see `llm-cxr label --help`).
    #[arg(long, env = "LLMCXR_CHEXPERT_PHRASES")]
    pub phrases: Option<PathBuf>,
    /// How uncertain (-1) labels count (in references, and in generated reports for F1).
    #[arg(long, value_enum, default_value = "negative")]
    #[serde(serialize_with = "super::value_enum::name")]
    pub uncertain: UncertainPolicy,
    /// Row name of your model in the tables.
    #[arg(long, default_value = "llm-cxr")]
    pub model: String,
    /// Sample cases shown on the HTML page, per evaluation.
    #[arg(long, default_value_t = 8)]
    pub samples: usize,
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// CSV with a `generated` and a `reference` column (other columns are ignored).
    pub pairs: PathBuf,
    #[command(flatten)]
    pub report: ReportOptions,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args, Clone, serde::Serialize)]
pub struct ReportOptions {
    /// The score of a generated label for AUROC: binary (1 positive, else 0; AUROC is then the
    /// balanced accuracy) or three-level (uncertain 0.5).
    #[arg(long, value_enum, default_value = "binary")]
    #[serde(serialize_with = "super::value_enum::name")]
    pub auroc_score: AurocScore,
}

#[derive(clap::Args)]
pub struct ImageArgs {
    /// CSV with an `image` column (generated image path, relative to the CSV's folder or
    /// absolute) and a `report` column (the report it was generated from).
    pub generated: PathBuf,
    #[command(flatten)]
    pub image: ImageOptions,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args, Clone, serde::Serialize)]
pub struct ImageOptions {
    /// DenseNet-121 weights in torchxrayvision's layout (safetensors, or a PyTorch state_dict).
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// CSV with an `image` column of real images, for FID.
    #[arg(long)]
    pub real: Option<PathBuf>,
    /// pytorch-fid's Inception-v3 weights (`pt_inception-2015-12-05-6726825d.pth`, or the same
    /// tensors as safetensors): with --real, FID on its 2048-d pool3 features as well, the
    /// number other papers report.
    #[arg(long, requires = "real")]
    pub inception: Option<PathBuf>,
    /// Probability at or above which the classifier calls a finding (F1).
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f64,
    /// Images per classifier batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
}

#[derive(clap::Args)]
pub struct VqaArgs {
    /// CSV with `question`, `answer` (generated) and `reference` columns; optional `type`
    /// (question type, scored separately) and `image` (shown on the HTML page).
    pub answers: PathBuf,
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args, serde::Serialize)]
pub struct AllArgs {
    /// Report pairs, as `eval report` reads them.
    #[arg(long)]
    pub reports: Option<PathBuf>,
    /// Generated images, as `eval image` reads them (needs --classifier).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// VQA answers, as `eval vqa` reads them.
    #[arg(long)]
    pub vqa: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub report: ReportOptions,
    #[command(flatten)]
    #[serde(flatten)]
    pub image: ImageOptions,
    #[command(flatten)]
    #[serde(flatten)]
    pub common: Common,
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    let (common, evaluations) = match cmd {
        Command::Report(a) => {
            let report = Some(report(
                &a.pairs,
                &a.report,
                &a.common,
                &labeler(&a.common)?,
            )?);
            (
                a.common,
                Evaluations {
                    report,
                    ..Default::default()
                },
            )
        }
        Command::Image(a) => {
            let image = Some(image(
                &a.generated,
                &a.image,
                &a.common,
                &labeler(&a.common)?,
            )?);
            (
                a.common,
                Evaluations {
                    image,
                    ..Default::default()
                },
            )
        }
        Command::Vqa(a) => {
            let vqa = Some(vqa(&a.answers, &a.common, &labeler(&a.common)?)?);
            (
                a.common,
                Evaluations {
                    vqa,
                    ..Default::default()
                },
            )
        }
        Command::All(a) => {
            all(&a)?;
            return Ok(());
        }
    };
    write_page(&common, &evaluations)
}

/// `eval all`: every evaluation whose input is given and the page showing them; returns the
/// results.
pub fn all(a: &AllArgs) -> anyhow::Result<Evaluations> {
    let evaluations = evaluate_all(a)?;
    write_page(&a.common, &evaluations)?;
    Ok(evaluations)
}

/// OUT/index.html: the evaluations' tables, figures and sample cases.
fn write_page(common: &Common, evaluations: &Evaluations) -> anyhow::Result<()> {
    let mut page = Page::new(&format!("Evaluation: {}", common.model));
    for (name, png) in render(&mut page, evaluations)? {
        super::write_atomic(&common.out.join(name), &png)?;
    }
    let index = common.out.join("index.html");
    super::write_atomic(&index, page.finish().as_bytes())?;
    eprintln!("wrote {}", index.display());
    Ok(())
}

/// Every evaluation whose input is given, each writing its files under --out (JSON, markdown)
/// and printing its markdown.
pub fn evaluate_all(a: &AllArgs) -> anyhow::Result<Evaluations> {
    anyhow::ensure!(
        a.reports.is_some() || a.images.is_some() || a.vqa.is_some(),
        "nothing to evaluate: give --reports, --images and/or --vqa"
    );
    // One labeler for every evaluation (it reads and compiles the phrase lists).
    let labeler = labeler(&a.common)?;
    Ok(Evaluations {
        report: a
            .reports
            .as_deref()
            .map(|p| report(p, &a.report, &a.common, &labeler))
            .transpose()?,
        image: a
            .images
            .as_deref()
            .map(|p| image(p, &a.image, &a.common, &labeler))
            .transpose()?,
        vqa: a
            .vqa
            .as_deref()
            .map(|p| vqa(p, &a.common, &labeler))
            .transpose()?,
    })
}

/// The tables, ROC figures and sample cases of the evaluations, in order; drawn from the results
/// alone (thumbnails are read from the images' paths). Returns the ROC figures it drew, by the
/// file names `eval` saves them under.
pub fn render(
    page: &mut Page,
    evaluations: &Evaluations,
) -> anyhow::Result<Vec<(&'static str, Vec<u8>)>> {
    let mut figures = Vec::new();
    if let Some(e) = &evaluations.report {
        page.markdown(&e.to_markdown());
        let roc = roc_png(
            &format!("Report ROC: {}", e.model),
            &e.clinical.per_observation,
        )?;
        page.figure(&roc, 960, "ROC per observation (generated reports)");
        figures.push(("report-roc.png", roc));
        let cases: Vec<Vec<Cell>> = e
            .cases
            .iter()
            .map(|c| {
                vec![
                    Cell::Text(c.generated.clone()),
                    Cell::Text(c.reference.clone()),
                    Cell::Text(findings_text(&c.generated_labels)),
                    Cell::Text(findings_text(&c.reference_labels)),
                ]
            })
            .collect();
        sample_cases(
            page,
            &[
                "generated report",
                "reference report",
                "generated findings",
                "reference findings",
            ],
            &cases,
        );
    }
    if let Some(e) = &evaluations.image {
        page.markdown(&e.to_markdown());
        let roc = roc_png(
            &format!("Image ROC: {}", e.model),
            &e.clinical.per_observation,
        )?;
        page.figure(&roc, 960, "ROC per observation (generated images)");
        figures.push(("image-roc.png", roc));
        let cases: Vec<Vec<Cell>> = e
            .cases
            .iter()
            .map(|c| {
                let p = &c.probabilities;
                let called: Vec<String> = cxr_classifier::CHEXPERT_OUTPUTS
                    .iter()
                    .filter(|&&(_, k)| p[k] as f64 >= e.clinical.threshold)
                    .map(|&(o, k)| format!("{} {:.2}", o.name(), p[k]))
                    .collect();
                vec![
                    thumbnail_cell(&c.image),
                    Cell::Text(c.report.clone()),
                    Cell::Text(findings_text(&c.labels)),
                    Cell::Text(called.join(", ")),
                ]
            })
            .collect();
        sample_cases(
            page,
            &[
                "generated image",
                "source report",
                "report findings",
                "classifier calls (probability)",
            ],
            &cases,
        );
    }
    if let Some(e) = &evaluations.vqa {
        page.markdown(&e.to_markdown());
        let has_images = e.cases.iter().any(|c| c.image.is_some());
        let cases: Vec<Vec<Cell>> = e
            .cases
            .iter()
            .map(|c| {
                let verdict = match (c.closed, c.agreement) {
                    (Some(true), _) => "right".to_string(),
                    (Some(false), _) => "wrong".to_string(),
                    (None, Some(a)) => format!("label agreement {a:.2}"),
                    (None, None) => "-".to_string(),
                };
                let mut row = Vec::new();
                if has_images {
                    row.push(
                        c.image
                            .as_deref()
                            .map_or(Cell::Text(String::new()), thumbnail_cell),
                    );
                }
                row.extend([
                    Cell::Text(c.pair.question.clone()),
                    Cell::Text(c.pair.answer.clone()),
                    Cell::Text(c.pair.reference.clone()),
                    Cell::Text(verdict),
                ]);
                row
            })
            .collect();
        let mut header = vec!["question", "answer", "reference", "verdict"];
        if has_images {
            header.insert(0, "image");
        }
        sample_cases(page, &header, &cases);
    }
    Ok(figures)
}

fn sample_cases(page: &mut Page, header: &[&str], cases: &[Vec<Cell>]) {
    if !cases.is_empty() {
        page.markdown("### Sample cases");
        page.table(header, cases);
    }
}

/// The findings of a label set, positive ones plain and uncertain ones with "?".
fn findings_text(labels: &cxr_data::ChexpertLabels) -> String {
    use cxr_data::{Label, Observation};
    let named: Vec<String> = Observation::ALL
        .into_iter()
        .filter_map(|o| match labels.get(o) {
            Some(Label::Positive) => Some(o.name().to_string()),
            Some(Label::Uncertain) => Some(format!("{}?", o.name())),
            _ => None,
        })
        .collect();
    named.join(", ")
}

/// A thumbnail cell, or the error as text (a missing image must not sink the page).
fn thumbnail_cell(path: &str) -> Cell {
    match crate::html::thumbnail(Path::new(path), 192) {
        Ok(bytes) => Cell::Png { bytes, width: 192 },
        Err(e) => Cell::Text(format!("{path}: {e}")),
    }
}

fn labeler(common: &Common) -> anyhow::Result<ReportLabeler> {
    Ok(ReportLabeler::from_dir(&super::label::phrases_dir(
        common.phrases.clone(),
    )?)?)
}

fn presentation(common: &Common) -> Presentation {
    Presentation {
        model: common.model.clone(),
        samples: common.samples,
    }
}

/// Writes a result's JSON (`json_name`) and its markdown (the same name, `.md`) under --out,
/// and prints the markdown.
fn write_result(
    common: &Common,
    json_name: &str,
    json: &str,
    markdown: &str,
) -> anyhow::Result<()> {
    super::write_atomic(&common.out.join(json_name), json.as_bytes())?;
    let md_name = json_name.replace(".json", ".md");
    super::write_atomic(&common.out.join(md_name), markdown.as_bytes())?;
    println!("{markdown}");
    Ok(())
}

fn report(
    pairs_csv: &Path,
    opts: &ReportOptions,
    common: &Common,
    labeler: &ReportLabeler,
) -> anyhow::Result<ReportEvaluation> {
    let metric_opts = ReportMetricOptions {
        uncertain: common.uncertain,
        auroc_score: opts.auroc_score,
    };
    let e = ReportEvaluation::from_csv(
        pairs_csv,
        labeler,
        metric_opts,
        &presentation(common),
        &super::progress_bars(),
    )?;
    write_result(
        common,
        REPORT_METRICS_JSON,
        &serde_json::to_string_pretty(&e)?,
        &e.to_markdown(),
    )?;
    Ok(e)
}

fn image(
    generated: &Path,
    opts: &ImageOptions,
    common: &Common,
    labeler: &ReportLabeler,
) -> anyhow::Result<ImageEvaluation> {
    let classifier = opts
        .classifier
        .as_ref()
        .context("the image evaluation needs --classifier (DenseNet-121 weights)")?;
    let config = cxr_classifier::DenseNetConfig::densenet121_txv();
    // `eval image` takes no --device: it runs on the CPU.
    let classifier = cxr_classifier::DenseNet::load(&config, classifier, &Device::Cpu)?;
    let inception = match (&opts.inception, &opts.real) {
        (Some(weights), Some(_)) => Some(cxr_classifier::inception::InceptionV3::load(
            weights,
            &Device::Cpu,
        )?),
        _ => None,
    };
    let e = ImageEvaluation::from_csv(
        generated,
        opts.real.as_deref(),
        labeler,
        ImageModels {
            classifier: &classifier,
            inception: inception.as_ref(),
        },
        ImageEvalOptions {
            threshold: opts.threshold,
            batch: opts.batch,
            uncertain: common.uncertain,
        },
        &presentation(common),
        &super::progress_bars(),
    )?;
    write_result(
        common,
        IMAGE_METRICS_JSON,
        &serde_json::to_string_pretty(&e)?,
        &e.to_markdown(),
    )?;
    Ok(e)
}

fn vqa(answers: &Path, common: &Common, labeler: &ReportLabeler) -> anyhow::Result<VqaEvaluation> {
    let e = VqaEvaluation::from_csv(answers, labeler, &presentation(common))?;
    write_result(
        common,
        VQA_METRICS_JSON,
        &serde_json::to_string_pretty(&e)?,
        &e.to_markdown(),
    )?;
    Ok(e)
}

/// One ROC panel per observation, as the tables list them, as PNG bytes.
fn roc_png(title: &str, scores: &[ObservationScores]) -> anyhow::Result<Vec<u8>> {
    let panels: Vec<crate::plot::RocPanel> = scores
        .iter()
        .map(|s| crate::plot::RocPanel {
            name: &s.observation,
            curve: &s.roc,
            auroc: s.auroc,
        })
        .collect();
    crate::plot::roc_grid(title, &panels)
}
