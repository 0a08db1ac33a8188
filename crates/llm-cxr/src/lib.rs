//! `llm-cxr`: one binary for every stage of the pipeline. Each subcommand lives in its own module
//! and calls into the library crates; this file only parses arguments and sets up logging. It is
//! a library too, for the binary (`main.rs`) and for the fuzzer, which reaches the server's upload
//! parsing through [`serve::parse_upload_form`].

mod commands;
mod html;
mod plot;
pub mod serve;

use clap::{Parser, Subcommand};

/// Read and draw chest X-rays with one instruction-finetuned language model (LLM-CXR, in Rust).
///
/// A CXR becomes 256 discrete codes through a VQ-GAN; the codes join the LLM's vocabulary and
/// the model is finetuned on CXR -> report, report -> CXR, visual questions and plain text.
/// Start with `llm-cxr demo`, which runs the whole job on the embedded phantom dataset, with no
/// data or weights of your own.
#[derive(Parser)]
#[command(name = "llm-cxr", version, propagate_version = true)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job, end to end on the embedded default: phantoms -> classifier and VQ-GAN ->
    /// SmolLM2 fine-tuned on the four tasks -> held-out evaluation -> one HTML report (cached,
    /// resumable stages; --quick for the short CI profile).
    Demo(commands::demo::Args),
    /// Generate a synthetic CXR dataset with reports and ground truth, in the MIMIC-CXR-JPG
    /// layout (files/pXX/pSUBJECT/sSTUDY/IMAGE.jpg, sSTUDY.txt, CheXpert/split/metadata CSVs).
    Phantom(commands::phantom::Args),
    /// Write the phantom gallery (one row per finding and severity, with reports) as JPEG strips
    /// and a markdown page.
    Gallery(commands::gallery::Args),
    /// Load CXR images (DICOM, PNG, JPEG) through the one loader and apply LLM-CXR's
    /// preprocessing; print statistics and optionally save what the model sees.
    Preprocess(commands::preprocess::Args),
    /// DICOM tools.
    #[command(subcommand)]
    Dicom(commands::dicom::Command),
    /// Label free-text reports with the 14 CheXpert observations (1 / 0 / -1 / blank), reading
    /// and writing the CheXpert labeler's own CSV layouts.
    Label(commands::label::Args),
    /// The DenseNet-121 CXR classifier (torchxrayvision layout).
    #[command(subcommand)]
    Classifier(commands::classifier::Command),
    /// Evaluate generated outputs against references, in the paper's tables.
    #[command(subcommand)]
    Eval(commands::eval::Command),
    /// The image tokenizer (taming VQ-GAN): train, encode images to token files, decode, evaluate.
    #[command(subcommand)]
    Vqgan(commands::vqgan::Command),
    /// Language-model preparation: `lm init` adds LLM-CXR's keys and image vocabulary to a base.
    #[command(subcommand)]
    Lm(commands::lm::Command),
    /// Talk to a language model (HF directory or GGUF): plain instructions, streamed answers.
    Chat(commands::chat::Args),
    /// Summarise a dataset (MIMIC-CXR-JPG, Open-i / R2Gen, or CSV) as llm-cxr reads it.
    Dataset(commands::dataset::Args),
    /// Instruction data: `data build` turns a dataset and its token files into training shards.
    #[command(subcommand)]
    Data(commands::data::Command),
    /// Instruction fine-tuning (every weight) on built shards: one stage or a pipeline.
    Train(commands::train::Args),
    /// Write reports for CXR images with a trained model (CXR -> report).
    Report(commands::tasks::ReportArgs),
    /// Draw CXR images for reports with a trained model (report -> CXR, through the VQ-GAN).
    Draw(commands::tasks::DrawArgs),
    /// Ask a trained model questions about a CXR image (VQA).
    Ask(commands::tasks::AskArgs),
    /// Serve a trained model over HTTP: report, draw, ask and OpenAI-compatible chat, streamed
    /// by server-sent events, batched, with a web page at / and metrics at /metrics.
    Serve(serve::Args),
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo(a) => commands::demo::run(a),
        Command::Phantom(a) => commands::phantom::run(a),
        Command::Gallery(a) => commands::gallery::run(a),
        Command::Preprocess(a) => commands::preprocess::run(a),
        Command::Dicom(c) => commands::dicom::run(c),
        Command::Dataset(a) => commands::dataset::run(a),
        Command::Data(c) => commands::data::run(c),
        Command::Train(a) => commands::train::run(a),
        Command::Report(a) => commands::tasks::report(a),
        Command::Draw(a) => commands::tasks::draw(a),
        Command::Ask(a) => commands::tasks::ask(a),
        Command::Serve(a) => serve::run(a),
        Command::Label(a) => commands::label::run(a),
        Command::Eval(c) => commands::eval::run(c),
        Command::Classifier(c) => commands::classifier::run(c),
        Command::Vqgan(c) => commands::vqgan::run(c),
        Command::Chat(a) => commands::chat::run(a),
        Command::Lm(c) => commands::lm::run(c),
    }
}

/// The `llm-cxr` program: parses the process's arguments, sets up logging, runs the command.
pub fn main() -> std::process::ExitCode {
    cxr_train::tune_cpu_runtime();
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = dispatch(cli.command);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap's consistency checks (unique argument and group names across flattened structs) run
    /// only in builds with debug assertions: `cargo test` without `--release` catches a clash.
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
