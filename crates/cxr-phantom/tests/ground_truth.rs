//! The phantom's ground truth is consistent with itself and with what is drawn:
//! - its CheXpert labels agree with its report, checked against the CheXpert labeler's own
//!   mention phrase lists (`../shared/data/chexpert-labeler-phrases`);
//! - every structured finding shows up in the labels with the right certainty;
//! - every finding kind changes the picture visibly against its finding-free twin;
//! - the written tree reads back through the MIMIC-CXR-JPG loader, and a killed run resumes.

use std::path::PathBuf;

use cxr_data::{Label, Observation};
use cxr_phantom::{Finding, FindingKind, Lobe, PhantomSpec, Severity, Side, View};

fn phrases_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/chexpert-labeler-phrases/phrases");
    dir.is_dir().then_some(dir)
}

fn phrase_file(dir: &std::path::Path, kind: &str, o: Observation) -> Vec<String> {
    let name = o.name().to_lowercase().replace(' ', "_");
    std::fs::read_to_string(dir.join(kind).join(format!("{name}.txt")))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_lowercase().replace('_', " "))
        .filter(|l| !l.is_empty())
        .collect()
}

/// Lowercase with punctuation turned into spaces and a space at both ends, so `_line_`-style
/// phrases (word-delimited) match as the labeler's do.
fn normalise(text: &str) -> String {
    let t: String = text
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == ' ' {
                c
            } else {
                ' '
            }
        })
        .collect();
    format!(" {} ", t.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[test]
fn labels_agree_with_the_labelers_mention_lists() {
    let Some(dir) = phrases_dir() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("../shared/data/chexpert-labeler-phrases is absent (CI=true: CI must have it)");
        }
        eprintln!("SKIP: ../shared/data/chexpert-labeler-phrases is absent");
        return;
    };
    let lists: Vec<(Observation, Vec<String>, Vec<String>)> = Observation::ALL
        .iter()
        .map(|&o| {
            (
                o,
                phrase_file(&dir, "mention", o),
                phrase_file(&dir, "unmention", o),
            )
        })
        .collect();
    let no_finding_words = &lists[0].1;
    assert!(no_finding_words.len() > 40, "phrase lists not read");
    for index in 0..600 {
        let spec = PhantomSpec::sample(11, index);
        let text = normalise(&format!(
            "{} {}",
            spec.sections.findings.clone().unwrap_or_default(),
            spec.sections.impression.clone().unwrap_or_default()
        ));
        for (o, mentions, unmentions) in &lists[1..] {
            let mut t = text.clone();
            for u in unmentions {
                t = t.replace(u.as_str(), " ");
            }
            let hit = mentions.iter().find(|m| t.contains(m.as_str()));
            assert_eq!(
                hit.is_some(),
                spec.labels.get(*o).is_some(),
                "phantom {index}: {o} label {:?} but mention {hit:?} in:\n{text}",
                spec.labels.get(*o)
            );
        }
        if spec.labels.get(Observation::NoFinding) == Some(Label::Positive) {
            let hit = no_finding_words.iter().find(|m| text.contains(m.as_str()));
            assert!(
                hit.is_none(),
                "phantom {index}: normal report mentions {hit:?}:\n{text}"
            );
        }
    }
}

#[test]
fn structured_findings_and_labels_agree() {
    let mut seen = std::collections::HashSet::new();
    for index in 0..2000 {
        let spec = PhantomSpec::sample(5, index);
        let abnormal = spec.findings.iter().any(|f| !f.kind.is_device());
        assert_eq!(
            spec.labels.get(Observation::NoFinding) == Some(Label::Positive),
            !abnormal,
            "phantom {index}: {:?}",
            spec.findings
        );
        for f in &spec.findings {
            seen.insert(f.kind);
            let got = spec.labels.get(f.kind.observation());
            if f.certain {
                assert_eq!(
                    got,
                    Some(Label::Positive),
                    "phantom {index}: {f:?}\n{}",
                    spec.report
                );
            } else {
                assert!(
                    matches!(got, Some(Label::Uncertain | Label::Positive)),
                    "phantom {index}: {f:?} gave {got:?}"
                );
            }
            if let Some(side) = f.side {
                let words = spec.sections.to_report().to_lowercase();
                let lobe_named = f.lobe.is_some_and(|l| words.contains(l.name()));
                let word = lobe_named
                    || match side {
                        Side::Bilateral => ["bilateral", "both", "bibasilar"]
                            .iter()
                            .any(|w| words.contains(w)),
                        s => words.contains(s.word()),
                    };
                assert!(
                    word,
                    "phantom {index}: side of {f:?} not in report:\n{words}"
                );
            }
        }
        assert!(spec.sections.impression.is_some());
        assert!(spec.report.contains("FINDINGS:") && spec.report.contains("IMPRESSION:"));
    }
    assert_eq!(seen.len(), FindingKind::ALL.len(), "every kind is sampled");
}

