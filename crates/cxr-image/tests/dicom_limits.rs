//! DICOM files that declare more than they hold: a deflated data set whose pixel element claims
//! 4 GiB, a codestream whose own header disagrees with Rows/Columns, a huge frame count. Each is
//! a named error before anything of the declared size is allocated.

use std::io::Write;
use std::path::Path;

use cxr_image::dicom::{build_dicom, inspect_dicom, to_bytes, DicomWriteOptions, MAX_FRAMES};
use cxr_image::{decode_image, GrayImage, ImageError};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::TransferSyntaxIndex;
use dicom_pixeldata::Transcode;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

fn gradient() -> GrayImage {
    let (w, h) = (24u32, 16u32);
    let pixels = (0..w * h).map(|i| (i % w) as f32 / w as f32).collect();
    GrayImage::new(w, h, pixels).unwrap()
}

fn transcoded(uid: &str) -> Vec<u8> {
    let opts = DicomWriteOptions {
        bits_stored: 12,
        ..Default::default()
    };
    let mut obj = build_dicom(&gradient(), &opts).unwrap();
    obj.transcode(TransferSyntaxRegistry.get(uid).unwrap())
        .unwrap();
    to_bytes(&obj).unwrap()
}

/// Preamble, magic and meta group of `file` (the meta group's length is its first element).
fn meta_part(file: &[u8]) -> &[u8] {
    assert_eq!(&file[128..132], b"DICM");
    assert_eq!(&file[132..138], [0x02, 0x00, 0x00, 0x00, b'U', b'L']);
    let len = u32::from_le_bytes(file[140..144].try_into().unwrap()) as usize;
    &file[..144 + len]
}

