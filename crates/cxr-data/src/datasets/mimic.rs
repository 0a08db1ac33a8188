//! MIMIC-CXR-JPG v2 (`files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg`) with the reports of MIMIC-CXR
//! (`files/pXX/pSUBJECT/sSTUDY.txt`, looked for in the same tree or in a sibling
//! `mimic-cxr-reports/`), the CheXpert labels, the official split and the metadata CSVs
//! (`mimic-cxr-2.0.0-{chexpert,split,metadata}.csv[.gz]`). llm-cxr's phantom tree uses the same
//! layout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{
    column, labels_from_row, optional_column, read_csv, CxrDataset, CxrRecord, DataError, Split,
};

pub struct MimicCxrJpg {
    records: Vec<CxrRecord>,
}

fn find_table(root: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.csv"), format!("{stem}.csv.gz")]
        .into_iter()
        .map(|n| root.join(n))
        .find(|p| p.is_file())
}

/// `files/p10/p10000032/s50414267`: the folder of a study.
pub fn study_dir(root: &Path, subject_id: &str, study_id: &str) -> PathBuf {
    // By characters: a byte slice would split a multi-byte first character.
    let group: String = subject_id.chars().take(2).collect();
    root.join("files")
        .join(format!("p{group}"))
        .join(format!("p{subject_id}"))
        .join(format!("s{study_id}"))
}

impl MimicCxrJpg {
    pub fn open(root: &Path) -> Result<Self, DataError> {
        let split_path = find_table(root, "mimic-cxr-2.0.0-split").ok_or_else(|| {
            DataError::format(
                root,
                "not a MIMIC-CXR-JPG folder: mimic-cxr-2.0.0-split.csv(.gz) is missing",
            )
        })?;
        let (header, rows) = read_csv(&split_path)?;
        let (c_dicom, c_study, c_subject, c_split) = (
            column(&split_path, &header, &["dicom_id"])?,
            column(&split_path, &header, &["study_id"])?,
            column(&split_path, &header, &["subject_id"])?,
            column(&split_path, &header, &["split"])?,
        );

        let mut views = HashMap::new();
        if let Some(meta_path) = find_table(root, "mimic-cxr-2.0.0-metadata") {
            let (h, rows) = read_csv(&meta_path)?;
            let d = column(&meta_path, &h, &["dicom_id"])?;
            if let Some(v) = optional_column(&h, &["ViewPosition"]) {
                for (_, r) in rows {
                    let view = r.get(v).unwrap_or("").trim();
                    if !view.is_empty() {
                        views.insert(r.get(d).unwrap_or("").to_string(), view.to_string());
                    }
                }
            }
        }

        let mut labels = HashMap::new();
        if let Some(lab_path) = find_table(root, "mimic-cxr-2.0.0-chexpert") {
            let (h, rows) = read_csv(&lab_path)?;
            let s = column(&lab_path, &h, &["study_id"])?;
            for (line, r) in rows {
                if let Some(l) = labels_from_row(&lab_path, &h, line, &r)? {
                    labels.insert(r.get(s).unwrap_or("").to_string(), l);
                }
            }
        }

        let reports_root = [
            root.to_path_buf(),
            root.join("mimic-cxr-reports"),
            root.join("../mimic-cxr-reports"),
        ];
        let mut reports: HashMap<String, Option<String>> = HashMap::new();
        let mut records = Vec::with_capacity(rows.len());
        let mut ids = super::unique_ids::UniqueIds::new();
        for (line, r) in rows {
            let get = |i: usize| r.get(i).unwrap_or("").trim().to_string();
            let (dicom_id, study_id, subject_id) = (get(c_dicom), get(c_study), get(c_subject));
            let split = Split::parse(&get(c_split)).ok_or_else(|| DataError::Row {
                path: split_path.clone(),
                line,
                message: format!("unknown split {:?}", get(c_split)),
            })?;
            for (column, id) in [
                ("dicom_id", &dicom_id),
                ("subject_id", &subject_id),
                ("study_id", &study_id),
            ] {
                super::paths::check_plain_id(id).map_err(|e| DataError::Row {
                    path: split_path.clone(),
                    line,
                    message: format!("{column}: {e}"),
                })?;
            }
            ids.insert(&split_path, &dicom_id, || format!("line {line}"))?;
            let dir = study_dir(root, &subject_id, &study_id);
            let report = match reports.get(&study_id) {
                Some(r) => r.clone(),
                None => {
                    let text = reports_root.iter().find_map(|base| {
                        let p = study_dir(base, &subject_id, &study_id).with_extension("txt");
                        std::fs::read_to_string(p).ok()
                    });
                    reports.insert(study_id.clone(), text.clone());
                    text
                }
            };
            records.push(CxrRecord {
                image_path: dir.join(format!("{dicom_id}.jpg")),
                view: views.get(&dicom_id).cloned(),
                labels: labels.get(&study_id).copied(),
                image_id: dicom_id,
                subject_id: Some(subject_id),
                study_id: Some(study_id),
                split: Some(split),
                report,
            });
        }
        Ok(Self { records })
    }
}

impl CxrDataset for MimicCxrJpg {
    fn name(&self) -> &str {
        "mimic-cxr-jpg"
    }

    fn records(&self) -> &[CxrRecord] {
        &self.records
    }
}
