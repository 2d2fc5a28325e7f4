#!/usr/bin/env bash
# Runs every check and test of the workspace, as CI does. Needs only a Rust
# toolchain; tests that use Node.js skip themselves when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
