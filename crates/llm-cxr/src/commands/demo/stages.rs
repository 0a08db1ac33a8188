//! The main job's stages: each is a subcommand's own argument struct, run in this process. Its
//! command line, shown on the page and recorded, is generated from the struct through clap's
//! definition of the same struct and checked to parse back to it, so what the page shows is
//! exactly what ran, and a renamed flag cannot drift. A finished stage is recorded under
//! `OUT/stages/NAME.json`; a later run skips it and reads its result back from its files.

use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgAction, FromArgMatches};

use crate::commands::{classifier, data, eval, lm, phantom, tasks, train, vqgan};

/// A subcommand the main job runs as a stage.
pub trait Stage: clap::Args + FromArgMatches + serde::Serialize {
    /// The subcommand's path under `llm-cxr`, e.g. `["vqgan", "train"]`.
    const COMMAND: &'static [&'static str];
    /// What the stage gives the stages after it (most leave files only).
    type Output;
    /// Runs the subcommand, as `llm-cxr COMMAND ...` would.
    fn run(self) -> anyhow::Result<Self::Output>;
    /// The output of a run that finished before, read back from its files.
    fn read_back(&self) -> anyhow::Result<Self::Output>;
}

/// Stages whose output is files only.
macro_rules! file_stage {
    ($args:ty, $command:expr, $run:expr) => {
        impl Stage for $args {
            const COMMAND: &'static [&'static str] = $command;
            type Output = ();
            fn run(self) -> anyhow::Result<()> {
                $run(self)
            }
            fn read_back(&self) -> anyhow::Result<()> {
                Ok(())
            }
        }
    };
}

file_stage!(phantom::Args, &["phantom"], phantom::run);
file_stage!(classifier::TrainArgs, &["classifier", "train"], |a| {
    classifier::run(classifier::Command::Train(a))
});
file_stage!(vqgan::TrainArgs, &["vqgan", "train"], |a| vqgan::run(
    vqgan::Command::Train(a)
));
file_stage!(vqgan::EncodeArgs, &["vqgan", "encode"], |a| vqgan::run(
    vqgan::Command::Encode(a)
));
file_stage!(vqgan::DecodeArgs, &["vqgan", "decode"], |a| vqgan::run(
    vqgan::Command::Decode(a)
));
file_stage!(lm::InitArgs, &["lm", "init"], |a| lm::run(
    lm::Command::Init(a)
));
file_stage!(data::BuildArgs, &["data", "build"], |a| data::run(
    data::Command::Build(a)
));
file_stage!(train::Args, &["train"], train::run);
file_stage!(tasks::ReportArgs, &["report"], tasks::report);
file_stage!(tasks::AskArgs, &["ask"], tasks::ask);
file_stage!(tasks::DrawArgs, &["draw"], tasks::draw);

impl Stage for vqgan::EvalArgs {
    const COMMAND: &'static [&'static str] = &["vqgan", "eval"];
    type Output = cxr_eval::VqganEvaluation;
    fn run(self) -> anyhow::Result<Self::Output> {
        vqgan::evaluate(&self)
    }
    fn read_back(&self) -> anyhow::Result<Self::Output> {
        let out = self.out.as_ref().context("vqgan eval without --out")?;
        Ok(cxr_eval::VqganEvaluation::read(out)?)
    }
}

impl Stage for eval::AllArgs {
    const COMMAND: &'static [&'static str] = &["eval", "all"];
    type Output = cxr_eval::Evaluations;
    fn run(self) -> anyhow::Result<Self::Output> {
        eval::all(&self)
    }
    fn read_back(&self) -> anyhow::Result<Self::Output> {
        Ok(cxr_eval::Evaluations::read(&self.common.out)?)
    }
}

/// A finished stage, as `OUT/stages/NAME.json` records it.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct StageRecord {
    pub command: Vec<String>,
    pub seconds: f64,
}

