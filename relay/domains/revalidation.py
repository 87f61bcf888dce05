"""Re-validation of many tenants: `relay-admin revalidate` (cron) and the relay's own periodic loop.

Each tenant is checked by `relay.domains.validation.validate_tenant` under its lease `revalidate:<tenant>`,
so with several relay workers or instances sharing one store exactly one of them checks a given
tenant; the others skip it. Which tenants are due is `relay.domains.lifecycle.due`.

For the relay's loop (every few minutes, say):

    holder = lifecycle.default_holder()      # once per process
    ids = due_tenant_ids(store, utcnow(), timedelta(seconds=settings.revalidate_interval))
    await revalidate(store, settings, tenant_ids=ids, holder=holder)
    await notify.deliver_due(store, settings, holder=holder)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime, timedelta

from relay.core.settings import Settings
from relay.core.store import Store
from relay.domains import lifecycle
from relay.domains.dnscheck import DnsClient
from relay.domains.validation import (
    GONE,
    NOT_CHECKED,
    UnknownTenant,
    ValidationReport,
    validate_tenant,
)

CONCURRENCY = 8  # tenants checked at once; each asks all its questions concurrently already


def due_tenant_ids(store: Store, now: datetime, interval: timedelta) -> list[str]:
    """The tenants whose next check is due (`relay.domains.lifecycle.due`)."""
    return [t.id for t in store.list_tenants() if lifecycle.due(t, now, interval)]


def _gone(tenant_id: str) -> ValidationReport:
    """A tenant named for a check that no longer exists (tenants are never deleted today)."""
    return ValidationReport(tenant=tenant_id, verified=False, outcome=NOT_CHECKED, status=None,
                            checks=(), skipped=GONE)


async def revalidate(
    store: Store,
    settings: Settings,
    *,
    tenant_ids: Iterable[str] = (),
    all_tenants: bool = False,
    holder: str,
    actor: str = "relay",
    client: DnsClient | None = None,
    now: datetime | None = None,
) -> list[ValidationReport]:
    """Check each tenant (every tenant with `all_tenants`), skipping those another process checks."""
    ids = ([t.id for t in store.list_tenants()] if all_tenants else list(dict.fromkeys(tenant_ids)))
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(tenant_id: str) -> ValidationReport:
        async with gate:
            try:
                return await validate_tenant(store, settings, tenant_id, actor=actor, client=client,
                                             holder=holder, action="revalidate", now=now)
            except UnknownTenant:
                return _gone(tenant_id)

    # Every check runs to its end (and releases its lease) before an error is raised.
    results = await asyncio.gather(*(one(t) for t in ids), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if isinstance(r, ValidationReport)]


def all_verified(reports: Iterable[ValidationReport]) -> bool:
    """Exit 0 for `revalidate`: every tenant checked is verified, and at least one was checked
    unless none was asked for (a tenant skipped because another process checks it is not counted)."""
    reports = list(reports)
    checked = [r for r in reports if not r.skipped]
    if reports and not checked:
        return False
    return all(r.verified for r in checked)
