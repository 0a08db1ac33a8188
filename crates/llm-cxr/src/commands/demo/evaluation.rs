//! One held-out evaluation of the fine-tuned model, as stages: reports, answers and drawings
//! for the test cases, scored by `eval all`, and the same with the images shuffled among the
//! cases (the control).

use std::path::{Path, PathBuf};

use super::heldout::{self, TestSet};
use super::scores::Scores;
use super::stages::{defaults, Stages};
use super::vqgan_args;
use crate::commands::chat::{ModelArgs, SamplingArgs};
use crate::commands::device::DeviceArg;
use crate::commands::{eval, tasks};

/// What an evaluation at a step gives.
pub struct AtStep {
    pub scores: Scores,
    /// The control's scores.
    pub shuffled: Scores,
    pub evaluations: cxr_eval::Evaluations,
}

/// One held-out evaluation of the model at a step: reports, answers and drawings for the test
/// cases, scored, and the same scored with the images shuffled among the cases.
pub struct Evaluation<'a> {
    pub test: &'a TestSet,
    pub model: PathBuf,
    pub vqgan: &'a Path,
    pub classifier: &'a Path,
    pub phrases: &'a Path,
    pub seed: u64,
    /// Where the model answers and draws.
    pub device: &'a DeviceArg,
}

impl Evaluation<'_> {
    fn models(&self, sampling: SamplingArgs) -> tasks::Models {
        tasks::Models {
            lm: ModelArgs {
                model: self.model.clone(),
                quantize: None,
            },
            vqgan: vqgan_args(self.vqgan),
            batch: 8,
            sampling,
            device: self.device.clone(),
        }
    }

    fn greedy(&self) -> anyhow::Result<tasks::Models> {
        Ok(self.models(SamplingArgs {
            temperature: 0.0,
            ..defaults()?
        }))
    }

    fn ask(&self, questions: &Path, answers: &Path) -> anyhow::Result<tasks::AskArgs> {
        Ok(tasks::AskArgs {
            image: None,
            questions: Vec::new(),
            from: Some(questions.to_path_buf()),
            out: Some(answers.to_path_buf()),
            models: self.greedy()?,
            max_new_tokens: 48,
        })
    }

    fn eval_all(
        &self,
        reports: &Path,
        images: &Path,
        vqa: &Path,
        title: String,
        out: &Path,
    ) -> anyhow::Result<eval::AllArgs> {
        Ok(eval::AllArgs {
            reports: Some(reports.to_path_buf()),
            images: Some(images.to_path_buf()),
            vqa: Some(vqa.to_path_buf()),
            report: defaults()?,
            image: eval::ImageOptions {
                classifier: Some(self.classifier.to_path_buf()),
                ..defaults()?
            },
            common: eval::Common {
                out: out.to_path_buf(),
                phrases: Some(self.phrases.to_path_buf()),
                uncertain: cxr_eval::report_metrics::UncertainPolicy::Negative,
                model: title,
                samples: 8,
            },
        })
    }

    /// The scores at `step`, the control's, and the evaluation's results.
    pub fn run(&self, stages: &mut Stages, step: u64, dir: &Path) -> anyhow::Result<AtStep> {
        let test = self.test;
        let reports_csv = dir.join("reports.csv");
        stages.run(
            &format!("report-{step}"),
            tasks::ReportArgs {
                images: test.images.clone(),
                models: self.greedy()?,
                instruction: None,
                max_new_tokens: 160,
                out: Some(reports_csv.clone()),
            },
        )?;
        let pairs = dir.join("pairs.csv");
        heldout::write_pairs(&reports_csv, &test.reports, 0, &pairs)?;
        let answers = dir.join("answers.csv");
        stages.run(&format!("ask-{step}"), self.ask(&test.questions, &answers)?)?;
        let draws = dir.join("draws");
        stages.run(
            &format!("draw-{step}"),
            tasks::DrawArgs {
                reports: test.reports.clone(),
                models: self.models(SamplingArgs {
                    seed: self.seed,
                    ..defaults()?
                }),
                n: 1,
                instruction: None,
                out: draws.clone(),
            },
        )?;
        let evaluations = stages.run(
            &format!("eval-{step}"),
            self.eval_all(
                &pairs,
                &draws.join(tasks::DRAWS_CSV),
                &answers,
                format!("llm-cxr demo, step {step}"),
                dir,
            )?,
        )?;
        let drawn: Vec<PathBuf> = (0..test.images.len())
            .map(|i| draws.join(format!("draw-{i}-0.png")))
            .collect();
        let judged = heldout::judge_images(&drawn, test, &dir.join("side-severity.json"))?;

        // The control: case i's outputs against case i + 1's truth.
        let control = dir.join("shuffled");
        std::fs::create_dir_all(&control)?;
        let n = test.images.len();
        let control_pairs = control.join("pairs.csv");
        heldout::write_pairs(&reports_csv, &test.reports, 1, &control_pairs)?;
        let control_draws = control.join("draws.csv");
        heldout::write_shuffled_draws(&drawn, test, &control_draws)?;
        let control_questions = control.join("questions.csv");
        heldout::write_shuffled_questions(test, &control_questions)?;
        let control_answers = control.join("answers.csv");
        stages.run(
            &format!("ask-shuffled-{step}"),
            self.ask(&control_questions, &control_answers)?,
        )?;
        let control_evaluations = stages.run(
            &format!("eval-shuffled-{step}"),
            self.eval_all(
                &control_pairs,
                &control_draws,
                &control_answers,
                format!("llm-cxr demo, step {step}, images shuffled among the cases"),
                &control,
            )?,
        )?;
        let drawn_next: Vec<PathBuf> = (0..n).map(|i| drawn[(i + 1) % n].clone()).collect();
        let control_judged =
            heldout::judge_images(&drawn_next, test, &control.join("side-severity.json"))?;
        Ok(AtStep {
            scores: Scores::of(&evaluations, judged.rate),
            shuffled: Scores::of(&control_evaluations, control_judged.rate),
            evaluations,
        })
    }
}
