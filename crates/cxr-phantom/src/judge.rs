//! Does an image show a finding on the side and at the severity its report gives? Judged against
//! the phantom model's own renderings: for each alternative (right / left / bilateral, or mild /
//! moderate / severe) the same findings are rendered over several anatomies and averaged into a
//! template, and the image is matched to the nearest template (squared distance after LLM-CXR's
//! preprocessing). Anatomy averages out of the templates; what differs between them is only the
//! judged finding's variant.
//!
//! A classifier of CheXpert labels cannot say which side a finding is on, so this is how the demo
//! measures whether drawn images obey "left" and "large". The judge is checked on real phantoms
//! (where the truth is known) beside every use, so its own error is in view.

use cxr_image::{preprocess, Preprocess};

use crate::findings::{Finding, FindingKind, Lobe, Severity, Side};
use crate::{PhantomSpec, View};

/// What is judged of a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribute {
    Side,
    Severity,
}

/// One judged attribute of one finding.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    pub kind: FindingKind,
    pub attribute: Attribute,
    /// The report's value and the one the image matched, as words (`left`, `severe`, ...).
    pub truth: String,
    pub judged: String,
}

impl Verdict {
    pub fn obeyed(&self) -> bool {
        self.truth == self.judged
    }
}

/// Template matcher over `anatomies` renderings per alternative, compared at `size` pixels.
pub struct AttributeJudge {
    pub size: u32,
    pub anatomies: u64,
    /// Seed of the template anatomies (any seed other than the judged dataset's).
    pub seed: u64,
}

impl Default for AttributeJudge {
    fn default() -> Self {
        AttributeJudge {
            size: 64,
            anatomies: 8,
            seed: 0x5eed_1d9e,
        }
    }
}

fn mirror(lobe: Lobe) -> Lobe {
    match lobe {
        Lobe::RightUpper => Lobe::LeftUpper,
        Lobe::RightMiddle => Lobe::Lingula,
        Lobe::RightLower => Lobe::LeftLower,
        Lobe::LeftUpper => Lobe::RightUpper,
        Lobe::Lingula => Lobe::RightMiddle,
        Lobe::LeftLower => Lobe::RightLower,
    }
}

/// The variants of `f` that differ from it in `attribute` (itself first), as the phantom samples
/// them; empty when the attribute does not apply to its kind.
fn alternatives(f: &Finding, attribute: Attribute) -> Vec<(String, Finding)> {
    let with = |change: &dyn Fn(&mut Finding)| {
        let mut g = f.clone();
        change(&mut g);
        g
    };
    match attribute {
        Attribute::Side => {
            if let Some(lobe) = f.lobe {
                let other = mirror(lobe);
                return vec![
                    (lobe.side().word().to_string(), f.clone()),
                    (
                        other.side().word().to_string(),
                        with(&|g| {
                            g.lobe = Some(other);
                            g.side = Some(other.side());
                        }),
                    ),
                ];
            }
            let Some(side) = f.side else {
                return Vec::new();
            };
            let sides: &[Side] = match f.kind {
                FindingKind::PleuralEffusion | FindingKind::Atelectasis => {
                    &[Side::Right, Side::Left, Side::Bilateral]
                }
                _ => &[Side::Right, Side::Left],
            };
            std::iter::once(side)
                .chain(sides.iter().copied().filter(|&s| s != side))
                .map(|s| (s.word().to_string(), with(&|g| g.side = Some(s))))
                .collect()
        }
        Attribute::Severity => {
            let Some(severity) = f.severity else {
                return Vec::new();
            };
            let levels: &[Severity] = match f.kind {
                FindingKind::Pneumothorax => &[Severity::Mild, Severity::Severe],
                _ => &[Severity::Mild, Severity::Moderate, Severity::Severe],
            };
            std::iter::once(severity)
                .chain(levels.iter().copied().filter(|&s| s != severity))
                .map(|s| (s.word().to_string(), with(&|g| g.severity = Some(s))))
                .collect()
        }
    }
}

