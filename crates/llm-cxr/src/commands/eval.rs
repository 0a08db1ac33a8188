//! `llm-cxr eval`: score generated outputs against references, in the paper's tables.

use std::path::PathBuf;

use anyhow::Context;
use rayon::prelude::*;

use cxr_eval::nlg::{self, Candidate};
use cxr_eval::report_metrics::{report_metrics, AurocScore, ReportMetricOptions, UncertainPolicy};
use cxr_eval::ReportLabeler;

use cxr_classifier::candle_core::{Device, Tensor};

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
    pub uncertain: Uncertain,
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
    pub auroc_score: Score,
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

/// What one evaluation shows on the HTML page.
pub struct Section {
    /// The markdown it also wrote to its .md file.
    markdown: String,
    figures: Vec<(Vec<u8>, String)>,
    case_header: Vec<&'static str>,
    cases: Vec<Vec<Cell>>,
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    let (common, sections) = match cmd {
        Command::Report(a) => {
            let section = report(&a.pairs, &a.report, &a.common)?;
            (a.common, vec![section])
        }
        Command::Image(a) => {
            let section = image(&a.generated, &a.image, &a.common)?;
            (a.common, vec![section])
        }
        Command::Vqa(a) => {
            let section = vqa(&a.answers, &a.common)?;
            (a.common, vec![section])
        }
        Command::All(a) => {
            let sections = all(&a)?;
            (a.common, sections)
        }
    };
    let mut page = Page::new(&format!("Evaluation: {}", common.model));
    add_sections(&mut page, &sections);
    let index = common.out.join("index.html");
    super::write_atomic(&index, page.finish().as_bytes())?;
    eprintln!("wrote {}", index.display());
    Ok(())
}

/// `eval all`: every evaluation whose input is given (each writes its files under --out).
pub fn all(a: &AllArgs) -> anyhow::Result<Vec<Section>> {
    anyhow::ensure!(
        a.reports.is_some() || a.images.is_some() || a.vqa.is_some(),
        "nothing to evaluate: give --reports, --images and/or --vqa"
    );
    let mut sections = Vec::new();
    if let Some(p) = &a.reports {
        sections.push(report(p, &a.report, &a.common)?);
    }
    if let Some(p) = &a.images {
        sections.push(image(p, &a.image, &a.common)?);
    }
    if let Some(p) = &a.vqa {
        sections.push(vqa(p, &a.common)?);
    }
    Ok(sections)
}

