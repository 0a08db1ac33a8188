//! A plain CSV: one row per image with its path (relative to the CSV's folder or absolute), its
//! report, and optionally the 14 CheXpert label columns, `split`, `view`, `subject_id`, `study_id`.

use std::path::Path;

use super::{
    column, labels_from_row, optional_column, read_csv, CxrDataset, CxrRecord, DataError, Split,
};

pub struct CsvDataset {
    records: Vec<CxrRecord>,
}

impl CsvDataset {
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let (header, rows) = read_csv(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let c_image = column(path, &header, &["image", "image_path", "path", "filename"])?;
        let c_report = column(path, &header, &["report", "reports", "text"])?;
        let c_split = optional_column(&header, &["split"]);
        let c_view = optional_column(&header, &["view", "ViewPosition"]);
        let c_subject = optional_column(&header, &["subject_id", "patient_id"]);
        let c_study = optional_column(&header, &["study_id"]);
        let mut records = Vec::with_capacity(rows.len());
        let mut ids = super::unique_ids::UniqueIds::new();
        for (line, r) in rows {
            let cell = |c: Option<usize>| {
                c.and_then(|i| r.get(i))
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            };
            let image = cell(Some(c_image)).ok_or_else(|| DataError::Row {
                path: path.to_path_buf(),
                line,
                message: "empty image path".into(),
            })?;
            // Absolute paths are part of this layout (a CSV indexing images elsewhere); a NUL
            // would be cut short by the OS.
            if image.contains('\0') {
                return Err(DataError::Row {
                    path: path.to_path_buf(),
                    line,
                    message: "image path contains NUL".into(),
                });
            }
            let split = match cell(c_split) {
                Some(s) => Some(Split::parse(&s).ok_or_else(|| DataError::Row {
                    path: path.to_path_buf(),
                    line,
                    message: format!("unknown split {s:?}"),
                })?),
                None => None,
            };
            let image_id = Path::new(&image)
                .file_stem()
                .map_or(image.clone(), |s| s.to_string_lossy().into_owned());
            ids.insert(path, &image_id, || format!("line {line} ({image})"))?;
            records.push(CxrRecord {
                image_id,
                image_path: base.join(&image),
                subject_id: cell(c_subject),
                study_id: cell(c_study),
                view: cell(c_view).map(|v| v.to_ascii_uppercase()),
                split,
                report: r
                    .get(c_report)
                    .map(str::to_string)
                    .filter(|s| !s.trim().is_empty()),
                labels: labels_from_row(path, &header, line, &r)?,
            });
        }
        Ok(Self { records })
    }
}

impl CxrDataset for CsvDataset {
    fn name(&self) -> &str {
        "csv"
    }

    fn records(&self) -> &[CxrRecord] {
        &self.records
    }
}
