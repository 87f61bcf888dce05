"""A reload applies what changed (issue 10): the store's change log, `Store.read_changes`, and the
directory applying a change set to a copy of its snapshot, on both backends.

Every test runs on SQLite (a file in the test's tmp_path) and on the session's throwaway PostgreSQL
cluster (`pg_url`), parametrised here with fixtures of this module's own names, so that they do not
depend on how conftest picks a backend for `relay_env`: nothing here reads RELAY_* settings. Tenants are written
straight through the store with key files written by the real key code (relay.core.dkimkeys), one RSA
key shared by all of them, so that hundreds of tenants cost file writes, not key generation. Which key
files a reload reads is counted through the directory's `load_key` seam, wrapped around the real loader;
during a test's first full load only (`setup`), the key parsed and checked for one tenant is handed to the
others with the same public key, since checking an RSA key costs ~50-90 ms and 300 of them are not what
is tested. Every load under test goes to the real loader.
"""

from __future__ import annotations

import functools
import gc
import logging
import sqlite3
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from admin.tenants import set_tenant
from relay.core import dkimkeys
from relay.core.metrics import Metrics
from relay.core.models import Client, DkimKey, KeyState, Sender
from relay.core.replies import ReplyError
from relay.core.store import SqliteStore, Store, StoreSnapshot, utcnow
from relay.core.store.postgres import PostgresStore
from relay.mail.signer import DkimSigner
from relay.policy.directory import Directory, KeyProblem
from relay.service.metrics import MeteredDirectory
from tests.factories import populate

MANY = 300


@functools.cache
def private_key(number: int) -> rsa.RSAPrivateKey:
    """RSA-2048 keys made once per session (generation is the slow part), by number."""
    return dkimkeys.generate_private_key()


@dataclass(frozen=True)
class Backend:
    """One backend under test: its store class and where its data lives."""

    name: str
    cls: type[Any]
    target: Path | str


@pytest.fixture(params=["sqlite", "pg"])
def backend_under_test(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", SqliteStore, tmp_path / "relay.db")
    url: str = request.getfixturevalue("pg_url")  # a fresh database in the session's cluster
    return Backend("pg", PostgresStore, url)


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def open_stores(backend_under_test: Backend) -> Iterator[Callable[..., Any]]:
    """Open stores on the test's data (a relay's, an admin's), all closed at the end; `cls` picks a
    subclass of the backend's store."""
    opened: list[Any] = []

    def open_one(cls: type[Any] | None = None, **kwargs: Any) -> Any:
        opened.append((cls or backend_under_test.cls)(backend_under_test.target, **kwargs))
        return opened[-1]

    yield open_one
    for one in opened:
        one.close()


@dataclass
class CountingLoader:
    """The real key loader, noting each key file it was asked to read; while `setup`, a key already
    parsed for the same public key is handed out again instead of being checked once more."""

    read: list[str] = field(default_factory=list)
    setup: bool = False
    parsed: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)

    def __call__(self, keys_dir: Path, relative: str, *, public_key: str) -> rsa.RSAPrivateKey:
        self.read.append(relative)
        if self.setup and public_key in self.parsed:
            return self.parsed[public_key]
        self.parsed[public_key] = key = dkimkeys.load_private_key(keys_dir, relative, public_key=public_key)
        return key


