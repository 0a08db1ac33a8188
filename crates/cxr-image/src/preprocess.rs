//! LLM-CXR's image preprocessing (`encode_cxr_all.py`, brief section 2): resize the short side to N
//! with Lanczos, center-crop N x N, scale [0, 1] to [-1, 1]. No histogram equalisation.
//!
//! Sizes and offsets follow torchvision exactly: the long side becomes `floor(N * long / short)`
//! (`Resize(int)`), and the crop starts at `round((side - N) / 2)` with Python's round-half-to-even
//! (`CenterCrop`). The resampling is the image crate's Lanczos3 which, like PIL's, widens the kernel
//! by the downscale factor; we resample in f32 instead of PIL's 8-bit, so 16-bit DICOMs keep their
//! precision.

use crate::GrayImage;

/// How to turn a decoded CXR into model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preprocess {
    /// Output side N (the paper: 256).
    pub size: u32,
    /// 1 (gray) or 3 (gray replicated, as LLM-CXR's `convert("RGB")`).
    pub channels: u8,
}

impl Default for Preprocess {
    fn default() -> Self {
        Self {
            size: 256,
            channels: 3,
        }
    }
}

/// A preprocessed image: `channels x size x size`, channel-major, values in [-1, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessedImage {
    pub channels: u8,
    pub size: u32,
    pub data: Vec<f32>,
}

impl PreprocessedImage {
    /// Mean and standard deviation of all values.
    pub fn mean_std(&self) -> (f64, f64) {
        crate::mean_std(&self.data)
    }
}

/// Applies LLM-CXR's preprocessing. Panics only on a zero `size` or a channel count other than
/// 1 or 3, which are programming errors, not user input.
pub fn preprocess(img: &GrayImage, cfg: &Preprocess) -> PreprocessedImage {
    assert!(cfg.size > 0, "preprocess size must be positive");
    assert!(
        cfg.channels == 1 || cfg.channels == 3,
        "preprocess channels must be 1 or 3"
    );
    let n = cfg.size;
    let (w, h) = (img.width, img.height);
    let (rw, rh) = if w <= h {
        (n, ((n as u64 * h as u64) / w as u64) as u32)
    } else {
        (((n as u64 * w as u64) / h as u64) as u32, n)
    };
    let buffer = image::ImageBuffer::<image::Luma<f32>, _>::from_raw(w, h, img.pixels.clone())
        .expect("GrayImage keeps pixels.len() == width * height");
    let resized = if (rw, rh) == (w, h) {
        buffer
    } else {
        image::imageops::resize(&buffer, rw, rh, image::imageops::FilterType::Lanczos3)
    };
    let left = round_half_even((rw - n) as f64 / 2.0);
    let top = round_half_even((rh - n) as f64 / 2.0);
    let mut plane = Vec::with_capacity((n * n) as usize);
    for y in top..top + n {
        let row = &resized.as_raw()[(y * rw) as usize..((y + 1) * rw) as usize];
        plane.extend(
            row[left as usize..(left + n) as usize]
                .iter()
                .map(|&v| v.clamp(0.0, 1.0) * 2.0 - 1.0),
        );
    }
    let data = if cfg.channels == 3 {
        plane.repeat(3)
    } else {
        plane
    };
    PreprocessedImage {
        channels: cfg.channels,
        size: n,
        data,
    }
}

fn round_half_even(x: f64) -> u32 {
    let r = x.round();
    let r = if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - 1.0
    } else {
        r
    };
    r as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: u32, h: u32) -> GrayImage {
        let pixels = (0..w * h)
            .map(|i| (i % w) as f32 / (w - 1) as f32)
            .collect();
        GrayImage::new(w, h, pixels).unwrap()
    }

    #[test]
    fn output_shape_range_and_channels() {
        let img = ramp(300, 200);
        let out = preprocess(
            &img,
            &Preprocess {
                size: 64,
                channels: 3,
            },
        );
        assert_eq!(out.data.len(), 3 * 64 * 64);
        assert!(out.data.iter().all(|v| (-1.0..=1.0).contains(v)));
        let plane = 64 * 64;
        assert_eq!(&out.data[..plane], &out.data[plane..2 * plane]);
        let gray = preprocess(
            &img,
            &Preprocess {
                size: 64,
                channels: 1,
            },
        );
        assert_eq!(gray.data, out.data[..plane]);
    }

    #[test]
    fn center_crop_keeps_the_middle_of_the_long_side() {
        // Horizontal ramp, wide image: the crop is centred, so the middle column is ~0 after scaling.
        let out = preprocess(
            &ramp(400, 100),
            &Preprocess {
                size: 50,
                channels: 1,
            },
        );
        let mid_row = &out.data[25 * 50..26 * 50];
        assert!((mid_row[25]).abs() < 0.05, "{}", mid_row[25]);
        // Only the central quarter of the ramp survives: values stay within [-0.3, 0.3].
        assert!(mid_row.iter().all(|v| v.abs() < 0.3));
    }

    #[test]
    fn identity_size_only_rescales() {
        let img = GrayImage::new(2, 2, vec![0.0, 0.5, 1.0, 0.25]).unwrap();
        let out = preprocess(
            &img,
            &Preprocess {
                size: 2,
                channels: 1,
            },
        );
        assert_eq!(out.data, vec![-1.0, 0.0, 1.0, -0.5]);
    }

    #[test]
    fn torchvision_rounding() {
        assert_eq!(round_half_even(0.5), 0);
        assert_eq!(round_half_even(1.5), 2);
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(3.0), 3);
    }
}
