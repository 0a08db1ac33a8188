//! The three tasks for users of a trained model: `report` (CXR -> report), `draw` (report -> CXR)
//! and `ask` (a question about a CXR). Each builds LLM-CXR's prompt, runs the model in batches
//! (text mode never draws image ids; image mode draws exactly one image's ids) and goes through
//! the VQ-GAN on the image side.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{Device, Tensor};

use cxr_instruct::template::drawing_prompt;
use cxr_instruct::{prompt, Phrasings};
use cxr_lm::image_vocab::IMAGE_PLACEHOLDER;
use cxr_lm::{generate, Constraint, GenerateOptions, ImageVocab, LanguageModel};
use cxr_vqgan::VqModel;

use super::chat::{ModelArgs, SamplingArgs};

/// The model pair every task needs.
#[derive(clap::Args)]
pub struct Models {
    #[command(flatten)]
    pub lm: ModelArgs,
    #[command(flatten)]
    pub vqgan: super::vqgan::VqganArgs,
    /// Prompts per forward batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

struct Loaded {
    lm: LanguageModel,
    vocab: ImageVocab,
    vqgan: VqModel,
}

impl Models {
    fn load(&self) -> anyhow::Result<Loaded> {
        let (lm, vocab, vqgan) = load_pair(&self.lm, &self.vqgan)?;
        Ok(Loaded { lm, vocab, vqgan })
    }
}

/// A trained model with its image vocabulary and the VQ-GAN whose codes it speaks, checked to
/// agree on the codebook size.
pub fn load_pair(
    lm: &ModelArgs,
    vqgan: &super::vqgan::VqganArgs,
) -> anyhow::Result<(LanguageModel, ImageVocab, VqModel)> {
    let model = lm.load()?;
    let vocab = model.image_vocab.with_context(|| {
        format!(
            "{} has no image vocabulary: use a model trained by `llm-cxr train`",
            lm.model.display()
        )
    })?;
    let vq = vqgan.load()?;
    anyhow::ensure!(
        vq.config().n_embed as u32 == vocab.codes,
        "the VQ-GAN has {} codes but the model's image vocabulary {}",
        vq.config().n_embed,
        vocab.codes
    );
    Ok((model, vocab, vq))
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// CXR images (DICOM, PNG, JPEG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
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

#[derive(clap::Args)]
pub struct DrawArgs {
    /// Report text(s) to draw.
    #[arg(required = true)]
    pub reports: Vec<String>,
    #[command(flatten)]
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

#[derive(clap::Args)]
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
fn encode_images(vqgan: &VqModel, paths: &[PathBuf]) -> anyhow::Result<Vec<Vec<u32>>> {
    let x = super::vqgan::load_inputs(paths, vqgan.config())?;
    Ok(vqgan.encode(&x)?.to_vec2()?)
}

/// Text answers to prompts holding one image each, in batches with a progress bar.
fn answer_text(
    m: &Loaded,
    prompts: &[(String, Vec<u32>)],
    max_new_tokens: usize,
    models: &Models,
    what: &str,
) -> anyhow::Result<Vec<String>> {
    let options = GenerateOptions {
        sampling: models.sampling.sampling(),
        constraint: Constraint::Text {
            image_ids: m.vocab.ids(),
        },
        max_new_tokens,
        stop_ids: m.lm.tokenizer.stop_ids(),
    };
    let bar = super::progress(prompts.len() as u64, what);
    let mut out = Vec::new();
    for chunk in prompts.chunks(models.batch.max(1)) {
        let ids = chunk
            .iter()
            .map(|(text, codes)| Ok(m.vocab.encode_with_image(&m.lm.tokenizer, text, codes)?))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for row in generate(&m.lm.model, &ids, &options, |_, _| {})? {
            let text: Vec<u32> = row
                .into_iter()
                .filter(|i| !options.stop_ids.contains(i))
                .collect();
            out.push(m.lm.tokenizer.decode(&text, true)?.trim().to_string());
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

pub fn report(a: ReportArgs) -> anyhow::Result<()> {
    let m = a.models.load()?;
    let instruction = a
        .instruction
        .clone()
        .unwrap_or_else(|| Phrasings::default().cxr_to_report[0].clone());
    let text = prompt(&instruction, Some(IMAGE_PLACEHOLDER));
    let mut prompts = Vec::new();
    for chunk in a.images.chunks(a.models.batch.max(1)) {
        for codes in encode_images(&m.vqgan, chunk)? {
            prompts.push((text.clone(), codes));
        }
    }
    let reports = answer_text(&m, &prompts, a.max_new_tokens, &a.models, "report")?;
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
    let m = a.models.load()?;
    // Each image is encoded once, however many questions it has.
    let mut codes: std::collections::HashMap<PathBuf, Vec<u32>> = Default::default();
    let mut distinct: Vec<PathBuf> = questions.iter().map(|q| q.image.clone()).collect();
    distinct.sort();
    distinct.dedup();
    for chunk in distinct.chunks(a.models.batch.max(1)) {
        for (path, c) in chunk.iter().zip(encode_images(&m.vqgan, chunk)?) {
            codes.insert(path.clone(), c);
        }
    }
    let prompts: Vec<(String, Vec<u32>)> = questions
        .iter()
        .map(|q| {
            (
                prompt(&q.question, Some(IMAGE_PLACEHOLDER)),
                codes[&q.image].clone(),
            )
        })
        .collect();
    let answers = answer_text(&m, &prompts, a.max_new_tokens, &a.models, "ask")?;
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
    let m = a.models.load()?;
    let instruction = a
        .instruction
        .clone()
        .unwrap_or_else(|| Phrasings::default().report_to_cxr[0].clone());
    let count = m.vqgan.config().tokens_per_image();
    let side = m.vqgan.config().grid_side();
    let mut options = GenerateOptions {
        sampling: a.models.sampling.sampling(),
        constraint: Constraint::Image {
            image_ids: m.vocab.ids(),
            count,
        },
        max_new_tokens: count,
        stop_ids: Vec::new(),
    };
    // Every (report, sample) pair is one row; rows draw from their own seeded streams.
    let jobs: Vec<(usize, usize)> = (0..a.reports.len())
        .flat_map(|r| (0..a.n.max(1)).map(move |k| (r, k)))
        .collect();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let bar = super::progress(jobs.len() as u64, "draw");
    for (batch_index, chunk) in jobs.chunks(a.models.batch.max(1)).enumerate() {
        let ids = chunk
            .iter()
            .map(|&(r, _)| {
                Ok(m.lm
                    .tokenizer
                    .encode(&drawing_prompt(&instruction, &a.reports[r]))?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        options.sampling.seed = a.models.sampling.seed.wrapping_add(batch_index as u64);
        let rows = generate(&m.lm.model, &ids, &options, |_, _| {})?;
        for (&(r, k), row) in chunk.iter().zip(rows) {
            let codes: Vec<u32> = row.iter().filter_map(|&id| m.vocab.code(id)).collect();
            anyhow::ensure!(
                codes.len() == count,
                "row {r}/{k}: {} image ids, not {count}",
                codes.len()
            );
            let idx = Tensor::from_vec(codes, (1, side * side), &Device::Cpu)?;
            let img = cxr_vqgan::to_gray_images(&m.vqgan.decode(&idx)?)?.remove(0);
            write_png(&a.out.join(format!("draw-{r}-{k}.png")), &img)?;
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
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    super::write_atomic(path, &png)
}
