//! Free-text reports for phantoms, written the way radiologists write them: a header (exam,
//! indication, technique, comparison), then FINDINGS: and IMPRESSION: with many phrasings per
//! finding, side and severity words, hedges and pertinent negatives.
//!
//! Every sentence carries the CheXpert labels it asserts, and the phantom's labels are the
//! combination of those assertions under the CheXpert labeler's rules (positive beats uncertain
//! beats negative; No Finding iff nothing but Support Devices is positive or uncertain). Phrasings
//! avoid words from other observations' mention lists (e.g. "plate-like" would mention Support
//! Devices through "plate"), which a test checks against the labeler's own phrase lists.

use rand::seq::IndexedRandom;
use rand::Rng;

use cxr_data::{ChexpertLabels, Label, Observation, ReportSections};

use crate::findings::{Finding, FindingKind, Lobe, Severity, Side};
use crate::View;

/// A sentence and the labels it asserts.
struct Sentence {
    text: String,
    asserts: Vec<(Observation, Label)>,
}

fn s(text: impl Into<String>, asserts: &[(Observation, Label)]) -> Sentence {
    Sentence {
        text: text.into(),
        asserts: asserts.to_vec(),
    }
}

use Label::{Negative as NEG, Positive as POS, Uncertain as UNC};
use Observation as O;

fn choose<'a>(rng: &mut impl Rng, items: &[&'a str]) -> &'a str {
    items.choose(rng).copied().unwrap_or("")
}

fn cap(text: &str) -> String {
    let mut c = text.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

const RIB_ORDINALS: [&str; 6] = ["fourth", "fifth", "sixth", "seventh", "eighth", "ninth"];

fn zone_of(lobe: Lobe) -> &'static str {
    match lobe {
        Lobe::RightUpper | Lobe::LeftUpper => "upper",
        Lobe::RightMiddle | Lobe::Lingula => "mid",
        Lobe::RightLower | Lobe::LeftLower => "lower",
    }
}

