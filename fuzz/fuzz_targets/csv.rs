//! A delimited text table (CSV/TSV/whitespace), with automatic and explicit options.
#![no_main]
use diffflow::data::tabular::{parse, LoadOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse(data, "fuzz.csv", &LoadOptions::default());
    let opts = LoadOptions {
        header: Some(true),
        columns: Some(vec![1, 0, 1]),
        ..Default::default()
    };
    let _ = parse(data, "fuzz.txt", &opts);
});
