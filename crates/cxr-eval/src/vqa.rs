//! Scoring of visual question answering: generated answers against reference answers.
//!
//! Two measures, as the field reads VQA on CXRs:
//! - **yes/no accuracy** on closed questions, the ones whose reference answer starts with "yes" or
//!   "no": the generated answer must start with the same word (an answer that starts with neither
//!   counts as wrong, and is counted as unanswered);
//! - **label agreement** on every pair where the labeler finds an observation in the answer or in
//!   the reference: both are labelled (CheXpert, four values), and the share of the observations
//!   mentioned on either side whose labels are equal is averaged over those pairs. Positive findings
//!   are also pooled into precision, recall and F1 (reference positives as truth). Both use the 13
//!   findings only: the labeler's No Finding is positive for any text without a finding, so a
//!   bare "Yes." would count as a normal study.
//!
//! Pairs may carry a question type (presence, side, severity, ...); each type gets its own scores.

use std::collections::BTreeMap;

use cxr_data::{ChexpertLabels, Label, Observation};

use crate::ReportLabeler;

/// One question with its generated and reference answers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VqaPair {
    pub question: String,
    pub answer: String,
    pub reference: String,
    /// Question type, if the data names one.
    pub kind: Option<String>,
}

/// The scores of a set of pairs.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VqaScores {
    pub pairs: usize,
    /// Pairs whose reference answer is yes or no.
    pub closed: usize,
    pub closed_correct: usize,
    /// Closed pairs whose generated answer starts with neither yes nor no.
    pub closed_unanswered: usize,
    /// `closed_correct / closed`; None without closed pairs.
    pub yes_no_accuracy: Option<f64>,
    /// Pairs where the labeler finds an observation in the answer or the reference.
    pub labelled: usize,
    /// Mean share of agreeing labels over the labelled pairs; None without any.
    pub label_agreement: Option<f64>,
    pub positive_precision: f64,
    pub positive_recall: f64,
    pub positive_f1: f64,
}

/// Scores over all pairs, and per question type (types in name order).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VqaReport {
    pub overall: VqaScores,
    pub by_kind: BTreeMap<String, VqaScores>,
}

/// What one pair contributes.
#[derive(Debug, Clone)]
pub struct PairVerdict {
    /// Some(correct) for a closed question.
    pub closed: Option<bool>,
    /// Share of agreeing labels among the observations either side mentions.
    pub agreement: Option<f64>,
    answer_labels: ChexpertLabels,
    reference_labels: ChexpertLabels,
}

/// The 13 observations that are findings (all but No Finding).
fn findings() -> impl Iterator<Item = Observation> {
    Observation::ALL
        .into_iter()
        .filter(|&o| o != Observation::NoFinding)
}

/// The yes/no an answer starts with: its first word, case and punctuation aside.
pub fn yes_no(answer: &str) -> Option<bool> {
    let first = answer
        .split(|c: char| !c.is_alphanumeric())
        .find(|w| !w.is_empty())?
        .to_ascii_lowercase();
    match first.as_str() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

/// Judges one pair.
pub fn judge(labeler: &ReportLabeler, pair: &VqaPair) -> PairVerdict {
    let closed = yes_no(&pair.reference).map(|want| yes_no(&pair.answer) == Some(want));
    let answer_labels = labeler.label(&pair.answer);
    let reference_labels = labeler.label(&pair.reference);
    let mentioned: Vec<Observation> = findings()
        .filter(|&o| answer_labels.get(o).is_some() || reference_labels.get(o).is_some())
        .collect();
    let agreement = (!mentioned.is_empty()).then(|| {
        let same = mentioned
            .iter()
            .filter(|&&o| answer_labels.get(o) == reference_labels.get(o))
            .count();
        same as f64 / mentioned.len() as f64
    });
    PairVerdict {
        closed,
        agreement,
        answer_labels,
        reference_labels,
    }
}

fn summarise<'a>(verdicts: impl Iterator<Item = &'a PairVerdict>) -> VqaScores {
    let mut s = VqaScores::default();
    let (mut agreement_sum, mut tp, mut fp, mut fn_) = (0.0, 0usize, 0usize, 0usize);
    for v in verdicts {
        s.pairs += 1;
        if let Some(correct) = v.closed {
            s.closed += 1;
            s.closed_correct += usize::from(correct);
        }
        if let Some(a) = v.agreement {
            s.labelled += 1;
            agreement_sum += a;
        }
        for o in findings() {
            let got = v.answer_labels.get(o) == Some(Label::Positive);
            let want = v.reference_labels.get(o) == Some(Label::Positive);
            tp += usize::from(got && want);
            fp += usize::from(got && !want);
            fn_ += usize::from(!got && want);
        }
    }
    s.yes_no_accuracy = (s.closed > 0).then(|| s.closed_correct as f64 / s.closed as f64);
    s.label_agreement = (s.labelled > 0).then(|| agreement_sum / s.labelled as f64);
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    s.positive_precision = ratio(tp, tp + fp);
    s.positive_recall = ratio(tp, tp + fn_);
    s.positive_f1 = ratio(2 * tp, 2 * tp + fp + fn_);
    s
}

/// Scores every pair; `verdicts` is [`judge`] of each pair, in order.
pub fn vqa_report(pairs: &[VqaPair], verdicts: &[PairVerdict]) -> VqaReport {
    let mut overall = summarise(verdicts.iter());
    overall.closed_unanswered = pairs
        .iter()
        .zip(verdicts)
        .filter(|(p, v)| v.closed.is_some() && yes_no(&p.answer).is_none())
        .count();
    let mut by_kind = BTreeMap::new();
    let kinds: std::collections::BTreeSet<&str> =
        pairs.iter().filter_map(|p| p.kind.as_deref()).collect();
    for kind in kinds {
        let of_kind = || {
            pairs
                .iter()
                .zip(verdicts)
                .filter(move |(p, _)| p.kind.as_deref() == Some(kind))
        };
        let mut s = summarise(of_kind().map(|(_, v)| v));
        s.closed_unanswered = of_kind()
            .filter(|(p, v)| v.closed.is_some() && yes_no(&p.answer).is_none())
            .count();
        by_kind.insert(kind.to_string(), s);
    }
    VqaReport { overall, by_kind }
}

impl VqaReport {
    /// One row for all pairs, then one per question type.
    pub fn to_markdown(&self, model: &str) -> String {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        let row = |name: &str, s: &VqaScores| {
            format!(
                "| {name} | {} | {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} |\n",
                s.pairs,
                s.closed,
                opt(s.yes_no_accuracy),
                s.closed_unanswered,
                s.labelled,
                opt(s.label_agreement),
                s.positive_precision,
                s.positive_recall,
                s.positive_f1
            )
        };
        let mut md = String::from(
            "| questions | pairs | yes/no | yes/no accuracy | unanswered | labelled | label agreement | positive precision | positive recall | positive F1 |\n|---|---|---|---|---|---|---|---|---|---|\n",
        );
        md += &row(&format!("{model}: all"), &self.overall);
        for (kind, s) in &self.by_kind {
            md += &row(kind, s);
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yes_no_reads_the_first_word_only() {
        assert_eq!(yes_no("Yes."), Some(true));
        assert_eq!(yes_no("  no, there is no effusion"), Some(false));
        assert_eq!(yes_no("NO"), Some(false));
        assert_eq!(yes_no("There is no effusion."), None);
        assert_eq!(yes_no("Nothing"), None);
        assert_eq!(yes_no("yesterday"), None);
        assert_eq!(yes_no(""), None);
    }
}
