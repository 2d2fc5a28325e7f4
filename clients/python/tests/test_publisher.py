"""hrrt_client against a real hrrt-server: publish, batch, every error
mapped, a retry past the client timeout that delivers once, and the
compat functions reaching a real WebSocket listener."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest
from websockets.sync.client import connect

from hrrt_client import (
    AsyncPublisher,
    BadRequest,
    BadRequestError,
    Forbidden,
    ForbiddenError,
    HrrtError,
    Publisher,
    RateLimitedError,
    TooLarge,
    TooLargeError,
    Unauthorized,
    UnauthorizedError,
    Unavailable,
    UnavailableError,
)
from hrrt_client import compat
from hrrt_client._publisher import _Core

from conftest import SECRET


class Listener:
    """A real WebSocket client of hrrt, as the browser is."""

    def __init__(self, server, user: str, org: str, token: str = None):
        token = token or server.token(user, org)
        self._connection = connect(f"ws://127.0.0.1:{server.port}/ws?token={token}")
        self.ws = self._connection.__enter__()
        connected = self.next()
        assert connected["type"] == "connected", connected

    def next(self, timeout: float = 5.0) -> dict:
        while True:
            frame = json.loads(self.ws.recv(timeout=timeout))
            if frame["type"] != "ping":
                return frame

    def nothing_more(self, within: float = 0.5) -> bool:
        try:
            frame = self.next(timeout=within)
        except TimeoutError:
            return True
        raise AssertionError(f"unexpected frame {frame}")

    def close(self) -> None:
        self._connection.__exit__(None, None, None)


def test_publish_and_batch_reach_a_listener(server):
    listener = Listener(server, "42", "7")
    with Publisher(server.url, SECRET) as hrrt:
        ack = hrrt.publish("entity.created", org_id=7, payload={"id": 1, "name": "Ann"})
        assert ack.channel == "org:7"
        event = listener.next()
        assert (event["type"], event["seq"], event["payload"]) == (
            "entity.created",
            ack.seq,
            {"id": 1, "name": "Ann"},
        )
        acks = hrrt.publish_batch(
            [
                {"type": "chat.message", "org_id": "7", "payload": {"text": "hi"}},
                {"type": "share.created", "user_id": 42, "payload": {"share_id": 5}},
            ]
        )
        assert [a.channel for a in acks] == ["org:7", "user:42"]
        assert listener.next()["type"] == "chat.message"
        assert listener.next()["type"] == "share.created"
    listener.close()


def test_every_error_is_typed(server):
    with Publisher(server.url, SECRET, retries=0) as hrrt:
        with pytest.raises(BadRequest) as e:
            hrrt.publish("Not A Type", org_id=7)
        assert e.value.status == 400 and e.value.code == "bad_event"
        with pytest.raises(BadRequest):
            hrrt.publish("entity.created", org_id=7, user_id=1)
        with pytest.raises(TooLarge) as e:
            hrrt.publish("entity.created", org_id=7, payload={"blob": "x" * (2 << 20)})
        assert e.value.status == 413
    with Publisher(server.url, "another-secret-another-secret-xx", retries=0) as wrong:
        with pytest.raises(Unauthorized) as e:
            wrong.publish("entity.created", org_id=7)
        assert e.value.status == 401
    # 403 needs a token whose role may not publish, which the Publisher
    # never mints: the mapping itself.
    core = _Core(server.url, SECRET, 1.0, 0, "backend")
    kind, error = core.outcome(
        httpx.Response(403, json={"error": {"code": "forbidden", "message": "no"}})
    )
    assert kind == "raise" and isinstance(error, Forbidden)
    with Publisher("http://127.0.0.1:1", SECRET, retries=1, timeout=0.5) as nowhere:
        with pytest.raises(Unavailable):
            nowhere.publish("entity.created", org_id=7)
    with pytest.raises(ValueError):
        Publisher(server.url, "")


def test_a_429_is_waited_out_with_retry_after(rate_limited_server):
    with Publisher(rate_limited_server.url, SECRET) as hrrt:
        first = hrrt.publish("entity.created", org_id=9)
        started = time.monotonic()
        second = hrrt.publish("entity.created", org_id=9)
        assert second.seq == first.seq + 1
        assert time.monotonic() - started >= 0.5, "it waited for the rate limit"


class SlowProxy:
    """Forwards to hrrt but holds the first answer back for `delay`
    seconds: the client times out though the publish was committed."""

    def __init__(self, port: int, delay: float):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.upstream, self.delay, self.connections = port, delay, 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            delay = self.delay if self.connections == 1 else 0.0
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pump, args=(client, server, 0.0), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, delay), daemon=True).start()

    @staticmethod
    def _pump(src, dst, delay):
        try:
            while data := src.recv(65536):
                if delay:
                    time.sleep(delay)
                    delay = 0.0
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self):
        self.listener.close()


def test_a_retry_past_the_client_timeout_delivers_once(server):
    listener = Listener(server, "43", "11")
    proxy = SlowProxy(server.port, delay=1.5)
    with Publisher(f"http://127.0.0.1:{proxy.port}", SECRET, timeout=0.5, retries=3) as hrrt:
        ack = hrrt.publish("entity.created", org_id=11, payload={"n": "once"})
    assert proxy.connections >= 2, "the first attempt timed out and was retried"
    event = listener.next()
    assert (event["seq"], event["payload"]) == (ack.seq, {"n": "once"})
    assert listener.nothing_more(), "delivered once"
    proxy.close()
    listener.close()


def test_the_async_publisher_and_the_compat_functions_reach_the_front_end(server):
    listener = Listener(server, "44", "12")

    async def main():
        async with AsyncPublisher(server.url, SECRET) as hrrt:
            ack = await hrrt.publish("entity.updated", org_id=12, payload={"id": 3})
            assert ack.channel == "org:12"
        compat.configure(server.url, SECRET)
        await compat.broadcast_entity_created(12, {"id": 1, "name": "Ann"})
        await compat.broadcast_entity_updated(12, {"id": 1, "name": "Anna"})
        await compat.broadcast_entity_deleted(12, 1)
        await compat.broadcast_chat_message(12, {"text": "hello"})
        await compat.broadcast_share_created(44, {"share_id": 5})
        await compat.broadcast_share_revoked(44, {"share_id": 5})

    asyncio.run(main())
    got = [listener.next() for _ in range(7)]
    assert [f["type"] for f in got] == [
        "entity.updated",
        "entity.created",
        "entity.updated",
        "entity.deleted",
        "chat.message",
        "share.created",
        "share.revoked",
    ]
    assert got[3]["payload"] == {"id": 1}, "the front end reads payload.id"
    assert got[5]["channel"] == "user:44"
    listener.close()


def test_a_503_while_redis_is_away_is_retried_until_it_is_back(tmp_path):
    """The Redis engine answers 503 while Redis is down; the publisher
    retries (same idempotency key) until it is back, and the event is
    published once."""
    import shutil
    import subprocess

    from conftest import Server, free_port

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/test.sh installs it)")
    port = free_port()

    def redis():
        return subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
        )

    def until_redis_answers():
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    r = redis()
    until_redis_answers()
    server = Server("--redis-url", f"redis://127.0.0.1:{port}/")
    try:
        listener = Listener(server, "45", "13")
        r.terminate()
        r.wait(timeout=10)
        result = {}
        refused = threading.Event()

        def seen(response):
            if response.status_code == 503:
                refused.set()

        def publish():
            http = httpx.Client(timeout=3.0, event_hooks={"response": [seen]})
            with Publisher(server.url, SECRET, retries=30, http=http) as hrrt:
                result["ack"] = hrrt.publish("entity.created", org_id=13, payload={"n": "back"})

        thread = threading.Thread(target=publish)
        thread.start()
        # Redis comes back only after an attempt was refused with 503.
        assert refused.wait(timeout=20), "no 503 while Redis was down"
        r = redis()
        until_redis_answers()
        thread.join(timeout=60)
        assert "ack" in result, "published once Redis was back"
        # Redis came back empty: a new epoch, told in band first.
        event = listener.next(timeout=15)
        for _ in range(4):
            if event["type"] != "resync.required":
                break
            assert event["payload"]["reason"] == "epoch_changed", event
            event = listener.next(timeout=15)
        assert (event["seq"], event["payload"]) == (result["ack"].seq, {"n": "back"})
        assert listener.nothing_more()
        listener.close()
    finally:
        server.stop()
        r.terminate()
        r.wait(timeout=10)


def test_errors_end_in_error_under_one_base_and_the_old_names_remain(server):
    for new, old in [
        (BadRequestError, BadRequest),
        (UnauthorizedError, Unauthorized),
        (ForbiddenError, Forbidden),
        (TooLargeError, TooLarge),
        (UnavailableError, Unavailable),
    ]:
        assert new is old and issubclass(new, HrrtError)
    assert issubclass(RateLimitedError, HrrtError)
    hrrt = Publisher(server.url, SECRET)
    assert hrrt._core.retries == 3, "SPEC: 3 retries by default"
    hrrt.close()


@pytest.fixture()
def small_table_server():
    from conftest import Server

    s = Server("--idempotency-keys", "3")
    yield s
    s.stop()


def test_a_batch_takes_one_slot_and_a_full_table_is_rate_limited_with_retry_after(small_table_server):
    server = small_table_server
    listener = Listener(server, "46", "14")
    with Publisher(server.url, SECRET) as hrrt:
        events = [{"type": "entity.created", "org_id": 14, "payload": {"n": n}} for n in range(10)]
        # Ten events, one key: a table of three takes three such batches.
        for _ in range(3):
            acks = hrrt.publish_batch(events)
            assert len(acks) == 10 and not any(a.duplicate for a in acks)
        started = time.monotonic()
        with pytest.raises(RateLimitedError) as e:
            hrrt.publish_batch(events)
        assert e.value.status == 429 and e.value.retry_after is not None
        assert 1 <= e.value.retry_after <= 300
        assert time.monotonic() - started < 2, "a Retry-After past max_wait is said at once"
    seqs = [listener.next()["seq"] for _ in range(30)]
    assert seqs == list(range(1, 31))
    assert listener.nothing_more(), "the refused batch published nothing"
    listener.close()


def test_a_retried_batch_is_delivered_once(server):
    listener = Listener(server, "47", "15")
    proxy = SlowProxy(server.port, delay=1.5)
    events = [{"type": "entity.created", "org_id": 15, "payload": {"n": n}} for n in range(3)]
    with Publisher(f"http://127.0.0.1:{proxy.port}", SECRET, timeout=0.5, retries=3) as hrrt:
        acks = hrrt.publish_batch(events)
    assert proxy.connections >= 2, "the first attempt timed out and was retried"
    assert [a.duplicate for a in acks] == [True, True, True], "the retry got the stored answers"
    got = [listener.next()["payload"]["n"] for _ in range(3)]
    assert got == [0, 1, 2]
    assert listener.nothing_more(), "delivered once"
    proxy.close()
    listener.close()


def test_the_backend_calls_history_stats_nodes_disconnect_and_user_token(server):
    with Publisher(server.url, SECRET) as hrrt:
        token = hrrt.user_token(48, 16, ttl=60)
        listener = Listener(server, "48", "16", token=token)
        first = hrrt.publish("entity.created", org_id=16, payload={"id": 1})
        hrrt.publish("entity.updated", org_id=16, payload={"id": 1})
        page = hrrt.history("org:16", since=first.seq)
        assert [e["type"] for e in page["events"]] == ["entity.updated"]
        assert [e["seq"] for e in hrrt.history("org:16", limit=1)["events"]] == [first.seq]
        stats = hrrt.stats()
        assert stats["connections"]["by_org"]["16"] == 1
        assert len(hrrt.nodes()) == 1
        answer = hrrt.disconnect(48, reason="access changed", revoke=True)
        assert answer["closed"] == 1 and "tokens_valid_from" in answer
        frames = []
        try:
            while True:
                frames.append(listener.next(timeout=5))
        except Exception as e:  # the close
            close = getattr(e, "rcvd", None)
        assert close is not None and (close.code, close.reason) == (1008, "access changed"), frames
        with pytest.raises(BadRequestError):
            hrrt.history("not-a-channel")
        with pytest.raises(ValueError):
            hrrt.user_token(1, 1, ttl=0)