/// Findings-section sentences for one finding.
fn describe(rng: &mut impl Rng, f: &Finding, lesion_mm: u32, rib: usize) -> Vec<Sentence> {
    let side = f.side.map_or("", Side::word);
    let sev = f.severity.unwrap_or(Severity::Mild);
    let lobe = f.lobe.map_or("", Lobe::name);
    let zone = f.lobe.map_or("", zone_of);
    match (f.kind, f.certain) {
        (FindingKind::Cardiomegaly, _) => {
            let text = match sev {
                Severity::Mild => choose(rng, &["Mild cardiomegaly.", "The heart is mildly enlarged.", "Mild enlargement of the cardiac silhouette."]),
                Severity::Moderate => choose(rng, &["Moderate cardiomegaly.", "The heart is moderately enlarged.", "Moderate enlargement of the cardiac silhouette."]),
                Severity::Severe => choose(rng, &["Severe cardiomegaly.", "Marked cardiomegaly.", "The heart is markedly enlarged."]),
            };
            vec![s(text, &[(O::Cardiomegaly, POS)])]
        }
        (FindingKind::EnlargedCardiomediastinum, _) => vec![s(
            choose(rng, &[
                "The mediastinum is widened.",
                "Widening of the superior mediastinum.",
                "The cardiomediastinal silhouette is enlarged.",
                "Enlarged cardiomediastinum, with widening of the upper mediastinal silhouette.",
            ]),
            &[(O::EnlargedCardiomediastinum, POS)],
        )],
        (FindingKind::PleuralEffusion, certain) => {
            let size = sev.size_word();
            let (noun, bil) = if f.side == Some(Side::Bilateral) {
                ("pleural effusions", true)
            } else {
                ("pleural effusion", false)
            };
            if !certain {
                let t = if bil {
                    choose(rng, &["Possible small bilateral pleural effusions.", "Small bilateral pleural effusions cannot be excluded."]).to_string()
                } else {
                    match rng.random_range(0..4) {
                        0 => format!("Possible small {side} pleural effusion."),
                        3 => format!("Cannot exclude a small {side} pleural effusion."),
                        1 => format!("A small {side} pleural effusion cannot be excluded."),
                        _ => format!("Minimal blunting of the {side} costophrenic angle may reflect a trace effusion."),
                    }
                };
                return vec![s(t, &[(O::PleuralEffusion, UNC)])];
            }
            let t = match rng.random_range(0..4) {
                0 => format!("{} {side} {noun}.", cap(size)),
                1 if bil => format!("There are {size} bilateral {noun}."),
                1 => format!("There is a {size} {side} {noun}."),
                2 if sev == Severity::Mild && !bil => format!("Blunting of the {side} costophrenic angle, compatible with a small {side} pleural effusion."),
                2 if sev == Severity::Severe => format!("Large {side} {noun} with opacification of the {side} lower hemithorax."),
                _ => format!("{} {side} {noun} {}.", cap(size), if bil { "are present" } else { "is present" }),
            };
            let mut a = vec![(O::PleuralEffusion, POS)];
            if t.contains("opacification") {
                a.push((O::LungOpacity, POS));
            }
            vec![s(t, &a)]
        }
        (FindingKind::Consolidation, true) => vec![s(
            match rng.random_range(0..3) {
                0 => format!("Dense consolidation in the {lobe}."),
                1 => format!("{} consolidation with air bronchograms.", cap(lobe)),
                _ => format!("There is focal consolidation in the {lobe}."),
            },
            &[(O::Consolidation, POS)],
        )],
        (FindingKind::Consolidation, false) => vec![s(
            match rng.random_range(0..2) {
                0 => format!("Opacity in the {lobe} may represent consolidation."),
                _ => format!("Hazy opacity in the {lobe}, possibly early consolidation."),
            },
            &[(O::LungOpacity, POS), (O::Consolidation, UNC)],
        )],
        (FindingKind::Pneumonia, _) => vec![s(
            match rng.random_range(0..3) {
                0 => format!("Patchy airspace opacities in the {lobe}."),
                1 => format!("Multifocal patchy opacity in the {lobe}."),
                _ => format!("Ill-defined patchy opacities are seen in the {lobe}."),
            },
            &[(O::LungOpacity, POS)],
        )],
        (FindingKind::Edema, true) => {
            let t = match sev {
                Severity::Mild => choose(rng, &["Mild interstitial pulmonary edema.", "Mild pulmonary edema.", "Mild interstitial edema."]),
                Severity::Moderate => choose(rng, &["Moderate pulmonary edema.", "Moderate interstitial edema with septal thickening.", "Moderate pulmonary edema with perihilar haziness."]),
                Severity::Severe => "Severe pulmonary edema with bilateral perihilar airspace opacities.",
            };
            let mut a = vec![(O::Edema, POS)];
            if t.contains("opacities") {
                a.push((O::LungOpacity, POS));
            }
            vec![s(t, &a)]
        }
        (FindingKind::Edema, false) => vec![s(
            choose(rng, &[
                "Perihilar haziness may reflect mild pulmonary edema.",
                "Possible mild interstitial edema.",
                // CheXpert counts vascular congestion as uncertain edema.
                "Mild pulmonary vascular congestion.",
            ]),
            &[(O::Edema, UNC)],
        )],
        (FindingKind::Pneumothorax, true) => {
            let t = match sev {
                Severity::Severe => match rng.random_range(0..3) {
                    0 => format!("Large {side} pneumothorax."),
                    1 => format!("There is a large {side} pneumothorax with a visible visceral pleural edge along the {side} lateral chest wall."),
                    _ => format!("A large {side} pneumothorax is present."),
                },
                _ => match rng.random_range(0..3) {
                    0 => format!("Small {side} apical pneumothorax."),
                    1 => format!("There is a small {side} apical pneumothorax."),
                    _ => format!("A thin visceral pleural edge at the {side} apex, consistent with a small pneumothorax."),
                },
            };
            vec![s(t, &[(O::Pneumothorax, POS)])]
        }
        (FindingKind::Pneumothorax, false) => vec![s(
            match rng.random_range(0..2) {
                0 => format!("A tiny {side} apical pneumothorax cannot be excluded."),
                _ => format!("Possible tiny {side} apical pneumothorax."),
            },
            &[(O::Pneumothorax, UNC)],
        )],
        (FindingKind::Atelectasis, true) => {
            let t = if f.side == Some(Side::Bilateral) {
                choose(rng, &["Bibasilar atelectasis.", "Linear atelectasis at both lung bases.", "Bibasilar subsegmental atelectasis."]).to_string()
            } else {
                match rng.random_range(0..3) {
                    0 => format!("Linear atelectasis at the {side} base."),
                    1 => format!("{} basilar subsegmental atelectasis.", cap(side)),
                    _ => format!("Discoid atelectasis in the {side} lower lung."),
                }
            };
            vec![s(t, &[(O::Atelectasis, POS)])]
        }
        (FindingKind::Atelectasis, false) => {
            let place = if f.side == Some(Side::Bilateral) {
                "Bibasilar".to_string()
            } else {
                format!("{} basilar", cap(side))
            };
            vec![s(
                format!("{place} opacity, likely atelectasis."),
                &[(O::LungOpacity, POS), (O::Atelectasis, UNC)],
            )]
        }
        (FindingKind::Nodule, true) => vec![s(
            match rng.random_range(0..3) {
                0 => format!("A {lesion_mm} mm nodule in the {lobe}."),
                1 => format!("There is a {lesion_mm} mm pulmonary nodule projecting over the {side} {zone} lung."),
                _ => format!("Rounded {lesion_mm} mm nodule in the {lobe}."),
            },
            &[(O::LungLesion, POS)],
        )],
        (FindingKind::Nodule, false) => vec![s(
            format!("Possible nodule projecting over the {side} {zone} lung."),
            &[(O::LungLesion, UNC)],
        )],
        (FindingKind::Mass, _) => {
            let cm = (lesion_mm as f32 / 10.0).round().max(3.0) as u32;
            vec![s(
                match rng.random_range(0..2) {
                    0 => format!("There is a {cm} cm mass in the {lobe}."),
                    _ => format!("Large {cm} cm mass in the {lobe}."),
                },
                &[(O::LungLesion, POS)],
            )]
        }
        (FindingKind::LungOpacity, _) => vec![s(
            match rng.random_range(0..3) {
                0 => format!("Hazy opacity in the {side} {zone} lung zone."),
                1 => format!("Ill-defined opacity in the {lobe}."),
                _ => format!("There is a faint ground-glass opacity in the {side} {zone} lung."),
            },
            &[(O::LungOpacity, POS)],
        )],
        (FindingKind::Fracture, certain) => {
            let ord = RIB_ORDINALS[rib];
            if certain {
                vec![s(
                    match rng.random_range(0..3) {
                        0 => format!("Acute displaced fracture of the {side} {ord} posterior rib."),
                        1 => format!("There is a displaced {side} {ord} rib fracture."),
                        _ => format!("Fracture of the {side} {ord} posterior rib with mild displacement."),
                    },
                    &[(O::Fracture, POS)],
                )]
            } else {
                vec![s(
                    format!("Possible nondisplaced fracture of the {side} {ord} posterior rib."),
                    &[(O::Fracture, UNC)],
                )]
            }
        }
        (FindingKind::PleuralThickening, _) => vec![s(
            match rng.random_range(0..2) {
                0 => format!("{} lateral pleural thickening.", cap(side)),
                _ => format!("Smooth pleural thickening along the {side} lateral chest wall."),
            },
            &[(O::PleuralOther, POS)],
        )],
        (FindingKind::EndotrachealTube, _) => vec![s(
            choose(rng, &[
                "Endotracheal tube terminates approximately 4 cm above the carina.",
                "The endotracheal tube tip is in standard position above the carina.",
                "An endotracheal tube is in place, tip at the level of the clavicular heads.",
            ]),
            &[(O::SupportDevices, POS)],
        )],
        (FindingKind::CentralLine, _) => vec![s(
            choose(rng, &[
                "Right subclavian central venous catheter terminates in the mid SVC.",
                "A right-sided central line is in place with the tip in the SVC.",
                "Right subclavian catheter with tip projecting over the lower SVC.",
            ]),
            &[(O::SupportDevices, POS)],
        )],
        (FindingKind::Pacemaker, _) => vec![s(
            choose(rng, &[
                "Left chest wall pacemaker with leads in the right atrium and right ventricle.",
                "A left-sided dual-chamber pacemaker is in place.",
                "Left pectoral pacemaker generator with two leads terminating in the right heart.",
            ]),
            &[(O::SupportDevices, POS)],
        )],
    }
}

