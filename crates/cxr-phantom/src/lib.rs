//! Synthetic frontal chest radiographs with reports and ground truth, deterministic from a seed.
//!
//! A phantom is sampled in two steps: [`PhantomSpec::sample`] draws the anatomy, view and
//! findings and writes the report (cheap), then [`PhantomSpec::render`] rasterises the
//! radiograph at any size (the cost). Both depend only on `(seed, index)`, so a dataset can be
//! generated in parallel, resumed after a kill, and regenerated bit for bit.
//!
//! The phantom is the embedded default dataset of llm-cxr: every later stage (VQ-GAN, language
//! model, evaluation, serving) trains and measures on it offline before a user brings MIMIC-CXR.

pub mod findings;
pub mod gallery;
pub mod judge;
mod render;
mod report;
pub mod tree;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use cxr_data::{ChexpertLabels, ReportSections};
use cxr_image::GrayImage;

pub use findings::{Finding, FindingKind, Lobe, Severity, Side};
pub use render::Anatomy;
pub use tree::{write_tree, TreeOptions, TreeSummary};

/// Projection of a frontal radiograph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum View {
    /// Posteroanterior: standing, full inspiration, scapulae clear of the lungs.
    Pa,
    /// Anteroposterior (portable): magnified heart, shallower inspiration, scapulae over the lungs.
    Ap,
}

impl View {
    /// DICOM ViewPosition spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            View::Pa => "PA",
            View::Ap => "AP",
        }
    }
}

/// Everything about one phantom except its pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct PhantomSpec {
    pub seed: u64,
    pub index: u64,
    pub view: View,
    pub anatomy: Anatomy,
    pub findings: Vec<Finding>,
    /// The whole report text, MIMIC style (header, FINDINGS:, IMPRESSION:).
    pub report: String,
    pub sections: ReportSections,
    pub labels: ChexpertLabels,
}

/// A stream for (seed, index, purpose): independent of generation order and thread count.
pub(crate) fn rng_for(seed: u64, index: u64, purpose: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index.wrapping_mul(4).wrapping_add(purpose));
    rng
}

impl PhantomSpec {
    /// Samples phantom number `index` of the dataset with this `seed`.
    pub fn sample(seed: u64, index: u64) -> Self {
        let mut rng = rng_for(seed, index, 0);
        let findings = findings::sample_findings(&mut rng);
        let has_device = findings.iter().any(|f| f.kind.is_device());
        let view = if rng.random_bool(if has_device { 0.85 } else { 0.3 }) {
            View::Ap
        } else {
            View::Pa
        };
        Self::with_findings(seed, index, view, findings)
    }

    /// Phantom `index` with the given view and findings. Its anatomy, acquisition and noise do
    /// not depend on the findings, so the same `(seed, index)` with other findings is its twin.
    pub fn with_findings(seed: u64, index: u64, view: View, findings: Vec<Finding>) -> Self {
        let anatomy = Anatomy::sample(&mut rng_for(seed, index, 2), view, &findings);
        let (report, sections, labels) = report::write_report(
            &mut rng_for(seed, index, 3),
            &findings,
            view,
            anatomy.lesion_mm(),
            anatomy.fracture_rib,
        );
        Self {
            seed,
            index,
            view,
            anatomy,
            findings,
            report,
            sections,
            labels,
        }
    }

    /// Rasterises the radiograph at `size` x `size` pixels.
    pub fn render(&self, size: u32) -> GrayImage {
        let mut rng = rng_for(self.seed, self.index, 1);
        render::render(&self.anatomy, &self.findings, self.view, size, &mut rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_phantom_other_seed_other_phantom() {
        let a = PhantomSpec::sample(7, 3);
        let b = PhantomSpec::sample(7, 3);
        assert_eq!(a, b);
        assert_eq!(a.render(64), b.render(64));
        let c = PhantomSpec::sample(8, 3);
        assert_ne!(a.render(64), c.render(64));
        assert_ne!(a.render(64), PhantomSpec::sample(7, 4).render(64));
    }
}
