"""`rotate-key`: issue a tenant's next DKIM key under a new selector, beside the active one.

A key change has three states (SPEC.md "Lifecycle"): the relay signs with the `active` key; a rotation
adds a `next` key that IT publishes beside it; the validation that sees the next key's record with our
key promotes it to `active` and makes the old one `retiring` for RELAY_KEY_OVERLAP (relay.domains.validation).
So the relay never signs with a key whose record has not been seen published. One rotation at a time:
while a `next` key waits to be seen, another is refused (its record may already be at IT's desk).

The key file is written 0600 before the store transaction commits and removed if it fails, as for
`tenant set` (admin.tenants); the store row and the `key.rotate` audit entry commit together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from admin.tenants import active_key, issue_key, remove_written
from relay.core.models import AuditEntry, DkimKey, KeyState, Tenant
from relay.core.store import Store, utcnow

ACTION = "key.rotate"


class RotationRefused(Exception):
    """The tenant cannot rotate now; the message is one line saying why and what to do instead."""


class UnknownTenant(LookupError):
    """No tenant has this id."""


@dataclass(frozen=True)
class Rotation:
    """What `rotate_key` did: the new `next` key, and the active key that keeps signing until the switch."""

    tenant: Tenant
    key: DkimKey
    active: DkimKey


def pending_next(keys: list[DkimKey]) -> DkimKey | None:
    """The tenant's `next` key, not yet seen published, if a rotation is under way."""
    return next((key for key in keys if key.state is KeyState.NEXT), None)


def refusal(tenant: Tenant, keys: list[DkimKey]) -> str | None:
    """Why this tenant cannot rotate now (pure), or None when it can."""
    waiting = pending_next(keys)
    if waiting is not None:
        name = f"{waiting.selector}._domainkey.{tenant.sender.domain}"
        return (f"TENANT: {tenant.id} already has a next key ({waiting.selector}) that no validation "
                f"has seen published yet: publish {name} first and run `relay-admin validate "
                f"{tenant.id}`; or see its record with `relay-admin records {tenant.id}`")
    if not any(key.state is KeyState.ACTIVE for key in keys):
        return (f"TENANT: {tenant.id} has no active DKIM key to rotate; issue one with "
                f"`relay-admin tenant set {tenant.id}`")
    return None


def rotate_key(store: Store, keys_dir: Path, tenant_id: str, *, actor: str) -> Rotation:
    """Issue a `next` key for the tenant: key file, store row and audit entry, all or nothing."""
    written: list[Path] = []  # the key file (and directories) to remove unless the transaction commits
    try:
        # Under the store's write lock: two concurrent rotations cannot both pass the check.
        with store.transaction():
            tenant = store.get_tenant(tenant_id)
            if tenant is None:
                raise UnknownTenant(tenant_id)
            keys = store.list_keys(tenant_id)
            why = refusal(tenant, keys)
            if why is not None:
                raise RotationRefused(why)
            active = active_key(store, tenant_id)
            assert active is not None  # `refusal` checked it
            now = utcnow()
            key = issue_key(keys_dir, tenant_id, KeyState.NEXT, now=now, written=written)
            store.add_key(key)
            store.add_audit(AuditEntry(
                time=now, actor=actor, action=ACTION, tenant=tenant_id, outcome="done",
                detail=f"new DKIM selector {key.selector} (next); {active.selector} keeps signing "
                       f"until a validation sees {key.selector} published"))
    except BaseException:
        remove_written(written)
        raise
    return Rotation(tenant, key, active)
