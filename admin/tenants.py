"""The `tenant set` service: decide whether a sender change needs a new DKIM key, then write it all at once.

A new tenant, or a changed address, domain or return-path label, gets a fresh RSA-2048 key under a new
selector and status `pending` (its records changed, so nothing about them is verified). A name-only
change, or the same sender again, keeps key and status. The key file is written before the store
transaction commits and removed again if anything fails, so the store never names a missing file and
a failure leaves neither a stray key nor half a tenant. `issue_key` and `remove_written` do the same
for `rotate-key` (admin.rotation).

Old keys under the same domain follow the rotation's states: the active key becomes `retiring`, still
published for RELAY_KEY_OVERLAP since mail it signed may still be verified; a `next` key that never
signed becomes `retiring` with nothing to wait for (remove_after = now); a retiring key keeps its date.
Under a new domain the old keys are deleted: nothing of the old domain belongs in the new records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from relay.core import dkimkeys
from relay.core.models import (
    AuditEntry,
    DkimKey,
    KeyState,
    Sender,
    Tenant,
    TenantStatus,
)
from relay.core.settings import Settings
from relay.core.store import Store, utcnow
from relay.policy import directory

# How long a replaced key stays published: RELAY_KEY_OVERLAP's default, for callers without settings.
DEFAULT_KEY_OVERLAP = timedelta(seconds=Settings.model_fields["key_overlap"].default)


class KeyWriteError(Exception):
    """The key file could not be written; the message names the absolute paths involved."""

    def __init__(self, target: Path, exc: OSError) -> None:
        named = isinstance(exc.filename, (str, bytes, os.PathLike))  # may also be absent or an fd
        where = f" ({Path(os.fsdecode(exc.filename)).absolute()})" if named else ""
        super().__init__(f"cannot write the DKIM key {target.absolute()}: "
                         f"{exc.strerror or type(exc).__name__}{where}")


@dataclass(frozen=True)
class TenantChange:
    """What `set_tenant` did."""

    tenant: Tenant
    key: DkimKey  # the active key after the change
    created: bool
    key_issued: bool
    changed: bool  # False when the same sender was set again


def records_change(old: Sender, new: Sender) -> bool:
    """Pure decision: the published records depend on address, domain and return-path, not the name."""
    return (old.email, old.domain, old.return_path_label) != (
        new.email, new.domain, new.return_path_label,
    )


def active_key(store: Store, tenant_id: str) -> DkimKey | None:
    """The tenant's signing key, chosen as the relay chooses it (`relay.policy.directory.active_key`)."""
    return directory.active_key(store.list_keys(tenant_id))


def _describe(sender: Sender) -> str:
    return (
        f"name={sender.name!r} email={sender.email} domain={sender.domain} "
        f"return-path={sender.return_path_label}"
    )


def set_tenant(
    store: Store,
    keys_dir: Path,
    tenant_id: str,
    sender: Sender,
    *,
    actor: str,
    key_overlap: timedelta = DEFAULT_KEY_OVERLAP,
) -> TenantChange:
    """Create or change a tenant's sender; the store writes and the audit entry commit together."""
    written: list[Path] = []  # a key file (and directories) to remove unless the transaction commits
    obsolete: list[Path] = []  # key files of a domain left behind: removed once the change commits
    try:
        # The whole decision runs under the store's write lock: two concurrent `tenant set` for one
        # tenant cannot both issue a key. Key generation (~100 ms) is short enough to hold it.
        with store.transaction():
            now = utcnow()
            existing = store.get_tenant(tenant_id)
            current = active_key(store, tenant_id)
            if existing is not None and current is not None \
                    and not records_change(existing.sender, sender):
                return _keep_key(store, existing, current, sender, actor=actor, now=now)
            change = _issue_key(store, keys_dir, tenant_id, existing, sender, actor=actor, now=now,
                                key_overlap=key_overlap, written=written, obsolete=obsolete)
    except BaseException:
        remove_written(written)
        raise
    for path in obsolete:
        path.unlink(missing_ok=True)
    return change


