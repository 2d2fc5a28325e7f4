#!/usr/bin/env python3
"""Turns the JSON reports of scripts/bench.sh into docs/benchmarks.md's tables.

Usage: bench_table.py REPORT_DIR DOC. Rewrites the part of DOC between the
`<!-- bench:begin -->` and `<!-- bench:end -->` markers (or appends it).
"""

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone


def load(directory, name):
    path = os.path.join(directory, name + ".json")
    if not os.path.exists(path):
        return None, None
    with open(path) as f:
        report = json.load(f)
    with open(os.path.join(directory, name + ".cmd")) as f:
        command = f.read().strip()
    return report, command


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = os.cpu_count()
    kernel = platform.release()
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{cpu}, {cores} cores, Linux {kernel}, {rustc}"


def ms(x):
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def main():
    directory, doc = sys.argv[1], sys.argv[2]
    lines = []
    add = lines.append
    add("<!-- bench:begin -->")
    add(f"Measured {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on {machine()}; "
        "server pinned to CPU 0, `hrrt load` to CPU 1, release builds, "
        "`hrrt-server --send-queue 4096`.")
    add("")

    idle, cmd = load(directory, "idle")
    if idle:
        s = idle.get("server") or {}
        add("### Idle connections")
        add("")
        add("| connections held | server RSS before → with all open | RSS per connection |")
        add("|---|---|---|")
        add(f"| {idle['connections']['ok']:,} of {idle['connections']['requested']:,} "
            f"| {s.get('rss_kib_before', 0):,} KiB → {s.get('rss_kib_connected', 0):,} KiB "
            f"| **{s.get('rss_per_connection_kib', 0):.2f} KiB** |")
        add("")
        add(f"`{cmd}`")
        add("")

    rows = [("fanout-50", "50"), ("fanout-200", "200"), ("fanout-1000", "1,000"), ("target", "40")]
    present = [(n, r, *load(directory, n)) for n, r in rows]
    present = [p for p in present if p[2]]
    if present:
        add("### Fan-out: 10,000 connections over 10 orgs (1,000 per org)")
        add("")
        add("| events/s | deliveries/s | delivery p50 | p99 | p99.9 | max | last recipient p99 "
            "| server CPU s | deliveries per server CPU-second | lost | dup | failed/closed |")
        add("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, rate, r, _ in present:
            s = r.get("server") or {}
            l = r["latency_ms"]
            closed = r["connections"]["failed"] + sum(r["connections"]["closed_early"].values())
            add(f"| {rate} | {r['throughput']['deliveries_per_s']:,.0f} | {ms(l['p50'])} ms | {ms(l['p99'])} ms "
                f"| {ms(l['p99_9'])} ms | {ms(l['max'])} ms | {ms(r['last_recipient_ms']['p99'])} ms "
                f"| {s.get('cpu_seconds', 0):.2f} | {s.get('deliveries_per_cpu_second', 0):,.0f} "
                f"| {r['events']['lost']} | {r['events']['duplicated']} | {closed} |")
        add("")
        for name, _, _, cmd in present:
            add(f"- {name}: `{cmd}`")
        add("")

    broadcast, cmd = load(directory, "broadcast")
    if broadcast:
        r = broadcast["last_recipient_ms"]
        l = broadcast["latency_ms"]
        add("### Broadcast: one org of 10,000 connections, 20 events/s")
        add("")
        add("| until the last recipient has an event: p50 | p99 | max | delivery p50 | delivery p99 | lost |")
        add("|---|---|---|---|---|---|")
        add(f"| {ms(r['p50'])} ms | {ms(r['p99'])} ms | {ms(r['max'])} ms | {ms(l['p50'])} ms "
            f"| {ms(l['p99'])} ms | {broadcast['events']['lost']} |")
        add("")
        add(f"`{cmd}`")
        add("")

    storm, cmd = load(directory, "storm")
    if storm:
        c = storm["connections"]
        s = storm.get("server") or {}
        add("### Connect storm: 19,000 connections as fast as the load generator opens them")
        add("")
        add("| opened | connects/s | connect p50 | p99 | max | server CPU for the storm |")
        add("|---|---|---|---|---|---|")
        add(f"| {c['ok']:,} of {c['requested']:,} | {c['connects_per_s']:,.0f} | {ms(c['connect_ms']['p50'])} ms "
            f"| {ms(c['connect_ms']['p99'])} ms | {ms(c['connect_ms']['max'])} ms | {s.get('connect_cpu_seconds', 0):.2f} s |")
        add("")
        add(f"`{cmd}`")
        add("")

    # bench.sh's side-by-side table of the same run (bench_compare.py).
    try:
        with open(os.path.join(directory, "compare.md")) as f:
            compare = f.read().strip()
    except OSError:
        compare = ""
    if compare:
        add("### Every row against the baselines, same run")
        add("")
        add("hrrt, then (when the run had `BENCH_BEFORE`) an earlier hrrt build, the bare "
            "axum + tungstenite broadcast and the floor probe (bench/), each row run against "
            "each server in turn; ratios are hrrt's figure over the other's.")
        add("")
        add(compare)
        add("")
    add("<!-- bench:end -->")

    block = "\n".join(lines)
    text = open(doc).read() if os.path.exists(doc) else ""
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    with open(doc, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
