"""Issue 10's micro-figure: how long one reload takes after one admin change, with many tenants.

    .venv/bin/python bench/reload.py                    # 5,000 tenants, SQLite and PostgreSQL
    .venv/bin/python bench/reload.py --tenants 1000 --stores sqlite --repeats 3

Per store, a throwaway environment with `--tenants` verified tenants, each with its own key file
written by the real key code (relay.core.dkimkeys, 0600, atomically), and two relay directories on
it: one as the relay runs now (applies the store's change set, `Store.read_changes`) and one forced
onto the full read every reload did before issue 10 (`read_changes` answers None, so it reads
`read_snapshot` and rebuilds every entry, keeping signers whose key file is unchanged). After each
change both reload, in alternating order; the figure is the median wall time of `Directory.reload()`.

Two changes are measured: a display-name change (`tenant set` with the same address: no key file
is read) and a new address (`tenant set`: a new RSA key is issued, untimed, and read once by the reload,
which then costs one RSA key check, ~tens of ms, whatever the path).

Setup shortcut, said plainly: all tenants share one RSA key, and while the two directories make their
first full load, the key is parsed and checked once and handed to every tenant (the files are still
there and identical). Checking 5,000 keys one by one would take minutes per directory; that cost, the
cold start of every relay worker, is measured on a sample of files with the real loader and reported
on its own line. Every reload that is timed uses the real loader, counted.

PostgreSQL runs in a throwaway cluster (bench/pgcluster.py); without PostgreSQL installed that store is
skipped with one line.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from admin.tenants import set_tenant  # noqa: E402
from bench import pgcluster  # noqa: E402
from relay.core import dkimkeys  # noqa: E402
from relay.core.store import SqliteStore, Store, StoreChanges  # noqa: E402
from relay.policy.directory import Directory  # noqa: E402
from tests.factories import populate  # noqa: E402

COLD_SAMPLE = 50  # key files checked one by one for the cold-start line


@dataclass
class Loader:
    """The real key loader, counted; during `setup` one parsed key per public key is handed out again."""

    setup: bool = True
    read: int = 0
    parsed: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)

    def __call__(self, keys_dir: Path, relative: str, *, public_key: str) -> rsa.RSAPrivateKey:
        if self.setup and public_key in self.parsed:
            return self.parsed[public_key]
        self.read += 1
        key = dkimkeys.load_private_key(keys_dir, relative, public_key=public_key)
        self.parsed[public_key] = key
        return key


class FullReads:
    """The store as the directory saw it before issue 10: no change log, so every reload reads it all."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def read_changes(self, since: int) -> StoreChanges | None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@contextmanager
def opened(kind: str, root: Path) -> Iterator[Callable[[], Store]]:
    """A factory of connections to one fresh store of `kind` (the relay's and the admin's)."""
    if kind == "sqlite":
        yield lambda: SqliteStore(root / "relay.db")
        return
    from relay.core.store.postgres import PostgresStore

    with pgcluster.cluster() as url:
        yield lambda: PostgresStore(url)


async def timed(directory: Directory, loader: Loader) -> tuple[float, int]:
    """One reload's wall time in ms, and how many key files it read."""
    before = loader.read
    start = time.perf_counter()
    await directory.reload()
    return (time.perf_counter() - start) * 1000, loader.read - before


