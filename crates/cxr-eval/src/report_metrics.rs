//! Clinical efficacy of generated reports: both the generated and the reference report are
//! labelled (CheXpert, 14 observations), then compared per observation with AUROC and F1, their
//! micro / macro / weighted means, in the layout of the LLM-CXR paper's Table 1; and the Jaccard
//! index over the four label values {blank, uncertain, negative, positive}.
//!
//! LLM-CXR never said how an AUROC comes from discrete labels (its issue #20). Our default,
//! [`AurocScore::Binary`], scores a generated report 1 where its label is positive and 0
//! otherwise, which makes AUROC the balanced accuracy ((TPR + TNR) / 2) and reproduces the ~0.5
//! that uninformative models get in the published table. [`AurocScore::ThreeLevel`] scores an
//! uncertain label 0.5 instead. How uncertain labels count as positive or negative (in the
//! reference, and in the generated report for F1) is [`UncertainPolicy`]; the default counts them
//! as negative, so only definite findings are findings.
//!
//! Means follow scikit-learn: micro pools every (report, observation) decision; macro averages the
//! observations that have both classes (AUROC) or all 14 (F1, 0 where undefined); weighted weighs
//! each observation by its number of positive references.

use cxr_data::{ChexpertLabels, Label, Observation};

use crate::published;

/// How an uncertain (-1) label is binarised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum UncertainPolicy {
    #[default]
    Negative,
    Positive,
    /// Leave the (report, observation) pair out of that observation's scores.
    // No per-value help: the flag describes its values, and per-value help would switch the
    // CLI's `--help` to its long layout.
    #[cfg_attr(feature = "clap", value(help = None::<&str>))]
    Ignore,
}

/// The score a generated label gets for AUROC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum AurocScore {
    /// Positive 1, everything else 0 (after the uncertain policy).
    // No per-value help: the flag describes its values, and per-value help would switch the
    // CLI's `--help` to its long layout.
    #[cfg_attr(feature = "clap", value(help = None::<&str>))]
    #[default]
    Binary,
    /// Positive 1, uncertain 0.5, negative and blank 0.
    #[cfg_attr(feature = "clap", value(help = None::<&str>))]
    ThreeLevel,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReportMetricOptions {
    pub uncertain: UncertainPolicy,
    pub auroc_score: AurocScore,
}

/// Scores of one observation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ObservationScores {
    pub observation: String,
    /// Reference positives and negatives counted.
    pub positives: usize,
    pub negatives: usize,
    /// None when the references hold only one class.
    pub auroc: Option<f64>,
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub precision: f64,
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub recall: f64,
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub f1: f64,
    /// ROC curve points (false-positive rate, true-positive rate), from (0, 0) to (1, 1); empty
    /// when the references hold only one class. In the JSON so that the plots are drawn from a
    /// result read back (absent in results written before it was).
    #[serde(default)]
    pub roc: Vec<(f64, f64)>,
}

/// The whole comparison.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReportTable {
    pub reports: usize,
    pub options: ReportMetricOptions,
    pub per_observation: Vec<ObservationScores>,
    pub auroc: Averages,
    pub f1: Averages,
    /// Jaccard index over the four label values, pooled over every cell (scikit-learn "micro").
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub jaccard_micro: f64,
    /// Mean of the four values' own Jaccard indices (scikit-learn "macro").
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub jaccard_macro: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Averages {
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub micro: f64,
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub macro_: f64,
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub weighted: f64,
}

/// Table 1's column order and abbreviations.
pub const TABLE1: [(Observation, &str); 14] = [
    (Observation::Atelectasis, "Atel."),
    (Observation::Consolidation, "Cnsl."),
    (Observation::Pneumothorax, "Pmtx."),
    (Observation::Edema, "Edema"),
    (Observation::PleuralEffusion, "Eff."),
    (Observation::Pneumonia, "Pna."),
    (Observation::Cardiomegaly, "Cmgl."),
    (Observation::LungLesion, "Les."),
    (Observation::Fracture, "Frac."),
    (Observation::LungOpacity, "Opac."),
    (Observation::EnlargedCardiomediastinum, "ECm."),
    (Observation::NoFinding, "NoF."),
    (Observation::PleuralOther, "P.O."),
    (Observation::SupportDevices, "Dev."),
];

