//! An IDX file (MNIST), uncompressed.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = diffflow::data::idx::parse_idx(data, "fuzz");
});
