"""What a running relay knows of the store: tenants, clients and ready signers, as one swappable snapshot.

A background task polls `store.generation()` every `reload_interval` and swaps in a new snapshot, so
admin changes (validation, names, clients, keys) reach a running relay within seconds; a login with a
client name not yet known looks at once. A store that announces changes (`ChangeFeed`: PostgreSQL's
LISTEN/NOTIFY) is waited on instead of slept on: a change is read as soon as it commits, and the wait
ends after `reload_interval` regardless, so polling stays the fallback (key files, a lost notification).

The store may become unreachable mid-run (server gone, failover): the relay keeps serving from the last
snapshot in memory, logs one line when the outage starts and one when the store answers again, and
`failing` tells a login not to wait for a store that is known to be down.

A reload applies what changed, not everything: the store logs which tenant or client each generation
changed, and `Store.read_changes(since)` hands over only those, as they are now. The next snapshot is
a copy of the current one with just those entries replaced: only a changed tenant's key file is looked
at (and read, when its identity on disk moved), every other tenant keeps its very Tenant and signer
objects. With thousands of tenants a change costs what one tenant costs, on every worker of every relay.
The full read (`Store.read_snapshot`) remains for the first load, `load()`, and a relay further behind
than the store's log reaches (`read_changes` answers None).

Each snapshot or change set is read in one read transaction, never torn across a change committed
while it is read. A reload is logged only when what the relay serves changed (`changes`): an audit
row or a new user also moves the generation, and says nothing.

The store may not exist yet (a fresh install): the directory then serves nothing and tries to open it
at every poll, never creating it (`relay-admin user add` does).

Keys are loaded once and kept in memory; a key file is read again only when its identity on disk changes
(tenant, selector, domain, inode, mtime, ctime: a `chmod` changes ctime). A look that finds the
generation unchanged checks every key file's identity (the store logs no file swapped behind its
back), and the next reload reads only the files that moved; a look that finds the generation moved
reads the change set at once and leaves the other files to the next look. Keys fail closed per tenant: a
broken key leaves that tenant without a signer (451 4.3.5 at send time) and logs one line naming
tenant and selector; other tenants are unaffected. Broken means missing, unreadable, too open, not an
RSA key of at least 2048 bits, outside the keys directory or reached through a symlink (relay.core.dkimkeys),
or not the key whose public half the store holds for that selector (another key copied over the file).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric import rsa

from relay.core.dkimkeys import KeyFileError, key_file_path, load_private_key
from relay.core.logs import plural
from relay.core.models import Client, DkimKey, KeyState, Tenant
from relay.core.replies import KEY_UNAVAILABLE, ReplyError
from relay.core.store import Store, StoreChanges, StoreMissing
from relay.mail.signer import DkimSigner

log = logging.getLogger("relay.directory")

WAIT_SLICE = 1.0  # seconds one wait for a change notification may block its thread (and so a shutdown)
KeyStamp = tuple[str, str, str, int, int, int]  # tenant, selector, domain, inode, mtime_ns, ctime_ns


@runtime_checkable
class ChangeFeed(Protocol):
    """A store that can tell when `generation()` moved (relay.core.store.postgres.PostgresStore)."""

    def wait_for_change(self, timeout: float) -> bool: ...


class KeyLoader(Protocol):
    """Reads and checks one tenant's private key (relay.core.dkimkeys.load_private_key); a seam, so a
    test can count which key files a reload read."""

    def __call__(self, keys_dir: Path, relative: str, *, public_key: str) -> rsa.RSAPrivateKey: ...


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


@dataclass(frozen=True)
class Touched:
    """The tenants and clients a reload may have changed: all that `changes` needs to compare (every
    other entry of the new snapshot is the old one's very object)."""

    tenants: frozenset[str]
    clients: frozenset[str]


def _among(view: Mapping[str, object], ids: Collection[str] | None) -> Collection[str]:
    """The ids of `view` to compare: all of them, or those of `ids` it holds."""
    return view.keys() if ids is None else [i for i in ids if i in view]


def _served_tenants(snapshot: Snapshot, ids: Collection[str] | None = None) -> dict[str, Hashable]:
    """Each tenant as the relay acts on it: sender and status (timestamps change nothing it does)."""
    return {tid: (snapshot.tenants[tid].sender, snapshot.tenants[tid].status)
            for tid in _among(snapshot.tenants, ids)}


def _served_clients(snapshot: Snapshot, ids: Collection[str] | None = None) -> dict[str, Hashable]:
    """Each client as the relay acts on it: secret hash, scope and networks."""
    clients = snapshot.clients
    return {name: (clients[name].secret_hash, clients[name].all_tenants, clients[name].tenants,
                   clients[name].networks)
            for name in _among(clients, ids)}


def _served_keys(snapshot: Snapshot, tenants: Collection[str]) -> dict[str, Hashable]:
    """Each tenant's signing key as the relay sees it: selector, file and that file's identity on disk."""
    keys = {tid: snapshot.keys.get(tid) for tid in tenants}
    return {tid: (key.selector, key.key_file, snapshot.stamps.get(tid)) if key else None for tid, key in keys.items()}


def changes(old: Snapshot, new: Snapshot, among: Touched | None = None) -> list[str]:
    """What a reload changed in what the relay serves, e.g. `["1 tenant changed", "1 client added"]`.

    `among`: only these tenants and clients can differ (an applied change set), so only they are
    compared, not every tenant; None compares everything (a full snapshot)."""
    tenant_ids = None if among is None else among.tenants
    client_ids = None if among is None else among.clients
    # An added tenant's key is part of "tenant added": keys are compared for kept tenants only.
    kept = [tid for tid in _among(old.tenants, tenant_ids) if tid in new.tenants]
    return (_compare(_served_tenants(old, tenant_ids), _served_tenants(new, tenant_ids), "tenant")
            + _compare(_served_clients(old, client_ids), _served_clients(new, client_ids), "client")
            + _compare(_served_keys(old, kept), _served_keys(new, kept), "key"))


Entry = tuple[DkimSigner | KeyProblem, DkimKey | None, KeyStamp | None]  # a tenant's signer, active key, stamp


class Directory:
    """Holds the current snapshot; `load()` reads the store in full, `reload()` applies what changed since
    (a full read when the store's log does not cover it); both keep signers whose key file is unchanged.

    `store` is the store to read, or None to open it with `opener` once it exists (the directory then
    owns it, and `close()` closes it). `load_key` reads one key file (the real one unless a test counts).
    """

    def __init__(self, store: Store | None, *, keys_dir: Path, reload_interval: float,
                 opener: Callable[[], Store] | None = None, load_key: KeyLoader = load_private_key) -> None:
        self._store = store
        self._load_key = load_key
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

    def load(self, previous: Snapshot | None = None) -> Snapshot:
        """Build and install a full snapshot now (blocking: the whole store is read, and every key file
        whose identity on disk is new). `previous`: a snapshot this process already holds, such as the
        one a relay worker inherits from its parent at fork: its signers are kept for every key file
        still the same on disk, so the keys are not read and parsed again."""
        self._attach()
        if self._store is not None:
            self.current = self._build(previous if previous is not None else self.current)
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
            self._place(tenant, active_key(by_tenant.get(tenant.id, [])), previous, signers, keys, stamps)
        return Snapshot(generation, tenants, clients, signers, keys, stamps)

    def _apply(self, previous: Snapshot, changed: StoreChanges, moved: Collection[str]) -> tuple[Snapshot, Touched]:
        """`previous` with one change set applied, and the key files in `moved` (their identity on disk
        changed) looked at again. Copies of the maps, so a session holding `previous` keeps a whole,
        unchanging snapshot; every entry not in the change set is the very object it was."""
        tenants = dict(previous.tenants)
        clients = dict(previous.clients)
        signers = dict(previous.signers)
        keys = dict(previous.keys)
        stamps = dict(previous.stamps)
        for tid in changed.removed_tenants:
            tenants.pop(tid, None)
            signers.pop(tid, None)
            keys.pop(tid, None)
            stamps.pop(tid, None)
        by_tenant: dict[str, list[DkimKey]] = {}
        for stored in changed.keys:
            by_tenant.setdefault(stored.tenant, []).append(stored)
        for tenant in changed.tenants:
            tenants[tenant.id] = tenant
            self._place(tenant, active_key(by_tenant.get(tenant.id, [])), previous, signers, keys, stamps)
        in_change_set = {tenant.id for tenant in changed.tenants}
        for tid in moved:  # a key file swapped on disk while the store stayed as it was
            if tid in tenants and tid not in in_change_set:
                self._place(tenants[tid], keys.get(tid), previous, signers, keys, stamps)
        for name in changed.removed_clients:
            clients.pop(name, None)
        for client in changed.clients:
            clients[client.name] = client
        touched = Touched(tenants=frozenset([*in_change_set, *changed.removed_tenants, *moved]),
                          clients=frozenset([*(c.name for c in changed.clients), *changed.removed_clients]))
        return Snapshot(changed.generation, tenants, clients, signers, keys, stamps), touched

    def _place(self, tenant: Tenant, key: DkimKey | None, previous: Snapshot,
               signers: dict[str, DkimSigner | KeyProblem], keys: dict[str, DkimKey],
               stamps: dict[str, KeyStamp | None]) -> None:
        """Put `tenant`'s signer, active key and key file stamp into the maps of the next snapshot; the
        previous signer is kept while its key file is the same file (identity on disk), else it is read."""
        if key is None:
            signers[tenant.id] = KeyProblem(selector="-", reason="no active key")
            keys.pop(tenant.id, None)
            stamps.pop(tenant.id, None)
            return
        keys[tenant.id] = key
        stamps[tenant.id] = stamp = _stamp(self._keys_dir, key, tenant.sender.domain)
        old = previous.signers.get(tenant.id)
        if stamp is not None and previous.stamps.get(tenant.id) == stamp and isinstance(old, DkimSigner):
            signers[tenant.id] = old
        else:
            signers[tenant.id] = self._signer(tenant, key, stamp)

    def _signer(self, tenant: Tenant, key: DkimKey, stamp: KeyStamp | None) -> DkimSigner | KeyProblem:
        try:
            private = self._load_key(self._keys_dir, key.key_file, public_key=key.public_key_b64)
            return DkimSigner(private_key=private, domain=tenant.sender.domain, selector=key.selector)
        except (KeyFileError, ReplyError, ValueError) as exc:
            reason = getattr(exc, "detail", None) or str(exc)  # SigningKeyError keeps its reason in detail
            if (tenant.id, stamp, reason) not in self._logged:  # one line per broken key, not per poll
                self._logged.add((tenant.id, stamp, reason))
                log.error("dkim key unusable: tenant=%s selector=%s: %s", tenant.id, key.selector, reason)
            return KeyProblem(selector=key.selector, reason=reason)

    def _look(self) -> frozenset[str] | None:
        """None when nothing changed; else the tenants whose key file changed on disk (none are named
        when the generation moved: the change set is read at once, the files are looked at next time)."""
        snapshot = self.current
        if self._store is None:
            return None
        if self._store.generation() != snapshot.generation:
            return frozenset()
        moved = frozenset(
            tenant for tenant, key in snapshot.keys.items()
            if _stamp(self._keys_dir, key, snapshot.tenants[tenant].sender.domain) != snapshot.stamps.get(tenant)
        )
        return moved or None

    def _next(self, previous: Snapshot, moved: Collection[str]) -> tuple[Snapshot, Touched | None]:
        """The snapshot after `previous`: its change set applied, or a full read when the store's log does
        not cover every change since `previous` (or there is none yet); `Touched` None after a full read."""
        assert self._store is not None
        if previous.generation >= 0:
            changed = self._store.read_changes(previous.generation)
            if changed is not None:
                return self._apply(previous, changed, moved)
        return self._build(previous), None

    async def reload(self) -> list[str]:
        """Open the store once it exists, apply any change; what changed in what the relay serves."""
        opened = await asyncio.to_thread(self._attach)
        moved = None if opened else await asyncio.to_thread(self._look)
        if not opened and moved is None:
            return []
        previous = self.current
        self.current, touched = await asyncio.to_thread(self._next, previous, moved or ())
        return (["store opened"] if opened else []) + changes(previous, self.current, touched)

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
