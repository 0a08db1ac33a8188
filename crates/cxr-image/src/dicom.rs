//! DICOM radiographs: decoding to a [`GrayImage`], a PHI-safe summary for `llm-cxr dicom inspect`,
//! and a writer (used by the phantom generator and by the round-trip tests).
//!
//! Decoding goes through dicom-rs: the Modality LUT (Rescale Slope/Intercept), then the first VOI
//! transform (VOI LUT Sequence if present, else the first Window Center/Width, else min-max),
//! then MONOCHROME1 is inverted so that bright always means dense. Every compressed transfer syntax
//! that dicom-transfer-syntax-registry decodes in this build is accepted (JPEG baseline, extended
//! and lossless, RLE, JPEG-LS through CharLS, JPEG 2000 through openjp2, deflate).
//!
//! PHI: patient tag values never enter a log line, an error or an output. Errors carry only the
//! path, the technical attribute name and sizes; [`DicomSummary`] lists which PHI tags exist by
//! name only.

mod bounded;
mod limits;

use std::cell::RefCell;
use std::path::Path;

use bounded::BoundedDecoder;

pub use limits::{MAX_FRAMES, MAX_INFLATED_BYTES};

use dicom_core::value::{PixelFragmentSequence, Value};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::text::SpecificCharacterSet;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{FileMetaTable, FileMetaTableBuilder, InMemDicomObject};
use dicom_parser::stateful::decode::{CharacterSetOverride, DynStatefulDecoder};
use dicom_pixeldata::{ConvertOptions, PixelDecoder, VoiLutOption};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use crate::{check_dimensions, gray_from_dynamic, GrayImage, ImageError, ImageFormat};

type FileObject = dicom_object::FileDicomObject<InMemDicomObject>;

fn corrupt(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        path: path.to_path_buf(),
        format: ImageFormat::Dicom,
        reason: reason.into(),
    }
}

/// Parses a DICOM file held in memory (with its 128-byte preamble and `DICM` magic).
///
/// The file meta group is read by dicom-object after [`limits::check_meta_group`]; the data set is
/// read by dicom-parser's own reader through a [`BoundedDecoder`], which refuses any declared
/// length past the end of the data set before a value is allocated. A deflated data set is
/// inflated first (capped at [`MAX_INFLATED_BYTES`]).
fn parse(bytes: &[u8], path: &Path) -> Result<FileObject, ImageError> {
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err(corrupt(
            path,
            "missing the DICM magic after the 128-byte preamble",
        ));
    }
    let data_set_start = 128 + limits::check_meta_group(&bytes[128..], path)?;
    let mut meta_bytes = &bytes[128..data_set_start];
    let meta = FileMetaTable::from_reader(&mut meta_bytes)
        .map_err(|e| corrupt(path, format!("file meta group: {e}")))?;
    if !meta_bytes.is_empty() {
        return Err(corrupt(
            path,
            "the file meta group ends before its stated length",
        ));
    }
    let uid = meta.transfer_syntax().to_string();
    let ts =
        TransferSyntaxRegistry
            .get(&uid)
            .ok_or_else(|| ImageError::UnsupportedTransferSyntax {
                path: path.to_path_buf(),
                uid: uid.clone(),
                name: "not in this build's registry".into(),
            })?;
    // Every syntax whose data set is deflated: deflated explicit VR, and JPIP's referenced
    // deflate (classic and HTJ2K). Inflated, it reads as explicit VR little endian.
    let deflated = [
        uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        uids::JPIP_REFERENCED_DEFLATE,
        uids::JPIPHTJ2K_REFERENCED_DEFLATE,
    ];
    let inflated;
    let (data_set, ts) = if deflated.contains(&uid.as_str()) {
        inflated = limits::inflate_capped(&bytes[data_set_start..], path)?;
        let explicit = TransferSyntaxRegistry
            .get(uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .expect("explicit VR little endian is always registered");
        (&inflated[..], explicit)
    } else {
        (&bytes[data_set_start..], ts)
    };
    let decoder = DynStatefulDecoder::new_with_override(
        data_set,
        ts,
        SpecificCharacterSet::default(),
        CharacterSetOverride::default(),
        0,
    )
    .map_err(|e| classify_parse_error(path, &e.to_string()))?;
    let refusal = RefCell::new(None);
    let bounded = BoundedDecoder::new(decoder, data_set.len() as u64, &refusal);
    let obj = InMemDicomObject::read_dataset(bounded).map_err(|e| match refusal.take() {
        Some(reason) => corrupt(path, reason),
        None => classify_parse_error(path, &e.to_string()),
    })?;
    Ok(obj.with_exact_meta(meta))
}

