//! GGUF model files: header, metadata, tokenizer and tensor table.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let path = llm_cxr_fuzz::scratch_file("model.gguf", bytes);
    let _ = cxr_lm::gguf::read_gguf(&path, &candle_core::Device::Cpu);
});
