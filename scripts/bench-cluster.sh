#!/usr/bin/env bash
# The cluster benchmark of docs/benchmarks.md and docs/scaling.md: 5 nodes
# (6 at 100,000 connections, for the open-file limit) and one Redis on
# this machine, 100,000 connections held by `hrrt load --workers`, 100
# orgs of 1,000 connections spread over every node, 10 events/s published
# through one node; then the same with --churn 200.
# Reports cross-node delivery latency, per-node RSS per connection, Redis
# CPU and losses. Nodes and Redis run on CPU 0, the load generator on CPU 1.
#
#   scripts/bench.sh cluster      (or this script; CLUSTER_CONNECTIONS=20000 for a smaller run)
#   CLUSTER_RUNS=cluster CLUSTER_PERF=60 CLUSTER_PERF_DELAY=120 scripts/bench.sh cluster
#                                 # the run without churn only, and a whole-machine perf
#                                 # profile of its seconds 120-180
#   CLUSTER_NODE_FLAGS="--ping-interval 120s" scripts/bench.sh cluster   # more hrrt-server flags
#   CLUSTER_RATE=0.2 scripts/bench.sh cluster      # events/s (10 by default)
#   CLUSTER_STALLS=1 scripts/bench.sh cluster      # plus a stall probe on each core
#
# Needs redis-server, taskset, python3, curl. Traffic stays on 127.0.0.0/8.
# Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNECTIONS=${CLUSTER_CONNECTIONS:-100000}
# Five nodes, or more when each would hold more than 18,000 connections:
# a process gets 20,000 open files here, and a node at exactly 20,000
# (5 × 20,000 = 100,000) runs out and can no longer accept the publisher.
NODES=${CLUSTER_NODES:-$(( CONNECTIONS > 90000 ? (CONNECTIONS + 17999) / 18000 : 5 ))}
PER_NODE=$(( (CONNECTIONS + NODES - 1) / NODES ))
if [ "$PER_NODE" -gt $(( $(ulimit -Hn) - 1000 )) ]; then
  echo "bench-cluster.sh: $PER_NODE connections per node do not fit the open-file limit ($(ulimit -Hn)); set CLUSTER_NODES higher" >&2
  exit 2
fi
DURATION=${CLUSTER_DURATION:-30s}
BASE_PORT=${CLUSTER_PORT:-18200}
REDIS_PORT=$((BASE_PORT + 99))
SECRET=bench-secret-bench-secret-bench
OUT=target/bench/cluster
mkdir -p "$OUT"
for tool in taskset python3 curl redis-server ${CLUSTER_PERF:+perf}; do
  command -v "$tool" >/dev/null || { echo "bench-cluster.sh needs $tool" >&2; exit 2; }
done
cargo build --release --locked -p hrrt -p hrrt-server
ulimit -n "$(ulimit -Hn)"
WORKERS=$(( (CONNECTIONS + 16999) / 17000 ))

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

taskset -c 0 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$OUT" >"$OUT/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
# Redis's own record of anything that kept it busy 2 ms or more, printed
# after each run, to tell a Redis stall from a node's.
redis-cli -p "$REDIS_PORT" config set latency-monitor-threshold 2 >/dev/null

