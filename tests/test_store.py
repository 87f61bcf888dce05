"""The store, on both backends: schema version and migration on open, all-or-nothing transactions,
generation, and every method's round trip. SQLite-only details (its file, `user_version`) are tested
here too; PostgreSQL-only ones (concurrency across instances, a server that goes away) in
tests/test_store_pg.py."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from relay.core.models import (
    ApiToken,
    AuditEntry,
    CheckResult,
    CheckStatus,
    Client,
    DkimKey,
    KeyState,
    Role,
    Sender,
    Tenant,
    TenantStatus,
    User,
)
from relay.core.store import (
    SCHEMA_VERSION,
    SqliteStore,
    Store,
    StoreError,
    WebSession,
    utcnow,
)
from relay.core.store import sqlite as store_module
from tests.snapshot import SQLITE, dump_store, dump_url, open_url


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "relay.db"


@dataclass(frozen=True)
class Backend:
    """One backend under test: open another store on the same data, and dump all of it."""

    name: str
    open: Callable[[], Store]
    dump: Callable[[], dict[str, list[tuple[Any, ...]]]]


@pytest.fixture
def backend(store_backend: str, database_url: str) -> Backend:
    """conftest's `store_backend`: TMP/relay.db (`db_path`), or a fresh database in the session's cluster."""
    return Backend(store_backend, lambda: open_url(database_url), lambda: dump_url(database_url))


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    opened = backend.open()
    yield opened
    opened.close()


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def tenant(tenant_id: str = "acme", name: str = "Acme", status: TenantStatus = TenantStatus.PENDING
           ) -> Tenant:
    now = utcnow()
    return Tenant(id=tenant_id, sender=Sender(name=name, email=f"billing@{tenant_id}.test",
                                              domain=f"{tenant_id}.test"),
                  status=status, created_at=now, updated_at=now)


def key(selector: str, state: KeyState = KeyState.ACTIVE) -> DkimKey:
    return DkimKey(tenant="acme", selector=selector, state=state, public_key_b64="MIIB",
                   key_file=f"acme/{selector}.pem", created_at=utcnow())


def test_new_store_has_current_schema_version(store: Store, backend: Backend, db_path: Path) -> None:
    assert SCHEMA_VERSION == len(store_module.MIGRATIONS) >= 1
    if backend.name == SQLITE:
        assert user_version(db_path) == SCHEMA_VERSION
    else:
        assert backend.dump()["schema_version"] == [(SCHEMA_VERSION,)]
    tables = set(backend.dump())
    assert {"users", "tenants", "dkim_keys", "clients", "client_tenants", "client_networks",
            "checks", "audit", "meta"} <= tables
    assert store.generation() == 0


@pytest.mark.sqlite_only  # PostgreSQL's own: tests/test_store_pg.py
def test_open_migrates_an_older_store_keeping_its_data(
    db_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    old = SqliteStore(db_path)
    old.save_tenant(tenant())
    old.close()
    migration = "ALTER TABLE tenants ADD COLUMN note TEXT NOT NULL DEFAULT ''"
    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, migration])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    reopened = SqliteStore(db_path)
    try:
        assert user_version(db_path) == SCHEMA_VERSION + 1
        saved = reopened.get_tenant("acme")
        assert saved is not None and saved.sender.name == "Acme"
    finally:
        reopened.close()
    db = sqlite3.connect(db_path)
    assert db.execute("SELECT note FROM tenants WHERE id = 'acme'").fetchone() == ("",)
    db.close()


@pytest.mark.sqlite_only  # PostgreSQL's own: tests/test_store_pg.py
def test_failing_migration_leaves_the_store_as_it_was(
    db_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    old = SqliteStore(db_path)
    old.save_tenant(tenant())
    old.close()
    before = dump_store(db_path)
    broken = "ALTER TABLE tenants ADD COLUMN note TEXT; ALTER TABLE no_such_table ADD COLUMN x TEXT"
    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, broken])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(sqlite3.OperationalError):
        SqliteStore(db_path)
    assert dump_store(db_path) == before
    assert user_version(db_path) == SCHEMA_VERSION


@pytest.mark.sqlite_only  # PostgreSQL's own: tests/test_store_pg.py
def test_store_newer_than_the_program_is_refused(db_path: Path) -> None:
    SqliteStore(db_path).close()
    db = sqlite3.connect(db_path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        SqliteStore(db_path)


@pytest.mark.sqlite_only  # PostgreSQL's own: tests/test_store_pg.py
def test_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open"):
        SqliteStore(tmp_path / "file" / "relay.db")


def test_transaction_rollback_keeps_the_previous_state(store: Store, backend: Backend) -> None:
    store.save_tenant(tenant(name="Before"))
    store.add_key(key("s1"))
    before, generation = backend.dump(), store.generation()
    with pytest.raises(RuntimeError), store.transaction():
        store.save_tenant(tenant(name="After"))
        store.set_key_state("acme", "s1", KeyState.RETIRING, utcnow())
        store.add_key(key("s2"))
        raise RuntimeError("something failed half-way")
    assert backend.dump() == before
    assert store.generation() == generation
    saved = store.get_tenant("acme")
    assert saved is not None and saved.sender.name == "Before"


def test_failing_write_rolls_back_earlier_writes_of_the_transaction(
    store: Store, backend: Backend,
) -> None:
    store.add_user(User(name="alice", role=Role.OWNER, created_at=utcnow()))
    before = backend.dump()
    with pytest.raises(StoreError), store.transaction():
        store.add_user(User(name="bob", role=Role.ADMIN, created_at=utcnow()))
        store.add_user(User(name="alice", role=Role.ADMIN, created_at=utcnow()))  # duplicate
    assert backend.dump() == before
    assert [u.name for u in store.list_users()] == ["alice"]


def test_client_with_unknown_parts_is_written_whole_or_not_at_all(
    store: Store, backend: Backend,
) -> None:
    client = Client(name="svc", secret_hash="scrypt$x", all_tenants=False, tenants=("a", "a"),
                    networks=(), created_at=utcnow())  # the repeated tenant violates the key
    before = backend.dump()
    with pytest.raises(StoreError):
        store.add_client(client)
    assert backend.dump() == before


def test_generation_bumps_on_every_served_write_and_is_seen_by_other_connections(
    store: Store, backend: Backend,
) -> None:
    other = backend.open()
    try:
        start = other.generation()
        store.add_client(Client(name="svc", secret_hash="scrypt$x", all_tenants=True, tenants=(),
                                networks=(), created_at=utcnow()))
        assert other.generation() == start + 1
        store.add_user(User(name="alice", role=Role.OWNER, created_at=utcnow()))  # the relay serves no users
        assert other.generation() == start + 1
        with store.transaction():
            store.save_tenant(tenant())
            store.add_key(key("s1"))
        assert other.generation() == start + 3
        store.get_tenant("acme")  # reads do not bump
        store.list_keys()
        assert other.generation() == start + 3
    finally:
        other.close()


def test_round_trips(store: Store) -> None:
    now = utcnow()
    store.save_tenant(tenant(name="Ακμή \"=1\"", status=TenantStatus.VERIFIED))
    store.add_key(key("s1"))
    store.set_key_state("acme", "s1", KeyState.RETIRING, now + timedelta(days=7))
    store.add_key(key("s2", KeyState.ACTIVE))
    saved = store.get_tenant("acme")
    assert saved is not None and saved.sender.name == "Ακμή \"=1\"" and saved.status is TenantStatus.VERIFIED
    states = {k.selector: (k.state, k.remove_after) for k in store.list_keys("acme")}
    assert states == {"s1": (KeyState.RETIRING, now + timedelta(days=7)), "s2": (KeyState.ACTIVE, None)}
    check = CheckResult(purpose="dkim", type="TXT", name="s2._domainkey.acme.test",
                        status=CheckStatus.MISSING, expected="v=DKIM1", found=("a", "b"),
                        diagnosis="add it", checked_at=now)
    store.save_checks("acme", [check, check])
    store.save_checks("acme", [check])  # the latest set replaces the previous one
    assert store.latest_checks("acme") == [check]
    store.add_audit(AuditEntry(time=now, actor="alice", action="tenant.set", tenant="acme",
                               outcome="done", detail="x"))
    store.add_audit(AuditEntry(time=now, actor="alice", action="user.add", tenant=None,
                               outcome="done"))
    assert [a.action for a in store.list_audit("acme")] == ["tenant.set"]
    assert [a.action for a in store.list_audit()] == ["tenant.set", "user.add"]


# Every other method of the `Store` protocol, on both backends: same answers, same generation rules.

def client(name: str = "svc", secret_hash: str = "scrypt$x") -> Client:
    return Client(name=name, secret_hash=secret_hash, all_tenants=False, tenants=("acme",),
                  networks=("10.0.0.0/24",), created_at=utcnow())


def test_users_clients_and_tenants_round_trip(store: Store) -> None:
    store.save_tenant(tenant())
    alice = User(name="alice", role=Role.OWNER, created_at=utcnow())
    carol = User(name="carol", role=Role.ACCOUNTANT, created_at=utcnow(), tenants=("acme",),
                 password_hash="scrypt$pw")
    store.add_user(carol)
    store.add_user(alice)
    assert store.list_users() == [alice, carol]
    saved = store.get_user("carol")
    assert saved == carol and saved is not None and saved.password_hash == "scrypt$pw"
    assert store.get_user("nobody") is None
    assert store.set_password_hash("alice", "scrypt$new") and not store.set_password_hash("nobody", "x")
    assert (store.get_user("alice") or alice).password_hash == "scrypt$new"
    svc = client()
    store.add_client(svc)
    store.add_client(Client(name="all", secret_hash="h", all_tenants=True, tenants=(), networks=(),
                            created_at=utcnow()))
    assert store.get_client("svc") == svc and store.get_client("nobody") is None
    assert [c.name for c in store.list_clients()] == ["all", "svc"]
    generation = store.generation()
    assert store.set_client_secret("svc", "scrypt$y") and not store.set_client_secret("nobody", "z")
    assert (store.get_client("svc") or svc).secret_hash == "scrypt$y"
    assert store.generation() > generation  # a running relay must see the new hash
    store.save_tenant(tenant("beta"))
    assert [t.id for t in store.list_tenants()] == ["acme", "beta"] and store.get_tenant("nope") is None


def test_keys_are_listed_per_tenant_and_deleted(store: Store) -> None:
    store.save_tenant(tenant())
    store.add_key(key("s1"))
    store.add_key(key("s2", KeyState.NEXT))
    assert {k.selector for k in store.list_keys()} == {"s1", "s2"} == {k.selector for k in store.list_keys("acme")}
    assert store.list_keys("other") == []
    store.delete_key("acme", "s1")
    assert [k.selector for k in store.list_keys("acme")] == ["s2"]


def test_checks_with_nothing_found_and_optional_ones(store: Store) -> None:
    store.save_tenant(tenant())
    checks = [CheckResult(purpose=p, type="TXT", name=f"{p}.acme.test", status=CheckStatus.OK, expected="x",
                          found=(), diagnosis="", checked_at=utcnow(), required=p != "dmarc")
              for p in ("dkim", "return-path", "dmarc")]
    store.save_checks("acme", checks)
    assert store.latest_checks("acme") == checks  # in the order written
    assert store.latest_checks("other") == []


def test_save_lifecycle_moves_the_generation_only_when_the_status_changes(store: Store) -> None:
    store.save_tenant(tenant())
    now, generation = utcnow(), store.generation()
    store.save_lifecycle("acme", status=TenantStatus.PENDING, failing_since=None, verified_at=None,
                         last_validated_at=now)
    assert store.generation() == generation
    store.save_lifecycle("acme", status=TenantStatus.DEGRADED, failing_since=now, verified_at=now,
                         last_validated_at=now)
    assert store.generation() == generation + 1
    saved = store.get_tenant("acme")
    assert saved is not None and (saved.status, saved.failing_since, saved.verified_at, saved.last_validated_at) \
        == (TenantStatus.DEGRADED, now, now, now)
    assert saved.sender == tenant().sender  # the sender is not touched
    with pytest.raises(StoreError, match="not in the store"):
        store.save_lifecycle("nobody", status=TenantStatus.FAILED, failing_since=None, verified_at=None,
                             last_validated_at=now)


def test_a_lease_has_one_holder_until_it_expires_or_is_released(store: Store) -> None:
    now = utcnow()
    later = now + timedelta(minutes=5)
    generation = store.generation()
    assert store.acquire_lease("revalidate:acme", "a", later, now)
    assert not store.acquire_lease("revalidate:acme", "b", later, now)
    assert store.acquire_lease("revalidate:acme", "a", later + timedelta(minutes=1), now)  # renewed
    assert store.acquire_lease("revalidate:acme", "b", later, later + timedelta(minutes=1))  # expired
    store.release_lease("revalidate:acme", "a")  # not the holder any more: nothing happens
    assert not store.acquire_lease("revalidate:acme", "a", later, now)
    store.release_lease("revalidate:acme", "b")
    assert store.acquire_lease("revalidate:acme", "a", later, now)
    assert store.acquire_lease("revalidate:beta", "b", later, now)  # another name, another lease
    assert store.generation() == generation  # leases are not what the relay serves


def test_notifications_are_queued_retried_delivered_or_abandoned(store: Store) -> None:
    now = utcnow()
    first, second = store.add_notification('{"n": 1}', now), store.add_notification('{"n": 2}', now)
    assert first < second
    assert [n.payload for n in store.due_notifications(now)] == ['{"n": 1}', '{"n": 2}']
    assert len(store.due_notifications(now, limit=1)) == 1
    store.notification_failed(first, "HTTP 500", now + timedelta(minutes=1))
    assert [n.id for n in store.due_notifications(now)] == [second]
    retried = store.queued_notification(first)
    assert retried is not None and (retried.attempts, retried.last_error) == (1, "HTTP 500")
    assert retried.next_attempt_at == now + timedelta(minutes=1)
    store.notification_delivered(second, now)
    store.notification_failed(first, "HTTP 500 again", None)
    assert store.queued_notification(first) is None and store.queued_notification(second) is None
    assert store.due_notifications(now + timedelta(days=1)) == []


def test_tokens_are_kept_by_prefix_until_revoked(store: Store) -> None:
    store.add_user(User(name="alice", role=Role.OWNER, created_at=utcnow()))
    now = utcnow()
    token = ApiToken(prefix="abcd1234", user="alice", token_hash="scrypt$t", created_at=now)
    store.add_token(token)
    assert store.tokens_with_prefix("abcd1234") == [token] and store.tokens_with_prefix("zzzz") == []
    assert store.revoke_token("abcd1234", now) == 1
    assert store.revoke_token("abcd1234", now) == 0
    assert store.tokens_with_prefix("abcd1234")[0].revoked_at == now


def test_web_sessions_and_signin_failures(store: Store) -> None:
    store.add_user(User(name="alice", role=Role.OWNER, created_at=utcnow()))
    now = utcnow()
    session = WebSession(id_hash="h1", user="alice", csrf_token="c", created_at=now,
                         expires_at=now + timedelta(hours=1))
    store.add_web_session(session)
    store.add_web_session(WebSession(id_hash="h2", user="alice", csrf_token="d", created_at=now, expires_at=now))
    assert store.get_web_session("h1") == session and store.get_web_session("nope") is None
    assert store.delete_expired_web_sessions(now) == 1
    store.delete_web_session("h1")
    assert store.get_web_session("h1") is None
    store.add_signin_failure("user:alice", now - timedelta(hours=2), forget_before=now - timedelta(days=1))
    store.add_signin_failure("user:alice", now, forget_before=now - timedelta(hours=1))  # forgets the first
    store.add_signin_failure("ip:10.0.0.1", now, forget_before=now - timedelta(hours=1))
    assert store.signin_failures("user:alice", now - timedelta(days=1)) == [now]
    store.clear_signin_failures("user:alice")
    assert store.signin_failures("user:alice", now - timedelta(days=1)) == []
    assert store.signin_failures("ip:10.0.0.1", now) == [now]


def test_read_snapshot_is_what_the_relay_serves(store: Store) -> None:
    store.save_tenant(tenant())
    store.add_key(key("s1"))
    svc = client()
    store.add_client(svc)
    snapshot = store.read_snapshot()
    assert snapshot.generation == store.generation()
    assert [t.id for t in snapshot.tenants] == ["acme"]
    assert [k.selector for k in snapshot.keys] == ["s1"] and snapshot.clients == [svc]
    with store.transaction():  # inside a write transaction it joins it, and sees its writes
        store.save_tenant(tenant("beta"))
        assert [t.id for t in store.read_snapshot().tenants] == ["acme", "beta"]


@pytest.mark.sqlite_only  # PostgreSQL's own: tests/test_store_pg.py
def test_a_new_sqlite_store_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """Client secret hashes, web sessions and token hashes are in it: 0600, WAL files alike."""
    from relay.core.store import SqliteStore

    store = SqliteStore(tmp_path / "var" / "relay.db")
    try:
        store.add_audit(AuditEntry(time=utcnow(), actor="t", action="x", tenant=None, outcome="done"))
        for name in ("relay.db", "relay.db-wal"):
            assert (tmp_path / "var" / name).stat().st_mode & 0o777 == 0o600, name
    finally:
        store.close()
