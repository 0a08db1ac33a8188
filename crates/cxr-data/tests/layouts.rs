//! Each loader reads a small tree written here in its layout, and bad files give errors that
//! name the file.

use std::fs;
use std::io::Write;

use cxr_data::{open_dataset, DatasetKind, Label, Observation, Split};

fn write(path: &std::path::Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

#[test]
fn mimic_layout_with_gzip_tables() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let gz = |name: &str, text: &str| {
        let f = fs::File::create(root.join(name)).unwrap();
        let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap();
    };
    gz(
        "mimic-cxr-2.0.0-split.csv.gz",
        "dicom_id,study_id,subject_id,split\nd1,50000001,10000032,train\nd2,50000001,10000032,train\nd3,50000002,11000001,test\n",
    );
    write(
        &root.join("mimic-cxr-2.0.0-metadata.csv"),
        "dicom_id,subject_id,study_id,ViewPosition\nd1,10000032,50000001,PA\nd2,10000032,50000001,LATERAL\nd3,11000001,50000002,AP\n",
    );
    write(
        &root.join("mimic-cxr-2.0.0-chexpert.csv"),
        "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices\n10000032,50000001,,1.0,,,,,,,,-1.0,,,0.0,\n",
    );
    write(
        &root.join("files/p10/p10000032/s50000001.txt"),
        "FINDINGS: Enlarged heart.\nIMPRESSION: Cardiomegaly.\n",
    );
    let ds = open_dataset(DatasetKind::Mimic, root).unwrap();
    let r = ds.records();
    assert_eq!(r.len(), 3);
    assert_eq!(
        r[0].image_path,
        root.join("files/p10/p10000032/s50000001/d1.jpg")
    );
    assert_eq!(r[0].view.as_deref(), Some("PA"));
    assert!(r[0].is_frontal() && !r[1].is_frontal());
    assert_eq!(r[2].split, Some(Split::Test));
    let labels = r[0].labels.unwrap();
    assert_eq!(labels.get(Observation::Cardiomegaly), Some(Label::Positive));
    assert_eq!(
        labels.get(Observation::PleuralEffusion),
        Some(Label::Uncertain)
    );
    assert_eq!(labels.get(Observation::Pneumothorax), Some(Label::Negative));
    assert_eq!(labels.get(Observation::Edema), None);
    let s = r[1].sections().unwrap();
    assert_eq!(s.impression.as_deref(), Some("Cardiomegaly."));
    assert_eq!(r[2].report, None);
    assert_eq!(r[2].labels, None);
}

#[test]
fn openi_xml_and_r2gen_json() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        &root.join("ecgen-radiology/1.xml"),
        r#"<?xml version="1.0"?><eCitation><MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText>
<AbstractText Label="FINDINGS">The heart is normal in size.
The lungs are clear.</AbstractText>
<AbstractText Label="IMPRESSION">Normal chest x-XXXX.</AbstractText>
</Abstract></Article></MedlineCitation>
<parentImage id="CXR1_1_IM-0001-3001"><url>/x.jpg</url></parentImage>
<parentImage id="CXR1_1_IM-0001-4001"><url>/y.jpg</url></parentImage></eCitation>"#,
    );
    write(&root.join("images/CXR1_1_IM-0001-3001.png"), "");
    let ds = open_dataset(DatasetKind::OpenI, root).unwrap();
    assert_eq!(ds.records().len(), 2);
    let r = &ds.records()[0];
    assert_eq!(r.image_path, root.join("images/CXR1_1_IM-0001-3001.png"));
    let s = r.sections().unwrap();
    assert_eq!(
        s.findings.as_deref(),
        Some("The heart is normal in size. The lungs are clear.")
    );
    assert_eq!(s.impression.as_deref(), Some("Normal chest x-XXXX."));

    write(
        &root.join("r2gen/annotation.json"),
        r#"{"train": [{"id": "CXR2384_IM-0942", "report": "The lungs are clear.", "image_path": ["CXR2384_IM-0942/0.png", "CXR2384_IM-0942/1.png"], "split": "train"}],
            "val": [{"id": "CXR9_IM-1", "report": "Small effusion.", "image_path": ["CXR9_IM-1/0.png"], "split": "val"}]}"#,
    );
    let ds = open_dataset(DatasetKind::OpenI, &root.join("r2gen/annotation.json")).unwrap();
    assert_eq!(ds.records().len(), 3);
    let val = ds
        .records()
        .iter()
        .find(|r| r.split == Some(Split::Validate))
        .unwrap();
    assert_eq!(val.image_path, root.join("r2gen/images/CXR9_IM-1/0.png"));
    assert_eq!(
        val.sections().unwrap().findings.as_deref(),
        Some("Small effusion.")
    );
}

#[test]
fn csv_layout_and_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("data.csv");
    write(
        &csv,
        "image,report,split,Edema\nimgs/a.png,\"FINDINGS: x.\nIMPRESSION: Mild edema.\",train,1\n/abs/b.jpg,No acute process.,val,\n",
    );
    let ds = open_dataset(DatasetKind::Csv, &csv).unwrap();
    let r = ds.records();
    assert_eq!(r[0].image_path, dir.path().join("imgs/a.png"));
    assert_eq!(r[1].image_path, std::path::PathBuf::from("/abs/b.jpg"));
    assert_eq!(
        r[0].labels.unwrap().get(Observation::Edema),
        Some(Label::Positive)
    );
    assert_eq!(
        r[0].sections().unwrap().impression.as_deref(),
        Some("Mild edema.")
    );

    write(&csv, "image,report,Edema\na.png,text,maybe\n");
    let e = open_dataset(DatasetKind::Csv, &csv)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("data.csv") && e.contains("line 2") && e.contains("maybe"),
        "{e}"
    );

    write(&csv, "picture,words\na.png,text\n");
    let e = open_dataset(DatasetKind::Csv, &csv)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("data.csv") && e.contains("no column named image"),
        "{e}"
    );

    let e = open_dataset(DatasetKind::Mimic, dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("split.csv"), "{e}");
}
