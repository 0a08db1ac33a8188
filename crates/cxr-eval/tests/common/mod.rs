//! Setup shared by cxr-eval's integration tests.

use std::path::PathBuf;

use cxr_eval::ReportLabeler;

/// The labeler on the CheXpert phrase lists in ../shared/data; None (the test skips, saying so)
/// when they are absent, except under CI=true, where they must be there.
pub fn labeler() -> Option<ReportLabeler> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/chexpert-labeler-phrases");
    if !dir.is_dir() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{} is absent (CI=true: CI must have it)", dir.display());
        }
        eprintln!("SKIP: {} is absent", dir.display());
        return None;
    }
    Some(ReportLabeler::from_dir(&dir).unwrap())
}
