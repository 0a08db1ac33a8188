//! `llm-cxr data build`: a dataset and its VQ token files -> shards of tokenized instruction
//! samples for `llm-cxr train`.

use std::path::PathBuf;

use anyhow::Context;

use cxr_data::{open_dataset, Split};
use cxr_instruct::build::{self, BuildInputs, BuildOptions, Stage};
use cxr_instruct::Phrasings;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Build instruction samples in LLM-CXR's template for the four tasks (CXR -> report,
    /// report -> CXR, VQA, text) with the reference's stage rules, tokenize them with the
    /// model's tokenizer and image vocabulary, and write shuffled shards and a manifest.
    Build(BuildArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum StageArg {
    /// Every image of the split, findings + impression.
    #[value(name = "1")]
    One,
    /// Frontal images of each subject's first study, impression only.
    #[value(name = "2")]
    Two,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SplitArg {
    Train,
    Validate,
    Test,
}

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Dataset folder or file (default layout: a MIMIC-CXR-JPG or phantom tree). A phantom
    /// tree's phantom-findings.jsonl is used for VQA on side, lobe and severity.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, value_enum, default_value = "mimic")]
    pub kind: super::dataset::Kind,
    /// Token files from `llm-cxr vqgan encode` (<image_id>.npy).
    #[arg(long)]
    pub tokens: PathBuf,
    /// The model directory whose tokenizer and image vocabulary the samples use (made by
    /// `llm-cxr lm init`).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, value_enum, default_value = "1")]
    pub stage: StageArg,
    /// Which split's images to use (records without a split count as train).
    #[arg(long, value_enum, default_value = "train")]
    pub split: SplitArg,
    /// Output folder: shard-NNNNN.jsonl and manifest.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Text instructions (dolly-15k or Alpaca, JSON or JSONL); default: the 40 built-in ones.
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Share of text instructions in the mix (the paper: 0.2).
    #[arg(long, default_value_t = 0.2)]
    pub text_fraction: f64,
    /// Instruction phrasings for the two image directions, as JSON
    /// {"cxr_to_report": [...], "report_to_cxr": [...]}; default: our own twelve each.
    #[arg(long)]
    pub phrasings: Option<PathBuf>,
    /// Synthetic questions per image.
    #[arg(long, default_value_t = 3)]
    pub vqa_per_image: usize,
    /// Samples longer than this many tokens are dropped.
    #[arg(long, default_value_t = 1024)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value_t = 2000)]
    pub shard_size: usize,
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    let Command::Build(a) = cmd;
    anyhow::ensure!(
        (0.0..1.0).contains(&a.text_fraction),
        "--text-fraction must be in [0, 1), got {}",
        a.text_fraction
    );
    let ds = open_dataset(a.kind.into(), &a.data)?;
    let split = match a.split {
        SplitArg::Train => Split::Train,
        SplitArg::Validate => Split::Validate,
        SplitArg::Test => Split::Test,
    };
    let records: Vec<_> = ds
        .records()
        .iter()
        .filter(|r| r.split.unwrap_or(Split::Train) == split)
        .cloned()
        .collect();
    anyhow::ensure!(
        !records.is_empty(),
        "{}: no images in that split",
        a.data.display()
    );
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
    let inputs = BuildInputs {
        records: &records,
        tokens: &a.tokens,
        findings: findings.as_ref(),
        phrasings: &phrasings,
        text: &text,
        tokenizer: &tokenizer,
        image_vocab: &image_vocab,
    };
    let opts = BuildOptions {
        stage: match a.stage {
            StageArg::One => Stage::One,
            StageArg::Two => Stage::Two,
        },
        text_fraction: a.text_fraction,
        vqa_per_image: a.vqa_per_image,
        max_tokens: a.max_tokens,
        seed: a.seed,
        shard_size: a.shard_size,
    };
    let (samples, mut manifest) = build::samples(&inputs, &opts)?;
    let bar = super::progress(samples.len() as u64, "tokenize");
    let mut tokenized = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(256) {
        tokenized.extend(build::tokenize_all(chunk, &inputs, &mut manifest)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let shards = build::write_shards(&a.out, &tokenized, &mut manifest, opts.shard_size)?;
    print!("{}", manifest.summary());
    println!(
        "{} samples in {} shards under {}",
        tokenized.len(),
        shards.len(),
        a.out.display()
    );
    Ok(())
}
