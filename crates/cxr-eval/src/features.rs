//! What the image evaluations read off images, in batches through the one image-batch loader:
//! the DenseNet-121 classifier's 18 probabilities and 1024-d `features2` (torchxrayvision's
//! input), and pytorch-fid's Inception-v3 pool3 features, each in the order of the paths given.

use cxr_classifier::candle_core::Tensor;
use cxr_classifier::inception::{inception_input, InceptionV3};
use cxr_classifier::{txv_input, DenseNet};
use cxr_train::image_batch::{load_image_batch, ImageBatchError};

/// Why features could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error(transparent)]
    Images(#[from] ImageBatchError),
    #[error("running the {network} on the batch that starts with {first}")]
    Network {
        network: &'static str,
        first: String,
        #[source]
        source: Box<cxr_classifier::candle_core::Error>,
    },
}

/// The classifier's view of a set of images, one entry per image in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Classified {
    /// Sigmoid of the 18 outputs, in torchxrayvision's order.
    pub probabilities: Vec<[f32; 18]>,
    /// `features2`, 1024-d.
    pub features: Vec<Vec<f32>>,
}

/// The input side of the classifier, as torchxrayvision takes it.
const TXV_SIDE: u32 = 224;

/// Feeds every image to `run` in batches of `batch` (loaded in parallel, turned into a network
/// input by `input`), in order; `on_batch` hears how many images each batch held.
fn over_images(
    paths: &[String],
    batch: usize,
    network: &'static str,
    input: &(dyn Fn(&cxr_image::GrayImage) -> cxr_classifier::candle_core::Result<Tensor> + Sync),
    on_batch: &dyn Fn(usize),
    mut run: impl FnMut(&Tensor) -> cxr_classifier::candle_core::Result<()>,
) -> Result<(), FeatureError> {
    for chunk in paths.chunks(batch.max(1)) {
        let x = load_image_batch(chunk, input)?;
        run(&x).map_err(|source| FeatureError::Network {
            network,
            first: chunk[0].clone(),
            source: Box::new(source),
        })?;
        on_batch(chunk.len());
    }
    Ok(())
}

/// The classifier's probabilities and `features2` of every image.
pub fn classify_images(
    model: &DenseNet,
    paths: &[String],
    batch: usize,
    on_batch: &dyn Fn(usize),
) -> Result<Classified, FeatureError> {
    let mut out = Classified::default();
    let input = |img: &cxr_image::GrayImage| txv_input(img, TXV_SIDE, model.device());
    over_images(paths, batch, "classifier", &input, on_batch, |x| {
        let f = model.features2(x, false)?;
        let p = cxr_classifier::candle_nn::ops::sigmoid(&model.classify(&f)?)?;
        for row in p.to_vec2::<f32>()? {
            let mut a = [0f32; 18];
            a.copy_from_slice(&row[..18]);
            out.probabilities.push(a);
        }
        out.features.extend(f.to_vec2::<f32>()?);
        Ok(())
    })?;
    Ok(out)
}

/// pytorch-fid's 2048-d pool3 features of every image.
pub fn inception_features(
    net: &InceptionV3,
    paths: &[String],
    batch: usize,
    on_batch: &dyn Fn(usize),
) -> Result<Vec<Vec<f32>>, FeatureError> {
    let mut feats = Vec::new();
    let input = |img: &cxr_image::GrayImage| inception_input(img, net.device());
    over_images(paths, batch, "Inception-v3", &input, on_batch, |x| {
        feats.extend(net.features(x)?.to_vec2::<f32>()?);
        Ok(())
    })?;
    Ok(feats)
}
