//! DICOM files written here in every photometric / bit-depth / transfer-syntax variant decode
//! back to the pixels they were made from, and broken DICOMs give clear, named errors.
//!
//! dicom-rs has encoders for JPEG baseline and JPEG-LS only, so this file carries two small
//! encoders of its own for the other compressed syntaxes: RLE Lossless (PS3.5 Annex G) and
//! JPEG lossless process 14 with predictor 1 (ITU T.81 Annex H).

use std::path::Path;

use cxr_image::dicom::{
    build_dicom, encapsulate, encode_dicom, inspect_dicom, quantize, to_bytes, DicomWriteOptions,
    Photometric,
};
use cxr_image::{decode_image, GrayImage, ImageError};
use dicom_dictionary_std::uids;
use dicom_encoding::TransferSyntaxIndex;
use dicom_pixeldata::Transcode;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

const W: u32 = 67;
const H: u32 = 45;

/// Not square and not symmetric, so a transposed or flipped decode fails.
fn pattern() -> GrayImage {
    let pixels = (0..H)
        .flat_map(|y| {
            (0..W).map(move |x| {
                let r = ((x as f32 - 20.0).powi(2) + (y as f32 - 15.0).powi(2)).sqrt();
                let v = 0.6 * x as f32 / (W - 1) as f32 + 0.4 * y as f32 / (H - 1) as f32;
                if r < 9.0 {
                    1.0 - 0.5 * v
                } else {
                    v
                }
            })
        })
        .collect();
    GrayImage::new(W, H, pixels).unwrap()
}