/// dicom-object reports an unknown transfer syntax as a parse error; give it its own variant.
fn classify_parse_error(path: &Path, message: &str) -> ImageError {
    if message.to_ascii_lowercase().contains("transfer syntax") {
        let uid = message
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .find(|s| s.matches('.').count() >= 3)
            .unwrap_or("unknown")
            .to_string();
        return ImageError::UnsupportedTransferSyntax {
            path: path.to_path_buf(),
            uid,
            name: "not in this build's registry".into(),
        };
    }
    corrupt(path, message.to_string())
}

fn int_attr(obj: &InMemDicomObject, tag: Tag) -> Option<u32> {
    obj.element_opt(tag).ok()??.to_int::<u32>().ok()
}

/// Decodes the first frame of a DICOM radiograph.
pub fn decode_dicom(bytes: &[u8], path: &Path) -> Result<GrayImage, ImageError> {
    let obj = parse(bytes, path)?;
    let ts_uid = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let Some(ts) = TransferSyntaxRegistry.get(&ts_uid) else {
        return Err(ImageError::UnsupportedTransferSyntax {
            path: path.to_path_buf(),
            uid: ts_uid,
            name: "unknown".into(),
        });
    };
    if ts.is_unsupported_pixel_encapsulation() || !ts.can_decode_all() {
        return Err(ImageError::UnsupportedTransferSyntax {
            path: path.to_path_buf(),
            name: ts.name().to_string(),
            uid: ts_uid,
        });
    }
    let missing = |attribute| ImageError::MissingAttribute {
        path: path.to_path_buf(),
        attribute,
    };
    let rows = int_attr(&obj, tags::ROWS).ok_or_else(|| missing("Rows"))?;
    let cols = int_attr(&obj, tags::COLUMNS).ok_or_else(|| missing("Columns"))?;
    check_dimensions(path, cols as u64, rows as u64)?;
    let samples = int_attr(&obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let bits_allocated =
        int_attr(&obj, tags::BITS_ALLOCATED).ok_or_else(|| missing("BitsAllocated"))?;
    let bits_stored = int_attr(&obj, tags::BITS_STORED).unwrap_or(bits_allocated);
    let unsupported = |reason: String| ImageError::UnsupportedDicom {
        path: path.to_path_buf(),
        reason,
    };
    if samples != 1 && samples != 3 {
        return Err(unsupported(format!(
            "SamplesPerPixel {samples} (only 1 or 3)"
        )));
    }
    if !(bits_allocated == 8 || bits_allocated == 16) || bits_stored == 0 || bits_stored > 16 {
        return Err(unsupported(format!(
            "BitsAllocated {bits_allocated} / BitsStored {bits_stored} (BitsStored up to 16 in 8- or 16-bit words)"
        )));
    }
    let frames = int_attr(&obj, tags::NUMBER_OF_FRAMES).unwrap_or(1);
    if frames == 0 || frames > MAX_FRAMES {
        return Err(unsupported(format!(
            "NumberOfFrames {frames} (1 to {MAX_FRAMES} accepted; the first is used)"
        )));
    }
    let pixel_data = obj
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .ok_or_else(|| missing("PixelData"))?;
    if let Value::PixelSequence(seq) = pixel_data.value() {
        // Codecs allocate what their own header says: it must agree with the checked attributes.
        let first = seq.fragments().first().map_or(&[][..], |f| f.as_slice());
        if ts_uid == uids::RLE_LOSSLESS {
            let pixels = rows as u64 * cols as u64;
            let segments = samples * bits_allocated.div_ceil(8);
            limits::check_rle_frame(first, pixels, segments, path)?;
        }
        // The codec decodes the fragment a Basic Offset Table points at, not always the first:
        // every fragment that starts a codestream (JPEG SOI, JPEG 2000 SOC) is checked.
        for (k, fragment) in seq.fragments().iter().enumerate() {
            let starts = fragment.starts_with(&[0xFF, 0xD8]) || fragment.starts_with(&[0xFF, 0x4F]);
            if k > 0 && !starts {
                continue;
            }
            if let Some(size) = limits::codestream_size(&ts_uid, fragment, path)? {
                if (size.width, size.height, size.components) != (cols, rows, samples) {
                    return Err(corrupt(
                        path,
                        format!(
                            "fragment {k}'s codestream declares {}x{} with {} components but the header says {cols}x{rows} with {samples}",
                            size.width, size.height, size.components
                        ),
                    ));
                }
            }
        }
    }
    if !ts.is_encapsulated_pixel_data() {
        // A native frame must be fully present before dicom-pixeldata slices it.
        let needed = rows as u64 * cols as u64 * samples as u64 * (bits_allocated as u64 / 8);
        let have = pixel_data
            .value()
            .to_bytes()
            .map(|b| b.len() as u64)
            .unwrap_or(0);
        if have < needed {
            return Err(corrupt(
                path,
                format!("PixelData holds {have} bytes but Rows x Columns x samples needs {needed}"),
            ));
        }
    }
    // Codecs panic on some corrupt streams (dicom-rs's RLE reader indexes past its segment
    // table, found by `random_corruption_never_panics`): a broken file is an error, not a crash.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        obj.decode_pixel_data_frame(0)
    }))
    .map_err(|_| corrupt(path, "pixel data decoder failed"))?
    .map_err(|e| corrupt(path, format!("cannot decode pixel data: {e}")))?;
    if decoded.rows() != rows || decoded.columns() != cols {
        return Err(corrupt(
            path,
            format!(
                "decoded frame is {}x{} but the header says {cols}x{rows}",
                decoded.columns(),
                decoded.rows()
            ),
        ));
    }
    if decoded.samples_per_pixel() == 3 {
        let img = decoded
            .to_dynamic_image(0)
            .map_err(|e| corrupt(path, format!("cannot convert RGB pixel data: {e}")))?;
        return Ok(gray_from_dynamic(img));
    }
    // Modality LUT (rescale) by dicom-pixeldata, in f32; the VOI transform is ours, also in f32,
    // because dicom-pixeldata's integer LUTs truncate and lose a gray level at 8 bits.
    let rescaled: Vec<f32> = decoded
        .to_vec_frame_with_options(
            0,
            &ConvertOptions::new().with_voi_lut(VoiLutOption::Identity),
        )
        .map_err(|e| corrupt(path, format!("cannot rescale pixel data: {e}")))?;
    let mut pixels = apply_voi(&decoded, rescaled)
        .map_err(|e| corrupt(path, format!("invalid VOI attributes: {e}")))?;
    if decoded.photometric_interpretation()
        == &dicom_pixeldata::PhotometricInterpretation::Monochrome1
    {
        pixels.iter_mut().for_each(|v| *v = 1.0 - *v);
    }
    GrayImage::new(cols, rows, pixels)
        .ok_or_else(|| corrupt(path, "decoded frame has the wrong size"))
}