/// How many pixels change by more than 0.05 (a clearly visible step on a [0, 1] scale), and the
/// largest mean change over 8 x 8 blocks.
fn twin_difference(kind: FindingKind) -> (usize, f32) {
    let size = 128;
    let finding = Finding {
        kind,
        side: Some(match kind {
            FindingKind::PleuralEffusion | FindingKind::Atelectasis => Side::Bilateral,
            _ => Side::Right,
        }),
        lobe: Some(Lobe::RightLower),
        severity: Some(Severity::Moderate),
        certain: true,
    };
    let with = PhantomSpec::with_findings(3, 9, View::Pa, vec![finding]).render(size);
    let without = PhantomSpec::with_findings(3, 9, View::Pa, vec![]).render(size);
    let diff: Vec<f32> = with
        .pixels
        .iter()
        .zip(&without.pixels)
        .map(|(a, b)| (a - b).abs())
        .collect();
    let visible = diff.iter().filter(|&&d| d > 0.05).count();
    let mut block_max = 0f32;
    for by in 0..size / 8 {
        for bx in 0..size / 8 {
            let mut s = 0.0;
            for y in 0..8 {
                for x in 0..8 {
                    s += diff[((by * 8 + y) * size + bx * 8 + x) as usize];
                }
            }
            block_max = block_max.max(s / 64.0);
        }
    }
    (visible, block_max)
}

#[test]
fn every_finding_kind_is_visible_against_its_twin() {
    let mut observations = std::collections::HashSet::new();
    for kind in FindingKind::ALL {
        let (visible, block) = twin_difference(kind);
        eprintln!("{kind:?}: {visible} pixels change by > 0.05, max 8x8 block {block:.4}");
        assert!(
            visible >= 20 && block > 0.03,
            "{kind:?} barely changes the image: {visible} pixels, max block {block}"
        );
        observations.insert(kind.observation());
    }
    // 13 observations drawn, plus No Finding (the twin itself): 14 of 14.
    assert_eq!(observations.len(), 13);
    // The twins without findings are identical: nothing else moved.
    let a = PhantomSpec::with_findings(3, 9, View::Pa, vec![]).render(64);
    let b = PhantomSpec::with_findings(3, 9, View::Pa, vec![]).render(64);
    assert_eq!(a, b);
}

#[test]
fn tree_reads_back_and_resumes_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let opts = cxr_phantom::TreeOptions {
        out: dir.path().to_path_buf(),
        n: 12,
        size: 64,
        seed: 4,
        dicom: true,
        jpeg_quality: 95,
    };
    let summary = cxr_phantom::write_tree(&opts, &|| {}).unwrap();
    assert_eq!(
        (summary.images, summary.rendered, summary.reused),
        (12, 12, 0)
    );
    assert!(summary.subjects < 12, "some subjects have several studies");

    let ds = cxr_data::open_dataset(cxr_data::DatasetKind::Mimic, dir.path()).unwrap();
    let records = ds.records();
    assert_eq!(records.len(), 12);
    for (i, r) in records.iter().enumerate() {
        let spec = PhantomSpec::sample(4, i as u64);
        assert_eq!(r.labels, Some(spec.labels), "record {i}");
        assert_eq!(r.view.as_deref(), Some(spec.view.as_str()));
        assert_eq!(r.sections(), Some(spec.sections.clone()));
        let jpg = cxr_image::load_image(&r.image_path).unwrap();
        assert_eq!((jpg.width, jpg.height), (64, 64));
        let dcm = cxr_image::load_image(&r.image_path.with_extension("dcm")).unwrap();
        let rendered = spec.render(64);
        let max_dcm = dcm
            .pixels
            .iter()
            .zip(&rendered.pixels)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            max_dcm < 2.0 / 4095.0,
            "DICOM is 12-bit lossless: {max_dcm}"
        );
        let mean_jpg = jpg
            .pixels
            .iter()
            .zip(&rendered.pixels)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / 4096.0;
        assert!(mean_jpg < 0.02, "JPEG close to the render: {mean_jpg}");
    }

    // A run killed mid-way leaves some images missing (and maybe a temp file): rerun resumes.
    let victim = records[5].image_path.clone();
    let before = std::fs::read(&victim).unwrap();
    std::fs::remove_file(&victim).unwrap();
    std::fs::write(victim.with_extension("jpg.tmp"), b"partial").unwrap();
    let summary = cxr_phantom::write_tree(&opts, &|| {}).unwrap();
    assert_eq!((summary.rendered, summary.reused), (1, 11));
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        before,
        "regenerated bit for bit"
    );
}
