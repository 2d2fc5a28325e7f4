#!/usr/bin/env bash
# The Redis soak (not in CI): 3 node processes, a Redis with AOF, a few
# hundred connections that drop and resume at random on random nodes, a
# publisher retrying under idempotency keys; nodes killed -9 and restarted
# every 30 s, CLIENT KILL TYPE pubsub every 45 s, a Redis restart every
# 120 s. Fails if any connection misses, doubles or reorders an accepted
# event of its channel without a resync.required covering it.
#
#   scripts/soak.sh [SECONDS] [CLIENTS]      (default 600 s, 300 clients)
set -euo pipefail
cd "$(dirname "$0")/.."
SOAK_SECS="${1:-600}" SOAK_CLIENTS="${2:-300}" HRRT_REQUIRE_REDIS=1 \
  cargo test --release --locked -p hrrt-server --test e2e -- --ignored --exact soak::soak --nocapture
