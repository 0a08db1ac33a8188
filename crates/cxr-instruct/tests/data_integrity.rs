//! The data builder never mixes data silently: a per-image file naming one image twice is
//! refused with both lines, and shards are written as a whole folder.

use cxr_instruct::build::{self, BuildOptions, Manifest};
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
    let opts = BuildOptions {
        shard_size: 2,
        ..Default::default()
    };
    let paths = build::write_shards(&out, &samples, &mut manifest, &opts).unwrap();
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

#[test]
fn the_hugging_face_shards_hold_the_same_samples_with_labels_masked_where_no_loss_counts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("built");
    // Two turns: the second turn's instruction (positions 5..7) carries no loss either.
    let samples: Vec<Tokenized> = (0..3)
        .map(|k| Tokenized {
            task: Task::Vqa,
            source: format!("image-{k}"),
            ids: vec![10, 11, 12, 13, 14, 15, 16, 17, 18 + k],
            response_start: 3,
            prompt_spans: vec![(5, 7)],
        })
        .collect();
    let mut manifest = Manifest::default();
    let opts = BuildOptions {
        shard_size: 2,
        hugging_face: true,
        ..Default::default()
    };
    build::write_shards(&out, &samples, &mut manifest, &opts).unwrap();
    assert_eq!(
        manifest.hf_shards,
        ["hf/shard-00000.jsonl", "hf/shard-00001.jsonl"]
    );
    let mut rows = Vec::new();
    for name in &manifest.hf_shards {
        let text = std::fs::read_to_string(out.join(name)).unwrap();
        for line in text.lines() {
            rows.push(serde_json::from_str::<build::HfSample>(line).unwrap());
        }
    }
    assert_eq!(rows.len(), 3);
    for (row, t) in rows.iter().zip(&samples) {
        assert_eq!(row.input_ids, t.ids);
        assert_eq!(row.source, t.source);
        let last = i64::from(t.ids[8]);
        assert_eq!(row.labels, [-100, -100, -100, 13, 14, -100, -100, 17, last]);
    }
    // The manifest read back names them; the native shards are unchanged by the option.
    let (back, read) = build::read_shards(&out).unwrap();
    assert_eq!(back.hf_shards, manifest.hf_shards);
    assert_eq!(read, samples);
    let native = build::write_shards(
        &dir.path().join("native"),
        &samples,
        &mut Manifest::default(),
        &BuildOptions {
            shard_size: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        std::fs::read(&native[0]).unwrap(),
        std::fs::read(out.join("shard-00000.jsonl")).unwrap()
    );
    assert!(!dir.path().join("native/hf").exists());
}