/// The first VOI transform (PS3.3 C.11.2): the VOI LUT Sequence if present, else the first
/// window with its VOI LUT Function, else min-max normalisation. Output in [0, 1].
fn apply_voi(
    decoded: &dicom_pixeldata::DecodedPixelData<'_>,
    mut values: Vec<f32>,
) -> Result<Vec<f32>, dicom_pixeldata::Error> {
    use dicom_pixeldata::VoiLutFunction;
    if let Some(lut) = decoded.voi_lut_sequence()?.and_then(|luts| luts.first()) {
        if !lut.data.is_empty() {
            let max = ((1u32 << lut.bits_stored.clamp(1, 16)) - 1) as f32;
            let last = lut.data.len() as i64 - 1;
            for v in &mut values {
                let i = (v.round() as i64 - lut.min_pixel_value as i64).clamp(0, last);
                *v = lut.data[i as usize] as f32 / max;
            }
            return Ok(values);
        }
    }
    if let Some(window) = decoded.window()?.and_then(|w| w.first().copied()) {
        let function = decoded
            .voi_lut_function()?
            .and_then(|f| f.first().copied())
            .unwrap_or_default();
        let (c, w) = (window.center, window.width.max(1.0));
        for v in &mut values {
            let x = *v as f64;
            let y = match function {
                VoiLutFunction::Linear => {
                    ((x - (c - 0.5)) / (w - 1.0).max(1e-9) + 0.5).clamp(0.0, 1.0)
                }
                VoiLutFunction::LinearExact => ((x - c) / w + 0.5).clamp(0.0, 1.0),
                VoiLutFunction::Sigmoid => 1.0 / (1.0 + (-4.0 * (x - c) / w).exp()),
            };
            *v = y as f32;
        }
        return Ok(values);
    }
    let (lo, hi) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let span = (hi - lo).max(f32::MIN_POSITIVE);
    values.iter_mut().for_each(|v| *v = (*v - lo) / span);
    Ok(values)
}

