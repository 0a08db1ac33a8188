//! The VQA evaluation: generated answers against reference answers ([`crate::vqa`]), over all
//! pairs and per question type. [`VqaEvaluation`] is what `vqa-metrics.json` holds.

use std::path::Path;

use rayon::prelude::*;

use crate::csv_columns::read_columns;
use crate::evaluations::{EvalError, Presentation};
use crate::vqa::{judge, vqa_report, VqaPair, VqaReport};
use crate::ReportLabeler;

/// The result of the VQA evaluation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VqaEvaluation {
    /// `overall` and `by_kind` at the top level (`/overall/yes_no_accuracy`, ...).
    #[serde(flatten)]
    pub scores: VqaReport,
    /// The model's row name in the tables.
    #[serde(default)]
    pub model: String,
    /// The first pairs, for the sample-case table.
    #[serde(default)]
    pub cases: Vec<VqaCase>,
}

/// One question, its answers, the image asked about (if the data names one) and the verdict.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VqaCase {
    #[serde(flatten)]
    pub pair: VqaPair,
    pub image: Option<String>,
    /// Some(correct) for a closed (yes/no) question.
    pub closed: Option<bool>,
    /// Share of agreeing labels among the observations either answer mentions.
    pub agreement: Option<f64>,
}

impl VqaEvaluation {
    /// Scores a CSV with `question`, `answer` (generated) and `reference` columns, and optional
    /// `type` (question type) and `image` ones.
    pub fn from_csv(
        answers_csv: &Path,
        labeler: &ReportLabeler,
        shown: &Presentation,
    ) -> Result<Self, EvalError> {
        let rows = read_columns(
            answers_csv,
            &["question", "answer", "reference"],
            &["type", "image"],
        )?;
        let pairs: Vec<VqaPair> = rows
            .iter()
            .map(|row| VqaPair {
                question: row.required[0].clone(),
                answer: row.required[1].clone(),
                reference: row.required[2].clone(),
                kind: row.optional[0].clone().filter(|k| !k.trim().is_empty()),
            })
            .collect();
        let images: Vec<Option<String>> = rows.into_iter().map(|r| r.optional[1].clone()).collect();
        Ok(Self::compute(&pairs, &images, labeler, shown))
    }

    /// Scores the pairs; `images[i]`, where present, is the image pair i asks about.
    pub fn compute(
        pairs: &[VqaPair],
        images: &[Option<String>],
        labeler: &ReportLabeler,
        shown: &Presentation,
    ) -> Self {
        let verdicts: Vec<_> = pairs.par_iter().map(|p| judge(labeler, p)).collect();
        let scores = vqa_report(pairs, &verdicts);
        let cases = pairs
            .iter()
            .zip(&verdicts)
            .enumerate()
            .take(shown.samples)
            .map(|(i, (pair, v))| VqaCase {
                pair: pair.clone(),
                image: images.get(i).cloned().flatten(),
                closed: v.closed,
                agreement: v.agreement,
            })
            .collect();
        Self {
            scores,
            model: shown.model.clone(),
            cases,
        }
    }

    /// The table and how it is scored, as `vqa-metrics.md` holds them.
    pub fn to_markdown(&self) -> String {
        format!(
            "## VQA evaluation: {}\n\n{}\nClosed questions: the reference answer starts with yes or no; the answer must start with the same word. Label agreement: CheXpert labels (13 findings) of answer and reference, share equal among those either mentions.\n",
            self.model,
            self.scores.to_markdown(&self.model)
        )
    }
}
