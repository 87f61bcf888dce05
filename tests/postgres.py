"""A throwaway PostgreSQL cluster for the tests: Debian's binaries, a temporary directory, a free port.

One cluster per test session (`initdb` is the slow part), one fresh database per test (`CREATE
DATABASE ... TEMPLATE template0` is fast), stopped and removed at the end. Nothing assumes a server
is already running. As root, `initdb` refuses to run, so the cluster then runs as the `postgres`
system user (Debian's package creates it) in a directory that user owns.

Missing binaries follow `tests.peers`: a failure under `make test` (ACCOUNTON_REQUIRE_PEERS=1), a
skip under a plain pytest.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import peers_required

SUPERUSER = "relay"  # the cluster's superuser, as created by initdb -U
PREFIX = "relay-pg-"  # the clusters' directories, in the system's temporary directory
OWNER_FILE = "owner.pid"  # the pid of the test run that started the cluster
# Read at import (collection time): conftest's relay_env clears every RELAY_* variable, this one too,
# for the test it sets up, and the session's cluster may well be started inside such a test.
REQUIRED = peers_required()


def find_bin_dir() -> Path | None:
    """Debian's /usr/lib/postgresql/<major>/bin (the newest), else wherever `initdb` is on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda path: int(Path(path).parent.parent.name) if Path(path).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def require_postgres() -> Path:
    """The binaries' directory; fail (under `make test`) or skip (plain pytest) when PostgreSQL is missing."""
    bin_dir = find_bin_dir()
    if bin_dir is not None and (bin_dir / "pg_ctl").exists():
        return bin_dir
    reason = "PostgreSQL is not installed (Debian package postgresql; `make test` installs it as root)"
    if REQUIRED or peers_required():
        pytest.fail(f"required peer missing: {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """One running cluster on 127.0.0.1:`port`; `database()` hands out a fresh database's URL."""

    def __init__(self, bin_dir: Path, root: Path | None = None) -> None:
        self.bin_dir = bin_dir
        self.as_postgres = os.geteuid() == 0
        # Not under pytest's tmp_path: its parents are 0700 root, out of reach for the postgres user.
        self.root = root or Path(tempfile.mkdtemp(prefix=PREFIX))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self.started_in = 0.0  # seconds from initdb to accepting connections, for the record
        self._names = itertools.count(1)
        if root is None:
            (self.root / OWNER_FILE).write_text(str(os.getpid()))
            if self.as_postgres:
                user = pwd.getpwnam("postgres")
                os.chown(self.root, user.pw_uid, user.pw_gid)

    def _run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        command = [*(["runuser", "-u", "postgres", "--"] if self.as_postgres else []), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}\n{log}")
        return result

    def init(self) -> Cluster:
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "--auth=trust", "-U", SUPERUSER,
                  "--encoding=UTF8", "--locale=C", "--no-sync")
        return self

    def start(self) -> Cluster:
        """Start on a free port (the same one again after a `stop`); waits until it accepts connections."""
        for attempt in range(3):
            port = self.port or free_port()
            options = (f"-k {self.root} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            try:
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                          "-o", options, "-w", "-t", "30", "start")
            except RuntimeError:
                if attempt == 2 or self.port:  # a port taken meanwhile: try another, unless it must be this one
                    raise
                continue
            self.port = port
            return self
        raise AssertionError("unreachable")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        command = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "status"]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, cwd=self.root).returncode == 0

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://{SUPERUSER}{secret}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new, empty database (from template0); returns its URL."""
        import psycopg

        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_clusters(bin_dir: Path) -> None:
    """Stop and remove clusters whose test run is gone: a run killed by a signal skips its teardown."""
    for root in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        try:
            owner = int((root / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not one of ours, or still being set up
        if _alive(owner):
            continue
        stale = Cluster(bin_dir, root)
        if (stale.data / "postmaster.pid").exists() and stale.running():
            stale.stop("immediate")
        stale.remove()


def start_cluster() -> Iterator[Cluster]:
    """The session fixture's body: init and start once, stop and remove at the end."""
    bin_dir = require_postgres()
    remove_stale_clusters(bin_dir)
    began = time.monotonic()
    cluster = Cluster(bin_dir)
    try:
        cluster.init().start()
        cluster.started_in = time.monotonic() - began
        yield cluster
    finally:
        if cluster.port and cluster.running():
            cluster.stop("immediate")
        cluster.remove()


def dump_database(url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table (and the columns), in a stable order: `tests.snapshot.dump_store` for PostgreSQL."""
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as conn:
        columns = conn.execute(
            """SELECT table_name, column_name, data_type, is_nullable, column_default
               FROM information_schema.columns WHERE table_schema = 'public'""").fetchall()
        dump: dict[str, list[tuple[object, ...]]] = {"columns": sorted(columns, key=repr)}
        for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall():
            dump[table] = sorted(conn.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)
        return dump
