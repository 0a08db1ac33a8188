//! DICOM files of every transfer syntax: decoding to an image and the header summary.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|bytes: &[u8]| {
    let path = Path::new("fuzz.dcm");
    let _ = cxr_image::dicom::decode_dicom(bytes, path);
    let _ = cxr_image::dicom::inspect_dicom(bytes, path);
});
