//! The held-out test cases of the main job and what it does with them besides the subcommands:
//! the control files (each case's outputs beside the next case's truth), the side and severity
//! judge, and the plain instructions asked before and after fine-tuning.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::SeedableRng;

use cxr_data::{open_dataset, CxrRecord, DatasetKind, Split};

use super::profile::{PLAIN_INSTRUCTIONS, QUESTIONS_PER_IMAGE};
use crate::commands::chat::answer_greedy;
use crate::commands::write_atomic;

/// The held-out test cases: images, their report text (findings + impression, as trained) and
/// questions from their structured findings.
pub struct TestSet {
    pub image_ids: Vec<String>,
    pub images: Vec<PathBuf>,
    pub reports: Vec<String>,
    /// The structured findings and view of each image (the phantom's ground truth).
    pub findings: Vec<Vec<cxr_phantom::Finding>>,
    pub views: Vec<cxr_phantom::View>,
    /// `ask --from` CSV.
    pub questions: PathBuf,
}

pub fn test_set(data: &Path, out: &Path, n: usize, seed: u64) -> anyhow::Result<TestSet> {
    let ds = open_dataset(DatasetKind::Mimic, data)?;
    let mut records: Vec<&CxrRecord> = ds
        .records()
        .iter()
        .filter(|r| r.split == Some(Split::Test) && r.is_frontal())
        .collect();
    records.sort_by(|a, b| a.image_id.cmp(&b.image_id));
    let findings =
        cxr_instruct::build::read_phantom_findings(&data.join("phantom-findings.jsonl"))?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut set = TestSet {
        image_ids: Vec::new(),
        images: Vec::new(),
        reports: Vec::new(),
        findings: Vec::new(),
        views: Vec::new(),
        questions: out.join("questions.csv"),
    };
    let mut csv = csv::Writer::from_writer(Vec::new());
    csv.write_record(["image", "question", "reference", "type"])?;
    for r in records {
        if set.images.len() == n {
            break;
        }
        let (Some(report), Some(found)) = (
            r.sections().and_then(|s| s.stage1_text()),
            findings.get(&r.image_id),
        ) else {
            continue;
        };
        // Absolute: `ask --from` reads relative paths against the CSV's own folder.
        let image = std::path::absolute(&r.image_path)?.display().to_string();
        let pairs = cxr_instruct::synth_vqa::from_findings(found);
        for q in cxr_instruct::synth_vqa::choose(pairs, QUESTIONS_PER_IMAGE, &mut rng) {
            csv.write_record([image.as_str(), &q.question, &q.answer, &q.kind])?;
        }
        set.image_ids.push(r.image_id.clone());
        set.images.push(r.image_path.clone());
        set.reports.push(report);
        set.findings.push(found.clone());
        set.views.push(if r.view.as_deref() == Some("AP") {
            cxr_phantom::View::Ap
        } else {
            cxr_phantom::View::Pa
        });
    }
    anyhow::ensure!(
        set.images.len() == n,
        "{}: only {} frontal test images with reports and findings, {n} wanted",
        data.display(),
        set.images.len()
    );
    write_atomic(&set.questions, &csv.into_inner()?)?;
    Ok(set)
}

/// The `report` column of what `llm-cxr report --out` wrote, in order.
pub fn read_generated_reports(reports_csv: &Path) -> anyhow::Result<Vec<String>> {
    let mut reader = csv::Reader::from_path(reports_csv)
        .with_context(|| format!("reading {}", reports_csv.display()))?;
    reader
        .records()
        .map(|r| Ok(r?.get(1).unwrap_or("").to_string()))
        .collect()
}

/// `ask --from`'s input for the control: each case's questions asked of the next case's image.
pub fn write_shuffled_questions(test: &TestSet, out: &Path) -> anyhow::Result<()> {
    let n = test.images.len();
    let absolute =
        |p: &Path| -> anyhow::Result<String> { Ok(std::path::absolute(p)?.display().to_string()) };
    let index: std::collections::HashMap<String, usize> = test
        .images
        .iter()
        .enumerate()
        .map(|(i, p)| Ok((absolute(p)?, i)))
        .collect::<anyhow::Result<_>>()?;
    let mut reader = csv::Reader::from_path(&test.questions)
        .with_context(|| format!("reading {}", test.questions.display()))?;
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(reader.headers()?)?;
    for row in reader.records() {
        let row = row?;
        let i = *index.get(&row[0]).with_context(|| {
            format!(
                "{}: {} is not a test case",
                test.questions.display(),
                &row[0]
            )
        })?;
        let mut fields: Vec<String> = row.iter().map(str::to_string).collect();
        fields[0] = absolute(&test.images[(i + 1) % n])?;
        w.write_record(&fields)?;
    }
    write_atomic(out, &w.into_inner()?)
}

