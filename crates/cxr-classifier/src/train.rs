//! Training the classifier: masked binary cross-entropy on the outputs a dataset labels, AdamW,
//! a deterministic data order, and atomic checkpoints from which a killed run resumes to the very
//! same weights.
//!
//! Weights start as torchvision initialises DenseNet (Kaiming-normal convolutions, BatchNorm 1 / 0,
//! linear bias 0), drawn from a seeded ChaCha stream so that a run is reproducible, or from given
//! weights (fine-tuning torchxrayvision's). Epoch `e` visits the examples in a permutation drawn
//! from `(seed, e)`; step `s` takes the next `batch` of that stream, so the data position is the
//! step count alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use cxr_train::image_batch::load_image_batch;
use cxr_train::{
    batch_indices, load_checkpoint, save_checkpoint, AdamW, AdamWConfig, Fingerprint, Resume,
    ResumeError, RunRecord, TrainError,
};

use crate::{txv_input, DenseNet, DenseNetConfig};

/// One training image with its targets over the 18 outputs; `mask` is 1 where a target is known.
#[derive(Debug, Clone)]
pub struct Example {
    pub image: PathBuf,
    pub targets: [f32; 18],
    pub mask: [f32; 18],
}

/// Training examples from dataset records with CheXpert labels: positive is 1, negative and
/// blank are 0, uncertain is left out (masked); outputs without a CheXpert counterpart are masked.
pub fn examples(records: &[cxr_data::CxrRecord]) -> Vec<Example> {
    records
        .iter()
        .filter_map(|r| {
            let labels = r.labels?;
            let (mut targets, mut mask) = ([0f32; 18], [0f32; 18]);
            for (o, k) in crate::CHEXPERT_OUTPUTS {
                match labels.get(o) {
                    Some(cxr_data::Label::Uncertain) => {}
                    l => {
                        targets[k] = (l == Some(cxr_data::Label::Positive)) as u8 as f32;
                        mask[k] = 1.0;
                    }
                }
            }
            Some(Example {
                image: r.image_path.clone(),
                targets,
                mask,
            })
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    /// Input side (torchxrayvision: 224).
    pub size: u32,
    pub seed: u64,
    /// Checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
    /// Where `checkpoint.safetensors` lives; an existing one is resumed.
    pub out: PathBuf,
    /// Weights to start from instead of a fresh initialisation.
    pub init: Option<PathBuf>,
    /// Where the network trains; a resumed checkpoint is loaded onto it.
    pub device: Device,
}

/// The defaults of `llm-cxr classifier train` (which reads them from here).
impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch: 8,
            lr: 1e-3,
            size: 224,
            seed: 1,
            checkpoint_every: 50,
            out: PathBuf::from("classifier-run"),
            init: None,
            device: Device::Cpu,
        }
    }
}

/// What each step reports.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    pub step: u64,
    pub loss: f32,
    pub images_per_s: f64,
}

pub const CHECKPOINT: &str = "checkpoint.safetensors";

#[derive(Debug, thiserror::Error)]
pub enum ClassifierTrainError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// A training image cannot be read or turned into an input (the error names the file).
    #[error(transparent)]
    Image(#[from] cxr_train::image_batch::ImageBatchError),
    #[error("no training examples")]
    Empty,
    /// The weights to start from (`init`) cannot be read.
    #[error("{path}: {message}")]
    Init { path: PathBuf, message: String },
    #[error(transparent)]
    Resume(#[from] ResumeError),
}

/// torchvision's DenseNet initialisation, from a seeded stream, in name order.
fn initialise(varmap: &VarMap, seed: u64) -> candle_core::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut vars: Vec<(String, candle_core::Var)> = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, var) in vars {
        let shape = var.as_tensor().shape().clone();
        let n = shape.elem_count();
        let values: Vec<f32> = if name.ends_with("running_var")
            || (name.contains("norm") && name.ends_with("weight"))
        {
            vec![1.0; n]
        } else if name.ends_with("bias") || name.ends_with("running_mean") {
            vec![0.0; n]
        } else {
            // Kaiming normal, fan-in, gain sqrt(2) (torch's kaiming_normal_ default); the linear
            // classifier uses PyTorch's default uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)).
            let dims = shape.dims();
            let fan_in: usize = dims[1..].iter().product::<usize>().max(1);
            if dims.len() == 2 {
                let bound = 1.0 / (fan_in as f32).sqrt();
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            } else {
                let std = (2.0 / fan_in as f32).sqrt();
                (0..n)
                    .map(|_| cxr_train::sample_normal(&mut rng, 0.0, std))
                    .collect()
            }
        };
        var.set(&Tensor::from_vec(values, shape, var.device())?)?;
    }
    Ok(())
}

