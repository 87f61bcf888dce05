"""`relay-admin client add`: scope, networks, a secret printed once and stored only hashed, roles, audit."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.core.credentials import verify_secret
from relay.core.models import Client
from tests.conftest import CliResult
from tests.snapshot import (
    Stores,
    assert_one_line_error,
    build_template,
    database_from,
    env_url,
    open_store,
    restore_template,
    state,
    stored_bytes,
)

Cli = Callable[..., CliResult]
OWNER, ADMIN, ACCOUNTANT = "alice", "bob", "carol"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, backend_stores: Stores) -> Path:
    return build_template(tmp_path_factory.mktemp("clients"), [
        ["user", "add", OWNER, "--role", "owner"],
        ["user", "add", ADMIN, "--role", "admin", "--as", OWNER],
        ["user", "add", ACCOUNTANT, "--role", "accountant", "--as", OWNER],
        ["tenant", "set", "acme", "--name", "Acme", "--email", "billing@acme.test",
         "--domain", "acme.test", "--as", OWNER],
        ["tenant", "set", "beta", "--name", "Beta", "--email", "billing@beta.test",
         "--domain", "beta.test", "--as", OWNER],
        ["client", "add", "legacy", "--tenant", "acme", "--network", "10.9.0.0/16", "--as", OWNER],
    ], backend_stores)


# Each test's store starts as a copy of the template (one CREATE DATABASE ... TEMPLATE on PostgreSQL).
database_url = database_from("template")


@pytest.fixture
def env(template: Path, relay_env: Path) -> Path:
    """Users alice/bob/carol, tenants acme and beta, client legacy (network 10.9.0.0/16)."""
    restore_template(template, relay_env)
    return relay_env


def stored_client(env: Path, name: str) -> Client:
    store = open_store(env)
    try:
        client = store.get_client(name)
    finally:
        store.close()
    assert client is not None
    return client


def database_bytes(env: Path) -> bytes:
    return stored_bytes(env_url())


def test_text_output_prints_secret_once_with_hint_and_stores_only_a_hash(cli: Cli, env: Path) -> None:
    result = cli("client", "add", "billing", "--tenant", "acme", "--as", ADMIN)
    assert result.code == 0, result.err
    secret_line = next(line for line in result.out.splitlines() if line.startswith("secret"))
    secret = secret_line.rsplit(" ", 1)[1]
    assert len(secret) >= 40 and result.out.count(secret) == 1
    hint = [line for line in result.out.splitlines() if line.startswith("hint:")]
    assert len(hint) == 1 and "AUTH" in hint[0] and "'billing'" in hint[0]
    client = stored_client(env, "billing")
    assert (client.tenants, client.all_tenants, client.networks) == (("acme",), False, ())
    assert secret not in client.secret_hash and client.secret_hash.startswith("scrypt$")
    assert verify_secret(secret, client.secret_hash)
    assert not verify_secret(secret + "x", client.secret_hash)
    stored = database_bytes(env)
    assert client.secret_hash.encode() in stored, "the bytes looked at hold what was just written"
    assert secret.encode() not in stored


def test_json_output_is_client_and_secret(cli: Cli, env: Path) -> None:
    result = cli("client", "add", "reports", "--all-tenants", "--as", OWNER, "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert set(data) == {"client", "secret"} and data["client"] == "reports"
    client = stored_client(env, "reports")
    assert client.all_tenants and client.tenants == ()
    assert verify_secret(data["secret"], client.secret_hash)
    assert data["secret"].encode() not in database_bytes(env)


def test_several_tenants_and_networks_are_normalised(cli: Cli, env: Path) -> None:
    result = cli("client", "add", "scanner", "--tenant", "beta", "acme", "--tenant", "acme",
                 "--network", "2001:DB8::/48", "--network", "10.1.0.0/16", "192.0.2.7",
                 "--as", OWNER, "--json")
    assert result.code == 0, result.err
    client = stored_client(env, "scanner")
    assert client.tenants == ("acme", "beta")
    assert client.networks == ("10.1.0.0/16", "192.0.2.7/32", "2001:db8::/48")


BAD_INPUTS: list[tuple[list[str], str]] = [
    (["--tenant", "nope", "--", "svc"], "--tenant"),
    (["--tenant", "acme", "nope", "--", "svc"], "--tenant"),
    (["--tenant", "Acme", "--", "svc"], "--tenant"),
    (["--", "svc"], "--tenant"),  # neither --tenant nor --all-tenants
    (["--tenant", "acme", "--all-tenants", "--", "svc"], "--all-tenants"),
    (["--tenant", "acme", "--", "Svc"], "NAME"),
    (["--tenant", "acme", "--", "-svc"], "NAME"),
    (["--tenant", "acme", "--", "s v c"], "NAME"),
    (["--tenant", "acme", "--", ""], "NAME"),
    (["--tenant", "acme", "--", "legacy"], "NAME"),  # exists already
    (["--tenant", "acme", "--network", "10.0.0.5/8", "--", "svc"], "--network"),
    (["--tenant", "acme", "--network", "garbage", "--", "svc"], "--network"),
    (["--tenant", "acme", "--network", "10.0.0.0/33", "--", "svc"], "--network"),
    (["--tenant", "acme", "--network", "10.9.8.0/24", "--", "svc"], "--network"),  # inside legacy's
    (["--tenant", "acme", "--network", "10.0.0.0/8", "--", "svc"], "--network"),  # covers legacy's
]


@pytest.mark.parametrize(("args", "field"), BAD_INPUTS)
def test_bad_input_exits_2_naming_the_field_and_changes_nothing(
    cli: Cli, env: Path, args: list[str], field: str,
) -> None:
    before = state(env)
    assert_one_line_error(cli("client", "add", "--as", OWNER, *args), 2, field)
    assert state(env) == before


def test_accountant_and_unknown_user_are_denied_and_audited(cli: Cli, env: Path) -> None:
    before = state(env)
    assert_one_line_error(cli("client", "add", "svc", "--tenant", "acme", "--as", ACCOUNTANT), 3,
                          "permission denied")
    assert_one_line_error(cli("client", "add", "svc", "--all-tenants", "--as", "mallory"), 3,
                          "mallory")
    assert state(env).without_audit() == before.without_audit()
    store = open_store(env)
    try:
        entries = store.list_audit()[-2:]
    finally:
        store.close()
    assert [(e.actor, e.action, e.tenant, e.outcome) for e in entries] == [
        (ACCOUNTANT, "client.add", "acme", "denied"),
        ("mallory", "client.add", None, "denied"),
    ]


def test_audit_records_the_client_but_never_its_secret(cli: Cli, env: Path) -> None:
    result = cli("client", "add", "svc", "--tenant", "beta", "--network", "192.0.2.0/24",
                 "--as", ADMIN, "--json")
    assert result.code == 0, result.err
    secret = json.loads(result.out)["secret"]
    store = open_store(env)
    try:
        entry = store.list_audit()[-1]
    finally:
        store.close()
    assert (entry.actor, entry.action, entry.tenant, entry.outcome) == (ADMIN, "client.add", "beta",
                                                                         "done")
    assert "svc" in entry.detail and "192.0.2.0/24" in entry.detail
    assert secret not in entry.detail
