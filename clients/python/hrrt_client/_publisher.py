"""The publisher: signs a service token, POSTs /api/events, retries safely."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Union

import httpx
import jwt

Id = Union[str, int]

#: How long a minted service token lives; a fresh one is minted before.
TOKEN_TTL = 3600
#: The longest Retry-After honoured, in seconds: past it the call fails.
MAX_RETRY_AFTER = 30.0


class HrrtError(Exception):
    """hrrt refused or could not take the event. `status` is the HTTP
    status (None when the server was not reached), `code` the error code
    of hrrt's JSON body."""

    def __init__(self, message: str, status: Optional[int] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.code = code


class BadRequest(HrrtError):
    """400: not JSON, or not a publishable event (bad type, target...)."""


class Unauthorized(HrrtError):
    """401: the token does not verify (wrong secret?)."""


class Forbidden(HrrtError):
    """403: the token's role may not publish."""


class TooLarge(HrrtError):
    """413: the body, the batch or a payload is over hrrt's limit."""


class Unavailable(HrrtError):
    """Retries ran out: hrrt answered 503/429, timed out or was unreachable
    on every attempt. The event may or may not be published; publishing it
    again with the same idempotency key is safe."""


_ERRORS = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 413: TooLarge}


@dataclass(frozen=True)
class Ack:
    """hrrt's answer to one event."""

    channel: str
    seq: int
    recipients: int


def _event(
    type: str,
    org_id: Optional[Id],
    user_id: Optional[Id],
    payload: Any,
    idempotency_key: Optional[str],
) -> dict:
    if (org_id is None) == (user_id is None):
        raise BadRequest("give exactly one of org_id (org-wide event) or user_id (user event)")
    event: dict = {"type": type, "payload": {} if payload is None else payload}
    if org_id is not None:
        event["org_id"] = org_id
    else:
        event["user_id"] = user_id
    # A key per call: every retry of this call is the same publish.
    event["idempotency_key"] = idempotency_key or uuid.uuid4().hex
    return event


def _batch(events: Iterable[dict]) -> list:
    out = []
    for e in events:
        e = dict(e)
        if "type" not in e:
            raise BadRequest("every event of a batch needs a type")
        e.setdefault("payload", {})
        e.setdefault("idempotency_key", uuid.uuid4().hex)
        out.append(e)
    if not out:
        raise BadRequest("the batch is empty")
    return out


class _Core:
    def __init__(self, url: str, secret: str, timeout: float, retries: int, user: str):
        if not secret:
            raise ValueError("secret is empty: give hrrt's JWT secret (HRRT_JWT_SECRET)")
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        self.endpoint = url.rstrip("/") + "/api/events"
        self.secret = secret
        self.timeout = timeout
        self.retries = retries
        self.user = user
        self._token: Optional[str] = None
        self._token_exp = 0.0

    def token(self) -> str:
        now = time.time()
        if self._token is None or now > self._token_exp - 60:
            iat = int(now)
            self._token = jwt.encode(
                {"sub": self.user, "role": "service", "iat": iat, "exp": iat + TOKEN_TTL},
                self.secret,
                algorithm="HS256",
            )
            self._token_exp = iat + TOKEN_TTL
        return self._token

    def headers(self) -> dict:
        return {"authorization": f"Bearer {self.token()}"}

    def backoff(self, attempt: int, retry_after: Optional[float]) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER)
        # Jittered exponential: 0.1, 0.2, 0.4 … s, at most 5 s.
        base = min(0.1 * (2**attempt), 5.0)
        return base / 2 + random.random() * base / 2

    def outcome(self, response: httpx.Response):
        """A final answer (acks or an error to raise), or None to retry
        with the Retry-After it gave."""
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = {}
        if status == 200:
            return ("ok", body)
        error = body.get("error", {}) if isinstance(body, dict) else {}
        message = f"{status}: {error.get('message', response.text[:200])}"
        code = error.get("code")
        if status in (429, 503):
            retry_after = response.headers.get("retry-after")
            try:
                wait = float(retry_after) if retry_after is not None else None
            except ValueError:
                wait = None
            if wait is not None and wait > MAX_RETRY_AFTER:
                return ("raise", Unavailable(message + f" (Retry-After {wait:.0f} s)", status, code))
            return ("retry", (wait, Unavailable(message, status, code)))
        return ("raise", _ERRORS.get(status, HrrtError)(message, status, code))


