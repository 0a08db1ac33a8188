//! Instruction fine-tuning of a whole model (every weight trained), as LLM-CXR does: AdamW
//! (weight decay 0 by default, as HF's default in the reference), a linear warmup then a constant
//! learning rate, gradient accumulation and clipping, the loss on response tokens only, and a
//! validation loss.
//!
//! Resumable: a checkpoint holds every weight, the AdamW moments and the step; the data
//! position follows from the step alone (`cxr_train::batch_indices`, one seeded permutation per
//! epoch) and nothing else is random, so a run killed at any point and resumed ends with the
//! same weights as one never stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use cxr_lm::{CausalLm, ImageVocab, LmConfig, WeightMode};
use cxr_train::{
    batch_indices, save_checkpoint, AdamW, AdamWConfig, GradAccumulator, LossScale, Precision,
    Resume, ResumeError,
};

use crate::Tokenized;

/// The checkpoint's file name inside the output folder.
pub const CHECKPOINT: &str = "checkpoint.safetensors";

#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    #[error(transparent)]
    Lm(#[from] cxr_lm::LmError),
    #[error(transparent)]
    Train(#[from] cxr_train::TrainError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// The model to train cannot be read or fingerprinted.
    #[error("{path}: {reason}")]
    Model { path: PathBuf, reason: String },
    #[error(transparent)]
    Resume(#[from] ResumeError),
    #[error("{0}")]
    Data(String),
    /// The model was loaded onto another device than the options train on (for candle, two
    /// handles of one GPU made apart are two devices).
    #[error(
        "the model was loaded onto another device ({model:?}) than the run trains on ({run:?}): \
         load it onto the options' device"
    )]
    Device {
        model: candle_core::DeviceLocation,
        run: candle_core::DeviceLocation,
    },
}

#[derive(Debug, Clone)]
pub struct FinetuneOptions {
    /// Optimizer steps in all (each of `micro_batch` x `grad_accum` samples).
    pub steps: u64,
    pub lr: f64,
    /// The model's image vocabulary: with it, each position's softmax runs over the part of
    /// the vocabulary its target is in ([`response_nll_in`]), as generation constrains.
    pub modes: Option<ImageVocab>,
    /// The id of image code 0 and the rate of the image codes' rows (embedding and head):
    /// fresh rows need to travel far, and at the base's rate they barely move (measured: 2e-4
    /// moves them 0.002 in 60 steps against a text-row spread of 0.14). The warmup scales it.
    pub image_lr: Option<(u32, f64)>,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub micro_batch: usize,
    pub grad_accum: usize,
    /// Gradients are scaled down to this global L2 norm when above it (0: no clipping).
    pub clip_norm: f64,
    pub seed: u64,
    pub checkpoint_every: u64,
    /// Validation loss every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Output folder: the checkpoint, and `model/` at the end.
    pub out: PathBuf,
    /// Where the model trains: the [`Trainable`] must be loaded onto it, and a resumed
    /// checkpoint is.
    pub device: Device,
    /// The matrix products' type (f32 master weights in every precision); f16 adds a dynamic
    /// loss scale. On the CPU a half type is emulated (slow): it is for GPUs.
    pub precision: Precision,
    /// f16's loss scale at the start of a run (`LossScale::INITIAL`, as PyTorch's GradScaler);
    /// a resumed run takes its checkpoint's.
    pub initial_loss_scale: f64,
}

