//! The data builder never mixes data silently: a per-image file naming one image twice is
//! refused with both lines, and shards are written as a whole folder.

use cxr_instruct::build::{self, Manifest};
use cxr_instruct::{Task, Tokenized};

#[test]
fn per_image_files_naming_an_image_twice_are_refused_with_both_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phantom-findings.jsonl");
    std::fs::write(
        &path,
        "{\"dicom_id\": \"d1\", \"findings\": []}\n\n{\"dicom_id\": \"d2\", \"findings\": []}\n{\"dicom_id\": \"d1\", \"findings\": []}\n",
    )
    .unwrap();
    let e = build::read_phantom_findings(&path).unwrap_err().to_string();
    assert!(e.contains("phantom-findings.jsonl"), "{e}");
    assert!(
        e.contains("\"d1\" appears twice: at line 1 and at line 4"),
        "{e}"
    );
}

#[test]
fn shards_replace_the_old_build_whole() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("built");
    std::fs::create_dir_all(&out).unwrap();
    // An older, larger build: its extra shard must not survive beside the new manifest.
    std::fs::write(out.join("shard-00005.jsonl"), "stale\n").unwrap();
    std::fs::write(out.join("manifest.json"), "{}").unwrap();
    let samples: Vec<Tokenized> = (0..5)
        .map(|k| Tokenized {
            task: Task::Text,
            source: format!("s{k}"),
            ids: vec![1, 2, 3],
            response_start: 1,
            prompt_spans: Vec::new(),
        })
        .collect();
    let mut manifest = Manifest::default();
    let paths = build::write_shards(&out, &samples, &mut manifest, 2).unwrap();
    assert_eq!(paths.len(), 3);
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            cxr_data::EXPORT_MARKER,
            "manifest.json",
            "shard-00000.jsonl",
            "shard-00001.jsonl",
            "shard-00002.jsonl"
        ]
    );
    let (m, back) = build::read_shards(&out).unwrap();
    assert_eq!(m.shards.len(), 3);
    assert_eq!(back, samples);
    // Nothing left beside the folder.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