/// Patient and study identifiers whose values must never leave the file (DICOM PS3.15 basic
/// de-identification profile, the tags found in radiographs).
pub const PHI_TAGS: &[(Tag, &str)] = &[
    (tags::PATIENT_NAME, "PatientName"),
    (tags::PATIENT_ID, "PatientID"),
    (tags::PATIENT_BIRTH_DATE, "PatientBirthDate"),
    (tags::PATIENT_BIRTH_TIME, "PatientBirthTime"),
    (tags::PATIENT_SEX, "PatientSex"),
    (tags::PATIENT_AGE, "PatientAge"),
    (tags::PATIENT_SIZE, "PatientSize"),
    (tags::PATIENT_WEIGHT, "PatientWeight"),
    (tags::PATIENT_ADDRESS, "PatientAddress"),
    (tags::PATIENT_TELEPHONE_NUMBERS, "PatientTelephoneNumbers"),
    (tags::PATIENT_MOTHER_BIRTH_NAME, "PatientMotherBirthName"),
    (tags::OTHER_PATIENT_I_DS_SEQUENCE, "OtherPatientIDsSequence"),
    (tags::OTHER_PATIENT_NAMES, "OtherPatientNames"),
    (Tag(0x0010, 0x2160), "EthnicGroup"),
    (tags::PATIENT_COMMENTS, "PatientComments"),
    (Tag(0x0010, 0x1090), "MedicalRecordLocator"),
    (tags::ACCESSION_NUMBER, "AccessionNumber"),
    (tags::STUDY_ID, "StudyID"),
    (tags::STUDY_DATE, "StudyDate"),
    (tags::STUDY_TIME, "StudyTime"),
    (tags::SERIES_DATE, "SeriesDate"),
    (tags::ACQUISITION_DATE, "AcquisitionDate"),
    (tags::CONTENT_DATE, "ContentDate"),
    (tags::STUDY_INSTANCE_UID, "StudyInstanceUID"),
    (tags::SERIES_INSTANCE_UID, "SeriesInstanceUID"),
    (tags::SOP_INSTANCE_UID, "SOPInstanceUID"),
    (tags::INSTITUTION_NAME, "InstitutionName"),
    (tags::INSTITUTION_ADDRESS, "InstitutionAddress"),
    (tags::REFERRING_PHYSICIAN_NAME, "ReferringPhysicianName"),
    (tags::PERFORMING_PHYSICIAN_NAME, "PerformingPhysicianName"),
    (tags::OPERATORS_NAME, "OperatorsName"),
    (tags::STATION_NAME, "StationName"),
    (tags::DEVICE_SERIAL_NUMBER, "DeviceSerialNumber"),
];

