//! Synthetic VQA from what is known of an image: its CheXpert labels, and, for phantoms, its
//! structured findings (side, lobe, severity). Question types: `presence` (closed, yes/no),
//! `side`, `lobe`, `severity` and `abnormalities` (open). Answers name the finding the way
//! reports do, so the report labeler reads them back (VQA scoring's label agreement).

use cxr_data::{ChexpertLabels, Label, Observation};
use cxr_phantom::findings::{Finding, FindingKind, Severity, Side};
use rand::seq::SliceRandom;
use rand::Rng;

/// One question with its answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QaPair {
    /// presence, side, lobe, severity or abnormalities.
    pub kind: String,
    pub question: String,
    pub answer: String,
}

fn qa(kind: &str, question: String, answer: String) -> QaPair {
    QaPair {
        kind: kind.into(),
        question,
        answer,
    }
}

/// The yes/no question of an observation, and the noun phrase answers use.
fn presence(o: Observation) -> Option<(&'static str, &'static str)> {
    Some(match o {
        Observation::NoFinding => return None,
        Observation::EnlargedCardiomediastinum => (
            "Is the cardiomediastinal silhouette enlarged?",
            "an enlarged cardiomediastinum",
        ),
        Observation::Cardiomegaly => ("Is the heart enlarged?", "cardiomegaly"),
        Observation::LungLesion => ("Is there a lung nodule or mass?", "a lung nodule or mass"),
        Observation::LungOpacity => ("Is there a lung opacity?", "a lung opacity"),
        Observation::Edema => ("Is there pulmonary edema?", "pulmonary edema"),
        Observation::Consolidation => ("Is there consolidation?", "consolidation"),
        Observation::Pneumonia => ("Is there pneumonia?", "pneumonia"),
        Observation::Atelectasis => ("Is there atelectasis?", "atelectasis"),
        Observation::Pneumothorax => ("Is there a pneumothorax?", "a pneumothorax"),
        Observation::PleuralEffusion => ("Is there a pleural effusion?", "a pleural effusion"),
        Observation::PleuralOther => ("Is there pleural thickening?", "pleural thickening"),
        Observation::Fracture => ("Is there a rib fracture?", "a rib fracture"),
        Observation::SupportDevices => {
            ("Are there any lines, tubes or devices?", "a support device")
        }
    })
}

/// Questions answerable from the labels alone: yes for positive, no for negative observations
/// (uncertain and unmentioned ones are not asked), and which abnormalities are present.
pub fn from_labels(labels: &ChexpertLabels) -> Vec<QaPair> {
    let mut out = Vec::new();
    let mut positives = Vec::new();
    for o in Observation::ALL {
        let Some((question, noun)) = presence(o) else {
            continue;
        };
        match labels.get(o) {
            Some(Label::Positive) => {
                positives.push(noun);
                out.push(qa(
                    "presence",
                    question.into(),
                    format!("Yes, there is {noun}."),
                ));
            }
            Some(Label::Negative) => {
                out.push(qa(
                    "presence",
                    question.into(),
                    format!("No, there is no {}.", strip_article(noun)),
                ));
            }
            _ => {}
        }
    }
    out.push(abnormalities(&positives));
    out
}

fn strip_article(noun: &str) -> &str {
    noun.strip_prefix("a ")
        .or_else(|| noun.strip_prefix("an "))
        .unwrap_or(noun)
}

fn abnormalities(nouns: &[impl AsRef<str>]) -> QaPair {
    let answer = match nouns {
        [] => "No acute cardiopulmonary abnormality.".to_string(),
        [one] => format!("There is {}.", one.as_ref()),
        [rest @ .., last] => format!(
            "There is {} and {}.",
            rest.iter()
                .map(|n| n.as_ref())
                .collect::<Vec<_>>()
                .join(", "),
            last.as_ref()
        ),
    };
    qa(
        "abnormalities",
        "What abnormalities are seen on this chest X-ray?".into(),
        answer,
    )
}

