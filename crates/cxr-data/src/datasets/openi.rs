//! Indiana University chest X-rays (Open-i), in either of its two common layouts:
//! - the original: a folder of XML reports (`ecgen-radiology/*.xml`, each with
//!   `<AbstractText Label="FINDINGS">`, `<AbstractText Label="IMPRESSION">` and one
//!   `<parentImage id="CXR1_1_IM-0001-3001">` per image) beside a folder of images named by that
//!   id (`.png` or `.jpg`);
//! - R2Gen's `annotation.json` (`{"train": [{"id", "report", "image_path": [...], "split"}], ...}`)
//!   with images under an `images/` folder beside it. R2Gen's report is the findings text.

use std::path::{Path, PathBuf};

use super::{CxrDataset, CxrRecord, DataError, Split};
use crate::ReportSections;

pub struct OpenI {
    records: Vec<CxrRecord>,
}

impl OpenI {
    /// `path` is the R2Gen `annotation.json`, or a folder holding XML reports (directly or under
    /// `ecgen-radiology/`) and images (directly, or under `images/` or `NLMCXR_png/`).
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let records = if path.is_file() {
            read_r2gen(path)?
        } else {
            read_xml_folder(path)?
        };
        Ok(Self { records })
    }
}

fn read_r2gen(path: &Path) -> Result<Vec<CxrRecord>, DataError> {
    #[derive(serde::Deserialize)]
    struct Entry {
        id: String,
        report: String,
        image_path: Vec<String>,
        #[serde(default)]
        split: Option<String>,
        #[serde(default)]
        study_id: Option<serde_json::Value>,
        #[serde(default)]
        subject_id: Option<serde_json::Value>,
    }
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let splits: std::collections::BTreeMap<String, Vec<Entry>> = serde_json::from_str(&text)
        .map_err(|e| DataError::format(path, format!("not an R2Gen annotation.json: {e}")))?;
    let base = path.parent().unwrap_or(Path::new(".")).join("images");
    let id_string = |v: Option<serde_json::Value>| {
        v.map(|v| match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        })
    };
    let mut records = Vec::new();
    let mut ids = super::unique_ids::UniqueIds::new();
    for (split_name, entries) in splits {
        for e in entries {
            let split = Split::parse(e.split.as_deref().unwrap_or(&split_name));
            let sections = ReportSections {
                findings: Some(e.report.trim().to_string()).filter(|s| !s.is_empty()),
                impression: None,
            };
            let (study, subject) = (id_string(e.study_id), id_string(e.subject_id));
            for (k, rel) in e.image_path.iter().enumerate() {
                super::paths::check_relative_path(rel).map_err(|why| {
                    DataError::format(path, format!("entry {:?}: image_path: {why}", e.id))
                })?;
                let image_id = format!("{}_{k}", e.id);
                ids.insert(path, &image_id, || {
                    format!("{split_name:?} entry {:?}, image {rel}", e.id)
                })?;
                records.push(CxrRecord {
                    image_id,
                    image_path: base.join(rel),
                    subject_id: subject.clone(),
                    study_id: study.clone().or_else(|| Some(e.id.clone())),
                    view: None,
                    split,
                    report: Some(sections.to_report()),
                    labels: None,
                });
            }
        }
    }
    Ok(records)
}

fn first_existing(candidates: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    candidates.into_iter().find(|p| p.is_dir())
}

fn read_xml_folder(root: &Path) -> Result<Vec<CxrRecord>, DataError> {
    let xml_dir = first_existing([root.join("ecgen-radiology"), root.to_path_buf()])
        .ok_or_else(|| DataError::format(root, "not a folder"))?;
    let image_dir = first_existing([
        root.join("images"),
        root.join("NLMCXR_png"),
        root.to_path_buf(),
    ])
    .unwrap_or_else(|| root.to_path_buf());
    let mut xml_files: Vec<PathBuf> = std::fs::read_dir(&xml_dir)
        .map_err(|e| DataError::io(&xml_dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("xml")))
        .collect();
    xml_files.sort();
    if xml_files.is_empty() {
        return Err(DataError::format(
            &xml_dir,
            "no Open-i XML reports (*.xml) found",
        ));
    }
    let mut records = Vec::new();
    let mut ids = super::unique_ids::UniqueIds::new();
    for xml_path in xml_files {
        let text = std::fs::read_to_string(&xml_path).map_err(|e| DataError::io(&xml_path, e))?;
        let doc = roxmltree::Document::parse(&text)
            .map_err(|e| DataError::format(&xml_path, format!("invalid XML: {e}")))?;
        let section = |label: &str| {
            doc.descendants()
                .find(|n| n.has_tag_name("AbstractText") && n.attribute("Label") == Some(label))
                .and_then(|n| n.text())
                .map(|t| t.split_whitespace().collect::<Vec<_>>().join(" "))
                .filter(|t| !t.is_empty())
        };
        let sections = ReportSections {
            findings: section("FINDINGS"),
            impression: section("IMPRESSION"),
        };
        let report_id = xml_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        for image in doc.descendants().filter(|n| n.has_tag_name("parentImage")) {
            let Some(id) = image.attribute("id") else {
                continue;
            };
            super::paths::check_plain_id(id).map_err(|why| {
                let line = doc.text_pos_at(image.range().start).row;
                DataError::Row {
                    path: xml_path.clone(),
                    line: line.into(),
                    message: format!("parentImage: {why}"),
                }
            })?;
            ids.insert(root, id, || xml_path.display().to_string())?;
            let image_path = ["png", "jpg", "jpeg", "dcm"]
                .iter()
                .map(|ext| image_dir.join(format!("{id}.{ext}")))
                .find(|p| p.is_file())
                .unwrap_or_else(|| image_dir.join(format!("{id}.png")));
            records.push(CxrRecord {
                image_id: id.to_string(),
                image_path,
                subject_id: None,
                study_id: Some(report_id.clone()),
                view: None,
                split: None,
                report: Some(sections.to_report()),
                labels: None,
            });
        }
    }
    Ok(records)
}

impl CxrDataset for OpenI {
    fn name(&self) -> &str {
        "open-i"
    }

    fn records(&self) -> &[CxrRecord] {
        &self.records
    }
}
