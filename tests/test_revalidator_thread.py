"""The relay's re-validation loop never holds up the worker's event loop, where the SMTP sessions run:
its store statements are synchronous, and a store that is slow to answer (a write lock held, a
PostgreSQL server gone for its connect timeout) must stall only the loop's own thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from relay.core.models import Tenant
from relay.core.store import SqliteStore
from relay.service.revalidator import Revalidator
from tests.relay_harness import make_settings

BOUND = 5.0  # seconds any wait here may take before the test gives up (never reached when it passes)


class StallingStore(SqliteStore):
    """A store whose tenant list answers only once the worker's event loop has shown it still runs."""

    def __init__(self, path: Path, worker_ran: threading.Event) -> None:
        super().__init__(path)
        self.entered = threading.Event()
        self.worker_ran = worker_ran
        self.worker_ran_meanwhile: bool | None = None

    def list_tenants(self) -> list[Tenant]:
        if self.worker_ran_meanwhile is None:
            self.entered.set()
            # On the worker's loop this wait would stop that very loop, so it would run out: False.
            self.worker_ran_meanwhile = self.worker_ran.wait(BOUND)
        return super().list_tenants()


async def test_a_stalled_store_statement_leaves_the_worker_loop_running(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    worker_ran = threading.Event()
    store = StallingStore(settings.database_path, worker_ran)
    revalidator = Revalidator(settings, opener=lambda: store, tick=0.01)
    revalidator.start()
    try:
        entered = await asyncio.to_thread(store.entered.wait, BOUND)
        assert entered, "the loop asked the store for its tenants"
        worker_ran.set()  # this line runs on the worker's loop while the store statement is under way
        await asyncio.to_thread(lambda: None)  # and the loop goes on handing work out and back
    finally:
        await revalidator.stop()
    assert store.worker_ran_meanwhile is True, "the worker's event loop was stopped by the store statement"