/// The ROC curve: one point per distinct score (tied scores move both rates at once, so the
/// trapezoids under it add up to [`auroc`]); None when `targets` hold one class only.
pub fn roc_curve(scores: &[f64], targets: &[bool]) -> Option<Vec<(f64, f64)>> {
    let positives = targets.iter().filter(|&&t| t).count() as f64;
    let negatives = targets.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len().min(targets.len())).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            if targets[order[j]] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            j += 1;
        }
        points.push((fp / negatives, tp / positives));
        i = j;
    }
    Some(points)
}

/// Area under the ROC curve with ties counted half (Mann-Whitney U).
pub fn auroc(scores: &[f64], targets: &[bool]) -> Option<f64> {
    let mut pairs: Vec<(f64, bool)> = scores
        .iter()
        .copied()
        .zip(targets.iter().copied())
        .collect();
    let positives = pairs.iter().filter(|p| p.1).count();
    let negatives = pairs.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of positive ranks, ties sharing their mean rank.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            j += 1;
        }
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += mean_rank * pairs[i..j].iter().filter(|p| p.1).count() as f64;
        i = j;
    }
    let u = rank_sum - (positives * (positives + 1)) as f64 / 2.0;
    Some(u / (positives * negatives) as f64)
}

pub(crate) fn binarise(label: Option<Label>, policy: UncertainPolicy) -> Option<bool> {
    match label {
        Some(Label::Positive) => Some(true),
        Some(Label::Uncertain) => match policy {
            UncertainPolicy::Positive => Some(true),
            UncertainPolicy::Negative => Some(false),
            UncertainPolicy::Ignore => None,
        },
        _ => Some(false),
    }
}

fn prf(tp: f64, fp: f64, fn_: f64) -> (f64, f64, f64) {
    let p = if tp + fp > 0.0 { tp / (tp + fp) } else { 0.0 };
    let r = if tp + fn_ > 0.0 { tp / (tp + fn_) } else { 0.0 };
    let f = if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    };
    (p, r, f)
}

/// One observation's binary decisions: generated scores (for AUROC), generated calls (for F1)
/// and reference truths.
pub(crate) struct Column {
    pub name: String,
    pub scores: Vec<f64>,
    pub calls: Vec<bool>,
    pub truths: Vec<bool>,
}

impl Column {
    pub(crate) fn new(o: Observation) -> Self {
        Self {
            name: o.name().to_string(),
            scores: Vec::new(),
            calls: Vec::new(),
            truths: Vec::new(),
        }
    }
}