/// Technical attributes that say how to read the pixels; safe to print.
const TECHNICAL_TAGS: &[(Tag, &str)] = &[
    (tags::SOP_CLASS_UID, "SOPClassUID"),
    (tags::MODALITY, "Modality"),
    (tags::VIEW_POSITION, "ViewPosition"),
    (tags::BODY_PART_EXAMINED, "BodyPartExamined"),
    (tags::MANUFACTURER, "Manufacturer"),
    (
        tags::PHOTOMETRIC_INTERPRETATION,
        "PhotometricInterpretation",
    ),
    (tags::ROWS, "Rows"),
    (tags::COLUMNS, "Columns"),
    (tags::SAMPLES_PER_PIXEL, "SamplesPerPixel"),
    (tags::PLANAR_CONFIGURATION, "PlanarConfiguration"),
    (tags::NUMBER_OF_FRAMES, "NumberOfFrames"),
    (tags::BITS_ALLOCATED, "BitsAllocated"),
    (tags::BITS_STORED, "BitsStored"),
    (tags::HIGH_BIT, "HighBit"),
    (tags::PIXEL_REPRESENTATION, "PixelRepresentation"),
    (tags::RESCALE_SLOPE, "RescaleSlope"),
    (tags::RESCALE_INTERCEPT, "RescaleIntercept"),
    (tags::RESCALE_TYPE, "RescaleType"),
    (tags::WINDOW_CENTER, "WindowCenter"),
    (tags::WINDOW_WIDTH, "WindowWidth"),
    (tags::VOILUT_FUNCTION, "VOILUTFunction"),
    (tags::PIXEL_SPACING, "PixelSpacing"),
    (tags::IMAGER_PIXEL_SPACING, "ImagerPixelSpacing"),
    (tags::LOSSY_IMAGE_COMPRESSION, "LossyImageCompression"),
    (tags::KVP, "KVP"),
];

/// What `llm-cxr dicom inspect` prints: technical attributes with values, PHI tags by name only.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomSummary {
    pub transfer_syntax_uid: String,
    pub transfer_syntax_name: String,
    /// Whether this build can decode the pixel data.
    pub decodable: bool,
    pub technical: Vec<(&'static str, String)>,
    pub has_voi_lut_sequence: bool,
    /// Names of the PHI tags present in the file (values are never read out).
    pub phi_present: Vec<&'static str>,
}

/// Summarises a DICOM file without exposing any patient tag value.
pub fn inspect_dicom(bytes: &[u8], path: &Path) -> Result<DicomSummary, ImageError> {
    let obj = parse(bytes, path)?;
    let uid = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let ts = TransferSyntaxRegistry.get(&uid);
    let technical = TECHNICAL_TAGS
        .iter()
        .filter_map(|&(tag, name)| {
            let value = obj.element_opt(tag).ok()??.to_str().ok()?;
            Some((name, value.trim().to_string()))
        })
        .collect();
    let phi_present = PHI_TAGS
        .iter()
        .filter(|&&(tag, _)| matches!(obj.element_opt(tag), Ok(Some(_))))
        .map(|&(_, name)| name)
        .collect();
    Ok(DicomSummary {
        transfer_syntax_name: ts.map_or("unknown".into(), |t| t.name().to_string()),
        decodable: ts
            .is_some_and(|t| !t.is_unsupported_pixel_encapsulation() && t.can_decode_all()),
        transfer_syntax_uid: uid,
        technical,
        has_voi_lut_sequence: matches!(obj.element_opt(tags::VOILUT_SEQUENCE), Ok(Some(_))),
        phi_present,
    })
}

