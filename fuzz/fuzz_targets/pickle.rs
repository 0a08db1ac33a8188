//! PyTorch checkpoints (`pytorch_model.bin`, `.pth`, `.ckpt`: a zip holding a pickle and the
//! tensors' storages), read as a model's tensors.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let path = llm_cxr_fuzz::scratch_file("pytorch_model.bin", bytes);
    let _ = cxr_lm::weights::read_hf_tensors(&path, &candle_core::Device::Cpu);
});
