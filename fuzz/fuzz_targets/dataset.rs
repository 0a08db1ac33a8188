//! The dataset layouts' text files. The first byte picks the file the rest becomes: a CSV
//! dataset, MIMIC-CXR's split table, an Open-i XML report or R2Gen's annotation.json.
#![no_main]

use cxr_data::{open_dataset, DatasetKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&which, bytes)) = input.split_first() else {
        return;
    };
    let root = llm_cxr_fuzz::scratch_dir().join("dataset");
    let _ = std::fs::remove_dir_all(&root);
    let (kind, file, open) = match which % 4 {
        0 => (DatasetKind::Csv, "data.csv", "data.csv"),
        1 => (DatasetKind::Mimic, "mimic-cxr-2.0.0-split.csv", ""),
        2 => (DatasetKind::OpenI, "ecgen-radiology/1.xml", ""),
        _ => (DatasetKind::OpenI, "annotation.json", "annotation.json"),
    };
    let path = root.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).expect("create the dataset folder");
    std::fs::write(&path, bytes).expect("write the fuzz input");
    if let Ok(ds) = open_dataset(kind, &root.join(open)) {
        for r in ds.records() {
            let _ = r.sections();
        }
    }
});
