//! Dataset loaders behind one trait. Each loader reads a layout users already have and yields
//! one [`CxrRecord`] per image, with its report and (when the layout has them) CheXpert labels,
//! split and view. Nothing is decoded here: images are read later through `cxr_image`.

mod csv_table;
mod folder;
pub mod mimic;
mod openi;
mod paths;
pub mod unique_ids;

use std::path::{Path, PathBuf};

pub use csv_table::CsvDataset;
pub use mimic::MimicCxrJpg;
pub use openi::OpenI;

use crate::{ChexpertLabels, ReportSections};

/// The official split an image belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validate,
    Test,
}

impl Split {
    /// Parses the spellings found in MIMIC (`validate`) and R2Gen (`val`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Some(Split::Train),
            "validate" | "val" | "valid" | "validation" => Some(Split::Validate),
            "test" => Some(Split::Test),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validate => "validate",
            Split::Test => "test",
        }
    }
}

/// One image with what is known about it.
#[derive(Debug, Clone, PartialEq)]
pub struct CxrRecord {
    /// Unique within the dataset (MIMIC: dicom_id).
    pub image_id: String,
    pub image_path: PathBuf,
    pub subject_id: Option<String>,
    pub study_id: Option<String>,
    /// DICOM ViewPosition spelling: `PA`, `AP`, `LATERAL`, ...
    pub view: Option<String>,
    pub split: Option<Split>,
    /// The whole report text as stored.
    pub report: Option<String>,
    pub labels: Option<ChexpertLabels>,
}

impl CxrRecord {
    /// FINDINGS / IMPRESSION split the LLM-CXR way.
    pub fn sections(&self) -> Option<ReportSections> {
        self.report.as_deref().map(ReportSections::parse)
    }

    /// Frontal views (PA or AP), the ones LLM-CXR's stage 2 and evaluation keep.
    pub fn is_frontal(&self) -> bool {
        matches!(self.view.as_deref(), Some("PA" | "AP"))
    }
}

/// Every loader: a name and its records.
pub trait CxrDataset: Send + Sync {
    fn name(&self) -> &str;
    fn records(&self) -> &[CxrRecord];
}

/// The layouts llm-cxr reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// MIMIC-CXR-JPG (and llm-cxr's phantom tree, which has the same layout).
    Mimic,
    /// Indiana University / Open-i: a folder of XML reports and a folder of images, or R2Gen's
    /// annotation.json.
    OpenI,
    /// A CSV with image path, report and optional labels.
    Csv,
    /// A folder of images without reports, split 50/50 by a stable hash of each path.
    Folder,
}

/// Why a dataset could not be read. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: line {line}: {message}")]
    Row {
        path: PathBuf,
        line: u64,
        message: String,
    },
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn format(path: &Path, message: impl Into<String>) -> Self {
        DataError::Format {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Opens a dataset of the given layout at `path` (a folder, or a file for CSV / R2Gen JSON).
/// Two records with one image id are refused, naming both.
pub fn open_dataset(kind: DatasetKind, path: &Path) -> Result<Box<dyn CxrDataset>, DataError> {
    let dataset: Box<dyn CxrDataset> = match kind {
        DatasetKind::Mimic => Box::new(MimicCxrJpg::open(path)?),
        DatasetKind::OpenI => Box::new(OpenI::open(path)?),
        DatasetKind::Csv => Box::new(CsvDataset::open(path)?),
        DatasetKind::Folder => Box::new(folder::ImageFolder::open(path)?),
    };
    unique_ids::check_records(path, dataset.records())?;
    Ok(dataset)
}

/// The most a gzipped table may inflate to: 2.5x MIMIC-CXR's largest (the metadata table, about
/// 50 MB). Parsed rows take up to ~8x their text for short rows, so this bounds memory at ~1 GB.
pub const MAX_INFLATED_TABLE_BYTES: u64 = 128 << 20;

/// Fails the read once more than [`MAX_INFLATED_TABLE_BYTES`] came out of the decoder.
struct InflateLimit<R> {
    inner: R,
    read: u64,
}

impl<R: std::io::Read> std::io::Read for InflateLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > MAX_INFLATED_TABLE_BYTES {
            return Err(std::io::Error::other(format!(
                "the gzipped table inflates past {MAX_INFLATED_TABLE_BYTES} bytes"
            )));
        }
        Ok(n)
    }
}

/// Reads a whole CSV (plain or gzip) into header + rows, naming the file on failure.
pub(crate) fn read_csv(
    path: &Path,
) -> Result<(csv::StringRecord, Vec<(u64, csv::StringRecord)>), DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader: Box<dyn std::io::Read> = if path.extension().is_some_and(|e| e == "gz") {
        // Capped: gzip expands up to ~1000:1, so a small file could otherwise fill memory.
        use std::io::Read;
        Box::new(InflateLimit {
            inner: flate2::read::MultiGzDecoder::new(file).take(MAX_INFLATED_TABLE_BYTES + 1),
            read: 0,
        })
    } else {
        Box::new(file)
    };
    let mut csv = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(reader);
    let header = csv
        .headers()
        .map_err(|e| DataError::format(path, format!("cannot read CSV header: {e}")))?
        .clone();
    let mut rows = Vec::new();
    for row in csv.records() {
        let row = row.map_err(|e| DataError::Row {
            path: path.to_path_buf(),
            line: e.position().map_or(0, |p| p.line()),
            message: e.to_string(),
        })?;
        let line = row.position().map_or(0, |p| p.line());
        rows.push((line, row));
    }
    Ok((header, rows))
}

/// Finds a column by name, or explains which columns the file has.
pub(crate) fn column(
    path: &Path,
    header: &csv::StringRecord,
    names: &[&str],
) -> Result<usize, DataError> {
    optional_column(header, names).ok_or_else(|| {
        DataError::format(
            path,
            format!(
                "no column named {} (columns: {})",
                names.join(" or "),
                header.iter().collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

pub(crate) fn optional_column(header: &csv::StringRecord, names: &[&str]) -> Option<usize> {
    header
        .iter()
        .position(|h| names.iter().any(|n| h.trim().eq_ignore_ascii_case(n)))
}

/// Reads the 14 CheXpert label columns of a row, by header name; `None` if the file has none.
pub(crate) fn labels_from_row(
    path: &Path,
    header: &csv::StringRecord,
    line: u64,
    row: &csv::StringRecord,
) -> Result<Option<ChexpertLabels>, DataError> {
    let mut labels = ChexpertLabels::default();
    let mut any = false;
    for o in crate::Observation::ALL {
        if let Some(i) = optional_column(header, &[o.name()]) {
            any = true;
            let cell = row.get(i).unwrap_or("");
            let l = ChexpertLabels::parse_cell(cell).map_err(|e| DataError::Row {
                path: path.to_path_buf(),
                line,
                message: format!("column {:?}: {e}", o.name()),
            })?;
            labels.set(o, l);
        }
    }
    Ok(any.then_some(labels))
}