/// A stage of this run: its record, and whether an earlier run did it.
pub struct Done {
    pub name: String,
    pub record: StageRecord,
    pub earlier: bool,
}

/// Runs stages, skipping those recorded as done with the same values.
pub struct Stages {
    dir: PathBuf,
    pub done: Vec<Done>,
}

impl Stages {
    pub fn new(dir: PathBuf) -> Self {
        Stages {
            dir,
            done: Vec::new(),
        }
    }

    /// Runs `stage` under `name`, or reads back its output when a run before finished it with
    /// the same values.
    pub fn run<S: Stage>(&mut self, name: &str, stage: S) -> anyhow::Result<S::Output> {
        let command = command_line(&stage)?;
        let record_path = self.dir.join(format!("{name}.json"));
        if let Some(prev) = std::fs::read(&record_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<StageRecord>(&b).ok())
        {
            // Later stages read this one's outputs (and resume from their own checkpoints), so
            // a folder made with other settings is not mixed into.
            anyhow::ensure!(
                records(&prev.command, &stage),
                "{} was made with other settings (stage {name} ran `llm-cxr {}`, now `llm-cxr {}`): \
                 give another --out or delete the folder",
                self.dir.parent().unwrap_or(&self.dir).display(),
                shown(&prev.command, 200),
                shown(&command, 200)
            );
            tracing::info!("[{name}] done before ({:.0} s): skipped", prev.seconds);
            let output = stage
                .read_back()
                .with_context(|| format!("demo stage {name}: reading its earlier result"))?;
            self.push(name, prev, true);
            return Ok(output);
        }
        tracing::info!("[{name}] llm-cxr {}", shown(&command, 400));
        let started = std::time::Instant::now();
        let output = stage.run().with_context(|| format!("demo stage {name}"))?;
        let record = StageRecord {
            command,
            seconds: started.elapsed().as_secs_f64(),
        };
        super::super::write_atomic(&record_path, &serde_json::to_vec_pretty(&record)?)?;
        self.push(name, record, false);
        Ok(output)
    }

    fn push(&mut self, name: &str, record: StageRecord, earlier: bool) {
        self.done.push(Done {
            name: name.to_string(),
            record,
            earlier,
        });
    }

    /// Seconds the stage `name` took (in this run or the one that did it).
    pub fn seconds(&self, name: &str) -> f64 {
        self.done
            .iter()
            .rfind(|d| d.name == name)
            .map_or(0.0, |d| d.record.seconds)
    }

    /// Seconds of every stage so far.
    pub fn total_seconds(&self) -> f64 {
        self.done.iter().map(|d| d.record.seconds).sum()
    }
}

/// `S`'s clap definition, as `llm-cxr COMMAND` parses it; `environment: false` leaves out the
/// variables that may set an argument (a line must mean the same wherever it is read).
fn definition<S: Stage>(environment: bool) -> clap::Command {
    let name = S::COMMAND.last().copied().unwrap_or("llm-cxr");
    let mut command = S::augment_args(clap::Command::new(name).no_binary_name(true));
    if !environment {
        command = command.mut_args(|a| a.env(None::<&str>));
    }
    command.build();
    command
}

