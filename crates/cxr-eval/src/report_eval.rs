//! The report evaluation: generated reports against their references, scored on their CheXpert
//! labels (the paper's Table 1, [`crate::report_metrics`]) and on their words (BLEU, METEOR,
//! ROUGE-L, CIDEr-D, [`crate::nlg`]). [`ReportEvaluation`] is what `report-metrics.json` holds.

use std::path::Path;

use cxr_data::ChexpertLabels;
use rayon::prelude::*;

use crate::csv_columns::read_required;
use crate::evaluations::{EvalError, OnProgress, Presentation, Progress};
use crate::nlg::{self, Candidate, NlgScores};
use crate::published;
use crate::report_metrics::{report_metrics, ReportMetricOptions, ReportTable};
use crate::ReportLabeler;

/// The result of the report evaluation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReportEvaluation {
    /// Scores of the CheXpert labels (`/clinical/f1/micro`, `/clinical/auroc/micro`, ...).
    pub clinical: ReportTable,
    /// Scores of the words.
    pub nlg: NlgScores,
    /// The model's row name in the tables.
    #[serde(default)]
    pub model: String,
    /// The first pairs, for the sample-case table.
    #[serde(default)]
    pub cases: Vec<ReportCase>,
}

/// One generated report beside its reference, with the labels of each.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReportCase {
    pub generated: String,
    pub reference: String,
    pub generated_labels: ChexpertLabels,
    pub reference_labels: ChexpertLabels,
}

impl ReportEvaluation {
    /// Scores the pairs of a CSV with a `generated` and a `reference` column.
    pub fn from_csv(
        pairs_csv: &Path,
        labeler: &ReportLabeler,
        opts: ReportMetricOptions,
        shown: &Presentation,
        progress: OnProgress,
    ) -> Result<Self, EvalError> {
        let pairs: Vec<(String, String)> = read_required(pairs_csv, &["generated", "reference"])?
            .into_iter()
            .map(|mut r| (std::mem::take(&mut r[0]), std::mem::take(&mut r[1])))
            .collect();
        Ok(Self::compute(&pairs, labeler, opts, shown, progress))
    }

    /// Scores (generated, reference) pairs; labelling reports is the pass `progress` hears of.
    pub fn compute(
        pairs: &[(String, String)],
        labeler: &ReportLabeler,
        opts: ReportMetricOptions,
        shown: &Presentation,
        progress: OnProgress,
    ) -> Self {
        progress(Progress::Start {
            phase: "reports",
            total: pairs.len(),
        });
        let labelled: Vec<_> = pairs
            .par_iter()
            .map(|(g, r)| {
                let out = (labeler.label(g), labeler.label(r));
                progress(Progress::Advance(1));
                out
            })
            .collect();
        progress(Progress::Finish);
        let (generated, reference): (Vec<_>, Vec<_>) = labelled.into_iter().unzip();
        let clinical = report_metrics(&generated, &reference, opts);
        let corpus: Vec<Candidate> = pairs
            .iter()
            .map(|(g, r)| Candidate {
                hypothesis: nlg::tokenize(g),
                references: vec![nlg::tokenize(r)],
            })
            .collect();
        let nlg = nlg::score(&corpus);
        let cases = pairs
            .iter()
            .zip(generated.into_iter().zip(reference))
            .take(shown.samples)
            .map(|((g, r), (gl, rl))| ReportCase {
                generated: g.clone(),
                reference: r.clone(),
                generated_labels: gl,
                reference_labels: rl,
            })
            .collect();
        Self {
            clinical,
            nlg,
            model: shown.model.clone(),
            cases,
        }
    }

    /// The tables (ours above LLM-CXR's published numbers), as `report-metrics.md` holds them.
    pub fn to_markdown(&self) -> String {
        let s = &self.nlg;
        let p = published::REPORT_NLG;
        format!(
            "## Report evaluation: {}\n\n{}\n| BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | METEOR | ROUGE-L | CIDEr-D |\n|---|---|---|---|---|---|---|\n| {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n\nLLM-CXR published: BLEU-1 {:.3}, BLEU-4 {:.3}, METEOR {:.3}, ROUGE-L {:.3}, CIDEr {:.3}. METEOR here uses exact and stem matching only.\n",
            self.model,
            self.clinical.to_markdown(&self.model),
            s.bleu[0],
            s.bleu[1],
            s.bleu[2],
            s.bleu[3],
            s.meteor,
            s.rouge_l,
            s.cider_d,
            p.bleu_1,
            p.bleu_4,
            p.meteor,
            p.rouge_l,
            p.cider,
        )
    }
}
