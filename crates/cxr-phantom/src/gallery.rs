//! The phantom gallery for the docs: one row per finding and severity, several patients per
//! row, each with its report.

use crate::{Finding, FindingKind, Lobe, PhantomSpec, Severity, Side, View};

/// One row of the gallery: a title and the phantoms shown in it.
pub struct GalleryRow {
    pub title: String,
    pub phantoms: Vec<PhantomSpec>,
}

fn finding(
    kind: FindingKind,
    side: Option<Side>,
    lobe: Option<Lobe>,
    severity: Option<Severity>,
) -> Finding {
    Finding {
        kind,
        side,
        lobe,
        severity,
        certain: true,
    }
}

/// The rows: normal PA and AP, then every finding kind at each side / lobe / severity it has.
pub fn gallery(seed: u64, per_row: u64) -> Vec<GalleryRow> {
    use FindingKind as K;
    use Severity::*;
    let mut rows: Vec<(String, View, Vec<Finding>)> = vec![
        ("Normal, PA".into(), View::Pa, vec![]),
        ("Normal, AP".into(), View::Ap, vec![]),
    ];
    for s in [Mild, Moderate, Severe] {
        rows.push((
            format!("Cardiomegaly, {}", s.word()),
            View::Pa,
            vec![finding(K::Cardiomegaly, None, None, Some(s))],
        ));
    }
    rows.push((
        "Enlarged cardiomediastinum".into(),
        View::Pa,
        vec![finding(K::EnlargedCardiomediastinum, None, None, None)],
    ));
    for (side, s) in [
        (Side::Right, Mild),
        (Side::Left, Moderate),
        (Side::Bilateral, Severe),
    ] {
        rows.push((
            format!("Pleural effusion, {} {}", s.size_word(), side.word()),
            View::Pa,
            vec![finding(K::PleuralEffusion, Some(side), None, Some(s))],
        ));
    }
    for lobe in [Lobe::RightUpper, Lobe::RightLower, Lobe::Lingula] {
        rows.push((
            format!("Consolidation, {}", lobe.name()),
            View::Pa,
            vec![finding(
                K::Consolidation,
                Some(lobe.side()),
                Some(lobe),
                None,
            )],
        ));
    }
    for lobe in [Lobe::RightMiddle, Lobe::LeftLower] {
        rows.push((
            format!("Pneumonia, {}", lobe.name()),
            View::Pa,
            vec![finding(K::Pneumonia, Some(lobe.side()), Some(lobe), None)],
        ));
    }
    for s in [Mild, Moderate, Severe] {
        rows.push((
            format!("Pulmonary edema, {}", s.word()),
            View::Ap,
            vec![finding(K::Edema, None, None, Some(s))],
        ));
    }
    rows.push((
        "Pneumothorax, small right".into(),
        View::Pa,
        vec![finding(
            K::Pneumothorax,
            Some(Side::Right),
            None,
            Some(Mild),
        )],
    ));
    rows.push((
        "Pneumothorax, large left".into(),
        View::Pa,
        vec![finding(
            K::Pneumothorax,
            Some(Side::Left),
            None,
            Some(Severe),
        )],
    ));
    rows.push((
        "Atelectasis, bibasilar".into(),
        View::Pa,
        vec![finding(K::Atelectasis, Some(Side::Bilateral), None, None)],
    ));
    rows.push((
        "Nodule, right upper lobe".into(),
        View::Pa,
        vec![finding(
            K::Nodule,
            Some(Side::Right),
            Some(Lobe::RightUpper),
            None,
        )],
    ));
    rows.push((
        "Mass, left upper lobe".into(),
        View::Pa,
        vec![finding(
            K::Mass,
            Some(Side::Left),
            Some(Lobe::LeftUpper),
            None,
        )],
    ));
    rows.push((
        "Lung opacity, right lower lobe".into(),
        View::Pa,
        vec![finding(
            K::LungOpacity,
            Some(Side::Right),
            Some(Lobe::RightLower),
            None,
        )],
    ));
    rows.push((
        "Rib fracture, left".into(),
        View::Pa,
        vec![finding(K::Fracture, Some(Side::Left), None, None)],
    ));
    rows.push((
        "Pleural thickening, right".into(),
        View::Pa,
        vec![finding(K::PleuralThickening, Some(Side::Right), None, None)],
    ));
    rows.push((
        "Endotracheal tube".into(),
        View::Ap,
        vec![finding(K::EndotrachealTube, None, None, None)],
    ));
    rows.push((
        "Central venous catheter".into(),
        View::Ap,
        vec![finding(K::CentralLine, None, None, None)],
    ));
    rows.push((
        "Pacemaker".into(),
        View::Ap,
        vec![finding(K::Pacemaker, None, None, None)],
    ));
    rows.into_iter()
        .enumerate()
        .map(|(r, (title, view, findings))| GalleryRow {
            title,
            phantoms: (0..per_row)
                .map(|c| {
                    PhantomSpec::with_findings(seed, 1000 * r as u64 + c, view, findings.clone())
                })
                .collect(),
        })
        .collect()
}
