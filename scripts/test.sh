#!/usr/bin/env bash
# Runs every check and test of the workspace, as CI does. Needs a Rust
# toolchain; installs redis-server (Debian package) when it is missing,
# since the Redis engine's tests start their own. Tests that use Node.js
# skip themselves when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "test.sh: installing redis-server" >&2
  SUDO=
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends redis-server
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