fn expected(img: &GrayImage, bits: u16) -> Vec<f32> {
    let max = ((1u32 << bits) - 1) as f32;
    img.pixels
        .iter()
        .map(|&v| quantize(v, bits) as f32 / max)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn decode(bytes: &[u8]) -> GrayImage {
    decode_image(bytes, Path::new("variant.dcm")).unwrap_or_else(|e| panic!("{e}"))
}

/// A decoded 16-bit output differs from the exact value by at most the output's rounding.
const EXACT: f32 = 1.0 / 65535.0 + 1e-6;

#[test]
fn native_photometric_and_bit_depth_variants_round_trip() {
    let img = pattern();
    for photometric in [Photometric::Monochrome2, Photometric::Monochrome1] {
        for bits in [8u16, 10, 12, 16] {
            let opts = DicomWriteOptions {
                photometric,
                bits_stored: bits,
                ..Default::default()
            };
            let out = decode(&encode_dicom(&img, &opts).unwrap());
            assert_eq!((out.width, out.height), (W, H));
            let err = max_abs_diff(&out.pixels, &expected(&img, bits));
            assert!(err <= EXACT, "{photometric:?} {bits} bits: max error {err}");
        }
    }
    let rgb = DicomWriteOptions {
        photometric: Photometric::Rgb,
        ..Default::default()
    };
    let out = decode(&encode_dicom(&img, &rgb).unwrap());
    assert!(max_abs_diff(&out.pixels, &expected(&img, 8)) <= 1.0 / 255.0 + 1e-5);
}

#[test]
fn rescale_and_window_are_applied() {
    let img = pattern();
    // Rescale to Hounsfield-like units with a full-range window: pixels survive unchanged.
    let opts = DicomWriteOptions {
        bits_stored: 12,
        rescale: Some((2.0, -1024.0)),
        ..Default::default()
    };
    let out = decode(&encode_dicom(&img, &opts).unwrap());
    assert!(max_abs_diff(&out.pixels, &expected(&img, 12)) <= EXACT);

    // A narrow window (stored 1024..3072 of 0..4095 at slope 1) clips and stretches.
    let opts = DicomWriteOptions {
        bits_stored: 12,
        window: Some((2048.0, 2048.0)),
        ..Default::default()
    };
    let out = decode(&encode_dicom(&img, &opts).unwrap());
    for (o, &v) in out.pixels.iter().zip(&img.pixels) {
        let x = quantize(v, 12) as f32;
        let want = ((x - 2047.5) / 2047.0 + 0.5).clamp(0.0, 1.0);
        assert!((o - want).abs() < 2e-4, "stored {x}: got {o}, want {want}");
    }
}

fn transcoded(img: &GrayImage, opts: &DicomWriteOptions, uid: &str) -> Vec<u8> {
    let mut obj = build_dicom(img, opts).unwrap();
    let ts = TransferSyntaxRegistry.get(uid).unwrap();
    obj.transcode(ts)
        .unwrap_or_else(|e| panic!("transcode to {uid}: {e}"));
    assert_eq!(obj.meta().transfer_syntax().trim_end_matches('\0'), uid);
    to_bytes(&obj).unwrap()
}

#[test]
fn uncompressed_and_deflated_syntaxes_round_trip() {
    let img = pattern();
    let opts = DicomWriteOptions {
        bits_stored: 16,
        ..Default::default()
    };
    for uid in [
        uids::IMPLICIT_VR_LITTLE_ENDIAN,
        uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    ] {
        let out = decode(&transcoded(&img, &opts, uid));
        assert!(
            max_abs_diff(&out.pixels, &expected(&img, 16)) <= EXACT,
            "{uid}"
        );
    }
}

#[test]
fn jpeg_ls_lossless_round_trips() {
    let img = pattern();
    for bits in [8u16, 12, 16] {
        let opts = DicomWriteOptions {
            bits_stored: bits,
            ..Default::default()
        };
        let bytes = transcoded(&img, &opts, uids::JPEGLS_LOSSLESS);
        let out = decode(&bytes);
        let err = max_abs_diff(&out.pixels, &expected(&img, bits));
        assert!(err <= EXACT, "JPEG-LS {bits} bits: {err}");
    }
}

#[test]
fn jpeg_baseline_is_close() {
    let img = pattern();
    for photometric in [Photometric::Monochrome2, Photometric::Monochrome1] {
        let opts = DicomWriteOptions {
            photometric,
            bits_stored: 8,
            ..Default::default()
        };
        let out = decode(&transcoded(&img, &opts, uids::JPEG_BASELINE8_BIT));
        let mean_err = out
            .pixels
            .iter()
            .zip(expected(&img, 8))
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / out.pixels.len() as f32;
        assert!(mean_err < 0.02, "{photometric:?}: mean error {mean_err}");
    }
}

/// Stored sample values as the codec sees them (after MONOCHROME1 inversion by the writer).
fn stored_samples(img: &GrayImage, bits: u16, photometric: Photometric) -> Vec<u16> {
    let max = ((1u32 << bits) - 1) as u16;
    img.pixels
        .iter()
        .map(|&v| match photometric {
            Photometric::Monochrome1 => max - quantize(v, bits),
            _ => quantize(v, bits),
        })
        .collect()
}

/// Encodes the stored samples with `encode(samples, bits)` under `uid` and checks the decode is
/// exact, for 8-bit MONOCHROME2, 12-bit MONOCHROME1 and 16-bit MONOCHROME2.
fn encapsulated_round_trip(uid: &str, encode: impl Fn(&[u16], u16) -> Vec<u8>) {
    let img = pattern();
    for (bits, photometric) in [
        (8u16, Photometric::Monochrome2),
        (12, Photometric::Monochrome1),
        (16, Photometric::Monochrome2),
    ] {
        let opts = DicomWriteOptions {
            bits_stored: bits,
            photometric,
            ..Default::default()
        };
        let mut obj = build_dicom(&img, &opts).unwrap();
        let frame = encode(&stored_samples(&img, bits, photometric), bits);
        encapsulate(&mut obj, uid, frame).unwrap();
        let out = decode(&to_bytes(&obj).unwrap());
        let err = max_abs_diff(&out.pixels, &expected(&img, bits));
        assert!(err <= EXACT, "{uid} {bits} bits {photometric:?}: {err}");
    }
}

#[test]
fn rle_lossless_round_trips() {
    encapsulated_round_trip(uids::RLE_LOSSLESS, |s, bits| rle_encode(s, W, H, bits > 8));
}

#[test]
fn jpeg_lossless_round_trips() {
    encapsulated_round_trip(uids::JPEG_LOSSLESS_SV1, |s, bits| {
        jpeg_lossless_encode(s, W, H, bits)
    });
}

#[test]
fn broken_dicoms_give_named_errors() {
    let img = pattern();
    let good = encode_dicom(&img, &DicomWriteOptions::default()).unwrap();
    let path = Path::new("corpus/broken.dcm");
    let check = |bytes: &[u8], what: &str, ok: fn(&ImageError) -> bool| {
        let e = decode_image(bytes, path).expect_err(what);
        assert!(ok(&e), "{what}: unexpected error {e:?}");
        assert!(e.to_string().contains("corpus/broken.dcm"), "{what}: {e}");
    };
    // Truncated at many points: never a panic, always an error that names the file.
    for cut in [131, 140, 200, 300, good.len() / 2, good.len() - 1] {
        let e = decode_image(&good[..cut], path).expect_err("truncated");
        assert!(
            e.to_string().contains("corpus/broken.dcm"),
            "cut {cut}: {e}"
        );
    }
    check(&good[..100], "no magic", |e| {
        matches!(e, ImageError::UnknownFormat { .. })
    });

    // Unknown transfer syntax: patch the meta group's UID in place (same length).
    let mut bytes = good.clone();
    let known = b"1.2.840.10008.1.2.1\0";
    let at = bytes
        .windows(known.len())
        .position(|w| w == known)
        .expect("meta group names explicit VR little endian");
    bytes[at..at + known.len()].copy_from_slice(b"1.2.840.99999.9.9.9\0");
    check(&bytes, "unknown syntax", |e| {
        matches!(e, ImageError::UnsupportedTransferSyntax { .. })
    });

    // A header claiming 60000 x 60000 pixels with a tiny pixel buffer.
    let mut obj = build_dicom(&img, &DicomWriteOptions::default()).unwrap();
    for tag in [
        dicom_dictionary_std::tags::ROWS,
        dicom_dictionary_std::tags::COLUMNS,
    ] {
        obj.put(dicom_core::DataElement::new(
            tag,
            dicom_core::VR::US,
            dicom_core::PrimitiveValue::from(60000u16),
        ));
    }
    check(&to_bytes(&obj).unwrap(), "huge", |e| {
        matches!(e, ImageError::Dimensions { width: 60000, .. })
    });

    // Rows larger than the pixel data holds.
    let mut obj = build_dicom(&img, &DicomWriteOptions::default()).unwrap();
    obj.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::ROWS,
        dicom_core::VR::US,
        dicom_core::PrimitiveValue::from(H as u16 * 3),
    ));
    check(&to_bytes(&obj).unwrap(), "short pixel data", |e| {
        matches!(e, ImageError::Corrupt { .. })
    });

    // No pixel data at all.
    let mut obj = build_dicom(&img, &DicomWriteOptions::default()).unwrap();
    obj.remove_element(dicom_dictionary_std::tags::PIXEL_DATA);
    check(&to_bytes(&obj).unwrap(), "no pixels", |e| {
        matches!(e, ImageError::MissingAttribute { .. })
    });

    // Garbage inside an encapsulated JPEG frame.
    let mut obj = build_dicom(&img, &DicomWriteOptions::default()).unwrap();
    encapsulate(
        &mut obj,
        uids::JPEG_LOSSLESS_SV1,
        vec![0xFF, 0xD8, 1, 2, 3, 4],
    )
    .unwrap();
    check(&to_bytes(&obj).unwrap(), "garbage jpeg", |e| {
        matches!(e, ImageError::Corrupt { .. })
    });
}

