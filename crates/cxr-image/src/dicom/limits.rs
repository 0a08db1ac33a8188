//! Bounds checked before dicom-rs allocates anything a DICOM file declares.
//!
//! dicom-parser reserves and zero-fills each value's declared length before reading it, so one
//! corrupt length field would cost up to 4 GiB; codecs size their output from their own
//! codestream header, not from the Rows/Columns we check. Here: the file meta group is walked
//! (the data set's lengths are checked as dicom-parser reads them, in `bounded.rs`); a deflated
//! data set is inflated with a cap; the frame count is capped; a JPEG, JPEG-LS or JPEG 2000 frame
//! must declare the validated Rows, Columns and samples before a decoder sees it; an RLE frame's
//! segment table must fit.

use std::io::Read;
use std::path::Path;

use dicom_dictionary_std::uids;

use super::corrupt;
use crate::ImageError;

/// The most frames a file may declare. Radiographs hold one; we decode only the first, but
/// dicom-pixeldata sizes per-frame tables from this count.
pub const MAX_FRAMES: u32 = 1024;
/// What a deflated data set may inflate to: the same limit as any file on disk.
pub const MAX_INFLATED_BYTES: u64 = crate::MAX_FILE_BYTES;

/// Walks the file meta group (group 0002, explicit VR little endian, from the `DICM` magic at
/// the start of `data`) and returns where the data set starts. Every element must fit in the
/// file, and (0002,0000) must state the length its elements take: dicom-object reads the meta
/// group by that length and the data set from where it says the group ends.
pub(super) fn check_meta_group(data: &[u8], path: &Path) -> Result<usize, ImageError> {
    let mut pos = 4;
    // (where the group's elements start, what (0002,0000) says they take)
    let mut group_length: Option<(usize, u32)> = None;
    while pos + 8 <= data.len() && u16_at(data, pos) == 0x0002 {
        let element = u16_at(data, pos + 2);
        let Some((h, len)) = header(data, pos) else {
            break;
        };
        let remaining = data.len() - pos - h;
        if len == u32::MAX || len as usize > remaining {
            return Err(corrupt(
                path,
                format!(
                    "element (0002,{element:04X}) claims {len} bytes but only {remaining} remain"
                ),
            ));
        }
        if element == 0x0000 && len == 4 {
            group_length = Some((pos + h + 4, u32_at(data, pos + h)));
        }
        pos += h + len as usize;
    }
    let Some((start, stated)) = group_length else {
        return Err(corrupt(
            path,
            "the file meta group has no group length (0002,0000)",
        ));
    };
    if pos - start != stated as usize {
        return Err(corrupt(
            path,
            format!(
                "the file meta group length (0002,0000) says {stated} bytes but its elements take {}",
                pos - start
            ),
        ));
    }
    Ok(pos)
}

/// Raw deflate (PS3.5 A.5), refused past [`MAX_INFLATED_BYTES`]. Deflate expands at most about
/// 1032:1, so a small file cannot reach the cap: the cap only matters for large ones.
pub(super) fn inflate_capped(compressed: &[u8], path: &Path) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(compressed)
        .take(MAX_INFLATED_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(path, format!("deflated data set does not inflate: {e}")))?;
    if out.len() as u64 > MAX_INFLATED_BYTES {
        return Err(corrupt(
            path,
            format!("deflated data set inflates past {MAX_INFLATED_BYTES} bytes"),
        ));
    }
    Ok(out)
}

fn u16_at(data: &[u8], p: usize) -> u16 {
    u16::from_le_bytes([data[p], data[p + 1]])
}

fn u32_at(data: &[u8], p: usize) -> u32 {
    u32::from_le_bytes([data[p], data[p + 1], data[p + 2], data[p + 3]])
}

/// (header size, value length) of the explicit VR little endian element at `pos`.
fn header(data: &[u8], pos: usize) -> Option<(usize, u32)> {
    if pos + 8 > data.len() {
        return None;
    }
    // PS3.5 7.1.2: these VRs have a 2-byte length; every other one, and (as dicom-parser reads
    // it) any unknown VR, has a reserved field and a 4-byte length.
    let short = matches!(
        &data[pos + 4..pos + 6],
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    );
    if short {
        Some((8, u16_at(data, pos + 6) as u32))
    } else {
        (pos + 12 <= data.len()).then(|| (12, u32_at(data, pos + 8)))
    }
}

/// What a compressed frame's own header declares.
#[derive(Debug, PartialEq)]
pub(super) struct CodestreamSize {
    pub width: u32,
    pub height: u32,
    pub components: u32,
}

/// Reads the frame size from the start of a JPEG (ITU T.81), JPEG-LS (T.87, SOF55) or JPEG 2000
/// (T.800, SIZ) codestream; `None` for other syntaxes. Errors when the header cannot be found.
pub(super) fn codestream_size(
    ts_uid: &str,
    frame: &[u8],
    path: &Path,
) -> Result<Option<CodestreamSize>, ImageError> {
    let jpeg_family = [
        uids::JPEG_BASELINE8_BIT,
        uids::JPEG_EXTENDED12_BIT,
        uids::JPEG_LOSSLESS,
        uids::JPEG_LOSSLESS_SV1,
        uids::JPEGLS_LOSSLESS,
        uids::JPEGLS_NEAR_LOSSLESS,
    ];
    let j2k = [uids::JPEG2000_LOSSLESS, uids::JPEG2000];
    if jpeg_family.contains(&ts_uid) {
        jpeg_frame_header(frame)
            .map(Some)
            .ok_or_else(|| corrupt(path, "the first frame has no JPEG frame header (SOF)"))
    } else if j2k.contains(&ts_uid) {
        j2k_siz(frame)
            .map(Some)
            .ok_or_else(|| corrupt(path, "the first frame has no JPEG 2000 SIZ header"))
    } else {
        Ok(None)
    }
}

