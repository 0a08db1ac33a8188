//! Any upload: the format is sniffed (PNG, JPEG or DICOM) and the file decoded to grey levels.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|bytes: &[u8]| {
    let _ = cxr_image::decode_image(bytes, Path::new("fuzz.img"));
});