#[test]
fn inspect_names_phi_tags_without_values() {
    let opts = DicomWriteOptions {
        patient: Some(("DOE^JANE".into(), "MRN-1234567".into())),
        view_position: Some("PA".into()),
        ..Default::default()
    };
    let bytes = encode_dicom(&pattern(), &opts).unwrap();
    let summary = inspect_dicom(&bytes, Path::new("x.dcm")).unwrap();
    assert!(summary.phi_present.contains(&"PatientName"));
    assert!(summary.phi_present.contains(&"PatientID"));
    assert!(summary.decodable);
    let printed = format!("{summary:?}");
    assert!(!printed.contains("DOE"), "{printed}");
    assert!(!printed.contains("1234567"), "{printed}");
    assert!(summary
        .technical
        .iter()
        .any(|(k, v)| *k == "ViewPosition" && v == "PA"));
    assert!(summary
        .technical
        .iter()
        .any(|(k, v)| *k == "Rows" && v == &H.to_string()));
}

// ---- encoders dicom-rs does not have ----

/// RLE Lossless: one segment per byte plane (most significant first), rows PackBits-coded.
fn rle_encode(samples: &[u16], w: u32, h: u32, two_bytes: bool) -> Vec<u8> {
    let planes: Vec<Vec<u8>> = if two_bytes {
        vec![
            samples.iter().map(|&v| (v >> 8) as u8).collect(),
            samples.iter().map(|&v| v as u8).collect(),
        ]
    } else {
        vec![samples.iter().map(|&v| v as u8).collect()]
    };
    let mut segments = Vec::new();
    for plane in &planes {
        let mut seg = Vec::new();
        for row in plane.chunks(w as usize).take(h as usize) {
            packbits(row, &mut seg);
        }
        if seg.len() % 2 == 1 {
            seg.push(0x80); // no-op byte keeps segments even
        }
        segments.push(seg);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&(segments.len() as u32).to_le_bytes());
    let mut offset = 64u32;
    for i in 0..15 {
        let o = if i < segments.len() {
            let o = offset;
            offset += segments[i].len() as u32;
            o
        } else {
            0
        };
        out.extend_from_slice(&o.to_le_bytes());
    }
    for seg in segments {
        out.extend(seg);
    }
    out
}