/// The command line of a stage: its subcommand path, then every argument whose value is not its
/// default (positional ones last), written from clap's definition of the struct and checked to
/// parse back to the same values. Arguments that an environment variable can set are always
/// written, so the line means the same in any environment.
pub fn command_line<S: Stage>(stage: &S) -> anyhow::Result<Vec<String>> {
    let what = S::COMMAND.join(" ");
    let values = serde_json::to_value(stage)?;
    let serde_json::Value::Object(mut values) = values else {
        anyhow::bail!("{what}: its arguments are not a struct");
    };
    let definition = definition::<S>(true);
    let mut line: Vec<String> = S::COMMAND.iter().map(|s| s.to_string()).collect();
    let mut positionals = Vec::new();
    for arg in definition.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(value) = values.remove(id) else {
            continue; // --help, --version
        };
        if arg.is_positional() {
            positionals.push((arg.get_index().unwrap_or(usize::MAX), texts(&value)));
            continue;
        }
        let long = arg
            .get_long()
            .with_context(|| format!("{what}: argument {id} has no long flag"))?;
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            if value == serde_json::Value::Bool(true) {
                line.push(format!("--{long}"));
            }
            continue;
        }
        let texts = texts(&value);
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        if arg.get_env().is_none() && same_values(&texts, &defaults) {
            continue;
        }
        for t in texts {
            // A value that starts with '-' would read as a flag.
            if t.starts_with('-') {
                line.push(format!("--{long}={t}"));
            } else {
                line.extend([format!("--{long}"), t]);
            }
        }
    }
    if let Some(field) = values.keys().next() {
        anyhow::bail!("{what}: field {field} has no command-line argument");
    }
    positionals.sort_by_key(|(index, _)| *index);
    let positionals: Vec<String> = positionals.into_iter().flat_map(|(_, t)| t).collect();
    if positionals.iter().any(|p| p.starts_with('-')) {
        line.push("--".into());
    }
    line.extend(positionals);
    check_parses_back(stage, &line[S::COMMAND.len()..])?;
    Ok(line)
}

/// Parses `args` as `S` and checks that they give `stage`'s values back.
fn check_parses_back<S: Stage>(stage: &S, args: &[String]) -> anyhow::Result<()> {
    let what = S::COMMAND.join(" ");
    let (want, got) = (serde_json::to_value(stage)?, values_of::<S>(args)?);
    anyhow::ensure!(
        want == got,
        "llm-cxr {what}: the command line written for the stage parses to other values \
         ({got}, not {want})"
    );
    Ok(())
}

/// The values `S` parses `args` to (no environment variables read).
fn values_of<S: Stage>(args: &[String]) -> anyhow::Result<serde_json::Value> {
    let matches = definition::<S>(false)
        .try_get_matches_from(args)
        .with_context(|| format!("llm-cxr {} {}", S::COMMAND.join(" "), shown(args, 300)))?;
    Ok(serde_json::to_value(S::from_arg_matches(&matches)?)?)
}

/// Whether a recorded command line runs `stage`: the same subcommand with the same values,
/// however the line spells them (a record written by an earlier version lists defaults too).
fn records<S: Stage>(recorded: &[String], stage: &S) -> bool {
    let n = S::COMMAND.len();
    recorded.len() >= n
        && recorded[..n].iter().zip(S::COMMAND).all(|(a, b)| a == b)
        && match (values_of::<S>(&recorded[n..]), serde_json::to_value(stage)) {
            (Ok(a), Ok(b)) => same_run(a, b),
            _ => false,
        }
}

/// Whether two stages' values make the same run. The device is left out: a stage done on the
/// CPU stays done when the job goes on on a GPU (the long ones resume from their checkpoints
/// there), so a killed run can be finished elsewhere.
fn same_run(mut a: serde_json::Value, mut b: serde_json::Value) -> bool {
    for v in [&mut a, &mut b] {
        if let Some(fields) = v.as_object_mut() {
            fields.remove("device");
        }
    }
    a == b
}

/// An argument's values as command-line text (none for an absent option).
fn texts(value: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    match value {
        Value::Null => Vec::new(),
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(texts).collect(),
        other => vec![other.to_string()],
    }
}

/// Whether values equal an argument's defaults (numbers by value: `5e-6` is `0.000005`).
fn same_values(values: &[String], defaults: &[String]) -> bool {
    values.len() == defaults.len()
        && values.iter().zip(defaults).all(|(v, d)| {
            v == d || matches!((v.parse::<f64>(), d.parse::<f64>()), (Ok(a), Ok(b)) if a == b)
        })
}

