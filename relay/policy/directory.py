"""What a running relay knows of the store: tenants, clients and ready signers, as one swappable snapshot.

A background task polls `store.generation()` every `reload_interval` and swaps in a new snapshot, so
admin changes (validation, names, clients, keys) reach a running relay within seconds; a login with a
client name not yet known looks at once. A store that announces changes (`ChangeFeed`: PostgreSQL's
LISTEN/NOTIFY) is waited on instead of slept on: a change is read as soon as it commits, and the wait
ends after `reload_interval` regardless, so polling stays the fallback (key files, a lost notification).

The store may become unreachable mid-run (server gone, failover): the relay keeps serving from the last
snapshot in memory, logs one line when the outage starts and one when the store answers again, and
`failing` tells a login not to wait for a store that is known to be down.

Each snapshot is read in one read transaction (`Store.read_snapshot`), never torn across a change
committed while it is read. A reload is logged only when what the relay serves changed (`changes`): an
audit row or a new user also moves the generation, and says nothing.

The store may not exist yet (a fresh install): the directory then serves nothing and tries to open it
at every poll, never creating it (`relay-admin user add` does).

Keys are loaded once and kept in memory; a key file is read again only when its identity on disk changes
(tenant, selector, domain, inode, mtime, ctime: a `chmod` changes ctime). Keys fail closed per tenant: a
broken key leaves that tenant without a signer (451 4.3.5 at send time) and logs one line naming
tenant and selector; other tenants are unaffected. Broken means missing, unreadable, too open, not an
RSA key of at least 2048 bits, outside the keys directory or reached through a symlink (relay.core.dkimkeys),
or not the key whose public half the store holds for that selector (another key copied over the file).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from relay.core.dkimkeys import KeyFileError, key_file_path, load_private_key
from relay.core.logs import plural
from relay.core.models import Client, DkimKey, KeyState, Tenant
from relay.core.replies import KEY_UNAVAILABLE, ReplyError
from relay.core.store import Store, StoreMissing
from relay.mail.signer import DkimSigner

log = logging.getLogger("relay.directory")

WAIT_SLICE = 1.0  # seconds one wait for a change notification may block its thread (and so a shutdown)
KeyStamp = tuple[str, str, str, int, int, int]  # tenant, selector, domain, inode, mtime_ns, ctime_ns


@runtime_checkable
class ChangeFeed(Protocol):
    """A store that can tell when `generation()` moved (relay.core.store.postgres.PostgresStore)."""

    def wait_for_change(self, timeout: float) -> bool: ...


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
    """The key file's identity on disk (lstat: a symlink put in its place is a change), or None."""
    try:
        info = os.lstat(key_file_path(keys_dir, key.key_file))
    except (OSError, KeyFileError):
        return None
    return (key.tenant, key.selector, domain, info.st_ino, info.st_mtime_ns, info.st_ctime_ns)


def _compare(old: Mapping[str, Hashable], new: Mapping[str, Hashable], noun: str) -> list[str]:
    """`N noun added/changed/removed` for two views keyed by id; nothing for what is equal."""
    changed = sum(1 for key in old.keys() & new.keys() if old[key] != new[key])
    counts = ((len(new.keys() - old.keys()), "added"), (changed, "changed"), (len(old.keys() - new.keys()), "removed"))
    return [f"{plural(count, noun)} {verb}" for count, verb in counts if count]


def _served_tenants(snapshot: Snapshot) -> dict[str, Hashable]:
    """Each tenant as the relay acts on it: sender and status (timestamps change nothing it does)."""
    return {tid: (tenant.sender, tenant.status) for tid, tenant in snapshot.tenants.items()}


def _served_clients(snapshot: Snapshot) -> dict[str, Hashable]:
    """Each client as the relay acts on it: secret hash, scope and networks."""
    return {name: (client.secret_hash, client.all_tenants, client.tenants, client.networks)
            for name, client in snapshot.clients.items()}


def _served_keys(snapshot: Snapshot, tenants: set[str]) -> dict[str, Hashable]:
    """Each tenant's signing key as the relay sees it: selector, file and that file's identity on disk."""
    keys = {tid: snapshot.keys.get(tid) for tid in tenants}
    return {tid: (key.selector, key.key_file, snapshot.stamps.get(tid)) if key else None for tid, key in keys.items()}


def changes(old: Snapshot, new: Snapshot) -> list[str]:
    """What a reload changed in what the relay serves, e.g. `["1 tenant changed", "1 client added"]`."""
    kept = old.tenants.keys() & new.tenants.keys()  # an added tenant's key is part of "tenant added"
    return (_compare(_served_tenants(old), _served_tenants(new), "tenant")
            + _compare(_served_clients(old), _served_clients(new), "client")
            + _compare(_served_keys(old, kept), _served_keys(new, kept), "key"))


