//! A run checkpoint: safetensors structure, checksum, metadata, state, tensors vs model.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = diffflow::train::parse_run_bytes(data);
});
