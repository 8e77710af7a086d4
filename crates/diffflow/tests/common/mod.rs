//! Helpers shared by the integration tests.

/// The larger of `a` and `b`, NaN when either is NaN (unlike `f64::max`, which drops a NaN, so
/// that a comparison folded with it cannot pass on NaN values).
pub fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}
