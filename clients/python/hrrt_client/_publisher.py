"""The publisher: signs a service token, calls hrrt's HTTP API, retries
safely. The retry policy is one sans-I/O core (`_Call`); `Publisher` and
`AsyncPublisher` only run its requests and sleeps."""

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
#: How long one call may wait on the server in total (Retry-After and
#: backoff) before it gives up, by default.
MAX_WAIT = 30.0


class HrrtError(Exception):
    """hrrt refused or could not take the call. `status` is the HTTP
    status (None when the server was not reached), `code` the error code
    of hrrt's JSON body."""

    def __init__(self, message: str, status: Optional[int] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.code = code


class BadRequestError(HrrtError):
    """400: not JSON, or not a publishable event (bad type, target...)."""


class UnauthorizedError(HrrtError):
    """401: the token does not verify (wrong secret?)."""


class ForbiddenError(HrrtError):
    """403: the token's role may not do this."""


class NotFoundError(HrrtError):
    """404: no such endpoint (is the URL hrrt's?)."""


class TooLargeError(HrrtError):
    """413: the body, the batch or a payload is over hrrt's limit."""


class RateLimitedError(HrrtError):
    """429 with a Retry-After longer than the call may still wait: over
    `--publish-rate`, or the idempotency table is full. `retry_after` is
    the server's number of seconds."""

    def __init__(self, message: str, retry_after: Optional[float], code: Optional[str] = None):
        super().__init__(message, 429, code)
        self.retry_after = retry_after


class UnavailableError(HrrtError):
    """Retries ran out: hrrt answered 503, timed out or was unreachable on
    every attempt. The event may or may not be published; publishing it
    again with the same idempotency key is safe."""


# The names of the first release, kept for one more.
BadRequest = BadRequestError
Unauthorized = UnauthorizedError
Forbidden = ForbiddenError
TooLarge = TooLargeError
Unavailable = UnavailableError

_ERRORS = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    413: TooLargeError,
}


@dataclass(frozen=True)
class Ack:
    """hrrt's answer to one event. `duplicate`: its idempotency key was
    used before, and this is the first publish's answer."""

    channel: str
    seq: int
    recipients: int
    duplicate: bool = False


def _event(
    type: str,
    org_id: Optional[Id],
    user_id: Optional[Id],
    payload: Any,
    idempotency_key: Optional[str],
) -> dict:
    if (org_id is None) == (user_id is None):
        raise BadRequestError("give exactly one of org_id (org-wide event) or user_id (user event)")
    event: dict = {"type": type, "payload": {} if payload is None else payload}
    if org_id is not None:
        event["org_id"] = org_id
    else:
        event["user_id"] = user_id
    # A key per call: every retry of this call is the same publish.
    event["idempotency_key"] = idempotency_key or uuid.uuid4().hex
    return event


def _batch(events: Iterable[dict], idempotency_key: Optional[str]) -> dict:
    out = []
    for e in events:
        e = dict(e)
        if "type" not in e:
            raise BadRequestError("every event of a batch needs a type")
        e.setdefault("payload", {})
        out.append(e)
    if not out:
        raise BadRequestError("the batch is empty")
    # One key for the whole batch: one slot of the server's table, and a
    # retry answers the first answers.
    return {"idempotency_key": idempotency_key or uuid.uuid4().hex, "events": out}


def _acks(body: Any) -> list:
    items = body if isinstance(body, list) else [body]
    return [
        Ack(
            channel=a["channel"],
            seq=int(a["seq"]),
            recipients=int(a["recipients"]),
            duplicate=bool(a.get("duplicate", False)),
        )
        for a in items
    ]


class _Core:
    """What every call shares: where, the token, the limits."""

    def __init__(
        self, url: str, secret: str, timeout: float, retries: int, user: str, max_wait: float = MAX_WAIT
    ):
        if not secret:
            raise ValueError("secret is empty: give hrrt's JWT secret (HRRT_JWT_SECRET)")
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        self.base = url.rstrip("/")
        self.endpoint = self.base + "/api/events"
        self.secret = secret
        self.timeout = timeout
        self.retries = retries
        self.user = user
        self.max_wait = max_wait
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
            return retry_after
        # Jittered exponential: 0.1, 0.2, 0.4 … s, at most 5 s.
        base = min(0.1 * (2**attempt), 5.0)
        return base / 2 + random.random() * base / 2

    def outcome(self, response: httpx.Response):
        """A final answer, or ("retry", (wait, error)); kept for callers of
        the first release."""
        return _Call(self, "POST", "/api/events", None).outcome(response)

    def user_token(self, user_id: Id, org_id: Id, ttl: float, role: str) -> str:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        now = time.time()
        return jwt.encode(
            {"sub": str(user_id), "org_id": str(org_id), "role": role, "iat": int(now), "exp": int(now + ttl)},
            self.secret,
            algorithm="HS256",
        )


