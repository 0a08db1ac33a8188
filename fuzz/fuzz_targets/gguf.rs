//! GGUF model files: header, metadata, tokenizer and tensor table.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|bytes: &[u8]| {
    let mut file = std::io::Cursor::new(bytes);
    let _ =
        cxr_lm::gguf::read_gguf_from(&mut file, Path::new("fuzz.gguf"), &candle_core::Device::Cpu);
});
