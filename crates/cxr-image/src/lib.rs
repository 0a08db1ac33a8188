//! The one chest X-ray image loader of llm-cxr.
//!
//! Every caller (VQ-GAN encoding, classifier training, the CLI, the server) reads a CXR through
//! [`load_image`] or [`decode_image`]: DICOM (native and compressed transfer syntaxes, through
//! dicom-rs), PNG (8/16-bit) and JPEG, gray, RGB or RGBA. The result is a [`GrayImage`] with values
//! in [0, 1] where bright means dense (MONOCHROME2), so every source looks alike to the model.
//! [`preprocess`] then applies LLM-CXR's preprocessing (`encode_cxr_all.py`: Lanczos resize of the
//! short side, center crop, scale to [-1, 1]).
//!
//! Bad input never panics and never allocates without bound: sizes are checked against
//! [`MAX_PIXELS`] / [`MAX_SIDE`] before any pixel buffer is made, and every error names the file.

pub mod dicom;
mod preprocess;

use std::path::{Path, PathBuf};

pub use preprocess::{preprocess, Preprocess, PreprocessedImage};

/// Largest image side accepted (pixels). Real CXRs are at most ~4,300 px.
pub const MAX_SIDE: u32 = 16_384;
/// Largest pixel count accepted (per frame), bounding memory at ~256 MiB of f32.
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;
/// Largest file accepted, in bytes.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// A decoded grayscale radiograph, row-major, values in [0, 1], bright = dense (MONOCHROME2).
#[derive(Debug, Clone, PartialEq)]
pub struct GrayImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<f32>,
}

impl GrayImage {
    /// Builds an image, checking that the buffer matches the size.
    pub fn new(width: u32, height: u32, pixels: Vec<f32>) -> Option<Self> {
        (pixels.len() as u64 == width as u64 * height as u64).then_some(Self {
            width,
            height,
            pixels,
        })
    }

    /// The value at column `x`, row `y`.
    pub fn get(&self, x: u32, y: u32) -> f32 {
        self.pixels[(y * self.width + x) as usize]
    }

    /// Quantizes to 8 bits (for PNG/JPEG output and previews).
    pub fn to_luma8(&self) -> image::GrayImage {
        let data = self
            .pixels
            .iter()
            .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect();
        image::GrayImage::from_raw(self.width, self.height, data)
            .expect("buffer length equals width * height by construction")
    }

    /// Quantizes to 16 bits.
    pub fn to_luma16(&self) -> image::ImageBuffer<image::Luma<u16>, Vec<u16>> {
        let data = self
            .pixels
            .iter()
            .map(|&v| (v.clamp(0.0, 1.0) * 65535.0).round() as u16)
            .collect();
        image::ImageBuffer::from_raw(self.width, self.height, data)
            .expect("buffer length equals width * height by construction")
    }

    /// Mean and standard deviation of the pixel values (a cheap fingerprint for tests).
    pub fn mean_std(&self) -> (f64, f64) {
        mean_std(&self.pixels)
    }
}

pub(crate) fn mean_std(values: &[f32]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

/// The container a file was recognised as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Dicom,
    Png,
    Jpeg,
}

/// Why an image could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: cannot read file: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: file is empty")]
    Empty { path: PathBuf },
    #[error("{path}: file is {bytes} bytes, more than the {max} accepted")]
    TooLarge { path: PathBuf, bytes: u64, max: u64 },
    #[error("{path}: not a DICOM, PNG or JPEG file (unrecognised leading bytes)")]
    UnknownFormat { path: PathBuf },
    #[error("{path}: image claims {width} x {height} pixels, more than the {max_side} px per side / {max_pixels} pixels accepted")]
    Dimensions {
        path: PathBuf,
        width: u64,
        height: u64,
        max_side: u32,
        max_pixels: u64,
    },
    #[error("{path}: broken {format:?} data: {reason}")]
    Corrupt {
        path: PathBuf,
        format: ImageFormat,
        reason: String,
    },
    #[error("{path}: DICOM transfer syntax {uid} ({name}) cannot be decoded by this build")]
    UnsupportedTransferSyntax {
        path: PathBuf,
        uid: String,
        name: String,
    },
    #[error("{path}: unsupported DICOM image: {reason}")]
    UnsupportedDicom { path: PathBuf, reason: String },
    #[error("{path}: DICOM attribute {attribute} is missing or invalid")]
    MissingAttribute {
        path: PathBuf,
        attribute: &'static str,
    },
}

/// Recognises the container from its leading bytes.
pub fn sniff_format(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        Some(ImageFormat::Dicom)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else {
        None
    }
}

/// Reads and decodes a CXR file (DICOM, PNG or JPEG) into a [`GrayImage`].
pub fn load_image(path: &Path) -> Result<GrayImage, ImageError> {
    let io = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes_on_disk = std::fs::metadata(path).map_err(io)?.len();
    if bytes_on_disk > MAX_FILE_BYTES {
        return Err(ImageError::TooLarge {
            path: path.to_path_buf(),
            bytes: bytes_on_disk,
            max: MAX_FILE_BYTES,
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    decode_image(&bytes, path)
}

/// Decodes an in-memory CXR file; `path` is only used to name it in errors and logs.
pub fn decode_image(bytes: &[u8], path: &Path) -> Result<GrayImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty {
            path: path.to_path_buf(),
        });
    }
    match sniff_format(bytes) {
        Some(ImageFormat::Dicom) => dicom::decode_dicom(bytes, path),
        Some(format) => decode_raster(bytes, format, path),
        None => Err(ImageError::UnknownFormat {
            path: path.to_path_buf(),
        }),
    }
}

