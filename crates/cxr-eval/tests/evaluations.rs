//! The evaluations' typed results: computed from the CSVs the CLI takes, written as JSON, read
//! back from the folder whole (every field, the sample cases included), with the JSON paths the
//! main job and the tests read, and LLM-CXR's published numbers in the markdown.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use cxr_classifier::candle_core::{DType, Device};
use cxr_classifier::candle_nn::{VarBuilder, VarMap};
use cxr_eval::evaluations::{IMAGE_METRICS_JSON, REPORT_METRICS_JSON, VQA_METRICS_JSON};
use cxr_eval::report_metrics::{ReportMetricOptions, UncertainPolicy};
use cxr_eval::{
    EvalError, Evaluations, ImageEvalOptions, ImageEvaluation, ImageModels, Presentation, Progress,
    ReportEvaluation, VqaEvaluation,
};
use cxr_phantom::PhantomSpec;
use serde_json::Value;

fn impression(i: u64) -> String {
    PhantomSpec::sample(5, i)
        .sections
        .impression
        .unwrap()
        .replace('"', "")
}

/// Writes a result as the CLI does; returns the JSON text.
fn write<T: serde::Serialize>(dir: &Path, name: &str, result: &T) -> String {
    let text = serde_json::to_string_pretty(result).unwrap();
    std::fs::write(dir.join(name), &text).unwrap();
    text
}

/// Every score came back: the result read back serializes to what was written (compared as
/// parsed JSON, so that both sides parse the same decimal digits; the cases, whose f32
/// probabilities widen differently, are compared as structs).
fn assert_read_back<T: serde::Serialize>(back: &T, written: &str) {
    let without_cases = |mut v: Value| {
        v.as_object_mut().unwrap().remove("cases").unwrap();
        v
    };
    assert_eq!(
        without_cases(serde_json::to_value(back).unwrap()),
        without_cases(serde_json::from_str(written).unwrap())
    );
}

