//! The VQ-GAN evaluation: how faithful the image tokenizer is. Each image is encoded and
//! decoded; PSNR and SSIM compare the two (grey, in [0, 1]), the codes' histogram gives the
//! codebook usage, and, given the classifier, label agreement counts how often its thresholded
//! (0.5) calls agree between image and reconstruction. [`VqganEvaluation`] is what
//! `vqgan eval` writes.

use std::path::Path;

use cxr_classifier::candle_core::Tensor;
use cxr_classifier::{txv_scale, DenseNet, CHEXPERT_OUTPUTS};
use cxr_train::image_batch::load_image_batch;
use cxr_vqgan::metrics::{codebook_usage, psnr, ssim, CodebookUsage};
use cxr_vqgan::{vqgan_input, VqModel};
use serde::Deserialize;

use crate::evaluations::{pass, read_json, EvalError, OnProgress};

/// The result of the VQ-GAN evaluation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VqganEvaluation {
    pub images: usize,
    /// Mean PSNR; infinite when a reconstruction is perfect (`null` in JSON).
    #[serde(deserialize_with = "f64_or_infinity")]
    pub psnr_db: f64,
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub ssim: f64,
    pub codebook: CodebookUsage,
    /// Fraction of (image, observation) pairs over the 11 classifier observations whose
    /// thresholded (0.5) labels agree between image and reconstruction.
    pub label_agreement: Option<f64>,
}

/// JSON has no infinity: serde_json writes it as `null`.
fn f64_or_infinity<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
}

impl VqganEvaluation {
    /// Encodes and decodes every image in batches of `batch`: the pass `progress` hears of.
    pub fn compute<P: AsRef<Path> + Sync>(
        model: &VqModel,
        classifier: Option<&DenseNet>,
        paths: &[P],
        batch: usize,
        progress: OnProgress,
    ) -> Result<Self, EvalError> {
        if paths.is_empty() {
            return Err(EvalError::NoImages);
        }
        let config = model.config();
        let mut sums = Sums::default();
        pass(progress, "eval", paths.len(), |on_batch| {
            for chunk in paths.chunks(batch.max(1)) {
                let x = load_image_batch(chunk, |img| vqgan_input(img, config, model.device()))?;
                sums.add(model, classifier, &x)
                    .map_err(|source| EvalError::Vqgan {
                        first: chunk[0].as_ref().to_path_buf(),
                        source: Box::new(source),
                    })?;
                on_batch(chunk.len());
            }
            Ok::<(), EvalError>(())
        })?;
        let n = paths.len() as f64;
        Ok(Self {
            images: paths.len(),
            psnr_db: sums.psnr / n,
            ssim: sums.ssim / n,
            codebook: codebook_usage(sums.codes, config.n_embed),
            label_agreement: classifier.map(|_| sums.agree as f64 / sums.pairs.max(1) as f64),
        })
    }

    /// A result as `vqgan eval --out` wrote it.
    pub fn read(path: &Path) -> Result<Self, EvalError> {
        read_json(path)
    }
}

/// The running sums of a round trip over batches.
#[derive(Default)]
struct Sums {
    psnr: f64,
    ssim: f64,
    codes: Vec<u16>,
    /// Observations on which the classifier's call (p >= 0.5) agrees, of `pairs`.
    agree: usize,
    pairs: usize,
}

impl Sums {
    /// Encodes and decodes the batch `x` and adds its scores.
    fn add(
        &mut self,
        model: &VqModel,
        classifier: Option<&DenseNet>,
        x: &Tensor,
    ) -> cxr_classifier::candle_core::Result<()> {
        type Rows = cxr_classifier::candle_core::Result<Vec<Vec<f32>>>;
        let side = model.config().resolution;
        let idx = model.encode(x)?;
        let rec = model.decode(&idx)?;
        self.codes.extend(
            idx.flatten_all()?
                .to_vec1::<u32>()?
                .into_iter()
                .map(|c| c as u16),
        );
        let to01 = |t: &Tensor| -> Rows {
            ((t.mean(1)? + 1.0)? * 0.5)?
                .flatten_from(1)?
                .to_vec2::<f32>()
        };
        for (p, q) in to01(x)?.iter().zip(to01(&rec)?) {
            self.psnr += psnr(p, &q);
            self.ssim += ssim(p, &q, side, side);
        }
        if let Some(cls) = classifier {
            let probs = |t: &Tensor| -> Rows {
                let logits = cls.forward_t(&txv_scale(t)?, false)?;
                cxr_classifier::candle_nn::ops::sigmoid(&logits)?.to_vec2::<f32>()
            };
            for (p, q) in probs(x)?.iter().zip(probs(&rec)?) {
                for (_, k) in CHEXPERT_OUTPUTS {
                    self.agree += ((p[k] >= 0.5) == (q[k] >= 0.5)) as usize;
                    self.pairs += 1;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_perfect_reconstruction_reads_back_from_json() {
        let e = VqganEvaluation {
            images: 3,
            psnr_db: f64::INFINITY,
            ssim: 1.0,
            codebook: CodebookUsage {
                used: 2,
                n_embed: 16,
                perplexity: 1.5,
            },
            label_agreement: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vqgan-eval.json");
        std::fs::write(&path, serde_json::to_string_pretty(&e).unwrap()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"psnr_db\": null"), "{text}");
        assert_eq!(VqganEvaluation::read(&path).unwrap(), e);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["codebook"]["used"], 2);
    }
}
