//! Clinical fidelity of generated images: the CXR classifier's probabilities for each generated
//! image are compared with the CheXpert labels of the report it was drawn from, over the 11
//! observations the classifier and CheXpert share, in the layout of the LLM-CXR paper's Table 4;
//! and the Frechet distance between classifier features (1024-d `features2`) of generated and real
//! images (FID, computed as pytorch-fid does).
//!
//! The paper states neither thresholds nor the ground-truth rule. Ours: AUROC from the continuous
//! probabilities; F1 with a probability threshold of 0.5 (torchxrayvision's calibrated operating
//! point, `op_threshs` normalised to 0.5); report labels binarised with [`UncertainPolicy`]
//! (default: uncertain counts as negative), blank counts as negative.

use cxr_classifier::CHEXPERT_OUTPUTS;
use cxr_data::ChexpertLabels;
use nalgebra::{DMatrix, DVector, SymmetricEigen};

use crate::published;
use crate::report_metrics::{
    binarise, binary_table, markdown_table, Averages, Column, ObservationScores, UncertainPolicy,
};

/// Table 4's column abbreviations, in the order of `cxr_classifier::CHEXPERT_OUTPUTS`.
pub const TABLE4_ABBREVIATIONS: [&str; 11] = [
    "Atel.", "Cnsl.", "Pmtx.", "Edema", "Eff.", "Pna.", "Cmgl.", "Les.", "Frac.", "Opac.", "ECm.",
];

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageTable {
    pub images: usize,
    pub threshold: f64,
    pub uncertain: UncertainPolicy,
    pub per_observation: Vec<ObservationScores>,
    pub auroc: Averages,
    pub f1: Averages,
}

/// Scores classifier probabilities (`probabilities[i][k]` for torchxrayvision output k) of each
/// generated image against the labels of its source report.
pub fn image_metrics(
    probabilities: &[[f32; 18]],
    source_labels: &[ChexpertLabels],
    threshold: f64,
    uncertain: UncertainPolicy,
) -> ImageTable {
    assert_eq!(
        probabilities.len(),
        source_labels.len(),
        "one source report per image"
    );
    let columns = CHEXPERT_OUTPUTS
        .iter()
        .map(|&(o, k)| {
            let mut c = Column::new(o);
            for (p, l) in probabilities.iter().zip(source_labels) {
                let Some(truth) = binarise(l.get(o), uncertain) else {
                    continue;
                };
                c.scores.push(p[k] as f64);
                c.calls.push(p[k] as f64 >= threshold);
                c.truths.push(truth);
            }
            c
        })
        .collect();
    let (per_observation, auroc, f1) = binary_table(columns);
    ImageTable {
        images: probabilities.len(),
        threshold,
        uncertain,
        per_observation,
        auroc,
        f1,
    }
}

impl ImageTable {
    /// The table in the paper's layout, with LLM-CXR's published row beneath ours.
    pub fn to_markdown(&self, model: &str) -> String {
        let mut out = markdown_table(
            &TABLE4_ABBREVIATIONS,
            &self.per_observation,
            self.auroc,
            self.f1,
            (&published::IMAGE_CLINICAL.0, &published::IMAGE_CLINICAL.1),
            model,
            4,
        );
        out += &format!(
            "{} images; F1 at probability >= {}; uncertain report labels counted as {:?}.\n",
            self.images, self.threshold, self.uncertain
        );
        out
    }
}

/// Mean and centred data matrix (rows = samples) of row vectors.
fn centred(rows: &[Vec<f32>]) -> (DVector<f64>, DMatrix<f64>) {
    let n = rows.len();
    let d = rows.first().map_or(0, Vec::len);
    let x = DMatrix::from_fn(n, d, |i, j| rows[i][j] as f64);
    let mean = DVector::from_fn(d, |j, _| x.column(j).mean());
    let c = DMatrix::from_fn(n, d, |i, j| x[(i, j)] - mean[j]);
    (mean, c)
}

