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
    stored = database_bytes(env)
    assert client.secret_hash.encode() in stored, "the bytes looked at hold what was just written"
    assert data["secret"].encode() not in stored


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


# ------------------------------------------------------------------ client list and client remove


def test_list_shows_every_client_without_a_secret_and_changes_nothing(cli: Cli, env: Path) -> None:
    added = json.loads(cli("client", "add", "reports", "--all-tenants", "--as", OWNER, "--json").out)
    before = state(env)
    text = cli("client", "list", "--as", ACCOUNTANT)  # reading is for every role
    listed = cli("client", "list", "--as", ACCOUNTANT, "--json")
    assert text.code == listed.code == 0, (text.err, listed.err)
    lines = text.out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["legacy", "reports"]
    assert lines[0].startswith("legacy: tenants acme; networks 10.9.0.0/16; added ")
    assert lines[1].startswith("reports: all tenants; networks none; added ")
    data = json.loads(listed.out)
    assert [(c["client"], c["all_tenants"], c["tenants"], c["networks"]) for c in data] == [
        ("legacy", False, ["acme"], ["10.9.0.0/16"]), ("reports", True, [], [])]
    assert all(set(c) == {"client", "all_tenants", "tenants", "networks", "created_at"} for c in data)
    hashed = stored_client(env, "reports").secret_hash
    assert added["secret"] not in text.out + listed.out and hashed not in text.out + listed.out
    assert state(env).without_audit() == before.without_audit()


def test_a_scoped_user_lists_and_removes_only_clients_of_its_own_tenants(cli: Cli, env: Path) -> None:
    assert cli("user", "add", "sam", "--role", "admin", "--tenant", "beta", "--as", OWNER).code == 0
    assert cli("client", "add", "beta-app", "--tenant", "beta", "--as", OWNER).code == 0
    assert cli("client", "add", "pair", "--tenant", "acme", "beta", "--as", OWNER).code == 0
    assert cli("client", "list", "--as", "sam").out.split(":")[0] == "beta-app"
    before = state(env)
    # Out of its scope, the client is answered as one that does not exist (as a tenant would be): audited.
    assert_one_line_error(cli("client", "remove", "pair", "--as", "sam"), 2, "NAME: no client 'pair'")
    assert state(env).without_audit() == before.without_audit()
    assert cli("client", "remove", "beta-app", "--as", "sam").code == 0
    store = open_store(env)
    try:
        names = [client.name for client in store.list_clients()]
        entries = store.list_audit()[-2:]
    finally:
        store.close()
    assert names == ["legacy", "pair"]
    assert [(e.actor, e.action, e.tenant, e.outcome) for e in entries] == [
        ("sam", "client.remove", None, "denied"), ("sam", "client.remove", "beta", "done")]


def test_remove_takes_the_client_away_and_audits_it(cli: Cli, env: Path) -> None:
    result = cli("client", "remove", "legacy", "--as", ADMIN)
    assert result.code == 0, result.err
    assert result.out.startswith("client legacy removed: its secret and networks no longer send; a running "
                                 "relay refuses them within ")
    assert json.loads(cli("client", "list", "--as", ADMIN, "--json").out) == []
    store = open_store(env)
    try:
        entry = store.list_audit()[-1]
    finally:
        store.close()
    assert (entry.actor, entry.action, entry.tenant, entry.outcome) == (ADMIN, "client.remove", "acme", "done")
    assert entry.detail == "removed client 'legacy' (tenants acme; networks 10.9.0.0/16)"
    assert_one_line_error(cli("client", "remove", "legacy", "--as", ADMIN), 2, "NAME: no client 'legacy'")


@pytest.mark.parametrize(("who", "code", "words"), [(ACCOUNTANT, 3, "permission denied"),
                                                    ("mallory", 3, "mallory"),
                                                    (OWNER, 2, "NAME")])
def test_remove_refused_changes_nothing(cli: Cli, env: Path, who: str, code: int, words: str) -> None:
    name = "Legacy" if who == OWNER else "legacy"  # the owner may, but names no valid client
    before = state(env)
    assert_one_line_error(cli("client", "remove", name, "--as", who), code, words)
    assert state(env).without_audit() == before.without_audit()
    assert stored_client(env, "legacy").networks == ("10.9.0.0/16",)
