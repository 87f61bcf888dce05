"""The PostgreSQL store where it differs from one SQLite file: several instances at once, a server that
goes away and comes back, migrations under a lock, and `relay-admin` against it.

Every test gets a fresh database in the session's throwaway cluster (tests/postgres.py); the
behaviour both backends share is tested in tests/test_store.py.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from relay.core.models import AuditEntry, Sender, Tenant, TenantStatus
from relay.core.settings import SettingsError, load_settings
from relay.core.store import (
    SCHEMA_VERSION,
    SqliteStore,
    StoreError,
    StoreMissing,
    open_store,
    store_location,
    utcnow,
)
from relay.core.store import postgres as store_pg
from relay.core.store import sqlite as store_module
from relay.core.settings import redact_url
from relay.core.store.postgres import PG_MIGRATIONS, PostgresStore, Timeouts
from tests.conftest import CliResult
from tests.factories import make_tenant
from tests.nsd import Nsd, zone_text
from tests.postgres import Cluster, dump_database, free_port
from tests.relay_harness import (
    RecordingUpstream,
    add_client,
    eventually,
    make_settings,
    relay_running,
    send,
    smtp_upstream,
    values,
)
from tests.snapshot import assert_one_line_error

Cli = Callable[..., CliResult]
QUICK = Timeouts(connect=2, pool=1.0, statement=5.0, lock=1.0)


@pytest.fixture
def stores(pg_url: str) -> Iterator[Callable[..., PostgresStore]]:
    """Open PostgresStores on the test's database ("relay instances"), all closed at the end."""
    opened: list[PostgresStore] = []

    def open_one(**kwargs: Any) -> PostgresStore:
        opened.append(PostgresStore(pg_url, **kwargs))
        return opened[-1]

    yield open_one
    for one in opened:
        one.close()


def tenant(tenant_id: str = "acme", name: str = "0") -> Tenant:
    now = utcnow()
    return Tenant(id=tenant_id, sender=Sender(name=name, email=f"billing@{tenant_id}.test", domain=f"{tenant_id}.test"),
                  status=TenantStatus.PENDING, created_at=now, updated_at=now)


def run_together(count: int, work: Callable[[int], Any]) -> list[Any]:
    """`work(0..count-1)` in as many threads, released at the same moment."""
    barrier = threading.Barrier(count)

    def start(index: int) -> Any:
        barrier.wait(timeout=10)
        return work(index)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(start, range(count)))


# --- one schema, two dialects -------------------------------------------------------------------


def test_both_backends_have_the_same_schema_versions_and_columns(tmp_path: Path, pg_url: str) -> None:
    assert len(PG_MIGRATIONS) == len(store_module.MIGRATIONS) == SCHEMA_VERSION
    SqliteStore(tmp_path / "relay.db").close()
    db = sqlite3.connect(tmp_path / "relay.db")
    tables = [row[0] for row in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    # (column, may be NULL); SQLite lets a non-integer primary key hold NULL, PostgreSQL never does
    sqlite_columns = {t: {(row[1], not (row[3] or row[5])) for row in db.execute(f'PRAGMA table_info("{t}")')}
                      for t in tables}
    db.close()
    PostgresStore(pg_url).close()
    pg_columns: dict[str, set[tuple[str, bool]]] = {}
    for table, column, _, nullable, _ in dump_database(pg_url)["columns"]:
        pg_columns.setdefault(str(table), set()).add((str(column), nullable == "YES"))
    assert pg_columns.pop("schema_version") == {("version", False)}  # SQLite: PRAGMA user_version
    pg_columns["checks"].remove(("id", False))  # SQLite's implicit rowid: the order checks were written
    assert pg_columns == sqlite_columns


def test_a_program_whose_postgres_schema_lags_refuses_to_open(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_pg, "MIGRATIONS", [*store_module.MIGRATIONS, "ALTER TABLE users ADD COLUMN x TEXT"])
    with pytest.raises(StoreError, match="lags"):
        PostgresStore(pg_url)
    assert dump_database(pg_url) == {"columns": []}  # nothing was created


# --- migrations ----------------------------------------------------------------------------------


def test_instances_starting_together_migrate_once(pg_url: str) -> None:
    opened = run_together(6, lambda _: PostgresStore(pg_url))
    try:
        dump = dump_database(pg_url)
        assert dump["schema_version"] == [(SCHEMA_VERSION,)]
        assert dump["meta"] == [("generation", 0)]
        assert all(store.generation() == 0 for store in opened)
    finally:
        for store in opened:
            store.close()


def test_open_migrates_an_older_store_keeping_its_data(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    old = PostgresStore(pg_url)
    old.save_tenant(tenant(name="Acme"))
    old.close()
    monkeypatch.setattr(store_pg, "MIGRATIONS", [*store_module.MIGRATIONS, "(sqlite form)"])
    monkeypatch.setattr(store_pg, "PG_MIGRATIONS",
                        [*PG_MIGRATIONS, "ALTER TABLE tenants ADD COLUMN note TEXT NOT NULL DEFAULT ''"])
    reopened = PostgresStore(pg_url, create=False)
    try:
        saved = reopened.get_tenant("acme")
        assert saved is not None and saved.sender.name == "Acme"
    finally:
        reopened.close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION + 1,)]
        assert conn.execute("SELECT note FROM tenants").fetchall() == [("",)]