fn packbits(row: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < row.len() {
        let mut run = 1;
        while i + run < row.len() && row[i + run] == row[i] && run < 128 {
            run += 1;
        }
        if run >= 3 {
            out.push((1i16 - run as i16) as i8 as u8);
            out.push(row[i]);
            i += run;
        } else {
            let start = i;
            while i < row.len() && i - start < 128 {
                if i + 2 < row.len() && row[i] == row[i + 1] && row[i] == row[i + 2] {
                    break;
                }
                i += 1;
            }
            out.push((i - start - 1) as u8);
            out.extend_from_slice(&row[start..i]);
        }
    }
}

struct BitWriter {
    out: Vec<u8>,
    acc: u32,
    n: u32,
}

impl BitWriter {
    fn put(&mut self, value: u32, bits: u32) {
        for i in (0..bits).rev() {
            self.acc = (self.acc << 1) | ((value >> i) & 1);
            self.n += 1;
            if self.n == 8 {
                self.out.push(self.acc as u8);
                if self.acc == 0xFF {
                    self.out.push(0); // byte stuffing
                }
                self.acc = 0;
                self.n = 0;
            }
        }
    }

    fn finish(mut self) -> Vec<u8> {
        while self.n != 0 {
            self.put(1, 1);
        }
        self.out
    }
}

