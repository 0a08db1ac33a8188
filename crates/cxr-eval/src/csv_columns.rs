//! Reads the named columns of the CSV files the evaluations take (report pairs, generated and
//! real images, VQA answers): columns are found by name (case and surrounding spaces aside), so
//! any other columns may be present, and `image` cells are resolved against the CSV's folder.

use std::path::{Path, PathBuf};

/// Why a CSV could not be read; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("reading {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error("{path}: no CSV header")]
    Header {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error("{path}: no column named {name} (columns: {columns})")]
    MissingColumn {
        path: PathBuf,
        name: String,
        columns: String,
    },
    #[error("{path}: row {row}")]
    Row {
        path: PathBuf,
        /// The row's line number, the header being line 1.
        row: usize,
        #[source]
        source: csv::Error,
    },
    #[error("{path}: no rows")]
    Empty { path: PathBuf },
}

/// One row: the cells of the required columns, then those of the optional ones (`None` where
/// the column is absent), each in the order asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvRow {
    pub required: Vec<String>,
    pub optional: Vec<Option<String>>,
}

/// Reads the named columns of every row; `optional` columns may be absent. A file without rows
/// is an error.
pub fn read_columns(
    path: &Path,
    required: &[&str],
    optional: &[&str],
) -> Result<Vec<CsvRow>, CsvError> {
    let mut reader = csv::Reader::from_path(path).map_err(|source| CsvError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let header = reader
        .headers()
        .map_err(|source| CsvError::Header {
            path: path.to_path_buf(),
            source,
        })?
        .clone();
    let find = |name: &str| {
        header
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
    };
    let required_cols: Vec<usize> = required
        .iter()
        .map(|name| {
            find(name).ok_or_else(|| CsvError::MissingColumn {
                path: path.to_path_buf(),
                name: name.to_string(),
                columns: header.iter().collect::<Vec<_>>().join(", "),
            })
        })
        .collect::<Result<_, _>>()?;
    let optional_cols: Vec<Option<usize>> = optional.iter().map(|name| find(name)).collect();
    let base = path.parent().unwrap_or(Path::new("."));
    let cell = |row: &csv::StringRecord, c: usize, name: &str| {
        let v = row.get(c).unwrap_or("").to_string();
        if name == "image" {
            base.join(v).display().to_string()
        } else {
            v
        }
    };
    let mut rows = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let row = row.map_err(|source| CsvError::Row {
            path: path.to_path_buf(),
            row: i + 2,
            source,
        })?;
        let required = required_cols
            .iter()
            .zip(required)
            .map(|(&c, name)| cell(&row, c, name))
            .collect();
        let optional = optional_cols
            .iter()
            .zip(optional)
            .map(|(c, name)| c.map(|c| cell(&row, c, name)))
            .collect();
        rows.push(CsvRow { required, optional });
    }
    if rows.is_empty() {
        return Err(CsvError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(rows)
}

/// The cells of required columns only, one `Vec` per row.
pub fn read_required(path: &Path, names: &[&str]) -> Result<Vec<Vec<String>>, CsvError> {
    Ok(read_columns(path, names, &[])?
        .into_iter()
        .map(|r| r.required)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_by_name_images_beside_the_csv_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("answers.csv");
        std::fs::write(&csv, " Image ,extra,Question\na.png,x,Is it?\n").unwrap();
        let rows = read_columns(&csv, &["question"], &["image", "type"]).unwrap();
        assert_eq!(
            rows,
            vec![CsvRow {
                required: vec!["Is it?".into()],
                optional: vec![Some(dir.path().join("a.png").display().to_string()), None],
            }]
        );
        let err = read_required(&csv, &["answer"]).unwrap_err().to_string();
        assert!(err.contains("answers.csv") && err.contains("no column named answer"));
        assert!(err.contains("Image , extra, Question"), "{err}");
        std::fs::write(&csv, "question\n").unwrap();
        let err = read_required(&csv, &["question"]).unwrap_err().to_string();
        assert!(err.ends_with("answers.csv: no rows"), "{err}");
    }
}
