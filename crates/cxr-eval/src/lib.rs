//! Evaluation of llm-cxr's outputs the way the field reads them: the CheXpert-style report
//! labeler ([`ReportLabeler`]) that turns free-text reports into the 14 CheXpert labels, which the
//! report tables (AUROC / F1 of generated reports) and VQA scoring are built on; the features the
//! image scores read off images (classifier, Inception-v3); and the evaluations themselves, each
//! a typed result ([`ReportEvaluation`], [`ImageEvaluation`], [`VqaEvaluation`],
//! [`VqganEvaluation`]) that is exactly what its JSON file holds, so that anything renders from
//! results and never computes them. LLM-CXR's published numbers are in [`published`].

pub mod csv_columns;
pub mod evaluations;
pub mod features;
pub mod image_eval;
pub mod image_metrics;
pub mod labeler;
pub mod nlg;
pub mod published;
pub mod report_eval;
pub mod report_metrics;
pub mod vqa;
pub mod vqa_eval;
pub mod vqgan_eval;

pub use evaluations::{EvalError, Evaluations, OnProgress, Presentation, Progress};
pub use image_eval::{ImageEvalOptions, ImageEvaluation, ImageModels};
pub use labeler::{label_csv, LabelerError, ReportLabeler};
pub use report_eval::ReportEvaluation;
pub use vqa_eval::VqaEvaluation;
pub use vqgan_eval::VqganEvaluation;

/// JSON has no NaN: serde_json writes a NaN score (an average over no observation with both
/// classes) as `null`, read back here as NaN, so that results round-trip through their files.
pub(crate) fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    use serde::Deserialize;
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}