/// JPEG lossless, one component, predictor 1 (left), point transform 0.
fn jpeg_lossless_encode(samples: &[u16], w: u32, h: u32, precision: u16) -> Vec<u8> {
    // Canonical Huffman table for difference categories 0..=16: 15 codes of 4 bits, 1 of 5, 1 of 6.
    let mut counts = [0u8; 16];
    counts[3] = 15;
    counts[4] = 1;
    counts[5] = 1;
    let symbols: Vec<u8> = (0..=16).collect();
    let mut codes = [(0u32, 0u32); 17];
    let (mut code, mut k) = (0u32, 0usize);
    for (len_minus_1, &count) in counts.iter().enumerate() {
        for _ in 0..count {
            codes[symbols[k] as usize] = (code, len_minus_1 as u32 + 1);
            code += 1;
            k += 1;
        }
        code <<= 1;
    }
    let mut out = vec![0xFF, 0xD8];
    // SOF3
    out.extend_from_slice(&[0xFF, 0xC3, 0, 11, precision as u8]);
    out.extend_from_slice(&(h as u16).to_be_bytes());
    out.extend_from_slice(&(w as u16).to_be_bytes());
    out.extend_from_slice(&[1, 1, 0x11, 0]);
    // DHT
    let dht_len = 2 + 1 + 16 + symbols.len();
    out.extend_from_slice(&[0xFF, 0xC4]);
    out.extend_from_slice(&(dht_len as u16).to_be_bytes());
    out.push(0x00);
    out.extend_from_slice(&counts);
    out.extend_from_slice(&symbols);
    // SOS: predictor 1, Se 0, Ah/Al 0
    out.extend_from_slice(&[0xFF, 0xDA, 0, 8, 1, 1, 0x00, 1, 0, 0]);
    let mut bits = BitWriter {
        out: Vec::new(),
        acc: 0,
        n: 0,
    };
    let (w, h) = (w as usize, h as usize);
    for y in 0..h {
        for x in 0..w {
            let value = samples[y * w + x] as i32;
            let pred = match (x, y) {
                (0, 0) => 1i32 << (precision - 1),
                (0, _) => samples[(y - 1) * w] as i32,
                _ => samples[y * w + x - 1] as i32,
            };
            let mut diff = (value - pred).rem_euclid(65536);
            if diff >= 32768 {
                diff -= 65536;
            }
            let category = if diff == -32768 {
                16
            } else {
                32 - (diff.unsigned_abs()).leading_zeros()
            };
            let (code, len) = codes[category as usize];
            bits.put(code, len);
            if category > 0 && category < 16 {
                let extra = if diff > 0 { diff } else { diff - 1 };
                bits.put(extra as u32 & ((1 << category) - 1), category);
            }
        }
    }
    out.extend(bits.finish());
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}

#[test]
fn jpeg_2000_lossless_matches_its_native_twin() {
    // Written by scripts/reference/j2k_fixtures.py (pydicom + OpenJPEG): dicom-rs cannot encode J2K.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for bits in [12, 8] {
        let native = cxr_image::load_image(&dir.join(format!("native_{bits}bit.dcm"))).unwrap();
        let j2k_path = dir.join(format!("j2k_lossless_{bits}bit.dcm"));
        let summary = inspect_dicom(&std::fs::read(&j2k_path).unwrap(), &j2k_path).unwrap();
        assert_eq!(summary.transfer_syntax_uid, uids::JPEG2000_LOSSLESS);
        let j2k = cxr_image::load_image(&j2k_path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((j2k.width, j2k.height), (W, H));
        assert_eq!(
            j2k.pixels, native.pixels,
            "{bits}-bit J2K differs from native"
        );
        // The pattern's bright disc is at (20, 15); MONOCHROME1 is inverted on reading.
        let disc = native.get(20, 15);
        if bits == 8 {
            assert!(disc < 0.2, "MONOCHROME1 disc should read dark: {disc}");
        } else {
            assert!(disc > 0.8, "MONOCHROME2 disc should read bright: {disc}");
        }
    }
}

#[test]
fn voi_lut_sequence_takes_precedence_over_the_window() {
    use dicom_core::value::DataSetSequence;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::InMemDicomObject;

    let img = pattern();
    let mut obj = build_dicom(
        &img,
        &DicomWriteOptions {
            bits_stored: 8,
            ..Default::default()
        },
    )
    .unwrap();
    // A LUT over stored values 100..=163 (64 entries, 8-bit output): a steep ramp that clips
    // everything below 100 to 0 and above 163 to 252. The window written by the writer is ignored.
    let data: Vec<u16> = (0..64).map(|i| i * 4).collect();
    let mut item = InMemDicomObject::new_empty();
    item.put(DataElement::new(
        tags::LUT_DESCRIPTOR,
        VR::US,
        PrimitiveValue::U16([64u16, 100, 8].into_iter().collect()),
    ));
    item.put(DataElement::new(
        tags::LUT_DATA,
        VR::US,
        PrimitiveValue::U16(data.iter().copied().collect()),
    ));
    obj.put(DataElement::new(
        tags::VOILUT_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(vec![item]),
    ));
    let out = decode(&to_bytes(&obj).unwrap());
    for (o, &v) in out.pixels.iter().zip(&img.pixels) {
        let stored = quantize(v, 8) as i32;
        let want = data[(stored - 100).clamp(0, 63) as usize] as f32 / 255.0;
        assert!(
            (o - want).abs() < 1e-6,
            "stored {stored}: got {o}, want {want}"
        );
    }
}

