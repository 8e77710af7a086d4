//! Any safetensors file (checksum verified when present).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = diffflow::checkpoint::from_bytes(data);
});
