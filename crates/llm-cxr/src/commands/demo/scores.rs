//! The main job's measures: what each held-out evaluation scores, their targets, and the curve
//! of scores along fine-tuning.

/// The four measures the main job aims at.
#[derive(Clone, Copy)]
pub enum Measure {
    ReportF1,
    ImageAuroc,
    VqaAccuracy,
    SideSeverity,
}

impl Measure {
    pub const ALL: [Measure; 4] = [
        Measure::ReportF1,
        Measure::ImageAuroc,
        Measure::VqaAccuracy,
        Measure::SideSeverity,
    ];

    /// What it measures, as the page's target table says.
    pub fn label(self) -> &'static str {
        match self {
            Measure::ReportF1 => "report micro-F1 (labeler, generated vs truth)",
            Measure::ImageAuroc => "generated images: classifier micro-AUROC against their reports",
            Measure::VqaAccuracy => "VQA yes/no accuracy",
            Measure::SideSeverity => {
                "generated images: side and severity as the report says (template judge)"
            }
        }
    }

    /// Its short name (log lines, the plot's legend).
    pub fn key(self) -> &'static str {
        match self {
            Measure::ReportF1 => "report_f1",
            Measure::ImageAuroc => "image_auroc",
            Measure::VqaAccuracy => "vqa_accuracy",
            Measure::SideSeverity => "side_severity",
        }
    }

    /// The main job's target on held-out phantoms.
    pub fn target(self) -> f64 {
        match self {
            Measure::SideSeverity => 0.80,
            _ => 0.90,
        }
    }
}

/// One held-out evaluation of the fine-tuned model.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct CurvePoint {
    pub step: u64,
    /// Seconds of fine-tuning up to this step.
    pub train_seconds: f64,
    #[serde(flatten)]
    pub scores: Scores,
    /// The control: each case's outputs scored against another case (the next one's truth;
    /// its questions asked of the next case's image). A model that ignores the image scores
    /// the same on both; the gap is what it learned from the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shuffled: Option<Scores>,
}

impl CurvePoint {
    pub fn get(&self, m: Measure) -> Option<f64> {
        self.scores.get(m)
    }

    pub fn get_shuffled(&self, m: Measure) -> Option<f64> {
        self.shuffled.as_ref().and_then(|s| s.get(m))
    }

    /// `score (shuffled score)` of a measure.
    pub fn both(&self, m: Measure) -> String {
        format!("{} ({})", fmt3(self.get(m)), fmt3(self.get_shuffled(m)))
    }
}

#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Scores {
    pub report_f1: Option<f64>,
    pub image_auroc: Option<f64>,
    pub vqa_accuracy: Option<f64>,
    /// Share of the drawn images' findings on the report's side and at its severity.
    pub side_severity: Option<f64>,
}

impl Scores {
    /// The scores of an evaluation, and the judge's.
    pub fn of(e: &cxr_eval::Evaluations, side_severity: Option<f64>) -> Self {
        let finite = |v: f64| v.is_finite().then_some(v);
        Scores {
            side_severity,
            report_f1: e.report.as_ref().and_then(|r| finite(r.clinical.f1.micro)),
            image_auroc: e
                .image
                .as_ref()
                .and_then(|i| finite(i.clinical.auroc.micro)),
            vqa_accuracy: e
                .vqa
                .as_ref()
                .and_then(|v| v.scores.overall.yes_no_accuracy),
        }
    }

    pub fn get(&self, m: Measure) -> Option<f64> {
        match m {
            Measure::ReportF1 => self.report_f1,
            Measure::ImageAuroc => self.image_auroc,
            Measure::VqaAccuracy => self.vqa_accuracy,
            Measure::SideSeverity => self.side_severity,
        }
    }
}

/// A score to three decimals, or `n/a`.
pub fn fmt3(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.3}"))
}
