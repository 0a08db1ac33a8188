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
use std::rc::Rc;

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
    // Each entry's uncompressed size, and whether it is stored uncompressed.
    let mut sizes: HashMap<String, (u64, bool)> = HashMap::new();
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
        sizes.insert(name, (size, stored));
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
        // candle multiplies the dims of a zero-sized tensor too (its contiguity check).
        let nonzero = dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d.max(1)));
        let bytes = dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .and_then(|n| n.checked_mul(info.dtype.size_in_bytes()))
            .filter(|_| nonzero.is_some())
            .ok_or_else(|| bad(format!("tensor {name}: shape {dims:?} overflows")))?;
        let start = info.layout.start_offset();
        let end = start
            .checked_add(bytes)
            .ok_or_else(|| bad(format!("tensor {name}: offset {start} overflows")))?;
        let (held, stored) = sizes.get(&info.path).copied().ok_or_else(|| {
            bad(format!(
                "tensor {name}: its storage {:?} is not in the archive",
                info.path
            ))
        })?;
        // candle allocates the whole tensor before reading it, and a compressed entry's declared
        // size is bounded only by about 1032x its bytes in the file. PyTorch stores tensor data
        // uncompressed.
        if !stored {
            return Err(bad(format!(
                "tensor {name}: its storage {:?} is compressed; PyTorch stores tensor data uncompressed",
                info.path
            )));
        }
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

/// The values the walk follows: enough of candle's objects to see the arguments of a tensor
/// rebuild, which candle takes apart with `Vec::remove` (a panic on a short tuple) and whose
/// storage offset it multiplies by the dtype size unchecked.
#[derive(Clone)]
enum Val {
    Int(i64),
    Global(Callable),
    Tuple(Rc<Vec<Val>>),
    Persistent(Rc<Val>),
    Other,
}

/// The globals candle treats as tensor rebuilds.
#[derive(Clone, Copy, PartialEq)]
enum Callable {
    RebuildTensor,
    RebuildFromType,
    RebuildParameter,
    Other,
}

/// One object on the walk's stack: its estimated size and the value followed.
#[derive(Clone)]
struct Obj {
    est: Estimate,
    val: Val,
}