/// The impression sentence for one finding (None: not worth an impression line).
fn impress(rng: &mut impl Rng, f: &Finding) -> Option<Sentence> {
    let side = f.side.map_or("", Side::word);
    let lobe = f.lobe.map_or("", Lobe::name);
    let sev = f.severity.unwrap_or(Severity::Mild);
    Some(match (f.kind, f.certain) {
        (FindingKind::Pneumonia, true) => s(
            match rng.random_range(0..2) {
                0 => format!("{} pneumonia.", cap(lobe)),
                _ => format!("Findings compatible with {lobe} pneumonia."),
            },
            &[(O::Pneumonia, POS)],
        ),
        (FindingKind::Pneumonia, false) => s(
            match rng.random_range(0..3) {
                0 => "Findings suspicious for pneumonia.".to_string(),
                1 => format!("{} opacity could represent pneumonia.", cap(lobe)),
                _ => "Pneumonia cannot be excluded.".to_string(),
            },
            &[(O::Pneumonia, UNC)],
        ),
        (FindingKind::Consolidation, true) => s(
            format!("{} consolidation.", cap(lobe)),
            &[(O::Consolidation, POS)],
        ),
        (FindingKind::Pneumothorax, true) => s(
            format!("{} {side} pneumothorax.", cap(sev.size_word())),
            &[(O::Pneumothorax, POS)],
        ),
        (FindingKind::PleuralEffusion, true) if sev >= Severity::Moderate => s(
            if f.side == Some(Side::Bilateral) {
                format!("{} bilateral pleural effusions.", cap(sev.size_word()))
            } else {
                format!("{} {side} pleural effusion.", cap(sev.size_word()))
            },
            &[(O::PleuralEffusion, POS)],
        ),
        (FindingKind::Edema, true) => s(
            format!("{} pulmonary edema.", cap(sev.word())),
            &[(O::Edema, POS)],
        ),
        (FindingKind::Cardiomegaly, _) if sev >= Severity::Moderate => {
            s("Cardiomegaly.", &[(O::Cardiomegaly, POS)])
        }
        (FindingKind::Mass, _) => s(
            format!(
                "{} mass, further evaluation with chest CT is recommended.",
                cap(lobe)
            ),
            &[(O::LungLesion, POS)],
        ),
        (FindingKind::Fracture, true) => {
            s(format!("Acute {side} rib fracture."), &[(O::Fracture, POS)])
        }
        _ => return None,
    })
}

