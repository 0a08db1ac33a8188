//! `llm-cxr vqgan`: train the image tokenizer, turn images into token files and back, and
//! measure how faithful it is.

use std::path::{Path, PathBuf};

use anyhow::Context;

use cxr_classifier::candle_core::{Device, Tensor};
use cxr_classifier::{DenseNet, DenseNetConfig};
use cxr_data::{open_dataset, CxrRecord, DatasetKind, Split};
use cxr_eval::VqganEvaluation;
use cxr_train::image_batch::load_image_batch;
use cxr_vqgan::identity::VqganIdentity;
use cxr_vqgan::train::{TrainOptions, Trainer, WEIGHTS};
use cxr_vqgan::{tokens, vqgan_input, VqModel, VqganConfig};

use super::device::DeviceArg;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Train (or resume) the VQ-GAN on a dataset's train split: L1 + clinical-information loss
    /// (DenseNet-121 features2, frozen) + codebook/commitment + PatchGAN hinge loss with
    /// taming's adaptive weight. Killed runs resume from OUT/checkpoint.safetensors. Writes
    /// OUT/vqgan.safetensors (taming names, config in its metadata), train-log.csv,
    /// loss-curve.png and reconstructions.png.
    Train(TrainArgs),
    /// Encode a dataset's images into token files: OUT/<image_id>.npy, a (side, side) uint16
    /// array of code indices, row-major, and OUT/vqgan.json, the VQ-GAN's identity (a SHA-256
    /// of its weights and config). Existing files of the same VQ-GAN are kept, so a killed run
    /// resumes; a folder of another VQ-GAN's codes is refused.
    Encode(EncodeArgs),
    /// Decode token files (.npy) into PNG images.
    Decode(DecodeArgs),
    /// Reconstruction quality on a dataset split: PSNR and SSIM (images in [0, 1]), codebook
    /// usage and perplexity, and how often the classifier's labels agree between each image and
    /// its reconstruction.
    Eval(EvalArgs),
}

#[derive(clap::Args, serde::Serialize)]
pub struct DataArgs {
    /// Dataset folder or file (default layout: a MIMIC-CXR-JPG or phantom tree).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, value_enum, default_value = "mimic")]
    #[serde(serialize_with = "super::value_enum::name")]
    pub kind: DatasetKind,
}

#[derive(clap::Args, serde::Serialize)]
pub struct VqganArgs {
    /// VQ-GAN weights: safetensors (as `vqgan train` writes them), or taming's .ckpt.
    #[arg(long)]
    pub vqgan: PathBuf,
    /// Config: a preset (`paper`, `demo`) or a JSON file; default: the one stored in the weights.
    #[arg(long)]
    pub config: Option<String>,
}

impl VqganArgs {
    pub fn load(&self, device: &Device) -> anyhow::Result<VqModel> {
        let config = self
            .config
            .as_deref()
            .map(VqganConfig::from_name_or_file)
            .transpose()?;
        Ok(VqModel::load_auto(&self.vqgan, config.as_ref(), device)?.0)
    }

    /// The config the weights run with: `--config`, else the one stored in the weights.
    fn config(&self) -> anyhow::Result<VqganConfig> {
        Ok(match self.config.as_deref() {
            Some(c) => VqganConfig::from_name_or_file(c)?,
            None => cxr_vqgan::stored_config(&self.vqgan)?,
        })
    }

    /// The VQ-GAN's identity (a hash of its weights and config), without loading it.
    pub fn identity(&self) -> anyhow::Result<VqganIdentity> {
        Ok(VqganIdentity::of(&self.vqgan, &self.config()?)?)
    }

    /// The model and its identity.
    pub fn load_identified(&self, device: &Device) -> anyhow::Result<(VqModel, VqganIdentity)> {
        let config = self.config()?;
        let identity = VqganIdentity::of(&self.vqgan, &config)?;
        let model = VqModel::load(&config, &self.vqgan, device)?;
        Ok((model, identity))
    }
}

