"""The relay's own re-validation: every tick, check the tenants that are due, then post due notifications.

Every relay worker runs one `Revalidator` beside its directory's reloader (`relay.service.relay.start_relay`),
SPEC.md "Lifecycle". A tick comes every min(60 s, RELAY_REVALIDATE_INTERVAL / 4) and:

1. lists the tenants that are due (`relay.domains.lifecycle.due`: verified, degraded and failed ones every
   RELAY_REVALIDATE_INTERVAL; pending ones back off from 5 minutes up to it);
2. claims each under its lease `revalidate:<tenant>` and looks again whether it is still due: another
   worker may have checked it and released the lease since the list was read, and the lease alone
   would then let this worker check it a second time in one interval;
3. checks each claimed tenant (`relay.domains.revalidation.revalidate`, which renews that same lease), so of
   all the workers and instances sharing one store exactly one checks a given tenant;
4. posts the webhook notifications that are due (`relay.domains.notify.deliver_due`).

A status change bumps the store's generation: this worker's directory is asked to look at once, the
others see it within RELAY_RELOAD_INTERVAL, and mail follows (a failed tenant's mail leaves as the
platform sender). The change itself is logged on `relay.lifecycle` by `relay.domains.validation`.

Mail is not held up: the loop runs in a thread of its own with its own event loop and its own store
connection. Its store statements are synchronous (relay.domains.validation calls the store directly): a
write may wait for another process's write lock (`tenant set` holds it ~100 ms while it generates a
key), and a PostgreSQL server that has gone away holds a statement for the connect timeout; on the
worker's event loop either would stall every SMTP session of the worker. Only `changed` (the
directory's look at the store) is handed back to the worker's loop.

Failures never end the loop and are logged in one line each, without traceback or secret, once while
they repeat; the next tick tries again. While the store does not exist yet the loop waits for it, as the
directory does. Its lines on `relay.revalidator`:

    ERROR   revalidation failed, retrying every 15s: StoreError: <what the store said>
    INFO    revalidation works again
    ERROR   revalidation of tenant acme failed: <type>: <message>      (anything but the store)
    WARNING notification 3 to https://hooks.example/relay not delivered (HTTP 500); next attempt after <time>

A store failure during the checks is the tick's (one line, not one per tenant). DNS that cannot answer
is no failure: the check says "could not check" and changes nothing (relay.domains.lifecycle).

The checks themselves are relay/domains' (validation, lifecycle, revalidation, notify), the same code
`relay-admin validate` and `revalidate` run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from datetime import timedelta

from relay.core.metrics import Metrics
from relay.core.settings import Settings
from relay.core.store import Store, StoreError, StoreMissing, utcnow
from relay.domains import lifecycle, notify
from relay.domains.dnscheck import DnsClient
from relay.domains.revalidation import CONCURRENCY, due_tenant_ids, revalidate
from relay.domains.validation import (
    LEASE_MARGIN,
    ValidationReport,
    check_budget,
    lease_name,
)

log = logging.getLogger("relay.revalidator")

MAX_TICK = 60.0  # seconds: a due tenant waits at most this long past its time
STOP_TIMEOUT = 5.0  # seconds for a cancelled tick to unwind (release its leases) on stop


def tick_for(interval: float) -> float:
    """How often the loop looks for due tenants: a quarter of the interval, at most a minute."""
    return min(MAX_TICK, interval / 4)


def _words(exc: BaseException) -> str:
    """An error in one line: its type and message (never a traceback)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def result(report: ValidationReport) -> str:
    """The `result` label of relay_revalidations_total for a check that ran (`error` is one that failed)."""
    if report.skipped:
        return "skipped"
    if report.discarded:
        return "discarded"
    return report.outcome.replace(" ", "_")  # verified | not_verified | could_not_check


def _release(store: Store, lease: str, holder: str) -> None:
    """Give a lease back while unwinding; if the store refuses, the lease runs out by itself."""
    try:
        store.release_lease(lease, holder)
    except StoreError:
        pass  # the error being raised says more; this one would hide it


