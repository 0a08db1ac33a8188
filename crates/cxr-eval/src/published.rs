//! LLM-CXR's published numbers (Lee et al., "LLM-CXR: Instruction-Finetuned LLM for CXR Image
//! Understanding and Generation", ICLR 2024), in one place: every table and note that prints
//! them beside ours reads them from here.

/// Table 1, the CheXpert labels of generated reports: AUROC, then F1, one value per observation
/// in [`crate::report_metrics::TABLE1`]'s order, then the micro, macro and weighted means.
pub const REPORT_CLINICAL: ([f64; 17], [f64; 17]) = (
    [
        0.558, 0.517, 0.496, 0.619, 0.641, 0.509, 0.577, 0.506, 0.494, 0.537, 0.505, 0.677, 0.498,
        0.640, 0.628, 0.555, 0.597,
    ],
    [
        0.272, 0.081, 0.013, 0.382, 0.464, 0.084, 0.327, 0.036, 0.000, 0.278, 0.035, 0.535, 0.000,
        0.453, 0.360, 0.211, 0.350,
    ],
);

/// Jaccard index of the four label values of generated and reference reports, micro mean.
pub const REPORT_JACCARD_MICRO: f64 = 0.609;

/// The natural-language scores of generated reports the paper gives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublishedNlg {
    pub bleu_1: f64,
    pub bleu_4: f64,
    pub meteor: f64,
    pub rouge_l: f64,
    pub cider: f64,
}

/// LLM-CXR's report-generation scores.
pub const REPORT_NLG: PublishedNlg = PublishedNlg {
    bleu_1: 0.092,
    bleu_4: 0.015,
    meteor: 0.069,
    rouge_l: 0.162,
    cider: 0.525,
};

/// Table 4, the classifier on generated images against their source reports' labels: AUROC,
/// then F1, one value per observation in [`cxr_classifier::CHEXPERT_OUTPUTS`]' order, then the
/// micro, macro and weighted means.
pub const IMAGE_CLINICAL: ([f64; 14], [f64; 14]) = (
    [
        0.8054, 0.8263, 0.7540, 0.8111, 0.8155, 0.7722, 0.7846, 0.7852, 0.7596, 0.8311, 0.8335,
        0.7907, 0.7980, 0.7991,
    ],
    [
        0.8777, 0.8283, 0.7024, 0.8061, 0.8183, 0.7529, 0.8372, 0.7678, 0.7753, 0.8342, 0.8274,
        0.8065, 0.8025, 0.8054,
    ],
);

/// FID of generated images on torchxrayvision's DenseNet features.
pub const FID_TXV_FEATURES: f64 = 0.714;