/// How a grayscale image is stored in a DICOM file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Photometric {
    /// Bright = dense (the usual).
    Monochrome2,
    /// Bright = air: stored values are inverted.
    Monochrome1,
    /// Gray replicated into 8-bit RGB.
    Rgb,
}

/// Options for [`encode_dicom`]. The defaults make a 12-bit MONOCHROME2 DX image in explicit VR
/// little endian with a window covering the full range.
#[derive(Debug, Clone)]
pub struct DicomWriteOptions {
    pub photometric: Photometric,
    /// 1..=16; 8 or fewer are stored in 8-bit words, more in 16-bit words. RGB is always 8.
    pub bits_stored: u16,
    /// Rescale (slope, intercept) applied by readers to stored values.
    pub rescale: Option<(f64, f64)>,
    /// Window (center, width) in rescaled units; `None` writes one that covers the full range.
    pub window: Option<(f64, f64)>,
    /// Synthetic identifiers to write (never real PHI): patient name, patient id.
    pub patient: Option<(String, String)>,
    pub view_position: Option<String>,
}

impl Default for DicomWriteOptions {
    fn default() -> Self {
        Self {
            photometric: Photometric::Monochrome2,
            bits_stored: 12,
            rescale: None,
            window: None,
            patient: None,
            view_position: None,
        }
    }
}

/// Why a DICOM file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DicomWriteError {
    #[error("cannot write DICOM: {0}")]
    Encode(String),
    #[error("BitsStored {0} is outside 1..=16")]
    BitsStored(u16),
}

/// The stored integer for a [0, 1] value at `bits` bits (before photometric inversion).
pub fn quantize(value: f32, bits: u16) -> u16 {
    let max = ((1u32 << bits) - 1) as f32;
    (value.clamp(0.0, 1.0) * max).round() as u16
}

