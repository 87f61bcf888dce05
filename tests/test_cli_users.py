"""`relay-admin user add|password`: bootstrap, roles, who may add whom, passwords, bad input, the audit log."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from admin.auth import authenticate_password, verify_password
from admin.context import BOOTSTRAP_ACTOR
from relay.core.models import Role
from relay.core.store import utcnow
from tests.conftest import CliResult
from tests.snapshot import assert_one_line_error, open_store, state, store_exists

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


# --- user add --tenant: JSON and the bootstrap ------------------------------------------------------

def test_user_add_json_names_the_scope(cli: Cli, relay_env: Path, owner: str) -> None:
    data = json.loads(cli("user", "add", "bob", "--role", "admin", "--json", "--as", owner).out)
    assert data["tenants"] == [], "no --tenant: every tenant"


def test_the_first_user_is_never_scoped(cli: Cli, relay_env: Path) -> None:
    result = cli("user", "add", "alice", "--role", "admin", "--tenant", "acme")
    assert_one_line_error(result, 2, "--tenant: the first user cannot be scoped")
    assert not store_exists()


# --- user password ----------------------------------------------------------------------------------

PASSWORD = "correct horse battery staple"


@pytest.fixture
def team(cli: Cli, owner: str) -> str:
    """alice (owner), bob (admin), carol and dave (accountants); returns the owner."""
    for name, role in (("bob", "admin"), ("carol", "accountant"), ("dave", "accountant")):
        assert cli("user", "add", name, "--role", role, "--as", owner).code == 0
    return owner


def _stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> io.StringIO:
    stream = io.StringIO(text)
    monkeypatch.setattr("sys.stdin", stream)
    return stream


def _password_hash(env: Path, name: str) -> str | None:
    store = open_store(env)
    try:
        user = store.get_user(name)
    finally:
        store.close()
    assert user is not None
    return user.password_hash


def test_user_password_reads_one_line_from_stdin_and_keeps_only_a_hash(
        cli: Cli, relay_env: Path, team: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _stdin(monkeypatch, PASSWORD + "\r\n")
    result = cli("user", "password", "carol", "--as", team)
    assert (result.code, result.out, result.err) == (0, "password of carol set\n", "")
    stored = _password_hash(relay_env, "carol")
    assert stored is not None and PASSWORD not in stored and stored.startswith("scrypt$")
    assert verify_password(stored, PASSWORD) and not verify_password(stored, PASSWORD + "\r")
    store = open_store(relay_env)
    try:
        user = authenticate_password(store, "carol", PASSWORD)
    finally:
        store.close()
    assert user is not None and user.name == "carol"
    assert _audit(relay_env)[-1] == ("alice", "user.password", None, "done",
                                     "set the password of user 'carol'")


def test_a_short_password_changes_nothing(cli: Cli, relay_env: Path, team: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    before = state(relay_env)
    _stdin(monkeypatch, "x" * 11 + "\n")
    result = cli("user", "password", "carol", "--as", team)
    assert_one_line_error(result, 2, "password: too short (11 characters); use at least 12")
    assert state(relay_env) == before
    _stdin(monkeypatch, "")  # nothing on stdin at all
    assert_one_line_error(cli("user", "password", "carol", "--as", team), 2, "password: too short")


def test_every_user_sets_its_own_password(cli: Cli, relay_env: Path, team: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _stdin(monkeypatch, PASSWORD + "\n")
    assert cli("user", "password", "carol", "--as", "carol").code == 0
    assert verify_password(_password_hash(relay_env, "carol") or "", PASSWORD)


@pytest.mark.parametrize(("actor", "target", "words"), [
    ("carol", "dave", "permission denied for carol (accountant): only owners and admins can set "
                      "another user's password; every user can set its own"),
    ("bob", "alice", "permission denied for bob (admin): only an owner can manage an owner's "
                     "password and tokens"),
])
def test_a_password_for_someone_else_is_refused_and_audited(
        cli: Cli, relay_env: Path, team: str, monkeypatch: pytest.MonkeyPatch,
        actor: str, target: str, words: str) -> None:
    before = state(relay_env)
    stdin = _stdin(monkeypatch, PASSWORD + "\n")
    assert_one_line_error(cli("user", "password", target, "--as", actor), 3, words)
    assert stdin.read() == PASSWORD + "\n", "refused before the password is read"
    assert state(relay_env).without_audit() == before.without_audit()
    logged_actor, action, _, outcome, detail = _audit(relay_env)[-1]
    assert (logged_actor, action, outcome) == (actor, "user.password", "denied")
    assert f"for user {target!r}" in detail


def test_owners_and_admins_set_passwords_of_users_they_manage(
        cli: Cli, relay_env: Path, team: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for actor, target in (("bob", "carol"), ("bob", "bob"), ("alice", "bob")):
        _stdin(monkeypatch, PASSWORD + "\n")
        assert cli("user", "password", target, "--as", actor).code == 0, (actor, target)


def test_a_password_for_an_unknown_user(cli: Cli, relay_env: Path, team: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _stdin(monkeypatch, PASSWORD + "\n")
    before = state(relay_env)
    assert_one_line_error(cli("user", "password", "nobody", "--as", team), 2, "NAME: no user 'nobody'")
    assert state(relay_env) == before


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_password_is_asked_twice_without_echo(
        cli: Cli, relay_env: Path, team: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", _Terminal())
    answers = iter([PASSWORD, PASSWORD + "!"])
    prompts: list[str] = []

    def getpass(prompt: str) -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr("getpass.getpass", getpass)
    before = state(relay_env)
    assert_one_line_error(cli("user", "password", "carol", "--as", team), 2, "the two entries differ")
    assert prompts == ["new password for carol: ", "the same again: "]
    assert state(relay_env) == before
    answers = iter([PASSWORD, PASSWORD])
    assert cli("user", "password", "carol", "--as", team).code == 0
    assert verify_password(_password_hash(relay_env, "carol") or "", PASSWORD)
