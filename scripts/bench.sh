#!/usr/bin/env bash
# The benchmark matrix of docs/benchmarks.md, measured with `hrrt load`.
#
# Builds release binaries, then for each row starts a fresh hrrt-server
# pinned to CPU 0 and runs `hrrt load` pinned to CPU 1 against it, so the
# two never share a core. Reports land in target/bench/*.json and the
# table in docs/benchmarks.md (or $BENCH_OUT).
#
# Every row is also run, in the same invocation, against the two baselines
# of bench/ (hrrt-baseline): `bare`, an axum + tungstenite broadcast, and
# `floor`, a probe writing one pre-encoded frame per socket with a plain
# non-blocking send; target/bench/compare.md puts the three side by side.
#
#   scripts/bench.sh            # the whole matrix, three servers (about 12 minutes)
#   BENCH_SERVERS=hrrt scripts/bench.sh   # hrrt only
#   BENCH_PERF=1 BENCH_SERVERS=hrrt scripts/bench.sh target batch   # with a
#                               # `perf record -e cpu-clock -g` of the server per row
#   scripts/bench.sh idle fanout-50   # some rows only
#   BENCH_STALLS=1 scripts/bench.sh target   # plus a 1 ms sleeper on each core that
#                               # logs when the machine stalled it (perturbs the row)
#   BENCH_BIN_DIR=/tmp/old BENCH_OUT=/tmp/old.md scripts/bench.sh   # other binaries,
#                               # e.g. a previous build, for a before/after pair
#   BENCH_BEFORE=/tmp/old/hrrt-server scripts/bench.sh target batch   # a fourth server,
#                               # an earlier hrrt-server build run with hrrt's flags in
#                               # the same invocation: compare.md gets "before" columns
#
# Needs: Linux, 2+ cores, taskset (util-linux), python3, curl. Traffic stays
# on 127.0.0.1. Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."

# The cluster rows (5 nodes + Redis, 100,000 connections) have their own script.
if [ "${1:-}" = cluster ]; then
  shift
  exec scripts/bench-cluster.sh "$@"
fi

PORT=${BENCH_PORT:-18090}
URL="http://127.0.0.1:$PORT"
OUT_DIR=target/bench
DOC=${BENCH_OUT:-docs/benchmarks.md}
SECRET=bench-secret-bench-secret-bench
SERVER_CPU=${BENCH_SERVER_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}

for tool in taskset python3 curl ${BENCH_PERF:+perf}; do
  command -v "$tool" >/dev/null || { echo "bench.sh needs $tool" >&2; exit 2; }
done

BIN_DIR=${BENCH_BIN_DIR:-target/release}
if [ -z "${BENCH_BIN_DIR:-}" ]; then
  cargo build --release --locked -p hrrt -p hrrt-server -p hrrt-baseline
fi
BEFORE_BIN=${BENCH_BEFORE:-}
if [ -n "$BEFORE_BIN" ]; then
  [ -x "$BEFORE_BIN" ] || { echo "BENCH_BEFORE=$BEFORE_BIN is not an executable" >&2; exit 2; }
  SERVERS=${BENCH_SERVERS:-hrrt before bare floor}
else
  SERVERS=${BENCH_SERVERS:-hrrt bare floor}
fi
BASELINE_BIN=target/release/hrrt-baseline
# The load generator is always this build's, so both servers face the same client.
LOAD_BIN=target/release/hrrt
[ -x "$LOAD_BIN" ] || cargo build --release --locked -p hrrt
OUT_DIR=${BENCH_RUN_DIR:-$OUT_DIR}
mkdir -p "$OUT_DIR"
# Both processes hold tens of thousands of sockets.
ulimit -n "$(ulimit -Hn)"

SERVER_PID=
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=
}
trap stop_server EXIT

# start_server hrrt|before|bare|floor [hrrt-server flags…]
start_server() {
  local kind=$1
  shift
  case $kind in
    hrrt) HRRT_JWT_SECRET=$SECRET RUST_LOG=warn taskset -c "$SERVER_CPU" \
            "$BIN_DIR/hrrt-server" --listen "127.0.0.1:$PORT" "$@" \
            >"$OUT_DIR/server.log" 2>&1 & ;;
    before) HRRT_JWT_SECRET=$SECRET RUST_LOG=warn taskset -c "$SERVER_CPU" \
            "$BEFORE_BIN" --listen "127.0.0.1:$PORT" "$@" \
            >"$OUT_DIR/server.before.log" 2>&1 & ;;
    *) HRRT_JWT_SECRET=$SECRET taskset -c "$SERVER_CPU" \
            "$BASELINE_BIN" "$kind" "127.0.0.1:$PORT" >"$OUT_DIR/server.$kind.log" 2>&1 & ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    curl -fsS "$URL/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "hrrt-server did not start; see $OUT_DIR/server.log" >&2
  exit 1
}

