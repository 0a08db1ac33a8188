//! `llm-cxr data build`: a dataset and its VQ token files -> shards of tokenized instruction
//! samples for `llm-cxr train`.

use std::path::PathBuf;

use anyhow::Context;

use cxr_data::{open_dataset, DatasetKind, Split};
use cxr_instruct::build::{self, BuildInputs, BuildOptions, Stage};
use cxr_instruct::Phrasings;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Build instruction samples in LLM-CXR's template for the four tasks (CXR -> report,
    /// report -> CXR, VQA, text) with the reference's stage rules, tokenize them with the
    /// model's tokenizer and image vocabulary, and write shuffled shards and a manifest.
    Build(BuildArgs),
    /// Have a language model write VQA pairs from each report, as the paper did with
    /// Llama-2-13b-chat: JSON question/answer lists, each pair checked against the report's
    /// CheXpert labels (disagreeing pairs dropped and counted). Resumable: reports already in
    /// --out are skipped. `data build --vqa-file` uses the result.
    Vqa(VqaArgs),
}

#[derive(clap::Args)]
pub struct VqaArgs {
    /// Dataset folder or file.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, value_enum, default_value = "mimic")]
    pub kind: DatasetKind,
    #[arg(long, value_enum, default_value = "train")]
    pub split: Split,
    #[command(flatten)]
    pub model: super::chat::ModelArgs,
    /// JSONL output, one report per line ({image_id, pairs, dropped, unreadable}).
    #[arg(long)]
    pub out: PathBuf,
    /// Pairs asked for per report.
    #[arg(long, default_value_t = 5)]
    pub pairs: usize,
    /// Also reports without a positive finding (the paper used only reports with one).
    #[arg(long)]
    pub all_reports: bool,
    /// Stop after this many reports in all (done ones included).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Reports per generation batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 384)]
    pub max_new_tokens: usize,
    #[arg(long, env = "LLMCXR_CHEXPERT_PHRASES")]
    pub phrases: Option<PathBuf>,
}

#[derive(clap::Args, serde::Serialize)]
pub struct BuildArgs {
    /// Dataset folder or file (default layout: a MIMIC-CXR-JPG or phantom tree). A phantom
    /// tree's phantom-findings.jsonl is used for VQA on side, lobe and severity.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, value_enum, default_value = "mimic")]
    #[serde(serialize_with = "super::value_enum::name")]
    pub kind: DatasetKind,
    /// Token files from `llm-cxr vqgan encode` (<image_id>.npy).
    #[arg(long)]
    pub tokens: PathBuf,
    /// The model directory whose tokenizer and image vocabulary the samples use (made by
    /// `llm-cxr lm init`). When it records a VQ-GAN (`lm init --vqgan`), token files of any
    /// other are refused.
    #[arg(long)]
    pub model: PathBuf,
    /// The VQ-GAN the token files must come from (weights); the token folder's `vqgan.json`
    /// must name it, or the build is refused.
    #[arg(long)]
    pub vqgan: Option<PathBuf>,
    /// The config of --vqgan (a preset or a JSON file); default: the one stored in its weights.
    #[arg(long, requires = "vqgan")]
    pub vqgan_config: Option<String>,
    #[arg(long, value_enum, default_value = "1")]
    #[serde(serialize_with = "super::value_enum::name")]
    pub stage: Stage,
    /// Train every image in both directions (CXR -> report and report -> CXR); by default, as
    /// LLM-CXR, image ids sorted, even ones CXR -> report and odd ones report -> CXR.
    #[arg(long)]
    pub both_directions: bool,
    /// Questions per VQA sample, as turns of one conversation about the image (its codes read
    /// once for several answers; the loss on the answers only). 1: one per sample, as LLM-CXR.
    #[arg(long, default_value_t = BuildOptions::default().vqa_turns, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub vqa_turns: usize,
    /// Which split's images to use (records without a split count as train).
    #[arg(long, value_enum, default_value = "train")]
    #[serde(serialize_with = "super::value_enum::name")]
    pub split: Split,
    /// Output folder: shard-NNNNN.jsonl and manifest.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Text instructions (dolly-15k or Alpaca, JSON or JSONL); default: the 40 built-in ones.
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Share of text instructions in the mix (the paper: 0.2).
    #[arg(long, default_value_t = BuildOptions::default().text_fraction)]
    pub text_fraction: f64,
    /// Instruction phrasings for the two image directions, as JSON
    /// {"cxr_to_report": [...], "report_to_cxr": [...]}; default: our own twelve each.
    #[arg(long)]
    pub phrasings: Option<PathBuf>,
    /// Synthetic questions per image.
    #[arg(long, default_value_t = BuildOptions::default().vqa_per_image)]
    pub vqa_per_image: usize,
    /// Model-written VQA from `llm-cxr data vqa`: images with pairs there use them instead of
    /// the synthetic ones.
    #[arg(long)]
    pub vqa_file: Option<PathBuf>,
    /// Samples longer than this many tokens are dropped.
    #[arg(long, default_value_t = BuildOptions::default().max_tokens)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = BuildOptions::default().seed)]
    pub seed: u64,
    #[arg(long, default_value_t = BuildOptions::default().shard_size)]
    pub shard_size: usize,
    /// Also write the shards as Hugging Face `datasets` reads them (`hf/`: input_ids, and labels
    /// with -100 where no loss counts), for fine-tuning with transformers' Trainer
    /// (scripts/hf-finetune.py, docs/hugging-face.md).
    #[arg(long)]
    pub hf: bool,
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Build(a) => build_data(a),
        Command::Vqa(a) => write_vqa(a),
    }
}