fn element(out: &mut Vec<u8>, group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) {
    out.extend(group.to_le_bytes());
    out.extend(elem.to_le_bytes());
    out.extend(vr);
    out.extend((value.len() as u16).to_le_bytes());
    out.extend(value);
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A deflated DICOM of under 1 kB whose PixelData element claims 4 GiB - 16.
fn deflated_claiming_4_gib() -> Vec<u8> {
    let mut set = Vec::new();
    element(&mut set, 0x0028, 0x0002, b"US", &1u16.to_le_bytes());
    element(&mut set, 0x0028, 0x0004, b"CS", b"MONOCHROME2 ");
    element(&mut set, 0x0028, 0x0010, b"US", &8u16.to_le_bytes());
    element(&mut set, 0x0028, 0x0011, b"US", &8u16.to_le_bytes());
    element(&mut set, 0x0028, 0x0100, b"US", &16u16.to_le_bytes());
    element(&mut set, 0x0028, 0x0101, b"US", &12u16.to_le_bytes());
    element(&mut set, 0x0028, 0x0103, b"US", &0u16.to_le_bytes());
    set.extend([0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0]);
    set.extend(0xFFFF_FFF0u32.to_le_bytes());
    set.extend([0u8; 128]);
    let mut file = meta_part(&transcoded(uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)).to_vec();
    file.extend(deflate(&set));
    file
}

/// The peak resident memory of this process so far (Linux), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[test]
fn deflated_pixel_element_claiming_4_gib_is_refused_without_allocating_it() {
    let file = deflated_claiming_4_gib();
    assert!(file.len() < 1024, "{} bytes", file.len());
    let path = Path::new("deflated-4gib.dcm");
    let says = "element (7FE0,0010) claims 4294967280 bytes but only 128 remain";
    let e = decode_image(&file, path).unwrap_err();
    assert!(matches!(e, ImageError::Corrupt { .. }), "{e:?}");
    assert!(
        e.to_string().contains("deflated-4gib.dcm") && e.to_string().contains(says),
        "{e}"
    );
    let e = inspect_dicom(&file, path).unwrap_err().to_string();
    assert!(e.contains(says), "{e}");
    // Before the inflated stream was walked, this file cost 4.1 GB of resident memory.
    if let Some(peak) = peak_rss() {
        assert!(peak < 1 << 30, "peak resident memory {peak} bytes");
    }
}

#[test]
fn deflated_stream_that_does_not_inflate_is_refused() {
    let mut file = meta_part(&transcoded(uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)).to_vec();
    file.extend([0xFF; 64]); // not a deflate stream
    let e = decode_image(&file, Path::new("bad-deflate.dcm"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("deflated data set does not inflate"), "{e}");
}

#[test]
fn valid_deflated_file_still_decodes() {
    let img = decode_image(
        &transcoded(uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN),
        Path::new("ok.dcm"),
    )
    .unwrap();
    assert_eq!((img.width, img.height), (24, 16));
}

/// Rewrites the height and width in the first SOF-type marker `marker` of `file`.
fn patch_sof(file: &mut [u8], marker: u8, height: u16, width: u16) {
    let at = file
        .windows(2)
        .position(|w| w == [0xFF, marker])
        .expect("no frame header");
    file[at + 5..at + 7].copy_from_slice(&height.to_be_bytes());
    file[at + 7..at + 9].copy_from_slice(&width.to_be_bytes());
}

#[test]
fn codestream_larger_than_rows_and_columns_is_refused_before_decoding() {
    // JPEG-LS (CharLS sizes its output from SOF55) and JPEG baseline (SOF0).
    for (uid, marker) in [
        (uids::JPEGLS_LOSSLESS, 0xF7),
        (uids::JPEG_BASELINE8_BIT, 0xC0),
    ] {
        let opts = DicomWriteOptions {
            bits_stored: 8,
            ..Default::default()
        };
        let mut obj = build_dicom(&gradient(), &opts).unwrap();
        obj.transcode(TransferSyntaxRegistry.get(uid).unwrap())
            .unwrap();
        let mut file = to_bytes(&obj).unwrap();
        patch_sof(&mut file, marker, 60000, 60000);
        let e = decode_image(&file, Path::new("forged-sof.dcm"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("forged-sof.dcm")
                && e.contains("codestream declares 60000x60000 with 1 components but the header says 24x16 with 1"),
            "{uid}: {e}"
        );
    }
}

#[test]
fn frame_count_beyond_the_limit_is_refused() {
    let mut obj = build_dicom(&gradient(), &DicomWriteOptions::default()).unwrap();
    obj.put(DataElement::new(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        PrimitiveValue::from("100000"),
    ));
    let e = decode_image(&to_bytes(&obj).unwrap(), Path::new("frames.dcm")).unwrap_err();
    assert!(matches!(e, ImageError::UnsupportedDicom { .. }), "{e:?}");
    assert!(
        e.to_string().contains(&format!(
            "NumberOfFrames 100000 (1 to {MAX_FRAMES} accepted"
        )),
        "{e}"
    );
}

#[test]
fn a_forged_codestream_behind_the_offset_table_is_refused_too() {
    // Review finding: the codec decodes the fragment the Basic Offset Table points at. A true
    // first fragment and a second one declaring 60000x60000, with the table pointing at the
    // second, must not reach the codec.
    let opts = DicomWriteOptions {
        bits_stored: 8,
        ..Default::default()
    };
    let mut obj = build_dicom(&gradient(), &opts).unwrap();
    obj.transcode(TransferSyntaxRegistry.get(uids::JPEGLS_LOSSLESS).unwrap())
        .unwrap();
    let true_frame = match obj.element(tags::PIXEL_DATA).unwrap().value() {
        dicom_core::value::Value::PixelSequence(seq) => seq.fragments()[0].to_vec(),
        _ => panic!("JPEG-LS pixel data is encapsulated"),
    };
    let mut forged = true_frame.clone();
    patch_sof(&mut forged, 0xF7, 60000, 60000);
    let offsets = vec![true_frame.len() as u32 + 8];
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        dicom_core::value::Value::PixelSequence(dicom_core::value::PixelFragmentSequence::new(
            offsets,
            vec![true_frame, forged],
        )),
    ));
    let e = decode_image(&to_bytes(&obj).unwrap(), Path::new("offset-table.dcm"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("offset-table.dcm")
            && e.contains("fragment 1's codestream declares 60000x60000"),
        "{e}"
    );
}

#[test]
fn lengths_are_checked_where_dicom_parser_reads_them() {
    // Found by the fuzzer (a J2K fixture with one byte changed): BitsAllocated's length grew to 72
    // bytes and swallowed the PixelData header, so an item tag came outside any sequence and
    // dicom-parser read a length from the codestream's SOC/SIZ markers (1.37 GB). The former
    // length walk read that item differently and let the length through; lengths are now checked
    // inside dicom-parser's own reading.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let path = dir.join("item-outside-sequence.dcm");
    let file = std::fs::read(&path).unwrap();
    let e = decode_image(&file, &path).unwrap_err();
    assert!(matches!(e, ImageError::Corrupt { .. }), "{e:?}");
    let message = e.to_string();
    assert!(
        message.contains("item-outside-sequence.dcm") && message.contains("remain"),
        "{message}"
    );
    if let Some(peak) = peak_rss() {
        assert!(peak < 1 << 30, "peak resident memory {peak} bytes");
    }
}