#[derive(clap::Args, serde::Serialize)]
pub struct TrainArgs {
    /// Dataset folder or file; repeat to train on several at once (their train splits).
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// Layout of each --data, in the same order; the last one given applies to the rest.
    #[arg(long, value_enum, default_values = ["mimic"])]
    #[serde(serialize_with = "super::value_enum::names")]
    pub kind: Vec<DatasetKind>,
    /// A preset (`demo`: 64 px, 1 channel, 16 x 16 codes; `paper`: LLM-CXR's f16 at 256 px) or
    /// a JSON file with taming's ddconfig fields.
    #[arg(long, default_value = "demo")]
    pub config: String,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = TrainOptions::default().steps)]
    pub steps: u64,
    #[arg(long, default_value_t = TrainOptions::default().batch)]
    pub batch: usize,
    /// Micro-batches per update (gradients summed).
    #[arg(long, default_value_t = TrainOptions::default().grad_accum)]
    pub grad_accum: usize,
    /// Adam learning rate (taming: 4.5e-6 x batch when fine-tuning; from scratch, higher).
    #[arg(long, default_value_t = TrainOptions::default().lr)]
    pub lr: f64,
    #[arg(long, default_value_t = TrainOptions::default().seed)]
    pub seed: u64,
    /// DenseNet-121 weights (torchxrayvision layout) for the clinical-information loss; without
    /// them that loss is off.
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Weight of the clinical-information loss (LLM-CXR: 100).
    #[arg(long, default_value_t = TrainOptions::default().cip_weight)]
    pub cip_weight: f64,
    /// Step at which the clinical-information loss joins (from scratch: after the
    /// reconstruction has taken shape; fine-tuning: 0).
    #[arg(long, default_value_t = TrainOptions::default().cip_start)]
    pub cip_start: u64,
    #[arg(long, default_value_t = TrainOptions::default().codebook_weight)]
    pub codebook_weight: f64,
    /// Step at which the discriminator joins (taming's disc_start).
    #[arg(long, default_value_t = TrainOptions::default().disc_start)]
    pub disc_start: u64,
    #[arg(long, default_value_t = TrainOptions::default().disc_weight)]
    pub disc_weight: f64,
    /// Restart codes unused for this many steps with encoder outputs (0: off).
    #[arg(long, default_value_t = TrainOptions::default().restart_every)]
    pub restart_every: u64,
    #[arg(long, default_value_t = TrainOptions::default().checkpoint_every)]
    pub checkpoint_every: u64,
    /// Generator weights to start from (a taming .ckpt or safetensors), e.g. LLM-CXR's.
    #[arg(long)]
    pub init: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub device: DeviceArg,
}

#[derive(clap::Args, serde::Serialize)]
pub struct EncodeArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub model: VqganArgs,
    /// Folder for the token files.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub device: DeviceArg,
}

#[derive(clap::Args, serde::Serialize)]
pub struct DecodeArgs {
    /// Token files (.npy).
    #[arg(required = true)]
    pub tokens: Vec<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub model: VqganArgs,
    /// Folder for the PNGs (named after the token files).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    #[serde(flatten)]
    pub device: DeviceArg,
}

#[derive(clap::Args, serde::Serialize)]
pub struct EvalArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub model: VqganArgs,
    /// Which split to score (images without a split count as train).
    #[arg(long, value_enum, default_value = "test")]
    #[serde(serialize_with = "super::value_enum::name")]
    pub split: SplitArg,
    /// Score at most this many images (0: all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// DenseNet-121 weights for the label-agreement score.
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Where to write the JSON (also printed).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
}

#[derive(clap::ValueEnum, Clone, Copy)]
pub enum SplitArg {
    Train,
    Validate,
    Test,
    All,
}

fn split_records(records: &[CxrRecord], split: SplitArg) -> Vec<CxrRecord> {
    let want = match split {
        SplitArg::All => return records.to_vec(),
        SplitArg::Train => Split::Train,
        SplitArg::Validate => Split::Validate,
        SplitArg::Test => Split::Test,
    };
    records
        .iter()
        .filter(|r| r.split.unwrap_or(Split::Train) == want)
        .cloned()
        .collect()
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Train(a) => train(a),
        Command::Encode(a) => encode(a),
        Command::Decode(a) => decode(a),
        Command::Eval(a) => {
            evaluate(&a)?;
            Ok(())
        }
    }
}

fn load_classifier(path: &Path, device: &Device) -> anyhow::Result<DenseNet> {
    Ok(DenseNet::load(
        &DenseNetConfig::densenet121_txv(),
        path,
        device,
    )?)
}

/// Images as one VQ-GAN input batch on `device` (loaded in parallel).
pub fn load_inputs<P: AsRef<Path> + Sync>(
    paths: &[P],
    config: &VqganConfig,
    device: &Device,
) -> anyhow::Result<Tensor> {
    Ok(load_image_batch(paths, |img| {
        vqgan_input(img, config, device)
    })?)
}

/// The image paths of records.
fn paths(records: &[CxrRecord]) -> Vec<&Path> {
    records.iter().map(|r| r.image_path.as_path()).collect()
}

