//! The evaluations' results as data: each evaluation computes a typed result (scores, and the
//! cases its sample table shows), which is exactly what its JSON file holds. Anything renders
//! from a result, and a folder's results are read back with [`Evaluations::read`], so that a page
//! is drawn without evaluating again.

use std::path::{Path, PathBuf};

use crate::csv_columns::CsvError;
use crate::features::FeatureError;
use crate::image_eval::ImageEvaluation;
use crate::report_eval::ReportEvaluation;
use crate::vqa_eval::VqaEvaluation;

/// File names of the results in an evaluation's output folder.
pub const REPORT_METRICS_JSON: &str = "report-metrics.json";
pub const IMAGE_METRICS_JSON: &str = "image-metrics.json";
pub const VQA_METRICS_JSON: &str = "vqa-metrics.json";

/// Why an evaluation failed, or its result could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Csv(#[from] CsvError),
    #[error(transparent)]
    Features(#[from] FeatureError),
    #[error(transparent)]
    Images(#[from] cxr_train::image_batch::ImageBatchError),
    #[error("FID needs at least two images on each side ({generated} generated, {real} real)")]
    FidTooFew { generated: usize, real: usize },
    #[error("running the VQ-GAN on the batch that starts with {first}")]
    Vqgan {
        first: PathBuf,
        #[source]
        source: Box<cxr_classifier::candle_core::Error>,
    },
    #[error("the VQ-GAN evaluation got no images")]
    NoImages,
    #[error("{path}: cannot read")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an evaluation result of this version")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// What a long evaluation reports as it goes, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress<'a> {
    /// A pass over `total` items begins; `phase` names it.
    Start { phase: &'a str, total: usize },
    /// That many more items are done.
    Advance(usize),
    /// The pass is over.
    Finish,
}

/// Where an evaluation sends its [`Progress`] (from several threads at once).
pub type OnProgress<'a> = &'a (dyn Fn(Progress<'_>) + Sync);

/// One pass of `total` items named `phase`: `work` gets a callback for each batch done.
pub(crate) fn pass<T>(
    progress: OnProgress,
    phase: &str,
    total: usize,
    work: impl FnOnce(&dyn Fn(usize)) -> T,
) -> T {
    progress(Progress::Start { phase, total });
    let out = work(&|n| progress(Progress::Advance(n)));
    progress(Progress::Finish);
    out
}

/// What a result keeps for showing it: the model's row name in the tables, and how many cases
/// (the first ones) its sample table holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presentation {
    pub model: String,
    pub samples: usize,
}

/// The results found in one output folder.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evaluations {
    pub report: Option<ReportEvaluation>,
    pub image: Option<ImageEvaluation>,
    pub vqa: Option<VqaEvaluation>,
}

impl Evaluations {
    /// Reads whichever of the three results `dir` holds.
    pub fn read(dir: &Path) -> Result<Self, EvalError> {
        Ok(Self {
            report: read_if_present(&dir.join(REPORT_METRICS_JSON))?,
            image: read_if_present(&dir.join(IMAGE_METRICS_JSON))?,
            vqa: read_if_present(&dir.join(VQA_METRICS_JSON))?,
        })
    }
}

/// A result from its JSON file.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, EvalError> {
    let bytes = std::fs::read(path).map_err(|source| EvalError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| EvalError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

fn read_if_present<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, EvalError> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}
