"""The acting user is input like any other: `--as` and RELAY_ADMIN_USER must be valid user names. A line feed
in one would forge an audit line, and an empty one would be audited as `(bootstrap)`; both are exit 2 with
one line naming where the name came from, and nothing changes (not even the audit log)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from admin.context import BOOTSTRAP_ACTOR
from tests.conftest import CliResult
from tests.snapshot import assert_one_line_error, open_store, state, store_exists

Cli = Callable[..., CliResult]
BAD_NAMES = ["", "alice\n", "alice\nfake audit line", "Alice", " alice", "al ice", "\udcff"]


@pytest.fixture
def owner(cli: Cli) -> str:
    assert cli("user", "add", "alice", "--role", "owner").code == 0
    return "alice"


def actors(env: Path) -> list[str]:
    store = open_store(env)
    try:
        return [entry.actor for entry in store.list_audit()]
    finally:
        store.close()


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_a_bad_as_is_refused_naming_as(cli: Cli, relay_env: Path, owner: str, name: str) -> None:
    before = state(relay_env)
    result = cli("tenant", "set", "acme", "--name", "Acme", "--email", "info@acme.test", "--domain", "acme.test",
                 "--as", name)
    assert_one_line_error(result, 2, "--as")
    assert result.err.startswith("relay-admin: --as: ") and "not a valid user name" in result.err
    assert state(relay_env) == before  # no audit row either: nothing was attempted
    assert actors(relay_env) == [BOOTSTRAP_ACTOR]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_a_bad_relay_admin_user_is_refused_naming_it(cli: Cli, relay_env: Path, owner: str, name: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_ADMIN_USER", name)  # an undecodable byte arrives as a surrogate, as from argv
    before = state(relay_env)
    result = cli("user", "add", "bob", "--role", "admin")
    assert_one_line_error(result, 2, "RELAY_ADMIN_USER")
    assert result.err.startswith("relay-admin: RELAY_ADMIN_USER: ")
    assert state(relay_env) == before


def test_an_empty_as_is_not_the_bootstrap(cli: Cli, relay_env: Path) -> None:
    """Without any user yet, `--as ''` is still an error: no store is created, nobody is audited."""
    result = cli("user", "add", "alice", "--role", "owner", "--as", "")
    assert_one_line_error(result, 2, "--as")
    assert not store_exists()


def test_an_empty_as_does_not_fall_back_to_relay_admin_user(cli: Cli, relay_env: Path, owner: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_ADMIN_USER", owner)
    assert_one_line_error(cli("user", "add", "bob", "--role", "admin", "--as", ""), 2, "--as")
    assert cli("user", "add", "bob", "--role", "admin").code == 0  # RELAY_ADMIN_USER alone is fine


def test_a_valid_but_unknown_user_is_still_denied_and_audited_by_name(cli: Cli, relay_env: Path, owner: str) -> None:
    result = cli("user", "add", "bob", "--role", "admin", "--as", "mallory")
    assert_one_line_error(result, 3, "mallory")
    assert actors(relay_env) == [BOOTSTRAP_ACTOR, "mallory"]