def run(kind: str, tenants: int, repeats: int) -> list[dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="relay-bench-reload-"))
    keys_dir = root / "keys"
    try:
        with opened(kind, root) as connect:
            admin, relay_store = connect(), connect()
            try:
                started = time.perf_counter()
                ids = populate(admin, keys_dir, tenants, dkimkeys.generate_private_key())
                print(f"{kind}: {tenants} tenants written in {time.perf_counter() - started:.1f}s", file=sys.stderr)
                loaders = {"incremental": Loader(), "full": Loader()}
                directories = {
                    "incremental": Directory(relay_store, keys_dir=keys_dir, reload_interval=60,
                                             load_key=loaders["incremental"]),
                    "full": Directory(FullReads(relay_store), keys_dir=keys_dir, reload_interval=60,  # type: ignore[arg-type]
                                      load_key=loaders["full"]),
                }
                for path, directory in directories.items():
                    started = time.perf_counter()
                    directory.load()
                    loaders[path].setup = False
                    print(f"{kind}: {path} directory's first load (one key check, shared) in "
                          f"{time.perf_counter() - started:.1f}s", file=sys.stderr)
                rows = [cold_start(kind, keys_dir, directories["full"], tenants)]
                rows.extend(asyncio.run(measure(kind, admin, keys_dir, ids, directories, loaders, repeats)))
                return rows
            finally:
                admin.close()
                relay_store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def measure(kind: str, admin: Store, keys_dir: Path, ids: list[str], directories: dict[str, Directory],
                  loaders: dict[str, Loader], repeats: int) -> list[dict[str, Any]]:
    """Both changes, `repeats` times each, both directories reloading after each, in one event loop (as
    in a relay worker: its thread pool is warm)."""
    for directory in directories.values():  # warm-up: the loop's worker threads, the store's connections
        await directory.reload()
    rows: list[dict[str, Any]] = []
    for scenario in ("name", "address"):
        times: dict[str, list[float]] = {"incremental": [], "full": []}
        reads: dict[str, list[int]] = {"incremental": [], "full": []}
        for repeat in range(repeats):
            tid = ids[(repeat * 7919) % len(ids)]  # a different tenant each time
            change(admin, keys_dir, tid, scenario, repeat)
            order = ["incremental", "full"] if repeat % 2 == 0 else ["full", "incremental"]
            for path in order:
                ms, read = await timed(directories[path], loaders[path])
                times[path].append(ms)
                reads[path].append(read)
        # Both paths arrive at the same snapshot (the same entries, as the relay serves them).
        new, old = directories["incremental"].current, directories["full"].current
        assert new.generation == old.generation and new.tenants == old.tenants and new.keys == old.keys
        for path in ("full", "incremental"):
            rows.append({"store": kind, "tenants": len(ids), "change": scenario, "path": path,
                         "median_ms": round(statistics.median(times[path]), 2),
                         "min_ms": round(min(times[path]), 2), "max_ms": round(max(times[path]), 2),
                         "key_files_read": max(reads[path]), "repeats": repeats})
    return rows


def change(store: Store, keys_dir: Path, tid: str, scenario: str, repeat: int) -> None:
    """One admin change, as `relay-admin tenant set` makes it."""
    tenant = store.get_tenant(tid)
    assert tenant is not None
    if scenario == "name":
        sender = replace(tenant.sender, name=f"{tid} renamed {repeat}")
    else:
        sender = replace(tenant.sender, email=f"invoices{repeat}@{tenant.sender.domain}")
    set_tenant(store, keys_dir, tid, sender, actor="bench")


def cold_start(kind: str, keys_dir: Path, directory: Directory, tenants: int) -> dict[str, Any]:
    """The first load's key checks, measured on a sample with the real loader, scaled to every tenant."""
    sample = list(directory.current.keys.values())[:COLD_SAMPLE]
    started = time.perf_counter()
    for key in sample:
        dkimkeys.load_private_key(keys_dir, key.key_file, public_key=key.public_key_b64)
    per_key = (time.perf_counter() - started) * 1000 / len(sample)
    return {"store": kind, "tenants": tenants, "change": "-", "path": "first load: key checks (estimate)",
            "median_ms": round(per_key * tenants, 0), "per_key_ms": round(per_key, 2), "sample": len(sample)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stores", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for kind in args.stores:
        if kind == "postgresql" and pgcluster.bin_dir() is None:
            print("postgresql: skipped, PostgreSQL is not installed", file=sys.stderr)
            continue
        rows.extend(run(kind, args.tenants, args.repeats))
    print(f"{'store':<11} {'tenants':>7}  {'change':<8} {'path':<36} {'median ms':>10} {'min':>8} {'max':>8} {'keys read':>9}")
    for row in rows:
        print(f"{row['store']:<11} {row['tenants']:>7}  {row['change']:<8} {row['path']:<36} {row['median_ms']:>10} "
              f"{row.get('min_ms', ''):>8} {row.get('max_ms', ''):>8} {row.get('key_files_read', ''):>9}")
    for row in rows:
        if "per_key_ms" in row:
            print(f"{row['store']}: one RSA key check {row['per_key_ms']} ms (of {row['sample']} files): "
                  f"a worker's first load of {row['tenants']} tenants spends ~{row['median_ms'] / 1000:.0f} s on keys")
    return 0


if __name__ == "__main__":
    sys.exit(main())