/// Refuses a call candle would take apart by index past its end, or a storage offset whose byte
/// offset overflows (8 bytes, the largest dtype).
fn check_call(callable: &Val, args: &Val) -> Result<(), String> {
    // candle refuses (without panicking) arguments that are not a tuple.
    let (Val::Global(callable), Val::Tuple(args)) = (callable, args) else {
        return Ok(());
    };
    match callable {
        Callable::RebuildTensor => check_rebuild_args(args),
        Callable::RebuildFromType => {
            if args.len() < 3 {
                return Err(format!(
                    "_rebuild_from_type_v2 with {} arguments (3 needed) cannot be checked",
                    args.len()
                ));
            }
            match (&args[0], &args[2]) {
                (Val::Global(Callable::RebuildTensor), Val::Tuple(a)) => check_rebuild_args(a),
                _ => Ok(()),
            }
        }
        Callable::RebuildParameter if args.is_empty() => {
            Err("_rebuild_parameter with no arguments cannot be checked".into())
        }
        _ => Ok(()),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`.
fn check_rebuild_args(args: &[Val]) -> Result<(), String> {
    if args.len() < 4 {
        return Err(format!(
            "_rebuild_tensor_v2 with {} arguments (4 needed) cannot be checked",
            args.len()
        ));
    }
    if let Val::Int(offset) = args[1] {
        if usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_mul(8))
            .is_none()
        {
            return Err(format!(
                "a tensor's storage offset {offset} is negative or overflows"
            ));
        }
    }
    if let Val::Persistent(id) = &args[0] {
        if let Val::Tuple(storage) = &**id {
            if storage.len() < 5 {
                return Err(format!(
                    "a tensor storage of {} fields (5 needed) cannot be checked",
                    storage.len()
                ));
            }
        }
    }
    Ok(())
}

/// Walks the opcodes candle's unpickler knows, as its stack machine does but with sizes for
/// objects: refuses a string or argument longer than the bytes left, a pickle whose objects
/// would exceed [`MAX_PICKLE_OBJECT_BYTES`], containers nested deeper than [`MAX_PICKLE_DEPTH`],
/// and tensor rebuilds candle would panic on. Any state the walk cannot follow is refused too:
/// candle does not refuse it (its stack treats a MARK as an ordinary object), and after it the
/// limits above would no longer be checked.
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
    let mut stack: Vec<Option<Obj>> = Vec::new();
    let mut memo: HashMap<u32, Obj> = HashMap::new();
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
    let leaf = |bytes: u64, val: Val| Obj {
        est: Estimate { bytes, depth: 0 },
        val,
    };
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
    let unchecked = |op: u8, at: usize, what: &str| {
        format!("opcode {op:#04x} at byte {at} {what}, which cannot be checked")
    };
    macro_rules! pop {
        ($op:expr, $at:expr) => {
            match stack.pop() {
                Some(Some(v)) => v,
                Some(None) => return Err(unchecked($op, $at, "takes a MARK as an object")),
                None => return Err(unchecked($op, $at, "pops an empty stack")),
            }
        };
    }
    macro_rules! pop_to_mark {
        ($op:expr, $at:expr) => {{
            let Some(mark) = stack.iter().rposition(Option::is_none) else {
                return Err(unchecked($op, $at, "has no MARK"));
            };
            let items: Vec<Obj> = stack.drain(mark + 1..).flatten().collect();
            stack.truncate(mark);
            items
        }};
    }
    let joined = |items: &[Obj]| {
        items
            .iter()
            .fold(Estimate { bytes: 0, depth: 0 }, |a, b| a.join(b.est))
    };
    let tuple = |items: Vec<Obj>| -> Result<Obj, String> {
        let est = wrap(joined(&items))?;
        let vals = items.into_iter().map(|o| o.val).collect();
        Ok(Obj {
            est,
            val: Val::Tuple(Rc::new(vals)),
        })
    };
    let u32_at = |p: usize| u32::from_le_bytes([data[p], data[p + 1], data[p + 2], data[p + 3]]);
    while pos < data.len() {
        let at = pos;
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
                let end = need(pos, n, "an opcode argument")?;
                let arg = &data[pos..end];
                let val = match op {
                    b'K' => Val::Int(arg[0].into()),
                    b'M' => Val::Int(u16::from_le_bytes([arg[0], arg[1]]).into()),
                    b'J' => Val::Int(u32_at(pos) as i32 as i64),
                    _ => Val::Other,
                };
                pos = end;
                alloc(OBJECT_BYTES)?;
                stack.push(Some(leaf(OBJECT_BYTES, val)));
            }
            b'X' => {
                let start = need(pos, 4, "a string length")?;
                let len = u32_at(pos) as usize;
                pos = need(start, len, &format!("a string of {len} bytes"))?;
                alloc(OBJECT_BYTES + len as u64)?;
                stack.push(Some(leaf(OBJECT_BYTES + len as u64, Val::Other)));
            }
            0x8a => {
                let start = need(pos, 1, "a long's length")?;
                let n = data[pos] as usize;
                // candle shifts each byte by 8 x its index in a u8 into an i64.
                if n > 8 {
                    return Err(format!(
                        "a long of {n} bytes at byte {at} (at most 8 are read)"
                    ));
                }
                pos = need(start, n, "a long")?;
                // Little-endian and unsigned, as candle decodes it.
                let v = data[start..pos]
                    .iter()
                    .rev()
                    .fold(0u64, |v, &b| (v << 8) | u64::from(b));
                alloc(OBJECT_BYTES)?;
                stack.push(Some(leaf(OBJECT_BYTES, Val::Int(v as i64))));
            }
            b'c' => {
                // Module and class names, each up to a newline (and a carriage return).
                let start = pos;
                let mut names = [&data[..0]; 2];
                for name in &mut names {
                    let nl = data[pos..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .ok_or_else(|| format!("a global name at byte {pos} has no end"))?;
                    let line = &data[pos..pos + nl];
                    *name = line.strip_suffix(b"\r").unwrap_or(line);
                    pos += nl + 1;
                }
                let callable = match (names[0], names[1]) {
                    (b"torch._utils", b"_rebuild_tensor_v2") => Callable::RebuildTensor,
                    (b"torch._utils", b"_rebuild_parameter") => Callable::RebuildParameter,
                    (b"torch._tensor", b"_rebuild_from_type_v2") => Callable::RebuildFromType,
                    _ => Callable::Other,
                };
                let bytes = OBJECT_BYTES + (pos - start) as u64;
                alloc(bytes)?;
                stack.push(Some(leaf(bytes, Val::Global(callable))));
            }
            b'q' | b'r' | b'h' | b'j' => {
                let n = if matches!(op, b'q' | b'h') { 1 } else { 4 };
                let end = need(pos, n, "a memo index")?;
                let id = if n == 1 {
                    data[pos] as u32
                } else {
                    u32_at(pos)
                };
                pos = end;
                // candle copies the object on put and on get.
                if matches!(op, b'q' | b'r') {
                    let Some(Some(top)) = stack.last() else {
                        return Err(unchecked(op, at, "memoizes a MARK or nothing"));
                    };
                    alloc(top.est.bytes)?;
                    memo.insert(id, top.clone());
                } else {
                    let Some(v) = memo.get(&id) else {
                        return Err(unchecked(op, at, &format!("gets the unset memo {id}")));
                    };
                    alloc(v.est.bytes)?;
                    stack.push(Some(v.clone()));
                }
            }
            b')' | b'}' | b'd' | b']' | b'N' | 0x88 | 0x89 => {
                // candle reads `d` as an empty dict, not as DICT.
                let val = if op == b')' {
                    Val::Tuple(Rc::default())
                } else {
                    Val::Other
                };
                alloc(OBJECT_BYTES)?;
                stack.push(Some(leaf(OBJECT_BYTES, val)));
            }
            b'(' => stack.push(None),
            b'Q' => {
                let v = pop!(op, at);
                alloc(OBJECT_BYTES)?;
                stack.push(Some(Obj {
                    est: wrap(v.est)?,
                    val: Val::Persistent(Rc::new(v.val)),
                }));
            }
            0x85..=0x87 => {
                let mut items: Vec<Obj> = Vec::new();
                for _ in 0x84..op {
                    items.push(pop!(op, at));
                }
                items.reverse();
                alloc(OBJECT_BYTES)?;
                stack.push(Some(tuple(items)?));
            }
            b't' => {
                let items = pop_to_mark!(op, at);
                alloc(OBJECT_BYTES)?;
                stack.push(Some(tuple(items)?));
            }
            b'R' | b'b' | 0x81 => {
                let (args, callable) = (pop!(op, at), pop!(op, at));
                if op != b'b' {
                    check_call(&callable.val, &args.val).map_err(|e| format!("byte {at}: {e}"))?;
                }
                alloc(OBJECT_BYTES)?;
                stack.push(Some(Obj {
                    est: wrap(args.est.join(callable.est))?,
                    val: Val::Other,
                }));
            }
            b'a' | b's' | b'e' | b'u' => {
                let added = match op {
                    b'a' => pop!(op, at).est,
                    b's' => pop!(op, at).est.join(pop!(op, at).est),
                    _ => joined(&pop_to_mark!(op, at)),
                };
                let Some(Some(top)) = stack.last_mut() else {
                    return Err(unchecked(op, at, "adds to a MARK or nothing"));
                };
                let grown = wrap(added)?;
                top.est = Estimate {
                    bytes: top.est.bytes.saturating_add(added.bytes),
                    depth: top.est.depth.max(grown.depth),
                };
            }
            _ => return Err(unchecked(op, at, "is not one candle reads")),
        }
    }
    Err(format!(
        "it ends at byte {} without a STOP opcode, which cannot be checked",
        data.len()
    ))
}
