//! A gzipped NumPy .npy file.
#![no_main]
use diffflow::data::tabular::{parse, LoadOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse(data, "fuzz.npy.gz", &LoadOptions::default());
});
