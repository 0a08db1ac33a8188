//! The labeler against the CheXpert labeler's own outputs and against the gold sentence set.

use std::path::PathBuf;

use cxr_data::{ChexpertLabels, Label, Observation};
use cxr_eval::ReportLabeler;

fn phrases() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/chexpert-labeler-phrases");
    if dir.is_dir() {
        Some(dir)
    } else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{} is absent (CI=true: CI must have it)", dir.display());
        }
        eprintln!("SKIP: {} is absent", dir.display());
        None
    }
}

#[test]
fn reproduces_the_reference_labeled_reports_exactly() {
    let Some(dir) = phrases() else { return };
    let labeler = ReportLabeler::from_dir(&dir).unwrap();
    let out = tempfile_path("labeled.csv");
    let n = cxr_eval::label_csv(&labeler, &dir.join("sample_reports.csv"), &out, &|| {}).unwrap();
    assert_eq!(n, 4);
    let ours = std::fs::read_to_string(&out).unwrap();
    let reference = std::fs::read_to_string(dir.join("labeled_reports.csv")).unwrap();
    assert_eq!(
        ours.trim_end(),
        reference.trim_end(),
        "ours:\n{ours}\nreference:\n{reference}"
    );
}

fn tempfile_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cxr-eval-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The short codes of the gold file.
fn code(name: &str) -> Option<Observation> {
    use Observation::*;
    Some(match name {
        "NF" => NoFinding,
        "ECM" => EnlargedCardiomediastinum,
        "CM" => Cardiomegaly,
        "LL" => LungLesion,
        "LO" => LungOpacity,
        "ED" => Edema,
        "CO" => Consolidation,
        "PN" => Pneumonia,
        "AT" => Atelectasis,
        "PTX" => Pneumothorax,
        "EFF" => PleuralEffusion,
        "PO" => PleuralOther,
        "FX" => Fracture,
        "SD" => SupportDevices,
        _ => return None,
    })
}

/// Parses `CODE=1,CODE=-1` into labels; No Finding follows the rule unless given.
fn parse_gold(cell: &str) -> ChexpertLabels {
    let mut labels = ChexpertLabels::default();
    let mut explicit_no_finding = None;
    for part in cell.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once('=')
            .unwrap_or_else(|| panic!("bad gold cell {part:?}"));
        let o = code(name).unwrap_or_else(|| panic!("unknown observation {name:?}"));
        let l = ChexpertLabels::parse_cell(value).unwrap();
        if o == Observation::NoFinding {
            explicit_no_finding = Some(l);
        } else {
            labels.set(o, l);
        }
    }
    let mut labels = labels.with_no_finding_rule();
    if let Some(nf) = explicit_no_finding {
        labels.set(Observation::NoFinding, nf);
    }
    labels
}

#[test]
fn gold_sentences_agree() {
    let Some(dir) = phrases() else { return };
    let labeler = ReportLabeler::from_dir(&dir).unwrap();
    let gold = include_str!("fixtures/gold_sentences.tsv");
    let (mut n, mut exact, mut cells, mut cells_ok) = (0, 0, 0, 0);
    let mut misses = Vec::new();
    for line in gold
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (sentence, cell) = line.split_once('\t').unwrap_or((line, ""));
        let want = parse_gold(cell);
        let got = labeler.label(sentence);
        n += 1;
        let mut all = true;
        for o in Observation::ALL {
            cells += 1;
            if got.get(o) == want.get(o) {
                cells_ok += 1;
            } else {
                all = false;
            }
        }
        if all {
            exact += 1;
        } else {
            let show = |l: &ChexpertLabels| {
                Observation::ALL
                    .iter()
                    .filter_map(|&o| {
                        l.get(o).map(|v| {
                            format!(
                                "{}={}",
                                o.name(),
                                match v {
                                    Label::Positive => "1",
                                    Label::Negative => "0",
                                    Label::Uncertain => "-1",
                                }
                            )
                        })
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            };
            misses.push(format!(
                "{sentence}\n    want {}\n    got  {}",
                show(&want),
                show(&got)
            ));
        }
    }
    let agreement = exact as f64 / n as f64;
    eprintln!(
        "gold: {n} sentences, {exact} exactly right ({agreement:.3}); cells {cells_ok}/{cells} ({:.4})",
        cells_ok as f64 / cells as f64
    );
    for m in &misses {
        eprintln!("MISS {m}");
    }
    assert!(
        n >= 300,
        "the gold set must hold at least 300 sentences, has {n}"
    );
    assert!(
        agreement >= 0.95,
        "sentence agreement {agreement:.3} < 0.95"
    );
}
