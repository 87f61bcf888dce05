"""`relay-admin audit [TENANT] --json`: every change and every denied attempt, readable by every role."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

from tests.conftest import CliResult

Cli = Callable[..., CliResult]


def setup(cli: Cli) -> None:
    assert cli("user", "add", "olivia", "--role", "owner").code == 0
    assert cli("user", "add", "alex", "--role", "accountant", "--as", "olivia").code == 0
    for tenant in ("acme", "beta"):
        assert cli("tenant", "set", tenant, "--name", tenant.title(), "--email", f"billing@{tenant}.test",
                   "--domain", f"{tenant}.test", "--as", "olivia").code == 0


def test_audit_json_has_the_spec_shape_with_changes_and_denials(cli: Cli) -> None:
    setup(cli)
    denied = cli("validate", "acme", "--as", "alex")
    assert denied.code == 3
    result = cli("audit", "acme", "--json", "--as", "alex")  # an accountant may read it
    assert result.code == 0 and result.err == ""
    entries = json.loads(result.out)
    assert [(e["actor"], e["action"], e["outcome"]) for e in entries] == [
        ("olivia", "tenant.set", "done"), ("alex", "validate", "denied")]
    for entry in entries:
        assert set(entry) == {"time", "actor", "action", "tenant", "outcome", "detail"}
        assert entry["tenant"] == "acme" and datetime.fromisoformat(entry["time"]).tzinfo is not None
    assert entries[1]["detail"] == "user 'alex' (accountant) may not validate"


def test_audit_without_tenant_lists_everything_in_order(cli: Cli) -> None:
    setup(cli)
    assert cli("revalidate", "--all", "--as", "alex").code == 3
    entries = json.loads(cli("audit", "--json", "--as", "olivia").out)
    assert [(e["action"], e["tenant"], e["outcome"]) for e in entries] == [
        ("user.add", None, "done"), ("user.add", None, "done"), ("tenant.set", "acme", "done"),
        ("tenant.set", "beta", "done"), ("revalidate", None, "denied")]
    assert len(json.loads(cli("audit", "--json", "--as", "olivia").out)) == 5, "reading is not audited"


def test_audit_text_is_one_line_per_entry(cli: Cli) -> None:
    setup(cli)
    result = cli("audit", "beta", "--as", "alex")
    [line] = result.out.splitlines()
    time, actor, action, tenant, rest = line.split("  ", 4)
    assert datetime.fromisoformat(time) and (actor, action, tenant) == ("olivia", "tenant.set", "beta")
    assert rest.startswith("done: created: name='Beta' email=billing@beta.test")


def test_audit_of_an_unknown_tenant_is_a_usage_error(cli: Cli) -> None:
    setup(cli)
    result = cli("audit", "nobody", "--as", "alex")
    assert result.code == 2 and result.out == "" and "no tenant 'nobody'" in result.err


def test_audit_needs_a_known_user(cli: Cli) -> None:
    setup(cli)
    result = cli("audit", "--as", "mallory")
    assert result.code == 3
    last = json.loads(cli("audit", "--json", "--as", "olivia").out)[-1]
    assert (last["actor"], last["action"], last["outcome"]) == ("mallory", "audit", "denied")
