//! Every real image in ../shared/data loads through the one loader and preprocesses to the same
//! statistics as the reference pipeline (PIL, `scripts/reference/preprocess_stats.py`, fixture
//! committed). Skips with a message when the shared data is absent.

use std::path::PathBuf;

use cxr_image::{load_image, preprocess, Preprocess};

#[test]
fn shared_data_images_match_pil_reference() {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if !data.is_dir() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{} is absent (CI=true: CI must have it)", data.display());
        }
        eprintln!("SKIP: {} is absent", data.display());
        return;
    }
    let fixture = include_str!("fixtures/shared_data_preprocess.tsv");
    let cfg = Preprocess {
        size: 256,
        channels: 3,
    };
    let mut checked = 0;
    let mut worst: (f64, String) = (0.0, String::new());
    for line in fixture.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (file, w, h, mean, std): (&str, u32, u32, f64, f64) = (
            cols[0],
            cols[1].parse().unwrap(),
            cols[2].parse().unwrap(),
            cols[3].parse().unwrap(),
            cols[4].parse().unwrap(),
        );
        let img = load_image(&data.join(file)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((img.width, img.height), (w, h), "{file}");
        let out = preprocess(&img, &cfg);
        assert_eq!(out.data.len(), 3 * 256 * 256);
        let (m, s) = out.mean_std();
        // PIL resamples in 8 bits and decodes JPEG with libjpeg; we resample in f32 and decode
        // with zune-jpeg: the statistics agree to well under one gray level (2/255 = 0.0078).
        let err = (m - mean).abs().max((s - std).abs());
        if err > worst.0 {
            worst = (err, file.to_string());
        }
        assert!(
            err < 0.002,
            "{file}: mean {m:.5} vs {mean:.5}, std {s:.5} vs {std:.5}"
        );
        checked += 1;
    }
    eprintln!(
        "{checked} images checked; worst deviation {:.5} on {}",
        worst.0, worst.1
    );
    assert_eq!(checked, 83, "every shared image is in the fixture");
}
