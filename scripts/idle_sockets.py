#!/usr/bin/env python3
"""Holds N idle loopback TCP connection pairs (2N sockets) until SIGTERM.

A control for docs/benchmarks.md ("What the rest is"): run six of these
beside scripts/stall_probe.py to see whether sockets alone, held by
something other than hrrt, make this machine stall. Usage:
idle_sockets.py N PORT (one listener on 127.0.0.1:PORT; N + N sockets must
fit the open-file limit). Prints "holding N pairs" once they are open.
"""
import signal
import socket
import sys
import time

n, port = int(sys.argv[1]), int(sys.argv[2])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(4096)
held = []
for _ in range(n):
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    held.append((client, accepted))
print(f"holding {len(held)} pairs", flush=True)
while True:
    time.sleep(3600)