# run NAME [hrrt load flags…]
run() {
  local name=$1
  shift
  local kind file
  for kind in $SERVERS; do
    echo "== $name ($kind): hrrt load $*" >&2
    # hrrt's reports keep their old names (bench_table.py reads them).
    file=$name
    [ "$kind" = hrrt ] || file=$name.$kind
    case $kind in
      hrrt|before) start_server "$kind" --send-queue 4096 ;;
      *) start_server "$kind" ;;
    esac
    # The two cores' counters before and after: on a shared host the
    # hypervisor's steal time moves the latency figures, and
    # bench_compare.py prints it beside them.
    grep -E "^cpu($SERVER_CPU|$LOAD_CPU) " /proc/stat >"$OUT_DIR/$file.procstat"
    # BENCH_PERF=1: a CPU profile of the server for the whole run, read
    # with `perf report -i target/bench/ROW.perf.data --no-children`.
    local perf_pid=
    if [ -n "${BENCH_PERF:-}" ]; then
      perf record -q -e cpu-clock -g -p "$SERVER_PID" -o "$OUT_DIR/$file.perf.data" \
        >"$OUT_DIR/$file.perf.log" 2>&1 &
      perf_pid=$!
    fi
    # BENCH_STALLS=1: a 1 ms sleeper on each core logs the moments the
    # machine did not let it run (docs/benchmarks.md: the cluster row's
    # stalls). Off by default: its 1,000 wake-ups a second cost the server
    # 10-17 % more CPU and moved the target row's p99 from 23-29 ms to
    # 43-280 ms.
    local probe_server= probe_load=
    rm -f "$OUT_DIR/$file.stalls-server" "$OUT_DIR/$file.stalls-load"
    if [ "${BENCH_STALLS:-0}" != 0 ]; then
      taskset -c "$SERVER_CPU" python3 scripts/stall_probe.py "$OUT_DIR/$file.stalls-server" &
      probe_server=$!
      taskset -c "$LOAD_CPU" python3 scripts/stall_probe.py "$OUT_DIR/$file.stalls-load" &
      probe_load=$!
    fi
    # A failed row (loss, thresholds) is recorded, not fatal.
    HRRT_JWT_SECRET=$SECRET taskset -c "$LOAD_CPU" "$LOAD_BIN" --url "$URL" load \
      --no-progress --server-pid "$SERVER_PID" --report "$OUT_DIR/$file.json" "$@" \
      | tee "$OUT_DIR/$file.txt" || true
    grep -E "^cpu($SERVER_CPU|$LOAD_CPU) " /proc/stat >>"$OUT_DIR/$file.procstat"
    if [ -n "$probe_server" ]; then
      kill "$probe_server" "$probe_load" 2>/dev/null || true
      wait "$probe_server" "$probe_load" 2>/dev/null || true
      python3 - "$OUT_DIR/$file" "$name ($kind)" >&2 <<'PY'
import sys
base, label = sys.argv[1:]
out = []
for core in ("server", "load"):
    try:
        gaps = [float(line.split()[1]) for line in open(f"{base}.stalls-{core}")]
    except (OSError, ValueError, IndexError):
        gaps = []
    out.append(f"{core} core {len(gaps)} of 10 ms or more (longest {max(gaps, default=0):.0f} ms)")
print(f"   {label} stalls of a 1 ms sleeper: " + "; ".join(out))
PY
    fi
    if [ -n "$perf_pid" ]; then
      kill -INT "$perf_pid" 2>/dev/null || true
      wait "$perf_pid" 2>/dev/null || true
    fi
    echo "hrrt load $*" >"$OUT_DIR/$file.cmd"
    stop_server
  done
}

ROWS=("$@")
[ ${#ROWS[@]} -gt 0 ] || ROWS=(idle fanout-50 fanout-200 fanout-1000 target batch broadcast storm)
for row in "${ROWS[@]}"; do
  case $row in
    idle)        run idle --connections 19000 --orgs 10 --rate 1 --duration 1s --connect-rate 5000 ;;
    fanout-50)   run fanout-50 --connections 10000 --orgs 10 --rate 50 --duration 20s --connect-rate 5000 ;;
    fanout-200)  run fanout-200 --connections 10000 --orgs 10 --rate 200 --duration 20s --connect-rate 5000 ;;
    fanout-1000) run fanout-1000 --connections 10000 --orgs 10 --rate 1000 --duration 10s --connect-rate 5000 --drain 20s ;;
    target)      run target --connections 10000 --orgs 10 --rate 40 --duration 20s --connect-rate 5000 ;;
    batch)       run batch --connections 2000 --orgs 10 --rate 1000 --batch 10 --duration 20s --connect-rate 5000 ;;
    broadcast)   run broadcast --connections 10000 --orgs 1 --rate 20 --duration 20s --connect-rate 5000 ;;
    storm)       run storm --connections 19000 --orgs 10 --rate 1 --duration 1s --connect-rate 1000000 --source-ips 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4 ;;
    *) echo "unknown row '$row'" >&2; exit 2 ;;
  esac
done

python3 scripts/bench_compare.py "$OUT_DIR" "${ROWS[@]}" | tee "$OUT_DIR/compare.md"
python3 scripts/bench_table.py "$OUT_DIR" "$DOC"
echo "wrote $DOC" >&2
