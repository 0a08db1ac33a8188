//! Two images under one id would train a report against another image's codes: every loader
//! refuses a duplicate image id, naming where each of the two came from.

use std::fs;

use cxr_data::{open_dataset, DatasetKind};

fn write(path: &std::path::Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn error(kind: DatasetKind, path: &std::path::Path) -> String {
    match open_dataset(kind, path) {
        Ok(_) => panic!("{} was accepted", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn csv_rows_with_one_image_stem_are_refused_naming_both_lines() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("data.csv");
    write(
        &csv,
        "image,report\na/x.png,Normal.\nb/y.png,Normal.\nb/x.png,Effusion.\n",
    );
    let e = error(DatasetKind::Csv, &csv);
    assert!(e.contains("data.csv"), "{e}");
    assert!(e.contains("\"x\" appears twice"), "{e}");
    assert!(
        e.contains("line 2 (a/x.png)") && e.contains("line 4 (b/x.png)"),
        "{e}"
    );
}

#[test]
fn mimic_split_table_with_a_repeated_dicom_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("mimic-cxr-2.0.0-split.csv"),
        "dicom_id,study_id,subject_id,split\nd1,50000001,10000032,train\nd1,50000002,10000033,test\n",
    );
    let e = error(DatasetKind::Mimic, dir.path());
    assert!(e.contains("mimic-cxr-2.0.0-split.csv"), "{e}");
    assert!(
        e.contains("\"d1\" appears twice: at line 2 and at line 3"),
        "{e}"
    );
}

#[test]
fn image_folder_ids_that_flatten_to_one_are_refused_naming_both_paths() {
    // `a/b.png` and `a_b.png` both become id `a_b`; so do `x.png` and `x.jpg`.
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("a")).unwrap();
    for name in ["a/b.png", "a_b.png"] {
        fs::write(dir.path().join(name), b"").unwrap();
    }
    let e = error(DatasetKind::Folder, dir.path());
    assert!(e.contains("\"a_b\" appears twice"), "{e}");
    assert!(e.contains("a/b.png") && e.contains("a_b.png"), "{e}");
}

#[test]
fn openi_reports_sharing_an_image_are_refused_naming_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let xml = |id: &str| {
        format!(
            "<eCitation><Abstract><AbstractText Label=\"FINDINGS\">Clear.</AbstractText></Abstract><parentImage id=\"{id}\"/></eCitation>"
        )
    };
    write(&dir.path().join("ecgen-radiology/1.xml"), &xml("CXR1_1"));
    write(&dir.path().join("ecgen-radiology/2.xml"), &xml("CXR1_1"));
    let e = error(DatasetKind::OpenI, dir.path());
    assert!(e.contains("\"CXR1_1\" appears twice"), "{e}");
    assert!(e.contains("1.xml") && e.contains("2.xml"), "{e}");
}

#[test]
fn r2gen_entries_repeated_across_splits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("annotation.json");
    write(
        &json,
        r#"{"train": [{"id": "CXR9", "report": "Clear.", "image_path": ["CXR9/0.png"]}],
            "test": [{"id": "CXR9", "report": "Clear.", "image_path": ["CXR9/0.png"]}]}"#,
    );
    let e = error(DatasetKind::OpenI, &json);
    assert!(e.contains("annotation.json"), "{e}");
    assert!(e.contains("\"CXR9_0\" appears twice"), "{e}");
    assert!(
        e.contains("\"test\" entry") && e.contains("\"train\" entry"),
        "{e}"
    );
}

#[test]
fn unique_ids_are_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("data.csv");
    write(&csv, "image,report\na/x.png,Normal.\nb/y.png,Normal.\n");
    assert_eq!(
        open_dataset(DatasetKind::Csv, &csv)
            .unwrap()
            .records()
            .len(),
        2
    );
}