class CountingSnapshots:
    """A store as the directory sees it, counting full snapshot reads (everything else passes through)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.full_reads = 0

    def read_snapshot(self) -> StoreSnapshot:
        self.full_reads += 1
        return self.store.read_snapshot()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def client(name: str, *tenants: str) -> Client:
    return Client(name=name, secret_hash="h", all_tenants=False, tenants=tenants, networks=("10.0.0.0/8",),
                  created_at=utcnow())


def gauge(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def reloads(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("directory reloaded")]


# ------------------------------------------------------------------ one change among many tenants


async def test_one_changed_sender_among_many_tenants_rebuilds_that_tenant_alone(
        open_stores: Callable[..., Any], keys_dir: Path) -> None:
    relay, admin = open_stores(), open_stores()
    ids = populate(admin, keys_dir, MANY, private_key(0))
    admin.add_client(client("billing", *ids[:3]))
    loader, metrics = CountingLoader(setup=True), Metrics()
    directory = MeteredDirectory(relay, keys_dir=keys_dir, reload_interval=60, load_key=loader, metrics=metrics)
    before = directory.load()
    assert len(loader.read) == MANY and all(isinstance(s, DkimSigner) for s in before.signers.values())
    loader.read.clear()
    loader.setup = False

    change = set_tenant(admin, keys_dir, "t0007", Sender(name="T7", email="invoices@t0007.test", domain="t0007.test"),
                        actor="alice")  # a new address: a new key, status pending (the real `tenant set`)
    assert change.key_issued
    assert await directory.reload() == ["1 tenant changed", "1 key changed"]
    after = directory.current

    assert loader.read == [change.key.key_file], "the changed tenant's new key file, and no other"
    assert after.generation == admin.generation()
    others = [tid for tid in ids if tid != "t0007"]
    assert all(after.tenants[tid] is before.tenants[tid] for tid in others)
    assert all(after.signers[tid] is before.signers[tid] for tid in others)
    assert all(after.keys[tid] is before.keys[tid] for tid in others)
    assert after.clients["billing"] is before.clients["billing"]
    assert after.tenants["t0007"].sender.email == "invoices@t0007.test"
    assert after.signer("t0007").selector == change.key.selector
    assert before.signer("t0007").selector == "st0007", "the snapshot a session holds is never changed in place"
    # MeteredDirectory observed the new snapshot: the changed tenant counts as pending.
    assert gauge(metrics, "relay_tenants", status="pending") == 1
    assert gauge(metrics, "relay_tenants", status="verified") == MANY - 1


async def test_a_key_file_swapped_on_disk_is_read_again_alone_and_refused(
        open_stores: Callable[..., Any], keys_dir: Path) -> None:
    relay, admin = open_stores(), open_stores()
    ids = populate(admin, keys_dir, 50, private_key(0))
    loader, metrics = CountingLoader(setup=True), Metrics()
    directory = MeteredDirectory(relay, keys_dir=keys_dir, reload_interval=60, load_key=loader, metrics=metrics)
    before = directory.load()
    loader.read.clear()
    loader.setup = False
    # Another key put in t0003's place (content only: still 0600); the store did not change.
    dkimkeys.write_private_key(keys_dir, before.keys["t0003"].key_file, private_key(1))
    assert await directory.reload() == ["1 key changed"]
    after = directory.current
    assert loader.read == [before.keys["t0003"].key_file]
    problem = after.signers["t0003"]
    assert isinstance(problem, KeyProblem) and "does not match" in problem.reason
    with pytest.raises(ReplyError) as refused:
        after.signer("t0003")
    assert (refused.value.reply.code, refused.value.reply.enhanced) == (451, "4.3.5")
    assert all(after.signers[tid] is before.signers[tid] for tid in ids if tid != "t0003")
    assert gauge(metrics, "relay_signing_key_unusable", tenant="t0003") == 1


# ------------------------------------------------------------------ clients


async def test_a_removed_client_disappears_and_the_reload_says_so(
        open_stores: Callable[..., Any], keys_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    relay, admin = open_stores(), open_stores()
    populate(admin, keys_dir, 3, private_key(0))
    admin.add_client(client("billing", "t0000"))
    admin.add_client(client("reports", "t0001", "t0002"))
    directory = Directory(relay, keys_dir=keys_dir, reload_interval=60)
    before = directory.load()
    assert set(before.clients) == {"billing", "reports"}

    assert admin.delete_client("billing")
    assert not admin.delete_client("billing"), "already gone"
    admin.add_client(client("erp", "t0001"))
    await directory.poll()
    after = directory.current
    assert set(after.clients) == {"reports", "erp"}
    assert after.clients["reports"] is before.clients["reports"]
    assert all(after.tenants[tid] is before.tenants[tid] for tid in before.tenants)
    assert admin.get_client("billing") is None
    await directory.poll()  # nothing more changed: nothing more is said
    assert reloads(caplog) == ["directory reloaded: 1 client added, 1 client removed"]


# ------------------------------------------------------------------ the log's reach


async def test_a_pruned_log_falls_back_to_the_full_snapshot(open_stores: Callable[..., Any], keys_dir: Path) -> None:
    admin = open_stores(keep_changes=3)  # the writer prunes: the last 3 generations only
    populate(admin, keys_dir, 4, private_key(0))
    relay = CountingSnapshots(open_stores())
    directory = Directory(relay, keys_dir=keys_dir, reload_interval=60)  # type: ignore[arg-type]
    before = directory.load()
    assert relay.full_reads == 1
    for name in ("a", "b", "c", "d"):  # 4 generations: the one after `before` is pruned
        admin.add_client(Client(name=name, secret_hash="h", all_tenants=True, tenants=(), networks=(),
                                created_at=utcnow()))
    assert admin.read_changes(before.generation) is None
    assert await directory.reload() == ["4 clients added"]
    assert relay.full_reads == 2, "read in full"
    assert set(directory.current.clients) == {"a", "b", "c", "d"}
    assert directory.current.generation == admin.generation()
    # Back within the log's reach: the next change is applied, not read in full.
    full = directory.current
    assert admin.delete_client("a")
    assert await directory.reload() == ["1 client removed"]
    assert relay.full_reads == 2
    assert set(directory.current.clients) == {"b", "c", "d"}
    assert all(directory.current.tenants[tid] is full.tenants[tid] for tid in full.tenants)


def test_read_changes_reaches_back_exactly_as_far_as_the_log(open_stores: Callable[..., Any], keys_dir: Path) -> None:
    store = open_stores(keep_changes=5)
    start = store.generation()
    assert store.read_changes(start) is not None, "nothing since: an empty change set"
    assert store.read_changes(start + 1) is None, "a generation the store never had (another store)"
    populate(store, keys_dir, 1, private_key(0))  # 2 generations: the tenant, its key
    changed = store.read_changes(start)
    assert changed is not None and changed.generation == start + 2
    assert [t.id for t in changed.tenants] == ["t0000"] and [k.tenant for k in changed.keys] == ["t0000"]
    assert (changed.clients, changed.removed_tenants, changed.removed_clients) == ([], [], [])
    for name in ("a", "b", "c", "d"):
        store.add_client(client(name, "t0000"))  # 3 generations each: the client, its tenant, its network
    now = store.generation()
    assert now == start + 2 + 4 * 3
    assert store.read_changes(now - 5) is not None
    assert store.read_changes(now - 6) is None, "pruned"


def bump_as_an_older_program(backend: Backend, tenant_id: str, name: str) -> None:
    """What `save_tenant` of a program from before the change log does (an old `relay-admin` still
    running during a rolling upgrade): the row and the generation, and no change row."""
    sql = ["UPDATE tenants SET name = '%s' WHERE id = '%s'" % (name, tenant_id),
           "UPDATE meta SET value = value + 1 WHERE key = 'generation'"]
    if backend.name == "sqlite":
        with sqlite3.connect(backend.target) as db:  # commits on leaving
            for statement in sql:
                db.execute(statement)
        return
    with psycopg.connect(str(backend.target)) as conn:  # commits on leaving
        for statement in sql:
            conn.execute(statement.encode())


async def test_a_change_written_without_its_log_row_falls_back_to_the_full_snapshot(
        backend_under_test: Backend, open_stores: Callable[..., Any], keys_dir: Path) -> None:
    admin = open_stores()
    populate(admin, keys_dir, 3, private_key(0))
    relay = CountingSnapshots(open_stores())
    directory = Directory(relay, keys_dir=keys_dir, reload_interval=60)  # type: ignore[arg-type]
    since = directory.load().generation
    # A gap between two logged changes: the row right after `since` is there, one later is not.
    admin.add_client(Client(name="a", secret_hash="h", all_tenants=True, tenants=(), networks=(), created_at=utcnow()))
    bump_as_an_older_program(backend_under_test, "t0001", "Renamed by an old relay-admin")
    admin.add_client(Client(name="b", secret_hash="h", all_tenants=True, tenants=(), networks=(), created_at=utcnow()))
    assert admin.read_changes(since) is None
    assert await directory.reload() == ["1 tenant changed", "2 clients added"]
    assert relay.full_reads == 2
    assert directory.current.tenants["t0001"].sender.name == "Renamed by an old relay-admin"


# ------------------------------------------------------------------ never torn


class TearAfterGeneration:
    """Right after the generation is read (the first read of `read_changes`' transaction), another
    connection commits a change (once)."""

    tear: Callable[[], None] | None = None

    def generation(self) -> int:
        value: int = super().generation()  # type: ignore[misc]
        if self.tear is not None:
            tear, self.tear = self.tear, None
            tear()
        return value


class TearingSqlite(TearAfterGeneration, SqliteStore):
    pass


class TearingPostgres(TearAfterGeneration, PostgresStore):
    pass


def test_a_change_set_is_never_torn_by_a_write_during_the_read(
        backend_under_test: Backend, open_stores: Callable[..., Any], keys_dir: Path) -> None:
    admin = open_stores()
    reader = open_stores(TearingSqlite if backend_under_test.name == "sqlite" else TearingPostgres)
    populate(admin, keys_dir, 2, private_key(0))
    since = admin.generation()
    first = set_tenant(admin, keys_dir, "t0001", Sender(name="T1", email="one@t0001.test", domain="t0001.test"),
                       actor="alice")
    generation = admin.generation()
    second: list[DkimKey] = []

    def tenant_set() -> None:
        """The same tenant again: another address, another key, the first one retired."""
        done = set_tenant(admin, keys_dir, "t0001", Sender(name="T1", email="two@t0001.test", domain="t0001.test"),
                          actor="alice")
        second.append(done.key)

    reader.tear = tenant_set
    changed = reader.read_changes(since)
    assert reader.tear is None and second, "the second change was committed between the reads"
    # All as of the first change: its sender paired with its key, and the generation of both.
    assert changed is not None and changed.generation == generation
    [tenant] = changed.tenants
    assert tenant.sender.email == "one@t0001.test"
    assert {(k.selector, k.state) for k in changed.keys} == {("st0001", KeyState.RETIRING),
                                                            (first.key.selector, KeyState.ACTIVE)}
    # The next read sees all of the second change.
    later = reader.read_changes(generation)
    assert later is not None and later.generation == admin.generation() > generation
    assert [t.sender.email for t in later.tenants] == ["two@t0001.test"]
    assert (second[0].selector, KeyState.ACTIVE) in {(k.selector, k.state) for k in later.keys}


# ------------------------------------------------------------------ memory (relay.service.heap)


async def test_a_replaced_snapshot_is_freed_without_the_cycle_collector(
        open_stores: Callable[..., Any], keys_dir: Path) -> None:
    """Each relay process freezes what it loaded at start (gc.freeze, relay.service.heap): a frozen object
    is never looked at by the cycle collector again, so one the directory replaces must be freed by
    reference counting alone, or every reload would leak the snapshot it replaced."""
    relay, admin = open_stores(), open_stores()
    populate(admin, keys_dir, 3, private_key(0))
    admin.add_client(client("billing", "t0000"))
    directory = Directory(relay, keys_dir=keys_dir, reload_interval=60)
    before = directory.load()
    gone = [weakref.ref(before), weakref.ref(before.tenants["t0001"]), weakref.ref(before.clients["billing"]),
            weakref.ref(before.signers["t0001"])]
    set_tenant(admin, keys_dir, "t0001", Sender(name="T1", email="invoices@t0001.test", domain="t0001.test"),
               actor="alice")  # a new tenant, key and signer for t0001
    admin.delete_client("billing")
    gc.collect()
    gc.disable()
    try:
        await directory.reload()
        assert directory.current is not before
        del before
        assert [ref() for ref in gone] == [None] * len(gone)
    finally:
        gc.enable()


# ------------------------------------------------------------------ start-up (relay.service.main)


def test_a_worker_starting_from_its_parents_snapshot_reads_only_changed_key_files(
        open_stores: Callable[..., Any], keys_dir: Path) -> None:
    """The relay's parent reads the directory once (for the banner) and each forked worker starts from it:
    a key file unchanged on disk is not read and parsed again, one changed since is."""
    relay, admin = open_stores(), open_stores()
    ids = populate(admin, keys_dir, 5, private_key(0))
    parent = Directory(relay, keys_dir=keys_dir, reload_interval=60, load_key=CountingLoader(setup=True)).load()
    change = set_tenant(admin, keys_dir, "t0003", Sender(name="T3", email="billing@t0003.test", domain="t3.test"),
                        actor="alice")  # meanwhile: a new domain, so a new key for t0003
    loader = CountingLoader()
    worker = Directory(open_stores(), keys_dir=keys_dir, reload_interval=60, load_key=loader)
    snapshot = worker.load(parent)
    assert loader.read == [change.key.key_file]
    assert all(snapshot.signers[tid] is parent.signers[tid] for tid in ids if tid != "t0003")
    assert snapshot.signer("t0003").selector == change.key.selector
    assert snapshot.generation == admin.generation()
