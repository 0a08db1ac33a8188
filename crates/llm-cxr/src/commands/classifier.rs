//! `llm-cxr classifier train`: the DenseNet-121 classifier on any dataset with CheXpert labels.

use std::path::{Path, PathBuf};

use anyhow::Context;

use cxr_classifier::train::{examples, save_weights, train, TrainOptions, CHECKPOINT};
use cxr_classifier::{txv_input, DenseNetConfig};
use cxr_data::{open_dataset, DatasetKind, Split};
use cxr_eval::image_metrics::image_metrics;
use cxr_eval::report_metrics::UncertainPolicy;
use cxr_train::image_batch::load_image_batch;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Train (or resume) the classifier on a dataset's train split, then score it on the
    /// held-out split in the paper's Table 4 layout. Killed runs resume from OUT/checkpoint.safetensors.
    Train(TrainArgs),
}

#[derive(clap::Args, serde::Serialize)]
pub struct TrainArgs {
    /// Dataset folder or file (default layout: a MIMIC-CXR-JPG or phantom tree).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, value_enum, default_value = "mimic")]
    #[serde(serialize_with = "super::value_enum::name")]
    pub kind: DatasetKind,
    /// Output folder: checkpoint, train-log.csv, classifier.safetensors, eval.json.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = TrainOptions::default().steps)]
    pub steps: u64,
    #[arg(long, default_value_t = TrainOptions::default().batch)]
    pub batch: usize,
    #[arg(long, default_value_t = TrainOptions::default().lr)]
    pub lr: f64,
    /// Input side; torchxrayvision's layout is 224.
    #[arg(long, default_value_t = TrainOptions::default().size)]
    pub size: u32,
    #[arg(long, default_value_t = TrainOptions::default().seed)]
    pub seed: u64,
    #[arg(long, default_value_t = TrainOptions::default().checkpoint_every)]
    pub checkpoint_every: u64,
    /// Start from these weights (e.g. torchxrayvision's, as safetensors) instead of from scratch.
    #[arg(long)]
    pub init: Option<PathBuf>,
    #[command(flatten)]
    #[serde(flatten)]
    pub device: super::device::DeviceArg,
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    let Command::Train(args) = cmd;
    // One run per output folder: a second one fails here, naming the first's pid.
    let _lock = cxr_data::OutputLock::acquire(&args.out)?;
    let ds = open_dataset(args.kind, &args.data)?;
    let records = ds.records();
    let train_records: Vec<_> = records
        .iter()
        .filter(|r| r.split.is_none_or(|s| s == Split::Train))
        .cloned()
        .collect();
    let held_out: Vec<_> = records
        .iter()
        .filter(|r| r.split == Some(Split::Test))
        .cloned()
        .collect();
    let train_examples = examples(&train_records);
    anyhow::ensure!(
        !train_examples.is_empty(),
        "{}: no labelled training images",
        args.data.display()
    );
    let config = DenseNetConfig::densenet121_txv();
    let log_path = args.out.join("train-log.csv");
    let mut log =
        std::fs::read_to_string(&log_path).unwrap_or_else(|_| "step,loss,images_per_s\n".into());
    let bar = super::progress(args.steps, "train");
    let opts = TrainOptions {
        steps: args.steps,
        batch: args.batch,
        lr: args.lr,
        size: args.size,
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
        out: args.out.clone(),
        init: args.init.clone(),
        device: args.device.open()?,
    };
    let mut write_error = None;
    let model = train(&config, &train_examples, &opts, &mut |r| {
        bar.set_position(r.step);
        bar.set_message(format!("loss {:.4}", r.loss));
        log += &format!("{},{},{:.2}\n", r.step, r.loss, r.images_per_s);
        if r.step % opts.checkpoint_every.max(1) == 0 || r.step == opts.steps {
            if let Err(e) = super::write_atomic(&log_path, log.as_bytes()) {
                write_error = Some(e);
            }
        }
    })
    .with_context(|| format!("training into {}", args.out.display()))?;
    bar.finish();
    if let Some(e) = write_error {
        return Err(e);
    }
    let weights = save_weights(&args.out, &args.out.join(CHECKPOINT))?;
    tracing::info!("weights written to {}", weights.display());

    if held_out.is_empty() {
        tracing::warn!("no test split: skipping the held-out evaluation");
        return Ok(());
    }
    let eval_bar = super::progress(held_out.len() as u64, "evaluate");
    let mut probs = Vec::new();
    for chunk in held_out.chunks(args.batch.max(1)) {
        let paths: Vec<&Path> = chunk.iter().map(|r| r.image_path.as_path()).collect();
        let x = load_image_batch(&paths, |img| txv_input(img, args.size, model.device()))?;
        let p = cxr_classifier::candle_nn::ops::sigmoid(&model.forward_t(&x, false)?)?;
        for row in p.to_vec2::<f32>()? {
            let mut a = [0f32; 18];
            a.copy_from_slice(&row[..18]);
            probs.push(a);
        }
        eval_bar.inc(chunk.len() as u64);
    }
    eval_bar.finish_and_clear();
    let labels: Vec<_> = held_out
        .iter()
        .map(|r| r.labels.unwrap_or_default())
        .collect();
    let table = image_metrics(&probs, &labels, 0.5, UncertainPolicy::Negative);
    super::write_atomic(
        &args.out.join("eval.json"),
        serde_json::to_string_pretty(&table)?.as_bytes(),
    )?;
    println!("{}", table.to_markdown("classifier on held-out images"));
    Ok(())
}