#[test]
fn results_are_written_and_read_back_whole() {
    let Some(labeler) = common::labeler() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shown = Presentation {
        model: "ours".into(),
        samples: 3,
    };
    let quiet = |_: Progress| {};

    // Reports: each generated report is the next reference's impression.
    let pairs_csv = dir.path().join("pairs.csv");
    let mut csv = String::from("generated,reference\n");
    for i in 0..12 {
        csv += &format!("\"{}\",\"{}\"\n", impression(i + 1), impression(i));
    }
    std::fs::write(&pairs_csv, csv).unwrap();
    let labelled = AtomicUsize::new(0);
    let count = |p: Progress| {
        if let Progress::Advance(n) = p {
            labelled.fetch_add(n, Ordering::Relaxed);
        }
    };
    let report = ReportEvaluation::from_csv(
        &pairs_csv,
        &labeler,
        ReportMetricOptions::default(),
        &shown,
        &count,
    )
    .unwrap();
    assert_eq!(labelled.into_inner(), 12, "every pair is reported done");
    assert_eq!(report.clinical.reports, 12);
    assert_eq!(report.cases.len(), 3);
    assert_eq!(report.cases[1].generated, impression(2));
    assert_eq!(report.cases[1].reference, impression(1));
    assert_eq!(
        report.cases[1].reference_labels,
        labeler.label(&impression(1))
    );
    let md = report.to_markdown();
    for published in [
        "0.558", "0.597", "0.350", "0.609", "0.092", "0.015", "0.069", "0.162", "0.525",
    ] {
        assert!(
            md.contains(published),
            "report markdown lacks {published}:\n{md}"
        );
    }

    // VQA, with images resolved against the CSV's folder.
    let vqa_csv = dir.path().join("vqa.csv");
    std::fs::write(
        &vqa_csv,
        "question,answer,reference,type,image\n\
         Is there a pleural effusion?,Yes.,Yes,presence,a.png\n\
         Is there a pneumothorax?,No.,Yes,presence,b.png\n\
         Which side?,Left pleural effusion.,Left pleural effusion.,,c.png\n",
    )
    .unwrap();
    let vqa = VqaEvaluation::from_csv(&vqa_csv, &labeler, &shown).unwrap();
    assert_eq!(vqa.scores.overall.closed, 2);
    assert_eq!(vqa.cases[1].closed, Some(false));
    assert_eq!(vqa.cases[2].pair.kind, None);
    assert_eq!(vqa.cases[2].agreement, Some(1.0));
    assert_eq!(
        vqa.cases[0].image.as_deref(),
        Some(dir.path().join("a.png").to_str().unwrap())
    );

    // Images: a random-weight classifier on phantoms, the same images as the real ones.
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let (mut generated, mut real) = (String::from("image,report\n"), String::from("image\n"));
    for i in 0..4 {
        let spec = PhantomSpec::sample(5, i);
        let png = images.join(format!("{i}.png"));
        spec.render(64).to_luma8().save(&png).unwrap();
        generated += &format!("images/{i}.png,\"{}\"\n", impression(i));
        real += &format!("images/{i}.png\n");
    }
    std::fs::write(dir.path().join("generated.csv"), generated).unwrap();
    std::fs::write(dir.path().join("real.csv"), real).unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let config = cxr_classifier::DenseNetConfig::densenet121_txv();
    let classifier = cxr_classifier::DenseNet::new(&config, vb).unwrap();
    let image = ImageEvaluation::from_csv(
        &dir.path().join("generated.csv"),
        Some(&dir.path().join("real.csv")),
        &labeler,
        ImageModels {
            classifier: &classifier,
            inception: None,
        },
        ImageEvalOptions {
            threshold: 0.5,
            batch: 3,
            uncertain: UncertainPolicy::Negative,
        },
        &shown,
        &quiet,
    )
    .unwrap();
    assert_eq!(image.clinical.images, 4);
    assert!(image.fid_classifier_features.unwrap().abs() < 1e-3);
    assert_eq!(image.fid_inception, None);
    assert_eq!(image.cases.len(), 3);
    assert_eq!(image.cases[2].labels, labeler.label(&impression(2)));
    assert!(image.cases[2].image.ends_with("2.png"));
    assert!(image.cases[2]
        .probabilities
        .iter()
        .all(|p| (0.0..=1.0).contains(p)));
    let md = image.to_markdown();
    for published in ["0.8054", "0.8777", "0.714"] {
        assert!(
            md.contains(published),
            "image markdown lacks {published}:\n{md}"
        );
    }

    // Written, then read back from the folder.
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let report_json = write(&out, REPORT_METRICS_JSON, &report);
    let image_json = write(&out, IMAGE_METRICS_JSON, &image);
    let vqa_json = write(&out, VQA_METRICS_JSON, &vqa);
    let v: Value = serde_json::from_str(&report_json).unwrap();
    for pointer in ["/clinical/f1/micro", "/clinical/auroc/micro", "/nlg/bleu/3"] {
        assert!(v.pointer(pointer).unwrap().is_f64(), "{pointer}");
    }
    let v: Value = serde_json::from_str(&vqa_json).unwrap();
    assert_eq!(
        v.pointer("/overall/yes_no_accuracy"),
        Some(&Value::from(0.5))
    );
    let v: Value = serde_json::from_str(&image_json).unwrap();
    assert!(v["fid_classifier_features"].is_f64() && v["fid_inception"].is_null());

    let back = Evaluations::read(&out).unwrap();
    let (r, i, q) = (back.report.unwrap(), back.image.unwrap(), back.vqa.unwrap());
    assert_read_back(&r, &report_json);
    assert_read_back(&i, &image_json);
    assert_read_back(&q, &vqa_json);
    assert_eq!(
        (r.cases, i.cases, q.cases),
        (report.cases, image.cases, vqa.cases)
    );
    assert_eq!(
        r.clinical.per_observation[0].roc,
        report.clinical.per_observation[0].roc
    );

    // Only what is there is read; a broken file is named.
    std::fs::remove_file(out.join(IMAGE_METRICS_JSON)).unwrap();
    std::fs::write(out.join(VQA_METRICS_JSON), "{\"overall\": 1}").unwrap();
    let err = Evaluations::read(&out).unwrap_err();
    assert!(matches!(err, EvalError::Parse { .. }));
    assert!(err.to_string().contains(VQA_METRICS_JSON), "{err}");
    std::fs::remove_file(out.join(VQA_METRICS_JSON)).unwrap();
    let back = Evaluations::read(&out).unwrap();
    assert!(back.report.is_some() && back.image.is_none() && back.vqa.is_none());
}
