"""Validate a tenant's DNS: ask every question at once, judge each record, apply the status rule, store.

One check of one tenant, the same for `validate` (on demand) and `revalidate` (cron and the relay's own
loop), SPEC.md "Lifecycle":

1. Take the lease `revalidate:<tenant>` in the store, so that of many workers and instances exactly
   one checks a given tenant at a time; a tenant whose lease another process holds is skipped (the
   report says so; nothing waits).
2. Read the tenant and its keys, ask DNS (bounded by `check_budget`), judge each record.
3. In one write transaction, read the sender and keys again: if they changed while DNS was being
   asked (a `tenant set`, a rotation), the result is about records that no longer apply and is
   discarded, saying so. Otherwise store the checks, apply the status rule (`relay.domains.lifecycle`),
   promote a `next` key seen published, and for a status change write the audit entry and the
   webhook notification (`relay.domains.notify`) in that same transaction. Only the lifecycle's columns of
   the tenant are written, never the whole row.
4. After the commit, log the change on `relay.lifecycle`, and release the lease.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from relay.core.models import (
    AuditEntry,
    CheckResult,
    CheckStatus,
    DkimKey,
    KeyState,
    Sender,
    Tenant,
    TenantStatus,
)
from relay.core.settings import Settings
from relay.core.store import Store, utcnow
from relay.domains import lifecycle
from relay.domains.checks import dkim, dmarc, return_path
from relay.domains.checks.common import Findings, Outcome, stamp
from relay.domains.dnscheck import DnsClient, Question
from relay.domains.lifecycle import Promotion, Transition
from relay.domains.notify import status_event
from relay.domains.records import DnsRecord, records_for

log = logging.getLogger("relay.lifecycle")

VERIFIED = "verified"
NOT_VERIFIED = "not verified"
COULD_NOT_CHECK = "could not check"
NOT_CHECKED = "not checked"

CHANGED_DURING_CHECK = "the sender or the DKIM keys changed while DNS was being checked"
LEASE_LOST = "the check outlasted its lease and another process took the tenant over"
LEASED = "another process is checking it right now"
GONE = "the tenant no longer exists"
LEASE_MARGIN = timedelta(seconds=10)  # for the store writes after the last DNS answer


class UnknownTenant(LookupError):
    """No tenant has this id."""


@dataclass(frozen=True)
class PromotionReport:
    active: str  # the selector that signs from now on
    retiring: str | None
    remove_after: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {"active": self.active, "retiring": self.retiring,
                "remove_after": self.remove_after.isoformat() if self.remove_after else None}


@dataclass(frozen=True)
class ValidationReport:
    tenant: str
    verified: bool  # this check found every required record in order: the status after it is verified
    outcome: str  # what DNS said about the required records: verified | not verified | could not check
    status: TenantStatus | None  # after this validation (as stored when discarded or skipped; None: gone)
    checks: tuple[CheckResult, ...]
    status_before: TenantStatus | None = None
    reason: str = ""  # the required records that are not in order, in words
    failing_since: datetime | None = None
    failed_after: datetime | None = None  # degraded: when the tenant becomes failed
    sender: str = ""  # the address mail leaves from while the tenant sends as itself
    promotion: PromotionReport | None = None
    discarded: str = ""  # why this result was not applied ("" = applied)
    skipped: str = ""  # why no check was made ("" = checked)
    notifications: tuple[int, ...] = ()  # queued for RELAY_NOTIFY_URL by this validation

    @property
    def changed(self) -> bool:
        return not (self.discarded or self.skipped) and self.status != self.status_before

    def to_json(self) -> dict[str, Any]:
        """SPEC.md's shape, plus the lifecycle's fields and `required`/`checked_at` per check."""
        return {
            "tenant": self.tenant,
            "verified": self.verified,
            "outcome": self.outcome,
            "status": self.status.value if self.status is not None else "",
            "status_before": self.status_before.value if self.status_before is not None else "",
            "changed": self.changed,
            "reason": self.reason or None,
            "failing_since": _iso(self.failing_since),
            "failed_after": _iso(self.failed_after),
            "promoted": self.promotion.to_json() if self.promotion else None,
            "discarded": bool(self.discarded),
            "skipped": bool(self.skipped),
            "why": self.discarded or self.skipped or None,
            "checks": [check_json(c) for c in self.checks],
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def check_json(c: CheckResult) -> dict[str, Any]:
    return {
        "purpose": c.purpose, "type": c.type, "name": c.name, "status": c.status.value,
        "expected": c.expected, "found": list(c.found), "diagnosis": c.diagnosis,
        "required": c.required, "checked_at": c.checked_at.isoformat(),
    }


def questions_for(record: DnsRecord, sender: Sender) -> list[Question]:
    if record.purpose == "dkim":
        return dkim.questions(record, sender)
    if record.purpose == "return-path":
        return return_path.questions(record)
    return dmarc.questions(record, sender)


def judge(record: DnsRecord, sender: Sender, findings: Findings) -> Outcome:
    if record.purpose == "dkim":
        return dkim.decide(record, sender, findings)
    if record.purpose == "return-path":
        return return_path.decide(record, findings)
    return dmarc.decide(record, sender, findings)


async def check_records(
    client: DnsClient, sender: Sender, records: Sequence[DnsRecord], checked_at: datetime
) -> list[CheckResult]:
    """All questions of all records concurrently, then one pure verdict per record."""
    asked = [q for record in records for q in questions_for(record, sender)]
    findings = await client.ask_all(asked)
    return [stamp(record, judge(record, sender, findings), checked_at) for record in records]


def outcome_of(checks: Sequence[CheckResult]) -> str:
    """What DNS said about the checks that count (`relay.domains.lifecycle.counted_checks`)."""
    required = [c for c in checks if c.required]
    if any(c.status is CheckStatus.ERROR for c in required):
        return COULD_NOT_CHECK
    # Without a required DKIM key there is nothing to verify (a tenant always has one; be safe).
    has_key = any(c.purpose == "dkim" for c in required)
    if has_key and all(c.status is CheckStatus.OK for c in required):
        return VERIFIED
    return NOT_VERIFIED


def check_budget(settings: Settings) -> timedelta:
    """The longest one tenant's check may take: finding the zone's servers, the question and one
    CNAME hop into another zone, each bounded by RELAY_DNS_TIMEOUT."""
    return timedelta(seconds=4 * settings.dns_timeout)


def lease_name(tenant_id: str) -> str:
    return f"revalidate:{tenant_id}"


async def _timed_checks(client: DnsClient, sender: Sender, records: Sequence[DnsRecord],
                        now: datetime, budget: timedelta) -> list[CheckResult]:
    """`check_records`, or `error` for every record when the whole check outlasts its budget."""
    try:
        async with asyncio.timeout(budget.total_seconds()):
            return await check_records(client, sender, records, now)
    except TimeoutError:
        seconds = f"{budget.total_seconds():g}"
        return [stamp(r, Outcome(CheckStatus.ERROR, (), f"Could not check {r.name} (no complete answer"
                                 f" within {seconds} s), so nothing is known about the record:"
                                 " validate again later."), now)
                for r in records]


async def validate_tenant(
    store: Store,
    settings: Settings,
    tenant_id: str,
    *,
    actor: str = "relay",
    client: DnsClient | None = None,
    holder: str | None = None,
    action: str = "validate",
    now: datetime | None = None,
) -> ValidationReport:
    """Check DNS now under the tenant's lease and apply the result if nothing changed meanwhile."""
    now = now or utcnow()
    tenant = store.get_tenant(tenant_id)
    if tenant is None:
        raise UnknownTenant(tenant_id)
    holder = holder or lifecycle.default_holder()
    lease, until = lease_name(tenant_id), now + check_budget(settings) + LEASE_MARGIN
    if not store.acquire_lease(lease, holder, until, now):
        return unchanged_report(tenant, skipped=LEASED)
    try:
        tenant = store.get_tenant(tenant_id) or tenant
        keys = store.list_keys(tenant_id)
        records = records_for(tenant.sender, keys, return_path_target=settings.return_path_target,
                              dmarc_rua=settings.dmarc_rua)
        checks = await _timed_checks(client or DnsClient(settings), tenant.sender, records, now,
                                     check_budget(settings))
        return _store_result(store, settings, tenant, keys, checks, actor=actor, action=action,
                             holder=holder, until=until, now=now)
    finally:
        store.release_lease(lease, holder)


