#!/usr/bin/env bash
# The project's test command: the Rust tests, then the Python package built from ./python
# into a fresh virtual environment (maturin, numpy, pytest and scikit-learn from PyPI) and
# its tests, which also check the package against the CLI binary the Rust tests built.
set -euo pipefail
cd "$(dirname "$0")"
cargo test --workspace
rust_s=$SECONDS

venv=target/py-venv
rm -rf "$venv"
python3 -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
pip install --quiet --disable-pip-version-check maturin numpy pytest scikit-learn
# The dev profile reuses the dependencies `cargo test` has just compiled (`pip install
# ./python` alone builds a release wheel, which compiles them again).
MATURIN_PEP517_ARGS="--profile dev" pip install --quiet --disable-pip-version-check \
    --no-build-isolation ./python
DIFFFLOW_CLI="$PWD/target/debug/diffflow" python -m pytest python/tests -q
echo "test.sh: Rust tests ${rust_s} s, Python package and tests $((SECONDS - rust_s)) s"