class Revalidator:
    """One worker's re-validation loop; `start()` runs it in a thread, `stop()` ends it and closes its store.

    `opener` opens the store (raising `StoreMissing` while it does not exist); `tick`, `client` and
    `changed` (called after a tick that changed a status) are for the relay's wiring and for tests;
    `metrics` counts each check's result (relay_revalidations_total).
    """

    def __init__(self, settings: Settings, *, opener: Callable[[], Store], tick: float | None = None,
                 client: DnsClient | None = None,
                 changed: Callable[[], Awaitable[None]] | None = None, metrics: Metrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics if metrics is not None else Metrics()
        self._opener = opener
        self._store: Store | None = None
        self._client = client
        self._changed = changed
        self.tick = tick_for(settings.revalidate_interval) if tick is None else tick
        self.holder = lifecycle.default_holder()  # one per loop: two relays in one process are two holders
        self._interval = timedelta(seconds=settings.revalidate_interval)
        self._last_error = ""  # the tick's last failure, logged once while it repeats
        self._tenant_errors: dict[str, str] = {}  # each tenant's last failure, likewise
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the thread's own loop, once started
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Run the loop in a thread of its own (see the module's docstring); `changed` is then awaited on
        the event loop that called `start`, where the directory lives."""
        worker_loop = asyncio.get_running_loop()
        changed = self._changed
        if changed is not None:
            async def on_worker_loop() -> None:
                await changed()

            async def changed_on_worker_loop() -> None:
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(on_worker_loop(), worker_loop))

            self._changed = changed_on_worker_loop
        loop = self._loop = asyncio.new_event_loop()
        self._task = loop.create_task(self.run_forever(), name="revalidator")
        task = self._task

        def run() -> None:
            try:
                loop.run_until_complete(asyncio.wait([task]))  # until cancelled
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="revalidator", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Stop at the next await (leases are released as the tick unwinds)."""
        if self._task is None or self._loop is None:
            return  # never started
        try:
            self._loop.call_soon_threadsafe(self._task.cancel)
        except RuntimeError:
            pass  # its loop has already ended

    async def stop(self) -> None:
        """Cancel the loop, let a tick under way unwind (bounded), then close the store it opened."""
        self.cancel()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, STOP_TIMEOUT)
            if self._thread.is_alive():
                log.warning("revalidation did not stop within %gs; left to end with the process", STOP_TIMEOUT)
                return  # its store is still in use by that thread: not closed under it
        if self._store is not None:
            self._store.close()
            self._store = None

    async def run_forever(self) -> None:
        """Tick every `self.tick` seconds until cancelled; no error ends the loop."""
        while True:
            await asyncio.sleep(self.tick)
            await self.tick_safely()

    async def tick_safely(self) -> None:
        """One tick; an error is logged in one line (once while it repeats) and left to the next tick."""
        try:
            await self.tick_once()
        except Exception as exc:  # the loop must outlive any one failure: the next tick tries again
            words = _words(exc)
            if words != self._last_error:
                log.error("revalidation failed, retrying every %gs: %s", self.tick, words)
            self._last_error = words
            return
        if self._last_error:
            log.info("revalidation works again")
        self._last_error = ""

    async def tick_once(self) -> list[ValidationReport]:
        """Check the due tenants, then post due notifications; the reports of the checks made."""
        store = await self._attach()
        if store is None:
            return []  # no store yet: nothing to check until `relay-admin user add` creates it
        reports = await self._check_due(store)
        if self._changed is not None and any(r.changed for r in reports):
            await self._changed()
        self._log_deliveries(await notify.deliver_due(store, self._settings, holder=self.holder))
        return reports

    async def _attach(self) -> Store | None:
        """This loop's own store connection, opened once the store exists."""
        if self._store is None:
            try:
                self._store = await asyncio.to_thread(self._opener)
            except StoreMissing:
                return None
        return self._store

    async def _check_due(self, store: Store) -> list[ValidationReport]:
        """Claim and check every due tenant, at most CONCURRENCY at once; the reports of those checked."""
        gate = asyncio.Semaphore(CONCURRENCY)
        ids = due_tenant_ids(store, utcnow(), self._interval)
        results = await asyncio.gather(*(self._check(store, t, gate) for t in ids), return_exceptions=True)
        for outcome in results:
            if isinstance(outcome, Exception):
                self._metrics.revalidations.labels("error").inc()
            elif isinstance(outcome, list):
                for report in outcome:
                    self._metrics.revalidations.labels(result(report)).inc()
        self._note_failures({t: r for t, r in zip(ids, results) if isinstance(r, BaseException)})
        return [report for result in results if isinstance(result, list) for report in result]

    def _note_failures(self, failures: dict[str, BaseException]) -> None:
        """Log a tenant's failure once while it repeats; a store failure is the whole tick's (raised)."""
        for tenant_id in set(self._tenant_errors) - set(failures):
            del self._tenant_errors[tenant_id]  # checked, or not due: its next failure is news again
        for tenant_id, exc in failures.items():
            if not isinstance(exc, Exception):
                raise exc  # cancellation and the like are not failures of a check
            words = _words(exc)
            if not isinstance(exc, StoreError) and self._tenant_errors.get(tenant_id) != words:
                log.error("revalidation of tenant %s failed: %s", tenant_id, words)
            self._tenant_errors[tenant_id] = words
        store_error = next((e for e in failures.values() if isinstance(e, StoreError)), None)
        if store_error is not None:
            raise store_error  # one line for the tick (`tick_safely`), not one per tenant

    async def _check(self, store: Store, tenant_id: str, gate: asyncio.Semaphore) -> list[ValidationReport]:
        """Check one tenant if this loop can claim it while it is still due."""
        async with gate:  # claimed only when its turn comes, so no lease runs out while waiting
            if not self._claim(store, tenant_id):
                return []
            try:
                return await revalidate(store, self._settings, tenant_ids=[tenant_id], holder=self.holder,
                                        client=self._client)
            except BaseException:
                _release(store, lease_name(tenant_id), self.holder)  # validate_tenant may not have run
                raise

    def _claim(self, store: Store, tenant_id: str) -> bool:
        """Take the tenant's lease, then look again: still due, so no one checked it since the list was read."""
        now = utcnow()
        lease = lease_name(tenant_id)
        if not store.acquire_lease(lease, self.holder, now + check_budget(self._settings) + LEASE_MARGIN, now):
            return False  # another worker or instance is checking it right now
        try:
            tenant = store.get_tenant(tenant_id)
            due = tenant is not None and lifecycle.due(tenant, now, self._interval)
        except BaseException:
            _release(store, lease, self.holder)
            raise
        if not due:
            store.release_lease(lease, self.holder)
        return due

    def _log_deliveries(self, deliveries: list[notify.Delivery]) -> None:
        """One line per failed attempt that will be retried (one given up is logged by relay.domains.notify)."""
        url = notify.where(self._settings.notify_url or "")
        for delivery in deliveries:
            if not delivery.delivered and delivery.retry_at is not None:
                log.warning("notification %d to %s not delivered (%s); next attempt after %s",
                            delivery.notification, url, delivery.error, delivery.retry_at.isoformat())
