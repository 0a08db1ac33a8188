//! Token files: one image's codes as a NumPy `.npy` array of shape `(side, side)`, row-major, as
//! the VQ-GAN's grid (LLM-CXR: 16 x 16, token `k` of the sequence is row `k / 16`, column
//! `k % 16`). Written as little-endian `uint16`; read from `uint16`, `int32`, `uint32` or
//! `int64` (what `np.save` of torch indices gives), so NumPy users can make and read them.
//!
//! `llm-cxr vqgan encode` writes `<out>/<image_id>.npy`; the instruction-data builder reads them
//! by the same name.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TokenFileError {
    pub path: PathBuf,
    pub message: String,
}

/// The token file name of an image: `<image_id>.npy` when the id is made of ASCII letters,
/// digits, `-`, `_` and `.` only (the names token files have always had). Any other byte of the
/// id is written `%XX` (its hex value), and so is `%` itself, so the mapping is one-to-one: two
/// ids never share a token file (replacing them with `_` made `a/b` and `a_b` one file), and an
/// escaped name, holding a `%`, is never a plain one. An escaped name too long for a file system
/// (over 200 bytes) is cut and ends with a hash of the whole id.
pub fn file_name(image_id: &str) -> String {
    const LONGEST: usize = 200;
    let mut safe = String::with_capacity(image_id.len());
    for b in image_id.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            safe.push(b as char);
        } else {
            safe.push_str(&format!("%{b:02X}"));
        }
    }
    // "", "." and ".." are not file names of their own (".npy" would hide the file).
    if safe.is_empty() || safe.bytes().all(|b| b == b'.') {
        safe = safe.replace('.', "%2E") + "%";
    }
    if safe.len() > LONGEST {
        let digest = crate::identity::sha256_hex(image_id.as_bytes());
        // Cut on a char boundary (all ASCII here) and mark the cut with `%~`, which escaping
        // never makes.
        safe.truncate(LONGEST - 19);
        safe = format!("{safe}%~{}", &digest[..16]);
    }
    format!("{safe}.npy")
}

/// Serialises a square grid of codes as `.npy` bytes (format 1.0, `<u2`).
pub fn to_npy(codes: &[u16], side: usize) -> Vec<u8> {
    assert_eq!(codes.len(), side * side, "codes must fill the grid");
    let mut header =
        format!("{{'descr': '<u2', 'fortran_order': False, 'shape': ({side}, {side}), }}");
    // Magic (6) + version (2) + header length (2) + header, padded with spaces to a multiple of
    // 64 and ended by a newline.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    for c in codes {
        out.extend(c.to_le_bytes());
    }
    out
}

/// Writes a token file atomically.
pub fn write(path: &Path, codes: &[u16], side: usize) -> std::io::Result<()> {
    cxr_data::write_atomic(path, &to_npy(codes, side))
}

/// Reads a token file: the codes in row-major order and the grid side. Checks that the array is
/// square, C-ordered and integral, and that every code is below `n_embed`.
pub fn read(path: &Path, n_embed: usize) -> Result<(Vec<u16>, usize), TokenFileError> {
    let bytes = std::fs::read(path).map_err(|e| TokenFileError {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    from_npy(&bytes, n_embed).map_err(|message| TokenFileError {
        path: path.to_path_buf(),
        message,
    })
}

pub fn from_npy(bytes: &[u8], n_embed: usize) -> Result<(Vec<u16>, usize), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    let (header_len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let data_start = start
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| {
            format!(
                "header claims {header_len} bytes but the file has {}",
                bytes.len()
            )
        })?;
    let header = bytes
        .get(start..data_start)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated or non-UTF-8 .npy header")?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr")
        .and_then(|r| r.strip_prefix('\'')?.split('\'').next())
        .ok_or("no descr in the .npy header")?;
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err("Fortran-ordered arrays are not supported; save a C-ordered array".into());
    }
    let shape: Vec<usize> = field("shape")
        .and_then(|r| r.strip_prefix('(')?.split(')').next())
        .ok_or("no shape in the .npy header")?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("bad shape entry {s:?}")))
        .collect::<Result<_, _>>()?;
    // Checked: a product that wraps could otherwise match the data's length.
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    let side = (count as f64).sqrt().round() as usize;
    let square = match shape.as_slice() {
        [a, b] if a == b => true,
        [n] | [1, n] => side.checked_mul(side) == Some(*n),
        _ => false,
    };
    if !square || count == 0 {
        return Err(format!(
            "shape {shape:?} is not a square grid of codes (expected (16, 16), (256,) or (1, 256))"
        ));
    }
    let (width, signed) = match descr {
        "<u2" | "|u2" => (2, false),
        "<i4" => (4, true),
        "<u4" => (4, false),
        "<i8" => (8, true),
        d => {
            return Err(format!(
                "dtype {d} is not supported (use uint16, int32 or int64)"
            ))
        }
    };
    let data = &bytes[data_start..];
    if count.checked_mul(width) != Some(data.len()) {
        return Err(format!(
            "{} data bytes for {count} codes of {width} bytes",
            data.len()
        ));
    }
    let codes = data
        .chunks_exact(width)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..width].copy_from_slice(c);
            let v = i64::from_le_bytes(b);
            // Sign-extend narrower signed types.
            let v = if signed && width < 8 {
                (v << (64 - 8 * width)) >> (64 - 8 * width)
            } else {
                v
            };
            if v < 0 || v as usize >= n_embed {
                Err(format!("code {v} is outside the codebook (0..{n_embed})"))
            } else {
                Ok(v as u16)
            }
        })
        .collect::<Result<Vec<u16>, String>>()?;
    Ok((codes, side))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_header_alignment() {
        let codes: Vec<u16> = (0..256).map(|i| (i * 7 % 1024) as u16).collect();
        let bytes = to_npy(&codes, 16);
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        assert_eq!(bytes[10 + header_len - 1], b'\n');
        assert_eq!(from_npy(&bytes, 1024).unwrap(), (codes, 16));
    }

    #[test]
    fn reads_int64_as_numpy_writes_it() {
        // np.save of np.arange(4, dtype=np.int64).reshape(2, 2), header as NumPy pads it.
        let header = "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 2), }";
        let mut h = header.to_string();
        let unpadded = 10 + header.len() + 1;
        h.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
        h.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((h.len() as u16).to_le_bytes());
        bytes.extend(h.as_bytes());
        for v in 0i64..4 {
            bytes.extend(v.to_le_bytes());
        }
        assert_eq!(from_npy(&bytes, 4).unwrap(), (vec![0, 1, 2, 3], 2));
        assert!(from_npy(&bytes, 3)
            .unwrap_err()
            .contains("outside the codebook"));
    }

    #[test]
    fn bad_files_are_named() {
        assert!(from_npy(b"hello", 4).unwrap_err().contains("magic"));
        let mut bytes = to_npy(&[1, 2, 3, 4], 2);
        bytes.pop();
        assert!(from_npy(&bytes, 8).unwrap_err().contains("data bytes"));
    }
}
