//! What llm-cxr knows about a chest X-ray besides its pixels: the 14 CheXpert labels, the
//! report and its FINDINGS / IMPRESSION sections, and the loaders that read datasets users
//! already have (MIMIC-CXR-JPG, Open-i / R2Gen, a plain CSV) into one record type.

pub mod datasets;
pub mod labels;
pub mod output;
pub mod report;

pub use datasets::{open_dataset, CxrDataset, CxrRecord, DataError, DatasetKind, Split};
pub use labels::{ChexpertLabels, Label, Observation};
pub use report::ReportSections;

pub use output::{replace_dir_atomic, write_atomic, LockError, OutputLock, EXPORT_MARKER};
