"""A real hrrt-server for the tests, started on a free loopback port.

The binary is HRRT_SERVER_BIN, or the workspace's target/debug/hrrt-server
(`cargo build` first; scripts/test.sh does).
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import time
import urllib.request

import jwt
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
SECRET = "python-client-secret-python-client-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *extra: str):
        binary = os.environ.get("HRRT_SERVER_BIN", str(ROOT / "target/debug/hrrt-server"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [binary, "--jwt-secret", SECRET, "--listen", f"127.0.0.1:{self.port}", *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{binary} did not start")

    def token(self, user: str, org: str, role: str = "user") -> str:
        now = int(time.time())
        return jwt.encode(
            {"sub": user, "org_id": org, "role": role, "iat": now, "exp": now + 600},
            SECRET,
            algorithm="HS256",
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture()
def rate_limited_server():
    s = Server("--publish-rate", "1")
    yield s
    s.stop()