#[test]
fn sixteen_bit_png_keeps_its_precision() {
    let img = pattern();
    let png16 = img.to_luma16();
    let mut bytes = Vec::new();
    png16
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    let out = decode(&bytes);
    let err = max_abs_diff(&out.pixels, &expected(&img, 16));
    assert!(err < 1e-6, "16-bit PNG: {err}");
}

#[test]
fn random_corruption_never_panics() {
    // Flip bytes inside valid files of every syntax: each decode returns Ok or a named error.
    // (Before the length check in `decode_dicom`, some of these cost 0.5 s and gigabytes each.)
    let files: Vec<Vec<u8>> = one_file_per_syntax().into_iter().map(|(_, b)| b).collect();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut errors = 0;
    for file in &files {
        for _ in 0..400 {
            let mut bytes = file.clone();
            for _ in 0..1 + next() % 4 {
                // Mostly inside the pixel data at the end of the file, sometimes in the header.
                let at = if next() % 4 == 0 {
                    132 + next() as usize % 300
                } else {
                    bytes.len() - 1 - next() as usize % (bytes.len() / 2)
                };
                bytes[at] = next() as u8;
            }
            if next() % 5 == 0 {
                let keep = bytes.len() - next() as usize % (bytes.len() / 3);
                bytes.truncate(keep);
            }
            if let Err(e) = decode_image(&bytes, Path::new("fuzz.dcm")) {
                assert!(e.to_string().contains("fuzz.dcm"), "{e}");
                errors += 1;
            }
        }
    }
    assert!(
        errors > 0,
        "corruption should be detected at least sometimes"
    );
}

