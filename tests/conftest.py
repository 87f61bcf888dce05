"""Shared fixtures: a temporary store and keys directory, the CLI run in-process, NSD on loopback,
and a throwaway PostgreSQL cluster (one per session, a fresh database per test).

The store is SQLite unless a test module is in `BOTH_BACKENDS`: there every test that reaches a
store (through `relay_env`, `database_url` or `backend_stores`) runs once on each backend.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tests.nsd import Nsd
from tests.peers import require_binary
from tests.postgres import Cluster, start_cluster
from tests.snapshot import POSTGRES, SQLITE, Stores

# The modules whose store-touching tests run on SQLite and on PostgreSQL (ids `sqlite`, `pg`): the
# store itself, the admin side (every command, service and check that reads or writes the store) and
# the relay (serving from the store, and picking up its changes while running). Left on SQLite
# alone: pure units that never open a store (settings, messages, DKIM, records as data...), the
# browser (the API and the pages' security run on both), the printed and LibreOffice exports, the README walkthrough, container and packaging
# (they test what is built, not the backend), and test_store_pg.py / test_relay_postgres.py (on
# PostgreSQL by nature). Within a listed module, `sqlite_only` / `postgres_only` pin one test.
BOTH_BACKENDS = frozenset({
    # the store
    "test_store", "test_auth",
    # the admin side
    "test_cli_store", "test_cli_users", "test_acting_user", "test_cli_tenants", "test_cli_clients",
    "test_cli_tokens", "test_cli_scope", "test_cli_messages", "test_cli_audit", "test_records",
    "test_validate", "test_validate_race", "test_revalidate", "test_notify", "test_rotation",
    "test_rotation_dns", "test_send_test", "test_send_test_relay", "test_web_api", "test_web_security",
    # the relay
    "test_relay_e2e", "test_relay_server", "test_relay_reliability", "test_relay_lifecycle",
    "test_relay_rotation", "test_relay_limits", "test_relay_shutdown", "test_sighup", "test_key_files",
    "test_directory_reload", "test_directory_incremental", "test_metrics",
})
BACKEND_IDS = {SQLITE: "sqlite", POSTGRES: "pg"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a listed module's store-touching tests on both backends (or the one they are marked for).

    Module scope: pytest groups a module's tests by backend, so a module-scoped template or world
    is built once per backend."""
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if "store_backend" not in metafunc.fixturenames or module not in BOTH_BACKENDS:
        return
    backends = [SQLITE, POSTGRES]
    if metafunc.definition.get_closest_marker("sqlite_only"):
        backends = [SQLITE]
    elif metafunc.definition.get_closest_marker("postgres_only"):
        backends = [POSTGRES]
    metafunc.parametrize("store_backend", backends, ids=[BACKEND_IDS[b] for b in backends], scope="module")


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture(scope="session")
def store_backend() -> str:
    """The backend of the test's store: SQLite, unless `pytest_generate_tests` parametrises it."""
    return SQLITE


@pytest.fixture(scope="module")
def backend_stores(store_backend: str, request: pytest.FixtureRequest) -> Stores:
    """Where this backend's stores live, for module-scoped templates and worlds (`.template(directory)`)."""
    if store_backend == POSTGRES:
        return Stores(POSTGRES, request.getfixturevalue("pg_cluster"))
    return Stores(SQLITE)


@pytest.fixture
def database_url(backend_stores: Stores, tmp_path: Path) -> Iterator[str]:
    """A new, empty store for this test: TMP/relay.db, or a new database in the session's cluster."""
    url = backend_stores.new(tmp_path)
    yield url
    backend_stores.discard(url)


@pytest.fixture
def relay_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str) -> Path:
    """Point every RELAY_* setting at a fresh temporary directory (and the store at `database_url`);
    returns that directory."""
    for name in list(os.environ):
        if name.startswith("RELAY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RELAY_DATABASE", database_url)
    monkeypatch.setenv("RELAY_KEYS_DIR", str(tmp_path / "keys"))
    monkeypatch.setenv("RELAY_UPSTREAM", f"outbox:{tmp_path / 'outbox'}")
    monkeypatch.setenv("RELAY_RETURN_PATH_TARGET", "bounces.relay.test")
    monkeypatch.setenv("RELAY_HOSTNAME", "relay.test")
    return tmp_path


@pytest.fixture
def cli(relay_env: Path) -> Callable[..., CliResult]:
    """Run `relay-admin ARGS...` in-process against the temporary store."""
    from admin.cli import main

    def run(*args: str) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse usage errors
                code = int(exc.code or 0)
        return CliResult(code, out.getvalue(), err.getvalue())

    return run


@pytest.fixture
def nsd_factory(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Nsd]]:
    """Start NSD with the given zones ({origin: zone text}); stopped at teardown."""
    require_binary("nsd", "nsd")  # fails under `make test`, skips under a bare pytest
    started: list[Nsd] = []

    def start(zones: dict[str, str]) -> Nsd:
        directory = tmp_path / f"nsd{len(started)}"
        directory.mkdir()
        server = Nsd(directory, zones).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster of our own for the whole session (tests/postgres.py), removed at the end."""
    yield from start_cluster()


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    """The URL of a new, empty database in that cluster."""
    return pg_cluster.database()


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """Every async test runs on uvloop, the relay's own event loop (RELAY_EVENT_LOOP's default);
    tests/test_event_loop.py runs a relay on Python's asyncio loop too."""
    return {"uvloop": uvloop.new_event_loop}
