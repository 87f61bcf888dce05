"""Scope: a user added with `--tenant` sees and acts on those tenants only, and nothing else exists for it.

Every command that names a tenant answers a scoped user about a tenant outside its scope word for word
as about a tenant that does not exist (exit 2), and audits the attempt as denied.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.core.models import Role
from tests.conftest import CliResult
from tests.snapshot import (
    Stores,
    assert_one_line_error,
    build_template,
    database_from,
    location,
    open_store,
    restore_template,
    state,
)

Cli = Callable[..., CliResult]
OWNER, STAFF, ADMIN, ACCOUNTANT = "alice", "olga", "dana", "carl"  # dana and carl: acme only


def _tenant(tenant_id: str) -> list[str]:
    return ["tenant", "set", tenant_id, "--name", tenant_id.title(), "--email", f"billing@{tenant_id}.test",
            "--domain", f"{tenant_id}.test", "--as", OWNER]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, backend_stores: Stores) -> Path:
    return build_template(tmp_path_factory.mktemp("scope"), [
        ["user", "add", OWNER, "--role", "owner"],
        _tenant("acme"),
        _tenant("beta"),
        ["user", "add", STAFF, "--role", "admin", "--as", OWNER],
        ["user", "add", ADMIN, "--role", "admin", "--tenant", "acme", "--as", OWNER],
        ["user", "add", ACCOUNTANT, "--role", "accountant", "--tenant", "acme", "--as", ADMIN],
    ], backend_stores)


# Each test's store starts as a copy of the template (one CREATE DATABASE ... TEMPLATE on PostgreSQL).
database_url = database_from("template")


@pytest.fixture
def env(template: Path, relay_env: Path) -> Path:
    """alice (owner), olga (admin, every tenant), dana (admin, acme), carl (accountant, acme); acme, beta."""
    restore_template(template, relay_env)
    return relay_env


def _audit(env: Path) -> list[tuple[str, str, str | None, str]]:
    store = open_store(env)
    try:
        return [(a.actor, a.action, a.tenant, a.outcome) for a in store.list_audit()]
    finally:
        store.close()


def test_a_scoped_accountant_lists_only_its_tenant(cli: Cli, env: Path) -> None:
    result = cli("tenant", "list", "--json", "--as", ACCOUNTANT)
    assert result.code == 0, result.err
    assert [t["tenant"] for t in json.loads(result.out)] == ["acme"]
    text = cli("tenant", "list", "--as", ACCOUNTANT).out
    assert "acme" in text and "beta" not in text
    everyone = cli("tenant", "list", "--json", "--as", STAFF)
    assert [t["tenant"] for t in json.loads(everyone.out)] == ["acme", "beta"]


SET = ["--name", "X", "--email", "billing@{t}.test", "--domain", "{t}.test"]


@pytest.mark.parametrize(("actor", "args"), [
    (ACCOUNTANT, ["tenant", "show", "{t}"]),
    (ACCOUNTANT, ["records", "{t}"]),
    (ACCOUNTANT, ["records", "{t}", "--format", "bind"]),
    (ACCOUNTANT, ["export", "{t}", "--output", "{tmp}/out.xlsx"]),
    (ACCOUNTANT, ["audit", "{t}"]),
    (ACCOUNTANT, ["validate", "{t}"]),
    (ACCOUNTANT, ["tenant", "set", "{t}", *SET]),
    (ADMIN, ["tenant", "show", "{t}", "--json"]),
    (ADMIN, ["tenant", "set", "{t}", *SET]),
    (ADMIN, ["validate", "{t}"]),
    (ADMIN, ["revalidate", "{t}"]),
    (ADMIN, ["rotate-key", "{t}"]),
    (ADMIN, ["send-test", "{t}", "--to", "someone@example.test"]),
    (ADMIN, ["client", "add", "svc", "--tenant", "{t}"]),
    (ADMIN, ["client", "add", "svc", "--tenant", "acme", "{t}"]),
    (ADMIN, ["user", "add", "eve", "--role", "accountant", "--tenant", "{t}"]),
], ids=lambda value: value if isinstance(value, str) else " ".join(value[:2]))
def test_outside_the_scope_a_tenant_does_not_exist(cli: Cli, env: Path, actor: str, args: list[str]) -> None:
    before = state(env)

    def run(tenant: str) -> CliResult:
        return cli(*(a.format(t=tenant, tmp=env) for a in args), "--as", actor)

    other, missing = run("beta"), run("nope")
    assert (other.code, other.out) == (2, "")
    assert other.err.replace("'beta'", "'nope'") == missing.err, "scope never reveals another tenant"
    assert "no tenant 'beta'" in other.err and other.err.count("\n") == 1
    assert state(env).without_audit() == before.without_audit()
    assert not (env / "out.xlsx").exists()
    assert _audit(env)[-2:] == [(actor, _action(args), "beta", "denied"),
                                (actor, _action(args), "nope", "denied")]


def _action(args: list[str]) -> str:
    """The audit's name of the action a command line attempts."""
    names = {"tenant show": "tenant.show", "tenant set": "tenant.set", "client add": "client.add",
             "user add": "user.add", "rotate-key {t}": "key.rotate"}
    return names.get(" ".join(args[:2]), args[0])


