//! Training the VQ-GAN as taming's `VQModel` with `VQLPIPSWithDiscriminator` trains it, with
//! LLM-CXR's clinical-information-preserving (CIP) loss in place of LPIPS (whose VGG weights
//! cannot be had offline):
//!
//! `loss = L1(x, x̂) + cip_weight * mse(features2(x), features2(x̂))
//!        + d_weight * disc_factor * (-mean(D(x̂))) + codebook_weight * quant_loss`
//!
//! with taming's adaptive `d_weight = |∇_W nll| / (|∇_W g| + 1e-4)` at the decoder's last layer
//! `W`, clamped to [0, 1e4] and scaled by `disc_weight`; the discriminator (PatchGAN, hinge loss)
//! starts at `disc_start`. Both networks use Adam with taming's betas (0.5, 0.9).
//!
//! The classifier (DenseNet-121 `features2`) is frozen and pluggable; it sees the image at the
//! VQ-GAN's resolution, channel mean, scaled to torchxrayvision's [-1024, 1024].
//!
//! Dead codes can be restarted: every `restart_every` steps, codes unused since the last
//! restart take the value of a random encoder output of the current batch.
//!
//! Everything a resumed run needs is in `checkpoint.safetensors`: generator, discriminator, both
//! optimizers' moments, the step, the code-usage counts; the data order and the restart draws
//! come from `(seed, step)`, so a killed run resumes to the same weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use cxr_classifier::{txv_scale, DenseNet};
use cxr_train::image_batch::{load_image_batch, ImageBatchError};
use cxr_train::{
    batch_indices, save_checkpoint, AdamW, AdamWConfig, GradAccumulator, Resume, ResumeError,
    RunRecord, TrainError,
};

use crate::discriminator::{hinge_d_loss, Discriminator};
use crate::{vqgan_input, VqModel, VqganConfig};

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub steps: u64,
    /// Images per micro-batch.
    pub batch: usize,
    /// Micro-batches whose gradients are summed before each update.
    pub grad_accum: usize,
    pub lr: f64,
    pub seed: u64,
    pub cip_weight: f64,
    /// Step at which the clinical-information loss joins (0: from the start). From scratch, a
    /// few hundred steps of reconstruction first keep the feature loss from dominating.
    pub cip_start: u64,
    pub codebook_weight: f64,
    pub disc_start: u64,
    pub disc_weight: f64,
    /// Restart unused codes every this many steps (0: never).
    pub restart_every: u64,
    pub checkpoint_every: u64,
    /// Output folder: `checkpoint.safetensors` (resumed when present), `vqgan.safetensors`.
    pub out: PathBuf,
    /// Generator weights to start from (e.g. a taming checkpoint) instead of from scratch.
    pub init: Option<PathBuf>,
    /// Where the networks train; a resumed checkpoint is loaded onto it.
    pub device: Device,
}

/// The defaults of `llm-cxr vqgan train` (which reads them from here): a from-scratch run, the
/// clinical-information loss after 500 steps of reconstruction, the discriminator after 1,000.
impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            steps: 2000,
            batch: 4,
            grad_accum: 1,
            lr: 2e-4,
            seed: 1,
            cip_weight: 100.0,
            cip_start: 500,
            codebook_weight: 1.0,
            disc_start: 1000,
            disc_weight: 0.8,
            restart_every: 50,
            checkpoint_every: 100,
            out: PathBuf::from("vqgan-run"),
            init: None,
            device: Device::Cpu,
        }
    }
}

/// The losses of one step (means over its micro-batches).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Losses {
    pub l1: f32,
    pub cip: f32,
    pub quant: f32,
    pub g: f32,
    pub d: f32,
    pub d_weight: f32,
}

#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    pub step: u64,
    pub losses: Losses,
    pub images_per_s: f64,
    /// Codes restarted at this step.
    pub restarted: usize,
}

pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const WEIGHTS: &str = "vqgan.safetensors";

