#!/usr/bin/env bash
# The scenario library against one shared, long-running server with its
# default flags (as QA runs it against staging): once, again, and two runs
# at once. Each run isolates itself (docs/scenarios.md).
#
#   scripts/scenarios-shared.sh          # uses target/debug/hrrt
#   HRRT_BIN=target/release/hrrt scripts/scenarios-shared.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${HRRT_BIN:-target/debug/hrrt}
[ -x "$BIN" ] || cargo build --locked -p hrrt
SECRET=scenarios-shared-secret-scenarios-shared
LOG=$(mktemp)
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  rm -f "$LOG"
}
trap cleanup EXIT

NO_COLOR=1 "$BIN" serve --jwt-secret "$SECRET" --listen 127.0.0.1:0 2>"$LOG" &
SERVER_PID=$!
ADDR=
for _ in $(seq 1 100); do
  ADDR=$(sed -n 's/.*listening addr=\([0-9.:]*\).*/\1/p' "$LOG" | head -n 1)
  [ -n "$ADDR" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$LOG" >&2; exit 1; }
  sleep 0.1
done
[ -n "$ADDR" ] || { echo "scenarios-shared.sh: the server never said where it listens" >&2; cat "$LOG" >&2; exit 1; }

run() {
  NO_COLOR=1 "$BIN" scenario run --url "http://$ADDR" --secret "$SECRET" --parallel 8 tests/scenarios/*.yaml
}
echo "scenarios-shared.sh: the library against one server at $ADDR: first run" >&2
run
echo "scenarios-shared.sh: second run" >&2
run
echo "scenarios-shared.sh: two runs at once" >&2
run >"$LOG.a" 2>&1 & A=$!
run >"$LOG.b" 2>&1 & B=$!
STATUS=0
wait "$A" || STATUS=1
wait "$B" || STATUS=1
cat "$LOG.a" "$LOG.b"
rm -f "$LOG.a" "$LOG.b"
exit "$STATUS"
