"""Test helpers for "nothing changed": a dump of every store table and the keys directory, and templates.

A template is a store + keys directory built once per test module with the real CLI, then copied into
each test's `relay_env`, so parametrised tests do not pay for RSA key generation every time.
"""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
from collections.abc import Iterable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.core.store import SqliteStore

DB_NAME = "relay.db"  # what conftest's relay_env points RELAY_DATABASE at
KEYS_NAME = "keys"
# Tables a denied attempt may change: it is audited, and every write bumps the generation.
AUDIT_TABLES = frozenset({"audit", "meta", "sqlite_sequence"})


def dump_store(db_path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (and the schema), in a stable order."""
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
    return State(dump_store(env / DB_NAME), list_keys_dir(env / KEYS_NAME))


def open_store(env: Path) -> SqliteStore:
    return SqliteStore(env / DB_NAME)


def assert_one_line_error(result: Any, code: int, field: str) -> None:
    """Exit `code`, nothing on stdout, exactly one stderr line that names `field`."""
    assert result.code == code, (result.code, result.out, result.err)
    assert result.out == ""
    assert result.err.endswith("\n") and result.err.count("\n") == 1, repr(result.err)
    assert field in result.err, repr(result.err)


def build_template(directory: Path, commands: Iterable[list[str]]) -> Path:
    """Run relay-admin `commands` against a fresh store under `directory`; returns `directory`."""
    from admin.cli import main

    with pytest.MonkeyPatch.context() as env:
        for name in list(os.environ):
            if name.startswith("RELAY_"):
                env.delenv(name)
        env.setenv("RELAY_DATABASE", f"sqlite:///{directory / DB_NAME}")
        env.setenv("RELAY_KEYS_DIR", str(directory / KEYS_NAME))
        for args in commands:
            out, err = io.StringIO(), io.StringIO()
            with redirect_stdout(out), redirect_stderr(err):
                code = main(args)
            assert code == 0, (args, err.getvalue())
    return directory


def build_acme_template(directory: Path, *, admin: bool = True) -> Path:
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
    ])


def restore_template(template: Path, env: Path) -> None:
    """Copy a template's store and keys (modes kept) into a test's relay_env directory."""
    for path in template.glob(DB_NAME + "*"):
        shutil.copy2(path, env / path.name)
    if (template / KEYS_NAME).exists():
        shutil.copytree(template / KEYS_NAME, env / KEYS_NAME)
