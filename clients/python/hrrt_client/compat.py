"""The old FastAPI server's six broadcast functions, same names and
arguments, as async functions, now publishing through hrrt:

    from hrrt_client.compat import broadcast_entity_created
    await broadcast_entity_created(org_id, entity_data)

Configure once with `configure(url, secret)`, or set HRRT_URL and
HRRT_JWT_SECRET in the environment.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from ._publisher import Ack, AsyncPublisher, Id

_publisher: Optional[AsyncPublisher] = None


def configure(url: str, secret: str, **options: Any) -> None:
    """Sets where the broadcasts go (and the publisher's options)."""
    global _publisher
    _publisher = AsyncPublisher(url, secret, **options)


def _get() -> AsyncPublisher:
    global _publisher
    if _publisher is None:
        secret = os.environ.get("HRRT_JWT_SECRET", "")
        _publisher = AsyncPublisher(os.environ.get("HRRT_URL", "http://127.0.0.1:8000"), secret)
    return _publisher


async def broadcast_entity_created(org_id: Id, entity_data: dict) -> Ack:
    """To every connection of the organisation."""
    return await _get().publish("entity.created", org_id=org_id, payload=entity_data)


async def broadcast_entity_updated(org_id: Id, entity_data: dict) -> Ack:
    return await _get().publish("entity.updated", org_id=org_id, payload=entity_data)


async def broadcast_entity_deleted(org_id: Id, entity_id: Id) -> Ack:
    """The front end reads `payload.id`."""
    return await _get().publish("entity.deleted", org_id=org_id, payload={"id": entity_id})


async def broadcast_chat_message(org_id: Id, message_data: dict) -> Ack:
    return await _get().publish("chat.message", org_id=org_id, payload=message_data)


async def broadcast_share_created(user_id: Id, share_data: dict) -> Ack:
    """To every connection (tab) of that user."""
    return await _get().publish("share.created", user_id=user_id, payload=share_data)


async def broadcast_share_revoked(user_id: Id, share_data: dict) -> Ack:
    return await _get().publish("share.revoked", user_id=user_id, payload=share_data)