def test_failing_migration_leaves_the_store_as_it_was(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    old = PostgresStore(pg_url)
    old.save_tenant(tenant())
    old.close()
    before = dump_database(pg_url)
    monkeypatch.setattr(store_pg, "MIGRATIONS", [*store_module.MIGRATIONS, "(sqlite form)"])
    monkeypatch.setattr(store_pg, "PG_MIGRATIONS", [
        *PG_MIGRATIONS, "ALTER TABLE tenants ADD COLUMN note TEXT; ALTER TABLE no_such_table ADD COLUMN x TEXT"])
    with pytest.raises(StoreError, match="could not be set up: .*no_such_table"):
        PostgresStore(pg_url)
    assert dump_database(pg_url) == before  # DDL is transactional: the first ALTER is undone too


def test_store_newer_than_the_program_is_refused(pg_url: str) -> None:
    PostgresStore(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE schema_version SET version = version + 1")
    with pytest.raises(StoreError, match="newer"):
        PostgresStore(pg_url)


def test_an_empty_database_is_a_missing_store_unless_one_may_be_created(pg_url: str) -> None:
    with pytest.raises(StoreMissing, match="does not exist"):
        PostgresStore(pg_url, create=False)
    assert dump_database(pg_url) == {"columns": []}
    PostgresStore(pg_url, create=True).close()
    PostgresStore(pg_url, create=False).close()


# --- several instances at once -------------------------------------------------------------------


def test_a_lease_has_one_holder_across_instances(stores: Callable[..., PostgresStore]) -> None:
    instances = [stores(), stores()]
    now = utcnow()
    until = now + timedelta(minutes=5)
    won = run_together(8, lambda i: instances[i % 2].acquire_lease("revalidate:acme", f"worker-{i}", until, now))
    assert won.count(True) == 1
    holder = f"worker-{won.index(True)}"
    assert instances[1].acquire_lease("revalidate:acme", holder, until, now)  # its holder renews it anywhere
    assert not instances[0].acquire_lease("revalidate:acme", "late", until, now)


def test_read_modify_write_in_a_transaction_loses_no_update(stores: Callable[..., PostgresStore]) -> None:
    # The compare-and-set every caller of transaction() relies on (validation results, `tenant set`):
    # no other writer between the read and the write, whichever instance it runs in.
    instances = [stores(), stores()]
    instances[0].save_tenant(tenant(name="0"))

    def increment(index: int) -> None:
        store = instances[index % 2]
        for _ in range(5):
            with store.transaction():
                current = store.get_tenant("acme")
                assert current is not None
                store.save_tenant(tenant(name=str(int(current.sender.name) + 1)))

    generation = instances[0].generation()
    run_together(6, increment)
    saved = instances[1].get_tenant("acme")
    assert saved is not None and saved.sender.name == "30"
    assert instances[1].generation() == generation + 30


def test_save_lifecycle_bumps_once_per_status_change_under_concurrency(stores: Callable[..., PostgresStore]) -> None:
    instances = [stores(), stores()]
    instances[0].save_tenant(tenant())
    generation, now = instances[0].generation(), utcnow()
    run_together(6, lambda i: instances[i % 2].save_lifecycle(
        "acme", status=TenantStatus.VERIFIED, failing_since=None, verified_at=now, last_validated_at=now))
    assert instances[1].generation() == generation + 1  # one of them changed the status; the others saw it


def test_a_read_transaction_sees_one_snapshot(stores: Callable[..., PostgresStore]) -> None:
    reader, writer = stores(), stores()
    writer.save_tenant(tenant())
    with reader.read_transaction():
        generation = reader.generation()
        writer.save_tenant(tenant("beta"))
        assert reader.generation() == generation and [t.id for t in reader.list_tenants()] == ["acme"]
    assert reader.generation() == generation + 1


def test_a_waiting_writer_gives_up_after_the_lock_timeout(stores: Callable[..., PostgresStore]) -> None:
    holder, waiter = stores(), stores(timeouts=QUICK)
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with holder.transaction():
            holder.save_tenant(tenant())
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert entered.wait(10)
        started = time.monotonic()
        with pytest.raises(StoreError, match="lock timeout"):
            waiter.save_tenant(tenant("beta"))
        assert time.monotonic() - started < 3
        assert waiter.get_tenant("acme") is None  # reads do not wait for the writer
    finally:
        release.set()
        thread.join()
    waiter.save_tenant(tenant("beta"))  # the pool's connection is fine afterwards


def test_wait_for_change_hears_served_writes_from_another_instance(stores: Callable[..., PostgresStore]) -> None:
    relay, admin = stores(), stores()
    assert relay.wait_for_change(0.05) is False
    admin.add_audit(AuditEntry(time=utcnow(), actor="alice", action="x", tenant=None, outcome="done"))
    assert relay.wait_for_change(0.2) is False  # an audit row is not what the relay serves
    timer = threading.Timer(0.1, lambda: admin.save_tenant(tenant()))
    timer.start()
    started = time.monotonic()
    assert relay.wait_for_change(5) is True
    assert time.monotonic() - started < 2
    timer.join()
    admin.save_tenant(tenant("beta"))
    admin.save_tenant(tenant("gamma"))
    time.sleep(0.1)
    assert relay.wait_for_change(1) is True and relay.wait_for_change(0.1) is False  # one wake-up for both
    with pytest.raises(RuntimeError), admin.transaction():  # a rolled-back change says nothing
        admin.save_tenant(tenant("delta"))
        raise RuntimeError("changed my mind")
    assert relay.wait_for_change(0.2) is False


def test_closing_while_another_thread_reads_is_an_error_not_a_crash(stores: Callable[..., PostgresStore]) -> None:
    store = stores()
    store.save_tenant(tenant())
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(200):
                store.list_tenants()
        except StoreError as exc:
            errors.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    time.sleep(0.02)
    store.close()
    thread.join(10)
    assert not thread.is_alive()
    with pytest.raises(StoreError):
        store.generation()


# --- a server that goes away ---------------------------------------------------------------------


def test_unreachable_server_is_a_store_error_within_seconds_without_the_password() -> None:
    url = f"postgresql://relay:hunter22@127.0.0.1:{free_port()}/relay"
    started = time.monotonic()
    with pytest.raises(StoreError) as caught:
        PostgresStore(url, create=False, timeouts=QUICK)
    message = str(caught.value)
    assert time.monotonic() - started < 3
    assert not isinstance(caught.value, StoreMissing)  # nothing says the store is not there
    assert "hunter22" not in message and "\n" not in message
    assert message.startswith(f"the store {redact_url(url)} cannot be reached: ")


@pytest.fixture
def restart(pg_cluster: Cluster) -> Iterator[Cluster]:
    """The session's cluster, started again after the test whatever it did to it."""
    yield pg_cluster
    if not pg_cluster.running():
        pg_cluster.start()


def test_server_stopped_mid_run_is_a_store_error_and_the_pool_reconnects(
    restart: Cluster, stores: Callable[..., PostgresStore],
) -> None:
    store = stores(timeouts=QUICK)
    store.save_tenant(tenant())
    entered, stopped = threading.Event(), threading.Event()
    outcome: list[BaseException | None] = []

    def in_transaction() -> None:  # a transaction under way when the server goes
        try:
            with store.transaction():
                store.save_tenant(tenant("beta"))
                entered.set()
                stopped.wait(10)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion below
            outcome.append(exc)

    thread = threading.Thread(target=in_transaction)
    thread.start()
    assert entered.wait(10)
    restart.stop("fast")
    stopped.set()
    thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], StoreError), outcome
    for call in (store.generation, store.list_tenants, lambda: store.save_tenant(tenant("gamma"))):
        started = time.monotonic()
        with pytest.raises(StoreError) as caught:
            call()
        assert time.monotonic() - started < QUICK.pool + 1
        assert "\n" not in str(caught.value) and str(caught.value).startswith(f"the store {store.location} ")
    restart.start()
    deadline = time.monotonic() + 10
    while True:  # the pool reconnects by itself; the same store object works again
        try:
            assert [t.id for t in store.list_tenants()] == ["acme"]  # beta was rolled back
            break
        except StoreError:
            assert time.monotonic() < deadline, "the store did not recover"
            time.sleep(0.1)
    store.save_tenant(tenant("beta"))
    assert [t.id for t in store.list_tenants()] == ["acme", "beta"]


