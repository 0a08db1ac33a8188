//! The image evaluation: generated images against the reports they were drawn from. The
//! classifier's probabilities are scored against the reports' CheXpert labels (the paper's
//! Table 4, [`crate::image_metrics`]), and FID compares generated with real images on the
//! classifier's features and, given Inception-v3, on pytorch-fid's. [`ImageEvaluation`] is what
//! `image-metrics.json` holds.

use std::path::Path;

use cxr_classifier::inception::InceptionV3;
use cxr_classifier::DenseNet;
use cxr_data::ChexpertLabels;
use rayon::prelude::*;

use crate::csv_columns::read_required;
use crate::evaluations::{pass, EvalError, OnProgress, Presentation};
use crate::features::{classify_images, inception_features};
use crate::image_metrics::{frechet_distance, image_metrics, ImageTable};
use crate::published;
use crate::report_metrics::UncertainPolicy;
use crate::ReportLabeler;

/// The result of the image evaluation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageEvaluation {
    /// The classifier against the source reports' labels (`/clinical/auroc/micro`, ...).
    pub clinical: ImageTable,
    /// FID on the classifier's 1024-d features, with real images.
    pub fid_classifier_features: Option<f64>,
    /// FID on Inception-v3 pool3 features, with real images and Inception.
    pub fid_inception: Option<f64>,
    /// The model's row name in the tables.
    #[serde(default)]
    pub model: String,
    /// The first images, for the sample-case table.
    #[serde(default)]
    pub cases: Vec<ImageCase>,
}

/// One generated image, the report it was drawn from, that report's labels and what the
/// classifier sees in the image.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageCase {
    pub image: String,
    pub report: String,
    pub labels: ChexpertLabels,
    /// The classifier's 18 probabilities, in torchxrayvision's order.
    pub probabilities: [f32; 18],
}

/// A generated image (its path) and the report it was drawn from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedImage {
    pub image: String,
    pub report: String,
}

/// The networks the image evaluation runs.
#[derive(Clone, Copy)]
pub struct ImageModels<'a> {
    pub classifier: &'a DenseNet,
    /// For FID on pool3 features as well (with real images).
    pub inception: Option<&'a InceptionV3>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageEvalOptions {
    /// Probability at or above which the classifier calls a finding (F1).
    pub threshold: f64,
    /// Images per network batch.
    pub batch: usize,
    /// How the reports' uncertain labels count.
    pub uncertain: UncertainPolicy,
}

impl ImageEvaluation {
    /// Scores the images of a CSV with `image` and `report` columns; with a CSV of real images
    /// (an `image` column), FID too.
    pub fn from_csv(
        generated_csv: &Path,
        real_csv: Option<&Path>,
        labeler: &ReportLabeler,
        models: ImageModels,
        opts: ImageEvalOptions,
        shown: &Presentation,
        progress: OnProgress,
    ) -> Result<Self, EvalError> {
        let generated: Vec<GeneratedImage> = read_required(generated_csv, &["image", "report"])?
            .into_iter()
            .map(|mut r| GeneratedImage {
                image: std::mem::take(&mut r[0]),
                report: std::mem::take(&mut r[1]),
            })
            .collect();
        let real: Option<Vec<String>> = real_csv
            .map(|p| read_required(p, &["image"]))
            .transpose()?
            .map(|rows| {
                rows.into_iter()
                    .map(|mut r| std::mem::take(&mut r[0]))
                    .collect()
            });
        Self::compute(
            &generated,
            real.as_deref(),
            labeler,
            models,
            opts,
            shown,
            progress,
        )
    }

    /// Scores generated images; `real` image paths add FID. Each network pass over a set of
    /// images is a pass `progress` hears of.
    pub fn compute(
        generated: &[GeneratedImage],
        real: Option<&[String]>,
        labeler: &ReportLabeler,
        models: ImageModels,
        opts: ImageEvalOptions,
        shown: &Presentation,
        progress: OnProgress,
    ) -> Result<Self, EvalError> {
        let paths: Vec<String> = generated.iter().map(|g| g.image.clone()).collect();
        let labels: Vec<ChexpertLabels> = generated
            .par_iter()
            .map(|g| labeler.label(&g.report))
            .collect();
        let classify = |paths: &[String], phase: &str| {
            pass(progress, phase, paths.len(), |on_batch| {
                classify_images(models.classifier, paths, opts.batch, on_batch)
            })
        };
        let ours = classify(&paths, "generated")?;
        let clinical = image_metrics(&ours.probabilities, &labels, opts.threshold, opts.uncertain);
        let fid_classifier_features = match real {
            Some(real) => {
                let theirs = classify(real, "real")?;
                if ours.features.len() < 2 || theirs.features.len() < 2 {
                    return Err(EvalError::FidTooFew {
                        generated: ours.features.len(),
                        real: theirs.features.len(),
                    });
                }
                Some(frechet_distance(&ours.features, &theirs.features))
            }
            None => None,
        };
        let fid_inception = match (models.inception, real) {
            (Some(net), Some(real)) => {
                let features = |paths: &[String], phase: &str| {
                    pass(progress, phase, paths.len(), |on_batch| {
                        inception_features(net, paths, opts.batch, on_batch)
                    })
                };
                let generated = features(&paths, "inception gen")?;
                let real = features(real, "inception real")?;
                Some(frechet_distance(&generated, &real))
            }
            _ => None,
        };
        let cases = generated
            .iter()
            .zip(labels)
            .zip(ours.probabilities)
            .take(shown.samples)
            .map(|((g, labels), probabilities)| ImageCase {
                image: g.image.clone(),
                report: g.report.clone(),
                labels,
                probabilities,
            })
            .collect();
        Ok(Self {
            clinical,
            fid_classifier_features,
            fid_inception,
            model: shown.model.clone(),
            cases,
        })
    }

    /// The table (ours above LLM-CXR's published numbers) and the FIDs, as `image-metrics.md`
    /// holds them.
    pub fn to_markdown(&self) -> String {
        let mut md = format!(
            "## Image evaluation: {}\n\n{}",
            self.model,
            self.clinical.to_markdown(&self.model)
        );
        if let Some(f) = self.fid_classifier_features {
            md += &format!(
                "\nFID on the classifier's 1024-d features: {f:.4} (LLM-CXR published, torchxrayvision features: {:.3}).\n",
                published::FID_TXV_FEATURES
            );
        }
        if let Some(f) = self.fid_inception {
            md += &format!("\nFID on Inception-v3 pool3 features (pytorch-fid): {f:.4}.\n");
        }
        md
    }
}