def unchanged_report(tenant: Tenant, *, skipped: str = "", discarded: str = "",
                     checks: Sequence[CheckResult] = ()) -> ValidationReport:
    """A report of a check that changed nothing: skipped (not made) or discarded (not applied)."""
    return ValidationReport(
        tenant=tenant.id, verified=False, outcome=NOT_CHECKED if skipped else outcome_of(checks),
        status=tenant.status, checks=tuple(checks), status_before=tenant.status,
        failing_since=tenant.failing_since, sender=tenant.sender.email, skipped=skipped,
        discarded=discarded,
    )


def _basis(tenant: Tenant, keys: Sequence[DkimKey]) -> tuple[object, ...]:
    """What a result was judged on: the records' inputs (the display name is not one of them)."""
    s = tenant.sender
    return (s.email, s.domain, s.return_path_label,
            sorted((k.selector, k.state.value, k.public_key_b64) for k in keys))


def _store_result(store: Store, settings: Settings, judged: Tenant, keys: list[DkimKey],
                  checks: list[CheckResult], *, actor: str, action: str, holder: str,
                  until: datetime, now: datetime) -> ValidationReport:
    """Compare and apply in one write transaction (BEGIN IMMEDIATE: no writer in between)."""
    with store.transaction():
        fresh = store.get_tenant(judged.id)
        if fresh is None:
            return unchanged_report(judged, discarded=GONE, checks=checks)
        why = (CHANGED_DURING_CHECK if _basis(fresh, store.list_keys(judged.id)) != _basis(judged, keys)
               else "" if store.acquire_lease(lease_name(judged.id), holder, until, now) else LEASE_LOST)
        if why:
            store.add_audit(AuditEntry(time=now, actor=actor, action=action, tenant=judged.id,
                                       outcome="done", detail=f"discarded: {why}"))
            return unchanged_report(fresh, discarded=why, checks=checks)
        report = _apply(store, settings, fresh, keys, checks, actor=actor, action=action, now=now)
    _log(report)
    return report