/// Tables, figures and sample cases of evaluations, in order.
pub fn add_sections(page: &mut Page, sections: &[Section]) {
    for s in sections {
        page.markdown(&s.markdown);
        for (png, caption) in &s.figures {
            page.figure(png, 960, caption);
        }
        if !s.cases.is_empty() {
            page.markdown("### Sample cases");
            page.table(&s.case_header, &s.cases);
        }
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
    match crate::html::thumbnail(std::path::Path::new(path), 192) {
        Ok(bytes) => Cell::Png { bytes, width: 192 },
        Err(e) => Cell::Text(format!("{path}: {e}")),
    }
}

fn policy(u: Uncertain) -> UncertainPolicy {
    match u {
        Uncertain::Negative => UncertainPolicy::Negative,
        Uncertain::Positive => UncertainPolicy::Positive,
        Uncertain::Ignore => UncertainPolicy::Ignore,
    }
}

/// The required cells of a CSV row, then the optional ones.
type CsvRow = (Vec<String>, Vec<Option<String>>);

/// Reads named columns of a CSV (`optional` ones may be absent), resolving `image` columns
/// against the CSV's folder. One `Vec` per row, required columns first, then the optional ones
/// (`None` where the column is absent).
fn read_columns(
    path: &std::path::Path,
    required: &[&str],
    optional: &[&str],
) -> anyhow::Result<Vec<CsvRow>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let header = reader
        .headers()
        .with_context(|| format!("{}: no CSV header", path.display()))?
        .clone();
    let find = |name: &str| {
        header
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
    };
    let required_cols: Vec<usize> = required
        .iter()
        .map(|name| {
            find(name).with_context(|| {
                format!(
                    "{}: no column named {name} (columns: {})",
                    path.display(),
                    header.iter().collect::<Vec<_>>().join(", ")
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let optional_cols: Vec<Option<usize>> = optional.iter().map(|name| find(name)).collect();
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let cell = |row: &csv::StringRecord, c: usize, name: &str| {
        let v = row.get(c).unwrap_or("").to_string();
        if name == "image" {
            base.join(v).display().to_string()
        } else {
            v
        }
    };
    let mut rows = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let row = row.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
        let req = required_cols
            .iter()
            .zip(required)
            .map(|(&c, name)| cell(&row, c, name))
            .collect();
        let opt = optional_cols
            .iter()
            .zip(optional)
            .map(|(c, name)| c.map(|c| cell(&row, c, name)))
            .collect();
        rows.push((req, opt));
    }
    anyhow::ensure!(!rows.is_empty(), "{}: no rows", path.display());
    Ok(rows)
}

/// The values of required columns only.
fn read_required(path: &std::path::Path, names: &[&str]) -> anyhow::Result<Vec<Vec<String>>> {
    Ok(read_columns(path, names, &[])?
        .into_iter()
        .map(|(r, _)| r)
        .collect())
}

/// Per image: the 18 probabilities, and the 1024-d features2.
type Classified = (Vec<[f32; 18]>, Vec<Vec<f32>>);

/// Feeds every image to `run` in batches (loaded in parallel, turned into a network input by
/// `input`), in order, with a progress bar.
fn over_images(
    paths: &[String],
    batch: usize,
    what: &str,
    input: &(dyn Fn(&cxr_image::GrayImage) -> cxr_classifier::candle_core::Result<Tensor> + Sync),
    mut run: impl FnMut(&Tensor) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let bar = super::progress(paths.len() as u64, what);
    for chunk in paths.chunks(batch.max(1)) {
        let inputs = chunk
            .par_iter()
            .map(|p| Ok(input(&cxr_image::load_image(std::path::Path::new(p))?)?))
            .collect::<anyhow::Result<Vec<Tensor>>>()?;
        run(&Tensor::cat(&inputs, 0)?)?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Classifier probabilities and features2 of every image, in order.
fn classify(
    model: &cxr_classifier::DenseNet,
    paths: &[String],
    batch: usize,
    what: &str,
) -> anyhow::Result<Classified> {
    let (mut probs, mut feats) = (Vec::new(), Vec::new());
    let input = |img: &cxr_image::GrayImage| cxr_classifier::txv_input(img, 224, &Device::Cpu);
    over_images(paths, batch, what, &input, |x| {
        let f = model.features2(x, false)?;
        let p = cxr_classifier::candle_nn::ops::sigmoid(&model.classify(&f)?)?;
        for row in p.to_vec2::<f32>()? {
            let mut a = [0f32; 18];
            a.copy_from_slice(&row[..18]);
            probs.push(a);
        }
        feats.extend(f.to_vec2::<f32>()?);
        Ok(())
    })?;
    Ok((probs, feats))
}

/// pytorch-fid's pool3 features of every image, in order.
fn inception_features(
    net: &cxr_classifier::inception::InceptionV3,
    paths: &[String],
    batch: usize,
    what: &str,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut feats = Vec::new();
    let input =
        |img: &cxr_image::GrayImage| cxr_classifier::inception::inception_input(img, &Device::Cpu);
    over_images(paths, batch, what, &input, |x| {
        feats.extend(net.features(x)?.to_vec2::<f32>()?);
        Ok(())
    })?;
    Ok(feats)
}

fn image(
    generated: &std::path::Path,
    opts: &ImageOptions,
    common: &Common,
) -> anyhow::Result<Section> {
    use cxr_eval::image_metrics::{frechet_distance, image_metrics};
    let classifier = opts
        .classifier
        .as_ref()
        .context("the image evaluation needs --classifier (DenseNet-121 weights)")?;
    let labeler = ReportLabeler::from_dir(&super::label::phrases_dir(common.phrases.clone())?)?;
    let config = cxr_classifier::DenseNetConfig::densenet121_txv();
    let model = cxr_classifier::DenseNet::load(&config, classifier, &Device::Cpu)?;
    let rows = read_required(generated, &["image", "report"])?;
    let paths: Vec<String> = rows.iter().map(|r| r[0].clone()).collect();
    let labels: Vec<_> = rows.par_iter().map(|r| labeler.label(&r[1])).collect();
    let (probs, feats) = classify(&model, &paths, opts.batch, "generated")?;
    let table = image_metrics(&probs, &labels, opts.threshold, policy(common.uncertain));
    let real_paths: Option<Vec<String>> = match &opts.real {
        Some(real) => Some(
            read_required(real, &["image"])?
                .into_iter()
                .map(|r| r[0].clone())
                .collect(),
        ),
        None => None,
    };
    let fid = match &real_paths {
        Some(real_paths) => {
            let (_, real_feats) = classify(&model, real_paths, opts.batch, "real")?;
            anyhow::ensure!(
                feats.len() > 1 && real_feats.len() > 1,
                "FID needs at least two images on each side"
            );
            Some(frechet_distance(&feats, &real_feats))
        }
        None => None,
    };
    let fid_inception = match (&opts.inception, &real_paths) {
        (Some(weights), Some(real_paths)) => {
            let net = cxr_classifier::inception::InceptionV3::load(weights, &Device::Cpu)?;
            let generated = inception_features(&net, &paths, opts.batch, "inception gen")?;
            let real = inception_features(&net, real_paths, opts.batch, "inception real")?;
            Some(frechet_distance(&generated, &real))
        }
        _ => None,
    };
    let json = serde_json::json!({
        "clinical": table,
        "fid_classifier_features": fid,
        "fid_inception": fid_inception,
    });
    super::write_atomic(
        &common.out.join("image-metrics.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    let mut md = format!(
        "## Image evaluation: {}\n\n{}",
        common.model,
        table.to_markdown(&common.model)
    );
    if let Some(f) = fid {
        md += &format!("\nFID on the classifier's 1024-d features: {f:.4} (LLM-CXR published, torchxrayvision features: 0.714).\n");
    }
    if let Some(f) = fid_inception {
        md += &format!("\nFID on Inception-v3 pool3 features (pytorch-fid): {f:.4}.\n");
    }
    super::write_atomic(&common.out.join("image-metrics.md"), md.as_bytes())?;
    let roc = roc_png(
        &format!("Image ROC: {}", common.model),
        &table.per_observation,
    )?;
    super::write_atomic(&common.out.join("image-roc.png"), &roc)?;
    println!("{md}");
    let cases = rows
        .iter()
        .zip(&labels)
        .zip(&probs)
        .take(common.samples)
        .map(|((row, l), p)| {
            let called: Vec<String> = cxr_classifier::CHEXPERT_OUTPUTS
                .iter()
                .filter(|&&(_, k)| p[k] as f64 >= opts.threshold)
                .map(|&(o, k)| format!("{} {:.2}", o.name(), p[k]))
                .collect();
            vec![
                thumbnail_cell(&row[0]),
                Cell::Text(row[1].clone()),
                Cell::Text(findings_text(l)),
                Cell::Text(called.join(", ")),
            ]
        })
        .collect();
    Ok(Section {
        markdown: md,
        figures: vec![(roc, "ROC per observation (generated images)".into())],
        case_header: vec![
            "generated image",
            "source report",
            "report findings",
            "classifier calls (probability)",
        ],
        cases,
    })
}

fn report(
    pairs_csv: &std::path::Path,
    opts: &ReportOptions,
    common: &Common,
) -> anyhow::Result<Section> {
    let labeler = ReportLabeler::from_dir(&super::label::phrases_dir(common.phrases.clone())?)?;
    let pairs: Vec<(String, String)> = read_required(pairs_csv, &["generated", "reference"])?
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
    let metric_opts = ReportMetricOptions {
        uncertain: policy(common.uncertain),
        auroc_score: match opts.auroc_score {
            Score::Binary => AurocScore::Binary,
            Score::ThreeLevel => AurocScore::ThreeLevel,
        },
    };
    let table = report_metrics(&generated, &reference, metric_opts);
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
    super::write_atomic(&common.out.join("report-metrics.json"), text.as_bytes())?;
    let md = format!(
        "## Report evaluation: {}\n\n{}\n| BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | METEOR | ROUGE-L | CIDEr-D |\n|---|---|---|---|---|---|---|\n| {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n\nLLM-CXR published: BLEU-1 0.092, BLEU-4 0.015, METEOR 0.069, ROUGE-L 0.162, CIDEr 0.525. METEOR here uses exact and stem matching only.\n",
        common.model,
        table.to_markdown(&common.model),
        nlg_scores.bleu[0],
        nlg_scores.bleu[1],
        nlg_scores.bleu[2],
        nlg_scores.bleu[3],
        nlg_scores.meteor,
        nlg_scores.rouge_l,
        nlg_scores.cider_d
    );
    super::write_atomic(&common.out.join("report-metrics.md"), md.as_bytes())?;
    let roc = roc_png(
        &format!("Report ROC: {}", common.model),
        &table.per_observation,
    )?;
    super::write_atomic(&common.out.join("report-roc.png"), &roc)?;
    println!("{md}");
    let cases = pairs
        .iter()
        .zip(generated.iter().zip(&reference))
        .take(common.samples)
        .map(|((g, r), (gl, rl))| {
            vec![
                Cell::Text(g.clone()),
                Cell::Text(r.clone()),
                Cell::Text(findings_text(gl)),
                Cell::Text(findings_text(rl)),
            ]
        })
        .collect();
    Ok(Section {
        markdown: md,
        figures: vec![(roc, "ROC per observation (generated reports)".into())],
        case_header: vec![
            "generated report",
            "reference report",
            "generated findings",
            "reference findings",
        ],
        cases,
    })
}

fn vqa(answers: &std::path::Path, common: &Common) -> anyhow::Result<Section> {
    use cxr_eval::vqa::{judge, vqa_report, VqaPair};
    let labeler = ReportLabeler::from_dir(&super::label::phrases_dir(common.phrases.clone())?)?;
    let rows = read_columns(
        answers,
        &["question", "answer", "reference"],
        &["type", "image"],
    )?;
    let pairs: Vec<VqaPair> = rows
        .iter()
        .map(|(r, o)| VqaPair {
            question: r[0].clone(),
            answer: r[1].clone(),
            reference: r[2].clone(),
            kind: o[0].clone().filter(|k| !k.trim().is_empty()),
        })
        .collect();
    let verdicts: Vec<_> = pairs.par_iter().map(|p| judge(&labeler, p)).collect();
    let scores = vqa_report(&pairs, &verdicts);
    super::write_atomic(
        &common.out.join("vqa-metrics.json"),
        serde_json::to_string_pretty(&scores)?.as_bytes(),
    )?;
    let md = format!(
        "## VQA evaluation: {}\n\n{}\nClosed questions: the reference answer starts with yes or no; the answer must start with the same word. Label agreement: CheXpert labels (13 findings) of answer and reference, share equal among those either mentions.\n",
        common.model,
        scores.to_markdown(&common.model)
    );
    super::write_atomic(&common.out.join("vqa-metrics.md"), md.as_bytes())?;
    println!("{md}");
    let has_images = rows.iter().any(|(_, o)| o[1].is_some());
    let cases = rows
        .iter()
        .zip(&pairs)
        .zip(&verdicts)
        .take(common.samples)
        .map(|(((_, o), p), v)| {
            let verdict = match (v.closed, v.agreement) {
                (Some(true), _) => "right".to_string(),
                (Some(false), _) => "wrong".to_string(),
                (None, Some(a)) => format!("label agreement {a:.2}"),
                (None, None) => "-".to_string(),
            };
            let mut row = Vec::new();
            if has_images {
                row.push(
                    o[1].as_deref()
                        .map_or(Cell::Text(String::new()), thumbnail_cell),
                );
            }
            row.extend([
                Cell::Text(p.question.clone()),
                Cell::Text(p.answer.clone()),
                Cell::Text(p.reference.clone()),
                Cell::Text(verdict),
            ]);
            row
        })
        .collect();
    let mut case_header = vec!["question", "answer", "reference", "verdict"];
    if has_images {
        case_header.insert(0, "image");
    }
    Ok(Section {
        markdown: md,
        figures: Vec::new(),
        case_header,
        cases,
    })
}

/// One ROC panel per observation, as the tables list them, as PNG bytes.
fn roc_png(
    title: &str,
    scores: &[cxr_eval::report_metrics::ObservationScores],
) -> anyhow::Result<Vec<u8>> {
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
