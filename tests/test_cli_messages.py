"""`relay-admin` messages a person understands: pasted URLs and From lines, one unknown-tenant line, refusals in words."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from admin.roles import RULES, refusal
from tests.conftest import CliResult
from tests.snapshot import (
    Stores,
    assert_one_line_error,
    build_acme_template,
    database_from,
    location,
    open_store,
    restore_template,
    state,
)

Cli = Callable[..., CliResult]
OWNER, ADMIN, ACCOUNTANT = "alice", "bob", "carol"
ACME = {"name": "Acme", "email": "billing@acme.test", "domain": "acme.test"}
# What a library says and a person should not have to read.
JARGON = ("Codepoint", "IDNA", "position", "Label", "A-label", "may not")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, backend_stores: Stores) -> Path:
    return build_acme_template(tmp_path_factory.mktemp("messages"), stores=backend_stores)


# Each test's store starts as a copy of the template (one CREATE DATABASE ... TEMPLATE on PostgreSQL).
database_url = database_from("template")


@pytest.fixture
def env(template: Path, relay_env: Path) -> Path:
    """Users alice (owner), bob (admin), carol (accountant); tenant acme."""
    restore_template(template, relay_env)
    return relay_env


def tenant_set(cli: Cli, *, actor: str = OWNER, **fields: str) -> CliResult:
    values = {**ACME, **fields}
    return cli("tenant", "set", "--as", actor, *(f"--{k}={v}" for k, v in values.items()), "--", "acme")


@pytest.mark.parametrize(("domain", "words"), [
    ("https://acme.test", "is a web address (URL); give only the domain, e.g. acme.test"),
    ("https://Acme.Test/contact", "give only the domain, e.g. acme.test"),
    ("acme.test/contact", "give only the domain, e.g. acme.test"),
    ("billing@acme.test", "is an e-mail address; give only the domain, e.g. acme.test"),
    ("acme.test:587", "has a port; give only the domain, e.g. acme.test"),
    ("acme .test", "contains a space"),
    ("acme.test\n", "contains U+000A"),
    ("a_b.test", "contains '_' (U+005F), which a domain name cannot have"),
    ("*.acme.test", "contains '*' (U+002A)"),
    ("acme.test..", "has an empty part"),
    ("acme..test", "has an empty part"),
    ("-acme.test", "starts or ends with '-'"),
    ("ab--cd.test", "'--' as 3rd and 4th character"),
    ("xn--zz.test", "not a valid encoded name"),
    ("x" * 64 + ".test", "longer than 63 characters"),
    ("a\u05d0.test", "cannot stand together"),
])
def test_domain_mistakes_are_told_in_plain_words(cli: Cli, env: Path, domain: str, words: str) -> None:
    before = state(env)
    result = tenant_set(cli, domain=domain)
    assert_one_line_error(result, 2, words)
    assert result.err.startswith("relay-admin: --domain: ")
    assert not [jargon for jargon in JARGON if jargon in result.err], result.err
    assert state(env) == before


@pytest.mark.parametrize("domain", [" acme.test ", "acme.test.", "ACME.test"])
def test_spaces_around_and_a_trailing_dot_are_forgiven(cli: Cli, env: Path, domain: str) -> None:
    result = tenant_set(cli, domain=domain, email="billing@acme.test")
    assert (result.code, result.err) == (0, "")
    assert "tenant acme unchanged" in result.out  # the very same sender as before


@pytest.mark.parametrize(("email", "words"), [
    ("Acme <billing@acme.test>", "put the name in --name and give only the address in --email, "
                                 "e.g. 'billing@acme.test'"),
    ('"Acme BV" <billing@acme.test>', "put the name in --name"),
    ("<billing@acme.test>", "without '<' and '>', e.g. 'billing@acme.test'"),
    ("mailto:billing@acme.test", "without 'mailto:'"),
])
def test_a_pasted_from_line_says_where_the_name_goes(cli: Cli, env: Path, email: str,
                                                     words: str) -> None:
    before = state(env)
    result = tenant_set(cli, email=email)
    assert_one_line_error(result, 2, words)
    assert result.err.startswith("relay-admin: --email: ")
    assert state(env) == before


@pytest.mark.parametrize(("args", "field"), [
    (["tenant", "show", "nope"], "TENANT"),
    (["records", "nope"], "TENANT"),
    (["export", "nope", "--output", "{tmp}/nope.xlsx"], "TENANT"),
    (["validate", "nope"], "TENANT"),
    (["send-test", "nope", "--to", "someone@example.test"], "TENANT"),
    (["client", "add", "svc", "--tenant", "acme", "nope"], "--tenant"),
], ids=lambda value: value if isinstance(value, str) else " ".join(value[:2]))
def test_an_unknown_tenant_is_one_sentence_everywhere(cli: Cli, env: Path, args: list[str],
                                                      field: str) -> None:
    before = state(env)
    result = cli(*(a.format(tmp=env) for a in args), "--as", OWNER)
    assert (result.code, result.out) == (2, "")
    assert result.err == (f"relay-admin: {field}: no tenant 'nope' in the store {location()}; "
                          "see `relay-admin tenant list`\n")
    assert state(env) == before
    assert not (env / "nope.xlsx").exists()


@pytest.mark.parametrize(("args", "action", "words"), [
    (["tenant", "set", "acme", "--name", "X", "--email", "billing@acme.test", "--domain", "acme.test"],
     "tenant.set", "only owners and admins can change a tenant's sender; "
                   "accountants can view the sender but not change it"),
    (["validate", "acme"], "validate", "only owners and admins can validate a tenant's DNS"),
    (["client", "add", "svc", "--tenant", "acme"], "client.add", "only owners and admins can add clients"),
    (["send-test", "acme", "--to", "someone@example.test"], "send-test",
     "only owners and admins can send a test message"),
    (["user", "add", "eve", "--role", "accountant"], "user.add", "only owners and admins can add users"),
], ids=lambda value: value if isinstance(value, str) else " ".join(value[:2]))
def test_a_refusal_is_a_sentence_and_the_audit_keeps_the_action(cli: Cli, env: Path, args: list[str],
                                                               action: str, words: str) -> None:
    result = cli(*args, "--as", ACCOUNTANT)
    assert_one_line_error(result, 3, f"permission denied for carol (accountant): {words}")
    assert not [jargon for jargon in JARGON if jargon in result.err], result.err
    store = open_store(env)
    try:
        entry = store.list_audit()[-1]
    finally:
        store.close()
    assert (entry.actor, entry.action, entry.outcome) == (ACCOUNTANT, action, "denied")
    assert entry.detail == f"user 'carol' (accountant) may not {action}"  # for machines: the id


def test_only_an_owner_adds_an_owner(cli: Cli, env: Path) -> None:
    result = cli("user", "add", "mallory", "--role", "owner", "--as", ADMIN)
    assert_one_line_error(result, 3, "permission denied for bob (admin): only an owner can add an owner")
    store = open_store(env)
    try:
        entry = store.list_audit()[-1]
    finally:
        store.close()
    assert (entry.action, entry.outcome) == ("user.add", "denied")
    assert "may not add an owner" in entry.detail and "'mallory'" in entry.detail


@pytest.mark.parametrize("action", sorted(RULES))
def test_every_action_has_words_not_ids(action: str) -> None:
    words = refusal(action)
    assert words.startswith(("only ", "every role can ")), words
    assert not [a for a in RULES if ("." in a or "-" in a) and a in words], words
