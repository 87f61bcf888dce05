"""`relay-admin user add`: bootstrap, roles, who may add whom, bad input, and the audit log."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from admin.context import BOOTSTRAP_ACTOR
from relay.models import Role
from relay.store import utcnow
from tests.conftest import CliResult
from tests.snapshot import assert_one_line_error, open_store, state

Cli = Callable[..., CliResult]


@pytest.fixture
def owner(cli: Cli) -> str:
    assert cli("user", "add", "alice", "--role", "owner").code == 0
    return "alice"


def _users(env: Path) -> dict[str, Role]:
    store = open_store(env)
    try:
        return {u.name: u.role for u in store.list_users()}
    finally:
        store.close()


def _audit(env: Path) -> list[tuple[str, str, str | None, str, str]]:
    store = open_store(env)
    try:
        return [(a.actor, a.action, a.tenant, a.outcome, a.detail) for a in store.list_audit()]
    finally:
        store.close()


def test_first_user_needs_no_acting_user_and_is_audited(cli: Cli, relay_env: Path) -> None:
    before = utcnow()
    result = cli("user", "add", "alice", "--role", "owner")
    assert result.code == 0, result.err
    assert "alice" in result.out
    assert _users(relay_env) == {"alice": Role.OWNER}
    store = open_store(relay_env)
    try:
        (entry,) = store.list_audit()
    finally:
        store.close()
    assert (entry.actor, entry.action, entry.outcome) == (BOOTSTRAP_ACTOR, "user.add", "done")
    assert "alice" in entry.detail and "owner" in entry.detail
    assert before <= entry.time <= utcnow()


def test_bootstrap_may_name_the_user_being_added(cli: Cli, relay_env: Path) -> None:
    result = cli("user", "add", "alice", "--role", "admin", "--as", "alice")
    assert result.code == 0, result.err
    assert _users(relay_env) == {"alice": Role.ADMIN}


def test_first_user_may_not_be_an_accountant(cli: Cli, relay_env: Path) -> None:
    open_store(relay_env).close()  # an empty store, so "unchanged" compares tables
    before = state(relay_env)
    assert_one_line_error(cli("user", "add", "carol", "--role", "accountant"), 2, "--role")
    assert state(relay_env) == before


def test_second_user_needs_an_acting_user(cli: Cli, relay_env: Path, owner: str) -> None:
    before = state(relay_env)
    result = cli("user", "add", "bob", "--role", "admin")
    assert_one_line_error(result, 2, "--as")
    assert state(relay_env) == before


def test_acting_user_from_environment(cli: Cli, relay_env: Path, owner: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_ADMIN_USER", owner)
    assert cli("user", "add", "bob", "--role", "admin").code == 0
    assert _users(relay_env)["bob"] is Role.ADMIN
    assert _audit(relay_env)[-1][:2] == ("alice", "user.add")


def test_owner_adds_every_role_with_json(cli: Cli, relay_env: Path, owner: str) -> None:
    for name, role in (("bob", "admin"), ("carol", "accountant"), ("dave", "owner")):
        result = cli("user", "add", name, "--role", role, "--as", owner, "--json")
        assert result.code == 0, result.err
        data = json.loads(result.out)
        assert (data["user"], data["role"]) == (name, role)
    assert _users(relay_env) == {"alice": Role.OWNER, "bob": Role.ADMIN,
                                 "carol": Role.ACCOUNTANT, "dave": Role.OWNER}


def test_admin_adds_admin_but_not_owner(cli: Cli, relay_env: Path, owner: str) -> None:
    assert cli("user", "add", "bob", "--role", "admin", "--as", owner).code == 0
    assert cli("user", "add", "carol", "--role", "admin", "--as", "bob").code == 0
    before = state(relay_env)
    assert_one_line_error(cli("user", "add", "mallory", "--role", "owner", "--as", "bob"), 3,
                          "permission denied")
    assert state(relay_env).without_audit() == before.without_audit()
    actor, action, tenant, outcome, detail = _audit(relay_env)[-1]
    assert (actor, action, tenant, outcome) == ("bob", "user.add", None, "denied")
    assert "owner" in detail and "mallory" in detail


def test_accountant_may_not_add_users(cli: Cli, relay_env: Path, owner: str) -> None:
    assert cli("user", "add", "carol", "--role", "accountant", "--as", owner).code == 0
    before = state(relay_env)
    assert_one_line_error(cli("user", "add", "eve", "--role", "accountant", "--as", "carol"), 3,
                          "permission denied")
    assert state(relay_env).without_audit() == before.without_audit()
    assert _audit(relay_env)[-1][:4] == ("carol", "user.add", None, "denied")


def test_unknown_acting_user_is_denied_and_audited(cli: Cli, relay_env: Path, owner: str) -> None:
    before = state(relay_env)
    assert_one_line_error(cli("user", "add", "eve", "--role", "admin", "--as", "mallory"), 3,
                          "mallory")
    assert state(relay_env).without_audit() == before.without_audit()
    actor, action, _, outcome, detail = _audit(relay_env)[-1]
    assert (actor, action, outcome) == ("mallory", "user.add", "denied")
    assert "unknown user" in detail


def test_duplicate_user_is_refused(cli: Cli, relay_env: Path, owner: str) -> None:
    before = state(relay_env)
    assert_one_line_error(cli("user", "add", "alice", "--role", "admin", "--as", owner), 2, "NAME")
    assert state(relay_env) == before


@pytest.mark.parametrize("name", ["Alice", "-alice", "al ice", "a" * 64, "", "al/ice", "al\nice",
                                  "ålice"])
def test_bad_user_name_changes_nothing(cli: Cli, relay_env: Path, owner: str, name: str) -> None:
    before = state(relay_env)
    # `--` so that a name starting with '-' reaches the check instead of argparse.
    assert_one_line_error(cli("user", "add", "--role", "admin", "--as", owner, "--", name), 2, "NAME")
    assert state(relay_env) == before


def test_bad_role_changes_nothing(cli: Cli, relay_env: Path, owner: str) -> None:
    before = state(relay_env)
    assert_one_line_error(cli("user", "add", "bob", "--role", "boss", "--as", owner), 2, "--role")
    assert state(relay_env) == before
