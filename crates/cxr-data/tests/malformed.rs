//! Malformed dataset files: each is an error naming the file (and the line where the format has
//! lines), never a panic, and no id or path from a file escapes the dataset's folder.

use std::fs;

use cxr_data::{open_dataset, DatasetKind};

fn write(path: &std::path::Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn error(kind: DatasetKind, path: &std::path::Path) -> String {
    match open_dataset(kind, path) {
        Ok(_) => panic!("the malformed dataset was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn mimic_ids_that_escape_the_tree_are_refused_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let split = dir.path().join("mimic-cxr-2.0.0-split.csv");
    for (row, column) in [
        ("../../../etc/passwd,50000001,10000032,train", "dicom_id"),
        ("d1,50000001,../10000032,train", "subject_id"),
        ("d1,/abs,10000032,train", "study_id"),
        ("d1,..,10000032,train", "study_id"),
        ("d1,50000001,,train", "subject_id"),
    ] {
        write(
            &split,
            &format!("dicom_id,study_id,subject_id,split\nd0,50000001,10000032,train\n{row}\n"),
        );
        let e = error(DatasetKind::Mimic, dir.path());
        assert!(
            e.contains("mimic-cxr-2.0.0-split.csv") && e.contains("line 3") && e.contains(column),
            "{row}: {e}"
        );
    }
}

#[test]
fn mimic_subject_id_starting_with_a_multibyte_character_does_not_panic() {
    // The study folder takes the id's first two characters: by bytes, "€1" split '€' in two.
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("mimic-cxr-2.0.0-split.csv"),
        "dicom_id,study_id,subject_id,split\nd1,50000001,€1,train\n",
    );
    let ds = open_dataset(DatasetKind::Mimic, dir.path()).unwrap();
    assert_eq!(
        ds.records()[0].image_path,
        dir.path().join("files/p€1/p€1/s50000001/d1.jpg")
    );
}

#[test]
fn mimic_rows_of_the_wrong_width_name_their_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("mimic-cxr-2.0.0-split.csv"),
        "dicom_id,study_id,subject_id,split\nd1,50000001,10000032,train\nd2,50000001\n",
    );
    let e = error(DatasetKind::Mimic, dir.path());
    assert!(
        e.contains("mimic-cxr-2.0.0-split.csv") && e.contains("line 3"),
        "{e}"
    );
    write(
        &dir.path().join("mimic-cxr-2.0.0-split.csv"),
        "dicom_id,study_id,subject_id,split\nd1,50000001,10000032,sometimes\n",
    );
    let e = error(DatasetKind::Mimic, dir.path());
    assert!(e.contains("line 2") && e.contains("unknown split"), "{e}");
}

#[test]
fn r2gen_image_paths_must_stay_inside_the_images_folder() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("annotation.json");
    for (rel, says) in [
        ("../../secret.png", "climbs out"),
        ("CXR1/../../x.png", "climbs out"),
        ("/etc/passwd", "is absolute"),
    ] {
        write(
            &json,
            &format!(
                r#"{{"train": [{{"id": "CXR1", "report": "Clear.", "image_path": ["{rel}"]}}]}}"#
            ),
        );
        let e = error(DatasetKind::OpenI, &json);
        assert!(
            e.contains("annotation.json") && e.contains("\"CXR1\"") && e.contains(says),
            "{rel}: {e}"
        );
    }
    // Malformed JSON names the file and where.
    write(&json, r#"{"train": [{"id": "CXR1", "report": 3}]}"#);
    let e = error(DatasetKind::OpenI, &json);
    assert!(
        e.contains("annotation.json")
            && e.contains("not an R2Gen annotation.json")
            && e.contains("line 1"),
        "{e}"
    );
}

#[test]
fn openi_xml_image_ids_and_broken_xml_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let xml = dir.path().join("ecgen-radiology/7.xml");
    write(
        &xml,
        "<?xml version=\"1.0\"?>\n<eCitation>\n<parentImage id=\"CXR7_1\"/>\n<parentImage id=\"../../../etc/passwd\"/>\n</eCitation>",
    );
    let e = error(DatasetKind::OpenI, dir.path());
    assert!(
        e.contains("7.xml")
            && e.contains("line 4")
            && e.contains("parentImage")
            && e.contains("not a plain name"),
        "{e}"
    );
    write(&xml, "<eCitation><parentImage id=\"a\"></eCitation>");
    let e = error(DatasetKind::OpenI, dir.path());
    assert!(e.contains("7.xml") && e.contains("invalid XML"), "{e}");
}

#[test]
fn csv_rows_with_nul_or_wrong_width_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("data.csv");
    write(&csv, "image,report\na.png,ok\nb\0.png,text\n");
    let e = error(DatasetKind::Csv, &csv);
    assert!(
        e.contains("data.csv") && e.contains("line 3") && e.contains("NUL"),
        "{e}"
    );
    write(&csv, "image,report\na.png,ok\nb.png,text,extra\n");
    let e = error(DatasetKind::Csv, &csv);
    assert!(e.contains("data.csv") && e.contains("line 3"), "{e}");
    write(&csv, "image,report\n,text\n");
    let e = error(DatasetKind::Csv, &csv);
    assert!(
        e.contains("line 2") && e.contains("empty image path"),
        "{e}"
    );
}

#[cfg(unix)]
#[test]
fn folder_with_a_symlink_loop_is_read_without_recursing_forever() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("a/x.png"), "");
    std::os::unix::fs::symlink(dir.path(), dir.path().join("a/loop")).unwrap();
    let ds = open_dataset(DatasetKind::Folder, dir.path()).unwrap();
    assert_eq!(ds.records().len(), 1);
}

#[test]
fn gzipped_table_inflating_past_the_limit_is_refused() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mimic-cxr-2.0.0-split.csv.gz");
    let f = fs::File::create(&path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    gz.write_all(b"dicom_id,study_id,subject_id,split\n")
        .unwrap();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..(cxr_data::datasets::MAX_INFLATED_TABLE_BYTES >> 20) + 1 {
        gz.write_all(&chunk).unwrap();
    }
    gz.finish().unwrap();
    assert!(fs::metadata(&path).unwrap().len() < 1 << 20);
    let e = error(DatasetKind::Mimic, dir.path());
    assert!(
        e.contains("mimic-cxr-2.0.0-split.csv.gz") && e.contains("inflates past 134217728 bytes"),
        "{e}"
    );
}
