//! The three tasks for users of a trained model: `report` (CXR -> report), `draw` (report -> CXR)
//! and `ask` (a question about a CXR). Each builds LLM-CXR's prompt, runs the model in batches
//! (text mode never draws image ids; image mode draws exactly one image's ids) and goes through
//! the VQ-GAN on the image side.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use candle_core::Device;
use cxr_instruct::engine::{Answer, Engine, Request};
use cxr_instruct::Phrasings;
use cxr_lm::generate;

use super::chat::{ModelArgs, SamplingArgs};
use super::device::DeviceArg;

/// The model pair every task needs.
#[derive(clap::Args, serde::Serialize)]
pub struct Models {
    #[command(flatten)]
    #[serde(flatten)]
    pub lm: ModelArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub vqgan: super::vqgan::VqganArgs,
    /// Prompts per forward batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub device: DeviceArg,
}

impl Models {
    fn load(&self) -> anyhow::Result<Engine> {
        load_engine(&self.lm, &self.vqgan, &self.device.open()?)
    }
}

/// A trained model with the VQ-GAN whose codes it speaks (checked to agree on the codebook),
/// both on `device`.
pub fn load_engine(
    lm: &ModelArgs,
    vqgan: &super::vqgan::VqganArgs,
    device: &Device,
) -> anyhow::Result<Engine> {
    let model = lm.load(device)?;
    let vq = vqgan.load(device)?;
    Engine::new(model, vq, Phrasings::default()).with_context(|| {
        format!(
            "{} with the VQ-GAN {}",
            lm.model.display(),
            vqgan.vqgan.display()
        )
    })
}

#[derive(clap::Args, serde::Serialize)]
pub struct ReportArgs {
    /// CXR images (DICOM, PNG, JPEG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub models: Models,
    /// Instruction; default: the first of our CXR -> report phrasings.
    #[arg(long)]
    pub instruction: Option<String>,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// CSV to write (`image`, `report`); default: print to stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(clap::Args, serde::Serialize)]
pub struct DrawArgs {
    /// Report text(s) to draw.
    #[arg(required = true)]
    pub reports: Vec<String>,
    #[command(flatten)]
    #[serde(flatten)]
    pub models: Models,
    /// Images per report (each from its own seeded stream).
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// Instruction; default: the first of our report -> CXR phrasings.
    #[arg(long)]
    pub instruction: Option<String>,
    /// Folder for draw-<report>-<sample>.png, and draws.csv (`image`, `report`) listing them for
    /// `llm-cxr eval image`.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args, serde::Serialize)]
pub struct AskArgs {
    /// The CXR image (or give --from).
    #[arg(required_unless_present = "from")]
    pub image: Option<PathBuf>,
    /// Question(s) about it.
    #[arg(required_unless_present = "from")]
    pub questions: Vec<String>,
    /// A CSV of questions instead: `image` and `question` columns, optional `reference` and
    /// `type`, which are passed through; with --out the result is what `llm-cxr eval vqa` reads.
    #[arg(long, conflicts_with_all = ["image", "questions"])]
    pub from: Option<PathBuf>,
    /// CSV to write (`image`, `question`, `answer`, `reference`, `type`); default: stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub models: Models,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
}

/// One question of `ask`.
struct Question {
    image: PathBuf,
    question: String,
    reference: String,
    kind: String,
}

/// Reads `ask --from`: image paths relative to the CSV's folder.
fn read_questions(path: &Path) -> anyhow::Result<Vec<Question>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let header = reader.headers()?.clone();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
    };
    let (Some(image), Some(question)) = (col("image"), col("question")) else {
        anyhow::bail!(
            "{}: needs `image` and `question` columns (has: {})",
            path.display(),
            header.iter().collect::<Vec<_>>().join(", ")
        );
    };
    let (reference, kind) = (col("reference"), col("type"));
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let row = row.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
        let cell = |c: Option<usize>| c.and_then(|c| row.get(c)).unwrap_or("").to_string();
        out.push(Question {
            image: base.join(cell(Some(image))),
            question: cell(Some(question)),
            reference: cell(reference),
            kind: cell(kind),
        });
    }
    anyhow::ensure!(!out.is_empty(), "{}: no questions", path.display());
    Ok(out)
}

/// Encodes images to their codes through the VQ-GAN.
fn encode_images(engine: &Engine, paths: &[PathBuf]) -> anyhow::Result<Vec<Vec<u32>>> {
    let x = super::vqgan::load_inputs(paths, engine.vqgan.config(), engine.vqgan.device())?;
    Ok(engine.encode_images(&x)?)
}