def test_a_scoped_user_works_on_its_own_tenant(cli: Cli, env: Path) -> None:
    shown = cli("tenant", "show", "acme", "--json", "--as", ACCOUNTANT)
    assert shown.code == 0 and json.loads(shown.out)["tenant"] == "acme"
    assert cli("records", "acme", "--as", ACCOUNTANT).code == 0
    renamed = cli("tenant", "set", "acme", "--name", "Acme BV", "--email", "billing@acme.test",
                  "--domain", "acme.test", "--as", ADMIN)
    assert renamed.code == 0, renamed.err
    assert cli("client", "add", "svc", "--tenant", "acme", "--as", ADMIN).code == 0


def test_a_scoped_admin_never_creates_a_tenant(cli: Cli, env: Path) -> None:
    args = ["tenant", "set", "newco", "--name", "New", "--email", "billing@newco.test",
            "--domain", "newco.test"]
    before = state(env)
    result = cli(*args, "--as", ADMIN)
    assert_one_line_error(result, 2, f"TENANT: no tenant 'newco' in the store {location()}")
    assert state(env).without_audit() == before.without_audit()
    assert _audit(env)[-1] == (ADMIN, "tenant.set", "newco", "denied")
    created = cli(*args, "--as", STAFF)
    assert created.code == 0, created.err
    assert "tenant newco created" in created.out


def test_a_scoped_accountant_cannot_change_its_own_tenant(cli: Cli, env: Path) -> None:
    result = cli("tenant", "set", "acme", "--name", "X", "--email", "billing@acme.test",
                 "--domain", "acme.test", "--as", ACCOUNTANT)
    assert_one_line_error(result, 3, "permission denied for carl (accountant)")


def test_a_scoped_admin_adds_users_only_within_its_scope(cli: Cli, env: Path) -> None:
    before = state(env)
    owner = cli("user", "add", "eve", "--role", "owner", "--as", ADMIN)
    assert_one_line_error(owner, 3, "permission denied for dana (admin): only an owner can add an owner")
    everywhere = cli("user", "add", "eve", "--role", "accountant", "--as", ADMIN)
    assert_one_line_error(everywhere, 3, "an admin of some tenants adds users only for those tenants")
    assert state(env).without_audit() == before.without_audit()
    assert [entry[1:] for entry in _audit(env)[-2:]] == [("user.add", None, "denied")] * 2
    added = cli("user", "add", "eve", "--role", "accountant", "--tenant", "acme", "--json", "--as", ADMIN)
    assert added.code == 0, added.err
    assert json.loads(added.out)["tenants"] == ["acme"]
    store = open_store(env)
    try:
        eve = store.get_user("eve")
    finally:
        store.close()
    assert eve is not None and (eve.role, eve.tenants) == (Role.ACCOUNTANT, ("acme",))
    assert _audit(env)[-1] == (ADMIN, "user.add", "acme", "done")


