//! PyTorch zip checkpoints (`.pt`, `.pth`, `.ckpt`, `pytorch_model.bin`) read with every
//! allocation bounded by the file before it happens. The one checked loader for the language
//! model, the classifier and the VQ-GAN.
//!
//! candle's pickle reader allocates what the file declares before reading it: a string opcode's
//! 32-bit length, and each tensor's shape product (unchecked, so a wrapped product reads a
//! different size than the shape says). Here the zip directory is checked first (every entry
//! inside the file), `data.pkl` is read whole (at most [`MAX_PICKLE_BYTES`]) and its opcodes walked
//! so that no string runs past its end, and each tensor's element count x dtype size, computed
//! with checked arithmetic, must fit inside its storage entry, before candle reads anything.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::pickle::PthTensors;
use candle_core::Tensor;

/// The largest `data.pkl` accepted: it holds only names, shapes and storage keys (about 100 bytes
/// per tensor; a 7B model's is under 100 KB).
pub const MAX_PICKLE_BYTES: u64 = 64 << 20;
/// Deflate's largest expansion (RFC 1951: 258 bytes out of 2 bits, about 1032:1): an entry that
/// declares more than this over its compressed size is forged. PyTorch itself stores entries
/// uncompressed, where the two sizes must be equal.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// Why a checkpoint was refused: the file and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct PthError {
    pub path: PathBuf,
    pub reason: String,
}

/// Every tensor of the checkpoint at `path`, under its state-dict name; `key` selects an entry of
/// a top-level dict (Lightning's and taming's `state_dict`). Tensors keep their stored dtype.
pub fn read_pth(path: &Path, key: Option<&str>) -> Result<Vec<(String, Tensor)>, PthError> {
    let bad = |reason: String| PthError {
        path: path.to_path_buf(),
        reason,
    };
    let pth = check_pth(path, key)?;
    let mut names: Vec<&String> = pth.tensor_infos().keys().collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        match pth.get(name) {
            Ok(Some(t)) => out.push((name.clone(), t)),
            Ok(None) => {}
            Err(e) => return Err(bad(format!("tensor {name}: {e}"))),
        }
    }
    Ok(out)
}

/// Checks a checkpoint without reading tensor data, and returns candle's lazy reader over it:
/// every later `get` allocates at most its storage entry's size. For fuzzing, and for loaders
/// that read tensors one at a time.
pub fn check_pth(path: &Path, key: Option<&str>) -> Result<PthTensors, PthError> {
    let bad = |reason: String| PthError {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let file_size = file.metadata().map_err(|e| bad(e.to_string()))?.len();
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| bad(format!("not a PyTorch zip checkpoint: {e}")))?;
    let mut sizes: HashMap<String, u64> = HashMap::new();
    let mut pickles = Vec::new();
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| bad(format!("zip entry {i}: {e}")))?;
        let name = entry.name().map(|n| n.to_string()).unwrap_or_default();
        let (size, packed) = (entry.size(), entry.compressed_size());
        let stored = entry.compression() == zip::CompressionMethod::Stored;
        if packed > file_size
            || (stored && size != packed)
            || size > packed.saturating_mul(MAX_DEFLATE_RATIO)
        {
            return Err(bad(format!(
                "zip entry {name:?} declares {size} bytes ({packed} compressed) in a file of {file_size}"
            )));
        }
        if name.ends_with("data.pkl") {
            pickles.push((i, name.clone(), size));
        }
        sizes.insert(name, size);
    }
    if pickles.is_empty() {
        return Err(bad("no data.pkl in the archive".into()));
    }
    for (i, name, size) in pickles {
        if size > MAX_PICKLE_BYTES {
            return Err(bad(format!(
                "{name} is {size} bytes, more than the limit of {MAX_PICKLE_BYTES}"
            )));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        zip.by_index(i)
            .map_err(|e| bad(format!("{name}: {e}")))?
            .take(size)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        check_pickle(&bytes).map_err(|e| bad(format!("{name}: {e}")))?;
    }
    let pth = PthTensors::new(path, key).map_err(|e| bad(e.to_string()))?;
    for (name, info) in pth.tensor_infos() {
        let dims = info.layout.dims();
        let bytes = dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .and_then(|n| n.checked_mul(info.dtype.size_in_bytes()))
            .ok_or_else(|| bad(format!("tensor {name}: shape {dims:?} overflows")))?;
        let start = info.layout.start_offset();
        let end = start
            .checked_add(bytes)
            .ok_or_else(|| bad(format!("tensor {name}: offset {start} overflows")))?;
        let held = sizes.get(&info.path).copied().ok_or_else(|| {
            bad(format!(
                "tensor {name}: its storage {:?} is not in the archive",
                info.path
            ))
        })?;
        if end as u64 > held {
            return Err(bad(format!(
                "tensor {name}: shape {dims:?} of {:?} needs bytes {start}..{end} of storage {:?}, which holds {held}",
                info.dtype, info.path
            )));
        }
    }
    Ok(pth)
}

