//! The server's upload forms (`POST /v1/report`, `/v1/ask`): multipart parsing and the fields'
//! validation. An input whose first line starts with `multipart/` gives its own Content-Type
//! (boundary included); any other input is a body under a fixed boundary.
#![no_main]

use libfuzzer_sys::fuzz_target;

const FIXED: &str = "multipart/form-data; boundary=fuzzboundary";

fuzz_target!(|input: &[u8]| {
    let (content_type, body) = match input.iter().position(|&b| b == b'\n') {
        Some(end) if input.starts_with(b"multipart/") => match std::str::from_utf8(&input[..end]) {
            Ok(header) => (header.to_string(), input[end + 1..].to_vec()),
            Err(_) => (FIXED.to_string(), input.to_vec()),
        },
        _ => (FIXED.to_string(), input.to_vec()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime");
    let _ = runtime.block_on(llm_cxr::serve::parse_upload_form(&content_type, body));
});