fn split_records(
    data: &std::path::Path,
    kind: DatasetKind,
    split: Split,
) -> anyhow::Result<Vec<cxr_data::CxrRecord>> {
    let ds = open_dataset(kind, data)?;
    let records: Vec<_> = ds
        .records()
        .iter()
        .filter(|r| r.split.unwrap_or(Split::Train) == split)
        .cloned()
        .collect();
    anyhow::ensure!(
        !records.is_empty(),
        "{}: no images in that split",
        data.display()
    );
    Ok(records)
}

/// Reads a `data vqa` file (a missing file is an empty one).
fn read_vqa_file(path: &std::path::Path) -> anyhow::Result<Vec<cxr_instruct::llm_vqa::ReportVqa>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    Ok(cxr_instruct::build::read_jsonl_by_image(
        path,
        |r: &cxr_instruct::llm_vqa::ReportVqa| &r.image_id,
    )?)
}

fn write_vqa(a: VqaArgs) -> anyhow::Result<()> {
    use cxr_instruct::llm_vqa::{check_reply, prompt};
    use cxr_lm::{generate, Constraint, GenerateOptions, Sampling};
    let labeler =
        cxr_eval::ReportLabeler::from_dir(&super::label::phrases_dir(a.phrases.clone())?)?;
    let mut done = read_vqa_file(&a.out)?;
    let seen: std::collections::HashSet<String> = done.iter().map(|r| r.image_id.clone()).collect();
    let mut todo: Vec<(String, String, cxr_data::ChexpertLabels)> = Vec::new();
    for r in split_records(&a.data, a.kind, a.split)? {
        let Some(text) = r.sections().and_then(|s| s.stage1_text()) else {
            continue;
        };
        let labels = labeler.label(&text);
        let positive = cxr_data::Observation::ALL.into_iter().any(|o| {
            o != cxr_data::Observation::NoFinding
                && labels.get(o) == Some(cxr_data::Label::Positive)
        });
        if (positive || a.all_reports) && !seen.contains(&r.image_id) {
            todo.push((r.image_id.clone(), text, labels));
        }
    }
    if let Some(limit) = a.limit {
        todo.truncate(limit.saturating_sub(done.len()));
    }
    // `data vqa` takes no --device: it runs on the CPU.
    let lm = a.model.load(&candle_core::Device::Cpu)?;
    let stop_ids = lm.tokenizer.stop_ids();
    let options = GenerateOptions {
        sampling: Sampling::greedy(),
        constraint: match lm.image_vocab {
            Some(v) => Constraint::Text { image_ids: v.ids() },
            None => Constraint::Free,
        },
        max_new_tokens: a.max_new_tokens,
        stop_ids: stop_ids.clone(),
    };
    let render =
        |text: &str| super::chat::render_prompt(&lm.tokenizer, super::chat::Template::Auto, text);
    let write = |done: &[cxr_instruct::llm_vqa::ReportVqa]| -> anyhow::Result<()> {
        let mut text = String::new();
        for r in done {
            text += &serde_json::to_string(r)?;
            text.push('\n');
        }
        super::write_atomic(&a.out, text.as_bytes())
    };
    let bar = super::progress(todo.len() as u64, "vqa");
    for chunk in todo.chunks(a.batch.max(1)) {
        let ids = chunk
            .iter()
            .map(|(_, text, _)| Ok(lm.tokenizer.encode(&render(&prompt(text, a.pairs))?)?))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let rows = generate(&lm.model, &ids, &options, |_, _| {})?;
        for ((id, _, labels), row) in chunk.iter().zip(rows) {
            let row: Vec<u32> = row.into_iter().filter(|i| !stop_ids.contains(i)).collect();
            let reply = lm.tokenizer.decode(&row, true)?;
            done.push(check_reply(id, &reply, labels, &|t| labeler.label(t)));
        }
        // The whole file, atomically, after every batch: a killed run loses one batch at most.
        write(&done)?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    write(&done)?;
    let kept: usize = done.iter().map(|r| r.pairs.len()).sum();
    let dropped: usize = done.iter().map(|r| r.dropped).sum();
    let unreadable = done.iter().filter(|r| r.unreadable.is_some()).count();
    println!(
        "{} reports: {kept} pairs kept, {dropped} dropped for disagreeing with the report, {unreadable} replies without a readable JSON list; written to {}",
        done.len(),
        a.out.display()
    );
    Ok(())
}

fn build_data(a: BuildArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..1.0).contains(&a.text_fraction),
        "--text-fraction must be in [0, 1), got {}",
        a.text_fraction
    );
    let _lock = cxr_data::OutputLock::beside(&a.out)?;
    let records = split_records(&a.data, a.kind, a.split)?;
    let vqgan = check_token_origin(&a)?;
    let (tokenizer, image_vocab) = cxr_lm::load_tokenizer(&a.model)?;
    let image_vocab = image_vocab.with_context(|| {
        format!(
            "{}: config.json has no image vocabulary; make the model with `llm-cxr lm init` first",
            a.model.display()
        )
    })?;
    let findings_path = if a.data.is_dir() {
        Some(a.data.join("phantom-findings.jsonl")).filter(|p| p.is_file())
    } else {
        None
    };
    let findings = findings_path
        .map(|p| build::read_phantom_findings(&p))
        .transpose()?;
    let phrasings = match &a.phrasings {
        Some(p) => Phrasings::from_file(p)?,
        None => Phrasings::default(),
    };
    let text = match &a.text {
        Some(p) => cxr_instruct::text::load(p)?,
        None => cxr_instruct::text::embedded(),
    };
    let llm_vqa: std::collections::HashMap<String, Vec<cxr_instruct::synth_vqa::QaPair>> =
        match &a.vqa_file {
            Some(p) => {
                anyhow::ensure!(p.is_file(), "{}: no such VQA file", p.display());
                read_vqa_file(p)?
                    .into_iter()
                    .filter(|r| !r.pairs.is_empty())
                    .map(|r| (r.image_id, r.pairs))
                    .collect()
            }
            None => Default::default(),
        };
    let inputs = BuildInputs {
        records: &records,
        llm_vqa: &llm_vqa,
        tokens: &a.tokens,
        findings: findings.as_ref(),
        phrasings: &phrasings,
        text: &text,
        tokenizer: &tokenizer,
        image_vocab: &image_vocab,
    };
    let opts = BuildOptions {
        stage: a.stage,
        directions: if a.both_directions {
            build::Directions::Both
        } else {
            build::Directions::Alternate
        },
        text_fraction: a.text_fraction,
        vqa_per_image: a.vqa_per_image,
        vqa_turns: a.vqa_turns,
        max_tokens: a.max_tokens,
        seed: a.seed,
        shard_size: a.shard_size,
        hugging_face: a.hf,
    };
    let (samples, mut manifest) = build::samples(&inputs, &opts)?;
    manifest.vqgan = vqgan;
    let bar = super::progress(samples.len() as u64, "tokenize");
    let mut tokenized = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(256) {
        tokenized.extend(build::tokenize_all(chunk, &inputs, &mut manifest)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let shards = build::write_shards(&a.out, &tokenized, &mut manifest, &opts)?;
    print!("{}", manifest.summary());
    println!(
        "{} samples in {} shards under {}",
        tokenized.len(),
        shards.len(),
        a.out.display()
    );
    Ok(())
}

/// The VQ-GAN the token folder records, after refusing it when it is not the one given with
/// `--vqgan` or recorded in the model directory (by `lm init --vqgan`).
fn check_token_origin(a: &BuildArgs) -> anyhow::Result<Option<cxr_vqgan::identity::VqganIdentity>> {
    use cxr_vqgan::identity::{VqganIdentity, IDENTITY_FILE};
    if let Some(path) = &a.vqgan {
        let given = super::vqgan::VqganArgs {
            vqgan: path.clone(),
            config: a.vqgan_config.clone(),
        }
        .identity()?;
        given.require_folder(&a.tokens, "--vqgan")?;
    }
    if let Some(recorded) = VqganIdentity::recorded(&a.model)? {
        let whose = format!("the model's {}", a.model.join(IDENTITY_FILE).display());
        recorded.require_folder(&a.tokens, &whose)?;
    }
    Ok(VqganIdentity::recorded(&a.tokens)?)
}