/// A small valid file of every transfer syntax llm-cxr reads (and two photometric variants), by
/// name: the corruption test above mutates them, and the fuzzer starts from them.
fn one_file_per_syntax() -> Vec<(&'static str, Vec<u8>)> {
    let img = pattern();
    let opts = DicomWriteOptions {
        bits_stored: 12,
        ..Default::default()
    };
    let eight_bits = DicomWriteOptions {
        bits_stored: 8,
        ..Default::default()
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let samples = stored_samples(&img, 12, Photometric::Monochrome2);
    let encapsulated = |uid: &str, frame: Vec<u8>| {
        let mut obj = build_dicom(&img, &opts).unwrap();
        encapsulate(&mut obj, uid, frame).unwrap();
        to_bytes(&obj).unwrap()
    };
    vec![
        ("explicit_le_12bit.dcm", encode_dicom(&img, &opts).unwrap()),
        (
            "explicit_le_rgb.dcm",
            encode_dicom(
                &img,
                &DicomWriteOptions {
                    photometric: Photometric::Rgb,
                    ..Default::default()
                },
            )
            .unwrap(),
        ),
        (
            "explicit_le_monochrome1.dcm",
            encode_dicom(
                &img,
                &DicomWriteOptions {
                    photometric: Photometric::Monochrome1,
                    rescale: Some((2.0, -100.0)),
                    window: Some((1000.0, 3000.0)),
                    ..opts.clone()
                },
            )
            .unwrap(),
        ),
        (
            "implicit_le.dcm",
            transcoded(&img, &opts, uids::IMPLICIT_VR_LITTLE_ENDIAN),
        ),
        (
            "deflated.dcm",
            transcoded(&img, &opts, uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN),
        ),
        (
            "jpeg_ls.dcm",
            transcoded(&img, &opts, uids::JPEGLS_LOSSLESS),
        ),
        (
            "jpeg_baseline.dcm",
            transcoded(&img, &eight_bits, uids::JPEG_BASELINE8_BIT),
        ),
        (
            "rle.dcm",
            encapsulated(uids::RLE_LOSSLESS, rle_encode(&samples, W, H, true)),
        ),
        (
            "jpeg_lossless.dcm",
            encapsulated(
                uids::JPEG_LOSSLESS_SV1,
                jpeg_lossless_encode(&samples, W, H, 12),
            ),
        ),
        (
            "j2k_lossless.dcm",
            std::fs::read(dir.join("j2k_lossless_12bit.dcm")).unwrap(),
        ),
    ]
}

/// Writes [`one_file_per_syntax`] to `<LLM_CXR_FUZZ_SEEDS>/dicom/`: the DICOM fuzzer's seeds.
#[test]
#[ignore = "a tool, not a check: scripts/fuzz.sh runs it with LLM_CXR_FUZZ_SEEDS set"]
fn write_fuzz_seeds() {
    let root = std::env::var_os("LLM_CXR_FUZZ_SEEDS")
        .expect("set LLM_CXR_FUZZ_SEEDS to the corpus folder");
    let dir = Path::new(&root).join("dicom");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in one_file_per_syntax() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn rle_frames_with_a_broken_segment_table_are_refused_before_decoding() {
    // Found by the fuzzer: dicom-rs's RLE reader indexes past a short segment (a panic) and
    // allocates what the segment count says (2^32 - 1 segments: 16 GiB).
    let img = pattern();
    let opts = DicomWriteOptions {
        bits_stored: 8,
        ..Default::default()
    };
    let good = rle_encode(
        &stored_samples(&img, 8, Photometric::Monochrome2),
        W,
        H,
        false,
    );
    let mut huge_count = good.clone();
    huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut short = good.clone();
    short.truncate(64 + (good.len() - 64) / 2);
    let mut outside = good.clone();
    outside[4..8].copy_from_slice(&(good.len() as u32 + 10).to_le_bytes());
    for (frame, says) in [
        (huge_count, "segments, but the samples need 1"),
        (short, "segment 0"),
        (outside, "segment 0 spans"),
    ] {
        let mut obj = build_dicom(&img, &opts).unwrap();
        encapsulate(&mut obj, uids::RLE_LOSSLESS, frame).unwrap();
        let e = decode_image(&to_bytes(&obj).unwrap(), Path::new("rle.dcm"))
            .expect_err("a broken RLE frame is refused")
            .to_string();
        assert!(
            e.contains("rle.dcm") && e.contains("RLE frame") && e.contains(says),
            "{e}"
        );
    }
}

#[test]
fn binary_values_of_a_partial_length_are_refused() {
    // Found by the fuzzer: dicom-parser reads len / size values of a binary VR but advances by
    // len, so a partial value shifts its reading and a later header came from the middle of an
    // element (a 4 GiB allocation). WindowCenter (0028,1050) "2048" relabelled FD: 4 bytes of an
    // 8-byte value.
    let good = encode_dicom(&pattern(), &DicomWriteOptions::default()).unwrap();
    let at = good
        .windows(6)
        .position(|w| w == [0x28, 0x00, 0x50, 0x10, b'D', b'S'])
        .expect("a WindowCenter element");
    let mut bytes = good.clone();
    bytes[at + 4..at + 6].copy_from_slice(b"FD");
    let e = decode_image(&bytes, Path::new("partial.dcm"))
        .expect_err("a partial binary value is refused")
        .to_string();
    assert!(
        e.contains("partial.dcm") && e.contains("(0028,1050)") && e.contains("whole 8-byte values"),
        "{e}"
    );
}

#[test]
fn a_file_meta_group_length_that_disagrees_is_refused() {
    // Found by the fuzzer: dicom-object starts the data set where (0002,0000) says the meta group
    // ends; a wrong length made it read (and inflate) bytes the length walk had not checked.
    let good = encode_dicom(&pattern(), &DicomWriteOptions::default()).unwrap();
    assert_eq!(&good[132..140], &[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
    let mut bytes = good.clone();
    let stated = u32::from_le_bytes(bytes[140..144].try_into().unwrap());
    bytes[140..144].copy_from_slice(&(stated + 24).to_le_bytes());
    let e = decode_image(&bytes, Path::new("meta.dcm"))
        .expect_err("a wrong meta group length is refused")
        .to_string();
    assert!(
        e.contains("meta.dcm") && e.contains(&format!("says {} bytes", stated + 24)),
        "{e}"
    );
}