/// The defaults of `llm-cxr train` (which reads them from here): the paper's rate and warmup.
impl Default for FinetuneOptions {
    fn default() -> Self {
        FinetuneOptions {
            steps: 100,
            lr: 5e-6,
            modes: None,
            image_lr: None,
            warmup_steps: 50,
            weight_decay: 0.0,
            micro_batch: 1,
            grad_accum: 1,
            clip_norm: 1.0,
            seed: 42,
            checkpoint_every: 50,
            eval_every: 0,
            out: PathBuf::from("finetune"),
            device: Device::Cpu,
            precision: Precision::F32,
            initial_loss_scale: LossScale::INITIAL,
        }
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    pub step: u64,
    /// Mean loss per response token over the step's samples.
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens fed (prompt and response, no padding).
    pub tokens: usize,
    /// Forward, backward and update (validation and checkpoint writing excluded).
    pub seconds: f64,
    /// False when the gradients overflowed the f16 loss scale and the update was skipped.
    pub applied: bool,
    pub validation_loss: Option<f64>,
}

/// The learning rate of step `step` (1-based): linear warmup to `lr`, then constant.
pub fn learning_rate(opts: &FinetuneOptions, step: u64) -> f64 {
    if opts.warmup_steps == 0 || step >= opts.warmup_steps {
        opts.lr
    } else {
        opts.lr * step as f64 / opts.warmup_steps as f64
    }
}

/// Right-padded ids (b, t) of a micro-batch, and for the loss the flat positions whose next
/// token is a response token with those targets.
fn batch_tensors(
    samples: &[&Tokenized],
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let t = samples.iter().map(|s| s.ids.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(samples.len() * t);
    let (mut positions, mut targets) = (Vec::new(), Vec::new());
    for (b, s) in samples.iter().enumerate() {
        ids.extend(&s.ids);
        ids.extend(std::iter::repeat_n(0u32, t - s.ids.len()));
        // Position p predicts token p + 1; count it where p + 1 carries loss.
        let mask = s.loss_mask();
        for p in s.response_start.max(1) - 1..s.ids.len() - 1 {
            if mask[p + 1] {
                positions.push((b * t + p) as u32);
                targets.push(s.ids[p + 1]);
            }
        }
    }
    Ok((
        Tensor::from_vec(ids, (samples.len(), t), device)?,
        Tensor::new(positions.as_slice(), device)?,
        Tensor::new(targets.as_slice(), device)?,
    ))
}

/// Summed negative log-likelihood of the response tokens of a micro-batch, and their count.
pub fn response_nll(
    model: &CausalLm,
    samples: &[&Tokenized],
) -> candle_core::Result<(Tensor, usize)> {
    response_nll_in(model, samples, None)
}

/// [`response_nll`], with the softmax of each position over the part of the vocabulary its
/// target is in when `modes` is given: image codes among the codes only, text among the text
/// only. Generation constrains the same way (`report` never draws a code, `draw` only codes),
/// so training is spared pushing 49,000 text logits below the codes and back.
pub fn response_nll_in(
    model: &CausalLm,
    samples: &[&Tokenized],
    modes: Option<&ImageVocab>,
) -> candle_core::Result<(Tensor, usize)> {
    let device = model.device();
    let (ids, positions, targets) = batch_tensors(samples, device)?;
    let n = positions.dim(0)?;
    if n == 0 {
        return Ok((Tensor::zeros((), DType::F32, device)?, 0));
    }
    let h = model.forward_hidden(&ids)?;
    let (b, t, hidden) = h.dims3()?;
    let picked = h.reshape((b * t, hidden))?.index_select(&positions, 0)?;
    let logits = model.head().forward(&picked)?;
    let Some(vocab) = modes else {
        let nll = cxr_ops::loss::cross_entropy_rows(&logits, &targets)?.sum_all()?;
        return Ok((nll, n));
    };
    let ids: Vec<u32> = targets.to_vec1()?;
    let (mut nll, base) = (Tensor::zeros((), DType::F32, device)?, vocab.base);
    for image in [false, true] {
        let rows: Vec<u32> = (0..n as u32)
            .filter(|&r| vocab.ids().contains(&ids[r as usize]) == image)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let r = Tensor::new(rows.as_slice(), device)?;
        let (part, want) = if image {
            let want: Vec<u32> = rows.iter().map(|&r| ids[r as usize] - base).collect();
            (
                logits
                    .index_select(&r, 0)?
                    .narrow(1, base as usize, vocab.codes as usize)?,
                want,
            )
        } else {
            let want: Vec<u32> = rows.iter().map(|&r| ids[r as usize]).collect();
            (
                logits.index_select(&r, 0)?.narrow(1, 0, base as usize)?,
                want,
            )
        };
        let want = Tensor::new(want.as_slice(), device)?;
        nll = (nll + cxr_ops::loss::cross_entropy_rows(&part.contiguous()?, &want)?.sum_all()?)?;
    }
    Ok((nll, n))
}

/// Mean response-token loss over `samples` (no gradients kept).
pub fn evaluate(
    model: &CausalLm,
    samples: &[Tokenized],
    micro_batch: usize,
    modes: Option<&ImageVocab>,
) -> candle_core::Result<f64> {
    let (mut total, mut count) = (0.0, 0usize);
    let refs: Vec<&Tokenized> = samples.iter().collect();
    for chunk in refs.chunks(micro_batch.max(1)) {
        let (nll, n) = response_nll_in(model, chunk, modes)?;
        total += nll.detach().to_scalar::<f32>()? as f64;
        count += n;
    }
    Ok(total / count.max(1) as f64)
}

/// A model loaded for training: the network, its config, and its variables by name (every
/// weight, or with LoRA only the adapters).
pub struct Trainable {
    pub model: CausalLm,
    pub config: LmConfig,
    pub vars: Vec<(String, candle_core::Var)>,
    /// With LoRA: the base model directory (whose weights stay frozen) and the adapters' config.
    pub lora: Option<(PathBuf, cxr_lm::LoraConfig)>,
    /// The base model's fingerprint (`cxr_train::model_dir_fingerprint`), which a resumed
    /// checkpoint must share.
    pub base: String,
}

impl Trainable {
    /// Every weight trained, loaded onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, FinetuneError> {
        let (model, config, weights) = CausalLm::load_hf(dir, WeightMode::Train, device)?;
        let mut net = Self::assemble(model, config, &weights, None);
        net.base = base_fingerprint(dir)?;
        Ok(net)
    }

    /// LoRA: the base weights frozen (float inference layout), adapters on `lora.targets`, all
    /// loaded onto `device`.
    pub fn load_lora(
        dir: &Path,
        lora: cxr_lm::LoraConfig,
        device: &Device,
    ) -> Result<Self, FinetuneError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| FinetuneError::Model {
            path: config_path.clone(),
            reason: e.to_string(),
        })?;
        let config = LmConfig::from_json(&text, &config_path.display().to_string())?;
        let weights = cxr_lm::Weights::read_hf(dir, WeightMode::Inference, device)?
            .with_lora(lora.clone())?;
        let model = CausalLm::new(&config, &weights)?;
        let mut net = Self::assemble(model, config, &weights, Some((dir.to_path_buf(), lora)));
        net.base = base_fingerprint(dir)?;
        if net.vars.is_empty() {
            return Err(FinetuneError::Data(format!(
                "no linear layer of {} is named {:?}",
                dir.display(),
                net.lora.as_ref().map(|l| &l.1.targets)
            )));
        }
        Ok(net)
    }

    /// A model from tensors under HF names, which live on `device` (benchmarks build random
    /// ones).
    pub fn from_tensors(
        config: &LmConfig,
        tensors: std::collections::HashMap<String, cxr_lm::weights::Weight>,
        device: &Device,
    ) -> Result<Self, FinetuneError> {
        let weights = cxr_lm::Weights::new(tensors, "tensors", WeightMode::Train, device);
        let model = CausalLm::new(config, &weights)?;
        let mut net = Self::assemble(model, config.clone(), &weights, None);
        let mut f = cxr_train::Fingerprint::new();
        for (name, var) in &net.vars {
            f.str(&format!("{name} {:?}", var.dims()));
        }
        net.base = format!("tensors {}", f.finish());
        Ok(net)
    }

    fn assemble(
        model: CausalLm,
        config: LmConfig,
        weights: &cxr_lm::Weights,
        lora: Option<(PathBuf, cxr_lm::LoraConfig)>,
    ) -> Self {
        let mut vars = weights.vars();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Trainable {
            model,
            config,
            vars,
            lora,
            base: String::new(),
        }
    }

    /// The trained variables under their names (what a checkpoint holds).
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// Every weight of the model under its HF name; with LoRA, the base weights with the
    /// adapters merged in (W + alpha/rank · B·A), so the result loads without adapter code.
    pub fn model_tensors(&self) -> Result<Vec<(String, Tensor)>, FinetuneError> {
        let Some((base, cfg)) = &self.lora else {
            return Ok(self.tensors());
        };
        // In host memory: the merged copy is for saving, and a GPU holds the model already.
        let cpu = candle_core::Device::Cpu;
        let mut tensors = cxr_lm::weights::read_hf_tensors(base, &cpu)?;
        let vars: std::collections::HashMap<&str, &candle_core::Var> =
            self.vars.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let scale = cfg.alpha / cfg.rank as f64;
        for (name, a) in &vars {
            let Some(module) = name.strip_suffix(".lora_A.weight") else {
                continue;
            };
            let b = vars[format!("{module}.lora_B.weight").as_str()];
            let key = format!("{module}.weight");
            let w = tensors.get(&key).ok_or_else(|| {
                FinetuneError::Data(format!(
                    "{}: no {key} to merge the adapter into",
                    base.display()
                ))
            })?;
            let delta = (b.as_tensor().matmul(a.as_tensor())? * scale)?.to_device(&cpu)?;
            let merged = (w + delta)?;
            tensors.insert(key, merged);
        }
        let mut out: Vec<(String, Tensor)> = tensors.into_iter().collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

fn base_fingerprint(dir: &Path) -> Result<String, FinetuneError> {
    cxr_train::model_dir_fingerprint(dir).map_err(|e| FinetuneError::Model {
        path: dir.to_path_buf(),
        reason: format!("cannot fingerprint the base model: {e}"),
    })
}

/// Refuses a sample this model cannot train on, naming it.
fn check_sample(s: &Tokenized, config: &LmConfig) -> Result<(), FinetuneError> {
    let (vocab, max_len) = (config.vocab_size() as u32, config.max_position_embeddings());
    let reason = if s.ids.len() < 2 {
        format!("has {} tokens; training needs at least two", s.ids.len())
    } else if s.ids.len() > max_len {
        format!(
            "has {} tokens, more than the model's {max_len} positions (build with a lower --max-tokens)",
            s.ids.len()
        )
    } else if s.ids.iter().any(|&i| i >= vocab) {
        format!("has a token id outside the model's {vocab} rows (built for another model?)")
    } else {
        return Ok(());
    };
    Err(FinetuneError::Data(format!("sample {} {reason}", s.source)))
}

/// Trains (or resumes from `opts.out/checkpoint.safetensors`) and returns the trained model.
pub fn finetune(
    net: Trainable,
    train: &[Tokenized],
    validation: &[Tokenized],
    opts: &FinetuneOptions,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<Trainable, FinetuneError> {
    finetune_rank(net, train, validation, opts, &cxr_train::Single, on_step)
}

/// [`finetune`] as one rank of a data-parallel run: each step's `grad_accum` micro-batches are
/// dealt to the ranks in turn (micro-batch k to rank k mod world), their gradients summed over
/// the ranks, and every rank takes the same update, so a step is the step one rank would take
/// (up to the order of the sums). Rank 0 validates and writes the checkpoint; every rank
/// resumes from it. `net` lives on `opts.device`, this rank's device.
pub fn finetune_rank(
    net: Trainable,
    train: &[Tokenized],
    validation: &[Tokenized],
    opts: &FinetuneOptions,
    ranks: &dyn cxr_train::Ranks,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<Trainable, FinetuneError> {
    /// Stops the other ranks when this one leaves early (an error, a panic), instead of
    /// leaving them waiting for its gradients.
    struct AbortUnlessDone<'a>(&'a dyn cxr_train::Ranks, bool);
    impl Drop for AbortUnlessDone<'_> {
        fn drop(&mut self) {
            if !self.1 {
                self.0.abort();
            }
        }
    }
    let mut guard = AbortUnlessDone(ranks, false);
    if train.is_empty() {
        return Err(FinetuneError::Data("no training samples".into()));
    }
    let (rank, world) = (ranks.rank(), ranks.world());
    if !opts.grad_accum.max(1).is_multiple_of(world) {
        return Err(FinetuneError::Data(format!(
            "{world} ranks share each step's micro-batches: the accumulation steps ({}) must be \
             a multiple of the rank count",
            opts.grad_accum
        )));
    }
    for s in train.iter().chain(validation) {
        check_sample(s, &net.config)?;
    }
    if !net.model.device().same_device(&opts.device) {
        return Err(FinetuneError::Device {
            model: net.model.device().location(),
            run: opts.device.location(),
        });
    }
    let mut opt = AdamW::new(
        net.vars.clone(),
        AdamWConfig {
            lr: opts.lr,
            weight_decay: opts.weight_decay,
            ..Default::default()
        },
    )?;
    if let Some((first, lr)) = opts.image_lr {
        if opts.lr <= 0.0 {
            return Err(FinetuneError::Data(
                "the image rows' rate is set relative to a learning rate of 0".into(),
            ));
        }
        let mut found = false;
        for name in cxr_lm::image_vocab::vocab_tables(&net.config) {
            found |= opt.set_tail_lr(name, first as usize, lr / opts.lr);
        }
        if !found {
            tracing::warn!(
                "the image rows' learning rate is set but no vocabulary table is trained (LoRA?)"
            );
        }
    }
    let ck = opts.out.join(CHECKPOINT);
    let record = crate::run_identity::run_record(&net, train, opts);
    let mut step = 0u64;
    let mut loss_scale = LossScale::for_precision(opts.precision, opts.initial_loss_scale);
    if ck.is_file() {
        step = resume(&ck, &net, &mut opt, &mut loss_scale, opts, &record)?;
        tracing::info!("resumed from {} at step {step}", ck.display());
    }
    let per_step = opts.micro_batch.max(1) * opts.grad_accum.max(1);
    while step < opts.steps {
        let started = std::time::Instant::now();
        let lr = learning_rate(opts, step + 1);
        opt.config.lr = lr;
        let idx = batch_indices(train.len(), per_step, opts.seed, step);
        let chosen: Vec<&Tokenized> = idx.iter().map(|&i| &train[i]).collect();
        let counted: usize = chosen.iter().map(|s| s.loss_tokens()).sum();
        let mut grads = GradAccumulator::new();
        let mut loss_sum = 0.0;
        let factor = loss_scale.map_or(1.0, |s| s.scale);
        let mine = chosen
            .chunks(opts.micro_batch.max(1))
            .skip(rank)
            .step_by(world);
        for micro in mine {
            let (nll, _) = opts
                .precision
                .autocast(|| response_nll_in(&net.model, micro, opts.modes.as_ref()))?;
            loss_sum += nll.detach().to_scalar::<f32>()? as f64;
            // Mean over the step's response tokens, as one big batch would give (then scaled
            // for f16; by 1.0, exactly, otherwise).
            let g = ((nll / counted.max(1) as f64)? * factor)?.backward()?;
            grads.add(g, net.vars.iter().map(|(_, var)| var))?;
        }
        let mut grads = grads.finish().expect("each rank has a micro-batch");
        cxr_train::ranks::all_reduce_grads(ranks, &mut grads, net.vars.iter().map(|(_, v)| v))?;
        if world > 1 {
            let sum = Tensor::new(loss_sum as f32, &opts.device)?;
            loss_sum = ranks.all_reduce_sum(&sum)?.to_scalar::<f32>()? as f64;
        }
        let grad_norm = opt.grad_norm(&grads)? / factor;
        let applied = loss_scale.as_mut().is_none_or(|s| s.update(grad_norm));
        if applied {
            let clip = if opts.clip_norm > 0.0 && grad_norm > opts.clip_norm {
                opts.clip_norm / (grad_norm + 1e-6)
            } else {
                1.0
            };
            opt.step_scaled(&grads, clip / factor)?;
        } else {
            let scale = loss_scale.map_or(1.0, |s| s.scale);
            if scale < LossScale::SMALLEST {
                return Err(FinetuneError::Data(format!(
                    "step {}: the gradients are not finite at any f16 loss scale (down to \
                     {scale:e}): the run diverged or a sample holds a NaN; try bf16 or a lower \
                     learning rate",
                    step + 1
                )));
            }
            tracing::warn!(
                "step {}: the f16 gradients overflowed; update skipped, loss scale now {scale}",
                step + 1
            );
        }
        let seconds = started.elapsed().as_secs_f64();
        step += 1;
        let eval_now = rank == 0
            && !validation.is_empty()
            && ((opts.eval_every > 0 && step.is_multiple_of(opts.eval_every))
                || step == opts.steps);
        let validation_loss = if eval_now {
            Some(evaluate(
                &net.model,
                validation,
                opts.micro_batch,
                opts.modes.as_ref(),
            )?)
        } else {
            None
        };
        if rank == 0 && (step.is_multiple_of(opts.checkpoint_every.max(1)) || step == opts.steps) {
            save(&ck, &net, &opt, loss_scale, step, opts, &record)?;
        }
        on_step(&StepReport {
            step,
            loss: loss_sum / counted.max(1) as f64,
            lr,
            grad_norm,
            tokens: chosen.iter().map(|s| s.ids.len()).sum(),
            seconds,
            applied,
            validation_loss,
        });
    }
    guard.1 = true;
    Ok(net)
}

#[allow(clippy::too_many_arguments)]
fn save(
    path: &Path,
    net: &Trainable,
    opt: &AdamW,
    loss_scale: Option<LossScale>,
    step: u64,
    opts: &FinetuneOptions,
    record: &cxr_train::RunRecord,
) -> Result<(), FinetuneError> {
    let mut tensors = net.tensors();
    tensors.extend(opt.state());
    let mut meta = BTreeMap::from([
        ("step".to_string(), step.to_string()),
        ("seed".to_string(), opts.seed.to_string()),
        (
            "samples_per_step".to_string(),
            (opts.micro_batch.max(1) * opts.grad_accum.max(1)).to_string(),
        ),
        ("objective".to_string(), objective(opts)),
        ("precision".to_string(), opts.precision.to_string()),
        ("optimizer_updates".to_string(), opt.steps().to_string()),
    ]);
    if let Some(s) = loss_scale {
        s.write_to(&mut meta);
    }
    record.write_to(&mut meta);
    Ok(save_checkpoint(path, &tensors, &meta)?)
}

/// The loss and rates a checkpoint was trained with, as its metadata records them.
fn objective(opts: &FinetuneOptions) -> String {
    let softmax = if opts.modes.is_some() {
        "codes among codes and text among text"
    } else {
        "full softmax"
    };
    match opts.image_lr {
        Some((_, lr)) => format!("{softmax}, image rows at {lr:e}"),
        None => format!("{softmax}, image rows at the base rate"),
    }
}

fn resume(
    path: &Path,
    net: &Trainable,
    opt: &mut AdamW,
    loss_scale: &mut Option<LossScale>,
    opts: &FinetuneOptions,
    record: &cxr_train::RunRecord,
) -> Result<u64, FinetuneError> {
    let ck = Resume::open(path)?;
    let step: u64 = ck.require("step")?;
    ck.check_record(record)?;
    let per_step = (opts.micro_batch.max(1) * opts.grad_accum.max(1)) as u64;
    // Checkpoints from before the objective was recorded trained the full softmax at one rate.
    let theirs = ck
        .metadata
        .get("objective")
        .cloned()
        .unwrap_or_else(|| "full softmax, image rows at the base rate".into());
    if theirs != objective(opts) {
        return Err(ck
            .refuse(format!(
                "was trained with {theirs}, this run asks for {}; use a new output folder",
                objective(opts)
            ))
            .into());
    }
    // The run record holds both since it exists; checkpoints written before it carry them alone.
    ck.check_setting("seed", &opts.seed)?;
    ck.check_setting("samples_per_step", &per_step)?;
    // Checkpoints from before precisions were recorded trained in f32.
    if opts.precision != Precision::F32 || ck.metadata.contains_key("precision") {
        ck.check_setting("precision", &opts.precision)?;
    }
    if loss_scale.is_some() {
        *loss_scale = Some(
            LossScale::read_from(&ck.metadata)
                .ok_or_else(|| ck.refuse("no loss scale in metadata"))?,
        );
    }
    ck.restore(net.vars.iter().map(|(name, var)| (name, var)))?;
    // An f16 run skips the updates whose gradients overflowed; earlier checkpoints made one a step.
    let updates = ck.get("optimizer_updates").unwrap_or(step);
    ck.restore_optimizer(opt, updates)?;
    Ok(step)
}