# Fresh nodes for every run, so RSS per connection is measured from a
# clean start.
start_nodes() {
  URLS=()
  NODE_PIDS=()
  for i in $(seq 0 $((NODES - 1))); do
    port=$((BASE_PORT + i))
    HRRT_JWT_SECRET=$SECRET RUST_LOG=warn taskset -c 0 target/release/hrrt-server \
      --listen "127.0.0.1:$port" --redis-url "redis://127.0.0.1:$REDIS_PORT/" ${CLUSTER_NODE_FLAGS:-} \
      >"$OUT/node$i.log" 2>&1 &
    NODE_PIDS+=($!)
    PIDS+=($!)
    URLS+=("http://127.0.0.1:$port")
  done
  for url in "${URLS[@]}"; do
    for _ in $(seq 1 100); do curl -fsS "$url/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  done
  NODE_LIST=$(IFS=,; echo "${URLS[*]}")
}
stop_nodes() {
  for pid in "${NODE_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${NODE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

one_run() {
  local name=$1; shift
  rm -f "$OUT/$name.json"
  start_nodes
  local before=() peak=()
  for pid in "${NODE_PIDS[@]}"; do before+=("$(rss_kib "$pid")"); peak+=(0); done
  local redis_before; redis_before=$(cpu_ticks "$REDIS_PID")
  redis-cli -p "$REDIS_PORT" latency reset >/dev/null
  redis-cli -p "$REDIS_PORT" slowlog reset >/dev/null
  # Peak RSS per node while the run holds its connections.
  (
    while true; do
      line=""
      for pid in "${NODE_PIDS[@]}"; do line="$line $(rss_kib "$pid" 2>/dev/null || echo 0)"; done
      echo "$line"
      sleep 1
    done
  ) >"$OUT/$name-rss.txt" &
  local sampler=$!
  # CLUSTER_STALLS=1: a stall probe on each core, the machine's own
  # hiccups in the same run (off by default: it costs the cores it
  # watches; see bench.sh's BENCH_STALLS).
  local probe0= probe1=
  rm -f "$OUT/$name-stalls0.txt" "$OUT/$name-stalls1.txt"
  if [ "${CLUSTER_STALLS:-0}" != 0 ]; then
    taskset -c 0 python3 scripts/stall_probe.py "$OUT/$name-stalls0.txt" &
    probe0=$!
    taskset -c 1 python3 scripts/stall_probe.py "$OUT/$name-stalls1.txt" &
    probe1=$!
  fi
  # CLUSTER_PERF=SECONDS: a whole-machine CPU profile of SECONDS of the
  # run, e.g. `perf report -i
  # target/bench/cluster/cluster.perf.data --sort comm --no-children`.
  # CLUSTER_PERF_DELAY=S starts it S seconds in; CLUSTER_PERF_EVENTS
  # replaces "-g -e cpu-clock" (e.g. "-e sched:sched_switch" to see who
  # held a core through a stall). Sample times are CLOCK_MONOTONIC, as the
  # stall probes' third column, to line the two up.
  if [ -n "${CLUSTER_PERF:-}" ]; then
    (
      sleep "${CLUSTER_PERF_DELAY:-0}"
      perf record -q -a ${CLUSTER_PERF_EVENTS:--g -e cpu-clock} -k CLOCK_MONOTONIC -o "$OUT/$name.perf.data" -- sleep "$CLUSTER_PERF"
    ) >"$OUT/$name.perf.log" 2>&1 &
  fi
  # How busy each core was through the publish window (from /proc/stat
  # when the load generator says "publishing" and "draining"): a core near
  # 100 % means the run measured that core's queue, not the cluster.
  rm -f "$OUT/$name.err" "$OUT/$name-cpu.txt"
  (
    for _ in $(seq 1 6000); do grep -q '^publishing' "$OUT/$name.err" 2>/dev/null && break; sleep 0.1; done
    grep -E '^cpu[01] ' /proc/stat >"$OUT/$name-cpu.txt"
    for _ in $(seq 1 6000); do grep -q '^draining' "$OUT/$name.err" 2>/dev/null && break; sleep 0.1; done
    grep -E '^cpu[01] ' /proc/stat >>"$OUT/$name-cpu.txt"
  ) &
  local window=$!
  HRRT_JWT_SECRET=$SECRET taskset -c 1 target/release/hrrt load \
    --nodes "$NODE_LIST" --publish-url "${URLS[0]}" \
    --connections "$CONNECTIONS" --orgs $((CONNECTIONS / 1000)) --rate "${CLUSTER_RATE:-10}" --duration "$DURATION" \
    --workers "$WORKERS" --source-ips 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5 \
    --connect-rate "${CLUSTER_CONNECT_RATE:-400}" --drain 10s --no-progress --report "$OUT/$name.json" \
    --per-event "$OUT/$name-events.csv" "$@" \
    >"$OUT/$name.txt" 2>"$OUT/$name.err" || true
  kill "$sampler" $probe0 $probe1 "$window" 2>/dev/null || true
  [ -s "$OUT/$name.json" ] || { echo "$name: no report; see $OUT/$name.err" >&2; stop_nodes; return; }
  local redis_after; redis_after=$(cpu_ticks "$REDIS_PID")
  {
    echo "LATENCY LATEST (event, when, latest ms, max ms):"
    redis-cli -p "$REDIS_PORT" latency latest
    echo "SLOWLOG (over 10 ms):"
    redis-cli -p "$REDIS_PORT" slowlog get 10
  } >"$OUT/$name-redis-latency.txt" 2>&1
  stop_nodes
  python3 - "$OUT/$name.json" "$OUT/$name-rss.txt" "$CONNECTIONS" "$NODES" \
    "$(( redis_after - redis_before ))" "$(getconf CLK_TCK)" "${before[*]}" "$name" \
    "$OUT/$name-events.csv" "$OUT/$name-stalls0.txt" "$OUT/$name-stalls1.txt" "$OUT/$name-cpu.txt" <<'PY'
import csv, json, sys
report, rss, conns, nodes, redis_ticks, hz, before, name, events, stalls0, stalls1, cpu = sys.argv[1:]
r = json.load(open(report))
peaks = [0] * int(nodes)
for line in open(rss):
    for i, v in enumerate(line.split()):
        peaks[i] = max(peaks[i], int(v))
base = [int(v) for v in before.split()]
# One node has no per-node lines (CLUSTER_NODES=1): it held them all.
per_node = [n["connections"] for n in r.get("nodes", [])] or [r["connections"]["ok"]]
kib = [(p - b) / max(c, 1) for p, b, c in zip(peaks, base, per_node)]
l, e = r["latency_ms"], r["events"]
print(f"{name}: {r['connections']['ok']} of {conns} connections over {nodes} nodes; "
      f"delivered {e['delivered']} of {e['expected_deliveries']}, lost {e['lost']}, duplicated {e['duplicated']}; "
      f"cross-node latency p50 {l['p50']:.2f} ms p99 {l['p99']:.2f} ms max {l['max']:.2f} ms; "
      f"last recipient p99 {r['last_recipient_ms']['p99']:.2f} ms; "
      f"node RSS per connection {min(kib):.2f}-{max(kib):.2f} KiB; "
      f"Redis CPU {int(redis_ticks) / int(hz):.2f} s; "
      f"churn {r.get('churn')}; passed {r['passed']}")
try:
    lines = [l.split() for l in open(cpu)]
    busy = []
    for core in ("cpu0", "cpu1"):
        a, b = [[int(v) for v in l[1:]] for l in lines if l[0] == core][:2]
        d = [y - x for x, y in zip(a, b)]
        idle = d[3] + d[4]  # idle, iowait
        busy.append(f"{core[3:]} {100 * (sum(d) - idle) / max(sum(d), 1):.0f} %")
    print(f"{name}: cores busy in the publish window: CPU " + ", CPU ".join(busy)
          + " (nodes and Redis on 0, the load generator on 1)")
except (OSError, ValueError):
    pass
# When the slow events were published: a period in these times names its
# cause (the ping tick, a heartbeat, a Redis job).
per_event = [e for e in csv.DictReader(open(events)) if e["last_recipient_ms"]]
rows = [(float(e["published_ms"]), float(e["last_recipient_ms"]), e["event"], e["accepted_ms"])
        for e in per_event]
slow = sorted((row for row in rows if row[1] > 20), key=lambda row: -row[1])
print(f"{name}: {len(slow)} of {len(rows)} events had a last recipient over 20 ms; the slowest "
      + ", ".join(f"#{n} at {t / 1000:.2f} s: {ms:.1f} ms (publish answered in {acc or '-'} ms)"
                  for t, ms, n, acc in slow[:8]))
# The machine's stalls in the publish window, and which slow events waited
# through one that both cores saw (within 5 ms of each other).
def stalls(path):
    try:
        return [(float(t) - float(g) / 1000, float(t)) for t, g, *_ in (l.split() for l in open(path))]
    except (OSError, ValueError):
        return []
s0, s1 = stalls(stalls0), stalls(stalls1)
if per_event and (s0 or s1):
    first = min(float(e["unix_ms"]) for e in per_event) / 1000
    last = max(float(e["unix_ms"]) + float(e["last_recipient_ms"]) for e in per_event) / 1000
    w0 = [s for s in s0 if first <= s[1] <= last + 1]
    w1 = [s for s in s1 if first <= s[1] <= last + 1]
    both = [a for a in w0 if any(a[0] < b[1] and b[0] < a[1] for b in w1)]
    def hit(e):
        start = float(e["unix_ms"]) / 1000
        end = start + float(e["last_recipient_ms"]) / 1000
        return any(a < end and start < b for a, b in both if b - a >= 0.020)
    slow50 = [e for e in per_event if float(e["last_recipient_ms"]) > 50]
    longest = max([(b - a) * 1000 for a, b in w0 + w1], default=0)
    print(f"{name}: machine stalls in the publish window: CPU 0 {len(w0)}, CPU 1 {len(w1)} "
          f"of 10 ms or more (longest {longest:.0f} ms), {len(both)} on both cores at once; "
          f"{sum(map(hit, slow50))} of the {len(slow50)} events slower than 50 ms waited through "
          f"a 20 ms+ stall of both cores")
PY
}

for run in ${CLUSTER_RUNS:-cluster cluster-churn}; do
  case $run in
    cluster) one_run cluster ;;
    cluster-churn) one_run cluster-churn --churn 200 ;;
    *) echo "unknown cluster run '$run'" >&2; exit 2 ;;
  esac
done