def _acks(body: Any) -> list:
    items = body if isinstance(body, list) else [body]
    return [Ack(channel=a["channel"], seq=int(a["seq"]), recipients=int(a["recipients"])) for a in items]


class Publisher:
    """Publishes to hrrt, synchronously. Thread-safe like httpx.Client."""

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout: float = 5.0,
        retries: int = 5,
        user: str = "backend",
        http: Optional[httpx.Client] = None,
    ):
        """`http`: your own httpx.Client (proxies, TLS settings, hooks);
        its timeout is then yours too."""
        self._core = _Core(url, secret, timeout, retries, user)
        self._http = http or httpx.Client(timeout=timeout)

    def publish(
        self,
        type: str,
        *,
        org_id: Optional[Id] = None,
        user_id: Optional[Id] = None,
        payload: Any = None,
        idempotency_key: Optional[str] = None,
    ) -> Ack:
        """Publishes one event to every connection of `org_id`, or of
        `user_id`; answers its channel and seq."""
        return _acks(self._send(_event(type, org_id, user_id, payload, idempotency_key)))[0]

    def publish_batch(self, events: Iterable[dict]) -> list:
        """Publishes events all or nothing (as POST /api/events takes them:
        `{"type", "org_id" | "user_id", "payload"}`); one Ack per event."""
        return _acks(self._send(_batch(events)))

    def _send(self, body: Any) -> Any:
        last: HrrtError = Unavailable("no attempt made")
        for attempt in range(self._core.retries + 1):
            wait = None
            try:
                response = self._http.post(self._core.endpoint, json=body, headers=self._core.headers())
            except httpx.TransportError as e:  # timeouts, resets, refused
                last = Unavailable(f"hrrt not reached: {e!r}")
            else:
                kind, value = self._core.outcome(response)
                if kind == "ok":
                    return value
                if kind == "raise":
                    raise value
                wait, last = value
            if attempt < self._core.retries:
                time.sleep(self._core.backoff(attempt, wait))
        raise last

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncPublisher:
    """Publishes to hrrt from asyncio code (FastAPI handlers)."""

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout: float = 5.0,
        retries: int = 5,
        user: str = "backend",
        http: Optional[httpx.AsyncClient] = None,
    ):
        self._core = _Core(url, secret, timeout, retries, user)
        self._http = http or httpx.AsyncClient(timeout=timeout)

    async def publish(
        self,
        type: str,
        *,
        org_id: Optional[Id] = None,
        user_id: Optional[Id] = None,
        payload: Any = None,
        idempotency_key: Optional[str] = None,
    ) -> Ack:
        return _acks(await self._send(_event(type, org_id, user_id, payload, idempotency_key)))[0]

    async def publish_batch(self, events: Iterable[dict]) -> list:
        return _acks(await self._send(_batch(events)))

    async def _send(self, body: Any) -> Any:
        last: HrrtError = Unavailable("no attempt made")
        for attempt in range(self._core.retries + 1):
            wait = None
            try:
                response = await self._http.post(
                    self._core.endpoint, json=body, headers=self._core.headers()
                )
            except httpx.TransportError as e:
                last = Unavailable(f"hrrt not reached: {e!r}")
            else:
                kind, value = self._core.outcome(response)
                if kind == "ok":
                    return value
                if kind == "raise":
                    raise value
                wait, last = value
            if attempt < self._core.retries:
                await asyncio.sleep(self._core.backoff(attempt, wait))
        raise last

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncPublisher":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
