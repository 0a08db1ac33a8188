//! Parity of our Inception-v3 with pytorch-fid's (`scripts/reference/inception_fixture.py`):
//! the same formula weights, the same two images, the same 2048-d pool3 features.

use std::path::Path;

use cxr_classifier::candle_core::{DType, Device, Shape, Tensor};
use cxr_classifier::candle_nn::{Init, VarBuilder};
use cxr_classifier::inception::{inception_input, resize_bilinear, InceptionV3};

const MASK_BITS: u32 = 24;

fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xCBF29CE484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001B3)
    })
}

/// The fixture script's `uniform`: n values in [0, 1).
fn uniform(name: &str, n: usize) -> Vec<f64> {
    let seed = fnv1a(name);
    (0..n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_mul(0x9E3779B97F4A7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            (z >> (64 - MASK_BITS)) as f64 / (1u64 << MASK_BITS) as f64
        })
        .collect()
}

/// The fixture script's `formula`, as a VarBuilder backend.
struct FormulaWeights;

impl cxr_classifier::candle_nn::var_builder::SimpleBackend for FormulaWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> cxr_classifier::candle_core::Result<Tensor> {
        let u = uniform(name, s.elem_count());
        let v: Vec<f32> = if name.ends_with("running_var") {
            u.iter().map(|u| (0.5 + u) as f32).collect()
        } else if name.ends_with("running_mean") || name.ends_with("bn.bias") {
            u.iter().map(|u| (0.2 * (u - 0.5)) as f32).collect()
        } else if name.ends_with("bn.weight") {
            u.iter().map(|u| (0.8 + 0.4 * u) as f32).collect()
        } else {
            let fan_in: usize = s.dims()[1..].iter().product();
            let bound = 3f64.sqrt() * (2.0 / fan_in as f64).sqrt();
            u.iter().map(|u| ((u - 0.5) * 2.0 * bound) as f32).collect()
        };
        Tensor::from_vec(v, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _: DType,
        _: &Device,
    ) -> cxr_classifier::candle_core::Result<Tensor> {
        cxr_classifier::candle_core::bail!("{name}: the formula needs a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

fn fixture() -> std::collections::HashMap<String, Tensor> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inception_io.safetensors");
    cxr_classifier::candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

#[test]
fn formula_matches_the_script() {
    // Printed by the script: Conv2d_1a_3x3.conv.weight[:4].
    let w = FormulaWeights
        .get_tensor((32, 3, 3, 3), "Conv2d_1a_3x3.conv.weight")
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (ours, script) in w.iter().zip([0.1742f32, -0.1520, 0.1214, -0.3046]) {
        assert!((ours - script).abs() < 1e-4, "{ours} vs {script}");
    }
}

trait Get {
    fn get_tensor(&self, shape: (usize, usize, usize, usize), name: &str) -> Tensor;
}

impl Get for FormulaWeights {
    fn get_tensor(&self, shape: (usize, usize, usize, usize), name: &str) -> Tensor {
        use cxr_classifier::candle_nn::var_builder::SimpleBackend;
        self.get(
            shape.into(),
            name,
            Init::Const(0.0),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    }
}

#[test]
fn bilinear_resize_matches_torch_interpolate() {
    let io = fixture();
    let images = io["images"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let corner = io["resized_corner"].to_dtype(DType::F32).unwrap();
    let (h, w) = (61, 83);
    for b in 0..2 {
        let resized = resize_bilinear(&images[b * h * w..(b + 1) * h * w], (h, w), (299, 299));
        let want = corner
            .get(b)
            .unwrap()
            .get(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (r, row) in want.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                assert!((resized[r * 299 + c] - v).abs() < 1e-6, "({r}, {c})");
            }
        }
    }
}

#[test]
fn pool3_features_match_pytorch_fid() {
    let dev = Device::Cpu;
    let io = fixture();
    let vb = VarBuilder::from_backend(Box::new(FormulaWeights), DType::F32, dev.clone());
    let net = InceptionV3::new(vb).unwrap();
    let images = io["images"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let (h, w) = (61usize, 83usize);
    let inputs: Vec<Tensor> = (0..2)
        .map(|b| {
            let img = cxr_image::GrayImage::new(
                w as u32,
                h as u32,
                images[b * h * w..(b + 1) * h * w].to_vec(),
            )
            .unwrap();
            inception_input(&img, &dev).unwrap()
        })
        .collect();
    let ours = net.features(&Tensor::cat(&inputs, 0).unwrap()).unwrap();
    let want = &io["features"];
    assert_eq!(ours.dims(), want.dims());
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let diff = cxr_ops::max_abs_diff(&ours, want).unwrap();
    eprintln!("max |diff| {diff} at scale {scale}");
    assert!(diff / scale < 1e-4, "max |diff| {diff} at scale {scale}");
    // The two images differ, and so do their features.
    let rows = ours.to_vec2::<f32>().unwrap();
    assert!(rows[0]
        .iter()
        .zip(&rows[1])
        .any(|(a, b)| (a - b).abs() > 1e-3 * scale));
}

#[test]
fn loading_names_the_file_and_the_missing_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-inception.safetensors");
    let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    cxr_classifier::candle_core::safetensors::save(
        &std::collections::HashMap::from([("fc.bias".to_string(), t)]),
        &path,
    )
    .unwrap();
    let err = InceptionV3::load(&path, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not-inception.safetensors"), "{err}");
    assert!(err.contains("Conv2d_1a_3x3.conv.weight"), "{err}");
}
