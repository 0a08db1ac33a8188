//! Structured findings of a phantom: what is drawn and what the report says, with side, lobe and
//! severity. This is the ground truth beside the 14 CheXpert labels.

use rand::Rng;
use serde::{Deserialize, Serialize};

use cxr_data::Observation;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    Cardiomegaly,
    EnlargedCardiomediastinum,
    PleuralEffusion,
    Consolidation,
    Pneumonia,
    Edema,
    Pneumothorax,
    Atelectasis,
    Nodule,
    Mass,
    LungOpacity,
    Fracture,
    PleuralThickening,
    EndotrachealTube,
    CentralLine,
    Pacemaker,
}

impl FindingKind {
    pub const ALL: [FindingKind; 16] = [
        FindingKind::Cardiomegaly,
        FindingKind::EnlargedCardiomediastinum,
        FindingKind::PleuralEffusion,
        FindingKind::Consolidation,
        FindingKind::Pneumonia,
        FindingKind::Edema,
        FindingKind::Pneumothorax,
        FindingKind::Atelectasis,
        FindingKind::Nodule,
        FindingKind::Mass,
        FindingKind::LungOpacity,
        FindingKind::Fracture,
        FindingKind::PleuralThickening,
        FindingKind::EndotrachealTube,
        FindingKind::CentralLine,
        FindingKind::Pacemaker,
    ];

    /// The CheXpert observation this finding is reported as.
    pub fn observation(self) -> Observation {
        match self {
            FindingKind::Cardiomegaly => Observation::Cardiomegaly,
            FindingKind::EnlargedCardiomediastinum => Observation::EnlargedCardiomediastinum,
            FindingKind::PleuralEffusion => Observation::PleuralEffusion,
            FindingKind::Consolidation => Observation::Consolidation,
            FindingKind::Pneumonia => Observation::Pneumonia,
            FindingKind::Edema => Observation::Edema,
            FindingKind::Pneumothorax => Observation::Pneumothorax,
            FindingKind::Atelectasis => Observation::Atelectasis,
            FindingKind::Nodule | FindingKind::Mass => Observation::LungLesion,
            FindingKind::LungOpacity => Observation::LungOpacity,
            FindingKind::Fracture => Observation::Fracture,
            FindingKind::PleuralThickening => Observation::PleuralOther,
            FindingKind::EndotrachealTube | FindingKind::CentralLine | FindingKind::Pacemaker => {
                Observation::SupportDevices
            }
        }
    }

    pub fn is_device(self) -> bool {
        self.observation() == Observation::SupportDevices
    }
}

/// The patient's side (on a frontal radiograph, patient right is image left).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Right,
    Left,
    Bilateral,
}

impl Side {
    pub fn word(self) -> &'static str {
        match self {
            Side::Right => "right",
            Side::Left => "left",
            Side::Bilateral => "bilateral",
        }
    }

    pub fn includes(self, s: Side) -> bool {
        self == Side::Bilateral || self == s
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lobe {
    RightUpper,
    RightMiddle,
    RightLower,
    LeftUpper,
    Lingula,
    LeftLower,
}

impl Lobe {
    pub const ALL: [Lobe; 6] = [
        Lobe::RightUpper,
        Lobe::RightMiddle,
        Lobe::RightLower,
        Lobe::LeftUpper,
        Lobe::Lingula,
        Lobe::LeftLower,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Lobe::RightUpper => "right upper lobe",
            Lobe::RightMiddle => "right middle lobe",
            Lobe::RightLower => "right lower lobe",
            Lobe::LeftUpper => "left upper lobe",
            Lobe::Lingula => "lingula",
            Lobe::LeftLower => "left lower lobe",
        }
    }

    pub fn side(self) -> Side {
        match self {
            Lobe::RightUpper | Lobe::RightMiddle | Lobe::RightLower => Side::Right,
            _ => Side::Left,
        }
    }
}

/// Severity; for effusion and pneumothorax Mild/Moderate/Severe read small/moderate/large.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Mild,
    Moderate,
    Severe,
}

impl Severity {
    pub fn word(self) -> &'static str {
        match self {
            Severity::Mild => "mild",
            Severity::Moderate => "moderate",
            Severity::Severe => "severe",
        }
    }

    pub fn size_word(self) -> &'static str {
        match self {
            Severity::Mild => "small",
            Severity::Moderate => "moderate",
            Severity::Severe => "large",
        }
    }

    /// 0, 1, 2: for drawing.
    pub fn level(self) -> usize {
        self as usize
    }
}

/// One structured finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub side: Option<Side>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lobe: Option<Lobe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    /// False when the report hedges ("cannot exclude"): the CheXpert label is then -1.
    pub certain: bool,
}