/// A finding as a report names it: severity, side or lobe, and kind.
fn describe(f: &Finding) -> String {
    use FindingKind as K;
    let sized = matches!(f.kind, K::PleuralEffusion | K::Pneumothorax);
    let severity = f
        .severity
        .map(|s| if sized { s.size_word() } else { s.word() });
    let place = match (f.lobe, f.side) {
        (Some(l), _) => Some(l.name().to_string()),
        (None, Some(Side::Bilateral)) => Some("bilateral".to_string()),
        (None, Some(s)) => Some(s.word().to_string()),
        _ => None,
    };
    let noun = match f.kind {
        K::Cardiomegaly => "cardiomegaly",
        K::EnlargedCardiomediastinum => "enlargement of the cardiomediastinal silhouette",
        K::PleuralEffusion => "pleural effusion",
        K::Consolidation => "consolidation",
        K::Pneumonia => "pneumonia",
        K::Edema => "pulmonary edema",
        K::Pneumothorax => "pneumothorax",
        K::Atelectasis => "atelectasis",
        K::Nodule => "nodule",
        K::Mass => "mass",
        K::LungOpacity => "opacity",
        K::Fracture => "rib fracture",
        K::PleuralThickening => "pleural thickening",
        K::EndotrachealTube => "endotracheal tube",
        K::CentralLine => "central venous line",
        K::Pacemaker => "pacemaker",
    };
    let words: Vec<String> = [severity.map(str::to_string), place, Some(noun.to_string())]
        .into_iter()
        .flatten()
        .collect();
    let phrase = words.join(" ");
    let countable = matches!(
        f.kind,
        K::PleuralEffusion
            | K::Pneumothorax
            | K::Nodule
            | K::Mass
            | K::LungOpacity
            | K::Fracture
            | K::EndotrachealTube
            | K::CentralLine
            | K::Pacemaker
    );
    let phrase = if countable {
        let article = if phrase.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        format!("{article} {phrase}")
    } else {
        phrase
    };
    if f.certain {
        phrase
    } else {
        format!("possible {phrase}")
    }
}

fn side_answer(side: Side) -> &'static str {
    match side {
        Side::Right => "The right side.",
        Side::Left => "The left side.",
        Side::Bilateral => "Both sides.",
    }
}

fn severity_answer(kind: FindingKind, s: Severity) -> String {
    let sized = matches!(
        kind,
        FindingKind::PleuralEffusion | FindingKind::Pneumothorax
    );
    let word = if sized { s.size_word() } else { s.word() };
    let mut w = word.to_string();
    w[..1].make_ascii_uppercase();
    format!("{w}.")
}

/// Questions from a phantom's structured findings (its ground truth): presence of every
/// observation (absent ones answered no), side, lobe and severity of each certain finding, and
/// which abnormalities are present.
pub fn from_findings(findings: &[Finding]) -> Vec<QaPair> {
    let mut out = Vec::new();
    for o in Observation::ALL {
        let Some((question, noun)) = presence(o) else {
            continue;
        };
        let of_kind: Vec<&Finding> = findings
            .iter()
            .filter(|f| f.kind.observation() == o)
            .collect();
        let answer = match of_kind.as_slice() {
            [] => format!("No, there is no {}.", strip_article(noun)),
            fs if fs.iter().any(|f| f.certain) => {
                let f = fs.iter().find(|f| f.certain).expect("one is certain");
                format!("Yes, there is {}.", describe(f))
            }
            fs => format!(
                "It is uncertain; {} cannot be excluded.",
                describe(fs[0]).trim_start_matches("possible ")
            ),
        };
        out.push(qa("presence", question.into(), answer));
    }
    for f in findings.iter().filter(|f| f.certain) {
        let name = describe(&Finding {
            side: None,
            lobe: None,
            severity: None,
            ..f.clone()
        });
        let name = strip_article(&name).to_string();
        if let Some(side) = f.side.or(f.lobe.map(|l| l.side())) {
            out.push(qa(
                "side",
                format!("On which side is the {name}?"),
                side_answer(side).into(),
            ));
        }
        if let Some(lobe) = f.lobe {
            out.push(qa(
                "lobe",
                format!("Where is the {name} located?"),
                format!("In the {}.", lobe.name()),
            ));
        }
        if let Some(s) = f.severity {
            out.push(qa(
                "severity",
                format!("How severe is the {name}?"),
                severity_answer(f.kind, s),
            ));
        }
    }
    let described: Vec<String> = findings.iter().map(describe).collect();
    out.push(abnormalities(&described));
    out
}

