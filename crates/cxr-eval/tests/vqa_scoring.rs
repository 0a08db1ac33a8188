//! VQA scoring on hand-checked pairs: every number below was counted by hand.

mod common;

use cxr_eval::vqa::{judge, vqa_report, VqaPair};

fn pair(kind: &str, question: &str, answer: &str, reference: &str) -> VqaPair {
    VqaPair {
        question: question.into(),
        answer: answer.into(),
        reference: reference.into(),
        kind: Some(kind.into()),
    }
}

#[test]
fn scores_closed_and_open_questions() {
    let Some(labeler) = common::labeler() else {
        return;
    };
    let pairs = vec![
        // Closed, right.
        pair("presence", "Is there a pleural effusion?", "Yes.", "yes"),
        // Closed, wrong.
        pair("presence", "Is there a pneumothorax?", "No.", "Yes."),
        // Closed, unanswered (counts as wrong).
        pair(
            "presence",
            "Is the heart enlarged?",
            "The heart is enlarged.",
            "No",
        ),
        // Open: answer names effusion (agrees) but adds cardiomegaly and misses edema:
        // mentioned = {effusion, cardiomegaly, edema}, agreeing = {effusion} -> 1/3.
        pair(
            "abnormalities",
            "Which abnormalities are seen?",
            "Pleural effusion and cardiomegaly.",
            "Pleural effusion and pulmonary edema.",
        ),
        // Open: side question, labels agree on effusion -> 1.
        pair(
            "side",
            "On which side is the effusion?",
            "There is a left pleural effusion.",
            "Left pleural effusion.",
        ),
    ];
    let verdicts: Vec<_> = pairs.iter().map(|p| judge(&labeler, p)).collect();
    let report = vqa_report(&pairs, &verdicts);
    let all = &report.overall;
    assert_eq!(all.pairs, 5);
    assert_eq!(all.closed, 3);
    assert_eq!(all.closed_correct, 1);
    assert_eq!(all.closed_unanswered, 1);
    assert!((all.yes_no_accuracy.unwrap() - 1.0 / 3.0).abs() < 1e-12);
    // Pair 3's answer mentions cardiomegaly (positive) against a blank reference.
    assert_eq!(all.labelled, 3);
    let agreement = (0.0 + 1.0 / 3.0 + 1.0) / 3.0;
    assert!(
        (all.label_agreement.unwrap() - agreement).abs() < 1e-12,
        "{:?}",
        verdicts.iter().map(|v| v.agreement).collect::<Vec<_>>()
    );
    // Positives: answers {cardiomegaly (3), effusion + cardiomegaly (4), effusion (5)};
    // references {effusion + edema (4), effusion (5)}: tp 2, fp 2, fn 1.
    assert!((all.positive_precision - 0.5).abs() < 1e-12);
    assert!((all.positive_recall - 2.0 / 3.0).abs() < 1e-12);
    assert!((all.positive_f1 - 4.0 / 7.0).abs() < 1e-12);

    assert_eq!(report.by_kind.len(), 3);
    let presence = &report.by_kind["presence"];
    assert_eq!(
        (presence.pairs, presence.closed, presence.closed_correct),
        (3, 3, 1)
    );
    let side = &report.by_kind["side"];
    assert_eq!(side.yes_no_accuracy, None);
    assert_eq!(side.label_agreement, Some(1.0));

    let md = report.to_markdown("ours");
    assert!(md.contains("| ours: all | 5 | 3 | 0.333 | 1 | 3 |"), "{md}");
    assert!(md.contains("| side | 1 | 0 | - |"), "{md}");
}
