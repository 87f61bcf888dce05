"""The SQLite store: schema version and migration on open, all-or-nothing transactions, generation."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from relay import store as store_module
from relay.models import (
    AuditEntry, CheckResult, CheckStatus, Client, DkimKey, KeyState, Role, Sender, Tenant,
    TenantStatus, User,
)
from relay.store import SCHEMA_VERSION, SqliteStore, StoreError, utcnow
from tests.snapshot import dump_store


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "relay.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(db_path)
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


def test_new_store_has_current_schema_version(store: SqliteStore, db_path: Path) -> None:
    assert SCHEMA_VERSION == len(store_module.MIGRATIONS) >= 1
    assert user_version(db_path) == SCHEMA_VERSION
    tables = set(dump_store(db_path))
    assert {"users", "tenants", "dkim_keys", "clients", "client_tenants", "client_networks",
            "checks", "audit", "meta"} <= tables
    assert store.generation() == 0


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


def test_store_newer_than_the_program_is_refused(db_path: Path) -> None:
    SqliteStore(db_path).close()
    db = sqlite3.connect(db_path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer"):
        SqliteStore(db_path)


def test_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open"):
        SqliteStore(tmp_path / "file" / "relay.db")


def test_transaction_rollback_keeps_the_previous_state(store: SqliteStore, db_path: Path) -> None:
    store.save_tenant(tenant(name="Before"))
    store.add_key(key("s1"))
    before, generation = dump_store(db_path), store.generation()
    with pytest.raises(RuntimeError), store.transaction():
        store.save_tenant(tenant(name="After"))
        store.set_key_state("acme", "s1", KeyState.RETIRING, utcnow())
        store.add_key(key("s2"))
        raise RuntimeError("something failed half-way")
    assert dump_store(db_path) == before
    assert store.generation() == generation
    saved = store.get_tenant("acme")
    assert saved is not None and saved.sender.name == "Before"


def test_failing_write_rolls_back_earlier_writes_of_the_transaction(
    store: SqliteStore, db_path: Path,
) -> None:
    store.add_user(User(name="alice", role=Role.OWNER, created_at=utcnow()))
    before = dump_store(db_path)
    with pytest.raises(StoreError), store.transaction():
        store.add_user(User(name="bob", role=Role.ADMIN, created_at=utcnow()))
        store.add_user(User(name="alice", role=Role.ADMIN, created_at=utcnow()))  # duplicate
    assert dump_store(db_path) == before
    assert [u.name for u in store.list_users()] == ["alice"]


def test_client_with_unknown_parts_is_written_whole_or_not_at_all(
    store: SqliteStore, db_path: Path,
) -> None:
    client = Client(name="svc", secret_hash="scrypt$x", all_tenants=False, tenants=("a", "a"),
                    networks=(), created_at=utcnow())  # the repeated tenant violates the key
    before = dump_store(db_path)
    with pytest.raises(StoreError):
        store.add_client(client)
    assert dump_store(db_path) == before


def test_generation_bumps_on_every_write_and_is_seen_by_other_connections(
    store: SqliteStore, db_path: Path,
) -> None:
    other = SqliteStore(db_path)
    try:
        start = other.generation()
        store.add_user(User(name="alice", role=Role.OWNER, created_at=utcnow()))
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


def test_round_trips(store: SqliteStore) -> None:
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
