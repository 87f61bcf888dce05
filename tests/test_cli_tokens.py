"""`relay-admin token add|revoke`: a token acts as its user (role and scope), is printed once, kept hashed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from admin.auth import user_for_token, verify_password
from relay.core.models import Role
from tests.conftest import CliResult
from tests.snapshot import (
    Stores,
    assert_one_line_error,
    build_template,
    database_from,
    dump_url,
    env_url,
    open_store,
    restore_template,
    state,
)

Cli = Callable[..., CliResult]
OWNER, STAFF, ADMIN, ACCOUNTANT, OTHER = "alice", "olga", "dana", "carl", "cora"  # dana, carl, cora: acme


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, backend_stores: Stores) -> Path:
    return build_template(tmp_path_factory.mktemp("tokens"), [
        ["user", "add", OWNER, "--role", "owner"],
        ["tenant", "set", "acme", "--name", "Acme", "--email", "billing@acme.test",
         "--domain", "acme.test", "--as", OWNER],
        ["user", "add", STAFF, "--role", "admin", "--as", OWNER],
        ["user", "add", ADMIN, "--role", "admin", "--tenant", "acme", "--as", OWNER],
        ["user", "add", ACCOUNTANT, "--role", "accountant", "--tenant", "acme", "--as", OWNER],
        ["user", "add", OTHER, "--role", "accountant", "--tenant", "acme", "--as", OWNER],
    ], backend_stores)


# Each test's store starts as a copy of the template (one CREATE DATABASE ... TEMPLATE on PostgreSQL).
database_url = database_from("template")


@pytest.fixture
def env(template: Path, relay_env: Path) -> Path:
    restore_template(template, relay_env)
    return relay_env


def _issue(cli: Cli, user: str, actor: str) -> str:
    result = cli("token", "add", "--user", user, "--json", "--as", actor)
    assert result.code == 0, result.err
    return str(json.loads(result.out)["token"])


def _last_audit(env: Path) -> tuple[str, str, str | None, str, str]:
    store = open_store(env)
    try:
        a = store.list_audit()[-1]
    finally:
        store.close()
    return a.actor, a.action, a.tenant, a.outcome, a.detail


def test_token_add_prints_it_once_and_the_store_keeps_only_prefix_and_hash(cli: Cli, env: Path) -> None:
    result = cli("token", "add", "--user", ACCOUNTANT, "--json", "--as", OWNER)
    assert (result.code, result.err) == (0, "")
    data = json.loads(result.out)
    assert set(data) == {"user", "token"} and data["user"] == ACCOUNTANT
    token = data["token"]
    assert result.out.count(token) == 1
    prefix, secret = token.split("_", 2)[1:]
    dump = repr(dump_url(env_url()))
    assert secret not in dump and token not in dump and prefix in dump
    store = open_store(env)
    try:
        [stored] = store.tokens_with_prefix(prefix)
        assert stored.user == ACCOUNTANT and verify_password(stored.token_hash, token)
        user = user_for_token(store, token)
    finally:
        store.close()
    assert user is not None and (user.name, user.role, user.tenants) == (ACCOUNTANT, Role.ACCOUNTANT, ("acme",))
    assert _last_audit(env) == (OWNER, "token.add", "acme", "done",
                                f"issued token {prefix} for user 'carl'")


def test_token_add_text_says_what_it_acts_as_and_how_to_end_it(cli: Cli, env: Path) -> None:
    result = cli("token", "add", "--user", ADMIN, "--as", ADMIN)
    assert result.code == 0, result.err
    first, second = result.out.splitlines()
    assert first.startswith("token for dana (shown only once, store it now): rat_")
    prefix = first.rsplit("rat_", 1)[1].split("_")[0]
    assert second == (f"it acts as dana (admin, tenants acme); end it with "
                      f"`relay-admin token revoke {prefix}`")


def test_revoke_ends_a_token_at_once(cli: Cli, env: Path) -> None:
    token = _issue(cli, ACCOUNTANT, ACCOUNTANT)  # every user may issue its own
    prefix = token.split("_")[1]
    result = cli("token", "revoke", prefix, "--as", OWNER)
    assert (result.code, result.out, result.err) == (0, f"token {prefix} of carl revoked\n", "")
    store = open_store(env)
    try:
        assert user_for_token(store, token) is None
    finally:
        store.close()
    assert _last_audit(env)[:4] == (OWNER, "token.revoke", "acme", "done")
    again = cli("token", "revoke", f"rat_{prefix}", "--json", "--as", OWNER)
    assert again.code == 0 and json.loads(again.out)["user"] == ACCOUNTANT
    assert _last_audit(env)[1] == "token.revoke", "nothing changed the second time: nothing audited"


def test_revoke_takes_the_whole_token_too(cli: Cli, env: Path) -> None:
    token = _issue(cli, ADMIN, ADMIN)
    assert cli("token", "revoke", token, "--as", ADMIN).code == 0
    store = open_store(env)
    try:
        assert user_for_token(store, token) is None
    finally:
        store.close()


@pytest.mark.parametrize(("prefix", "words"), [
    ("zzzzzzzz", "TOKEN-PREFIX: no token 'zzzzzzzz'"),
    ("ZZ", "TOKEN-PREFIX: 'ZZ' is not a token prefix"),
])
def test_revoke_of_an_unknown_prefix_is_a_usage_error(cli: Cli, env: Path, prefix: str, words: str) -> None:
    before = state(env)
    assert_one_line_error(cli("token", "revoke", prefix, "--as", OWNER), 2, words)
    assert state(env) == before


@pytest.mark.parametrize(("actor", "user", "words"), [
    (ACCOUNTANT, OTHER, "only owners and admins can issue API tokens for another user; "
                        "every user can issue tokens for itself"),
    (ADMIN, OWNER, "only an owner can manage an owner's password and tokens"),
    (STAFF, OWNER, "only an owner can manage an owner's password and tokens"),
    (ADMIN, STAFF, "an admin of some tenants manages only users of those same tenants"),
])
def test_token_add_is_allowed_as_for_user_password(cli: Cli, env: Path, actor: str, user: str,
                                                   words: str) -> None:
    before = state(env)
    result = cli("token", "add", "--user", user, "--as", actor)
    assert_one_line_error(result, 3, words)
    assert state(env).without_audit() == before.without_audit()
    audited = _last_audit(env)
    assert audited[:2] == (actor, "token.add") and audited[3] == "denied"
    assert f"for user {user!r}" in audited[4]


def test_owners_and_admins_issue_tokens_for_users_in_their_scope(cli: Cli, env: Path) -> None:
    for actor, user in ((OWNER, STAFF), (STAFF, ADMIN), (ADMIN, ACCOUNTANT), (OTHER, OTHER)):
        assert cli("token", "add", "--user", user, "--as", actor).code == 0, (actor, user)


def test_token_add_for_an_unknown_user(cli: Cli, env: Path) -> None:
    before = state(env)
    assert_one_line_error(cli("token", "add", "--user", "nobody", "--as", OWNER), 2, "--user: no user 'nobody'")
    assert state(env) == before


def test_revoking_another_users_token_is_allowed_as_for_user_password(cli: Cli, env: Path) -> None:
    token = _issue(cli, OTHER, OTHER)
    prefix = token.split("_")[1]
    result = cli("token", "revoke", prefix, "--as", ACCOUNTANT)
    assert_one_line_error(result, 3, "permission denied for carl (accountant): only owners and admins "
                                     "can revoke another user's API tokens; every user can revoke its own")
    assert _last_audit(env)[:4] == (ACCOUNTANT, "token.revoke", None, "denied")
    store = open_store(env)
    try:
        assert user_for_token(store, token) is not None
    finally:
        store.close()
    assert cli("token", "revoke", prefix, "--as", ADMIN).code == 0  # cora is within dana's scope


def test_denials_show_in_the_audit_with_the_acting_user(cli: Cli, env: Path) -> None:
    assert cli("token", "add", "--user", OWNER, "--as", ADMIN).code == 3
    entries = json.loads(cli("audit", "--json", "--as", OWNER).out)
    assert (entries[-1]["actor"], entries[-1]["action"], entries[-1]["outcome"]) == (
        ADMIN, "token.add", "denied")