/// The Frechet distance between two sets of feature vectors (FID on whatever features they are):
/// |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), with S the (N - 1)-normalised
/// covariances, as pytorch-fid defines it.
///
/// With centred data A and B, S1 S2 = A'A B'B / c whose non-zero eigenvalues are the squared
/// singular values of A B' / sqrt(c): so tr((S1 S2)^(1/2)) is the nuclear norm of that n1 x n2
/// matrix. When there are fewer images than feature dimensions (the usual case with 1024-d
/// features) this is computed exactly and cheaply in sample space; otherwise through the
/// symmetric d x d matrix S1^(1/2) S2 S1^(1/2), which has the same eigenvalues.
pub fn frechet_distance(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let (mu1, xa) = centred(a);
    let (mu2, xb) = centred(b);
    let (n1, n2, d) = (xa.nrows(), xb.nrows(), xa.ncols());
    let (c1, c2) = ((n1.max(2) - 1) as f64, (n2.max(2) - 1) as f64);
    let diff = &mu1 - &mu2;
    let (tr1, tr2) = (xa.norm_squared() / c1, xb.norm_squared() / c2);
    let tr_covmean = if n1 * n2 <= d * d {
        let cross = &xa * xb.transpose() / (c1 * c2).sqrt();
        cross.singular_values().sum()
    } else {
        let s1 = xa.transpose() * &xa / c1;
        let s2 = xb.transpose() * &xb / c2;
        let eig = SymmetricEigen::new(s1);
        let root = &eig.eigenvectors
            * DMatrix::from_diagonal(&eig.eigenvalues.map(|l| l.max(0.0).sqrt()))
            * eig.eigenvectors.transpose();
        let m = &root * s2 * &root;
        let m = (&m + m.transpose()) * 0.5;
        SymmetricEigen::new(m)
            .eigenvalues
            .iter()
            .map(|l| l.max(0.0).sqrt())
            .sum()
    };
    diff.dot(&diff) + tr1 + tr2 - 2.0 * tr_covmean
}

#[cfg(test)]
mod tests {
    use super::*;
    use cxr_data::{Label, Observation};

    #[test]
    fn frechet_distance_of_shifted_gaussians() {
        // Identical spread, mean shifted by (3, 4): the distance is 25.
        let a: Vec<Vec<f32>> = (0..400)
            .map(|i| vec![(i % 20) as f32, (i / 20) as f32])
            .collect();
        let b: Vec<Vec<f32>> = a.iter().map(|v| vec![v[0] + 3.0, v[1] + 4.0]).collect();
        assert!((frechet_distance(&a, &b) - 25.0).abs() < 1e-9);
        assert!(frechet_distance(&a, &a).abs() < 1e-9);
    }

    #[test]
    fn few_images_in_many_dimensions() {
        // 6 images, 1024-d, large values: the sample-space path keeps FID(a, a) at zero.
        let mut s = 1u64;
        let mut r = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 100.0
        };
        let a: Vec<Vec<f32>> = (0..6).map(|_| (0..1024).map(|_| r()).collect()).collect();
        let b: Vec<Vec<f32>> = (0..6).map(|_| (0..1024).map(|_| r()).collect()).collect();
        assert!(
            frechet_distance(&a, &a).abs() < 1e-6,
            "{}",
            frechet_distance(&a, &a)
        );
        // Both paths agree where both apply (2-d features, 3 samples: 9 > 4 uses the d-space path).
        let small_a: Vec<Vec<f32>> = a.iter().take(3).map(|v| v[..2].to_vec()).collect();
        let small_b: Vec<Vec<f32>> = b.iter().take(3).map(|v| v[..2].to_vec()).collect();
        let d_space = frechet_distance(&small_a, &small_b);
        let wide_a: Vec<Vec<f32>> = small_a
            .iter()
            .map(|v| [v.clone(), vec![0.0; 2]].concat())
            .collect();
        let wide_b: Vec<Vec<f32>> = small_b
            .iter()
            .map(|v| [v.clone(), vec![0.0; 2]].concat())
            .collect();
        let sample_space = frechet_distance(&wide_a, &wide_b); // 9 <= 16: sample-space path
        assert!(
            (d_space - sample_space).abs() < 1e-6 * d_space.abs().max(1.0),
            "{d_space} vs {sample_space}"
        );
    }

    #[test]
    fn perfect_probabilities_score_one() {
        let mut labels = Vec::new();
        let mut probs = Vec::new();
        for i in 0..20 {
            let mut l = ChexpertLabels::default();
            let mut p = [0.1f32; 18];
            if i % 2 == 0 {
                l.set(Observation::Edema, Some(Label::Positive));
                p[4] = 0.9;
            }
            labels.push(l);
            probs.push(p);
        }
        let t = image_metrics(&probs, &labels, 0.5, UncertainPolicy::Negative);
        let edema = t
            .per_observation
            .iter()
            .find(|s| s.observation == "Edema")
            .unwrap();
        assert_eq!((edema.auroc, edema.f1), (Some(1.0), 1.0));
        assert_eq!(t.f1.micro, 1.0);
        assert!(t.to_markdown("x").contains("LLM-CXR (published)"));
    }
}