/// The squared residual of the least-squares fit `x ≈ a·t + b`: exposure and contrast differ
/// between radiographs, so the match is taken up to them.
fn affine_residual(x: &[f32], t: &[f32]) -> f64 {
    let n = x.len() as f64;
    let mean = |v: &[f32]| v.iter().map(|&a| a as f64).sum::<f64>() / n;
    let (mx, mt) = (mean(x), mean(t));
    let (mut sxt, mut stt, mut sxx) = (0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(t) {
        let (dx, dt) = (a as f64 - mx, b as f64 - mt);
        sxt += dx * dt;
        stt += dt * dt;
        sxx += dx * dx;
    }
    if stt == 0.0 {
        return sxx;
    }
    sxx - sxt * sxt / stt
}

impl AttributeJudge {
    /// The mean preprocessed rendering of `findings` over the template anatomies.
    fn template(&self, findings: &[Finding], view: View) -> Vec<f32> {
        let cfg = Preprocess {
            size: self.size,
            channels: 1,
        };
        let mut sum = vec![0f32; (self.size * self.size) as usize];
        for k in 0..self.anatomies {
            let spec = PhantomSpec::with_findings(self.seed, k, view, findings.to_vec());
            let x = preprocess(&spec.render(self.size * 2), &cfg);
            for (s, v) in sum.iter_mut().zip(&x.data) {
                *s += v;
            }
        }
        let n = self.anatomies.max(1) as f32;
        sum.iter().map(|s| s / n).collect()
    }

    /// Judges every certain finding of `findings` that has a side or a severity against `image`
    /// (LLM-CXR-preprocessed values in [-1, 1], `size` x `size`, one channel).
    pub fn judge(&self, image: &[f32], findings: &[Finding], view: View) -> Vec<Verdict> {
        assert_eq!(
            image.len(),
            (self.size * self.size) as usize,
            "the image must be {0} x {0}",
            self.size
        );
        let mut out = Vec::new();
        for (i, f) in findings.iter().enumerate() {
            if !f.certain {
                continue;
            }
            for attribute in [Attribute::Side, Attribute::Severity] {
                let options = alternatives(f, attribute);
                if options.len() < 2 {
                    continue;
                }
                let (judged, _) = options
                    .iter()
                    .map(|(word, variant)| {
                        let mut set = findings.to_vec();
                        set[i] = variant.clone();
                        (
                            word.clone(),
                            affine_residual(image, &self.template(&set, view)),
                        )
                    })
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .expect("two or more options");
                out.push(Verdict {
                    kind: f.kind,
                    attribute,
                    truth: options[0].0.clone(),
                    judged,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(kind: FindingKind, side: Option<Side>, severity: Option<Severity>) -> Finding {
        Finding {
            kind,
            side,
            lobe: None,
            severity,
            certain: true,
        }
    }

    /// Real phantoms (other anatomies than the templates') are judged right, and a mirrored or
    /// milder finding is told apart from the report's.
    #[test]
    fn real_phantoms_are_judged_right() {
        let judge = AttributeJudge::default();
        let cfg = Preprocess {
            size: 64,
            channels: 1,
        };
        let cases = [
            finding(
                FindingKind::PleuralEffusion,
                Some(Side::Left),
                Some(Severity::Severe),
            ),
            finding(
                FindingKind::PleuralEffusion,
                Some(Side::Right),
                Some(Severity::Moderate),
            ),
            finding(
                FindingKind::Pneumothorax,
                Some(Side::Right),
                Some(Severity::Severe),
            ),
            finding(FindingKind::Cardiomegaly, None, Some(Severity::Severe)),
        ];
        for (k, f) in cases.iter().enumerate() {
            let spec = PhantomSpec::with_findings(99, k as u64, View::Pa, vec![f.clone()]);
            let x = preprocess(&spec.render(128), &cfg);
            let verdicts = judge.judge(&x.data, &spec.findings, View::Pa);
            assert!(!verdicts.is_empty());
            for v in &verdicts {
                assert!(v.obeyed(), "{f:?}: {v:?}");
            }
        }
        // The truth is what the report says: judged against the mirrored finding, the image of a
        // left effusion disobeys.
        let left = finding(
            FindingKind::PleuralEffusion,
            Some(Side::Left),
            Some(Severity::Severe),
        );
        let spec = PhantomSpec::with_findings(99, 0, View::Pa, vec![left]);
        let x = preprocess(&spec.render(128), &cfg);
        let claimed = finding(
            FindingKind::PleuralEffusion,
            Some(Side::Right),
            Some(Severity::Severe),
        );
        let verdicts = judge.judge(&x.data, &[claimed], View::Pa);
        let side = verdicts
            .iter()
            .find(|v| v.attribute == Attribute::Side)
            .unwrap();
        assert_eq!(
            (side.truth.as_str(), side.judged.as_str()),
            ("right", "left")
        );
    }

    /// Over sampled phantoms (every kind, hedges, several findings per image, both views) the
    /// judge agrees with the truth in 128 of 143 verdicts (0.895); its misses are mostly adjacent
    /// severities of cardiomegaly and edema, where the patient's own anatomy varies as much as the
    /// finding (16 template anatomies instead of 8 do no better).
    #[test]
    fn judge_agrees_with_sampled_phantoms() {
        use rayon::prelude::*;
        let judge = AttributeJudge::default();
        let cfg = Preprocess {
            size: 64,
            channels: 1,
        };
        let verdicts: Vec<Verdict> = (0..120u64)
            .into_par_iter()
            .flat_map(|i| {
                let spec = PhantomSpec::sample(11, i);
                let x = preprocess(&spec.render(128), &cfg);
                judge.judge(&x.data, &spec.findings, spec.view)
            })
            .collect();
        let obeyed = verdicts.iter().filter(|v| v.obeyed()).count();
        let wrong: Vec<String> = verdicts
            .iter()
            .filter(|v| !v.obeyed())
            .map(|v| format!("{:?} {}: {} as {}", v.kind, v.truth, v.truth, v.judged))
            .collect();
        eprintln!(
            "judge: {obeyed} of {} right; wrong: {wrong:?}",
            verdicts.len()
        );
        assert!(verdicts.len() > 40);
        assert!(obeyed as f64 >= 0.88 * verdicts.len() as f64, "{wrong:?}");
    }

    #[test]
    fn alternatives_follow_the_kind() {
        let lobe = Finding {
            kind: FindingKind::Consolidation,
            side: Some(Side::Right),
            lobe: Some(Lobe::RightMiddle),
            severity: None,
            certain: true,
        };
        let words: Vec<String> = alternatives(&lobe, Attribute::Side)
            .into_iter()
            .map(|(w, _)| w)
            .collect();
        assert_eq!(words, ["right", "left"]);
        assert!(alternatives(&lobe, Attribute::Severity).is_empty());
        let ptx = finding(
            FindingKind::Pneumothorax,
            Some(Side::Left),
            Some(Severity::Mild),
        );
        assert_eq!(alternatives(&ptx, Attribute::Severity).len(), 2);
        let eff = finding(
            FindingKind::PleuralEffusion,
            Some(Side::Bilateral),
            Some(Severity::Mild),
        );
        let words: Vec<String> = alternatives(&eff, Attribute::Side)
            .into_iter()
            .map(|(w, _)| w)
            .collect();
        assert_eq!(words, ["bilateral", "right", "left"]);
    }
}
