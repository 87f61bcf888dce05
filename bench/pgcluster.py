"""A throwaway PostgreSQL cluster for `make bench` (issue 10): Debian's binaries, a temp dir, a free port.

The same recipe as tests/postgres.py (kept separate: that module needs pytest): `initdb` and `pg_ctl`
from the newest /usr/lib/postgresql/<major>/bin, run as the `postgres` user when we are root (initdb
refuses root), in a directory that user owns, on 127.0.0.1 only, fsync off. Stopped and removed on exit.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SUPERUSER = "relay"


def bin_dir() -> Path | None:
    def major(path: str) -> int:
        name = Path(path).parent.parent.name
        return int(name) if name.isdigit() else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=major)
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def cluster() -> Iterator[str]:
    """Yields the URL of a fresh database `bench` on a running throwaway cluster."""
    bins = bin_dir()
    if bins is None or not (bins / "initdb").exists():
        raise RuntimeError("PostgreSQL is not installed (no initdb/pg_ctl under /usr/lib/postgresql/*/bin)")
    as_postgres = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="relay-bench-pg-"))
    data, log = root / "data", root / "server.log"
    if as_postgres:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)

    def run(*args: str, timeout: float = 60.0) -> None:
        command = [*(["runuser", "-u", "postgres", "--"] if as_postgres else []), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=root)
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
            raise RuntimeError(f"{Path(args[0]).name} failed: {done.stderr.strip()[-300:]} {tail}")

    started = False
    try:
        run(str(bins / "initdb"), "-D", str(data), "--auth=trust", "-U", SUPERUSER, "--encoding=UTF8",
            "--locale=C", "--no-sync")
        port = _free_port()
        run(str(bins / "pg_ctl"), "-D", str(data), "-l", str(log), "-o",
            f"-k {root} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200", "-w", "-t", "30", "start")
        started = True
        import psycopg

        base = f"postgresql://{SUPERUSER}@127.0.0.1:{port}"
        with psycopg.connect(f"{base}/postgres", autocommit=True, connect_timeout=10) as conn:
            conn.execute('CREATE DATABASE "bench" TEMPLATE template0')
        yield f"{base}/bench"
    finally:
        if started:
            try:
                run(str(bins / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(root, ignore_errors=True)
