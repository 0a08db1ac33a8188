//! Token files: NumPy `.npy` arrays of VQ-GAN codes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = cxr_vqgan::tokens::from_npy(bytes, 1024);
});
