"""Test helpers for "nothing changed": a dump of every store table and the keys directory, and templates,
on whichever backend the test's RELAY_DATABASE names (SQLite or PostgreSQL: conftest's `store_backend`).

A template is a store + keys directory built once per test module (and backend) with the real CLI,
then copied into each test's `relay_env`, so parametrised tests do not pay for RSA key generation
every time. A SQLite template keeps its store in the directory (relay.db); a PostgreSQL one names its
template database in the directory (database.url), and each test gets `CREATE DATABASE ... TEMPLATE`.
"""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.core.models import DkimKey
from relay.core.settings import Settings
from relay.core.store import SqliteStore, Store
from tests.postgres import (
    Cluster,
    cluster_of,
    database_name,
    dump_database,
    replace_database,
)

SQLITE, POSTGRES = "sqlite", "postgresql"  # the values of conftest's `store_backend`
DB_NAME = "relay.db"  # the SQLite store in a test's relay_env or a template directory
URL_NAME = "database.url"  # a PostgreSQL template's database, named in its directory
KEYS_NAME = "keys"
# Tables a denied attempt may change: it is audited, and every write bumps the generation
# (PostgreSQL's audit ids come from a sequence, which is not a table and not dumped).
AUDIT_TABLES = frozenset({"audit", "meta", "sqlite_sequence"})


def backend_of(url: str) -> str:
    return POSTGRES if url.startswith(("postgresql://", "postgres://")) else SQLITE


def sqlite_path(url: str) -> Path:
    assert backend_of(url) == SQLITE, url
    return Path(url[len("sqlite:///"):])


def env_url() -> str:
    """The store the test's RELAY_DATABASE names (conftest's relay_env sets it)."""
    return os.environ["RELAY_DATABASE"]


def dump_store(db_path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (and the schema) of a SQLite store, in a stable order."""
    if not db_path.exists():
        return {}
    db = sqlite3.connect(db_path)
    try:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        dump = {"sqlite_master": sorted(db.execute("SELECT type, name, sql FROM sqlite_master"),
                                        key=repr)}
        for table in tables:
            dump[table] = sorted(db.execute(f'SELECT * FROM "{table}"'), key=repr)
        dump["user_version"] = list(db.execute("PRAGMA user_version"))
        return dump
    finally:
        db.close()


def dump_url(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """`dump_store` for either backend: SQLite's tables and user_version, or PostgreSQL's public
    schema (its columns, and every table, schema_version among them)."""
    return dump_database(url) if backend_of(url) == POSTGRES else dump_store(sqlite_path(url))


def list_keys_dir(keys_dir: Path) -> list[tuple[str, str, int]]:
    """(relative path, kind, mode) for everything under the keys directory."""
    if not keys_dir.exists():
        return []
    found = [(".", "dir", keys_dir.stat().st_mode & 0o7777)]
    for root, dirs, files in os.walk(keys_dir):
        for name in dirs + files:
            path = Path(root) / name
            kind = "dir" if path.is_dir() else "file"
            found.append((str(path.relative_to(keys_dir)), kind, path.stat().st_mode & 0o7777))
    return sorted(found)


@dataclass(frozen=True)
class State:
    store: dict[str, list[tuple[Any, ...]]]
    keys: list[tuple[str, str, int]]

    def without_audit(self) -> State:
        return State({k: v for k, v in self.store.items() if k not in AUDIT_TABLES}, self.keys)


def state(env: Path) -> State:
    """The store RELAY_DATABASE names, and `env`'s keys directory."""
    return State(dump_url(env_url()), list_keys_dir(env / KEYS_NAME))


def location() -> str:
    """How messages name the test's store: the SQLite file's path, or the PostgreSQL URL (the tests'
    URLs carry no password, so there is nothing to redact)."""
    url = env_url()
    return url if backend_of(url) == POSTGRES else str(sqlite_path(url))


def stored_bytes(url: str) -> bytes:
    """The store as kept on disk, for "this secret is nowhere in it": SQLite's files (the WAL too), or
    the PostgreSQL database's files after a CHECKPOINT (so every page written is there, dead row
    versions included)."""
    if backend_of(url) == POSTGRES:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
            row = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()
        assert row is not None
        directory = cluster_of(url).data / "base" / str(row[0])
        return b"".join(path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file())
    path = sqlite_path(url)
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


def store_exists(url: str | None = None) -> bool:
    """Whether a store was created at `url` (default RELAY_DATABASE): the SQLite file, or any table
    in the PostgreSQL database (which the test made empty)."""
    url = url or env_url()
    if backend_of(url) == POSTGRES:
        return dump_database(url) != {"columns": []}
    return sqlite_path(url).exists()


def open_url(url: str, *, create: bool = True) -> Store:
    if backend_of(url) == POSTGRES:
        from relay.core.store.postgres import PostgresStore

        return PostgresStore(url, create=create)
    return SqliteStore(sqlite_path(url))


def open_url_with(url: str, mixin: type[Any], **attributes: Any) -> Any:
    """A test double: the store at `url` as an instance of `mixin` mixed into the backend's class (its
    methods override the backend's and reach them with super()), with `attributes` set on it."""
    if backend_of(url) == POSTGRES:
        from relay.core.store.postgres import PostgresStore

        backend: type[Any] = PostgresStore
        where: Any = url
    else:
        backend, where = SqliteStore, sqlite_path(url)
    store = type(mixin.__name__, (mixin, backend), {})(where)
    for name, value in attributes.items():
        setattr(store, name, value)
    return store


def open_store(env: Path) -> Store:
    """The store of `env` (a relay_env): the one RELAY_DATABASE names, on its backend."""
    return open_url(env_url())


def run_sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> None:
    """One statement (`?` placeholders) committed behind the store's back, as another program would."""
    if backend_of(url) == POSTGRES:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(statement.replace("?", "%s"), params)
        return
    db = sqlite3.connect(sqlite_path(url))
    try:
        db.execute(statement, params)
        db.commit()
    finally:
        db.close()


def fail_inserts(url: str, table: str) -> None:
    """A real failure inside the real store: every INSERT into `table` fails with 'injected failure'."""
    if backend_of(url) == POSTGRES:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE FUNCTION fail_insert() RETURNS trigger LANGUAGE plpgsql "
                         "AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$")
            conn.execute(f'CREATE TRIGGER fail_insert BEFORE INSERT ON "{table}" '
                         "FOR EACH ROW EXECUTE FUNCTION fail_insert()")
        return
    db = sqlite3.connect(sqlite_path(url))
    try:
        db.execute(f'CREATE TRIGGER fail_insert BEFORE INSERT ON "{table}" '
                   "BEGIN SELECT RAISE(ABORT, 'injected failure'); END")
        db.commit()
    finally:
        db.close()


