"""A throwaway PostgreSQL cluster for the tests: Debian's binaries, a temporary directory, a free port.

One cluster per test session (`initdb` is the slow part), one fresh database per test (`CREATE
DATABASE ... TEMPLATE template0`, or a copy of a store template), stopped and removed at the end.
A database takes ~0.1 s to copy, so copies are made one ahead in a background thread while the
previous test runs (`Cluster.database`), and dropped there too. Nothing assumes a server is already
running. As root, `initdb` refuses to run, so the cluster then runs as the `postgres`
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
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

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
        self._ahead: dict[str, Future[str]] = {}  # template -> the next copy of it, being made
        self._ahead_lock = threading.Lock()
        self._maker: ThreadPoolExecutor | None = None
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

    def database(self, template: str = "template0") -> str:
        """A new database copied from `template` (template0: an empty one); returns its URL.

        The next copy of the same template is started in a background thread at once: tests of a
        module ask for the same template one after another, so theirs is usually ready. A copy
        made ahead that failed (the cluster stopped by a test meanwhile) is made again here.
        """
        with self._ahead_lock:
            made = self._ahead.pop(template, None)
            if self._maker is None:
                self._maker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-ahead")
            self._ahead[template] = self._maker.submit(self._copy, template)
        if made is not None:
            import psycopg

            with suppress(psycopg.Error, TimeoutError):  # made again below, where a real failure is raised
                return made.result(timeout=60)
        return self._copy(template)

    def drop_later(self, url: str) -> None:
        """Drop a test's database in the background thread, after the copies already asked for (a drop
        that fails there, the cluster stopped by a test, is left to the removal of the whole cluster)."""
        with self._ahead_lock:
            if self._maker is not None:
                self._maker.submit(drop_database, url)
                return
        drop_database(url)

    def _copy(self, template: str) -> str:
        url = self.url(f"test_{os.getpid()}_{next(self._names)}")
        create_database(url, template)
        return url

    def stop_making_ahead(self) -> None:
        """Wait for a copy in progress and start no other: before the cluster stops for good."""
        with self._ahead_lock:
            maker, self._maker = self._maker, None
            self._ahead.clear()
        if maker is not None:
            maker.shutdown(wait=True, cancel_futures=True)


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def maintenance_url(url: str) -> str:
    """The same server's `postgres` database: CREATE, DROP and RENAME DATABASE run from there."""
    return urlunsplit(urlsplit(url)._replace(path="/postgres"))


def _maintain(url: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(maintenance_url(url), autocommit=True, connect_timeout=10) as admin:
        for statement in statements:
            admin.execute(statement)


def create_database(url: str, template: str = "template0") -> None:
    """Create the database `url` names as a copy of `template`, which no one may be connected to
    (PostgreSQL waits up to 5 s for sessions just closed to end, then refuses)."""
    _maintain(url, f'CREATE DATABASE "{database_name(url)}" TEMPLATE "{template}"')


def drop_database(url: str) -> None:
    """Drop it, ending any session a test left open on it (FORCE)."""
    _maintain(url, f'DROP DATABASE IF EXISTS "{database_name(url)}" WITH (FORCE)')


def replace_database(url: str, copy: str) -> None:
    """Put the database `copy` in the place of `url`'s (same name, so a URL handed out stays right)."""
    _maintain(url, f'DROP DATABASE IF EXISTS "{database_name(url)}" WITH (FORCE)',
              f'ALTER DATABASE "{database_name(copy)}" RENAME TO "{database_name(url)}"')


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


_clusters: dict[int, Cluster] = {}  # the session's running cluster, by port


def cluster_of(url: str) -> Cluster:
    """The session's cluster serving `url` (tests.snapshot copies templates through it)."""
    port = urlsplit(url).port
    if port is None or port not in _clusters:
        raise AssertionError(f"{url} is not a database of this session's cluster")
    return _clusters[port]


def start_cluster() -> Iterator[Cluster]:
    """The session fixture's body: init and start once, stop and remove at the end."""
    bin_dir = require_postgres()
    remove_stale_clusters(bin_dir)
    began = time.monotonic()
    cluster = Cluster(bin_dir)
    try:
        cluster.init().start()
        cluster.started_in = time.monotonic() - began
        _clusters[cluster.port] = cluster
        yield cluster
    finally:
        cluster.stop_making_ahead()
        _clusters.pop(cluster.port, None)
        if cluster.port and cluster.running():
            cluster.stop("immediate")
        cluster.remove()


def dump_database(url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table of the public schema (schema_version among them), and the columns, in
    a stable order: `tests.snapshot.dump_store` for PostgreSQL."""
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as conn:
        columns = conn.execute(
            """SELECT table_name, column_name, data_type, is_nullable, column_default
               FROM information_schema.columns WHERE table_schema = 'public'""").fetchall()
        dump: dict[str, list[tuple[object, ...]]] = {"columns": sorted(columns, key=repr)}
        tables = conn.execute("""SELECT table_name FROM information_schema.tables
                                 WHERE table_schema = 'public' AND table_type = 'BASE TABLE'""").fetchall()
        for (table,) in tables:
            dump[table] = sorted(conn.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)
        return dump
