"""Per-tenant gate: at most N transactions of one tenant sign and deliver at once in this process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from relay.core.replies import TENANT_BUSY, ReplyError
from relay.core.settings import Settings


def gate_wait_budget(settings: Settings) -> float:
    """How long a transaction may wait for its tenant's turn.

    R5: the wait and the upstream exchange both happen after the dot, inside the client's session
    timeout, so together they must end before it: at most the upstream budget, less when needed."""
    return max(0.0, min(settings.upstream_timeout, settings.session_timeout - settings.upstream_timeout))


@dataclass
class _Slot:
    semaphore: asyncio.Semaphore
    users: int = field(default=0)  # holders and waiters: the slot is dropped when none is left


class TenantGate:
    """One FIFO semaphore per tenant id, created on demand and dropped when idle (the dict stays small)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a tenant gate needs a limit of at least 1")
        # Turns per tenant. Changed live (SIGHUP), it applies to a tenant once its queue has emptied:
        # a queue that is waiting keeps the semaphore it has.
        self.limit = limit
        self._slots: dict[str, _Slot] = {}

    def __len__(self) -> int:
        """Tenants with a transaction in flight or waiting."""
        return len(self._slots)

    def users(self, tenant: str) -> int:
        """Transactions of `tenant` holding or waiting for a turn."""
        slot = self._slots.get(tenant)
        return slot.users if slot is not None else 0

    @asynccontextmanager
    async def turn(self, tenant: str, *, wait: float) -> AsyncIterator[None]:
        """Hold one of `tenant`'s turns; waiting longer than `wait` seconds raises `ReplyError(TENANT_BUSY)`."""
        slot = self._slots.get(tenant)
        if slot is None:
            slot = self._slots[tenant] = _Slot(asyncio.Semaphore(self.limit))
        slot.users += 1
        try:
            try:
                async with asyncio.timeout(wait):
                    await slot.semaphore.acquire()
            except TimeoutError:
                raise ReplyError(TENANT_BUSY) from None
            try:
                yield
            finally:
                slot.semaphore.release()
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._slots[tenant]