fn train(a: TrainArgs) -> anyhow::Result<()> {
    // One run per output folder: a second one fails here, naming the first's pid.
    let _lock = cxr_data::OutputLock::acquire(&a.out)?;
    let config = VqganConfig::from_name_or_file(&a.config)?;
    let mut records = Vec::new();
    for (i, path) in a.data.iter().enumerate() {
        let kind = a.kind[i.min(a.kind.len() - 1)];
        records.extend(open_dataset(kind, path)?.records().iter().cloned());
    }
    // Each dataset's ids are unique; across datasets they must be too.
    let names: Vec<String> = a.data.iter().map(|p| p.display().to_string()).collect();
    cxr_data::datasets::unique_ids::check_records(Path::new(&names.join(" + ")), &records)?;
    let train_paths: Vec<PathBuf> = split_records(&records, SplitArg::Train)
        .into_iter()
        .map(|r| r.image_path)
        .collect();
    anyhow::ensure!(
        !train_paths.is_empty(),
        "no training images in {:?}",
        a.data
    );
    // Fixed images for the reconstruction grid: held-out ones when there are any.
    let mut shown = split_records(&records, SplitArg::Test);
    if shown.is_empty() {
        shown = records.to_vec();
    }
    shown.truncate(8);
    let device = &a.device.open()?;
    let shown_x = load_inputs(&paths(&shown), &config, device)?;

    let classifier = a
        .classifier
        .as_deref()
        .map(|path| load_classifier(path, device))
        .transpose()?;
    if classifier.is_none() && a.cip_weight > 0.0 {
        tracing::warn!("no --classifier: training without the clinical-information loss");
    }
    let opts = TrainOptions {
        steps: a.steps,
        batch: a.batch,
        grad_accum: a.grad_accum,
        lr: a.lr,
        seed: a.seed,
        cip_weight: a.cip_weight,
        cip_start: a.cip_start,
        codebook_weight: a.codebook_weight,
        disc_start: a.disc_start,
        disc_weight: a.disc_weight,
        restart_every: a.restart_every,
        checkpoint_every: a.checkpoint_every,
        out: a.out.clone(),
        init: a.init.clone(),
        device: device.clone(),
    };
    let mut trainer = Trainer::new(&config, classifier.as_ref(), &opts)
        .with_context(|| format!("starting the run in {}", a.out.display()))?;
    if trainer.step > 0 {
        tracing::info!("resuming at step {}", trainer.step);
    }
    let log_path = a.out.join("train-log.csv");
    let header = "step,l1,cip,quant,g,d,d_weight,restarted,images_per_s\n";
    let mut log: Vec<String> = std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            l.split(',')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|s| s <= trainer.step)
        })
        .map(str::to_string)
        .collect();
    let bar = super::progress(a.steps, "vqgan");
    bar.set_position(trainer.step);
    while trainer.step < a.steps {
        let r = trainer.step(&train_paths)?;
        let l = r.losses;
        bar.set_position(r.step);
        bar.set_message(format!("L1 {:.4}", l.l1));
        log.push(format!(
            "{},{},{},{},{},{},{},{},{:.2}",
            r.step, l.l1, l.cip, l.quant, l.g, l.d, l.d_weight, r.restarted, r.images_per_s
        ));
        if r.step % a.checkpoint_every.max(1) == 0 || r.step == a.steps {
            let text = format!("{header}{}\n", log.join("\n"));
            super::write_atomic(&log_path, text.as_bytes())?;
            write_plots(&a.out, &log, &trainer, &shown_x)?;
        }
    }
    bar.finish();
    println!(
        "weights: {}\nnext: llm-cxr vqgan eval --data {} --vqgan {}",
        a.out.join(WEIGHTS).display(),
        a.data[0].display(),
        a.out.join(WEIGHTS).display()
    );
    Ok(())
}

/// The loss curves and a grid of originals (top) over reconstructions (bottom).
fn write_plots(
    out: &Path,
    log: &[String],
    trainer: &Trainer,
    shown: &Tensor,
) -> anyhow::Result<()> {
    let column = |i: usize| -> Vec<(f64, f64)> {
        log.iter()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                Some((f.first()?.parse().ok()?, f.get(i)?.parse().ok()?))
            })
            .collect()
    };
    let mut series = vec![("L1", column(1)), ("quant", column(3))];
    for (name, i) in [("CIP", 2), ("G", 4), ("D", 5)] {
        let s = column(i);
        if s.iter().any(|p| p.1 != 0.0) {
            series.push((name, s));
        }
    }
    let png = crate::plot::line_chart("VQ-GAN training losses", "step", "loss", &series, true)?;
    super::write_atomic(&out.join("loss-curve.png"), &png)?;
    let rec = trainer.reconstruct(shown)?;
    let grid = crate::plot::image_grid(&[
        cxr_vqgan::to_gray_images(shown)?,
        cxr_vqgan::to_gray_images(&rec)?,
    ])?;
    super::write_atomic(&out.join("reconstructions.png"), &grid)?;
    Ok(())
}

