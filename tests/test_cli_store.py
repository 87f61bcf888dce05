"""`relay-admin` and where its store and keys are: never a new store by accident, every path absolute."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CliResult
from tests.snapshot import (
    Stores,
    assert_one_line_error,
    build_template,
    location,
    restore_template,
    state,
)

Cli = Callable[..., CliResult]
OWNER = "alice"
ACME = ["--name", "Acme", "--email", "billing@acme.test", "--domain", "acme.test"]

# Every command but the bootstrap `user add`: none of them may start a store.
COMMANDS: list[list[str]] = [
    ["tenant", "list"],
    ["tenant", "show", "acme"],
    ["tenant", "set", "acme", *ACME],
    ["records", "acme"],
    ["export", "acme", "--output", "acme.xlsx"],
    ["validate", "acme"],
    ["client", "add", "svc", "--all-tenants"],
    ["send-test", "acme", "--to", "someone@example.test"],
    ["user", "add", "bob", "--role", "admin"],  # an acting user: not a bootstrap
]


@pytest.fixture
def elsewhere(relay_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, with the store and keys given relative to it (the defaults)."""
    directory = relay_env / "elsewhere"
    directory.mkdir()
    monkeypatch.chdir(directory)
    monkeypatch.setenv("RELAY_DATABASE", "sqlite:///var/relay.db")
    monkeypatch.setenv("RELAY_KEYS_DIR", "keys")
    return directory


@pytest.mark.sqlite_only  # a relative SQLite path (tests/test_store_pg.py: a missing PostgreSQL store)
@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: " ".join(args[:2]))
def test_a_missing_store_is_named_and_not_created(cli: Cli, elsewhere: Path, args: list[str]) -> None:
    result = cli(*args, "--as", OWNER)
    assert_one_line_error(result, 4, str(elsewhere / "var" / "relay.db"))
    assert "does not exist" in result.err
    assert list(elsewhere.iterdir()) == []  # no store, no var/, no keys/, no export


@pytest.mark.sqlite_only  # a relative SQLite path (tests/test_store_pg.py: on PostgreSQL)
def test_bootstrap_creates_the_store_and_says_where(cli: Cli, elsewhere: Path) -> None:
    result = cli("user", "add", OWNER, "--role", "owner", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["user"] == OWNER  # stdout stays JSON; the notice is on stderr
    assert result.err == f"relay-admin: created a new store at {elsewhere / 'var' / 'relay.db'}\n"
    assert (elsewhere / "var" / "relay.db").is_file()
    again = cli("user", "add", "bob", "--role", "admin", "--as", OWNER)
    assert (again.code, again.err) == (0, "")  # an existing store is just used


@pytest.mark.sqlite_only  # a relative SQLite path
def test_a_first_user_added_by_someone_else_is_told_to_drop_the_acting_user(
    cli: Cli, elsewhere: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELAY_ADMIN_USER", "bob")  # left in a profile, say
    result = cli("user", "add", OWNER, "--role", "owner")
    assert_one_line_error(result, 4, str(elsewhere / "var" / "relay.db"))
    assert "without --as or RELAY_ADMIN_USER" in result.err
    assert list(elsewhere.iterdir()) == []


@pytest.mark.sqlite_only  # a relative SQLite path: nothing at all appears in the working directory
@pytest.mark.parametrize(("args", "field"), [
    (["user", "add", "carol", "--role", "accountant"], "--role"),
    (["user", "add", "--role", "owner", "--", "Alice"], "NAME"),
])
def test_a_refused_bootstrap_creates_nothing(cli: Cli, elsewhere: Path, args: list[str],
                                            field: str) -> None:
    assert_one_line_error(cli(*args), 2, field)
    assert list(elsewhere.iterdir()) == []


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, backend_stores: Stores) -> Path:
    return build_template(tmp_path_factory.mktemp("store"), [["user", "add", OWNER, "--role", "owner"]],
                          backend_stores)


@pytest.fixture
def env(template: Path, relay_env: Path) -> Path:
    """User alice (owner) in the store conftest's relay_env points at (absolute paths)."""
    restore_template(template, relay_env)
    return relay_env


def test_an_unknown_user_names_the_store_read(cli: Cli, env: Path) -> None:
    result = cli("tenant", "list", "--as", "mallory")
    assert_one_line_error(result, 3, f"no user 'mallory' in the store {location()}")
    assert result.err.startswith("relay-admin: permission denied: ")


def test_a_relative_keys_dir_is_reported_absolute(cli: Cli, env: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(env)
    monkeypatch.setenv("RELAY_KEYS_DIR", "relative-keys")
    result = cli("tenant", "set", "acme", *ACME, "--as", OWNER)
    assert result.code == 0, result.err
    keys_dir = env / "relative-keys"
    assert result.err == (f"relay-admin: created the keys directory {keys_dir} "
                          "(RELAY_KEYS_DIR=relative-keys)\n")
    (key_file,) = (keys_dir / "acme").iterdir()
    assert f"key file: {key_file}\n" in result.out
    again = cli("tenant", "set", "acme", *ACME, "--email", "post@acme.test", "--as", OWNER, "--json")
    assert again.code == 0 and again.err == ""  # the directory exists now: nothing to announce
    data = json.loads(again.out)
    assert Path(data["key_file"]).is_absolute() and Path(data["key_file"]).is_file()
    assert data["key_file"] == str(keys_dir / "acme" / f"{data['selector']}.pem")


def test_keys_dir_that_is_a_file_names_the_absolute_path(cli: Cli, env: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(env)
    (env / "not-a-dir").write_text("")
    monkeypatch.setenv("RELAY_KEYS_DIR", "not-a-dir")
    before = state(env)
    result = cli("tenant", "set", "acme", *ACME, "--as", OWNER)
    assert_one_line_error(result, 4, str(env / "not-a-dir"))
    assert "cannot write the DKIM key" in result.err and "nothing changed" in result.err
    assert state(env) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory anyway")
def test_unwritable_keys_dir_names_the_absolute_path(cli: Cli, env: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # The keys directory's parent, since write_private_key chmods the keys directory itself 0700.
    monkeypatch.chdir(env)
    (env / "locked").mkdir(mode=0o500)
    monkeypatch.setenv("RELAY_KEYS_DIR", "locked/keys")
    before = state(env)
    try:
        result = cli("tenant", "set", "acme", *ACME, "--as", OWNER)
    finally:
        (env / "locked").chmod(stat.S_IRWXU)
    assert_one_line_error(result, 4, str(env / "locked" / "keys"))
    assert "Permission denied" in result.err
    assert state(env) == before
