"""The lifecycle as pure decisions: which checks count, key promotion, the status rule, when a check is due.

Status rule (SPEC.md "Lifecycle"), applied to the checks that count (`counted_checks`):

    any counted check `error`          -> nothing changes, not even `failing_since` (DNS.md: an
                                          answer that could not be had is never a reason to downgrade)
    every counted check `ok`           -> verified, `failing_since` cleared (from any status)
    a definitive failure (missing/mismatch/warning), by status:
        pending                        -> pending (never verified: nothing to degrade)
        verified, degraded             -> degraded, `failing_since` = the first definitive failure;
                                          failed once RELAY_GRACE (in force at this check) has passed
                                          since then; a grace of 0s goes straight to failed
        failed                         -> failed, until every counted check is ok again

The checks that count are the return-path and the DKIM record of the key that signs after this
validation. A `next` key's record never degrades a tenant: seeing it published decides only its
promotion to `active` (the previous active key becomes `retiring`). A `retiring` key's record is
informational.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from relay.core.models import (
    CheckResult,
    CheckStatus,
    DkimKey,
    KeyState,
    Tenant,
    TenantStatus,
)
from relay.policy.directory import active_key

# A pending tenant's first re-check comes this long after its last one; each wait is as long as it
# had already been pending then (doubling), up to RELAY_REVALIDATE_INTERVAL.
PENDING_FIRST_WAIT = timedelta(minutes=5)


@dataclass(frozen=True)
class Transition:
    """What one validation does to a tenant's status."""

    before: TenantStatus
    status: TenantStatus
    failing_since: datetime | None
    complete: bool  # False: a counted check could not be made, so nothing changed
    reason: str  # the counted checks that are not ok, in words ("" when all are)

    @property
    def changed(self) -> bool:
        return self.status is not self.before


@dataclass(frozen=True)
class Promotion:
    """A `next` key seen published: it becomes `active`, the key it replaces `retiring`."""

    promoted: DkimKey
    replaced: DkimKey | None


def dkim_name(key: DkimKey, domain: str) -> str:
    """Where a key's record lives (RFC 6376 3.6.2.1): `<selector>._domainkey.<domain>`."""
    return f"{key.selector}._domainkey.{domain}"


def key_check(checks: Sequence[CheckResult], key: DkimKey, domain: str) -> CheckResult | None:
    """The DKIM check of one key, matched by its record's name."""
    name = dkim_name(key, domain)
    return next((c for c in checks if c.purpose == "dkim" and c.name == name), None)


def promotion(keys: Sequence[DkimKey], checks: Sequence[CheckResult], domain: str) -> Promotion | None:
    """The newest `next` key whose record was seen published with our key, if any (SPEC "rotate-key")."""
    seen = [k for k in keys if k.state is KeyState.NEXT
            and (check := key_check(checks, k, domain)) is not None and check.status is CheckStatus.OK]
    if not seen:
        return None
    return Promotion(max(seen, key=lambda k: k.created_at), active_key(list(keys)))


def keys_after(keys: Sequence[DkimKey], promoted: Promotion | None) -> list[DkimKey]:
    """The key set once a promotion is applied (states only; `remove_after` is the store's)."""
    if promoted is None:
        return list(keys)
    replaced = promoted.replaced.selector if promoted.replaced else None
    state = {promoted.promoted.selector: KeyState.ACTIVE}
    if replaced is not None:
        state[replaced] = KeyState.RETIRING
    return [DkimKey(k.tenant, k.selector, state.get(k.selector, k.state), k.public_key_b64,
                    k.key_file, k.created_at, k.remove_after) for k in keys]


def counted_checks(checks: Sequence[CheckResult], keys: Sequence[DkimKey], domain: str) -> list[CheckResult]:
    """The checks the status rule looks at: return-path, and the DKIM record of the signing key."""
    counted = [c for c in checks if c.purpose == "return-path" and c.required]
    signing = active_key(list(keys))
    check = key_check(checks, signing, domain) if signing is not None else None
    return counted + ([check] if check is not None else [])


def describe(check: CheckResult) -> str:
    """`dkim TXT s._domainkey.acme.test missing`."""
    return f"{check.purpose} {check.type} {check.name} {check.status.value}"


def failures(counted: Sequence[CheckResult]) -> str:
    """The counted checks that are not ok, in words; a missing DKIM check is named too."""
    bad = [describe(c) for c in counted if c.status is not CheckStatus.OK]
    if not any(c.purpose == "dkim" for c in counted):
        bad.append("no active DKIM key")
    return "; ".join(bad)


def decide(tenant: Tenant, counted: Sequence[CheckResult], *, now: datetime, grace: timedelta) -> Transition:
    """The status rule (module docstring): the tenant's status and `failing_since` after these checks."""
    before, since = tenant.status, tenant.failing_since
    if any(c.status is CheckStatus.ERROR for c in counted):
        return Transition(before, before, since, complete=False, reason=failures(counted))
    reason = failures(counted)
    if not reason:
        return Transition(before, TenantStatus.VERIFIED, None, complete=True, reason="")
    if before is TenantStatus.PENDING:
        return Transition(before, before, since, complete=True, reason=reason)
    since = since or now  # the first definitive failure since the last full success
    late = before is TenantStatus.FAILED or now - since >= grace
    return Transition(before, TenantStatus.FAILED if late else TenantStatus.DEGRADED, since,
                      complete=True, reason=reason)


def failed_after(failing_since: datetime | None, grace: timedelta) -> datetime | None:
    """When a degraded tenant becomes failed (judged at the first check after it)."""
    return failing_since + grace if failing_since is not None else None


def wait_after(tenant: Tenant, interval: timedelta) -> timedelta:
    """How long after its last check a tenant is checked again (pending ones back off, doubling)."""
    if tenant.status is not TenantStatus.PENDING or tenant.last_validated_at is None:
        return interval
    pending_for = tenant.last_validated_at - tenant.updated_at
    return min(interval, max(PENDING_FIRST_WAIT, pending_for))


def due(tenant: Tenant, now: datetime, interval: timedelta) -> bool:
    """Whether the relay's own re-validation should check this tenant now."""
    last = tenant.last_validated_at
    return last is None or now - last >= wait_after(tenant, interval)


def default_holder() -> str:
    """This process as a lease holder (`host:pid:random`); the one helper here that is not pure."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
