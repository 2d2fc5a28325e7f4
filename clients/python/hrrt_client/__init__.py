"""Publish events to hrrt from the HR application's backend, and read its API.

    from hrrt_client import Publisher

    hrrt = Publisher("http://hrrt:8000", secret=os.environ["HRRT_JWT_SECRET"])
    hrrt.publish("entity.created", org_id=7, payload={"id": 1, "name": "Ann"})
    token = hrrt.user_token(42, 7, ttl=3600)   # for the front end's getToken

Every publish carries an idempotency key (one is made when you give none;
a batch has one for all of it), so every retry (a 503, a 429 whose
Retry-After fits `max_wait`, a timeout, a reset connection) is safe: hrrt
publishes once and answers the same seq. A refused call raises a typed
error, all under `HrrtError`: `BadRequestError` (400),
`UnauthorizedError` (401), `ForbiddenError` (403), `NotFoundError` (404),
`TooLargeError` (413), `RateLimitedError` (429 with `retry_after`), and
`UnavailableError` when retries run out. The names without `Error`
(`BadRequest`, …) are kept for one release.

`AsyncPublisher` is the same for asyncio; `hrrt_client.compat` has the old
server's six `broadcast_*` functions.
"""

from ._publisher import (
    Ack,
    AsyncPublisher,
    BadRequest,
    BadRequestError,
    Forbidden,
    ForbiddenError,
    HrrtError,
    NotFoundError,
    Publisher,
    RateLimitedError,
    TooLarge,
    TooLargeError,
    Unauthorized,
    UnauthorizedError,
    Unavailable,
    UnavailableError,
)

__all__ = [
    "Ack",
    "AsyncPublisher",
    "BadRequest",
    "BadRequestError",
    "Forbidden",
    "ForbiddenError",
    "HrrtError",
    "NotFoundError",
    "Publisher",
    "RateLimitedError",
    "TooLarge",
    "TooLargeError",
    "Unauthorized",
    "UnauthorizedError",
    "Unavailable",
    "UnavailableError",
]
