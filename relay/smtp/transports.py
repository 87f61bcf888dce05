"""Writing to and dropping a transport, whichever event loop made it.

asyncio's own transports subclass `asyncio.WriteTransport`. uvloop's (RELAY_EVENT_LOOP=uvloop, the
default: relay.service.eventloop) have the same methods but subclass none of asyncio's transport
classes, so an `isinstance` check takes a uvloop transport for one that cannot write: the relay then
skipped its 421 before closing (RFC 5321 3.8) and, upstream, the abort that R4 depends on. What a
transport can do is looked at here instead, in one place.
"""

from __future__ import annotations

import asyncio
from typing import cast


def writable(transport: asyncio.BaseTransport | None) -> asyncio.WriteTransport | None:
    """`transport` as one that can write and abort (asyncio's or uvloop's), or None if it cannot."""
    if transport is None:
        return None
    if not (callable(getattr(transport, "write", None)) and callable(getattr(transport, "abort", None))):
        return None
    return cast(asyncio.WriteTransport, transport)
