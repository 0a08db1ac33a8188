//! Crafted PyTorch zip checkpoints: each forged size must be refused with an error naming the file
//! and the problem before anything of that size is allocated.

use std::io::Write;
use std::path::{Path, PathBuf};

use cxr_train::pth::{read_pth, MAX_PICKLE_BYTES, MAX_PICKLE_DEPTH, MAX_PICKLE_OBJECT_BYTES};

fn unicode(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend((s.len() as u32).to_le_bytes());
    out.extend(s.as_bytes());
}

fn int(out: &mut Vec<u8>, v: i32) {
    out.push(b'J');
    out.extend(v.to_le_bytes());
}

/// The pickle `torch.save({name: tensor})` writes for one f32 tensor stored under key "0".
fn state_dict_pickle(name: &str, shape: &[i32], numel: i32) -> Vec<u8> {
    let (mut n, mut offset) = (vec![], vec![]);
    int(&mut n, numel);
    int(&mut offset, 0);
    state_dict_pickle_with(name, shape, &n, &offset)
}

/// [`state_dict_pickle`] with the storage size's and the storage offset's opcodes given.
fn state_dict_pickle_with(name: &str, shape: &[i32], numel: &[u8], offset: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    unicode(&mut p, name);
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.push(b'(');
    unicode(&mut p, "storage");
    p.extend(b"ctorch\nFloatStorage\n");
    unicode(&mut p, "0");
    unicode(&mut p, "cpu");
    p.extend(numel);
    p.extend(b"tQ"); // the storage tuple, as a persistent id
    p.extend(offset);
    p.push(b'(');
    shape.iter().for_each(|&d| int(&mut p, d));
    p.push(b't');
    p.push(b'(');
    // Contiguous strides.
    let mut stride = 1i32;
    let mut strides = vec![];
    for &d in shape.iter().rev() {
        strides.push(stride);
        stride = stride.wrapping_mul(d);
    }
    strides.iter().rev().for_each(|&s| int(&mut p, s));
    p.push(b't');
    p.push(0x89); // requires_grad False
    p.extend(b"ccollections\nOrderedDict\n)R"); // backward hooks
    p.extend(b"tRu.");
    p
}

/// A stored (uncompressed) zip as torch writes it: `archive/data.pkl` and `archive/data/0`.
fn write_pth(path: &Path, pickle: &[u8], data: &[u8]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/data/0", opts).unwrap();
    zip.write_all(data).unwrap();
    zip.finish().unwrap();
}

fn floats(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

fn pth_error(dir: &tempfile::TempDir, pickle: &[u8], data: &[u8]) -> String {
    let path: PathBuf = dir.path().join("m.pth");
    write_pth(&path, pickle, data);
    let e = read_pth(&path, None).expect_err("the corrupt checkpoint was accepted");
    let e = e.to_string();
    assert!(e.contains("m.pth"), "the error does not name the file: {e}");
    e
}

#[test]
fn crafted_checkpoint_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.pth");
    write_pth(&path, &state_dict_pickle("w", &[2, 3], 6), &floats(6));
    let tensors = read_pth(&path, None).unwrap();
    assert_eq!(tensors.len(), 1);
    assert_eq!(tensors[0].0, "w");
    assert_eq!(
        tensors[0].1.to_vec2::<f32>().unwrap(),
        vec![vec![0.0, 1.0, 2.0], vec![3.0, 4.0, 5.0]]
    );
}

#[test]
fn huge_declared_shape_is_refused_before_allocating() {
    // 2^60 f32 declared over 24 bytes of storage: candle would allocate 4 EiB (an abort).
    let dir = tempfile::tempdir().unwrap();
    let pickle = state_dict_pickle("w", &[1 << 30, 1 << 30], 6);
    let e = pth_error(&dir, &pickle, &floats(6));
    assert!(
        e.contains("tensor w")
            && e.contains("needs bytes 0..4611686018427387904")
            && e.contains("which holds 24"),
        "{e}"
    );
    // A shape whose product overflows.
    let big = i32::MAX;
    let e = pth_error(
        &dir,
        &state_dict_pickle("w", &[big, big, big], 6),
        &floats(6),
    );
    assert!(e.contains("tensor w") && e.contains("overflows"), "{e}");
    // One element more than the storage holds.
    let e = pth_error(&dir, &state_dict_pickle("w", &[7], 7), &floats(6));
    assert!(
        e.contains("needs bytes 0..28") && e.contains("which holds 24"),
        "{e}"
    );
}

#[test]
fn forged_string_length_in_the_pickle_is_refused() {
    // The tensor name's length claims 4 GiB - 1 in a pickle of 200 bytes.
    let dir = tempfile::tempdir().unwrap();
    let mut pickle = state_dict_pickle("w", &[2, 3], 6);
    pickle[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = pth_error(&dir, &pickle, &floats(6));
    assert!(
        e.contains("data.pkl") && e.contains("a string of 4294967295 bytes"),
        "{e}"
    );
}

#[test]
fn truncated_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.pth");
    write_pth(&path, &state_dict_pickle("w", &[2, 3], 6), &floats(6));
    let bytes = std::fs::read(&path).unwrap();
    for keep in [bytes.len() - 10, bytes.len() / 2, 10] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let e = read_pth(&path, None)
            .expect_err("truncated file accepted")
            .to_string();
        assert!(
            e.contains("m.pth") && e.contains("not a PyTorch zip checkpoint"),
            "{e}"
        );
    }
}

