//! A bounded pre-scan of a GGUF header, run before candle's reader sees the file.
//!
//! candle's `Content::read` bounds each string and array by the bytes left in the file, but it
//! divides by `general.alignment` without checking it (0 panics) and turns every metadata array
//! element into a 32-byte `Value` (a 1 GB array of bytes would become 32 GB). This walk reads only
//! lengths and skips values, allocating nothing driven by the file but the keys it compares, and
//! refuses: an alignment that is not a nonzero power of two, more than [`MAX_TENSORS`] tensors,
//! more than [`MAX_METADATA_VALUES`] metadata values in all, any length past the end of the file.
//! Spec: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.

use std::io::{Read, Seek, SeekFrom};

/// More tensors than any released model holds (Llama 3.1 405B: about 1,140).
pub const MAX_TENSORS: u64 = 1 << 16;
/// Metadata values in all, array elements included: 16x the largest vocabulary shipped
/// (Gemma, 262,144 tokens) times the three arrays a tokenizer stores (tokens, types, merges) is
/// well under this; it caps candle's in-memory metadata at about 128 MiB of `Value`s.
pub const MAX_METADATA_VALUES: u64 = 1 << 22;
/// Nesting of arrays inside arrays (candle allows 64; tokenizers use 1).
const MAX_DEPTH: usize = 8;

/// The header checks passed; what the later checks need.
pub struct HeaderFacts {
    /// The reader's end: no tensor data may lie past it.
    pub file_size: u64,
}

struct Scan<'a, R> {
    reader: &'a mut R,
    file_size: u64,
    /// Length prefixes are 4 bytes in GGUF v1, 8 later.
    wide: bool,
    values: u64,
}

impl<R: Read + Seek> Scan<'_, R> {
    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.reader
            .read_exact(&mut b)
            .map_err(|e| format!("truncated header reading {what}: {e}"))?;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes::<4>(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes::<8>(what)?))
    }

    fn length(&mut self, what: &str) -> Result<u64, String> {
        if self.wide {
            self.u64(what)
        } else {
            self.u32(what).map(u64::from)
        }
    }

    fn remaining(&mut self) -> Result<u64, String> {
        let pos = self
            .reader
            .stream_position()
            .map_err(|e| format!("cannot seek: {e}"))?;
        Ok(self.file_size.saturating_sub(pos))
    }

    /// Skips `n` bytes that must lie inside the file.
    fn skip(&mut self, n: u64, what: &str) -> Result<(), String> {
        let remaining = self.remaining()?;
        if n > remaining {
            return Err(format!(
                "{what} needs {n} bytes but only {remaining} remain in the file"
            ));
        }
        let n = i64::try_from(n).map_err(|_| format!("{what}: length {n} is out of range"))?;
        self.reader
            .seek(SeekFrom::Current(n))
            .map_err(|e| format!("cannot seek: {e}"))?;
        Ok(())
    }

    fn count_values(&mut self, n: u64, what: &str) -> Result<(), String> {
        self.values = self.values.saturating_add(n);
        if self.values > MAX_METADATA_VALUES {
            return Err(format!(
                "{what}: metadata holds more than {MAX_METADATA_VALUES} values (the limit)"
            ));
        }
        Ok(())
    }

    /// A string's bytes when it is at most `keep` long (else skipped and `None`).
    fn string(&mut self, keep: u64, what: &str) -> Result<Option<Vec<u8>>, String> {
        let len = self.length(what)?;
        let remaining = self.remaining()?;
        if len > remaining {
            return Err(format!(
                "{what} claims {len} bytes but only {remaining} remain in the file"
            ));
        }
        if len > keep {
            self.skip(len, what)?;
            return Ok(None);
        }
        let mut v = vec![0u8; len as usize];
        self.reader
            .read_exact(&mut v)
            .map_err(|e| format!("truncated {what}: {e}"))?;
        Ok(Some(v))
    }

    /// Skips one value of GGUF type `ty`.
    fn skip_value(&mut self, ty: u32, depth: usize, what: &str) -> Result<(), String> {
        match fixed_size(ty) {
            Some(n) => self.skip(n, what),
            None if ty == STRING => self.string(0, what).map(|_| ()),
            None if ty == ARRAY => {
                if depth >= MAX_DEPTH {
                    return Err(format!("{what}: arrays nested deeper than {MAX_DEPTH}"));
                }
                let inner = self.u32(what)?;
                let len = self.length(what)?;
                self.count_values(len, what)?;
                match fixed_size(inner) {
                    Some(n) => {
                        let bytes = len
                            .checked_mul(n)
                            .ok_or_else(|| format!("{what}: array of {len} elements overflows"))?;
                        self.skip(bytes, what)
                    }
                    None if inner == STRING || inner == ARRAY => {
                        // Each element takes at least its length prefix: the loop is bounded by
                        // the file before it starts.
                        let prefix = if self.wide { 8 } else { 4 };
                        let remaining = self.remaining()?;
                        if len.saturating_mul(prefix) > remaining {
                            return Err(format!(
                                "{what}: array of {len} elements cannot fit in the {remaining} bytes left"
                            ));
                        }
                        for _ in 0..len {
                            self.skip_value(inner, depth + 1, what)?;
                        }
                        Ok(())
                    }
                    None => Err(format!("{what}: unknown array element type {inner}")),
                }
            }
            None => Err(format!("{what}: unknown value type {ty}")),
        }
    }
}

