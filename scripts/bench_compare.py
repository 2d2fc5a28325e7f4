#!/usr/bin/env python3
"""hrrt, the bare broadcast and the floor probe side by side, per row, from
the reports scripts/bench.sh wrote (ROW.json, ROW.bare.json, ROW.floor.json),
and an earlier hrrt build when the run had one (ROW.before.json,
BENCH_BEFORE=…).

    python3 scripts/bench_compare.py target/bench target batch idle
"""
import json
import os
import sys


def load(directory, name):
    try:
        with open(os.path.join(directory, name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def figures(r):
    if r is None:
        return None
    s = r.get("server") or {}
    l = r["latency_ms"]
    delivered = r["throughput"].get("deliveries_per_s", 0)
    per_cpu = s.get("deliveries_per_cpu_second", 0)
    return {
        "p50": l["p50"],
        "p99": l["p99"],
        "us_per_delivery": 1e6 / per_cpu if per_cpu else 0,
        "deliveries_per_s": delivered,
        "rss": s.get("rss_per_connection_kib", 0),
        "lost": r["events"]["lost"],
    }


def steal(directory, name):
    """Percent of each core's time the hypervisor took during the run, from
    the /proc/stat lines bench.sh saved before and after it."""
    return cores(directory, name, lambda d: d[7])


def busy(directory, name):
    """Percent of each core's time spent running anything (user, system,
    interrupts) during the run: a load core near 100 % means the row
    measured the load generator's queue, not the server."""
    return cores(directory, name, lambda d: d[0] + d[1] + d[2] + d[5] + d[6])


def cores(directory, name, part):
    try:
        with open(os.path.join(directory, name + ".procstat")) as f:
            lines = [line.split() for line in f if line.strip()]
    except OSError:
        return None
    before, after = {}, {}
    for fields in lines:
        target = after if fields[0] in before else before
        target[fields[0]] = [int(x) for x in fields[1:]]
    out = []
    for cpu in sorted(before):
        if cpu not in after:
            continue
        delta = [a - b for a, b in zip(after[cpu], before[cpu])]
        total = sum(delta[:8])
        # Fields: user nice system idle iowait irq softirq steal.
        out.append(f"{100 * part(delta) / total:.0f} %" if total else "–")
    return ", ".join(out) or None


def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "–"


def main():
    directory, rows = sys.argv[1], sys.argv[2:]
    with_before = any(load(directory, row + ".before") for row in rows)
    suffixes = ("", ".before", ".bare", ".floor") if with_before else ("", ".bare", ".floor")
    names = ["hrrt", "hrrt before", "bare broadcast", "floor probe"]
    if not with_before:
        names.remove("hrrt before")
    against = suffixes[1:]
    print("| row | measure | " + " | ".join(names) + " | "
          + " | ".join(f"hrrt ÷ {n.split()[-1] if n.startswith('hrrt') else n.split()[0]}"
                       for n in names[1:]) + " |")
    print("|---|---|" + "---|" * (2 * len(names) - 1))
    blank = " |" * len(against)
    for row in rows:
        servers = [figures(load(directory, row + s)) for s in suffixes]
        h = servers[0]
        if h is None:
            continue
        for key, label, fmt in [
            ("p50", "delivery p50 (ms)", "{:.1f}"),
            ("p99", "delivery p99 (ms)", "{:.1f}"),
            ("us_per_delivery", "server CPU per delivery (µs)", "{:.2f}"),
            ("rss", "RSS per connection (KiB)", "{:.2f}"),
            ("lost", "lost", "{}"),
        ]:
            cells = [fmt.format(x[key]) if x else "–" for x in servers]
            ratios = [ratio(h[key], x and x[key]) for x in servers[1:]]
            print(f"| {row} | {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
        stolen = [steal(directory, row + s) for s in suffixes]
        if any(stolen):
            print(f"| {row} | steal time (server, load core) | "
                  + " | ".join(x or "–" for x in stolen) + " |" + blank)
        used = [busy(directory, row + s) for s in suffixes]
        if any(used):
            print(f"| {row} | cores busy (server, load core) | "
                  + " | ".join(x or "–" for x in used) + " |" + blank)


if __name__ == "__main__":
    main()