#[test]
fn missing_storage_and_oversized_pickle_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.pth");
    // The storage entry is absent.
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(&state_dict_pickle("w", &[2, 3], 6)).unwrap();
    zip.finish().unwrap();
    let e = read_pth(&path, None).err().unwrap().to_string();
    assert!(
        e.contains("storage \"archive/data/0\" is not in the archive"),
        "{e}"
    );
    // No data.pkl at all.
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    zip.start_file("archive/other", opts).unwrap();
    zip.write_all(b"x").unwrap();
    zip.finish().unwrap();
    let e = read_pth(&path, None).err().unwrap().to_string();
    assert!(e.contains("no data.pkl"), "{e}");
    // A data.pkl that declares one byte over the limit: a deflated entry of zeros this size
    // takes 65 KB in the file.
    let mut pickle = state_dict_pickle("w", &[2, 3], 6);
    pickle.resize(70_000, 0);
    write_pth(&path, &pickle, &floats(6));
    forge_entry(&path, "archive/data.pkl", MAX_PICKLE_BYTES + 1);
    let e = read_pth(&path, None).err().unwrap().to_string();
    assert!(
        e.contains(&format!(
            "archive/data.pkl is {} bytes, more than the limit of {MAX_PICKLE_BYTES}",
            MAX_PICKLE_BYTES + 1
        )),
        "{e}"
    );
}

/// Marks the zip entry `name` as deflated (method 8) with `size` uncompressed bytes, in its
/// local header and in the central directory, as a deflate stream of zeros would declare.
fn forge_entry(path: &Path, name: &str, size: u64) {
    let mut zip = std::fs::read(path).unwrap();
    let size = u32::try_from(size).unwrap().to_le_bytes();
    let mut patched = 0;
    for i in 0..zip.len().saturating_sub(46) {
        // (signature, name length's offset, name's offset, method's offset, size's offset)
        let header = match &zip[i..i + 4] {
            b"PK\x03\x04" => (26, 30, 8, 22),
            b"PK\x01\x02" => (28, 46, 10, 24),
            _ => continue,
        };
        let (len_at, name_at, method_at, size_at) = header;
        let len = u16::from_le_bytes([zip[i + len_at], zip[i + len_at + 1]]) as usize;
        if zip.get(i + name_at..i + name_at + len) != Some(name.as_bytes()) {
            continue;
        }
        zip[i + method_at..i + method_at + 2].copy_from_slice(&8u16.to_le_bytes());
        zip[i + size_at..i + size_at + 4].copy_from_slice(&size);
        patched += 1;
    }
    assert_eq!(patched, 2, "{name} not found in both headers");
    std::fs::write(path, zip).unwrap();
}

#[test]
fn compressed_storage_is_refused() {
    // 24 bytes in the file declaring 24,000 uncompressed (a ratio deflate can reach), and a
    // tensor of 6,000 floats: candle would allocate the whole tensor before inflating.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.pth");
    write_pth(&path, &state_dict_pickle("w", &[6000], 6000), &floats(6));
    forge_entry(&path, "archive/data/0", 24_000);
    let e = read_pth(&path, None).err().unwrap().to_string();
    assert!(
        e.contains("m.pth") && e.contains("tensor w: its storage \"archive/data/0\" is compressed"),
        "{e}"
    );
}

#[test]
fn pickle_states_the_walk_cannot_follow_are_refused() {
    // The memo-doubling pickle behind a MARK that is memoized, or popped as an object: candle
    // takes the MARK as an ordinary object and would build 2^40 objects.
    let mut bomb = vec![b']', b'q', 0];
    for i in 0..40u8 {
        bomb.extend([b']', b'(', b'h', i, b'h', i, b'e', b'q', i + 1]);
    }
    bomb.push(b'.');
    let dir = tempfile::tempdir().unwrap();
    for (prefix, what) in [
        (&b"(q\x00"[..], "opcode 0x71 at byte 3 memoizes a MARK"),
        (
            &b"(\x85"[..],
            "opcode 0x85 at byte 3 takes a MARK as an object",
        ),
    ] {
        let pickle = [&[0x80, 2][..], prefix, &bomb].concat();
        let e = pth_error(&dir, &pickle, &floats(6));
        assert!(
            e.contains("data.pkl") && e.contains(what) && e.contains("cannot be checked"),
            "{e}"
        );
    }
    // Containers nested a million deep behind a MARK taken as an object.
    let depth = 1_000_000;
    let mut pickle = vec![0x80, 2, b'(', 0x85];
    pickle.extend(std::iter::repeat_n(b'(', depth));
    pickle.push(b')');
    pickle.extend(std::iter::repeat_n(b't', depth));
    pickle.push(b'.');
    let e = pth_error(&dir, &pickle, &floats(6));
    assert!(e.contains("takes a MARK as an object"), "{e}");
    // No STOP, an opcode candle does not read, an unset memo.
    for (pickle, what) in [
        (&b"\x80\x02}"[..], "it ends at byte 3 without a STOP opcode"),
        (
            &b"\x80\x02}\x95."[..],
            "opcode 0x95 at byte 3 is not one candle reads",
        ),
        (
            &b"\x80\x02h\x07."[..],
            "opcode 0x68 at byte 2 gets the unset memo 7",
        ),
    ] {
        let e = pth_error(&dir, pickle, &floats(6));
        assert!(e.contains(what) && e.contains("cannot be checked"), "{e}");
    }
}

