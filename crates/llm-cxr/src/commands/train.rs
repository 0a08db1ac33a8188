//! `llm-cxr train`: instruction fine-tuning on shards from `llm-cxr data build`, one stage or a
//! pipeline of stages (each starting from the previous stage's model).

use std::path::{Path, PathBuf};

use anyhow::Context;

use cxr_instruct::build::read_shards;
use cxr_instruct::finetune::{finetune, FinetuneOptions, StepReport, Trainable};

#[derive(clap::Args, serde::Serialize)]
pub struct Args {
    /// Model to start from: an HF directory with LLM-CXR's image vocabulary (`llm-cxr lm init`,
    /// or a previous run's OUT/model).
    #[arg(long, required_unless_present = "pipeline")]
    pub model: Option<PathBuf>,
    /// Training shards (`llm-cxr data build --out`).
    #[arg(long, required_unless_present = "pipeline")]
    pub data: Option<PathBuf>,
    /// Validation shards (built from the validate split); their loss is logged and plotted.
    #[arg(long)]
    pub validation: Option<PathBuf>,
    /// A JSON pipeline instead of --model/--data: {"model": DIR, "stages": [{"name": "stage1",
    /// "data": DIR, "validation": DIR, "steps": N, "lr": X}, ...]}; stage k starts from stage
    /// k-1's model and writes OUT/<name>. Omitted stage fields take the flags' values.
    #[arg(long, conflicts_with_all = ["model", "data", "validation"])]
    pub pipeline: Option<PathBuf>,
    /// Output folder: checkpoint.safetensors, train-log.csv, loss-curve.png, and model/ (an HF
    /// directory) at the end. A killed run resumes from its checkpoint when started again.
    #[arg(long)]
    pub out: PathBuf,
    /// Optimizer steps.
    #[arg(long, default_value_t = FinetuneOptions::default().steps)]
    pub steps: u64,
    /// Peak learning rate (the paper: 5e-6 for dolly-v2-3b).
    #[arg(long, default_value_t = FinetuneOptions::default().lr)]
    pub lr: f64,
    /// Learning rate of the image codes' rows (embedding and head; default: --lr). Fresh rows
    /// barely move at a fine-tuning rate: `demo` gives them 5e-3, 25x its --lr.
    #[arg(long)]
    pub image_lr: Option<f64>,
    /// Each response token's softmax over the whole vocabulary, as LLM-CXR trains. By default a
    /// code is scored among the codes and a text token among the text, as generation
    /// constrains them.
    #[arg(long)]
    pub full_softmax: bool,
    /// Linear warmup steps, then the rate stays constant (the paper: 50).
    #[arg(long, default_value_t = FinetuneOptions::default().warmup_steps)]
    pub warmup: u64,
    #[arg(long, default_value_t = FinetuneOptions::default().weight_decay)]
    pub weight_decay: f64,
    /// Samples per forward pass.
    #[arg(long, default_value_t = FinetuneOptions::default().micro_batch)]
    pub micro_batch: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = FinetuneOptions::default().grad_accum)]
    pub grad_accum: usize,
    /// Global gradient-norm clip (0: none).
    #[arg(long, default_value_t = FinetuneOptions::default().clip_norm)]
    pub clip: f64,
    #[arg(long, default_value_t = FinetuneOptions::default().seed)]
    pub seed: u64,
    #[arg(long, default_value_t = FinetuneOptions::default().checkpoint_every)]
    pub checkpoint_every: u64,
    /// Validation loss every N steps (0: at the end only).
    #[arg(long, default_value_t = FinetuneOptions::default().eval_every)]
    pub eval_every: u64,
    /// LoRA rank: train low-rank adapters on frozen weights instead of every weight (0: full
    /// fine-tuning). The saved model has the adapters merged in.
    #[arg(long, default_value_t = 0)]
    pub lora_rank: usize,
    /// LoRA scale numerator: the update is scaled by alpha / rank.
    #[arg(long, default_value_t = cxr_lm::LoraConfig::DEFAULT_ALPHA)]
    pub lora_alpha: f64,
    /// Linear layers that get adapters, by their last name component; default: PEFT's for the
    /// architecture (GPT-NeoX query_key_value; LLaMA q_proj, v_proj).
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Vec<String>,
    /// The matrix products' type: f32, or bf16 / f16 with f32 master weights (mixed precision,
    /// for GPUs; the CPU emulates the half types, slowly). f16 adds a dynamic loss scale.
    #[arg(long, default_value_t = cxr_train::Precision::F32)]
    pub precision: cxr_train::Precision,
    /// Data-parallel ranks: each step's --grad-accum micro-batches are dealt to N copies of the
    /// model, one per rank, and their gradients summed; the step is the one a single rank takes.
    /// With --device cuda:K, rank r runs on GPU K + r (NCCL; `--features nccl`); on the CPU the
    /// ranks are threads sharing the cores (for checking). --grad-accum must be a multiple of N.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub ranks: u64,
    #[command(flatten)]
    #[serde(flatten)]
    pub device: super::device::DeviceArg,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Pipeline {
    model: PathBuf,
    stages: Vec<StageSpec>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StageSpec {
    name: String,
    data: PathBuf,
    validation: Option<PathBuf>,
    steps: Option<u64>,
    lr: Option<f64>,
    warmup: Option<u64>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let stages = match &args.pipeline {
        None => vec![(
            args.model.clone().expect("clap requires --model"),
            args.data.clone().expect("clap requires --data"),
            args.validation.clone(),
            args.out.clone(),
            args.steps,
            args.lr,
            args.warmup,
        )],
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let p: Pipeline = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a pipeline", path.display()))?;
            anyhow::ensure!(!p.stages.is_empty(), "{}: no stages", path.display());
            let mut model = p.model;
            let mut out = Vec::new();
            for s in p.stages {
                let dir = args.out.join(&s.name);
                out.push((
                    model.clone(),
                    s.data,
                    s.validation,
                    dir.clone(),
                    s.steps.unwrap_or(args.steps),
                    s.lr.unwrap_or(args.lr),
                    s.warmup.unwrap_or(args.warmup),
                ));
                model = dir.join("model");
            }
            out
        }
    };
    for (model, data, validation, out, steps, lr, warmup) in stages {
        let opts = FinetuneOptions {
            steps,
            lr,
            modes: None,
            image_lr: None,
            warmup_steps: warmup,
            weight_decay: args.weight_decay,
            micro_batch: args.micro_batch,
            grad_accum: args.grad_accum,
            clip_norm: args.clip,
            seed: args.seed,
            checkpoint_every: args.checkpoint_every,
            eval_every: args.eval_every,
            out,
            device: args.device.open()?,
            precision: args.precision,
            ..Default::default()
        };
        stage(&model, &data, validation.as_deref(), &opts, &args)?;
    }
    Ok(())
}