/// Per-observation AUROC / precision / recall / F1 and their micro, macro and weighted means.
pub(crate) fn binary_table(columns: Vec<Column>) -> (Vec<ObservationScores>, Averages, Averages) {
    let mut per = Vec::new();
    let (mut all_scores, mut all_truths) = (Vec::new(), Vec::new());
    let (mut tp_all, mut fp_all, mut fn_all) = (0.0, 0.0, 0.0);
    for c in columns {
        let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
        for (&call, &truth) in c.calls.iter().zip(&c.truths) {
            match (call, truth) {
                (true, true) => tp += 1.0,
                (true, false) => fp += 1.0,
                (false, true) => fn_ += 1.0,
                _ => {}
            }
        }
        let (precision, recall, f1) = prf(tp, fp, fn_);
        tp_all += tp;
        fp_all += fp;
        fn_all += fn_;
        let positives = c.truths.iter().filter(|&&t| t).count();
        per.push(ObservationScores {
            observation: c.name,
            positives,
            negatives: c.truths.len() - positives,
            auroc: auroc(&c.scores, &c.truths),
            precision,
            recall,
            f1,
            roc: roc_curve(&c.scores, &c.truths).unwrap_or_default(),
        });
        all_scores.extend(c.scores);
        all_truths.extend(c.truths);
    }
    let defined: Vec<&ObservationScores> = per.iter().filter(|s| s.auroc.is_some()).collect();
    let support: f64 = defined.iter().map(|s| s.positives as f64).sum();
    let auroc_avg = Averages {
        micro: auroc(&all_scores, &all_truths).unwrap_or(f64::NAN),
        macro_: defined.iter().filter_map(|s| s.auroc).sum::<f64>() / defined.len().max(1) as f64,
        weighted: defined
            .iter()
            .map(|s| s.auroc.unwrap_or(0.0) * s.positives as f64)
            .sum::<f64>()
            / support.max(1.0),
    };
    let f1_support: f64 = per.iter().map(|s| s.positives as f64).sum();
    let f1_avg = Averages {
        micro: prf(tp_all, fp_all, fn_all).2,
        macro_: per.iter().map(|s| s.f1).sum::<f64>() / per.len().max(1) as f64,
        weighted: per.iter().map(|s| s.f1 * s.positives as f64).sum::<f64>() / f1_support.max(1.0),
    };
    (per, auroc_avg, f1_avg)
}

/// Compares the labels of generated reports with those of their references (same order).
pub fn report_metrics(
    generated: &[ChexpertLabels],
    reference: &[ChexpertLabels],
    opts: ReportMetricOptions,
) -> ReportTable {
    assert_eq!(
        generated.len(),
        reference.len(),
        "one reference per generated report"
    );
    let columns = TABLE1
        .iter()
        .map(|&(o, _)| {
            let mut c = Column::new(o);
            for (g, r) in generated.iter().zip(reference) {
                let (Some(truth), Some(call)) = (
                    binarise(r.get(o), opts.uncertain),
                    binarise(g.get(o), opts.uncertain),
                ) else {
                    continue;
                };
                c.scores.push(match (opts.auroc_score, g.get(o)) {
                    (AurocScore::ThreeLevel, Some(Label::Uncertain)) => 0.5,
                    _ => call as u8 as f64,
                });
                c.calls.push(call);
                c.truths.push(truth);
            }
            c
        })
        .collect();
    let (per, auroc_avg, f1_avg) = binary_table(columns);

    // Jaccard over {blank, uncertain, negative, positive}.
    let class = |l: Option<Label>| match l {
        None => 0,
        Some(Label::Uncertain) => 1,
        Some(Label::Negative) => 2,
        Some(Label::Positive) => 3,
    };
    let (mut inter, mut pred_n, mut true_n) = ([0.0f64; 4], [0.0f64; 4], [0.0f64; 4]);
    for (g, r) in generated.iter().zip(reference) {
        for o in Observation::ALL {
            let (cg, cr) = (class(g.get(o)), class(r.get(o)));
            pred_n[cg] += 1.0;
            true_n[cr] += 1.0;
            if cg == cr {
                inter[cg] += 1.0;
            }
        }
    }
    let union: Vec<f64> = (0..4).map(|c| pred_n[c] + true_n[c] - inter[c]).collect();
    let jaccard_micro = inter.iter().sum::<f64>() / union.iter().sum::<f64>().max(1.0);
    let present: Vec<usize> = (0..4).filter(|&c| union[c] > 0.0).collect();
    let jaccard_macro =
        present.iter().map(|&c| inter[c] / union[c]).sum::<f64>() / present.len().max(1) as f64;

    ReportTable {
        reports: generated.len(),
        options: opts,
        per_observation: per,
        auroc: auroc_avg,
        f1: f1_avg,
        jaccard_micro,
        jaccard_macro,
    }
}

