//! Crafted `.npy` token files: forged header lengths, shapes and dtypes are named errors, never a
//! panic or an allocation of what the header declares.

use cxr_vqgan::tokens::{from_npy, read, to_npy};

/// A format 1.0 `.npy` with the given header dict and data bytes.
fn npy(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.to_string();
    let unpadded = 10 + h.len() + 1;
    h.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((h.len() as u16).to_le_bytes());
    out.extend(h.as_bytes());
    out.extend(data);
    out
}

#[test]
fn shape_whose_product_wraps_is_refused() {
    // (2^63 + 2)^2 wraps to 4 in 64 bits: 8 bytes of uint16 would pass as a 2 x 2 grid.
    let n = (1u64 << 63) + 2;
    let bytes = npy(
        &format!("{{'descr': '<u2', 'fortran_order': False, 'shape': ({n}, {n}), }}"),
        &[0u8; 8],
    );
    let e = from_npy(&bytes, 1024).unwrap_err();
    assert!(e.contains("overflows"), "{e}");
    // A 1-D length whose square root squared overflows.
    let bytes = npy(
        &format!(
            "{{'descr': '<u2', 'fortran_order': False, 'shape': ({}, ), }}",
            u64::MAX
        ),
        &[0u8; 8],
    );
    let e = from_npy(&bytes, 1024).unwrap_err();
    assert!(e.contains("not a square grid"), "{e}");
}

#[test]
fn header_length_past_the_file_is_refused() {
    let mut bytes = to_npy(&[1, 2, 3, 4], 2);
    bytes[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
    let e = from_npy(&bytes, 8).unwrap_err();
    assert!(
        e.contains("header claims 65535 bytes but the file has"),
        "{e}"
    );
    // Version 2 has a 32-bit header length.
    let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
    bytes.extend(u32::MAX.to_le_bytes());
    bytes.extend(b"{}");
    let e = from_npy(&bytes, 8).unwrap_err();
    assert!(e.contains("header claims 4294967295 bytes"), "{e}");
}

#[test]
fn shape_larger_than_the_data_and_bad_dtypes_are_refused() {
    let bytes = npy(
        "{'descr': '<u2', 'fortran_order': False, 'shape': (65536, 65536), }",
        &[0u8; 8],
    );
    let e = from_npy(&bytes, 1024).unwrap_err();
    assert!(e.contains("8 data bytes for 4294967296 codes"), "{e}");
    let bytes = npy(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }",
        &[0u8; 16],
    );
    assert!(from_npy(&bytes, 8)
        .unwrap_err()
        .contains("dtype <f4 is not supported"));
    let bytes = npy(
        "{'descr': '<u2', 'fortran_order': True, 'shape': (2, 2), }",
        &[0u8; 8],
    );
    assert!(from_npy(&bytes, 8).unwrap_err().contains("Fortran-ordered"));
    let bytes = npy(
        "{'descr': '<u2', 'fortran_order': False, 'shape': (2, 3), }",
        &[0u8; 12],
    );
    assert!(from_npy(&bytes, 8)
        .unwrap_err()
        .contains("not a square grid"));
}

#[test]
fn read_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img1.npy");
    std::fs::write(&path, b"\x93NUMPY\x01\x00").unwrap();
    let e = read(&path, 8).unwrap_err().to_string();
    assert!(e.contains("img1.npy"), "{e}");
}