/// What candle's unpickler may build from one `data.pkl`, estimated as [`OBJECT_BYTES`] per
/// object plus string bytes. It copies an object on every memo get and put, so a pickle of a few
/// hundred bytes that doubles a list through the memo 40 times would need terabytes; a real
/// state dict needs about 1 KB per tensor.
pub const MAX_PICKLE_OBJECT_BYTES: u64 = 256 << 20;
/// The size of candle's pickle `Object` (rounded up).
const OBJECT_BYTES: u64 = 64;

/// Nesting of pickled containers: candle's objects are recursive, so dropping (or printing) one
/// nested a million deep overflows the stack; a state dict nests about 6 deep.
pub const MAX_PICKLE_DEPTH: u32 = 256;

/// What the walk knows of one object candle would build: its estimated bytes and nesting.
#[derive(Clone, Copy)]
struct Estimate {
    bytes: u64,
    depth: u32,
}

impl Estimate {
    fn join(self, other: Estimate) -> Estimate {
        Estimate {
            bytes: self.bytes.saturating_add(other.bytes),
            depth: self.depth.max(other.depth),
        }
    }
}

/// Walks the opcodes candle's unpickler knows, as its stack machine does but with sizes for
/// objects: refuses a string or argument longer than the bytes left, a pickle whose objects
/// would exceed [`MAX_PICKLE_OBJECT_BYTES`], and containers nested deeper than
/// [`MAX_PICKLE_DEPTH`]. Unknown opcodes or a malformed stack stop the walk (candle refuses those
/// itself).
fn check_pickle(data: &[u8]) -> Result<(), String> {
    let mut pos = 0usize;
    let need = |pos: usize, n: usize, what: &str| -> Result<usize, String> {
        let end = pos.checked_add(n).filter(|&e| e <= data.len());
        end.ok_or_else(|| {
            format!(
                "{what} at byte {pos} needs {n} bytes, only {} remain",
                data.len().saturating_sub(pos)
            )
        })
    };
    // `None` is a mark.
    let mut stack: Vec<Option<Estimate>> = Vec::new();
    let mut memo: HashMap<u32, Estimate> = HashMap::new();
    let mut total = 0u64;
    // Adds `bytes` to what the objects built so far take.
    let mut alloc = |bytes: u64| -> Result<(), String> {
        total = total.saturating_add(bytes);
        if total > MAX_PICKLE_OBJECT_BYTES {
            return Err(format!(
                "its objects would take more than {MAX_PICKLE_OBJECT_BYTES} bytes (the limit)"
            ));
        }
        Ok(())
    };
    let leaf = |bytes: u64| Estimate { bytes, depth: 0 };
    // A new container holding `inner`.
    let wrap = |inner: Estimate| -> Result<Estimate, String> {
        let depth = inner.depth + 1;
        if depth > MAX_PICKLE_DEPTH {
            return Err(format!(
                "objects nested deeper than {MAX_PICKLE_DEPTH} (the limit)"
            ));
        }
        Ok(Estimate {
            bytes: inner.bytes.saturating_add(OBJECT_BYTES),
            depth,
        })
    };
    macro_rules! pop {
        () => {
            match stack.pop() {
                Some(Some(v)) => v,
                _ => return Ok(()),
            }
        };
    }
    macro_rules! pop_to_mark {
        () => {{
            let Some(mark) = stack.iter().rposition(Option::is_none) else {
                return Ok(());
            };
            let all = stack[mark + 1..]
                .iter()
                .flatten()
                .fold(leaf(0), |a, &b| a.join(b));
            stack.truncate(mark);
            all
        }};
    }
    let u32_at = |p: usize| u32::from_le_bytes([data[p], data[p + 1], data[p + 2], data[p + 3]]);
    while pos < data.len() {
        let op = data[pos];
        pos += 1;
        match op {
            b'.' => return Ok(()),
            0x80 => pos = need(pos, 1, "an opcode argument")?,
            b'K' | b'M' | b'J' | b'G' => {
                let n = match op {
                    b'K' => 1,
                    b'M' => 2,
                    b'J' => 4,
                    _ => 8,
                };
                pos = need(pos, n, "an opcode argument")?;
                alloc(OBJECT_BYTES)?;
                stack.push(Some(leaf(OBJECT_BYTES)));
            }
            b'X' => {
                let at = need(pos, 4, "a string length")?;
                let len = u32_at(pos) as usize;
                pos = need(at, len, &format!("a string of {len} bytes"))?;
                alloc(OBJECT_BYTES + len as u64)?;
                stack.push(Some(leaf(OBJECT_BYTES + len as u64)));
            }
            0x8a => {
                let at = need(pos, 1, "a long's length")?;
                pos = need(at, data[pos] as usize, "a long")?;
                alloc(OBJECT_BYTES)?;
                stack.push(Some(leaf(OBJECT_BYTES)));
            }
            b'c' => {
                // Module and class names, each up to a newline.
                let start = pos;
                for _ in 0..2 {
                    let nl = data[pos..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .ok_or_else(|| format!("a global name at byte {pos} has no end"))?;
                    pos += nl + 1;
                }
                let bytes = OBJECT_BYTES + (pos - start) as u64;
                alloc(bytes)?;
                stack.push(Some(leaf(bytes)));
            }
            b'q' | b'r' | b'h' | b'j' => {
                let n = if matches!(op, b'q' | b'h') { 1 } else { 4 };
                let at = need(pos, n, "a memo index")?;
                let id = if n == 1 {
                    data[pos] as u32
                } else {
                    u32_at(pos)
                };
                pos = at;
                // candle copies the object on put and on get.
                if matches!(op, b'q' | b'r') {
                    let Some(Some(top)) = stack.last().copied() else {
                        return Ok(());
                    };
                    alloc(top.bytes)?;
                    memo.insert(id, top);
                } else {
                    let Some(&v) = memo.get(&id) else {
                        return Ok(());
                    };
                    alloc(v.bytes)?;
                    stack.push(Some(v));
                }
            }
            b')' | b'}' | b'd' | b']' | b'N' | 0x88 | 0x89 => {
                alloc(OBJECT_BYTES)?;
                stack.push(Some(leaf(OBJECT_BYTES)));
            }
            b'(' => stack.push(None),
            b'Q' | 0x85 => {
                let v = pop!();
                alloc(OBJECT_BYTES)?;
                stack.push(Some(wrap(v)?));
            }
            b'R' | b'b' | 0x81 | 0x86 => {
                let (a, b) = (pop!(), pop!());
                alloc(OBJECT_BYTES)?;
                stack.push(Some(wrap(a.join(b))?));
            }
            0x87 => {
                let (a, b, c) = (pop!(), pop!(), pop!());
                alloc(OBJECT_BYTES)?;
                stack.push(Some(wrap(a.join(b).join(c))?));
            }
            b't' => {
                let all = pop_to_mark!();
                alloc(OBJECT_BYTES)?;
                stack.push(Some(wrap(all)?));
            }
            b'a' | b's' | b'e' | b'u' => {
                let added = match op {
                    b'a' => pop!(),
                    b's' => pop!().join(pop!()),
                    _ => pop_to_mark!(),
                };
                let Some(Some(top)) = stack.last().copied() else {
                    return Ok(());
                };
                let grown = wrap(added)?;
                let grown = Estimate {
                    bytes: top.bytes.saturating_add(added.bytes),
                    depth: top.depth.max(grown.depth),
                };
                if let Some(last) = stack.last_mut() {
                    *last = Some(grown);
                }
            }
            _ => return Ok(()),
        }
    }
    Ok(())
}