def _apply(store: Store, settings: Settings, tenant: Tenant, keys: list[DkimKey],
           checks: list[CheckResult], *, actor: str, action: str, now: datetime) -> ValidationReport:
    """Store the checks, the status, a promotion and the announcements (inside the transaction)."""
    domain, grace = tenant.sender.domain, timedelta(seconds=settings.grace)
    promoted = lifecycle.promotion(keys, checks, domain)
    counted = lifecycle.counted_checks(checks, lifecycle.keys_after(keys, promoted), domain)
    change = lifecycle.decide(tenant, counted, now=now, grace=grace)
    store.save_checks(tenant.id, checks)
    store.save_lifecycle(
        tenant.id, status=change.status, failing_since=change.failing_since, last_validated_at=now,
        verified_at=now if change.changed and change.status is TenantStatus.VERIFIED else tenant.verified_at,
    )
    promotion = _promote(store, settings, promoted, actor=actor, now=now) if promoted else None
    failed_after = (lifecycle.failed_after(change.failing_since, grace)
                    if change.status is TenantStatus.DEGRADED else None)
    ids = _announce(store, settings, tenant.id, change, checks, failed_after, actor=actor, now=now)
    outcome = outcome_of(counted)
    store.add_audit(AuditEntry(time=now, actor=actor, action=action, tenant=tenant.id,
                               outcome="done", detail=outcome))
    return ValidationReport(
        tenant=tenant.id, verified=change.status is TenantStatus.VERIFIED, outcome=outcome,
        status=change.status, checks=tuple(checks), status_before=change.before,
        reason=change.reason, failing_since=change.failing_since, failed_after=failed_after,
        sender=tenant.sender.email, promotion=promotion, notifications=ids,
    )


def _promote(store: Store, settings: Settings, promoted: Promotion, *, actor: str,
             now: datetime) -> PromotionReport:
    """`next` -> `active`; the key it replaces -> `retiring` for RELAY_KEY_OVERLAP (SPEC "rotate-key")."""
    new, old = promoted.promoted, promoted.replaced
    remove_after = now + timedelta(seconds=settings.key_overlap) if old is not None else None
    store.set_key_state(new.tenant, new.selector, KeyState.ACTIVE)
    if old is not None:
        store.set_key_state(old.tenant, old.selector, KeyState.RETIRING, remove_after)
    retiring = f"; {old.selector} retiring until {remove_after:%Y-%m-%d %H:%M} UTC" if old else ""
    store.add_audit(AuditEntry(time=now, actor=actor, action="key.promote", tenant=new.tenant,
                               outcome="done", detail=f"{new.selector} active (seen published){retiring}"))
    return PromotionReport(new.selector, old.selector if old else None, remove_after)


def _announce(store: Store, settings: Settings, tenant_id: str, change: Transition,
              checks: Sequence[CheckResult], failed_after: datetime | None, *, actor: str,
              now: datetime) -> tuple[int, ...]:
    """A status change: its audit entry, and its webhook notification when RELAY_NOTIFY_URL is set."""
    if not change.changed:
        return ()
    reason = change.reason or "every required record is published correctly"
    store.add_audit(AuditEntry(time=now, actor=actor, action="status.change", tenant=tenant_id,
                               outcome="done", detail=f"{change.before} -> {change.status}: {reason}"))
    if settings.notify_url is None:
        return ()
    payload = status_event(tenant=tenant_id, before=str(change.before), after=str(change.status),
                           time=now, reason=reason, failing_since=change.failing_since,
                           failed_after=failed_after, checks=checks)
    return (store.add_notification(payload, now),)


def change_line(report: ValidationReport) -> str:
    """`tenant acme: verified -> degraded (dkim TXT ... missing); failed after 2026-...`."""
    line = f"tenant {report.tenant}: {report.status_before} -> {report.status}"
    if report.reason:
        line += f" ({report.reason})"
    if report.failed_after is not None:
        line += f"; failed after {report.failed_after.isoformat()}"
    if report.status is TenantStatus.FAILED:
        line += "; mail leaves as the platform sender"
    return line


def _log(report: ValidationReport) -> None:
    """One line per status change and per key promotion, after the commit."""
    if report.changed:  # INFO: the CLI says it on stdout; the relay logs at INFO
        log.info("%s", change_line(report))
    if report.promotion is not None:
        p = report.promotion
        retiring = f"; {p.retiring} retiring until {_iso(p.remove_after)}" if p.retiring else ""
        log.info("tenant %s: DKIM key %s promoted to active%s", report.tenant, p.active, retiring)