fn encode(a: EncodeArgs) -> anyhow::Result<()> {
    let (model, identity) = a.model.load_identified(&a.device.open()?)?;
    let config = model.config().clone();
    // The lock file lies beside the folder, which holds token files and their identity only.
    let _lock = cxr_data::OutputLock::beside(&a.out)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    // Image ids are unique (open_dataset refuses duplicates), and so are their file names.
    let ds = open_dataset(a.data.kind, &a.data.data)?;
    // Token files of this VQ-GAN are kept (a killed run resumes); another VQ-GAN's folder is
    // refused; a folder that records none (made by hand or by an older llm-cxr) is encoded anew.
    let keep_existing = match identity.check_folder(&a.out)? {
        Some(()) => true,
        None => {
            // Removed before this VQ-GAN is recorded: otherwise a run killed half-way would
            // leave them under its identity, and the next run would keep them as its own.
            let stale: Vec<PathBuf> = std::fs::read_dir(&a.out)
                .with_context(|| format!("reading {}", a.out.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "npy"))
                .collect();
            if !stale.is_empty() {
                tracing::warn!(
                    "{} holds {} token files of an unrecorded VQ-GAN: removed, every image is encoded again",
                    a.out.display(),
                    stale.len()
                );
            }
            for p in &stale {
                std::fs::remove_file(p).with_context(|| format!("removing {}", p.display()))?;
            }
            false
        }
    };
    // Recorded before any token file, so a killed run's files are known to be this VQ-GAN's.
    identity.record(&a.out)?;
    let records: Vec<CxrRecord> = ds
        .records()
        .iter()
        .filter(|r| !keep_existing || !a.out.join(tokens::file_name(&r.image_id)).is_file())
        .cloned()
        .collect();
    let bar = super::progress(records.len() as u64, "encode");
    for chunk in records.chunks(a.batch.max(1)) {
        let codes: Vec<Vec<u32>> = model
            .encode(&load_inputs(&paths(chunk), &config, model.device())?)?
            .to_vec2()?;
        for (r, c) in chunk.iter().zip(codes) {
            let c: Vec<u16> = c.into_iter().map(|v| v as u16).collect();
            let path = a.out.join(tokens::file_name(&r.image_id));
            tokens::write(&path, &c, config.grid_side())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    println!(
        "{} token files in {} (VQ-GAN {})",
        records.len(),
        a.out.display(),
        identity.sha256
    );
    Ok(())
}

fn decode(a: DecodeArgs) -> anyhow::Result<()> {
    let model = a.model.load(&a.device.open()?)?;
    let config = model.config().clone();
    let bar = super::progress(a.tokens.len() as u64, "decode");
    for path in &a.tokens {
        let (codes, side) = tokens::read(path, config.n_embed)?;
        anyhow::ensure!(
            side == config.grid_side(),
            "{}: a {side} x {side} grid, the VQ-GAN decodes {g} x {g}",
            path.display(),
            g = config.grid_side()
        );
        let idx = Tensor::from_vec(
            codes.into_iter().map(u32::from).collect::<Vec<u32>>(),
            (1, side * side),
            model.device(),
        )?;
        let img = cxr_vqgan::to_gray_images(&model.decode(&idx)?)?.remove(0);
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        let out = a.out.join(format!("{stem}.png"));
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
        super::write_atomic(&out, &png)?;
        bar.inc(1);
    }
    bar.finish();
    Ok(())
}

/// `vqgan eval`: the scores, written to --out and printed.
pub fn evaluate(a: &EvalArgs) -> anyhow::Result<VqganEvaluation> {
    let scores = eval(a)?;
    let json = serde_json::to_string_pretty(&scores)?;
    if let Some(out) = &a.out {
        super::write_atomic(out, json.as_bytes())?;
    }
    println!("{json}");
    Ok(scores)
}

/// The split's images (at most --limit) through the VQ-GAN, scored by [`VqganEvaluation`].
fn eval(a: &EvalArgs) -> anyhow::Result<VqganEvaluation> {
    // `vqgan eval` takes no --device: it runs on the CPU.
    let device = &Device::Cpu;
    let model = a.model.load(device)?;
    let classifier = a
        .classifier
        .as_deref()
        .map(|path| load_classifier(path, device))
        .transpose()?;
    let ds = open_dataset(a.data.kind, &a.data.data)?;
    let mut records = split_records(ds.records(), a.split);
    if a.limit > 0 {
        records.truncate(a.limit);
    }
    anyhow::ensure!(
        !records.is_empty(),
        "{}: no images in that split",
        a.data.data.display()
    );
    Ok(VqganEvaluation::compute(
        &model,
        classifier.as_ref(),
        &paths(&records),
        a.batch,
        &super::progress_bars(),
    )?)
}
