//! Helpers shared by the CLI's integration tests: the binary, a command's output as text, and
//! the assertion that it succeeded.
#![allow(dead_code)] // each test file uses its own subset

use std::process::{Command, Output};

/// The `diffflow` binary built for these tests.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_diffflow"))
}

/// The stdout and stderr of `out`, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `out`, after asserting that its command succeeded (both streams shown if not).
pub fn ok(out: Output) -> Output {
    assert!(out.status.success(), "{}", text(&out));
    out
}