def assert_one_line_error(result: Any, code: int, field: str) -> None:
    """Exit `code`, nothing on stdout, exactly one stderr line that names `field`."""
    assert result.code == code, (result.code, result.out, result.err)
    assert result.out == ""
    assert result.err.endswith("\n") and result.err.count("\n") == 1, repr(result.err)
    assert field in result.err, repr(result.err)


@dataclass(frozen=True)
class Stores:
    """Where the stores of one backend live (conftest's `backend_stores` fixture): SQLite files in a
    directory, or databases in the session's PostgreSQL cluster."""

    backend: str
    cluster: Cluster | None = None

    def new(self, directory: Path) -> str:
        """A new, empty store's URL: DIRECTORY/relay.db, or a new database (`discard` drops it)."""
        if self.backend == POSTGRES:
            assert self.cluster is not None
            return self.cluster.database()
        return f"sqlite:///{directory / DB_NAME}"

    def template(self, directory: Path) -> str:
        """`new`, for a template in `directory`: `restore_template` finds its store from there."""
        url = self.new(directory)
        if self.backend == POSTGRES:
            (directory / URL_NAME).write_text(url)
        return url

    def copy(self, template: Path, directory: Path) -> str:
        """A new store holding a copy of the template's: DIRECTORY/relay.db, or a new database made
        with `CREATE DATABASE ... TEMPLATE` (`discard` drops it)."""
        template_url = template_store(template)
        assert backend_of(template_url) == self.backend, f"{template} is not a {self.backend} template"
        if self.backend == POSTGRES:
            assert self.cluster is not None
            url = self.cluster.database(template=database_name(template_url))
        else:
            url = self.new(directory)
            _copy_sqlite(template, sqlite_path(url))
        _copied_from[url] = template
        return url

    @staticmethod
    def discard(url: str) -> None:
        """Drop a test's PostgreSQL database, in the background (a SQLite store goes with its temporary
        directory)."""
        _copied_from.pop(url, None)
        if backend_of(url) == POSTGRES:
            cluster_of(url).drop_later(url)


_copied_from: dict[str, Path] = {}  # a test's store -> the template it was copied from (Stores.copy)


def template_store(template: Path) -> str:
    """The URL of a template's store: its template database, or its relay.db."""
    if (template / URL_NAME).exists():
        return (template / URL_NAME).read_text()
    return f"sqlite:///{template / DB_NAME}"