const INDICATIONS: &[&str] = &[
    "Shortness of breath.",
    "Cough and fever.",
    "Chest pain.",
    "Preoperative evaluation.",
    "Dyspnea on exertion.",
    "Hypoxia.",
    "Evaluate for acute cardiopulmonary process.",
    "Status post fall.",
    "Follow-up.",
    "Weakness.",
];

/// Writes the report of a phantom and returns it with the labels its sentences assert.
pub fn write_report(
    rng: &mut impl Rng,
    findings: &[Finding],
    view: View,
    lesion_mm: u32,
    rib: usize,
) -> (String, ReportSections, ChexpertLabels) {
    let has = |k: FindingKind| findings.iter().any(|f| f.kind == k);
    let mut body: Vec<Sentence> = Vec::new();
    // Devices first, as radiologists do.
    for f in findings.iter().filter(|f| f.kind.is_device()) {
        body.extend(describe(rng, f, lesion_mm, rib));
    }
    for f in findings.iter().filter(|f| !f.kind.is_device()) {
        body.extend(describe(rng, f, lesion_mm, rib));
    }

    // Pertinent negatives for what is absent.
    let lungs_abnormal = findings.iter().any(|f| {
        matches!(
            f.kind,
            FindingKind::Consolidation
                | FindingKind::Pneumonia
                | FindingKind::Edema
                | FindingKind::Atelectasis
                | FindingKind::LungOpacity
                | FindingKind::Nodule
                | FindingKind::Mass
        )
    });
    let (no_consolidation, no_effusion, no_ptx) = (
        !has(FindingKind::Consolidation) && !has(FindingKind::Pneumonia),
        !has(FindingKind::PleuralEffusion),
        !has(FindingKind::Pneumothorax),
    );
    if !lungs_abnormal && rng.random_bool(0.7) {
        body.push(s(
            choose(
                rng,
                &[
                    "The lungs are clear.",
                    "Lungs are well expanded and clear.",
                    "The lungs are clear bilaterally.",
                ],
            ),
            &[],
        ));
    }
    if no_consolidation && no_effusion && no_ptx && rng.random_bool(0.6) {
        body.push(s(
            "No focal consolidation, pleural effusion, or pneumothorax.",
            &[
                (O::Consolidation, NEG),
                (O::PleuralEffusion, NEG),
                (O::Pneumothorax, NEG),
            ],
        ));
    } else {
        if no_consolidation && !lungs_abnormal && rng.random_bool(0.5) {
            body.push(s(
                choose(
                    rng,
                    &["No focal consolidation.", "There is no consolidation."],
                ),
                &[(O::Consolidation, NEG)],
            ));
        }
        if no_effusion && rng.random_bool(0.6) {
            body.push(s(
                choose(
                    rng,
                    &[
                        "No pleural effusion.",
                        "There is no pleural effusion.",
                        "No pleural effusions.",
                    ],
                ),
                &[(O::PleuralEffusion, NEG)],
            ));
        }
        if no_ptx && rng.random_bool(0.7) {
            body.push(s(
                choose(
                    rng,
                    &[
                        "No pneumothorax.",
                        "There is no pneumothorax.",
                        "No evidence of pneumothorax.",
                    ],
                ),
                &[(O::Pneumothorax, NEG)],
            ));
        }
    }
    if !has(FindingKind::Edema) && rng.random_bool(0.35) {
        body.push(s(
            choose(
                rng,
                &["No pulmonary edema.", "There is no pulmonary edema."],
            ),
            &[(O::Edema, NEG)],
        ));
    }
    match (
        has(FindingKind::Cardiomegaly),
        has(FindingKind::EnlargedCardiomediastinum),
    ) {
        (false, false) => {
            if rng.random_bool(0.8) {
                body.push(match rng.random_range(0..4) {
                    0 => s("Heart size is normal.", &[(O::Cardiomegaly, NEG)]),
                    1 => s(
                        "The cardiomediastinal silhouette is within normal limits.",
                        &[(O::EnlargedCardiomediastinum, NEG)],
                    ),
                    2 => s(
                        "Heart size and mediastinal contours are normal.",
                        &[(O::Cardiomegaly, NEG), (O::EnlargedCardiomediastinum, NEG)],
                    ),
                    _ => s("The heart is normal in size.", &[(O::Cardiomegaly, NEG)]),
                });
            }
        }
        (true, false) => {
            if rng.random_bool(0.4) {
                body.push(s(
                    "Mediastinal contours are unremarkable.",
                    &[(O::EnlargedCardiomediastinum, NEG)],
                ));
            }
        }
        (false, true) => {
            if rng.random_bool(0.5) {
                body.push(s("Heart size is normal.", &[(O::Cardiomegaly, NEG)]));
            }
        }
        (true, true) => {}
    }
    if !has(FindingKind::Fracture) && rng.random_bool(0.3) {
        body.push(s(
            choose(
                rng,
                &[
                    "No acute displaced fracture.",
                    "No displaced rib fracture is seen.",
                ],
            ),
            &[(O::Fracture, NEG)],
        ));
    } else if !has(FindingKind::Fracture) && rng.random_bool(0.3) {
        body.push(s("The osseous structures are intact.", &[]));
    }

    let mut impression: Vec<Sentence> = findings.iter().filter_map(|f| impress(rng, f)).collect();
    let abnormal = findings.iter().any(|f| !f.kind.is_device());
    if impression.is_empty() {
        if abnormal {
            // Restate the first finding briefly.
            let first = findings
                .iter()
                .find(|f| !f.kind.is_device())
                .expect("abnormal");
            impression.extend(describe(rng, first, lesion_mm, rib).into_iter().take(1));
        } else {
            impression.push(s(
                choose(
                    rng,
                    &[
                        "No acute cardiopulmonary process.",
                        "No acute intrathoracic abnormality.",
                        "No radiographic evidence of acute cardiopulmonary disease.",
                        "Normal chest radiograph.",
                    ],
                ),
                &[],
            ));
            if findings.iter().any(|f| f.kind.is_device()) && rng.random_bool(0.5) {
                impression.push(s(
                    "Support devices as described.",
                    &[(O::SupportDevices, POS)],
                ));
            }
        }
    }

    let mut labels = ChexpertLabels::default();
    for (o, l) in body
        .iter()
        .chain(&impression)
        .flat_map(|s| s.asserts.iter().copied())
    {
        let merged = match (labels.get(o), l) {
            (Some(POS), _) | (_, POS) => POS,
            (Some(UNC), _) | (_, UNC) => UNC,
            _ => NEG,
        };
        labels.set(o, Some(merged));
    }
    let labels = labels.with_no_finding_rule();

    let join = |v: &[Sentence]| {
        v.iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let findings_text = join(&body);
    let impression_text = if impression.len() > 1 && rng.random_bool(0.5) {
        impression
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{}. {}", i + 1, s.text))
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        join(&impression)
    };
    let exam = match view {
        View::Pa => choose(rng, &["CHEST (PA AND LAT)", "CHEST (PA)", "CHEST PA"]),
        View::Ap => choose(
            rng,
            &[
                "CHEST (PORTABLE AP)",
                "CHEST PORT. LINE PLACEMENT",
                "CHEST (AP SUPINE)",
            ],
        ),
    };
    let technique = match view {
        View::Pa => "PA view of the chest.",
        View::Ap => "Single portable AP view of the chest.",
    };
    let comparison = choose(
        rng,
        &["None.", "None available.", "Prior study not available."],
    );
    let text = format!(
        "                                 FINAL REPORT\n EXAMINATION:  {exam}\n\n INDICATION:  {}\n\n TECHNIQUE:  {technique}\n\n COMPARISON:  {comparison}\n\n FINDINGS:\n\n {}\n\n IMPRESSION:\n\n {}\n",
        choose(rng, INDICATIONS),
        wrap(&findings_text, 70),
        wrap(&impression_text, 70),
    );
    let sections = ReportSections {
        findings: (!findings_text.is_empty()).then_some(findings_text),
        impression: Some(impression_text),
    };
    (text, sections, labels)
}

/// Wraps text at `width` columns the way MIMIC's report files are wrapped.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut col = 0;
    for word in text.split_whitespace() {
        if col > 0 && col + 1 + word.len() > width {
            out.push_str("\n ");
            col = 0;
        } else if col > 0 {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += word.len();
    }
    out
}