/// Masked binary cross-entropy with logits, averaged over the known targets.
pub fn masked_bce(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    // softplus(z) - y z, with softplus(z) = max(z, 0) + ln(1 + exp(-|z|)).
    let softplus = (logits.relu()? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    let per = (softplus - (targets * logits)?)?;
    let total = (per * mask)?.sum_all()?;
    total / mask.sum_all()?.to_scalar::<f32>()?.max(1.0) as f64
}

fn load_batch(
    examples: &[Example],
    idx: &[usize],
    size: u32,
    device: &Device,
) -> Result<(Tensor, Tensor, Tensor), ClassifierTrainError> {
    let paths: Vec<&Path> = idx.iter().map(|&i| examples[i].image.as_path()).collect();
    let x = load_image_batch(&paths, |img| txv_input(img, size, device))?;
    let rows = |f: &dyn Fn(&Example) -> [f32; 18]| -> candle_core::Result<Tensor> {
        let flat: Vec<f32> = idx.iter().flat_map(|&i| f(&examples[i])).collect();
        Tensor::from_vec(flat, (idx.len(), 18), device)
    };
    Ok((x, rows(&|e| e.targets)?, rows(&|e| e.mask)?))
}

/// What a run is made of, checked on resume: the examples (each image's path and size, its
/// targets and mask, in order), the initial weights, the config and the hyperparameters. The
/// total step count may change (a run is extended), as may the checkpoint cadence.
fn run_record(
    config: &DenseNetConfig,
    examples: &[Example],
    opts: &TrainOptions,
) -> Result<RunRecord, ClassifierTrainError> {
    let mut data = Fingerprint::new();
    data.str(&cxr_train::files_fingerprint(
        &examples.iter().map(|e| &e.image).collect::<Vec<_>>(),
    ));
    for e in examples {
        for v in e.targets.iter().chain(&e.mask) {
            data.bytes(&v.to_le_bytes());
        }
    }
    let init = cxr_train::file_fingerprint(opts.init.as_deref()).map_err(|e| {
        ClassifierTrainError::Init {
            path: opts.init.clone().unwrap_or_default(),
            message: e.to_string(),
        }
    })?;
    Ok(RunRecord::new()
        .with("training data", data.finish())
        .with("initial weights", init)
        .with(
            "config",
            serde_json::to_string(config).expect("config serialises"),
        )
        .with("learning rate", format!("{:e}", opts.lr))
        .with("batch", opts.batch)
        .with("input size", opts.size)
        .with("seed", opts.seed))
}

/// Trains (or resumes) and returns the model; `on_step` sees every step.
pub fn train(
    config: &DenseNetConfig,
    examples: &[Example],
    opts: &TrainOptions,
    on_step: &mut dyn FnMut(StepReport),
) -> Result<DenseNet, ClassifierTrainError> {
    if examples.is_empty() {
        return Err(ClassifierTrainError::Empty);
    }
    let device = &opts.device;
    let varmap = VarMap::new();
    let model = DenseNet::new(config, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    initialise(&varmap, opts.seed)?;
    if let Some(init) = &opts.init {
        let mut vm = varmap.clone();
        vm.load(init).map_err(|e| ClassifierTrainError::Init {
            path: init.clone(),
            message: e.to_string(),
        })?;
    }
    let named: Vec<(String, candle_core::Var)> = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut opt = AdamW::new(
        named,
        AdamWConfig {
            lr: opts.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let ck_path = opts.out.join(CHECKPOINT);
    let record = run_record(config, examples, opts)?;
    let mut step = 0;
    if ck_path.is_file() {
        let ck = Resume::open(&ck_path)?;
        step = ck.require("step")?;
        ck.check_setting("seed", &opts.seed)?;
        ck.check_record(&record)?;
        ck.restore(varmap.data().lock().expect("varmap lock").iter())?;
        ck.restore_optimizer(&mut opt, step)?;
    }
    let save = |step: u64, opt: &AdamW| -> Result<(), ClassifierTrainError> {
        let mut tensors: Vec<(String, Tensor)> = varmap
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        tensors.extend(opt.state());
        let mut meta = BTreeMap::from([
            ("step".to_string(), step.to_string()),
            ("seed".to_string(), opts.seed.to_string()),
            (
                "config".to_string(),
                serde_json::to_string(config).expect("config serialises"),
            ),
        ]);
        record.write_to(&mut meta);
        Ok(save_checkpoint(&ck_path, &tensors, &meta)?)
    };
    while step < opts.steps {
        let started = std::time::Instant::now();
        let idx = batch_indices(examples.len(), opts.batch, opts.seed, step);
        let (x, y, m) = load_batch(examples, &idx, opts.size, device)?;
        let loss = masked_bce(&model.forward_t(&x, true)?, &y, &m)?;
        opt.step(&loss.backward()?)?;
        step += 1;
        on_step(StepReport {
            step,
            loss: loss.to_scalar::<f32>()?,
            images_per_s: idx.len() as f64 / started.elapsed().as_secs_f64(),
        });
        if step % opts.checkpoint_every.max(1) == 0 || step == opts.steps {
            save(step, &opt)?;
        }
    }
    if !ck_path.is_file() {
        // No step to take (`--steps 0`, e.g. to score `--init` weights): the start is the result.
        save(step, &opt)?;
    }
    Ok(model)
}

/// Saves a model's weights (names as torchxrayvision's) for `DenseNet::load`.
pub fn save_weights(model_dir: &Path, checkpoint: &Path) -> Result<PathBuf, ClassifierTrainError> {
    // A copy from file to file: the tensors need no device but the CPU's memory.
    let (tensors, _) = load_checkpoint(checkpoint, &Device::Cpu)?;
    let weights: Vec<(String, Tensor)> = tensors
        .into_iter()
        .filter(|(k, _)| !k.starts_with("adamw."))
        .collect();
    let path = model_dir.join("classifier.safetensors");
    save_checkpoint(&path, &weights, &BTreeMap::new())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_bce_matches_the_formula() {
        let dev = Device::Cpu;
        let z = Tensor::new(&[[2.0f32, -1.0, 0.5]], &dev).unwrap();
        let y = Tensor::new(&[[1.0f32, 0.0, 1.0]], &dev).unwrap();
        let m = Tensor::new(&[[1.0f32, 1.0, 0.0]], &dev).unwrap();
        let got = masked_bce(&z, &y, &m).unwrap().to_scalar::<f32>().unwrap();
        let bce = |z: f32, y: f32| {
            -(y * (1.0 / (1.0 + (-z).exp())).ln()
                + (1.0 - y) * (1.0 - 1.0 / (1.0 + (-z).exp())).ln())
        };
        let want = (bce(2.0, 1.0) + bce(-1.0, 0.0)) / 2.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
}
