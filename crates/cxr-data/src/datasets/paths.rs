//! Ids and paths from dataset files that become paths on disk. A loader joins them to the
//! dataset's folder; a forged `..`, an absolute path or a separator in an id would read any file
//! the process can. Legitimate ids: MIMIC's `dicom_id` (hex groups and dashes), `subject_id` and
//! `study_id` (digits), Open-i's `CXR1_1_IM-0001-3001`; legitimate relative paths: R2Gen's
//! `CXR2384_IM-0942/0.png`, CheXpert's `train/patient00001/study1/view1_frontal.jpg`.

use std::path::{Component, Path};

/// An id used as one file or folder name: not empty, not `.` or `..`, no separator of any
/// platform (`/`, `\`), no drive colon, no NUL.
pub(crate) fn check_plain_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the id is empty".into());
    }
    if id == "." || id == ".." || id.contains(['/', '\\', ':', '\0']) {
        return Err(format!(
            "id {id:?} is not a plain name (no '/', '\\', ':', NUL, '.' or '..')"
        ));
    }
    Ok(())
}

/// A path that must stay inside the dataset's folder: relative (no root, no drive), with no `..`
/// component (on any platform: `\` counts as a separator here), no NUL. `/` is allowed.
pub(crate) fn check_relative_path(rel: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("path {rel:?} {why}"));
    if rel.trim().is_empty() {
        return Err("the path is empty".into());
    }
    if rel.contains('\0') {
        return bad("contains NUL");
    }
    let p = Path::new(rel);
    if p.is_absolute() || p.has_root() || rel.starts_with(['/', '\\']) || rel.contains(':') {
        return bad("is absolute; it must be relative to the dataset's folder");
    }
    let climbs = p.components().any(|c| c == Component::ParentDir)
        || rel.split(['/', '\\']).any(|part| part == "..");
    if climbs {
        return bad("climbs out of the dataset's folder with '..'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_ids_and_paths_pass_and_escapes_do_not() {
        for id in [
            "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014",
            "10000032",
            "CXR1_1_IM-0001-3001",
        ] {
            check_plain_id(id).unwrap();
        }
        for id in ["", ".", "..", "a/b", "..\\x", "C:x", "a\0b"] {
            assert!(check_plain_id(id).is_err(), "{id:?}");
        }
        for rel in [
            "CXR2384_IM-0942/0.png",
            "train/patient00001/study1/view1_frontal.jpg",
            "a..b.png",
        ] {
            check_relative_path(rel).unwrap();
        }
        for rel in [
            "../x.png",
            "a/../../x.png",
            "/etc/passwd",
            "\\\\server\\x",
            "a\\..\\..\\x",
            "C:\\x",
            "a\0",
        ] {
            assert!(check_relative_path(rel).is_err(), "{rel:?}");
        }
    }
}
