//! A run configuration (TOML): parse and validate.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = diffflow::config::RunConfig::from_toml(text);
    }
});
