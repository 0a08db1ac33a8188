//! safetensors weight files, read as a model's tensors.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let path = llm_cxr_fuzz::scratch_file("model.safetensors", bytes);
    let _ = cxr_lm::weights::read_hf_tensors(&path, &candle_core::Device::Cpu);
});