class Directory:
    """Holds the current snapshot; `load()` builds the next one, reusing signers whose file is unchanged.

    `store` is the store to read, or None to open it with `opener` once it exists (the directory then
    owns it, and `close()` closes it).
    """

    def __init__(self, store: Store | None, *, keys_dir: Path, reload_interval: float,
                 opener: Callable[[], Store] | None = None) -> None:
        self._store = store
        self._opener = opener
        self._owned: Store | None = None
        self._keys_dir = keys_dir
        self._interval = reload_interval
        self._logged: set[tuple[str, KeyStamp | None, str]] = set()
        self._polling = asyncio.Lock()
        self._last_error = ""
        self.current = Snapshot(generation=-1, tenants={}, clients={}, signers={})

    def close(self) -> None:
        """Close the store if this directory opened it."""
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def _attach(self) -> bool:
        """Open the store if there is none yet; False while it does not exist (blocking)."""
        if self._store is not None or self._opener is None:
            return False
        try:
            self._store = self._owned = self._opener()
        except StoreMissing:
            return False
        return True

    def load(self) -> Snapshot:
        """Build and install a snapshot now (blocking: the store and key files are read)."""
        self._attach()
        if self._store is not None:
            self.current = self._build(self.current)
        return self.current

    def _build(self, previous: Snapshot) -> Snapshot:
        assert self._store is not None
        # One read transaction: a change committed meanwhile is either all in or all out (a new
        # sender is never paired with the old keys), and `generation` is exactly the one read.
        read = self._store.read_snapshot()
        generation = read.generation
        tenants = {tenant.id: tenant for tenant in read.tenants}
        clients = {client.name: client for client in read.clients}
        by_tenant: dict[str, list[DkimKey]] = {}
        for stored in read.keys:
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
            private = load_private_key(self._keys_dir, key.key_file, public_key=key.public_key_b64)
            return DkimSigner(private_key=private, domain=tenant.sender.domain, selector=key.selector)
        except (KeyFileError, ReplyError, ValueError) as exc:
            reason = getattr(exc, "detail", None) or str(exc)  # SigningKeyError keeps its reason in detail
            if (tenant.id, stamp, reason) not in self._logged:  # one line per broken key, not per poll
                self._logged.add((tenant.id, stamp, reason))
                log.error("dkim key unusable: tenant=%s selector=%s: %s", tenant.id, key.selector, reason)
            return KeyProblem(selector=key.selector, reason=reason)

    def _changed(self) -> bool:
        snapshot = self.current
        if self._store is None:
            return False
        if self._store.generation() != snapshot.generation:
            return True
        return any(
            _stamp(self._keys_dir, key, snapshot.tenants[tenant].sender.domain) != snapshot.stamps.get(tenant)
            for tenant, key in snapshot.keys.items()
        )

    async def reload(self) -> list[str]:
        """Open the store once it exists, rebuild on any change; what changed in what the relay serves."""
        opened = await asyncio.to_thread(self._attach)
        if not (opened or await asyncio.to_thread(self._changed)):
            return []
        previous = self.current
        self.current = await asyncio.to_thread(self._build, previous)
        return (["store opened"] if opened else []) + changes(previous, self.current)

    @property
    def failing(self) -> bool:
        """The store could not be read at the last look (the relay serves from memory meanwhile)."""
        return bool(self._last_error)

    def _failed(self, exc: Exception) -> None:
        """Note a store error: one line when an outage begins, not one per look."""
        if not self._last_error:
            log.error("store unreachable, serving from the last snapshot until it answers again: %s", exc)
        self._last_error = str(exc) or type(exc).__name__

    async def poll(self) -> None:
        """Look at the store once: log what changed, or keep the last good snapshot (one line per outage)."""
        async with self._polling:  # one look at a time: the loop's and a login's never log the same change twice
            try:
                changed = await self.reload()
            except Exception as exc:  # keep serving with what we have; the store may come back
                self._failed(exc)
                return
            if self._last_error:
                log.info("store answers again")
            self._last_error = ""
            if changed:
                log.info("directory reloaded: %s", ", ".join(changed))

    async def _wait(self) -> None:
        """Until the store announces a change, or `reload_interval` at most (a sleep, for a store that cannot)."""
        store = self._store
        if isinstance(store, ChangeFeed) and not self.failing:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._interval
            try:  # in a thread, WAIT_SLICE at a time: a relay shutting down waits at most that long for it
                while (left := deadline - loop.time()) > 0:
                    if await asyncio.to_thread(store.wait_for_change, min(left, WAIT_SLICE)):
                        return
                return
            except Exception:  # the listening connection broke: look now, the poll says whether the store is down
                await self.poll()
        await asyncio.sleep(self._interval)

    async def reload_forever(self) -> None:
        """Look for changes whenever the store announces one, and every `reload_interval` seconds."""
        while True:
            await self._wait()
            await self.poll()
