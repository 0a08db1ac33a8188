//! PyTorch checkpoints (`pytorch_model.bin`, `.pth`, `.ckpt`: a zip holding a pickle and the
//! tensors' storages): a language model's weight file, and a state dict under `state_dict` as the
//! classifier and VQ-GAN read it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let path = llm_cxr_fuzz::scratch_file("pytorch_model.bin", bytes);
    let _ = cxr_lm::weights::read_hf_tensors(&path, &candle_core::Device::Cpu);
    let _ = cxr_train::pth::read_pth(&path, Some("state_dict"));
});
