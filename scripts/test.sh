#!/usr/bin/env bash
# Runs every check and test of the workspace, as CI does. Needs a Rust
# toolchain; installs what the tests run when it is missing (Debian
# packages): redis-server and redis-sentinel, since the Redis engine's tests
# start their own, and openssl, which makes the TLS ones' certificates;
# python3 with venv for schemathesis and the Python client; chromium and
# Node.js for the browser client.
set -euo pipefail
cd "$(dirname "$0")/.."

MISSING=()
command -v redis-server >/dev/null 2>&1 || MISSING+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || MISSING+=(redis-sentinel)
command -v openssl >/dev/null 2>&1 || MISSING+=(openssl)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || MISSING+=(python3 python3-venv)
[ -x /usr/bin/chromium ] || MISSING+=(chromium)
command -v node >/dev/null 2>&1 || MISSING+=(nodejs npm)
if [ ${#MISSING[@]} -gt 0 ]; then
  echo "test.sh: installing ${MISSING[*]}" >&2
  SUDO=
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${MISSING[@]}"
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Redis is installed above, so a Redis test that cannot start it fails
# instead of skipping.
HRRT_REQUIRE_REDIS=1 cargo test --workspace --locked
# The HTTP API against its OpenAPI document, on a real server.
cargo build --workspace --locked --bins
scripts/schemathesis.sh
# The scenario library against one shared server with default flags.
scripts/scenarios-shared.sh
# The Python publisher (clients/python) against a real server.
PYVENV=target/python-venv
if [ ! -x "$PYVENV/bin/pytest" ]; then
  echo "test.sh: installing clients/python's test dependencies into $PYVENV" >&2
  python3 -m venv "$PYVENV"
  "$PYVENV/bin/pip" install -q --disable-pip-version-check -e 'clients/python[test]'
fi
HRRT_SERVER_BIN=target/debug/hrrt-server "$PYVENV/bin/python" -m pytest -q -p no:cacheprovider clients/python/tests
# The browser client (clients/js) in headless Chromium against a real server.
(cd clients/js && npm ci --no-audit --no-fund --silent)
HRRT_SERVER_BIN="$PWD/target/debug/hrrt-server" node --test clients/js/test/