/// A paper-style table (AUROC, then F1; one column per observation, then micro, macro and
/// weighted), our row above the published LLM-CXR row. Shared by Table 1 and Table 4.
pub(crate) fn markdown_table(
    abbreviations: &[&str],
    per: &[ObservationScores],
    auroc: Averages,
    f1: Averages,
    published: (&[f64], &[f64]),
    model: &str,
    decimals: usize,
) -> String {
    let header: Vec<&str> = abbreviations
        .iter()
        .copied()
        .chain(["Micro", "Macro", "Weighted"])
        .collect();
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.decimals$}"));
    let mut out = String::new();
    for (name, avg, values, published) in [
        (
            "AUROC",
            auroc,
            per.iter().map(|s| s.auroc).collect::<Vec<_>>(),
            published.0,
        ),
        (
            "F1",
            f1,
            per.iter().map(|s| Some(s.f1)).collect(),
            published.1,
        ),
    ] {
        out += &format!(
            "| {name} | {} |\n|---|{}\n",
            header.join(" | "),
            "---|".repeat(header.len())
        );
        let ours: Vec<String> = values
            .into_iter()
            .chain([Some(avg.micro), Some(avg.macro_), Some(avg.weighted)])
            .map(fmt)
            .collect();
        out += &format!("| {model} | {} |\n", ours.join(" | "));
        let theirs: Vec<String> = published.iter().map(|&v| fmt(Some(v))).collect();
        out += &format!("| LLM-CXR (published) | {} |\n\n", theirs.join(" | "));
    }
    out
}