/// Relative frequency of each kind in an abnormal phantom (roughly MIMIC's prevalence order).
fn weight(kind: FindingKind) -> f64 {
    match kind {
        FindingKind::PleuralEffusion => 1.4,
        FindingKind::Cardiomegaly => 1.3,
        FindingKind::Atelectasis => 1.2,
        FindingKind::LungOpacity => 1.1,
        FindingKind::Edema => 1.0,
        FindingKind::Pneumonia => 0.9,
        FindingKind::Consolidation => 0.8,
        FindingKind::Pneumothorax => 0.8,
        FindingKind::EnlargedCardiomediastinum => 0.6,
        FindingKind::Nodule => 0.6,
        FindingKind::Mass => 0.4,
        FindingKind::Fracture => 0.6,
        FindingKind::PleuralThickening => 0.5,
        FindingKind::EndotrachealTube => 0.5,
        FindingKind::CentralLine => 0.6,
        FindingKind::Pacemaker => 0.5,
    }
}

/// Kinds whose report may hedge; the others are always stated plainly.
fn may_hedge(kind: FindingKind) -> bool {
    matches!(
        kind,
        FindingKind::Pneumonia
            | FindingKind::Consolidation
            | FindingKind::Atelectasis
            | FindingKind::Edema
            | FindingKind::Pneumothorax
            | FindingKind::PleuralEffusion
            | FindingKind::Nodule
            | FindingKind::Fracture
    )
}

fn pick<T: Copy>(rng: &mut impl Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

/// Samples one finding of the given kind.
pub fn sample_finding(rng: &mut impl Rng, kind: FindingKind) -> Finding {
    use FindingKind as K;
    let sev3 = [Severity::Mild, Severity::Moderate, Severity::Severe];
    let lr = [Side::Right, Side::Left];
    let (side, lobe, severity) = match kind {
        K::Cardiomegaly | K::Edema => (None, None, Some(pick(rng, &sev3))),
        K::PleuralEffusion => (
            Some(pick(rng, &[Side::Right, Side::Left, Side::Bilateral])),
            None,
            Some(pick(rng, &sev3)),
        ),
        K::Pneumothorax => (
            Some(pick(rng, &lr)),
            None,
            Some(pick(rng, &[Severity::Mild, Severity::Severe])),
        ),
        K::Consolidation | K::Pneumonia | K::LungOpacity | K::Nodule | K::Mass => {
            let lobe = pick(rng, &Lobe::ALL);
            (Some(lobe.side()), Some(lobe), None)
        }
        K::Atelectasis => (
            Some(pick(rng, &[Side::Right, Side::Left, Side::Bilateral])),
            None,
            None,
        ),
        K::Fracture | K::PleuralThickening => (Some(pick(rng, &lr)), None, None),
        K::EnlargedCardiomediastinum | K::EndotrachealTube | K::CentralLine | K::Pacemaker => {
            (None, None, None)
        }
    };
    let certain = !(may_hedge(kind) && rng.random_bool(0.18));
    // A hedged finding is a subtle one.
    let severity = if certain {
        severity
    } else {
        severity.map(|_| Severity::Mild)
    };
    Finding {
        kind,
        side,
        lobe,
        severity,
        certain,
    }
}

/// Samples the findings of one phantom: about 30 % have none; the others one to three kinds.
pub fn sample_findings(rng: &mut impl Rng) -> Vec<Finding> {
    use FindingKind as K;
    if rng.random_bool(0.3) {
        // Normal study, sometimes with a device in place.
        return if rng.random_bool(0.12) {
            let kind = pick(rng, &[K::EndotrachealTube, K::CentralLine, K::Pacemaker]);
            vec![sample_finding(rng, kind)]
        } else {
            vec![]
        };
    }
    let n = match rng.random_range(0..10) {
        0..=4 => 1,
        5..=8 => 2,
        _ => 3,
    };
    let total: f64 = FindingKind::ALL.iter().map(|&k| weight(k)).sum();
    let mut kinds: Vec<FindingKind> = Vec::new();
    while kinds.len() < n {
        let mut x = rng.random_range(0.0..total);
        let mut chosen = K::Cardiomegaly;
        for k in FindingKind::ALL {
            x -= weight(k);
            if x < 0.0 {
                chosen = k;
                break;
            }
        }
        let clash = kinds.contains(&chosen)
            || (chosen == K::Nodule && kinds.contains(&K::Mass))
            || (chosen == K::Mass && kinds.contains(&K::Nodule))
            || (chosen == K::Pneumonia && kinds.contains(&K::Consolidation))
            || (chosen == K::Consolidation && kinds.contains(&K::Pneumonia));
        if !clash {
            kinds.push(chosen);
        }
    }
    kinds.sort_by_key(|k| *k as usize);
    kinds.into_iter().map(|k| sample_finding(rng, k)).collect()
}
