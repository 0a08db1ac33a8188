//! Two independently written halves agree: the labeler reads the phantom generator's reports
//! (findings + impression) back to the labels the generator asserted for them.

mod common;

use cxr_phantom::PhantomSpec;

#[test]
fn labeler_reads_phantom_reports_back_to_their_labels() {
    let Some(labeler) = common::labeler() else {
        return;
    };
    let n = 2000;
    let mut agree = 0;
    let mut shown = 0;
    for i in 0..n {
        let spec = PhantomSpec::sample(21, i);
        let text = format!(
            "{} {}",
            spec.sections.findings.clone().unwrap_or_default(),
            spec.sections.impression.clone().unwrap_or_default()
        );
        let got = labeler.label(&text);
        if got == spec.labels {
            agree += 1;
        } else if shown < 10 {
            shown += 1;
            eprintln!(
                "phantom {i}: {text}\n  want {:?}\n  got  {:?}",
                spec.labels.to_csv_cells(),
                got.to_csv_cells()
            );
        }
    }
    let rate = agree as f64 / n as f64;
    eprintln!("{agree}/{n} phantom reports labelled exactly as generated ({rate:.4})");
    assert!(rate >= 0.99, "agreement {rate}");
}
