//! Helpers shared by the tabular tests.

use super::npy::NPY_MAGIC;
use super::{parse, LoadOptions, Table};
use crate::Result;

pub(super) fn opts() -> LoadOptions {
    LoadOptions::default()
}

pub(super) fn text(s: &str, name: &str) -> Result<Table> {
    parse(s.as_bytes(), name, &opts())
}

pub(super) fn err_text(s: &str, name: &str) -> String {
    text(s, name).unwrap_err().to_string()
}

/// A hand-built NPY v1.0 file with the given header dict and payload.
pub(super) fn npy_bytes(dict: &str, payload: &[u8]) -> Vec<u8> {
    let mut h = dict.to_string();
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut b = NPY_MAGIC.to_vec();
    b.extend_from_slice(&[1, 0]);
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(payload);
    b
}

pub(super) fn f8_payload(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Awkward values: extremes, subnormals, signed zero, many digits.
pub(super) fn awkward() -> Vec<f64> {
    vec![
        0.1,
        -0.0,
        1.0 / 3.0,
        f64::MAX,
        f64::MIN_POSITIVE,
        5e-324,
        -1.234_567_890_123_456_7e-7,
        123_456_789_012_345_680.0,
        1e16,
        -2.5,
        9_007_199_254_740_993.0,
        std::f64::consts::PI,
    ]
}
