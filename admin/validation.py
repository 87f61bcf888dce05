"""Validate a tenant's DNS: ask every question at once, judge each record, apply the status rule, store.

Status rule (SPEC.md): `pending` becomes `verified` when every required check is `ok`. A check that
could not be made (`error`) is "could not check": if any required check is `error`, the tenant's
status does not change. A verified tenant stays verified (the lifecycle adds `degraded` later).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from admin.checks import dkim, dmarc, return_path
from admin.checks.common import Findings, Outcome, stamp
from admin.dnscheck import DnsClient, Question
from admin.records import DnsRecord, records_for
from relay.models import AuditEntry, CheckResult, CheckStatus, Sender, Tenant, TenantStatus
from relay.settings import Settings
from relay.store import Store, utcnow

VERIFIED = "verified"
NOT_VERIFIED = "not verified"
COULD_NOT_CHECK = "could not check"


class UnknownTenant(LookupError):
    """No tenant has this id."""


@dataclass(frozen=True)
class ValidationReport:
    tenant: str
    verified: bool  # the tenant's status after this validation is `verified`
    outcome: str  # what DNS said about the required records: verified | not verified | could not check
    status: str  # the tenant's status after this validation
    checks: tuple[CheckResult, ...]

    def to_json(self) -> dict[str, Any]:
        """SPEC.md's shape, plus `outcome`, `status`, and `required`/`checked_at` per check."""
        return {
            "tenant": self.tenant,
            "verified": self.verified,
            "outcome": self.outcome,
            "status": self.status,
            "checks": [
                {
                    "purpose": c.purpose,
                    "type": c.type,
                    "name": c.name,
                    "status": c.status.value,
                    "expected": c.expected,
                    "found": list(c.found),
                    "diagnosis": c.diagnosis,
                    "required": c.required,
                    "checked_at": c.checked_at.isoformat(),
                }
                for c in self.checks
            ],
        }


def questions_for(record: DnsRecord, sender: Sender) -> list[Question]:
    if record.purpose == "dkim":
        return dkim.questions(record, sender)
    if record.purpose == "return-path":
        return return_path.questions(record)
    return dmarc.questions(record)


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
    required = [c for c in checks if c.required]
    if any(c.status is CheckStatus.ERROR for c in required):
        return COULD_NOT_CHECK
    # Without a required DKIM key there is nothing to verify (a tenant always has one; be safe).
    has_key = any(c.purpose == "dkim" for c in required)
    if has_key and all(c.status is CheckStatus.OK for c in required):
        return VERIFIED
    return NOT_VERIFIED


def next_state(tenant: Tenant, outcome: str, now: datetime) -> Tenant:
    """The tenant after a validation with this outcome (pure)."""
    if outcome == VERIFIED and tenant.status != TenantStatus.VERIFIED:
        return dataclasses.replace(tenant, status=TenantStatus.VERIFIED, verified_at=now,
                                   last_validated_at=now)
    # Not verified, or could not check: the status stays (a verified tenant stays verified for now).
    return dataclasses.replace(tenant, last_validated_at=now)


async def validate_tenant(
    store: Store,
    settings: Settings,
    tenant_id: str,
    *,
    actor: str = "relay",
    client: DnsClient | None = None,
) -> ValidationReport:
    """Check DNS now, store the results and the new state with an audit entry, in one transaction."""
    tenant = store.get_tenant(tenant_id)
    if tenant is None:
        raise UnknownTenant(tenant_id)
    records = records_for(
        tenant.sender, store.list_keys(tenant_id),
        return_path_target=settings.return_path_target, dmarc_rua=settings.dmarc_rua,
    )
    now = utcnow()
    checks = await check_records(client or DnsClient(settings), tenant.sender, records, now)
    outcome = outcome_of(checks)
    updated = next_state(tenant, outcome, now)
    with store.transaction():
        store.save_checks(tenant_id, checks)
        store.save_tenant(updated)
        store.add_audit(AuditEntry(time=now, actor=actor, action="validate", tenant=tenant_id,
                                   outcome="done", detail=outcome))
    return ValidationReport(
        tenant=tenant_id,
        verified=updated.status == TenantStatus.VERIFIED,
        outcome=outcome,
        status=str(updated.status),
        checks=tuple(checks),
    )
