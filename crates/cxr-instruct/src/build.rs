//! The data builder: dataset records + token files (+ text instructions) -> shuffled, tokenized
//! shards of instruction samples, with the reference's stage rules.
//!
//! - Stage 1: every image of the split (all views); report text = findings + impression.
//! - Stage 2: frontal images (PA/AP) of each subject's first study (smallest study id: our
//!   records carry no study date), impression only.
//! - Pairs as the reference: image ids sorted, even index -> CXR-to-report, odd -> report-to-CXR,
//!   so each image is used once. Images whose report has no usable section are dropped.
//! - VQA: up to `vqa_per_image` questions per image: model-written ones when given
//!   (`llm_vqa`), else from its structured findings when the dataset has them (phantoms), else
//!   from its CheXpert labels.
//! - Text: `text_fraction` of the final mix (reference 0.2), the text set cycled when too small
//!   (as `interleave_datasets(..., "all_exhausted")` oversamples dolly).
//! - Samples longer than `max_tokens` are dropped (the reference drops 2048+).
//!
//! Output: `shard-NNNNN.jsonl` (one [`Tokenized`] per line) and `manifest.json` ([`Manifest`]),
//! and with `hugging_face` the same samples as `hf/shard-NNNNN.jsonl` ([`HfSample`]: what
//! Hugging Face `datasets` loads and transformers' `Trainer` trains on); the folder written whole
//! and renamed into place; one seed gives the same shards, byte for byte.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use cxr_data::CxrRecord;
use cxr_lm::{ImageVocab, TextTokenizer};
use cxr_phantom::findings::Finding;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::synth_vqa;
use crate::template::{self, tokenize, Phrasings, Sample, Task, Tokenized};
use crate::InstructError;

/// Which stage's rules select images and report text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Stage {
    /// Every image of the split, findings + impression.
    #[serde(rename = "1")]
    #[cfg_attr(feature = "clap", value(name = "1"))]
    One,
    /// Frontal images of each subject's first study, impression only.
    #[serde(rename = "2")]
    #[cfg_attr(feature = "clap", value(name = "2"))]
    Two,
}

/// Which direction each image is trained in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Directions {
    /// The reference's: image ids sorted, even index CXR -> report, odd report -> CXR.
    Alternate,
    /// Every image in both directions: twice the image-text pairs from the same images, for
    /// small datasets.
    Both,
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub stage: Stage,
    pub directions: Directions,
    /// Share of text instructions in the final mix.
    pub text_fraction: f64,
    pub vqa_per_image: usize,
    /// Questions per VQA sample: an image's questions go in turns of one sample, so its codes
    /// are read once for several answers (1: one question per sample, as the reference).
    pub vqa_turns: usize,
    pub max_tokens: usize,
    pub seed: u64,
    pub shard_size: usize,
    /// Also write every shard in the Hugging Face form ([`HfSample`]) under `hf/`.
    pub hugging_face: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            stage: Stage::One,
            directions: Directions::Alternate,
            text_fraction: 0.2,
            vqa_per_image: 3,
            vqa_turns: 1,
            max_tokens: 1024,
            seed: 42,
            shard_size: 2000,
            hugging_face: false,
        }
    }
}

/// Per task: samples kept and their token counts.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskStats {
    pub samples: usize,
    pub tokens_total: usize,
    pub tokens_max: usize,
    /// Tokens that carry loss (from the response on).
    pub response_tokens: usize,
}

/// What a build made and what it left out, written as `manifest.json`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub stage: Option<Stage>,
    pub seed: u64,
    pub images_selected: usize,
    pub images_without_tokens: usize,
    pub images_without_report: usize,
    pub dropped_too_long: usize,
    pub max_tokens: usize,
    pub image_vocab: Option<ImageVocab>,
    pub tasks: BTreeMap<Task, TaskStats>,
    pub shards: Vec<String>,
    /// The same shards in the Hugging Face form, relative to the folder (`hf/shard-NNNNN.jsonl`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hf_shards: Vec<String>,
    /// The VQ-GAN whose codes the samples hold, as the token folder records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vqgan: Option<cxr_vqgan::identity::VqganIdentity>,
}

