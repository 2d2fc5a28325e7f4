#!/usr/bin/env bash
# Property-based tests of the HTTP API against its own OpenAPI document
# (GET /api/openapi.json) on a real server: schemathesis (PyPI) generates
# valid and invalid requests for every operation and checks that none is
# answered 5xx and that every answer matches the document (status, content
# type, headers, body schema), and that invalid input is refused.
#
# Bounded: --max-examples per operation and a fixed seed, so a run is
# repeatable and takes well under a minute. Needs the debug binaries
# (`cargo build`) and python3; installs schemathesis into target/ once.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/schemathesis-venv
ST_VERSION=4.32.5
if [ ! -x "$VENV/bin/st" ] || ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$ST_VERSION"; then
  echo "schemathesis.sh: installing schemathesis $ST_VERSION into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$ST_VERSION"
fi

SECRET="schemathesis-secret-$RANDOM-$RANDOM-$RANDOM"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LOG=$(mktemp)
target/debug/hrrt-server --jwt-secret "$SECRET" --listen "127.0.0.1:$PORT" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -f "$LOG"' EXIT

TOKEN=$(target/debug/hrrt token mint --role service --user schemathesis --secret "$SECRET" --ttl 1h)
# Security parameters are not generated: every request carries the one
# valid token, so the operations are exercised past authentication (the
# e2e tests cover missing and bad tokens).
st() {
  "$VENV/bin/st" run "http://127.0.0.1:$PORT/api/openapi.json" \
    --wait-for-schema 20 \
    -H "Authorization: Bearer $TOKEN" \
    --generation-with-security-parameters false \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection \
    --max-examples 60 --seed 20261202 --generation-database none \
    --request-timeout 10 --no-color \
    --report-dir target/schemathesis-report --report har "$@"
}
# POST /api/disconnect runs last and alone: schemathesis reads the token's
# `sub` and, rightly, revokes it (`"revoke": true`), after which every
# other operation would only ever see 401.
st --exclude-path /api/disconnect
st --include-path /api/disconnect
if ! kill -0 "$SERVER" 2>/dev/null; then
  echo "schemathesis.sh: the server died during the run; its log:" >&2
  cat "$LOG" >&2
  exit 1
fi