/// `eval report`'s input: each generated report beside the truth of its image, or with
/// `shift` > 0 beside the truth of the case `shift` further on (the control).
pub fn write_pairs(
    reports_csv: &Path,
    truth: &[String],
    shift: usize,
    out: &Path,
) -> anyhow::Result<()> {
    let generated = read_generated_reports(reports_csv)?;
    anyhow::ensure!(
        generated.len() == truth.len(),
        "{}: {} reports for {} images",
        reports_csv.display(),
        generated.len(),
        truth.len()
    );
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["generated", "reference"])?;
    for (i, r) in truth.iter().enumerate() {
        w.write_record([&generated[(i + shift) % generated.len()], r])?;
    }
    write_atomic(out, &w.into_inner()?)
}

/// Side and severity verdicts over a set of images.
#[derive(serde::Serialize)]
pub struct Judged {
    pub judged: usize,
    pub obeyed: usize,
    pub rate: Option<f64>,
    pub verdicts: Vec<Vec<cxr_phantom::judge::Verdict>>,
}

/// Judges whether each image shows its test case's findings on the reported side and at the
/// reported severity, and writes the verdicts to `out`.
pub fn judge_images(images: &[PathBuf], test: &TestSet, out: &Path) -> anyhow::Result<Judged> {
    use rayon::prelude::*;
    let judge = cxr_phantom::judge::AttributeJudge::default();
    let cfg = cxr_image::Preprocess {
        size: judge.size,
        channels: 1,
    };
    let verdicts = images
        .par_iter()
        .enumerate()
        .map(|(i, path)| {
            let img = cxr_image::load_image(path)
                .with_context(|| format!("loading {}", path.display()))?;
            let x = cxr_image::preprocess(&img, &cfg);
            Ok(judge.judge(&x.data, &test.findings[i], test.views[i]))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let judged = verdicts.iter().map(Vec::len).sum::<usize>();
    let obeyed = verdicts.iter().flatten().filter(|v| v.obeyed()).count();
    let result = Judged {
        judged,
        obeyed,
        rate: (judged > 0).then(|| obeyed as f64 / judged as f64),
        verdicts,
    };
    write_atomic(out, &serde_json::to_vec_pretty(&result)?)?;
    Ok(result)
}

/// The plain instructions answered by the base model and by the fine-tuned one (cached), both
/// run on `device`.
pub fn plain_answers(
    base: &Path,
    tuned: &Path,
    cache: &Path,
    device: &candle_core::Device,
) -> anyhow::Result<Vec<(String, String, String)>> {
    if let Some(cached) = std::fs::read(cache)
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<(String, String, String)>>(&b).ok())
    {
        if std::fs::metadata(cache)?.modified()?
            >= std::fs::metadata(tuned.join("model.safetensors"))?.modified()?
        {
            return Ok(cached);
        }
    }
    let instructions: Vec<String> = PLAIN_INSTRUCTIONS.iter().map(|s| s.to_string()).collect();
    let mut answers = Vec::new();
    for path in [base, tuned] {
        let lm = cxr_lm::LanguageModel::load(path, cxr_lm::WeightMode::Inference, device)
            .with_context(|| format!("loading {}", path.display()))?;
        answers.push(answer_greedy(&lm, &instructions, 96)?);
    }
    let out: Vec<(String, String, String)> = instructions
        .into_iter()
        .zip(answers[0].iter().zip(&answers[1]))
        .map(|(q, (b, t))| (q, b.clone(), t.clone()))
        .collect();
    write_atomic(cache, &serde_json::to_vec_pretty(&out)?)?;
    Ok(out)
}

/// `eval image`'s input for the control: the image drawn for the next case beside each case's
/// report.
pub fn write_shuffled_draws(drawn: &[PathBuf], test: &TestSet, out: &Path) -> anyhow::Result<()> {
    let n = drawn.len();
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["image", "report"])?;
    for i in 0..n {
        let drawn_next = std::path::absolute(&drawn[(i + 1) % n])?;
        w.write_record([drawn_next.display().to_string().as_str(), &test.reports[i]])?;
    }
    write_atomic(out, &w.into_inner()?)
}
