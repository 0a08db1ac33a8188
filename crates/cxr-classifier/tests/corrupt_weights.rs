//! Corrupt weight files given to the classifier (and the VQ-GAN, which loads through the same
//! `var_builder`): each is an error naming the file and the problem, never an allocation of a
//! forged size or a panic.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use cxr_classifier::candle_core::Device;
use cxr_classifier::{DenseNet, DenseNetConfig};

fn small() -> DenseNetConfig {
    DenseNetConfig {
        growth_rate: 8,
        block_config: vec![2, 2, 2, 2],
        num_init_features: 16,
        bn_size: 2,
        in_channels: 1,
        num_classes: 18,
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load_error(path: &Path) -> String {
    let Err(e) = DenseNet::load(&small(), path, &Device::Cpu) else {
        panic!("the corrupt file was accepted");
    };
    let e = e.to_string();
    assert!(
        e.contains(&*path.file_name().unwrap().to_string_lossy()),
        "the error does not name the file: {e}"
    );
    e
}

/// Copies a checkpoint fixture with the storage entry `short` cut to 4 bytes.
fn with_short_storage(src: &Path, dst: &Path, short: &str) {
    let mut zin = zip::ZipArchive::new(std::fs::File::open(src).unwrap()).unwrap();
    let mut zout = zip::ZipWriter::new(std::fs::File::create(dst).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..zin.len() {
        let mut entry = zin.by_index(i).unwrap();
        let name = entry.name().unwrap().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        if name == short {
            bytes.truncate(4);
        }
        zout.start_file(name, opts).unwrap();
        zout.write_all(&bytes).unwrap();
    }
    zout.finish().unwrap();
}

#[test]
fn storage_shorter_than_its_tensor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (fixture_name, prefix) in [
        ("densenet_small_state_dict.pt", "densenet_small_state_dict"),
        ("densenet_small_lightning.ckpt", "densenet_small_lightning"),
    ] {
        let path = dir.path().join(fixture_name);
        with_short_storage(&fixture(fixture_name), &path, &format!("{prefix}/data/0"));
        let e = load_error(&path);
        assert!(
            e.contains(&format!("storage \"{prefix}/data/0\", which holds 4")),
            "{e}"
        );
    }
}

#[test]
fn truncated_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("densenet_small_state_dict.pt")).unwrap();
    let path = dir.path().join("cut.pt");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_error(&path);
    assert!(e.contains("not a PyTorch zip checkpoint"), "{e}");
}

#[test]
fn safetensors_header_claiming_2_pow_60_bytes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture("densenet_small.safetensors")).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let path = dir.path().join("big.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let e = load_error(&path);
    assert!(e.contains("header too large"), "{e}");
    // Truncated inside the tensor data.
    let bytes = std::fs::read(fixture("densenet_small.safetensors")).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 8]).unwrap();
    let e = load_error(&path);
    assert!(e.contains("incomplete metadata"), "{e}");
}
