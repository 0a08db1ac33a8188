//! What llm-cxr knows about a chest X-ray besides its pixels: the 14 CheXpert labels, the
//! report and its FINDINGS / IMPRESSION sections, and the loaders that read datasets users
//! already have (MIMIC-CXR-JPG, Open-i / R2Gen, a plain CSV) into one record type.

pub mod datasets;
pub mod labels;
pub mod report;

pub use datasets::{open_dataset, CxrDataset, CxrRecord, DataError, DatasetKind, Split};
pub use labels::{ChexpertLabels, Label, Observation};
pub use report::ReportSections;

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, synced, then renamed
/// over the target, so a reader (or a resumed run) never sees a half-written file. The one file
/// writer of llm-cxr.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
