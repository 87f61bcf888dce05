"""What a running relay knows of the store: tenants, clients and ready signers, as one swappable snapshot.

A background task polls `store.generation()` every `reload_interval` and swaps in a new snapshot, so
admin changes (validation, names, clients, keys) reach a running relay within seconds. Keys are
loaded once and kept in memory; a key file is read again only when its identity on disk changes
(tenant, selector, domain, inode, mtime, ctime: a `chmod` changes ctime). Keys fail closed per tenant: a
broken key leaves that tenant without a signer (451 4.3.5 at send time) and logs one line naming
tenant and selector; other tenants are unaffected.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from relay.dkimkeys import KeyFileError, load_private_key
from relay.models import Client, DkimKey, KeyState, Tenant
from relay.replies import KEY_UNAVAILABLE, ReplyError
from relay.signer import DkimSigner
from relay.store import Store

log = logging.getLogger("relay.directory")

KeyStamp = tuple[str, str, str, int, int, int]  # tenant, selector, domain, inode, mtime_ns, ctime_ns


@dataclass(frozen=True)
class KeyProblem:
    selector: str
    reason: str


@dataclass(frozen=True)
class Snapshot:
    generation: int
    tenants: Mapping[str, Tenant]
    clients: Mapping[str, Client]
    signers: Mapping[str, DkimSigner | KeyProblem]  # by tenant id
    keys: Mapping[str, DkimKey] = field(default_factory=dict)  # active key by tenant id
    stamps: Mapping[str, KeyStamp | None] = field(default_factory=dict)  # by tenant id

    def signer(self, tenant_id: str) -> DkimSigner:
        """The tenant's signer, or 451 4.3.5: never unsigned mail, never another tenant's key."""
        entry = self.signers.get(tenant_id)
        if not isinstance(entry, DkimSigner):
            raise ReplyError(KEY_UNAVAILABLE)
        return entry


def active_key(keys: list[DkimKey]) -> DkimKey | None:
    """The key that signs now: the newest `active` one (a rotation promotes `next` to `active`)."""
    active = [key for key in keys if key.state is KeyState.ACTIVE]
    return max(active, key=lambda key: key.created_at) if active else None


def _stamp(keys_dir: Path, key: DkimKey, domain: str) -> KeyStamp | None:
    try:
        info = os.stat(keys_dir / key.key_file)
    except OSError:
        return None
    return (key.tenant, key.selector, domain, info.st_ino, info.st_mtime_ns, info.st_ctime_ns)


class Directory:
    """Holds the current snapshot; `load()` builds the next one, reusing signers whose file is unchanged."""

    def __init__(self, store: Store, *, keys_dir: Path, reload_interval: float) -> None:
        self._store = store
        self._keys_dir = keys_dir
        self._interval = reload_interval
        self._logged: set[tuple[str, KeyStamp | None, str]] = set()
        self.current = Snapshot(generation=-1, tenants={}, clients={}, signers={})

    def load(self) -> Snapshot:
        """Build and install a snapshot now (blocking: the store and key files are read)."""
        self.current = self._build(self.current)
        return self.current

    def _build(self, previous: Snapshot) -> Snapshot:
        generation = self._store.generation()  # read first: a write meanwhile only causes a re-read
        tenants = {tenant.id: tenant for tenant in self._store.list_tenants()}
        clients = {client.name: client for client in self._store.list_clients()}
        by_tenant: dict[str, list[DkimKey]] = {}
        for stored in self._store.list_keys():
            by_tenant.setdefault(stored.tenant, []).append(stored)
        signers: dict[str, DkimSigner | KeyProblem] = {}
        keys: dict[str, DkimKey] = {}
        stamps: dict[str, KeyStamp | None] = {}
        for tenant in tenants.values():
            key = active_key(by_tenant.get(tenant.id, []))
            if key is None:
                signers[tenant.id] = KeyProblem(selector="-", reason="no active key")
                continue
            keys[tenant.id] = key
            stamps[tenant.id] = stamp = _stamp(self._keys_dir, key, tenant.sender.domain)
            old = previous.signers.get(tenant.id)
            if stamp is not None and previous.stamps.get(tenant.id) == stamp and isinstance(old, DkimSigner):
                signers[tenant.id] = old
            else:
                signers[tenant.id] = self._signer(tenant, key, stamp)
        return Snapshot(generation, tenants, clients, signers, keys, stamps)

    def _signer(self, tenant: Tenant, key: DkimKey, stamp: KeyStamp | None) -> DkimSigner | KeyProblem:
        try:
            private = load_private_key(self._keys_dir, key.key_file)
            return DkimSigner(private_key=private, domain=tenant.sender.domain, selector=key.selector)
        except (KeyFileError, ReplyError, ValueError) as exc:
            reason = getattr(exc, "detail", None) or str(exc)  # SigningKeyError keeps its reason in detail
            if (tenant.id, stamp, reason) not in self._logged:  # one line per broken key, not per poll
                self._logged.add((tenant.id, stamp, reason))
                log.error("dkim key unusable: tenant=%s selector=%s: %s", tenant.id, key.selector, reason)
            return KeyProblem(selector=key.selector, reason=reason)

    def _changed(self) -> bool:
        snapshot = self.current
        if self._store.generation() != snapshot.generation:
            return True
        return any(
            _stamp(self._keys_dir, key, snapshot.tenants[tenant].sender.domain) != snapshot.stamps.get(tenant)
            for tenant, key in snapshot.keys.items()
        )

    async def reload_forever(self) -> None:
        """Poll for changes; a failing store keeps the last good snapshot (and says so once per error)."""
        last_error = ""
        while True:
            await asyncio.sleep(self._interval)
            try:
                if await asyncio.to_thread(self._changed):
                    self.current = await asyncio.to_thread(self._build, self.current)
                    log.info("directory reloaded: generation %d", self.current.generation)
                last_error = ""
            except Exception as exc:  # keep serving with what we have; the store may come back
                if str(exc) != last_error:
                    log.error("directory reload failed, keeping the last snapshot: %s", exc)
                last_error = str(exc)
