//! Image ids name token files, VQA answers and training samples, so two images under one id
//! would silently train a report against another image's codes. Every loader's ids are checked
//! here: a loader that knows where each id came from (a CSV line, an XML file) registers it with
//! [`UniqueIds`]; [`check_records`] is the last word on any record list, naming the two records.

use std::collections::HashMap;
use std::path::Path;

use super::{CxrRecord, DataError};

/// Ids seen so far, each with where it came from.
#[derive(Default)]
pub struct UniqueIds {
    seen: HashMap<String, String>,
}

impl UniqueIds {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `id`, found at `source` (e.g. `labels.csv line 7`); a second registration of
    /// the same id is refused naming both sources, as an error on `path`.
    pub fn insert(
        &mut self,
        path: &Path,
        id: &str,
        source: impl FnOnce() -> String,
    ) -> Result<(), DataError> {
        match self.seen.get(id) {
            Some(first) => Err(DataError::format(
                path,
                format!(
                    "image id {id:?} appears twice: at {first} and at {}; image ids must be unique",
                    source()
                ),
            )),
            None => {
                self.seen.insert(id.to_string(), source());
                Ok(())
            }
        }
    }
}

/// Where a record came from, as far as the record tells: its image path and study.
pub fn describe(record: &CxrRecord) -> String {
    match &record.study_id {
        Some(study) => format!("{} (study {study})", record.image_path.display()),
        None => record.image_path.display().to_string(),
    }
}

/// Refuses a record list in which two records share an image id, naming both; `path` is the
/// dataset (or datasets) they were read from.
pub fn check_records(path: &Path, records: &[CxrRecord]) -> Result<(), DataError> {
    let mut ids = UniqueIds::new();
    for (i, r) in records.iter().enumerate() {
        ids.insert(path, &r.image_id, || {
            format!("record {} ({})", i + 1, describe(r))
        })?;
    }
    Ok(())
}
