//! The 14 CheXpert observations and their four-valued labels, in the CheXpert labeler's own
//! column order and CSV spelling (`1.0`, `0.0`, `-1.0`, empty for "not mentioned").

use std::fmt;

/// One of the 14 CheXpert observations, in the labeler's output column order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Observation {
    NoFinding,
    EnlargedCardiomediastinum,
    Cardiomegaly,
    LungLesion,
    LungOpacity,
    Edema,
    Consolidation,
    Pneumonia,
    Atelectasis,
    Pneumothorax,
    PleuralEffusion,
    PleuralOther,
    Fracture,
    SupportDevices,
}

impl Observation {
    pub const ALL: [Observation; 14] = [
        Observation::NoFinding,
        Observation::EnlargedCardiomediastinum,
        Observation::Cardiomegaly,
        Observation::LungLesion,
        Observation::LungOpacity,
        Observation::Edema,
        Observation::Consolidation,
        Observation::Pneumonia,
        Observation::Atelectasis,
        Observation::Pneumothorax,
        Observation::PleuralEffusion,
        Observation::PleuralOther,
        Observation::Fracture,
        Observation::SupportDevices,
    ];

    /// The column header used by the CheXpert labeler and MIMIC-CXR's chexpert.csv.
    pub fn name(self) -> &'static str {
        match self {
            Observation::NoFinding => "No Finding",
            Observation::EnlargedCardiomediastinum => "Enlarged Cardiomediastinum",
            Observation::Cardiomegaly => "Cardiomegaly",
            Observation::LungLesion => "Lung Lesion",
            Observation::LungOpacity => "Lung Opacity",
            Observation::Edema => "Edema",
            Observation::Consolidation => "Consolidation",
            Observation::Pneumonia => "Pneumonia",
            Observation::Atelectasis => "Atelectasis",
            Observation::Pneumothorax => "Pneumothorax",
            Observation::PleuralEffusion => "Pleural Effusion",
            Observation::PleuralOther => "Pleural Other",
            Observation::Fracture => "Fracture",
            Observation::SupportDevices => "Support Devices",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.name() == name.trim())
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A mentioned observation's status. "Not mentioned" is `None` in [`ChexpertLabels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Label {
    Positive,
    Negative,
    Uncertain,
}

impl Label {
    /// The CSV spelling used by the CheXpert labeler.
    pub fn as_csv(self) -> &'static str {
        match self {
            Label::Positive => "1.0",
            Label::Negative => "0.0",
            Label::Uncertain => "-1.0",
        }
    }
}

/// The 14 labels of one report; `None` means the observation is not mentioned (blank). In JSON,
/// the 14 values in [`Observation::ALL`]'s order (`null` for blank).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ChexpertLabels(pub [Option<Label>; 14]);

/// A label cell that is not one of `1`, `0`, `-1` (any float spelling) or empty.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid CheXpert label {0:?} (expected 1, 0, -1 or empty)")]
pub struct InvalidLabel(pub String);

impl ChexpertLabels {
    pub fn get(&self, o: Observation) -> Option<Label> {
        self.0[o.index()]
    }

    pub fn set(&mut self, o: Observation, label: Option<Label>) {
        self.0[o.index()] = label;
    }

    /// Parses one cell as written by the labeler or MIMIC (`1.0`, `-1`, `0`, ``).
    pub fn parse_cell(cell: &str) -> Result<Option<Label>, InvalidLabel> {
        let t = cell.trim();
        if t.is_empty() || t.eq_ignore_ascii_case("nan") {
            return Ok(None);
        }
        match t.parse::<f64>() {
            Ok(1.0) => Ok(Some(Label::Positive)),
            Ok(0.0) => Ok(Some(Label::Negative)),
            Ok(-1.0) => Ok(Some(Label::Uncertain)),
            _ => Err(InvalidLabel(cell.to_string())),
        }
    }

    /// The 14 cells in column order, CSV spelling.
    pub fn to_csv_cells(&self) -> [&'static str; 14] {
        self.0.map(|l| l.map_or("", Label::as_csv))
    }

    /// The CheXpert rule: No Finding is positive iff nothing but Support Devices is positive or
    /// uncertain; otherwise it is blank.
    pub fn with_no_finding_rule(mut self) -> Self {
        let abnormal = Observation::ALL.iter().any(|&o| {
            !matches!(o, Observation::NoFinding | Observation::SupportDevices)
                && matches!(self.get(o), Some(Label::Positive | Label::Uncertain))
        });
        self.set(
            Observation::NoFinding,
            (!abnormal).then_some(Label::Positive),
        );
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_round_trip_in_labeler_spelling() {
        for cell in ["1.0", "0.0", "-1.0", ""] {
            let l = ChexpertLabels::parse_cell(cell).unwrap();
            assert_eq!(l.map_or("", Label::as_csv), cell);
        }
        assert_eq!(
            ChexpertLabels::parse_cell("-1").unwrap(),
            Some(Label::Uncertain)
        );
        assert!(ChexpertLabels::parse_cell("2").is_err());
        assert!(ChexpertLabels::parse_cell("yes").is_err());
    }

    #[test]
    fn no_finding_rule_ignores_support_devices_and_negatives() {
        let mut l = ChexpertLabels::default();
        l.set(Observation::SupportDevices, Some(Label::Positive));
        l.set(Observation::Pneumothorax, Some(Label::Negative));
        assert_eq!(
            l.with_no_finding_rule().get(Observation::NoFinding),
            Some(Label::Positive)
        );
        l.set(Observation::Edema, Some(Label::Uncertain));
        assert_eq!(l.with_no_finding_rule().get(Observation::NoFinding), None);
    }

    #[test]
    fn names_match_labeler_columns() {
        let header = "No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Lesion,Lung Opacity,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices";
        let names: Vec<_> = Observation::ALL.iter().map(|o| o.name()).collect();
        assert_eq!(names.join(","), header);
        assert_eq!(Observation::from_name(" Edema"), Some(Observation::Edema));
    }
}