#[derive(Debug, thiserror::Error)]
pub enum VqganTrainError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// A training image cannot be read or turned into an input (the error names the file).
    #[error(transparent)]
    Image(#[from] ImageBatchError),
    /// The generator weights to start from (`init`) cannot be read.
    #[error("{path}: {message}")]
    Init { path: PathBuf, message: String },
    #[error(transparent)]
    Resume(#[from] ResumeError),
}

/// PyTorch's default initialisation for the generator (convolutions uniform in
/// ±1/sqrt(fan_in), norms 1 / 0, codebook uniform in ±1/n_embed) and taming's `weights_init` for
/// the discriminator (convolutions N(0, 0.02), BatchNorm N(1, 0.02) / 0), from a seeded stream in
/// name order.
fn initialise(varmap: &VarMap, seed: u64) -> candle_core::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let vars: BTreeMap<String, Var> = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let fan_in = |weight: &str| -> usize {
        vars.get(weight)
            .map(|w| w.dims()[1..].iter().product::<usize>())
            .unwrap_or(1)
            .max(1)
    };
    for (name, var) in &vars {
        let shape = var.shape().clone();
        let n = shape.elem_count();
        let disc = name.contains("discriminator");
        let is_norm = shape.rank() == 1
            && vars.contains_key(&name.replace(".weight", ".running_mean"))
            || name.contains("norm");
        let mut normal = |mean: f32, std: f32| -> Vec<f32> {
            (0..n)
                .map(|_| cxr_train::sample_normal(&mut rng, mean, std))
                .collect()
        };
        let values: Vec<f32> = if name.ends_with("running_var") {
            vec![1.0; n]
        } else if name.ends_with("running_mean") {
            vec![0.0; n]
        } else if name.ends_with("embedding.weight") {
            let b = 1.0 / shape.dims()[0] as f32;
            (0..n).map(|_| rng.random_range(-b..b)).collect()
        } else if is_norm && name.ends_with("weight") {
            if disc {
                normal(1.0, 0.02)
            } else {
                vec![1.0; n]
            }
        } else if is_norm && name.ends_with("bias") {
            vec![0.0; n]
        } else if disc && name.ends_with("weight") {
            normal(0.0, 0.02)
        } else {
            let weight = name.replace(".bias", ".weight");
            let b = 1.0 / (fan_in(&weight) as f32).sqrt();
            (0..n).map(|_| rng.random_range(-b..b)).collect()
        };
        var.set(&Tensor::from_vec(values, shape, var.device())?)?;
    }
    Ok(())
}

fn load_images(
    paths: &[PathBuf],
    idx: &[usize],
    config: &VqganConfig,
    device: &Device,
) -> Result<Tensor, VqganTrainError> {
    let chosen: Vec<&PathBuf> = idx.iter().map(|&i| &paths[i]).collect();
    Ok(load_image_batch(&chosen, |img| {
        vqgan_input(img, config, device)
    })?)
}

/// `∂(sum(conv(input, W) * grad_out)) / ∂W`: the gradient a loss with output gradient
/// `grad_out` gives the conv's weight.
fn conv_weight_grad(
    conv: &cxr_ops::conv::Conv2d,
    input: &Tensor,
    grad_out: &Tensor,
) -> candle_core::Result<Tensor> {
    let w = Var::from_tensor(&conv.weight().detach())?;
    let out = cxr_ops::conv::conv2d(
        &input.detach(),
        w.as_tensor(),
        conv.stride(),
        conv.padding(),
    )?;
    let grads = (out * grad_out)?.sum_all()?.backward()?;
    Ok(grads
        .get(w.as_tensor())
        .cloned()
        .unwrap_or(w.as_tensor().zeros_like()?))
}

fn norm(t: &Tensor) -> candle_core::Result<f32> {
    t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()
}

/// A training run in progress.
pub struct Trainer<'a> {
    pub config: VqganConfig,
    pub model: VqModel,
    disc: Discriminator,
    classifier: Option<&'a DenseNet>,
    varmap: VarMap,
    gen_vars: Vec<Var>,
    disc_vars: Vec<Var>,
    opt_g: AdamW,
    opt_d: AdamW,
    /// Per-code use count since the last restart.
    usage: Vec<u32>,
    pub step: u64,
    opts: TrainOptions,
    device: Device,
    /// What the run is made of (hyperparameters, initial weights), checked on resume.
    record: RunRecord,
    /// The training images' fingerprint, taken at the first step.
    data: Option<String>,
    /// The checkpoint resumed from and its metadata, for the data check at the first step.
    resumed: Option<(PathBuf, BTreeMap<String, String>)>,
}