def test_an_owner_is_never_scoped(cli: Cli, env: Path) -> None:
    before = state(env)
    result = cli("user", "add", "eve", "--role", "owner", "--tenant", "acme", "--as", OWNER)
    assert_one_line_error(result, 2, "--tenant: an owner is never scoped")
    assert state(env) == before


def test_tenant_of_a_new_user_must_exist(cli: Cli, env: Path) -> None:
    before = state(env)
    result = cli("user", "add", "eve", "--role", "admin", "--tenant", "acme", "nope", "--as", OWNER)
    assert_one_line_error(result, 2, f"--tenant: no tenant 'nope' in the store {location()}")
    assert state(env) == before


def test_staff_add_a_customer_admin_for_several_tenants(cli: Cli, env: Path) -> None:
    result = cli("user", "add", "eve", "--role", "admin", "--tenant", "beta", "acme", "--as", STAFF)
    assert (result.code, result.out) == (0, "user eve added as admin for tenants acme,beta\n")
    listed = cli("tenant", "list", "--json", "--as", "eve")
    assert [t["tenant"] for t in json.loads(listed.out)] == ["acme", "beta"]


def test_a_scoped_admin_adds_no_client_for_all_tenants(cli: Cli, env: Path) -> None:
    before = state(env)
    result = cli("client", "add", "svc", "--all-tenants", "--as", ADMIN)
    assert_one_line_error(result, 3, "permission denied for dana (admin): only platform staff "
                                     "(users added without --tenant) can add a client for all tenants")
    assert state(env).without_audit() == before.without_audit()
    assert _audit(env)[-1] == (ADMIN, "client.add", None, "denied")
    assert cli("client", "add", "svc", "--all-tenants", "--as", STAFF).code == 0


def test_audit_of_a_scoped_user_shows_its_tenants_entries_only(cli: Cli, env: Path) -> None:
    assert cli("tenant", "show", "beta", "--as", ADMIN).code == 2  # denied, filed under beta
    assert cli("validate", "acme", "--as", ACCOUNTANT).code == 3  # denied, filed under acme
    entries = json.loads(cli("audit", "--json", "--as", ACCOUNTANT).out)
    assert entries and {e["tenant"] for e in entries} == {"acme"}
    assert ("carl", "validate", "denied") in [(e["actor"], e["action"], e["outcome"]) for e in entries]
    everything = json.loads(cli("audit", "--json", "--as", OWNER).out)
    assert {"acme", "beta", None} <= {e["tenant"] for e in everything}
    denied = [e for e in everything if e["outcome"] == "denied" and e["tenant"] == "beta"]
    assert [(e["actor"], e["action"]) for e in denied] == [(ADMIN, "tenant.show")]
    assert denied[0]["detail"] == "user 'dana' has no tenant 'beta' in its scope"


def test_revalidate_all_of_a_scoped_admin_checks_its_tenants_only(
        cli: Cli, env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_NAMESERVERS", "127.0.0.1:9")  # nothing answers: "could not check", fast
    monkeypatch.setenv("RELAY_DNS_TIMEOUT", "1s")
    result = cli("revalidate", "--all", "--json", "--as", ADMIN)
    assert result.code in (0, 1), result.err
    assert [r["tenant"] for r in json.loads(result.out)] == ["acme"]


def test_an_unknown_acting_user_sees_no_tenant(cli: Cli, env: Path) -> None:
    result = cli("tenant", "show", "acme", "--as", "mallory")
    assert_one_line_error(result, 3, "no user 'mallory'")