def _keep_key(store: Store, existing: Tenant, key: DkimKey, sender: Sender, *, actor: str,
              now: datetime) -> TenantChange:
    if existing.sender == sender:
        store.add_audit(AuditEntry(time=now, actor=actor, action="tenant.set", tenant=existing.id,
                                   outcome="done", detail="unchanged"))
        return TenantChange(existing, key, created=False, key_issued=False, changed=False)
    tenant = replace(existing, sender=sender, updated_at=now)
    store.save_tenant(tenant)
    store.add_audit(AuditEntry(
        time=now, actor=actor, action="tenant.set", tenant=existing.id, outcome="done",
        detail=f"name changed from {existing.sender.name!r} to {sender.name!r}; key and status kept",
    ))
    return TenantChange(tenant, key, created=False, key_issued=False, changed=True)


def issue_key(keys_dir: Path, tenant_id: str, state: KeyState, *, now: datetime,
              written: list[Path]) -> DkimKey:
    """A new RSA-2048 key under a new selector, its file written 0600; the store row is the caller's.

    Every path created is appended to `written` (innermost last) for `remove_written` on failure.
    """
    private = dkimkeys.generate_private_key()
    selector = dkimkeys.new_selector(now)
    relative = dkimkeys.key_path(tenant_id, selector)
    path = keys_dir / relative
    # Innermost last, so removal can go in reverse; only directories this call creates.
    written.extend(d for d in (keys_dir, path.parent) if not d.exists())
    written.append(path)
    try:
        dkimkeys.write_private_key(keys_dir, relative, private)
    except OSError as exc:  # unwritable, full, or RELAY_KEYS_DIR is not a directory
        raise KeyWriteError(path, exc) from exc
    return DkimKey(tenant=tenant_id, selector=selector, state=state,
                   public_key_b64=dkimkeys.public_key_b64(private), key_file=relative, created_at=now)


def _retire_old_keys(store: Store, keys_dir: Path, tenant_id: str, *, moved: bool, now: datetime,
                     key_overlap: timedelta, obsolete: list[Path]) -> None:
    """The tenant's keys before a new active one: retired by their state, or deleted on a new domain."""
    for old in store.list_keys(tenant_id):
        if moved:
            # Published under the old domain: nothing to keep in the new domain's records.
            store.delete_key(tenant_id, old.selector)
            obsolete.append(keys_dir / old.key_file)
        elif old.state is KeyState.ACTIVE:
            store.set_key_state(tenant_id, old.selector, KeyState.RETIRING, now + key_overlap)
        elif old.state is KeyState.NEXT:
            # It never signed anything: its record (if IT published it) may go at once.
            store.set_key_state(tenant_id, old.selector, KeyState.RETIRING, now)


def _issue_key(store: Store, keys_dir: Path, tenant_id: str, existing: Tenant | None,
               sender: Sender, *, actor: str, now: datetime, key_overlap: timedelta,
               written: list[Path], obsolete: list[Path]) -> TenantChange:
    key = issue_key(keys_dir, tenant_id, KeyState.ACTIVE, now=now, written=written)
    selector = key.selector
    tenant = _pending_tenant(tenant_id, existing, sender, now)
    store.save_tenant(tenant)
    moved = existing is not None and existing.sender.domain != sender.domain
    _retire_old_keys(store, keys_dir, tenant_id, moved=moved, now=now, key_overlap=key_overlap,
                     obsolete=obsolete)
    store.add_key(key)
    if existing is not None:
        # The last validation judged the old records; they say nothing about the new ones.
        store.save_checks(tenant_id, [])
    detail = (f"created: {_describe(sender)}" if existing is None
              else f"changed from {_describe(existing.sender)} to {_describe(sender)}")
    store.add_audit(AuditEntry(time=now, actor=actor, action="tenant.set", tenant=tenant_id,
                               outcome="done", detail=f"{detail}; new DKIM selector {selector}"))
    return TenantChange(tenant, key, created=existing is None, key_issued=True, changed=True)


def _pending_tenant(tenant_id: str, existing: Tenant | None, sender: Sender, now: datetime) -> Tenant:
    return Tenant(
        id=tenant_id,
        sender=sender,
        status=TenantStatus.PENDING,
        created_at=existing.created_at if existing else now,
        updated_at=now,
        last_validated_at=None,
        verified_at=None,
    )


def remove_written(written: list[Path]) -> None:
    """Undo `issue_key`: the file first, then the directories created for it (only if empty)."""
    for path in reversed(written):  # the file first, then the directories created for it
        try:
            if path.is_dir():
                path.rmdir()  # only if empty: never another key
            else:
                path.unlink(missing_ok=True)
        except OSError:
            pass
