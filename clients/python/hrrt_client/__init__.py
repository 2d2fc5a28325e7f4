"""Publish events to hrrt from the HR application's backend.

    from hrrt_client import Publisher

    hrrt = Publisher("http://hrrt:8000", secret=os.environ["HRRT_JWT_SECRET"])
    hrrt.publish("entity.created", org_id=7, payload={"id": 1, "name": "Ann"})

Every call carries an idempotency key (one is made when you give none),
so every retry (a 503, a 429 with Retry-After, a timeout, a reset
connection) is safe: hrrt publishes the event once and answers the same
seq. A refused event raises a typed error: `BadRequest` (400),
`Unauthorized` (401), `Forbidden` (403), `TooLarge` (413). Retries that
run out raise `Unavailable`.

`AsyncPublisher` is the same for asyncio; `hrrt_client.compat` has the old
server's six `broadcast_*` functions.
"""

from ._publisher import (
    Ack,
    AsyncPublisher,
    BadRequest,
    Forbidden,
    HrrtError,
    Publisher,
    TooLarge,
    Unauthorized,
    Unavailable,
)

__all__ = [
    "Ack",
    "AsyncPublisher",
    "BadRequest",
    "Forbidden",
    "HrrtError",
    "Publisher",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
]
