#!/usr/bin/env python3
"""Prints every moment this process could not run for STALL_MS or more.

A 1 ms sleep loop pinned to one core (taskset): a late wake-up by more than
the threshold means the core ran something else or the machine was not
running at all. Two probes, one per core, that stall at the same instants
show a machine-wide stall (a virtual machine paused by its host), which no
server on it can hide. bench-cluster.sh runs one on each core beside every
cluster run and lines the stalls up with the slow events.

Usage: stall_probe.py OUT [STALL_MS]; lines "unix_seconds gap_ms
monotonic_seconds" (the moment the wake-up came, how long since the
previous one, the same moment on CLOCK_MONOTONIC as `perf record -k
CLOCK_MONOTONIC` stamps samples); stops on SIGTERM.
"""
import signal
import sys
import time

out = open(sys.argv[1], "w", buffering=1)
threshold = float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.010
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
last = time.monotonic()
while True:
    time.sleep(0.001)
    now = time.monotonic()
    if now - last >= threshold + 0.001:
        out.write(f"{time.time():.4f} {(now - last) * 1000:.1f} {now:.4f}\n")
    last = now