/// Text answers to requests, in batches with a progress bar.
fn answer_text(
    engine: &Engine,
    requests: &[Request],
    max_new_tokens: usize,
    models: &Models,
    what: &str,
) -> anyhow::Result<Vec<String>> {
    let Some(first) = requests.first() else {
        return Ok(Vec::new());
    };
    let options = engine.options(first, models.sampling.sampling(), max_new_tokens);
    let bar = super::progress(requests.len() as u64, what);
    let mut out = Vec::new();
    for chunk in requests.chunks(models.batch.max(1)) {
        let ids = chunk
            .iter()
            .map(|r| engine.prompt_ids(r))
            .collect::<Result<Vec<_>, _>>()?;
        for (request, row) in
            chunk
                .iter()
                .zip(generate(&engine.lm.model, &ids, &options, |_, _| {})?)
        {
            match engine.finish(request, &row)? {
                Answer::Text(text) => out.push(text),
                Answer::Image { .. } => anyhow::bail!("a text request was answered with an image"),
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

pub fn report(a: ReportArgs) -> anyhow::Result<()> {
    let engine = a.models.load()?;
    let mut requests = Vec::new();
    for chunk in a.images.chunks(a.models.batch.max(1)) {
        for codes in encode_images(&engine, chunk)? {
            requests.push(Request::Report {
                codes,
                instruction: a.instruction.clone(),
            });
        }
    }
    let reports = answer_text(&engine, &requests, a.max_new_tokens, &a.models, "report")?;
    match &a.out {
        Some(path) => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(["image", "report"])?;
            for (img, r) in a.images.iter().zip(&reports) {
                w.write_record([img.display().to_string().as_str(), r.as_str()])?;
            }
            super::write_atomic(path, &w.into_inner()?)?;
            println!("{} reports written to {}", reports.len(), path.display());
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            for (img, r) in a.images.iter().zip(&reports) {
                writeln!(stdout, "### {}\n{r}\n", img.display())?;
            }
        }
    }
    Ok(())
}

pub fn ask(a: AskArgs) -> anyhow::Result<()> {
    let questions = match (&a.from, &a.image) {
        (Some(path), _) => read_questions(path)?,
        (None, Some(image)) => a
            .questions
            .iter()
            .map(|q| Question {
                image: image.clone(),
                question: q.clone(),
                reference: String::new(),
                kind: String::new(),
            })
            .collect(),
        (None, None) => anyhow::bail!("give an image and questions, or --from"),
    };
    let engine = a.models.load()?;
    // Each image is encoded once, however many questions it has.
    let mut codes: std::collections::HashMap<PathBuf, Vec<u32>> = Default::default();
    let mut distinct: Vec<PathBuf> = questions.iter().map(|q| q.image.clone()).collect();
    distinct.sort();
    distinct.dedup();
    for chunk in distinct.chunks(a.models.batch.max(1)) {
        for (path, c) in chunk.iter().zip(encode_images(&engine, chunk)?) {
            codes.insert(path.clone(), c);
        }
    }
    let requests: Vec<Request> = questions
        .iter()
        .map(|q| Request::Ask {
            codes: codes[&q.image].clone(),
            question: q.question.clone(),
        })
        .collect();
    let answers = answer_text(&engine, &requests, a.max_new_tokens, &a.models, "ask")?;
    match &a.out {
        Some(path) => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(["image", "question", "answer", "reference", "type"])?;
            for (q, ans) in questions.iter().zip(&answers) {
                let image = q.image.display().to_string();
                w.write_record([image.as_str(), &q.question, ans, &q.reference, &q.kind])?;
            }
            super::write_atomic(path, &w.into_inner()?)?;
            println!("{} answers written to {}", answers.len(), path.display());
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            for (q, ans) in questions.iter().zip(&answers) {
                writeln!(stdout, "Q: {}\nA: {ans}\n", q.question)?;
            }
        }
    }
    Ok(())
}

/// The CSV `draw` writes beside its images.
pub const DRAWS_CSV: &str = "draws.csv";

pub fn draw(a: DrawArgs) -> anyhow::Result<()> {
    let engine = a.models.load()?;
    let requests: Vec<Request> = a
        .reports
        .iter()
        .map(|report| Request::Draw {
            report: report.clone(),
            instruction: a.instruction.clone(),
        })
        .collect();
    // Every (report, sample) pair is one row; rows draw from their own seeded streams.
    let jobs: Vec<(usize, usize)> = (0..a.reports.len())
        .flat_map(|r| (0..a.n.max(1)).map(move |k| (r, k)))
        .collect();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let bar = super::progress(jobs.len() as u64, "draw");
    for (batch_index, chunk) in jobs.chunks(a.models.batch.max(1)).enumerate() {
        let ids = chunk
            .iter()
            .map(|&(r, _)| engine.prompt_ids(&requests[r]))
            .collect::<Result<Vec<_>, _>>()?;
        let mut sampling = a.models.sampling.sampling();
        sampling.seed = a.models.sampling.seed.wrapping_add(batch_index as u64);
        let options = engine.options(&requests[0], sampling, 0);
        let rows = generate(&engine.lm.model, &ids, &options, |_, _| {})?;
        for (&(r, k), row) in chunk.iter().zip(rows) {
            let answer = engine
                .finish(&requests[r], &row)
                .with_context(|| format!("row {r}/{k}"))?;
            let Answer::Image { image, .. } = answer else {
                anyhow::bail!("row {r}/{k}: a drawing was answered with text");
            };
            write_png(&a.out.join(format!("draw-{r}-{k}.png")), &image)?;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    // What `llm-cxr eval image` reads: each image beside the report it was drawn from.
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["image", "report"])?;
    for &(r, k) in &jobs {
        w.write_record([format!("draw-{r}-{k}.png").as_str(), a.reports[r].as_str()])?;
    }
    super::write_atomic(&a.out.join(DRAWS_CSV), &w.into_inner()?)?;
    println!(
        "{} images written to {} (listed in {DRAWS_CSV})",
        jobs.len(),
        a.out.display()
    );
    Ok(())
}

fn write_png(path: &Path, img: &image::GrayImage) -> anyhow::Result<()> {
    super::write_atomic(path, &cxr_instruct::engine::png_bytes(img)?)
}
