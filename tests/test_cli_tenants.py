"""`relay-admin tenant set|show|list`: keys on disk, IDN, status rules, every bad input, roles, audit."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from admin.tenants import set_tenant
from relay.core.dkimkeys import public_key_b64
from relay.core.models import CheckResult, CheckStatus, KeyState, Sender, TenantStatus
from relay.core.store import StoreError, utcnow
from tests.conftest import CliResult
from tests.snapshot import (
    Stores,
    assert_one_line_error,
    build_acme_template,
    database_from,
    env_url,
    fail_inserts,
    open_store,
    restore_template,
    state,
)

Cli = Callable[..., CliResult]
OWNER, ACCOUNTANT = "alice", "carol"
ACME = {"name": "Acme", "email": "billing@acme.test", "domain": "acme.test"}


def tenant_set(cli: Cli, tenant: str, given: Mapping[str, str | None] | None = None, *,
               actor: str = OWNER, **fields: str | None) -> CliResult:
    """`tenant set` with `--field=value` (so values starting with '-' reach our checks)."""
    values = {**ACME, **(given or {}), **fields}
    args = ["tenant", "set", "--as", actor]
    args += [f"--{key.replace('_', '-')}={value}" for key, value in values.items() if value is not None]
    return cli(*args, "--json", "--", tenant)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, backend_stores: Stores) -> Path:
    return build_acme_template(tmp_path_factory.mktemp("tenants"), admin=False, stores=backend_stores)


# Each test's store starts as a copy of the template (one CREATE DATABASE ... TEMPLATE on PostgreSQL).
database_url = database_from("template")


@pytest.fixture
def env(template: Path, relay_env: Path) -> Path:
    """Users alice (owner) and carol (accountant), tenant acme with its key."""
    restore_template(template, relay_env)
    return relay_env


def show(cli: Cli, tenant: str, actor: str = OWNER) -> dict[str, object]:
    result = cli("tenant", "show", tenant, "--as", actor, "--json")
    assert result.code == 0, result.err
    data: dict[str, object] = json.loads(result.out)
    return data


def mark_verified(env: Path, tenant_id: str) -> None:
    store = open_store(env)
    try:
        tenant = store.get_tenant(tenant_id)
        assert tenant is not None
        now = utcnow()
        store.save_tenant(replace(tenant, status=TenantStatus.VERIFIED, verified_at=now,
                                  last_validated_at=now))
        store.save_checks(tenant_id, [CheckResult(
            purpose="dkim", type="TXT", name=f"s._domainkey.{tenant.sender.domain}",
            status=CheckStatus.OK, expected="v=DKIM1; k=rsa; p=...", found=("v=DKIM1; p=...",),
            diagnosis="", checked_at=now)])
    finally:
        store.close()


def test_new_tenant_key_on_disk_matches_published_key(cli: Cli, env: Path) -> None:
    result = tenant_set(cli, "beta", name="Beta BV", email="invoices@beta.test", domain="beta.test")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert (data["tenant"], data["status"], data["key_issued"]) == ("beta", "pending", True)
    store = open_store(env)
    try:
        (key,) = store.list_keys("beta")
    finally:
        store.close()
    assert (key.selector, key.state) == (data["selector"], KeyState.ACTIVE)
    path = env / "keys" / key.key_file
    assert path == env / "keys" / "beta" / f"{key.selector}.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((env / "keys").stat().st_mode) == 0o700
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048
    public_der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert base64.b64decode(key.public_key_b64) == public_der
    assert key.public_key_b64 == public_key_b64(private)


def test_idn_domain_is_stored_as_a_labels_and_shown_both_ways(cli: Cli, env: Path) -> None:
    result = tenant_set(cli, "shop", name="Bücherei Müller", email="Info@BÜCHER.test",
                        domain="Bücher.Test.")
    assert result.code == 0, result.err
    data = show(cli, "shop")
    assert data["domain"] == "xn--bcher-kva.test"
    assert data["domain_unicode"] == "bücher.test"
    assert data["email"] == "Info@xn--bcher-kva.test"  # local part kept as typed (RFC 5321 2.4)
    assert data["name"] == "Bücherei Müller"
    assert data["return_path_host"] == "bounce.xn--bcher-kva.test"
    text = cli("tenant", "show", "shop", "--as", OWNER)
    assert text.code == 0
    assert "xn--bcher-kva.test (bücher.test)" in text.out
    assert "Bücherei Müller" in text.out


def test_same_sender_again_keeps_key_and_status(cli: Cli, env: Path) -> None:
    before = show(cli, "acme")
    result = tenant_set(cli, "acme")
    assert result.code == 0, result.err
    assert json.loads(result.out)["key_issued"] is False
    after = show(cli, "acme")
    assert (after["selector"], after["status"]) == (before["selector"], "pending")
    assert sorted(p.name for p in (env / "keys" / "acme").iterdir()) == [f"{before['selector']}.pem"]


@pytest.mark.parametrize("change", [
    {"email": "invoices@acme.test"},
    {"email": "billing@mail.acme.test"},
    {"domain": "acme.example", "email": "billing@acme.example"},
    {"return_path": "mail-bounce"},
])
def test_changed_records_give_new_key_and_pending(cli: Cli, env: Path,
                                                 change: Mapping[str, str]) -> None:
    mark_verified(env, "acme")
    old = show(cli, "acme")
    assert old["status"] == "verified" and old["checks"]
    result = tenant_set(cli, "acme", change)
    assert result.code == 0, result.err
    new = show(cli, "acme")
    assert new["status"] == "pending"
    assert new["selector"] != old["selector"]
    assert new["verified_at"] is None and new["checks"] == []  # old checks judged old records
    store = open_store(env)
    try:
        keys = {k.selector: k for k in store.list_keys("acme")}
    finally:
        store.close()
    assert keys[str(new["selector"])].state is KeyState.ACTIVE
    if "domain" in change:
        # The old key was published under the old domain: it has no place in the new records.
        assert set(keys) == {new["selector"]}
        assert not (env / "keys" / "acme" / f"{old['selector']}.pem").exists()
        return
    assert keys[str(old["selector"])].state is KeyState.RETIRING
    assert keys[str(old["selector"])].remove_after is not None
    for key in keys.values():  # the retiring key stays on disk for in-flight verification
        assert (env / "keys" / key.key_file).is_file()


def test_name_only_change_keeps_verified_status_and_key(cli: Cli, env: Path) -> None:
    mark_verified(env, "acme")
    old = show(cli, "acme")
    result = tenant_set(cli, "acme", name='Acme "Finance" = Ακμή')
    assert result.code == 0, result.err
    new = show(cli, "acme")
    assert new["name"] == 'Acme "Finance" = Ακμή'
    assert (new["status"], new["selector"]) == ("verified", old["selector"])
    assert new["verified_at"] == old["verified_at"] and new["checks"] == old["checks"]


def test_omitted_return_path_keeps_the_tenants_label(cli: Cli, env: Path) -> None:
    assert tenant_set(cli, "acme", return_path="mb").code == 0
    selector = show(cli, "acme")["selector"]
    assert tenant_set(cli, "acme", name="Acme Two").code == 0
    data = show(cli, "acme")
    assert (data["return_path"], data["selector"]) == ("mb", selector)


def test_show_json_carries_the_latest_checks(cli: Cli, env: Path) -> None:
    mark_verified(env, "acme")
    data = show(cli, "acme", actor=ACCOUNTANT)
    assert set(data) >= {"tenant", "name", "email", "domain", "domain_unicode", "return_path",
                         "selector", "status", "created_at", "updated_at", "last_validated_at",
                         "verified_at", "checks"}
    checks = data["checks"]
    assert isinstance(checks, list)
    (check,) = checks
    assert check["purpose"] == "dkim" and check["status"] == "ok"
    assert check["found"] == ["v=DKIM1; p=..."]
    assert set(check) == {"purpose", "type", "name", "status", "expected", "found", "diagnosis",
                          "checked_at"}


def test_list_json_and_text(cli: Cli, env: Path) -> None:
    assert tenant_set(cli, "shop", name="Shop", email="a@bücher.test", domain="bücher.test").code == 0
    result = cli("tenant", "list", "--as", ACCOUNTANT, "--json")
    assert result.code == 0, result.err
    items = json.loads(result.out)
    assert [i["tenant"] for i in items] == ["acme", "shop"]
    assert all("checks" not in i for i in items)
    assert items[1]["domain_unicode"] == "bücher.test"
    shown = [json.loads(cli("tenant", "show", t, "--as", ACCOUNTANT, "--json").out) for t in ("acme", "shop")]
    assert [i["selector"] for i in items] == [s["selector"] for s in shown]  # each tenant's own key
    assert items[0]["selector"] != items[1]["selector"]
    text = cli("tenant", "list", "--as", ACCOUNTANT)
    assert text.code == 0 and "acme" in text.out and "xn--bcher-kva.test (bücher.test)" in text.out


def test_unknown_tenant_show_is_usage_error(cli: Cli, env: Path) -> None:
    assert_one_line_error(cli("tenant", "show", "nope", "--as", OWNER), 2, "nope")


BAD_INPUTS: list[tuple[str, Mapping[str, str | None], str]] = [
    *[(tenant, {}, "TENANT") for tenant in
      ["Acme", "-acme", ".acme", "ac me", "a" * 64, "", "ac/me", "ac\nme"]],
    *[("acme", {"name": name}, "--name") for name in
      ["Acme\r\nBcc: x@evil.test", "Acme\n", "Acme\r", "Acme\x00", "Ac\x1b[31mme", "Acme\x7f",
       "Acme\u2028", "Acme\u202e", "x" * 101, "", "   "]],
    *[("acme", {"email": email}, "--email") for email in
      ["billing", "billing@", "@acme.test", "bil ling@acme.test", "bil..ling@acme.test",
       ".billing@acme.test", "billing.@acme.test", "jürgen@acme.test", '"billing"@acme.test',
       "b(c)@acme.test", "a" * 65 + "@acme.test", "billing@acme.test\r\n",
       "billing@acme.test\nBcc: x@evil.test", "billing@-acme.test", "billing@acme..test",
       "billing@[127.0.0.1]", "billing@acme_x.test", "billing@acme"]],
    *[("acme", {"domain": domain}, "--domain") for domain in
      ["acme", "acme..test", "-acme.test", "acme-.test", "a_b.test", "acme.test:25", "x" * 64 + ".test",
       "1.2.3.4", "acme .test", "xn--zz.test", "ac\nme.test", "", ".", "*.acme.test", "ab--cd.test",
       ".".join(["a" * 60] * 4) + ".test"]],  # too long for the DKIM name below it
    # the address's domain must be the domain or below it
    ("acme", {"email": "billing@other.test"}, "--email"),
    ("acme", {"email": "billing@notacme.test"}, "--email"),
    ("acme", {"domain": "mail.acme.test"}, "--email"),
    *[("acme", {"return_path": label}, "--return-path") for label in
      ["_dmarc", "s1._domainkey", "x_domainkey", "a.b", "-x", "x-", "bad label", "x" * 64, "", "ü",
       "bounce\n"]],
    # the return-path CNAME cannot sit at the address's own domain
    ("acme", {"email": "billing@bounce.acme.test"}, "--return-path"),
    ("acme", {"email": "billing@mb.acme.test", "return_path": "MB"}, "--return-path"),
    # missing fields
    *[("acme", {field: None}, f"--{field}") for field in ("name", "email", "domain")],
]


# Each field check on the existing tenant and on a new one (which must not get a key either).
BAD_CASES = BAD_INPUTS + [("newco", f, field) for t, f, field in BAD_INPUTS if t == "acme"]


@pytest.mark.parametrize(("tenant", "fields", "field"), BAD_CASES)
def test_bad_input_exits_2_naming_the_field_and_changes_nothing(
    cli: Cli, env: Path, tenant: str, fields: Mapping[str, str | None], field: str,
) -> None:
    before = state(env)
    result = tenant_set(cli, tenant, fields)
    assert_one_line_error(result, 2, field)
    if None not in fields.values():  # our checks lead with the field; argparse says "required"
        assert result.err.startswith(f"relay-admin: {field}: ")
    assert state(env) == before


def test_accountant_may_not_set_but_may_look(cli: Cli, env: Path) -> None:
    before = state(env)
    for tenant in ("acme", "newco"):
        assert_one_line_error(tenant_set(cli, tenant, actor=ACCOUNTANT, name="Taken over"), 3,
                              "permission denied")
    assert state(env).without_audit() == before.without_audit()
    store = open_store(env)
    try:
        denied = [(a.actor, a.action, a.tenant, a.outcome) for a in store.list_audit()][-2:]
    finally:
        store.close()
    assert denied == [(ACCOUNTANT, "tenant.set", "acme", "denied"),
                      (ACCOUNTANT, "tenant.set", "newco", "denied")]
    assert show(cli, "acme", actor=ACCOUNTANT)["name"] == "Acme"
    assert cli("tenant", "list", "--as", ACCOUNTANT).code == 0


def test_unknown_acting_user_is_denied(cli: Cli, env: Path) -> None:
    before = state(env)
    assert_one_line_error(tenant_set(cli, "acme", actor="mallory", name="X"), 3, "mallory")
    assert state(env).without_audit() == before.without_audit()
    assert_one_line_error(cli("tenant", "show", "acme", "--as", "mallory"), 3, "mallory")


def test_no_acting_user_is_usage_error(cli: Cli, env: Path) -> None:
    before = state(env)
    result = cli("tenant", "set", "acme", "--name", "X", "--email", "billing@acme.test",
                 "--domain", "acme.test")
    assert_one_line_error(result, 2, "--as")
    assert state(env) == before


@pytest.mark.parametrize("tenant_id", ["acme", "newco"])
def test_failed_store_write_leaves_no_key_file_and_no_change(env: Path, tenant_id: str) -> None:
    # A real failure inside the real store: a trigger makes the audit insert (the last write) fail.
    fail_inserts(env_url(), "audit")
    before = state(env)
    store = open_store(env)
    try:
        sender = Sender(name="Acme", email="new@acme.test", domain="acme.test")
        with pytest.raises(StoreError, match="injected failure"):
            set_tenant(store, env / "keys", tenant_id, sender, actor=OWNER)
    finally:
        store.close()
    assert state(env) == before


def test_audit_log_has_who_when_what_for_changes_and_denials(cli: Cli, env: Path) -> None:
    start = utcnow()
    assert tenant_set(cli, "acme", name="Acme Renamed").code == 0
    assert tenant_set(cli, "acme", email="post@acme.test").code == 0
    assert tenant_set(cli, "acme", actor=ACCOUNTANT).code == 3
    store = open_store(env)
    try:
        entries = store.list_audit("acme")
        new_selector = next(k.selector for k in store.list_keys("acme") if k.state is KeyState.ACTIVE)
    finally:
        store.close()
    created, renamed, changed, denied = entries  # the first is the template's creation
    assert (created.actor, created.action, created.outcome) == (OWNER, "tenant.set", "done")
    assert "created" in created.detail and "billing@acme.test" in created.detail
    assert renamed.actor == OWNER and "Acme Renamed" in renamed.detail
    assert "post@acme.test" in changed.detail and new_selector in changed.detail
    assert (denied.actor, denied.action, denied.outcome) == (ACCOUNTANT, "tenant.set", "denied")
    for entry in (renamed, changed, denied):
        assert entry.tenant == "acme"
        assert start <= entry.time <= utcnow()