impl Manifest {
    /// Human-readable statistics.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} images selected ({} without a token file, {} without report text); {} samples over {} tokens dropped\n",
            self.images_selected,
            self.images_without_tokens,
            self.images_without_report,
            self.dropped_too_long,
            self.max_tokens
        );
        let total: usize = self.tasks.values().map(|t| t.samples).sum();
        for (task, t) in &self.tasks {
            s += &format!(
                "{:>14}: {:>7} samples ({:>5.1} %), tokens mean {:.0}, max {}, loss-bearing {:.0} %\n",
                task.name(),
                t.samples,
                100.0 * t.samples as f64 / total.max(1) as f64,
                t.tokens_total as f64 / t.samples.max(1) as f64,
                t.tokens_max,
                100.0 * t.response_tokens as f64 / t.tokens_total.max(1) as f64
            );
        }
        s
    }
}

/// One JSON value per non-empty line; errors name the file and the line.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, InstructError> {
    Ok(read_jsonl_lines(path)?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

/// [`read_jsonl`] with each value's line number (1-based).
fn read_jsonl_lines<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Vec<(usize, T)>, InstructError> {
    let bad = |reason: String| InstructError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map(|v| (i + 1, v))
                .map_err(|e| bad(format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// [`read_jsonl`] of values about one image each: an image id given twice is refused, naming
/// both lines (the second would silently replace the first).
pub fn read_jsonl_by_image<T: serde::de::DeserializeOwned>(
    path: &Path,
    image_id: impl Fn(&T) -> &str,
) -> Result<Vec<T>, InstructError> {
    let lines = read_jsonl_lines::<T>(path)?;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (line, v) in &lines {
        if let Some(first) = seen.insert(image_id(v), *line) {
            return Err(InstructError::File {
                path: path.to_path_buf(),
                reason: format!(
                    "image id {:?} appears twice: at line {first} and at line {line}",
                    image_id(v)
                ),
            });
        }
    }
    Ok(lines.into_iter().map(|(_, v)| v).collect())
}

/// Structured findings of phantoms, by image id, from a dataset's `phantom-findings.jsonl`.
pub fn read_phantom_findings(path: &Path) -> Result<HashMap<String, Vec<Finding>>, InstructError> {
    #[derive(serde::Deserialize)]
    struct Line {
        dicom_id: String,
        findings: Vec<Finding>,
    }
    Ok(read_jsonl_by_image::<Line>(path, |l| &l.dicom_id)?
        .into_iter()
        .map(|l| (l.dicom_id, l.findings))
        .collect())
}

/// The images a stage uses, sorted by image id.
pub fn select(records: &[CxrRecord], stage: Stage) -> Vec<&CxrRecord> {
    let mut chosen: Vec<&CxrRecord> = match stage {
        Stage::One => records.iter().collect(),
        Stage::Two => {
            let mut first: HashMap<&str, &str> = HashMap::new();
            for r in records.iter().filter(|r| r.is_frontal()) {
                let (Some(subject), Some(study)) = (&r.subject_id, &r.study_id) else {
                    continue;
                };
                let e = first.entry(subject).or_insert(study);
                if study_key(study) < study_key(e) {
                    *e = study;
                }
            }
            records
                .iter()
                .filter(|r| {
                    r.is_frontal()
                        && matches!((&r.subject_id, &r.study_id),
                            (Some(sub), Some(st)) if first.get(sub.as_str()) == Some(&st.as_str()))
                })
                .collect()
        }
    };
    chosen.sort_by(|a, b| a.image_id.cmp(&b.image_id));
    chosen
}

/// Study ids compare as numbers when they are numbers (MIMIC's are).
fn study_key(id: &str) -> (u64, &str) {
    (id.trim_start_matches('s').parse().unwrap_or(u64::MAX), id)
}

/// The report text a stage trains on.
fn stage_text(record: &CxrRecord, stage: Stage) -> Option<String> {
    let sections = record.sections()?;
    match stage {
        Stage::One => sections.stage1_text(),
        Stage::Two => sections.stage2_text().map(str::to_string),
    }
}

/// Everything a build reads.
pub struct BuildInputs<'a> {
    pub records: &'a [CxrRecord],
    /// Folder of token files (`cxr_vqgan::tokens::file_name` of each image id).
    pub tokens: &'a Path,
    pub findings: Option<&'a HashMap<String, Vec<Finding>>>,
    /// Model-written VQA by image id (`llm_vqa`); used instead of synthetic questions.
    pub llm_vqa: &'a HashMap<String, Vec<synth_vqa::QaPair>>,
    pub phrasings: &'a Phrasings,
    pub text: &'a [Sample],
    pub tokenizer: &'a TextTokenizer,
    pub image_vocab: &'a ImageVocab,
}

/// Builds the untokenized samples (before the length cap), in a seeded order.
pub fn samples(
    inputs: &BuildInputs,
    opts: &BuildOptions,
) -> Result<(Vec<Sample>, Manifest), InstructError> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut manifest = Manifest {
        stage: Some(opts.stage),
        seed: opts.seed,
        max_tokens: opts.max_tokens,
        image_vocab: Some(*inputs.image_vocab),
        ..Default::default()
    };
    let selected = select(inputs.records, opts.stage);
    manifest.images_selected = selected.len();
    let mut out = Vec::new();
    let mut paired = 0usize;
    for r in selected {
        let path = inputs
            .tokens
            .join(cxr_vqgan::tokens::file_name(&r.image_id));
        if !path.is_file() {
            manifest.images_without_tokens += 1;
            continue;
        }
        let (codes, _) = cxr_vqgan::tokens::read(&path, inputs.image_vocab.codes as usize)?;
        let Some(report) = stage_text(r, opts.stage) else {
            manifest.images_without_report += 1;
            continue;
        };
        // Even pairs CXR -> report, odd ones report -> CXR (or both).
        let both = opts.directions == Directions::Both;
        if both || paired.is_multiple_of(2) {
            let i = rng.random_range(0..inputs.phrasings.cxr_to_report.len());
            out.push(template::cxr_to_report(
                &r.image_id,
                codes.clone(),
                &report,
                &inputs.phrasings.cxr_to_report[i],
            ));
        }
        if both || !paired.is_multiple_of(2) {
            let i = rng.random_range(0..inputs.phrasings.report_to_cxr.len());
            out.push(template::report_to_cxr(
                &r.image_id,
                codes.clone(),
                &report,
                &inputs.phrasings.report_to_cxr[i],
            ));
        }
        paired += 1;
        let qa = match (
            inputs.llm_vqa.get(&r.image_id),
            inputs.findings.and_then(|f| f.get(&r.image_id)),
        ) {
            (Some(pairs), _) => pairs.clone(),
            (None, Some(findings)) => synth_vqa::from_findings(findings),
            (None, None) => r
                .labels
                .as_ref()
                .map(synth_vqa::from_labels)
                .unwrap_or_default(),
        };
        let chosen = synth_vqa::choose(qa, opts.vqa_per_image, &mut rng);
        for turns in chosen.chunks(opts.vqa_turns.max(1)) {
            let mut sample = template::vqa(
                &r.image_id,
                codes.clone(),
                &turns[0].question,
                &turns[0].answer,
            );
            sample.turns = turns[1..]
                .iter()
                .map(|p| (p.question.clone(), p.answer.clone()))
                .collect();
            out.push(sample);
        }
    }
    if paired == 0 {
        return Err(InstructError::Empty(format!(
            "no image had both a token file in {} and report text for stage {:?}",
            inputs.tokens.display(),
            opts.stage
        )));
    }
    if opts.text_fraction > 0.0 && !inputs.text.is_empty() {
        let want =
            (out.len() as f64 * opts.text_fraction / (1.0 - opts.text_fraction)).round() as usize;
        let mut order: Vec<usize> = (0..inputs.text.len()).collect();
        let mut taken = 0;
        while taken < want {
            order.shuffle(&mut rng);
            for &i in order.iter().take(want - taken) {
                out.push(inputs.text[i].clone());
                taken += 1;
            }
        }
    }
    out.shuffle(&mut rng);
    Ok((out, manifest))
}

/// Tokenizes, applies the length cap, and fills the manifest's task statistics.
pub fn tokenize_all(
    samples: &[Sample],
    inputs: &BuildInputs,
    manifest: &mut Manifest,
) -> Result<Vec<Tokenized>, InstructError> {
    let mut out = Vec::with_capacity(samples.len());
    for s in samples {
        let t = tokenize(s, inputs.tokenizer, inputs.image_vocab)?;
        if t.ids.len() > manifest.max_tokens {
            manifest.dropped_too_long += 1;
            continue;
        }
        let stats = manifest.tasks.entry(t.task).or_default();
        stats.samples += 1;
        stats.tokens_total += t.ids.len();
        stats.tokens_max = stats.tokens_max.max(t.ids.len());
        stats.response_tokens += t.loss_tokens();
        out.push(t);
    }
    Ok(out)
}

/// Writes the shards and the manifest; returns the shard paths. The folder is written whole
/// into a temporary sibling, synced, and renamed into place (`cxr_data::replace_dir_atomic`), so
/// a reader sees the old build or the new one, never shards of one with the manifest of another.
pub fn write_shards(
    out_dir: &Path,
    samples: &[Tokenized],
    manifest: &mut Manifest,
    opts: &BuildOptions,
) -> Result<Vec<PathBuf>, InstructError> {
    let mut failed: Option<InstructError> = None;
    cxr_data::replace_dir_atomic::<std::io::Error>(out_dir, |tmp| {
        write_shards_into(tmp, samples, manifest, opts).map_err(|e| {
            let message = e.to_string();
            failed = Some(e);
            std::io::Error::other(message)
        })
    })
    .map_err(|e| {
        failed.take().unwrap_or_else(|| InstructError::File {
            path: out_dir.to_path_buf(),
            reason: e.to_string(),
        })
    })?;
    Ok(manifest.shards.iter().map(|n| out_dir.join(n)).collect())
}

fn write_shards_into(
    out_dir: &Path,
    samples: &[Tokenized],
    manifest: &mut Manifest,
    opts: &BuildOptions,
) -> Result<(), InstructError> {
    let io = |path: &Path, e: std::io::Error| InstructError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let write = |name: &str, text: String| {
        let path = out_dir.join(name);
        std::fs::write(&path, text.as_bytes()).map_err(|e| io(&path, e))
    };
    manifest.shards.clear();
    manifest.hf_shards.clear();
    if opts.hugging_face {
        let path = out_dir.join(HF_FOLDER);
        std::fs::create_dir_all(&path).map_err(|e| io(&path, e))?;
    }
    for (k, chunk) in samples.chunks(opts.shard_size.max(1)).enumerate() {
        let name = format!("shard-{k:05}.jsonl");
        write(&name, jsonl(chunk))?;
        if opts.hugging_face {
            let hf_name = format!("{HF_FOLDER}/{name}");
            write(&hf_name, jsonl(chunk.iter().map(HfSample::from)))?;
            manifest.hf_shards.push(hf_name);
        }
        manifest.shards.push(name);
    }
    let json = serde_json::to_string_pretty(manifest).expect("manifest serialises");
    write("manifest.json", json)
}

/// One JSON object per line.
fn jsonl<T: serde::Serialize>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|t| serde_json::to_string(&t).expect("samples serialise") + "\n")
        .collect()
}

