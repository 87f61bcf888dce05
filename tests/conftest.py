"""Shared fixtures: a temporary store and keys directory, the CLI run in-process, NSD on loopback,
and a throwaway PostgreSQL cluster (one per session, a fresh database per test)."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.nsd import Nsd
from tests.peers import require_binary
from tests.postgres import Cluster, start_cluster


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def relay_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every RELAY_* setting at a fresh temporary directory; returns that directory."""
    for name in list(os.environ):
        if name.startswith("RELAY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RELAY_DATABASE", f"sqlite:///{tmp_path / 'relay.db'}")
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