/// Up to `n` of `pairs`, drawn without replacement, keeping every question type represented
/// where possible, closed questions answered yes and no counting as two types (one of each
/// first, then the rest at random). Without that, a phantom's thirteen presence questions,
/// nearly all answered no, would teach and test little more than "No.".
pub fn choose(mut pairs: Vec<QaPair>, n: usize, rng: &mut impl Rng) -> Vec<QaPair> {
    pairs.shuffle(rng);
    let variety = |p: &QaPair| {
        let answer = p.answer.trim_start().to_ascii_lowercase();
        let polarity = if answer.starts_with("yes") {
            1
        } else if answer.starts_with("no") {
            2
        } else {
            0
        };
        (p.kind.clone(), polarity)
    };
    let mut chosen: Vec<QaPair> = Vec::new();
    let mut rest = Vec::new();
    for p in pairs {
        if chosen.len() < n && !chosen.iter().any(|c| variety(c) == variety(&p)) {
            chosen.push(p);
        } else {
            rest.push(p);
        }
    }
    chosen.extend(rest.into_iter().take(n.saturating_sub(chosen.len())));
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use cxr_phantom::findings::Lobe;

    #[test]
    fn findings_give_side_lobe_and_severity() {
        let findings = vec![
            Finding {
                kind: FindingKind::PleuralEffusion,
                side: Some(Side::Right),
                lobe: None,
                severity: Some(Severity::Severe),
                certain: true,
            },
            Finding {
                kind: FindingKind::Pneumonia,
                side: Some(Side::Right),
                lobe: Some(Lobe::RightLower),
                severity: None,
                certain: false,
            },
        ];
        let qa = from_findings(&findings);
        let find = |q: &str| {
            qa.iter()
                .find(|p| p.question == q)
                .map(|p| p.answer.as_str())
        };
        assert_eq!(
            find("Is there a pleural effusion?"),
            Some("Yes, there is a large right pleural effusion.")
        );
        assert_eq!(
            find("Is there pneumonia?"),
            Some("It is uncertain; right lower lobe pneumonia cannot be excluded.")
        );
        assert_eq!(
            find("Is there a pneumothorax?"),
            Some("No, there is no pneumothorax.")
        );
        assert_eq!(
            find("On which side is the pleural effusion?"),
            Some("The right side.")
        );
        assert_eq!(find("How severe is the pleural effusion?"), Some("Large."));
        // The uncertain pneumonia gets no side question.
        assert!(find("On which side is the pneumonia?").is_none());
        assert_eq!(
            find("What abnormalities are seen on this chest X-ray?"),
            Some(
                "There is a large right pleural effusion and possible right lower lobe pneumonia."
            )
        );
        // 13 presence questions, side and severity of the effusion, abnormalities.
        assert_eq!(qa.len(), 16);
    }

    #[test]
    fn labels_ask_only_what_is_known() {
        let mut labels = ChexpertLabels::default();
        labels.set(Observation::Cardiomegaly, Some(Label::Positive));
        labels.set(Observation::Pneumothorax, Some(Label::Negative));
        labels.set(Observation::Edema, Some(Label::Uncertain));
        let qa = from_labels(&labels);
        let answers: Vec<(&str, &str)> = qa
            .iter()
            .map(|p| (p.question.as_str(), p.answer.as_str()))
            .collect();
        assert_eq!(
            answers,
            vec![
                ("Is the heart enlarged?", "Yes, there is cardiomegaly."),
                ("Is there a pneumothorax?", "No, there is no pneumothorax."),
                (
                    "What abnormalities are seen on this chest X-ray?",
                    "There is cardiomegaly."
                ),
            ]
        );
    }

    #[test]
    fn choose_keeps_each_type_first() {
        use rand::SeedableRng;
        let pairs: Vec<QaPair> = ["presence", "presence", "presence", "side", "severity"]
            .iter()
            .enumerate()
            .map(|(i, k)| qa(k, format!("q{i}"), "a".into()))
            .collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let chosen = choose(pairs, 3, &mut rng);
        let mut kinds: Vec<&str> = chosen.iter().map(|p| p.kind.as_str()).collect();
        kinds.sort();
        assert_eq!(kinds, ["presence", "severity", "side"]);
    }

    #[test]
    fn choose_asks_closed_questions_both_ways() {
        use rand::SeedableRng;
        let mut pairs: Vec<QaPair> = (0..12)
            .map(|i| qa("presence", format!("q{i}"), "No, there is no x.".into()))
            .collect();
        pairs.push(qa("presence", "q12".into(), "Yes, there is y.".into()));
        pairs.push(qa("side", "q13".into(), "On the left.".into()));
        for seed in 0..20 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let chosen = choose(pairs.clone(), 3, &mut rng);
            let answers: Vec<&str> = chosen.iter().map(|p| &p.answer[..2]).collect();
            assert!(
                answers.contains(&"Ye") && answers.contains(&"No"),
                "{answers:?}"
            );
            assert!(answers.contains(&"On"), "{answers:?}");
        }
    }
}