fn named_vars(varmap: &VarMap, disc: bool) -> Vec<(String, Var)> {
    let mut v: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .filter(|(k, _)| k.starts_with("loss.discriminator") == disc)
        .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

impl<'a> Trainer<'a> {
    /// A fresh run, or the one in `opts.out` resumed.
    pub fn new(
        config: &VqganConfig,
        classifier: Option<&'a DenseNet>,
        opts: &TrainOptions,
    ) -> Result<Self, VqganTrainError> {
        let device = opts.device.clone();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let model = VqModel::new(config, vb.clone())?;
        let disc = Discriminator::new(config.out_ch, 64, 3, vb.pp("loss.discriminator"))?;
        initialise(&varmap, opts.seed)?;
        if let Some(init) = &opts.init {
            let src = cxr_classifier::var_builder(init, &device)?;
            for (name, var) in named_vars(&varmap, false) {
                let t = src
                    .get(var.shape().clone(), &name)
                    .map_err(|e| VqganTrainError::Init {
                        path: init.clone(),
                        message: e.to_string(),
                    })?;
                var.set(&t)?;
            }
        }
        let adam = AdamWConfig {
            lr: opts.lr,
            beta1: 0.5,
            beta2: 0.9,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let gen = named_vars(&varmap, false);
        let dis = named_vars(&varmap, true);
        let init_fingerprint = cxr_train::file_fingerprint(opts.init.as_deref()).map_err(|e| {
            VqganTrainError::Init {
                path: opts.init.clone().unwrap_or_default(),
                message: e.to_string(),
            }
        })?;
        let record = RunRecord::new()
            .with("initial weights", init_fingerprint)
            .with("learning rate", format!("{:e}", opts.lr))
            .with("batch", opts.batch)
            .with("gradient accumulation", opts.grad_accum.max(1))
            .with("seed", opts.seed)
            .with(
                "clinical-information loss",
                if classifier.is_some() { "on" } else { "off" },
            )
            .with("clinical-information weight", opts.cip_weight)
            .with("clinical-information start", opts.cip_start)
            .with("codebook weight", opts.codebook_weight)
            .with("discriminator start", opts.disc_start)
            .with("discriminator weight", opts.disc_weight)
            .with("code restarts every", opts.restart_every);
        let mut trainer = Self {
            config: config.clone(),
            gen_vars: gen.iter().map(|(_, v)| v.clone()).collect(),
            disc_vars: dis.iter().map(|(_, v)| v.clone()).collect(),
            opt_g: AdamW::new(gen, adam)?,
            opt_d: AdamW::new(dis, adam)?,
            model,
            disc,
            classifier,
            varmap,
            usage: vec![0; config.n_embed],
            step: 0,
            opts: opts.clone(),
            device,
            record,
            data: None,
            resumed: None,
        };
        let ck = opts.out.join(CHECKPOINT);
        if ck.is_file() {
            trainer.resume(&ck)?;
        }
        Ok(trainer)
    }

    fn resume(&mut self, path: &Path) -> Result<(), VqganTrainError> {
        let ck = Resume::open(path)?;
        let step: u64 = ck.require("step")?;
        let saved: VqganConfig = ck
            .metadata
            .get("config")
            .and_then(|c| serde_json::from_str(c).ok())
            .ok_or_else(|| ck.refuse("no VQ-GAN config in metadata"))?;
        if saved != self.config {
            return Err(ck
                .refuse(format!(
                    "was written for another config ({saved:?}); use a new output folder"
                ))
                .into());
        }
        ck.check_record(&self.record)?;
        // The record holds the seed too; checkpoints written before it carry it alone.
        ck.check_setting("seed", &self.opts.seed)?;
        ck.restore(self.varmap.data().lock().expect("varmap lock").iter())?;
        // The discriminator's optimizer starts at disc_start: its bias correction counts its own.
        ck.restore_optimizer(&mut self.opt_g, ck.require("generator_updates")?)?;
        ck.restore_optimizer(&mut self.opt_d, ck.require("discriminator_updates")?)?;
        self.usage = ck
            .tensor("train.code_usage")?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|u| u as u32)
            .collect();
        self.step = step;
        self.resumed = Some((ck.path, ck.metadata));
        Ok(())
    }

    /// On the first step: the training images' fingerprint, refused when a resumed
    /// checkpoint was trained on others.
    fn check_data(&mut self, paths: &[PathBuf]) -> Result<(), VqganTrainError> {
        if self.data.is_some() {
            return Ok(());
        }
        let data = cxr_train::files_fingerprint(paths);
        if let Some((path, meta)) = &self.resumed {
            RunRecord::new()
                .with("training images", &data)
                .compare(meta)
                .map_err(|reason| ResumeError {
                    path: path.clone(),
                    reason,
                })?;
        }
        self.data = Some(data);
        Ok(())
    }

    /// Writes the checkpoint and the generator's weights (taming names, config in the metadata).
    pub fn save(&self) -> Result<(), VqganTrainError> {
        let all: Vec<(String, Tensor)> = self
            .varmap
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let config = serde_json::to_string(&self.config).expect("config serialises");
        let weights: Vec<(String, Tensor)> = all
            .iter()
            .filter(|(k, _)| !k.starts_with("loss."))
            .cloned()
            .collect();
        save_checkpoint(
            &self.opts.out.join(WEIGHTS),
            &weights,
            &BTreeMap::from([("config".to_string(), config.clone())]),
        )?;
        let mut tensors = all;
        tensors.extend(self.opt_g.state());
        tensors.extend(self.opt_d.state());
        let usage: Vec<f32> = self.usage.iter().map(|&u| u as f32).collect();
        tensors.push((
            "train.code_usage".into(),
            Tensor::from_vec(usage, self.config.n_embed, &self.device)?,
        ));
        let mut meta = BTreeMap::from([
            ("step".to_string(), self.step.to_string()),
            ("seed".to_string(), self.opts.seed.to_string()),
            ("config".to_string(), config),
            (
                "generator_updates".to_string(),
                self.opt_g.steps().to_string(),
            ),
            (
                "discriminator_updates".to_string(),
                self.opt_d.steps().to_string(),
            ),
        ]);
        self.record.write_to(&mut meta);
        if let Some(data) = &self.data {
            RunRecord::new()
                .with("training images", data)
                .write_to(&mut meta);
        }
        Ok(save_checkpoint(
            &self.opts.out.join(CHECKPOINT),
            &tensors,
            &meta,
        )?)
    }

    /// One update (all micro-batches); the images are indices into `paths`.
    pub fn step(&mut self, paths: &[PathBuf]) -> Result<StepReport, VqganTrainError> {
        self.check_data(paths)?;
        let started = std::time::Instant::now();
        let o = self.opts.clone();
        let accum = o.grad_accum.max(1);
        let idx = batch_indices(paths.len(), o.batch * accum, o.seed, self.step);
        let disc_on = self.step >= o.disc_start;
        let mut losses = Losses::default();
        let (mut grads_g, mut grads_d) = (GradAccumulator::new(), GradAccumulator::new());
        let mut latents_for_restart = None;
        for micro in idx.chunks(o.batch) {
            let x = load_images(paths, micro, &self.config, &self.device)?;
            let rec = self.model.reconstruct(&x)?;
            for c in rec.indices.flatten_all()?.to_vec1::<u32>()? {
                self.usage[c as usize] = self.usage[c as usize].saturating_add(1);
            }
            // Gradients with respect to the reconstruction, through each loss.
            let xr = Var::from_tensor(&rec.image.detach())?;
            let l1 = (x.detach() - xr.as_tensor())?.abs()?.mean_all()?;
            let mut nll = l1.clone();
            let cip_on = o.cip_weight > 0.0 && self.step >= o.cip_start;
            if let (Some(cls), true) = (self.classifier, cip_on) {
                let f_in = cls.features2(&txv_scale(&x)?, false)?.detach();
                let f_rec = cls.features2(&txv_scale(xr.as_tensor())?, false)?;
                let cip = (f_rec - f_in)?.sqr()?.mean_all()?;
                losses.cip += cip.to_scalar::<f32>()? / accum as f32;
                nll = (nll + (cip * o.cip_weight)?)?;
            }
            let g_nll = nll
                .backward()?
                .get(xr.as_tensor())
                .cloned()
                .ok_or_else(|| {
                    candle_core::Error::Msg("no gradient at the reconstruction".into())
                })?;
            let mut grad_image = g_nll.clone();
            if disc_on {
                let g_loss = self
                    .disc
                    .forward_t(xr.as_tensor(), true)?
                    .mean_all()?
                    .neg()?;
                let g_g = g_loss
                    .backward()?
                    .get(xr.as_tensor())
                    .cloned()
                    .unwrap_or(xr.as_tensor().zeros_like()?);
                let last = self.model.last_layer();
                let n_nll = norm(&conv_weight_grad(last, &rec.pre_out, &g_nll)?)?;
                let n_g = norm(&conv_weight_grad(last, &rec.pre_out, &g_g)?)?;
                let d_weight = (n_nll / (n_g + 1e-4)).clamp(0.0, 1e4) * o.disc_weight as f32;
                grad_image = (grad_image + (g_g * d_weight as f64)?)?;
                losses.g += g_loss.to_scalar::<f32>()? / accum as f32;
                losses.d_weight += d_weight / accum as f32;
                // The discriminator's step, on this micro-batch's real and reconstructed images.
                let real = self.disc.forward_t(&x.detach(), true)?;
                let fake = self.disc.forward_t(&xr.as_tensor().detach(), true)?;
                let d_loss = (hinge_d_loss(&real, &fake)? / accum as f64)?;
                losses.d += d_loss.to_scalar::<f32>()?;
                grads_d.add(d_loss.backward()?, &self.disc_vars)?;
            }
            // One backward through the generator: sum(x̂ * ∂L/∂x̂) + codebook_weight * quant.
            let surrogate = ((rec.image * grad_image.detach())?.sum_all()?
                + (&rec.quant_loss * o.codebook_weight)?)?;
            grads_g.add((surrogate / accum as f64)?.backward()?, &self.gen_vars)?;
            losses.l1 += l1.to_scalar::<f32>()? / accum as f32;
            losses.quant += rec.quant_loss.to_scalar::<f32>()? / accum as f32;
            latents_for_restart = Some(rec.latents);
        }
        self.opt_g
            .step(&grads_g.finish().expect("at least one micro-batch"))?;
        if let Some(g) = grads_d.finish() {
            self.opt_d.step(&g)?;
        }
        self.step += 1;
        let mut restarted = 0;
        if o.restart_every > 0 && self.step.is_multiple_of(o.restart_every) {
            restarted = self.restart_dead_codes(&latents_for_restart.expect("latents"))?;
        }
        if self.step.is_multiple_of(o.checkpoint_every.max(1)) || self.step == o.steps {
            self.save()?;
        }
        Ok(StepReport {
            step: self.step,
            losses,
            images_per_s: idx.len() as f64 / started.elapsed().as_secs_f64(),
            restarted,
        })
    }

    /// Codes unused since the last restart take random encoder outputs of `latents`
    /// (B, embed_dim, h, w); the draw comes from `(seed, step)`.
    fn restart_dead_codes(&mut self, latents: &Tensor) -> Result<usize, VqganTrainError> {
        let dead: Vec<usize> = (0..self.usage.len())
            .filter(|&i| self.usage[i] == 0)
            .collect();
        self.usage.iter_mut().for_each(|u| *u = 0);
        if dead.is_empty() {
            return Ok(0);
        }
        let (b, c, h, w) = latents.dims4()?;
        let pool = latents
            .detach()
            .permute((0, 2, 3, 1))?
            .reshape((b * h * w, c))?
            .to_vec2::<f32>()?;
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.opts.seed ^ self.step.wrapping_mul(0xA24B_AED4_963E_E407),
        );
        let var = self
            .varmap
            .data()
            .lock()
            .expect("varmap lock")
            .get("quantize.embedding.weight")
            .cloned()
            .expect("codebook var");
        let mut book = var.as_tensor().to_vec2::<f32>()?;
        for &k in &dead {
            book[k] = pool[rng.random_range(0..pool.len())].clone();
        }
        let flat: Vec<f32> = book.into_iter().flatten().collect();
        var.set(&Tensor::from_vec(flat, var.shape().clone(), &self.device)?)?;
        Ok(dead.len())
    }

    /// Reconstructions of `x` (B, C, R, R) in [-1, 1], in eval mode.
    pub fn reconstruct(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.model.decode(&self.model.encode(x)?)
    }
}