impl ReportTable {
    /// The table in the paper's layout, with LLM-CXR's published row beneath ours.
    pub fn to_markdown(&self, model: &str) -> String {
        let abbreviations: Vec<&str> = TABLE1.iter().map(|(_, a)| *a).collect();
        let mut out = markdown_table(
            &abbreviations,
            &self.per_observation,
            self.auroc,
            self.f1,
            (&published::REPORT_CLINICAL.0, &published::REPORT_CLINICAL.1),
            model,
            3,
        );
        out += &format!(
            "Jaccard over {{blank, uncertain, negative, positive}}: micro {:.3}, macro {:.3} (LLM-CXR published: micro {:.3}). {} reports; uncertain counted as {:?}; AUROC scores {:?}.\n",
            self.jaccard_micro, self.jaccard_macro, published::REPORT_JACCARD_MICRO, self.reports, self.options.uncertain, self.options.auroc_score
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An average over no observation with both classes is NaN, which JSON writes as null: it
    /// reads back as NaN (a demo rerun reads its earlier evaluations back from their files).
    #[test]
    fn a_nan_average_reads_back_from_json() {
        let a = Averages {
            micro: f64::NAN,
            macro_: 0.5,
            weighted: f64::NAN,
        };
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(text, r#"{"micro":null,"macro_":0.5,"weighted":null}"#);
        let back: Averages = serde_json::from_str(&text).unwrap();
        assert!(back.micro.is_nan() && back.weighted.is_nan() && back.macro_ == 0.5);
    }

    #[test]
    fn roc_curve_matches_sklearn_and_its_area_is_the_auroc() {
        // sklearn.metrics.roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) without its extra
        // (inf) threshold: fpr [0, 0, 0.5, 0.5, 1], tpr [0, 0.5, 0.5, 1, 1].
        let roc = roc_curve(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
        assert_eq!(
            roc,
            vec![(0.0, 0.0), (0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (1.0, 1.0)]
        );
        // With ties and many points, the trapezoids add up to the Mann-Whitney AUROC.
        let scores: Vec<f64> = (0..200).map(|i| ((i * 37) % 11) as f64 / 10.0).collect();
        let targets: Vec<bool> = (0..200).map(|i| (i * 13) % 7 < 3).collect();
        let roc = roc_curve(&scores, &targets).unwrap();
        let area: f64 = roc
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
            .sum();
        assert!((area - auroc(&scores, &targets).unwrap()).abs() < 1e-12);
        assert_eq!(roc_curve(&[0.3, 0.2], &[true, true]), None);
    }

    #[test]
    fn auroc_known_values() {
        // sklearn.metrics.roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
        assert_eq!(
            auroc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]),
            Some(0.75)
        );
        // Ties count half: all scores equal gives 0.5.
        assert_eq!(auroc(&[1.0; 4], &[true, false, true, false]), Some(0.5));
        // Binary scores: AUROC is the balanced accuracy (TPR 2/3, TNR 1/2 -> 7/12).
        let a = auroc(
            &[1.0, 1.0, 0.0, 1.0, 0.0],
            &[true, true, true, false, false],
        )
        .unwrap();
        assert!((a - 7.0 / 12.0).abs() < 1e-12);
        assert_eq!(auroc(&[1.0, 0.0], &[true, true]), None);
    }

    fn labels(pairs: &[(Observation, Label)]) -> ChexpertLabels {
        let mut l = ChexpertLabels::default();
        for &(o, v) in pairs {
            l.set(o, Some(v));
        }
        l
    }

    #[test]
    fn perfect_and_opposite_predictions() {
        use Label::*;
        use Observation::*;
        let refs = vec![
            labels(&[(Edema, Positive), (Cardiomegaly, Negative)]),
            labels(&[(Edema, Negative), (Cardiomegaly, Positive)]),
            labels(&[(Edema, Positive), (Cardiomegaly, Positive)]),
        ];
        let t = report_metrics(&refs, &refs, ReportMetricOptions::default());
        let edema = t
            .per_observation
            .iter()
            .find(|s| s.observation == "Edema")
            .unwrap();
        assert_eq!(
            (edema.auroc, edema.f1, edema.positives),
            (Some(1.0), 1.0, 2)
        );
        assert_eq!(t.f1.micro, 1.0);
        assert_eq!(t.auroc.micro, 1.0);
        assert_eq!(t.jaccard_micro, 1.0);
        let flipped: Vec<_> = refs
            .iter()
            .map(|l| {
                let mut f = *l;
                for o in [Edema, Cardiomegaly] {
                    f.set(
                        o,
                        Some(if l.get(o) == Some(Positive) {
                            Negative
                        } else {
                            Positive
                        }),
                    );
                }
                f
            })
            .collect();
        let t = report_metrics(&flipped, &refs, ReportMetricOptions::default());
        let edema = t
            .per_observation
            .iter()
            .find(|s| s.observation == "Edema")
            .unwrap();
        assert_eq!(edema.auroc, Some(0.0));
        // Micro pools the 12 silent observations too: 4 positives scored 0 against 2 negatives
        // scored 1 and 36 scored 0 (ties half) -> 18 / 38.
        assert!((t.auroc.micro - 18.0 / 38.0).abs() < 1e-12);
        assert_eq!(t.f1.micro, 0.0);
        // 6 of 42 cells differ: micro Jaccard = 36 / (36 + 2 * 6).
        assert!((t.jaccard_micro - 36.0 / 48.0).abs() < 1e-12);
        assert!(t.to_markdown("flipped").contains("| flipped |"));
    }

    #[test]
    fn uncertain_policies() {
        use Label::*;
        use Observation::*;
        let refs = vec![
            labels(&[(Edema, Uncertain)]),
            labels(&[(Edema, Positive)]),
            labels(&[]),
        ];
        let gen = vec![
            labels(&[(Edema, Positive)]),
            labels(&[(Edema, Positive)]),
            labels(&[]),
        ];
        let edema = |policy| {
            let t = report_metrics(
                &gen,
                &refs,
                ReportMetricOptions {
                    uncertain: policy,
                    ..Default::default()
                },
            );
            t.per_observation
                .into_iter()
                .find(|s| s.observation == "Edema")
                .unwrap()
        };
        assert_eq!(edema(UncertainPolicy::Positive).f1, 1.0);
        assert!((edema(UncertainPolicy::Negative).f1 - 2.0 / 3.0).abs() < 1e-12);
        let ignored = edema(UncertainPolicy::Ignore);
        assert_eq!(
            (ignored.positives, ignored.negatives, ignored.f1),
            (1, 1, 1.0)
        );
    }
}