def _copy_sqlite(template: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    for path in template.glob(DB_NAME + "*"):  # relay.db and its -wal/-shm, if any
        shutil.copy2(path, target.with_name(target.name + path.name[len(DB_NAME):]))


def database_from(template_fixture: str, pick: Callable[[Any], Path] = lambda value: value) -> Any:
    """A `database_url` fixture for a module whose tests start from a template: the test's store is
    made as a copy of the template (the module fixture named `template_fixture`; `pick` finds the
    template's directory in its value) instead of empty, so `restore_template` has only the keys left
    to copy. In the module: `database_url = database_from("template")`."""

    @pytest.fixture
    def database_url(request: pytest.FixtureRequest, backend_stores: Stores, tmp_path: Path) -> Iterator[str]:
        url = backend_stores.copy(pick(request.getfixturevalue(template_fixture)), tmp_path)
        yield url
        backend_stores.discard(url)

    return database_url


def verified_acme(settings: Settings) -> tuple[Store, DkimKey, str]:
    """`tests.relay_harness.verified_acme` on the store `settings.database` names, whichever backend:
    `acme` (acme.test) verified with its key, and its client `billing`; returns (the store, open: the
    caller closes it; acme's key; billing's secret)."""
    from relay.core.models import TenantStatus
    from relay.core.store import open_store as open_settings_store
    from tests.factories import make_tenant
    from tests.relay_harness import add_client

    store = open_settings_store(settings)
    _, key = make_tenant(store, settings, "acme", domain="acme.test", status=TenantStatus.VERIFIED)
    secret = add_client(store, "billing", tenants=("acme",))
    return store, key, secret


# What `on_backend` copies through the Store interface; the store's own bookkeeping is made anew.
COPIED_TABLES = frozenset({"users", "user_tenants", "tenants", "dkim_keys", "clients", "client_tenants",
                           "client_networks"})
BOOKKEEPING_TABLES = frozenset({"meta", "sqlite_sequence", "changes"})


def on_backend(template: Path, stores: Stores, directory: Path) -> Path:
    """A SQLite template (made by a helper that builds SQLite stores only, such as
    tests.sendtest_world) as a template on `stores`' backend: itself for SQLite; for PostgreSQL its
    tenants, keys, users and clients copied through the Store interface into a template database
    under `directory`, and its keys directory copied. Anything else in it fails the test: it would
    not be copied."""
    if stores.backend == SQLITE:
        return template
    dump = dump_store(template / DB_NAME)
    left_out = [t for t, rows in dump.items() if rows and t not in COPIED_TABLES | BOOKKEEPING_TABLES
                and t not in ("sqlite_master", "user_version")]
    assert not left_out, f"on_backend copies no {left_out} rows"
    source, target = SqliteStore(template / DB_NAME), open_url(stores.template(directory))
    try:
        with target.transaction():
            for tenant in source.list_tenants():
                target.save_tenant(tenant)
            for key in source.list_keys():
                target.add_key(key)
            for user in source.list_users():  # after the tenants: a user's scope names them
                target.add_user(user)
            for client in source.list_clients():
                target.add_client(client)
    finally:
        source.close()
        target.close()  # a template database must have no session left
    if (template / KEYS_NAME).exists():
        shutil.copytree(template / KEYS_NAME, directory / KEYS_NAME)
    return directory


def build_template(directory: Path, commands: Iterable[list[str]], stores: Stores | None = None) -> Path:
    """Run relay-admin `commands` against a fresh store of `stores`' backend (SQLite by default)
    and keys under `directory`; returns `directory`."""
    from admin.cli import main

    url = (stores or Stores(SQLITE)).template(directory)
    with pytest.MonkeyPatch.context() as env:
        for name in list(os.environ):
            if name.startswith("RELAY_"):
                env.delenv(name)
        env.setenv("RELAY_DATABASE", url)
        env.setenv("RELAY_KEYS_DIR", str(directory / KEYS_NAME))
        for args in commands:
            out, err = io.StringIO(), io.StringIO()
            with redirect_stdout(out), redirect_stderr(err):
                code = main(args)  # closes its store: a template database must have no session left
            assert code == 0, (args, err.getvalue())
    return directory


def build_acme_template(directory: Path, *, admin: bool = True, stores: Stores | None = None) -> Path:
    """The usual CLI template: users alice (owner), bob (admin; left out with `admin=False`) and carol
    (accountant), and tenant acme (Acme, billing@acme.test, acme.test) with its active key."""
    users = [["user", "add", "alice", "--role", "owner"]]
    if admin:
        users.append(["user", "add", "bob", "--role", "admin", "--as", "alice"])
    users.append(["user", "add", "carol", "--role", "accountant", "--as", "alice"])
    return build_template(directory, [
        *users,
        ["tenant", "set", "acme", "--name", "Acme", "--email", "billing@acme.test",
         "--domain", "acme.test", "--as", "alice"],
    ], stores)


def restore_template(template: Path, env: Path, database: str | None = None) -> None:
    """Copy a template's keys (modes kept) into ENV/keys and its store over `database` (by default
    RELAY_DATABASE: relay_env's): SQLite files copied, or the database replaced by a copy of the
    template database; nothing to do for a store copied from this template already (`database_from`).
    The template must be on the same backend as `database`."""
    url = database or env_url()
    if _copied_from.get(url) != template:
        template_url = template_store(template)
        assert backend_of(template_url) == backend_of(url), f"{template} holds {template_url}, not for {url}"
        if backend_of(url) == POSTGRES:
            replace_database(url, cluster_of(url).database(template=database_name(template_url)))
        else:
            _copy_sqlite(template, sqlite_path(url))
    if (template / KEYS_NAME).exists():
        shutil.copytree(template / KEYS_NAME, env / KEYS_NAME)