/// Where the Hugging Face form of the shards goes, inside the built folder.
pub const HF_FOLDER: &str = "hf";

/// A sample as Hugging Face `datasets` loads it (`load_dataset("json", ...)`) and transformers'
/// `Trainer` trains on it: `labels` is `input_ids` with -100 wherever no loss counts (the prompt,
/// and the instructions of later turns), the masking of the reference's
/// `DataCollatorForCompletionOnlyLM`; the model shifts the labels itself. `task` and `source` are
/// for people (the `Trainer` drops columns its model does not take).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HfSample {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    pub task: Task,
    pub source: String,
}

impl From<&Tokenized> for HfSample {
    fn from(t: &Tokenized) -> Self {
        let labels = t
            .ids
            .iter()
            .zip(t.loss_mask())
            .map(|(&id, counts)| if counts { i64::from(id) } else { -100 })
            .collect();
        HfSample {
            input_ids: t.ids.clone(),
            labels,
            task: t.task,
            source: t.source.clone(),
        }
    }
}

/// Reads a built folder back: the manifest and every sample, in order.
pub fn read_shards(dir: &Path) -> Result<(Manifest, Vec<Tokenized>), InstructError> {
    let bad = |path: &Path, reason: String| InstructError::File {
        path: path.to_path_buf(),
        reason,
    };
    let mpath = dir.join("manifest.json");
    let text = std::fs::read_to_string(&mpath).map_err(|e| {
        bad(
            &mpath,
            format!("{e} (build the data with `llm-cxr data build` first)"),
        )
    })?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| bad(&mpath, e.to_string()))?;
    let mut samples = Vec::new();
    for name in &manifest.shards {
        let path = dir.join(name);
        let shard: Vec<Tokenized> = read_jsonl(&path)?;
        if let Some(t) = shard.iter().find(|t| t.response_start > t.ids.len()) {
            return Err(bad(
                &path,
                format!("sample {}: response_start past the end", t.source),
            ));
        }
        samples.extend(shard);
    }
    Ok((manifest, samples))
}