/// Builds an in-memory DICOM object in explicit VR little endian with native pixel data.
pub fn build_dicom(
    img: &GrayImage,
    opts: &DicomWriteOptions,
) -> Result<FileObject, DicomWriteError> {
    let bits = if opts.photometric == Photometric::Rgb {
        8
    } else {
        opts.bits_stored
    };
    if !(1..=16).contains(&bits) {
        return Err(DicomWriteError::BitsStored(bits));
    }
    let allocated: u16 = if bits <= 8 { 8 } else { 16 };
    let max = (1u32 << bits) - 1;
    let stored: Vec<u16> = img
        .pixels
        .iter()
        .map(|&v| {
            let q = quantize(v, bits);
            if opts.photometric == Photometric::Monochrome1 {
                max as u16 - q
            } else {
                q
            }
        })
        .collect();
    let pixel_bytes: Vec<u8> = match (opts.photometric, allocated) {
        (Photometric::Rgb, _) => stored.iter().flat_map(|&v| [v as u8; 3]).collect(),
        (_, 8) => stored.iter().map(|&v| v as u8).collect(),
        _ => stored.iter().flat_map(|&v| v.to_le_bytes()).collect(),
    };
    let mut obj = InMemDicomObject::new_empty();
    let put_str = |obj: &mut InMemDicomObject, tag, vr, s: &str| {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from(s)));
    };
    let sop_instance = format!("2.25.{}", fingerprint(&pixel_bytes));
    put_str(
        &mut obj,
        tags::SOP_CLASS_UID,
        VR::UI,
        uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
    );
    put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, &sop_instance);
    put_str(&mut obj, tags::MODALITY, VR::CS, "DX");
    put_str(&mut obj, tags::BODY_PART_EXAMINED, VR::CS, "CHEST");
    if let Some(view) = &opts.view_position {
        put_str(&mut obj, tags::VIEW_POSITION, VR::CS, view);
    }
    if let Some((name, id)) = &opts.patient {
        put_str(&mut obj, tags::PATIENT_NAME, VR::PN, name);
        put_str(&mut obj, tags::PATIENT_ID, VR::LO, id);
    }
    let photometric = match opts.photometric {
        Photometric::Monochrome2 => "MONOCHROME2",
        Photometric::Monochrome1 => "MONOCHROME1",
        Photometric::Rgb => "RGB",
    };
    let samples: u16 = if opts.photometric == Photometric::Rgb {
        3
    } else {
        1
    };
    let put_us = |obj: &mut InMemDicomObject, tag, v: u16| {
        obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
    };
    put_us(&mut obj, tags::SAMPLES_PER_PIXEL, samples);
    put_str(
        &mut obj,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        photometric,
    );
    if samples == 3 {
        put_us(&mut obj, tags::PLANAR_CONFIGURATION, 0);
    }
    put_us(&mut obj, tags::ROWS, img.height as u16);
    put_us(&mut obj, tags::COLUMNS, img.width as u16);
    put_us(&mut obj, tags::BITS_ALLOCATED, allocated);
    put_us(&mut obj, tags::BITS_STORED, bits);
    put_us(&mut obj, tags::HIGH_BIT, bits - 1);
    put_us(&mut obj, tags::PIXEL_REPRESENTATION, 0);
    if samples == 1 {
        let (slope, intercept) = opts.rescale.unwrap_or((1.0, 0.0));
        if opts.rescale.is_some() {
            put_str(&mut obj, tags::RESCALE_SLOPE, VR::DS, &format!("{slope}"));
            put_str(
                &mut obj,
                tags::RESCALE_INTERCEPT,
                VR::DS,
                &format!("{intercept}"),
            );
        }
        // A linear window covering [lo, hi] exactly: width hi-lo+1, center (lo+hi+1)/2.
        let (lo, hi) = {
            let a = intercept;
            let b = slope * max as f64 + intercept;
            (a.min(b), a.max(b))
        };
        let (center, width) = opts
            .window
            .unwrap_or(((lo + hi + 1.0) / 2.0, hi - lo + 1.0));
        put_str(&mut obj, tags::WINDOW_CENTER, VR::DS, &format!("{center}"));
        put_str(&mut obj, tags::WINDOW_WIDTH, VR::DS, &format!("{width}"));
    }
    let pixel_vr = if allocated == 8 { VR::OB } else { VR::OW };
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        pixel_vr,
        PrimitiveValue::from(pixel_bytes),
    ));
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .media_storage_sop_class_uid(uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION)
        .media_storage_sop_instance_uid(sop_instance.as_str());
    obj.with_meta(meta)
        .map_err(|e| DicomWriteError::Encode(e.to_string()))
}

/// Replaces native pixel data by already-compressed frames (one fragment per frame) under the
/// given encapsulated transfer syntax. For encoders dicom-rs lacks (RLE, JPEG lossless).
pub fn encapsulate(
    obj: &mut FileObject,
    transfer_syntax_uid: &str,
    frame: Vec<u8>,
) -> Result<(), DicomWriteError> {
    let mut frame = frame;
    if frame.len() % 2 == 1 {
        frame.push(0);
    }
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        Value::PixelSequence(PixelFragmentSequence::new(vec![], vec![frame])),
    ));
    let ts = TransferSyntaxRegistry
        .get(transfer_syntax_uid)
        .ok_or_else(|| {
            DicomWriteError::Encode(format!("unknown transfer syntax {transfer_syntax_uid}"))
        })?;
    obj.meta_mut().set_transfer_syntax(ts);
    Ok(())
}

/// Serialises a DICOM object with preamble and meta group.
pub fn to_bytes(obj: &FileObject) -> Result<Vec<u8>, DicomWriteError> {
    let mut out = Vec::new();
    obj.write_all(&mut out)
        .map_err(|e| DicomWriteError::Encode(e.to_string()))?;
    Ok(out)
}

/// Encodes a gray image as a DICOM file in explicit VR little endian.
pub fn encode_dicom(img: &GrayImage, opts: &DicomWriteOptions) -> Result<Vec<u8>, DicomWriteError> {
    to_bytes(&build_dicom(img, opts)?)
}

/// A stable decimal fingerprint for deterministic UIDs (FNV-1a, 64-bit).
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