/// A command line as a shell would take it, cut to `max` characters.
pub fn shown(command: &[String], max: usize) -> String {
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

/// An argument struct with every argument at its default, as clap fills it when none is given:
/// the defaults a stage leaves alone come from one place, the struct's definition.
pub fn defaults<A: clap::Args + FromArgMatches>() -> anyhow::Result<A> {
    let matches = A::augment_args(clap::Command::new("defaults").no_binary_name(true))
        .try_get_matches_from(std::iter::empty::<String>())?;
    Ok(A::from_arg_matches(&matches)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The top-level parser's definition of a subcommand path.
    fn subcommand(path: &[&str]) -> clap::Command {
        let mut command = crate::Cli::command();
        for part in path {
            command = command
                .find_subcommand(part)
                .unwrap_or_else(|| panic!("no subcommand {part} in {path:?}"))
                .clone();
        }
        command
    }

    fn ids(command: &clap::Command) -> Vec<String> {
        let mut ids: Vec<String> = command
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .filter(|id| !matches!(id.as_str(), "help" | "version" | "verbose"))
            .collect();
        ids.sort();
        ids
    }

    fn same_definition<S: Stage>() {
        assert_eq!(
            ids(&definition::<S>(true)),
            ids(&subcommand(S::COMMAND)),
            "{:?}",
            S::COMMAND
        );
    }

    /// Each stage's path names the subcommand that parses its struct, so its line reruns it.
    #[test]
    fn every_stage_is_the_subcommand_its_path_names() {
        same_definition::<phantom::Args>();
        same_definition::<classifier::TrainArgs>();
        same_definition::<vqgan::TrainArgs>();
        same_definition::<vqgan::EncodeArgs>();
        same_definition::<vqgan::DecodeArgs>();
        same_definition::<vqgan::EvalArgs>();
        same_definition::<lm::InitArgs>();
        same_definition::<data::BuildArgs>();
        same_definition::<train::Args>();
        same_definition::<tasks::ReportArgs>();
        same_definition::<tasks::AskArgs>();
        same_definition::<tasks::DrawArgs>();
        same_definition::<eval::AllArgs>();
    }

    fn draw(reports: &[&str], seed: u64) -> tasks::DrawArgs {
        tasks::DrawArgs {
            reports: reports.iter().map(|r| r.to_string()).collect(),
            models: tasks::Models {
                lm: crate::commands::chat::ModelArgs {
                    model: "m".into(),
                    quantize: None,
                },
                vqgan: vqgan::VqganArgs {
                    vqgan: "v.safetensors".into(),
                    config: None,
                },
                batch: 8,
                sampling: crate::commands::chat::SamplingArgs {
                    seed,
                    ..defaults().unwrap()
                },
                device: defaults().unwrap(),
            },
            n: 1,
            instruction: None,
            out: "out dir".into(),
        }
    }

    #[test]
    fn a_line_names_what_differs_from_the_defaults_and_parses_back() {
        let line = command_line(&draw(&["No acute findings.", "Small effusion."], 7)).unwrap();
        // --model reads LLMCXR_MODEL too, so it is always written; --n 1 and --batch 4 ->
        // --batch 8: only what differs.
        assert_eq!(
            line,
            [
                "draw",
                "--model",
                "m",
                "--vqgan",
                "v.safetensors",
                "--batch",
                "8",
                "--seed",
                "7",
                "--out",
                "out dir",
                "No acute findings.",
                "Small effusion."
            ]
        );
        assert_eq!(
            shown(&line, 1000),
            "draw --model m --vqgan v.safetensors --batch 8 --seed 7 --out 'out dir' \
             'No acute findings.' 'Small effusion.'"
        );
    }

    #[test]
    fn values_that_look_like_flags_stay_values() {
        let line = command_line(&draw(&["-1 cm nodule"], 42)).unwrap();
        assert_eq!(&line[line.len() - 2..], ["--", "-1 cm nodule"]);
        let mut a = draw(&["x"], 42);
        a.models.sampling.temperature = -0.5;
        let line = command_line(&a).unwrap();
        assert!(line.contains(&"--temperature=-0.5".to_string()), "{line:?}");
    }

    #[test]
    fn value_enums_are_written_by_their_command_line_names() {
        let a = data::BuildArgs {
            data: "phantoms".into(),
            kind: cxr_data::DatasetKind::OpenI,
            tokens: "tokens".into(),
            model: "lm".into(),
            vqgan: None,
            vqgan_config: None,
            stage: cxr_instruct::build::Stage::Two,
            both_directions: true,
            vqa_turns: 6,
            split: cxr_data::Split::Validate,
            out: "data".into(),
            text: None,
            text_fraction: 0.1,
            phrasings: None,
            vqa_per_image: 3,
            vqa_file: None,
            max_tokens: 1024,
            seed: 42,
            shard_size: 2000,
            hf: false,
        };
        let line = command_line(&a).unwrap().join(" ");
        assert_eq!(
            line,
            "data build --data phantoms --kind open-i --tokens tokens --model lm --stage 2 \
             --both-directions --vqa-turns 6 --split validate --out data --text-fraction 0.1"
        );
    }

    /// A stage record is compared by what it runs: a line that spells out defaults (as the
    /// records of earlier versions do) still names the same stage; other values do not.
    #[test]
    fn a_record_counts_by_the_values_it_parses_to() {
        let stage = phantom::Args {
            n: 300,
            size: 128,
            seed: 1,
            out: "runs/p".into(),
            dicom: false,
            jpeg_quality: 95,
        };
        let line = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        assert!(records(
            &line("phantom --n 300 --size 128 --seed 1 --out runs/p"),
            &stage
        ));
        assert!(records(&command_line(&stage).unwrap(), &stage));
        assert!(!records(
            &line("phantom --n 300 --size 128 --seed 2 --out runs/p"),
            &stage
        ));
        assert!(!records(&line("gallery --out runs/p"), &stage));
        assert!(!records(&line("phantom --n 300 --no-such-flag"), &stage));
    }

    /// A stage done on one device is done on any: only the device may differ.
    #[test]
    fn a_record_counts_on_another_device() {
        let on = |device: &str, seed: u64| serde_json::json!({"seed": seed, "device": device});
        assert!(same_run(on("cpu", 1), on("cuda:0", 1)));
        assert!(!same_run(on("cpu", 1), on("cuda:0", 2)));
        // A stage recorded on a GPU reads back here, on a binary that may have no CUDA (the
        // flag parses without opening a device), and counts as done on the CPU and back.
        let on_cpu = draw(&["x"], 7);
        let mut on_gpu = draw(&["x"], 7);
        on_gpu.models.device.device = crate::commands::device::DeviceSpec::Cuda(0);
        let recorded = command_line(&on_gpu).unwrap();
        assert!(recorded.iter().any(|a| a == "cuda:0"), "{recorded:?}");
        assert!(records(&recorded, &on_cpu));
        assert!(records(&command_line(&on_cpu).unwrap(), &on_gpu));
        assert!(!records(&recorded, &draw(&["x"], 8)));
    }

    /// A field clap does not parse cannot be written on a command line: refused, not dropped.
    #[derive(clap::Args, serde::Serialize)]
    struct Unwritable {
        #[arg(long)]
        out: PathBuf,
        #[arg(skip)]
        hidden: u32,
    }

    impl Stage for Unwritable {
        const COMMAND: &'static [&'static str] = &["unwritable"];
        type Output = ();
        fn run(self) -> anyhow::Result<()> {
            Ok(())
        }
        fn read_back(&self) -> anyhow::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_field_without_an_argument_is_refused() {
        let e = command_line(&Unwritable {
            out: "o".into(),
            hidden: 3,
        })
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("field hidden has no command-line argument"),
            "{e}"
        );
    }
}