@dataclass(frozen=True)
class _Step:
    """What the loop does next: return `value`, raise `error`, or sleep
    `wait` seconds and send again."""

    value: Any = None
    error: Optional[HrrtError] = None
    wait: Optional[float] = None


class _Call:
    """One call's retry policy, without I/O. The loop asks `request()`,
    performs it, and hands the response (or the transport error) back; the
    answer says whether to return, raise or wait and try again. A retry is
    safe: publishes carry idempotency keys, reads change nothing."""

    def __init__(self, core: _Core, method: str, path: str, body: Any, params: Optional[dict] = None):
        self.core = core
        self.method = method
        self.url = core.base + path
        self.body = body
        self.params = params
        self.attempt = 0
        self.waited = 0.0

    def request(self) -> dict:
        return {
            "method": self.method,
            "url": self.url,
            "json": self.body,
            "params": self.params,
            "headers": self.core.headers(),
        }

    def on_response(self, response: httpx.Response) -> _Step:
        kind, value = self.outcome(response)
        if kind == "ok":
            return _Step(value=value)
        if kind == "raise":
            return _Step(error=value)
        wait, error = value
        return self._again(wait, error)

    def on_transport_error(self, e: Exception) -> _Step:
        return self._again(None, UnavailableError(f"hrrt not reached: {e!r}"))

    def _again(self, retry_after: Optional[float], error: HrrtError) -> _Step:
        left = self.core.max_wait - self.waited
        if retry_after is not None and retry_after > left:
            if isinstance(error, RateLimitedError):
                return _Step(error=error)
            return _Step(error=UnavailableError(f"{error} (Retry-After {retry_after:.0f} s)", error.status, error.code))
        if self.attempt >= self.core.retries:
            return _Step(error=error)
        wait = min(self.core.backoff(self.attempt, retry_after), max(left, 0.0))
        self.attempt += 1
        self.waited += wait
        return _Step(wait=wait)

    def outcome(self, response: httpx.Response):
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        if status == 200:
            return ("ok", body)
        error = body.get("error", {}) if isinstance(body, dict) else {}
        if not error and body is None and "text/html" in response.headers.get("content-type", ""):
            return ("raise", HrrtError(f"{status}: {self.core.base} answered a web page, not hrrt's JSON: is the URL hrrt's?", status))
        message = f"{status}: {error.get('message', response.text[:200])}"
        code = error.get("code")
        if status in (429, 503):
            retry_after = response.headers.get("retry-after")
            try:
                wait = float(retry_after) if retry_after is not None else None
            except ValueError:
                wait = None
            if status == 429:
                return ("retry", (wait, RateLimitedError(message, wait, code)))
            return ("retry", (wait, UnavailableError(message, status, code)))
        return ("raise", _ERRORS.get(status, HrrtError)(message, status, code))


class _Api:
    """The calls, as `_Call`s; the two publishers run them."""

    _core: _Core

    def _publish_call(self, type, org_id, user_id, payload, idempotency_key) -> _Call:
        return _Call(self._core, "POST", "/api/events", _event(type, org_id, user_id, payload, idempotency_key))

    def _batch_call(self, events, idempotency_key) -> _Call:
        return _Call(self._core, "POST", "/api/events", _batch(events, idempotency_key))

    def _history_call(self, channel: str, since: Optional[int], limit: Optional[int]) -> _Call:
        params: dict = {"channel": channel}
        if since is not None:
            params["since"] = since
        if limit is not None:
            params["limit"] = limit
        return _Call(self._core, "GET", "/api/history", None, params)

    def _disconnect_call(self, user_id: Id, reason: Optional[str], revoke: bool) -> _Call:
        body: dict = {"user_id": str(user_id)}
        if reason is not None:
            body["reason"] = reason
        if revoke:
            body["revoke"] = True
        return _Call(self._core, "POST", "/api/disconnect", body)

    def user_token(self, user_id: Id, org_id: Id, *, ttl: float = 3600, role: str = "user") -> str:
        """A token for a browser tab of `user_id` in `org_id`, valid `ttl`
        seconds: what your backend's token endpoint answers the front
        end's `getToken`."""
        return self._core.user_token(user_id, org_id, ttl, role)


