//! `llm-cxr chat`: plain instructions to any loaded model (HF directory or GGUF), in the Alpaca
//! template LLM-CXR trains with or the model's own chat template; tokens stream to stdout.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::Context;
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use cxr_lm::{
    ChatMessage, Constraint, GenerateOptions, LanguageModel, Sampling, TextStream, WeightMode,
};

/// Where `scripts/setup.sh` puts SmolLM2-135M-Instruct: the default model of every command.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Which model to load and how.
#[derive(clap::Args, Clone, serde::Serialize)]
pub struct ModelArgs {
    /// An HF model directory (config.json, tokenizer.json, safetensors or pytorch_model.bin) or a
    /// GGUF file. `scripts/fetch-smollm2.sh` puts SmolLM2-135M-Instruct at the default path.
    #[arg(
        long,
        env = "LLMCXR_MODEL",
        default_value = DEFAULT_MODEL
    )]
    pub model: PathBuf,
    /// Quantize float linear layers on load: q8_0, q4_0, q4_1, q4k (GGUF weights stay as stored).
    #[arg(long)]
    pub quantize: Option<String>,
}

impl ModelArgs {
    pub fn load(&self, device: &Device) -> anyhow::Result<LanguageModel> {
        let mode = match self.quantize.as_deref() {
            None | Some("none") => WeightMode::Inference,
            Some(q) => WeightMode::Quantize(parse_quant(q)?),
        };
        let started = std::time::Instant::now();
        let lm = LanguageModel::load(&self.model, mode, device)
            .with_context(|| format!("loading the language model {}", self.model.display()))?;
        tracing::info!(
            "loaded {} in {:.1} s",
            self.model.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(lm)
    }
}

pub fn parse_quant(q: &str) -> anyhow::Result<GgmlDType> {
    Ok(match q.to_ascii_lowercase().as_str() {
        "q8_0" => GgmlDType::Q8_0,
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q4k" | "q4_k" => GgmlDType::Q4K,
        "q8k" | "q8_k" => GgmlDType::Q8K,
        other => anyhow::bail!("unknown quantization {other:?} (q8_0, q4_0, q4_1, q4k)"),
    })
}

/// Sampling flags shared by every generating command (defaults: LLM-CXR's).
#[derive(clap::Args, Clone, serde::Serialize)]
pub struct SamplingArgs {
    /// Temperature; 0 = greedy.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Keep the k most likely tokens; 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling mass; 1 = off.
    #[arg(long, default_value_t = 0.92)]
    pub top_p: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Debug)]
pub enum Template {
    /// The model's chat template when it has one, else Alpaca.
    Auto,
    /// LLM-CXR's Alpaca template (no-input variant).
    Alpaca,
    /// The model's own chat template (tokenizer_config.json or GGUF metadata).
    Chat,
    /// The text as given.
    Raw,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Instructions to answer (several run as one batch). Without any, reads one per line from stdin.
    #[arg(long)]
    pub prompt: Vec<String>,
    #[arg(long, value_enum, default_value_t = Template::Auto)]
    pub template: Template,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub device: super::device::DeviceArg,
}

/// An instruction as `template` renders it for `tokenizer` (Auto: its chat template when it
/// has one, else LLM-CXR's Alpaca prompt).
pub fn render_prompt(
    tokenizer: &cxr_lm::TextTokenizer,
    template: Template,
    text: &str,
) -> anyhow::Result<String> {
    Ok(match template {
        Template::Auto if tokenizer.chat_template().is_none() => cxr_instruct::prompt(text, None),
        Template::Chat | Template::Auto => tokenizer.render_chat(&[ChatMessage {
            role: "user".into(),
            content: text.to_string(),
        }])?,
        Template::Alpaca => cxr_instruct::prompt(text, None),
        Template::Raw => text.to_string(),
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let lm = args.model.load(&args.device.open()?)?;
    let render = |text: &str| render_prompt(&lm.tokenizer, args.template, text);
    let stop_ids = lm.tokenizer.stop_ids();
    let constraint = match lm.image_vocab {
        Some(v) => Constraint::Text { image_ids: v.ids() },
        None => Constraint::Free,
    };
    let options = GenerateOptions {
        sampling: args.sampling.sampling(),
        constraint,
        max_new_tokens: args.max_new_tokens,
        stop_ids: stop_ids.clone(),
    };
    let answer = |prompts: &[String]| -> anyhow::Result<()> {
        let ids = prompts
            .iter()
            .map(|p| render(p).and_then(|r| Ok(lm.tokenizer.encode(&r)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let started = std::time::Instant::now();
        let mut stdout = std::io::stdout();
        if prompts.len() == 1 {
            // One prompt: stream its tokens as they come.
            let mut stream = TextStream::new();
            let out = cxr_lm::generate(&lm.model, &ids, &options, |_, id| {
                if stop_ids.contains(&id) {
                    return;
                }
                if let Ok(Some(piece)) = stream.push(&lm.tokenizer, id) {
                    let _ = write!(stdout, "{piece}");
                    let _ = stdout.flush();
                }
            })?;
            writeln!(stdout)?;
            report_speed(out[0].len(), ids[0].len(), started);
        } else {
            let out = cxr_lm::generate(&lm.model, &ids, &options, |_, _| {})?;
            for (prompt, row) in prompts.iter().zip(&out) {
                writeln!(stdout, "### {prompt}\n{}\n", decode_answer(&lm, row)?)?;
            }
            report_speed(
                out.iter().map(Vec::len).sum(),
                ids.iter().map(Vec::len).sum(),
                started,
            );
        }
        Ok(())
    };
    if !args.prompt.is_empty() {
        return answer(&args.prompt);
    }
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading stdin")?;
        if !line.trim().is_empty() {
            answer(&[line])?;
        }
    }
    Ok(())
}

/// Generated ids as text, stop tokens left out.
fn decode_answer(lm: &LanguageModel, row: &[u32]) -> anyhow::Result<String> {
    let stop_ids = lm.tokenizer.stop_ids();
    let text: Vec<u32> = row
        .iter()
        .copied()
        .filter(|i| !stop_ids.contains(i))
        .collect();
    Ok(lm.tokenizer.decode(&text, true)?.trim().to_string())
}

/// Greedy answers to plain instructions in LLM-CXR's template (image ids never drawn), as one
/// batch.
pub fn answer_greedy(
    lm: &LanguageModel,
    instructions: &[String],
    max_new_tokens: usize,
) -> anyhow::Result<Vec<String>> {
    let ids = instructions
        .iter()
        .map(|p| Ok(lm.tokenizer.encode(&cxr_instruct::prompt(p, None))?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let options = GenerateOptions {
        sampling: Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        },
        constraint: match lm.image_vocab {
            Some(v) => Constraint::Text { image_ids: v.ids() },
            None => Constraint::Free,
        },
        max_new_tokens,
        stop_ids: lm.tokenizer.stop_ids(),
    };
    cxr_lm::generate(&lm.model, &ids, &options, |_, _| {})?
        .iter()
        .map(|row| decode_answer(lm, row))
        .collect()
}

fn report_speed(new_tokens: usize, prompt_tokens: usize, started: std::time::Instant) {
    let s = started.elapsed().as_secs_f64();
    tracing::info!(
        "{prompt_tokens} prompt + {new_tokens} new tokens in {s:.2} s ({:.1} tok/s)",
        new_tokens as f64 / s
    );
}
