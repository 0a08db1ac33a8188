//! The one image-batch loader: every model that reads CXRs in batches (the classifier, the
//! VQ-GAN, Inception, the evaluations) loads its files here, in parallel, each turned into a
//! (1, C, H, W) tensor by that model's own preprocessing, and gets them back concatenated in the
//! order given.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use rayon::prelude::*;

/// Why a batch could not be loaded; every per-image variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageBatchError {
    /// The file could not be read or decoded (the error names it).
    #[error(transparent)]
    Image(#[from] cxr_image::ImageError),
    #[error("{path}: cannot turn the image into a model input")]
    Input {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
    #[error("cannot stack a batch of {images} images")]
    Stack {
        images: usize,
        #[source]
        source: candle_core::Error,
    },
}

/// Loads `paths` in parallel, turns each image into a tensor with `input`, and concatenates
/// them along the first axis, in order.
pub fn load_image_batch<P: AsRef<Path> + Sync>(
    paths: &[P],
    input: impl Fn(&cxr_image::GrayImage) -> candle_core::Result<Tensor> + Sync,
) -> Result<Tensor, ImageBatchError> {
    let xs = paths
        .par_iter()
        .map(|p| {
            let path = p.as_ref();
            let img = cxr_image::load_image(path)?;
            input(&img).map_err(|source| ImageBatchError::Input {
                path: path.to_path_buf(),
                source,
            })
        })
        .collect::<Result<Vec<Tensor>, ImageBatchError>>()?;
    Tensor::cat(&xs, 0).map_err(|source| ImageBatchError::Stack {
        images: xs.len(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `side` x `side` grey PNG whose pixels all hold `value`.
    fn png(dir: &Path, name: &str, side: u32, value: u8) -> PathBuf {
        let path = dir.join(name);
        let mut bytes = Vec::new();
        let img = image::GrayImage::from_pixel(side, side, image::Luma([value]));
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn images_are_stacked_in_the_order_given() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..5u8)
            .map(|i| png(dir.path(), &format!("{i}.png"), 4, i * 50))
            .collect();
        // One value per image: its mean pixel, so the order shows in the batch.
        let x = load_image_batch(&paths, |img| {
            let mean = img.pixels.iter().sum::<f32>() / img.pixels.len() as f32;
            Tensor::new(&[[mean]], &candle_core::Device::Cpu)
        })
        .unwrap();
        assert_eq!(x.dims(), &[5, 1]);
        let means: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let mut sorted = means.clone();
        sorted.sort_by(f32::total_cmp);
        assert_eq!(means, sorted, "{means:?}");
        assert!(means[0] < means[4]);
    }

    #[test]
    fn a_broken_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = png(dir.path(), "good.png", 4, 10);
        let bad = dir.path().join("broken.png");
        std::fs::write(&bad, b"not an image").unwrap();
        let err = load_image_batch(&[good, bad], |_| {
            Tensor::new(&[[0f32]], &candle_core::Device::Cpu)
        })
        .unwrap_err();
        assert!(err.to_string().contains("broken.png"), "{err}");
    }
}
