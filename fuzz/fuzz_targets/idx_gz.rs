//! A gzipped IDX file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = diffflow::data::idx::read_idx_from(flate2::read::GzDecoder::new(data), "fuzz");
});