def test_wait_for_change_survives_a_restart(restart: Cluster, stores: Callable[..., PostgresStore]) -> None:
    relay, admin = stores(timeouts=QUICK), stores(timeouts=QUICK)
    assert relay.wait_for_change(0.01) is False
    restart.stop("fast")
    with pytest.raises(StoreError):
        relay.wait_for_change(1)
    restart.start()
    deadline = time.monotonic() + 10
    while True:
        try:
            assert relay.wait_for_change(0.01) is False  # listening again
            break
        except StoreError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    threading.Timer(0.1, lambda: admin.save_tenant(tenant())).start()
    assert relay.wait_for_change(5) is True


# --- settings and open_store ---------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "postgresql://relay@db.test/relay", "postgres://relay:pw@db.test:6543/relay", "postgresql:///relay",
    "postgresql://relay@db1.test:5432,db2.test/relay?target_session_attrs=read-write",  # failover
])
def test_postgres_urls_are_accepted(relay_env: Path, url: str) -> None:
    settings = load_settings(database=url)
    assert settings.database == url


@pytest.mark.parametrize(("url", "reason"), [
    ("postgresql://relay:hunter22@db.test:99999/relay", "port '99999'"),
    ("postgresql://relay:hunter22@db1.test:5432,db2.test:x/relay", "port 'x'"),
    ("postgresql://relay:hunter22@db.test/relay?colour=blue", 'invalid URI query parameter: "colour"'),
    ("postgresql://relay:hunter22%zz@db.test/relay", "invalid percent-encoded token"),
])
def test_a_bad_postgres_url_is_named_without_its_password(relay_env: Path, url: str, reason: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(database=url)
    message = str(caught.value)
    assert message.startswith("RELAY_DATABASE: 'postgresql://relay:***@db") and reason in message
    assert "hunter22" not in message and "\n" not in message


def test_redact_hides_every_form_of_password() -> None:
    assert redact_url("postgresql://relay:hunter22@db.test/relay") == "postgresql://relay:***@db.test/relay"
    assert redact_url("postgresql://db.test/relay?user=relay&password=hunter22&sslmode=require") \
        == "postgresql://db.test/relay?user=relay&password=***&sslmode=require"
    assert redact_url("postgresql://relay@db.test/relay") == "postgresql://relay@db.test/relay"


def test_open_store_dispatches_postgres_urls(relay_env: Path, pg_cluster: Cluster) -> None:
    url = pg_cluster.database().replace("postgresql://relay@", "postgresql://relay:hunter22@")  # trust: any password
    settings = load_settings(database=url)
    assert store_location(settings) == url.replace("hunter22", "***")
    with pytest.raises(StoreMissing) as caught:
        open_store(settings, create=False)
    assert "hunter22" not in str(caught.value)
    store = open_store(settings)
    try:
        assert isinstance(store, PostgresStore) and store.generation() == 0
    finally:
        store.close()


# --- relay-admin against PostgreSQL -------------------------------------------------------------


@pytest.fixture
def pg_cli(cli: Cli, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """`relay-admin` with RELAY_DATABASE pointing at the test's (empty) PostgreSQL database."""
    monkeypatch.setenv("RELAY_DATABASE", pg_url)
    return cli


def test_the_first_hour_against_postgres(
    pg_cli: Cli, pg_url: str, nsd_factory: Callable[[dict[str, str]], Nsd], monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = pg_cli("tenant", "list", "--as", "alice")
    assert_one_line_error(missing, 4, pg_url)
    assert "does not exist" in missing.err
    created = pg_cli("user", "add", "alice", "--role", "owner")
    assert created.code == 0 and created.err == f"relay-admin: created a new store at {pg_url}\n", created.err
    monkeypatch.setenv("RELAY_ADMIN_USER", "alice")
    result = pg_cli("tenant", "set", "acme", "--name", "Acme BV", "--email", "facturen@acme.test",
                    "--domain", "acme.test")
    assert result.code == 0, result.err
    records = pg_cli("records", "acme", "--json")
    assert records.code == 0, records.err
    assert {r["purpose"] for r in json.loads(records.out)} >= {"dkim", "return-path"}
    bind = pg_cli("records", "acme", "--format", "bind")
    nsd = nsd_factory({"acme.test": zone_text("acme.test", bind.out)})
    monkeypatch.setenv("RELAY_NAMESERVERS", f"127.0.0.1:{nsd.port}")
    validated = pg_cli("validate", "acme", "--json")
    assert validated.code == 0, (validated.out, validated.err)
    assert json.loads(validated.out)["status"] == "verified"
    store = PostgresStore(pg_url, create=False)
    try:
        saved = store.get_tenant("acme")
        assert saved is not None and saved.status is TenantStatus.VERIFIED
        assert {c.purpose for c in store.latest_checks("acme")} >= {"dkim", "return-path"}
        assert [a.action for a in store.list_audit()][:1] == ["user.add"]
    finally:
        store.close()
    assert pg_cli("tenant", "list").code == 0


def test_the_cli_says_in_one_line_when_the_server_is_down(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"postgresql://relay:hunter22@127.0.0.1:{free_port()}/relay"
    monkeypatch.setenv("RELAY_DATABASE", url)
    for args in (["tenant", "list", "--as", "alice"], ["user", "add", "alice", "--role", "owner"]):
        started = time.monotonic()
        result = cli(*args)
        assert time.monotonic() - started < 10
        assert_one_line_error(result, 4, redact_url(url))
        assert "cannot be reached" in result.err and "hunter22" not in result.err


def test_the_cli_exits_4_when_the_server_goes_away(
    pg_cli: Cli, restart: Cluster, monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert pg_cli("user", "add", "alice", "--role", "owner").code == 0
    restart.stop("fast")
    result = pg_cli("tenant", "list", "--as", "alice")
    assert_one_line_error(result, 4, "cannot be reached")
    restart.start()
    assert pg_cli("tenant", "list", "--as", "alice").code == 0



# --- the relay over PostgreSQL ------------------------------------------------------------------

MESSAGE = b"From: app@platform.test\r\nTo: someone@example.test\r\nSubject: S\r\n\r\nBody.\r\n"


async def test_a_relay_serves_from_postgres_and_sees_admin_changes(pg_url: str, tmp_path: Path) -> None:
    async with RecordingUpstream() as upstream:
        settings = make_settings(tmp_path, database=pg_url, upstream=smtp_upstream(upstream.port))
        admin = PostgresStore(pg_url)  # another instance: the admin side
        try:
            make_tenant(admin, settings, "acme", name="Acme", domain="acme.test", status=TenantStatus.VERIFIED)
            secret = add_client(admin, "billing", tenants=("acme",))
            async with relay_running(settings, None) as relay:  # the relay opens RELAY_DATABASE itself
                first = await send(relay, MESSAGE, user="billing", secret=secret)
                assert first.code == 250, first
                tenant = admin.get_tenant("acme")
                assert tenant is not None
                admin.save_tenant(replace(tenant, sender=replace(tenant.sender, name="Acme Renamed")))
                late = add_client(admin, "late", tenants=("acme",))

                async def delivered() -> bool:
                    return (await send(relay, MESSAGE, user="late", secret=late)).code == 250

                await eventually(delivered)
        finally:
            admin.close()
    assert [values(m.data, "From") for m in upstream.messages] == [
        ['"Acme" <billing@acme.test>'], ['"Acme Renamed" <billing@acme.test>']]


async def test_a_relay_keeps_serving_while_the_server_is_down_and_catches_up_after(
    pg_url: str, restart: Cluster, tmp_path: Path,
) -> None:
    async with RecordingUpstream() as upstream:
        settings = make_settings(tmp_path, database=pg_url, upstream=smtp_upstream(upstream.port))
        admin = PostgresStore(pg_url)
        try:
            make_tenant(admin, settings, "acme", name="Acme", domain="acme.test", status=TenantStatus.VERIFIED)
            secret = add_client(admin, "billing", tenants=("acme",))
            async with relay_running(settings, None) as relay:
                restart.stop("fast")
                started = time.monotonic()
                down = await send(relay, MESSAGE, user="billing", secret=secret)
                assert down.code == 250 and time.monotonic() - started < 1, down  # from the snapshot in memory
                restart.start()
                late = add_client(admin, "late", tenants=("acme",))

                async def delivered() -> bool:
                    return (await send(relay, MESSAGE, user="late", secret=late)).code == 250

                await eventually(delivered, timeout=15)
        finally:
            admin.close()
    assert len(upstream.messages) == 2