const STRING: u32 = 8;
const ARRAY: u32 = 9;

/// On-disk size of the fixed-size GGUF value types.
fn fixed_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1), // u8, i8, bool
        2 | 3 => Some(2),     // u16, i16
        4..=6 => Some(4),     // u32, i32, f32
        10..=12 => Some(8),   // u64, i64, f64
        _ => None,
    }
}

/// Walks the header of the GGUF in `reader` (positioned at its start) and leaves the reader
/// back at the start. Errors say what is wrong, without the path (the caller adds it).
pub fn check_header<R: Read + Seek>(reader: &mut R) -> Result<HeaderFacts, String> {
    let start = reader
        .stream_position()
        .map_err(|e| format!("cannot seek: {e}"))?;
    let file_size = reader
        .seek(SeekFrom::End(0))
        .map_err(|e| format!("cannot seek: {e}"))?;
    reader
        .seek(SeekFrom::Start(start))
        .map_err(|e| format!("cannot seek: {e}"))?;
    let mut scan = Scan {
        reader,
        file_size,
        wide: true,
        values: 0,
    };
    let magic = scan.bytes::<4>("the magic")?;
    if &magic != b"GGUF" {
        return Err("not a GGUF file (no GGUF magic)".into());
    }
    let version = scan.u32("the version")?;
    scan.wide = match version {
        1 => false,
        2 | 3 => true,
        v => return Err(format!("GGUF version {v} is not supported (1 to 3 are)")),
    };
    let tensors = scan.length("the tensor count")?;
    if tensors > MAX_TENSORS {
        return Err(format!(
            "header declares {tensors} tensors, more than the limit of {MAX_TENSORS}"
        ));
    }
    let kv_count = scan.length("the metadata count")?;
    scan.count_values(kv_count, "the metadata count")?;
    for i in 0..kv_count {
        let key = scan.string(64, &format!("metadata key {i}"))?;
        let ty = scan.u32("a metadata value type")?;
        if key.as_deref() == Some(b"general.alignment".as_slice()) {
            let what = "general.alignment";
            let value: i128 = match ty {
                0 => scan.bytes::<1>(what)?[0].into(),
                1 => i8::from_le_bytes(scan.bytes::<1>(what)?).into(),
                2 => u16::from_le_bytes(scan.bytes::<2>(what)?).into(),
                3 => i16::from_le_bytes(scan.bytes::<2>(what)?).into(),
                4 => scan.u32(what)?.into(),
                5 => i32::from_le_bytes(scan.bytes::<4>(what)?).into(),
                10 => scan.u64(what)?.into(),
                11 => i64::from_le_bytes(scan.bytes::<8>(what)?).into(),
                _ => return Err(format!("{what} has value type {ty}, not an integer")),
            };
            if value <= 0 || !(value as u128).is_power_of_two() {
                return Err(format!(
                    "general.alignment is {value}; it must be a nonzero power of two"
                ));
            }
        } else {
            let what = key.map_or_else(
                || format!("metadata value {i}"),
                |k| format!("metadata {:?}", String::from_utf8_lossy(&k)),
            );
            scan.skip_value(ty, 0, &what)?;
        }
    }
    scan.reader
        .seek(SeekFrom::Start(start))
        .map_err(|e| format!("cannot seek: {e}"))?;
    Ok(HeaderFacts { file_size })
}