#[test]
fn long_of_more_than_8_bytes_is_refused() {
    // The storage size as a LONG1 of 9 bytes: candle shifts by 8 x its u8 index past 64 bits.
    let dir = tempfile::tempdir().unwrap();
    let mut numel = vec![0x8a, 9, 6];
    numel.extend([0; 8]);
    let mut offset = vec![];
    int(&mut offset, 0);
    let pickle = state_dict_pickle_with("w", &[2, 3], &numel, &offset);
    let e = pth_error(&dir, &pickle, &floats(6));
    assert!(
        e.contains("data.pkl: a long of 9 bytes at byte") && e.contains("at most 8"),
        "{e}"
    );
}

#[test]
fn storage_offset_whose_byte_offset_overflows_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut numel = vec![];
    int(&mut numel, 6);
    // 2^62 elements: x 4 bytes wraps to 0, so candle would read the tensor from the start.
    let mut offset = vec![0x8a, 8];
    offset.extend((1u64 << 62).to_le_bytes());
    let e = pth_error(
        &dir,
        &state_dict_pickle_with("w", &[2, 3], &numel, &offset),
        &floats(6),
    );
    assert!(
        e.contains("storage offset 4611686018427387904 is negative or overflows"),
        "{e}"
    );
    let mut offset = vec![];
    int(&mut offset, -1);
    let e = pth_error(
        &dir,
        &state_dict_pickle_with("w", &[2, 3], &numel, &offset),
        &floats(6),
    );
    assert!(
        e.contains("storage offset -1 is negative or overflows"),
        "{e}"
    );
    // An offset inside the range but past the storage's end.
    let mut offset = vec![];
    int(&mut offset, 1);
    let e = pth_error(
        &dir,
        &state_dict_pickle_with("w", &[2, 3], &numel, &offset),
        &floats(6),
    );
    assert!(
        e.contains("needs bytes 4..28") && e.contains("which holds 24"),
        "{e}"
    );
}

#[test]
fn tensor_rebuild_with_too_few_arguments_is_refused() {
    // candle takes the arguments apart with Vec::remove(3): a panic on two.
    let mut pickle = vec![0x80, 2, b'}', b'('];
    unicode(&mut pickle, "w");
    pickle.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    int(&mut pickle, 0);
    int(&mut pickle, 0);
    pickle.extend(b"tRu.");
    let dir = tempfile::tempdir().unwrap();
    let e = pth_error(&dir, &pickle, &floats(6));
    assert!(
        e.contains("_rebuild_tensor_v2 with 2 arguments (4 needed) cannot be checked"),
        "{e}"
    );
}

#[test]
fn pickle_that_doubles_through_its_memo_is_refused() {
    // [] then 40 times: [memo[i], memo[i]] -> memo[i + 1]. 250 bytes of pickle; candle copies on
    // every memo get, so it would build 2^40 objects.
    let mut pickle = vec![0x80, 2, b']', b'q', 0];
    for i in 0..40u8 {
        pickle.extend([b']', b'(', b'h', i, b'h', i, b'e', b'q', i + 1]);
    }
    pickle.push(b'.');
    let dir = tempfile::tempdir().unwrap();
    let e = pth_error(&dir, &pickle, &floats(6));
    assert!(
        e.contains("data.pkl") && e.contains(&format!("more than {MAX_PICKLE_OBJECT_BYTES} bytes")),
        "{e}"
    );
}

#[test]
fn pickle_nested_a_million_deep_is_refused() {
    // A tuple in a tuple ... a million deep: dropping it would overflow candle's stack.
    let depth = 1_000_000;
    let mut pickle = vec![0x80, 2];
    pickle.extend(std::iter::repeat_n(b'(', depth));
    pickle.push(b')');
    pickle.extend(std::iter::repeat_n(b't', depth));
    pickle.push(b'.');
    let dir = tempfile::tempdir().unwrap();
    let e = pth_error(&dir, &pickle, &floats(6));
    assert!(
        e.contains("data.pkl") && e.contains(&format!("nested deeper than {MAX_PICKLE_DEPTH}")),
        "{e}"
    );
}