/// The SOF segment's lines, samples per line and components: every SOFn of T.81 (C0-CF but C4
/// DHT, C8 JPG, CC DAC) and JPEG-LS's SOF55 (F7) share one layout.
fn jpeg_frame_header(d: &[u8]) -> Option<CodestreamSize> {
    if d.get(..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut p = 2;
    loop {
        // Fill bytes (0xFF runs) may precede a marker.
        while *d.get(p)? == 0xFF && *d.get(p + 1)? == 0xFF {
            p += 1;
        }
        if *d.get(p)? != 0xFF {
            return None;
        }
        let marker = *d.get(p + 1)?;
        let len = u16::from_be_bytes([*d.get(p + 2)?, *d.get(p + 3)?]) as usize;
        let is_sof = matches!(marker, 0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC))
            || marker == 0xF7;
        if is_sof {
            let seg = d.get(p + 4..p + 2 + len)?;
            return Some(CodestreamSize {
                height: u16::from_be_bytes([*seg.get(1)?, *seg.get(2)?]) as u32,
                width: u16::from_be_bytes([*seg.get(3)?, *seg.get(4)?]) as u32,
                components: *seg.get(5)? as u32,
            });
        }
        if marker == 0xDA || len < 2 {
            return None; // scan data before any frame header
        }
        p += 2 + len;
    }
}

/// JPEG 2000's SIZ segment, right after SOC (FF4F): the image area and component count. A JP2
/// file wrapper (boxes) is searched for its codestream's SOC first.
fn j2k_siz(d: &[u8]) -> Option<CodestreamSize> {
    let soc = d.windows(4).position(|w| w == [0xFF, 0x4F, 0xFF, 0x51])?;
    let s = d.get(soc + 4..soc + 4 + 38)?;
    let be32 = |o: usize| u32::from_be_bytes([s[o], s[o + 1], s[o + 2], s[o + 3]]);
    // Lsiz(2) Rsiz(2) Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz Csiz(2)
    let (xsiz, ysiz, xo, yo) = (be32(4), be32(8), be32(12), be32(16));
    Some(CodestreamSize {
        width: xsiz.checked_sub(xo)?,
        height: ysiz.checked_sub(yo)?,
        components: u16::from_be_bytes([s[36], s[37]]) as u32,
    })
}

/// Checks an RLE Lossless frame (PS3.5 Annex G) before dicom-rs decodes it: its reader trusts the
/// segment table (a count of 2^32 allocates 16 GiB; a short segment is indexed past its end,
/// found by the fuzzer). The table must hold one segment per byte of each sample, in order, inside
/// the frame, and each segment's PackBits runs must be whole and give `rows x cols` bytes.
pub(super) fn check_rle_frame(
    frame: &[u8],
    pixels: u64,
    segments_expected: u32,
    path: &Path,
) -> Result<(), ImageError> {
    let bad = |why: String| corrupt(path, format!("RLE frame: {why}"));
    if frame.len() < 64 {
        return Err(bad(format!(
            "{} bytes, shorter than its 64-byte header",
            frame.len()
        )));
    }
    let count = u32_at(frame, 0);
    if count != segments_expected {
        return Err(bad(format!(
            "{count} segments, but the samples need {segments_expected}"
        )));
    }
    let mut offsets: Vec<usize> = (0..count as usize)
        .map(|k| u32_at(frame, 4 + 4 * k) as usize)
        .collect();
    offsets.push(frame.len());
    for k in 0..count as usize {
        let (start, end) = (offsets[k], offsets[k + 1]);
        if start < 64 || start > end || end > frame.len() {
            return Err(bad(format!(
                "segment {k} spans bytes {start}..{end} of {}",
                frame.len()
            )));
        }
        let decoded = packbits_length(&frame[start..end], pixels)
            .ok_or_else(|| bad(format!("segment {k} has a run past its end")))?;
        if decoded < pixels {
            return Err(bad(format!(
                "segment {k} decodes to {decoded} bytes, fewer than the {pixels} pixels"
            )));
        }
    }
    Ok(())
}

/// The bytes a PackBits segment decodes to, counted up to `enough`; `None` when a run's bytes
/// are missing.
fn packbits_length(segment: &[u8], enough: u64) -> Option<u64> {
    let (mut at, mut out) = (0usize, 0u64);
    while at < segment.len() && out < enough {
        let control = segment[at] as i8;
        match control {
            0..=127 => {
                let n = control as usize + 1;
                segment.get(at + 1..at + 1 + n)?;
                out += n as u64;
                at += 1 + n;
            }
            -127..=-1 => {
                segment.get(at + 1)?;
                out += (1 - control as i64) as u64;
                at += 2;
            }
            -128 => at += 1,
        }
    }
    Some(out)
}
