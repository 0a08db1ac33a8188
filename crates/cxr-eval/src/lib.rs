//! Evaluation of llm-cxr's outputs the way the field reads them: the CheXpert-style report
//! labeler ([`ReportLabeler`]) that turns free-text reports into the 14 CheXpert labels, which the
//! report tables (AUROC / F1 of generated reports) and VQA scoring are built on.

pub mod image_metrics;
pub mod labeler;
pub mod nlg;
pub mod report_metrics;
pub mod vqa;

pub use labeler::{label_csv, LabelerError, ReportLabeler};
