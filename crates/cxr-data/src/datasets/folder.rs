//! A folder of images with no reports (e.g. public CXR collections): every PNG, JPEG or DICOM
//! file below it, in path order. With no split given, each image goes to train or test by a
//! stable hash of its relative path (FNV-1a, even = train), so the halves never change between
//! runs or machines. Enough for the image tokenizer, which needs no text.

use std::path::{Path, PathBuf};

use super::{CxrDataset, CxrRecord, DataError, Split};

pub struct ImageFolder {
    name: String,
    records: Vec<CxrRecord>,
}

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        matches!(
            e.to_ascii_lowercase().as_str(),
            "png" | "jpg" | "jpeg" | "dcm"
        )
    })
}

/// Deeper than any dataset's tree (MIMIC's is 4): a bound on the recursion.
const MAX_DEPTH: usize = 32;

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    if depth > MAX_DEPTH {
        return Err(DataError::format(
            dir,
            format!("folders nested deeper than {MAX_DEPTH}"),
        ));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        // Symlinked folders are not followed: a link to an ancestor would recurse forever.
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir {
            walk(&path, depth + 1, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// FNV-1a 64 of the path's bytes.
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl ImageFolder {
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        if !dir.is_dir() {
            return Err(DataError::format(dir, "not a folder of images"));
        }
        let mut paths = Vec::new();
        walk(dir, 0, &mut paths)?;
        paths.sort();
        if paths.is_empty() {
            return Err(DataError::format(
                dir,
                "no PNG, JPEG or DICOM files in this folder",
            ));
        }
        let records = paths
            .into_iter()
            .map(|p| {
                let rel = p
                    .strip_prefix(dir)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                let id = rel
                    .rsplit_once('.')
                    .map_or(rel.as_str(), |(stem, _)| stem)
                    .replace(['/', '\\'], "_");
                CxrRecord {
                    split: Some(if stable_hash(&rel).is_multiple_of(2) {
                        Split::Train
                    } else {
                        Split::Test
                    }),
                    image_id: id,
                    image_path: p,
                    subject_id: None,
                    study_id: None,
                    view: None,
                    report: None,
                    labels: None,
                }
            })
            .collect();
        Ok(Self {
            name: dir.display().to_string(),
            records,
        })
    }
}

impl CxrDataset for ImageFolder {
    fn name(&self) -> &str {
        &self.name
    }

    fn records(&self) -> &[CxrRecord] {
        &self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_images_recursively_and_splits_stably() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        for name in ["x.png", "a/y.JPG", "a/z.dcm", "notes.txt"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let ds = ImageFolder::open(dir.path()).unwrap();
        let ids: Vec<&str> = ds.records().iter().map(|r| r.image_id.as_str()).collect();
        assert_eq!(ids, ["a_y", "a_z", "x"]);
        let again = ImageFolder::open(dir.path()).unwrap();
        let splits = |d: &ImageFolder| d.records().iter().map(|r| r.split).collect::<Vec<_>>();
        assert_eq!(splits(&ds), splits(&again));
        // FNV-1a of "a" is known: 0xaf63dc4c8601ec8c (even -> train).
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        let empty = tempfile::tempdir().unwrap();
        let e = ImageFolder::open(empty.path()).err().unwrap().to_string();
        assert!(e.contains("no PNG"), "{e}");
    }
}