/// Written beside the saved model: `{"global_step": N}`, as transformers' Trainer names it.
pub const TRAINER_STATE: &str = "trainer_state.json";

/// One stage: train, log, plot, save the model.
fn stage(
    model: &Path,
    data: &Path,
    validation: Option<&Path>,
    opts: &FinetuneOptions,
    args: &Args,
) -> anyhow::Result<()> {
    // One run per output folder: a second one fails here, naming the first's pid.
    let _lock = cxr_data::OutputLock::acquire(&opts.out)?;
    let final_dir = opts.out.join("model");
    // A finished stage records its step count; asked for more steps, it continues from its
    // checkpoint (the learning-rate schedule and data order depend on the step alone).
    let state_path = final_dir.join(TRAINER_STATE);
    let trained = std::fs::read_to_string(&state_path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["global_step"].as_u64());
    if trained.is_some_and(|t| t >= opts.steps) {
        tracing::info!(
            "{} holds {} steps: stage already done",
            final_dir.display(),
            trained.unwrap_or_default()
        );
        return Ok(());
    }
    let (manifest, train) = read_shards(data)?;
    let validation = match validation {
        Some(v) => read_shards(v)?.1,
        None => Vec::new(),
    };
    let (tokenizer, image_vocab) = cxr_lm::load_tokenizer(model)?;
    anyhow::ensure!(
        manifest.image_vocab.is_none() || manifest.image_vocab == image_vocab,
        "{} was built for image vocabulary {:?}, but {} has {:?}",
        data.display(),
        manifest.image_vocab,
        model.display(),
        image_vocab
    );
    anyhow::ensure!(
        args.image_lr.is_none() || image_vocab.is_some(),
        "--image-lr: {} has no image vocabulary (make it with `llm-cxr lm init`)",
        model.display()
    );
    let opts = &FinetuneOptions {
        modes: image_vocab.filter(|_| !args.full_softmax),
        image_lr: args.image_lr.zip(image_vocab).map(|(lr, v)| (v.base, lr)),
        ..opts.clone()
    };
    let lora = if args.lora_rank == 0 {
        None
    } else {
        let config_path = model.join("config.json");
        let config = cxr_lm::LmConfig::from_json(
            &std::fs::read_to_string(&config_path)
                .with_context(|| format!("reading {}", config_path.display()))?,
            &config_path.display().to_string(),
        )?;
        let targets = if args.lora_targets.is_empty() {
            cxr_lm::LoraConfig::default_targets(&config)
        } else {
            args.lora_targets.clone()
        };
        Some(cxr_lm::LoraConfig {
            rank: args.lora_rank,
            alpha: args.lora_alpha,
            targets,
            seed: args.seed,
        })
    };
    let load = {
        let model = model.to_path_buf();
        move |device: &candle_core::Device| -> anyhow::Result<Trainable> {
            Ok(match &lora {
                None => Trainable::load(&model, device)?,
                Some(l) => Trainable::load_lora(&model, l.clone(), device)?,
            })
        }
    };
    tracing::info!(
        "{}: {} training samples, {} validation samples, {} steps of {} samples",
        model.display(),
        train.len(),
        validation.len(),
        opts.steps,
        opts.micro_batch * opts.grad_accum
    );
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let log_path = opts.out.join("train-log.csv");
    let mut log = std::fs::read_to_string(&log_path)
        .unwrap_or_else(|_| "step,loss,validation_loss,lr,grad_norm,tokens_per_s\n".into());
    let bar = super::progress(opts.steps, "train");
    let mut write_error = None;
    let mut on_step = |r: &StepReport| {
        bar.set_position(r.step);
        let tps = r.tokens as f64 / r.seconds.max(1e-9);
        bar.set_message(format!("loss {:.3}, {tps:.0} tok/s", r.loss));
        log += &format!(
            "{},{:.6},{},{:.3e},{:.4},{tps:.1}\n",
            r.step,
            r.loss,
            r.validation_loss
                .map_or(String::new(), |v| format!("{v:.6}")),
            r.lr,
            r.grad_norm
        );
        if r.step.is_multiple_of(opts.checkpoint_every.max(1)) || r.step == opts.steps {
            if let Err(e) = super::write_atomic(&log_path, log.as_bytes())
                .and_then(|_| write_curve(&opts.out, &log))
            {
                write_error = Some(e);
            }
        }
    };
    let training = || format!("training into {}", opts.out.display());
    let net = if args.ranks <= 1 {
        finetune(load(&opts.device)?, &train, &validation, opts, &mut on_step)
            .with_context(training)?
    } else {
        super::data_parallel::finetune(
            args.ranks as usize,
            args.device.device,
            load,
            train,
            validation,
            opts,
            &mut on_step,
        )
        .with_context(training)?
    };
    bar.finish();
    if let Some(e) = write_error {
        return Err(e);
    }
    // The step count is written with the model, in the same folder swap: a stage is never
    // recorded done over a torn model.
    let state = serde_json::json!({"global_step": opts.steps}).to_string();
    let mut extra: Vec<(&str, &[u8])> = vec![(TRAINER_STATE, state.as_bytes())];
    // The VQ-GAN the base model was made for (`lm init --vqgan`) stays recorded beside it.
    let identity_path = model.join(cxr_vqgan::identity::IDENTITY_FILE);
    let identity = match std::fs::read(&identity_path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", identity_path.display())),
    };
    if let Some(bytes) = &identity {
        extra.push((cxr_vqgan::identity::IDENTITY_FILE, bytes));
    }
    cxr_lm::save_hf_with(
        &final_dir,
        &net.config,
        &net.model_tensors()?,
        &tokenizer,
        image_vocab,
        &extra,
    )?;
    println!("model written to {}", final_dir.display());
    Ok(())
}

/// loss-curve.png: training loss per step and the validation loss where measured.
fn write_curve(out: &Path, log: &str) -> anyhow::Result<()> {
    let column = |i: usize| -> Vec<(f64, f64)> {
        log.lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                Some((f.first()?.parse().ok()?, f.get(i)?.parse().ok()?))
            })
            .collect()
    };
    let mut series = vec![("train", column(1))];
    let val = column(2);
    if !val.is_empty() {
        series.push(("validation", val));
    }
    let png = crate::plot::line_chart("Instruction fine-tuning", "step", "loss", &series, true)?;
    super::write_atomic(&out.join("loss-curve.png"), &png)
}