class Publisher(_Api):
    """Publishes to hrrt and reads its API, synchronously. Thread-safe like
    httpx.Client."""

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        user: str = "backend",
        max_wait: float = MAX_WAIT,
        http: Optional[httpx.Client] = None,
    ):
        """`timeout`: each request; `max_wait`: what one call may spend
        waiting between attempts (Retry-After, backoff); `http`: your own
        httpx.Client (proxies, TLS settings, hooks), whose timeout is then
        yours too."""
        self._core = _Core(url, secret, timeout, retries, user, max_wait)
        self._http = http or httpx.Client(timeout=timeout)

    def _run(self, call: _Call) -> Any:
        while True:
            try:
                response = self._http.request(**call.request())
            except httpx.TransportError as e:  # timeouts, resets, refused
                step = call.on_transport_error(e)
            else:
                step = call.on_response(response)
            if step.error is not None:
                raise step.error
            if step.wait is None:
                return step.value
            time.sleep(step.wait)

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
        return _acks(self._run(self._publish_call(type, org_id, user_id, payload, idempotency_key)))[0]

    def publish_batch(self, events: Iterable[dict], *, idempotency_key: Optional[str] = None) -> list:
        """Publishes events all or nothing, under one idempotency key (as
        POST /api/events takes them: `{"type", "org_id" | "user_id",
        "payload"}`); one Ack per event."""
        return _acks(self._run(self._batch_call(events, idempotency_key)))

    def history(self, channel: str, since: Optional[int] = None, limit: Optional[int] = None) -> dict:
        """A channel's retained events after `since`, oldest first:
        `{"channel", "events", "oldest", "latest", "epoch", …}`."""
        return self._run(self._history_call(channel, since, limit))

    def stats(self) -> dict:
        """The node's `GET /api/stats`."""
        return self._run(_Call(self._core, "GET", "/api/stats", None))

    def nodes(self) -> list:
        """The cluster's live nodes (`GET /api/nodes`)."""
        answer = self._run(_Call(self._core, "GET", "/api/nodes", None))
        return answer.get("nodes", answer) if isinstance(answer, dict) else answer

    def disconnect(self, user_id: Id, reason: Optional[str] = None, revoke: bool = False) -> dict:
        """Closes every connection of `user_id` on every node; with
        `revoke`, also refuses the tokens issued until now."""
        return self._run(self._disconnect_call(user_id, reason, revoke))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncPublisher(_Api):
    """`Publisher` for asyncio code (FastAPI handlers): the same calls,
    awaited."""

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        user: str = "backend",
        max_wait: float = MAX_WAIT,
        http: Optional[httpx.AsyncClient] = None,
    ):
        self._core = _Core(url, secret, timeout, retries, user, max_wait)
        self._http = http or httpx.AsyncClient(timeout=timeout)

    async def _run(self, call: _Call) -> Any:
        while True:
            try:
                response = await self._http.request(**call.request())
            except httpx.TransportError as e:
                step = call.on_transport_error(e)
            else:
                step = call.on_response(response)
            if step.error is not None:
                raise step.error
            if step.wait is None:
                return step.value
            await asyncio.sleep(step.wait)

    async def publish(
        self,
        type: str,
        *,
        org_id: Optional[Id] = None,
        user_id: Optional[Id] = None,
        payload: Any = None,
        idempotency_key: Optional[str] = None,
    ) -> Ack:
        return _acks(await self._run(self._publish_call(type, org_id, user_id, payload, idempotency_key)))[0]

    async def publish_batch(self, events: Iterable[dict], *, idempotency_key: Optional[str] = None) -> list:
        return _acks(await self._run(self._batch_call(events, idempotency_key)))

    async def history(self, channel: str, since: Optional[int] = None, limit: Optional[int] = None) -> dict:
        return await self._run(self._history_call(channel, since, limit))

    async def stats(self) -> dict:
        return await self._run(_Call(self._core, "GET", "/api/stats", None))

    async def nodes(self) -> list:
        answer = await self._run(_Call(self._core, "GET", "/api/nodes", None))
        return answer.get("nodes", answer) if isinstance(answer, dict) else answer

    async def disconnect(self, user_id: Id, reason: Optional[str] = None, revoke: bool = False) -> dict:
        return await self._run(self._disconnect_call(user_id, reason, revoke))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncPublisher":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