pub(crate) fn check_dimensions(path: &Path, width: u64, height: u64) -> Result<(), ImageError> {
    if width == 0
        || height == 0
        || width > MAX_SIDE as u64
        || height > MAX_SIDE as u64
        || width * height > MAX_PIXELS
    {
        return Err(ImageError::Dimensions {
            path: path.to_path_buf(),
            width,
            height,
            max_side: MAX_SIDE,
            max_pixels: MAX_PIXELS,
        });
    }
    Ok(())
}

fn decode_raster(bytes: &[u8], format: ImageFormat, path: &Path) -> Result<GrayImage, ImageError> {
    let corrupt = |reason: String| ImageError::Corrupt {
        path: path.to_path_buf(),
        format,
        reason,
    };
    let codec = match format {
        ImageFormat::Png => image::ImageFormat::Png,
        _ => image::ImageFormat::Jpeg,
    };
    let reader = || image::ImageReader::with_format(std::io::Cursor::new(bytes), codec);
    let (width, height) = reader()
        .into_dimensions()
        .map_err(|e| corrupt(e.to_string()))?;
    let mut reader = reader();
    check_dimensions(path, width as u64, height as u64)?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_PIXELS * 8);
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| corrupt(e.to_string()))?;
    Ok(gray_from_dynamic(decoded))
}

/// Reduces any decoded raster to gray in [0, 1], keeping 16-bit precision where the source has it.
/// Colour is reduced with the ITU-R 601 luma weights, as PIL's `convert("L")`; alpha is dropped.
pub(crate) fn gray_from_dynamic(img: image::DynamicImage) -> GrayImage {
    use image::DynamicImage as D;
    let (width, height) = (img.width(), img.height());
    let pixels: Vec<f32> = match img {
        D::ImageLuma8(b) => b.into_raw().into_iter().map(|v| v as f32 / 255.0).collect(),
        D::ImageLumaA8(b) => b.pixels().map(|p| p.0[0] as f32 / 255.0).collect(),
        D::ImageLuma16(b) => b
            .into_raw()
            .into_iter()
            .map(|v| v as f32 / 65535.0)
            .collect(),
        D::ImageLumaA16(b) => b.pixels().map(|p| p.0[0] as f32 / 65535.0).collect(),
        D::ImageRgb16(b) => b
            .pixels()
            .map(|p| luma(p.0[0] as f32, p.0[1] as f32, p.0[2] as f32) / 65535.0)
            .collect(),
        D::ImageRgba16(b) => b
            .pixels()
            .map(|p| luma(p.0[0] as f32, p.0[1] as f32, p.0[2] as f32) / 65535.0)
            .collect(),
        other => other
            .to_rgb32f()
            .pixels()
            .map(|p| luma(p.0[0], p.0[1], p.0[2]))
            .collect(),
    };
    GrayImage {
        width,
        height,
        pixels,
    }
}

fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.299 * r + 0.587 * g + 0.114 * b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(bytes: &[u8]) -> ImageError {
        decode_image(bytes, Path::new("x/broken.bin")).unwrap_err()
    }

    #[test]
    fn empty_and_unknown_bytes_are_named_errors() {
        assert!(matches!(err(b""), ImageError::Empty { .. }));
        let e = err(b"hello, I am a text file");
        assert!(matches!(e, ImageError::UnknownFormat { .. }));
        assert!(e.to_string().contains("x/broken.bin"));
    }

    #[test]
    fn truncated_png_is_corrupt_not_panic() {
        let img = image::GrayImage::from_fn(64, 64, |x, y| image::Luma([(x * y) as u8]));
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        for cut in [10, 40, png.len() / 2, png.len() - 13] {
            let e = err(&png[..cut]);
            assert!(
                matches!(
                    e,
                    ImageError::Corrupt {
                        format: ImageFormat::Png,
                        ..
                    }
                ),
                "cut {cut}: {e}"
            );
        }
    }

    #[test]
    fn png_header_claiming_huge_size_is_refused_before_allocation() {
        // An IHDR for 60000 x 60000 8-bit gray with a valid CRC, and no data.
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(b"IHDR");
        ihdr.extend_from_slice(&60000u32.to_be_bytes());
        ihdr.extend_from_slice(&60000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
        let crc = crc32(&ihdr);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(&ihdr);
        png.extend_from_slice(&crc.to_be_bytes());
        png.extend_from_slice(&2u32.to_be_bytes());
        png.extend_from_slice(b"IDAT\x78\x9c");
        png.extend_from_slice(&crc32(b"IDAT\x78\x9c").to_be_bytes());
        png.extend_from_slice(&[0, 0, 0, 0]);
        png.extend_from_slice(b"IEND");
        png.extend_from_slice(&crc32(b"IEND").to_be_bytes());
        let e = err(&png);
        assert!(
            matches!(
                e,
                ImageError::Dimensions {
                    width: 60000,
                    height: 60000,
                    ..
                }
            ),
            "{e}"
        );
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn rgb_and_rgba_reduce_to_luma() {
        let rgb = image::RgbImage::from_pixel(2, 2, image::Rgb([255, 0, 0]));
        let g = gray_from_dynamic(image::DynamicImage::ImageRgb8(rgb));
        assert!((g.pixels[0] - 0.299).abs() < 1e-4);
        let rgba = image::RgbaImage::from_pixel(2, 2, image::Rgba([0, 0, 255, 7]));
        let g = gray_from_dynamic(image::DynamicImage::ImageRgba8(rgba));
        assert!((g.pixels[3] - 0.114).abs() < 1e-4);
        let g16 = image::ImageBuffer::<image::Luma<u16>, _>::from_pixel(1, 1, image::Luma([65535]));
        let g = gray_from_dynamic(image::DynamicImage::ImageLuma16(g16));
        assert_eq!(g.pixels, vec![1.0]);
    }
}
