"""The running relay's reload line: written only when what the relay serves changed, saying what changed."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from relay.core.models import Client, DkimKey, KeyState, Sender, Tenant, TenantStatus
from relay.core.store import open_store, utcnow
from relay.policy.directory import Snapshot, changes
from tests.conftest import CliResult
from tests.factories import make_tenant
from tests.relay_harness import (
    RawClient,
    add_client,
    eventually,
    make_settings,
    relay_running,
    send,
)
from tests.snapshot import env_url

MESSAGE = b"From: app@platform.test\r\nTo: someone@example.test\r\nSubject: R\r\n\r\nBody.\r\n"

NOW = utcnow()


def tenant(tid: str, **fields: object) -> Tenant:
    base = Tenant(id=tid, sender=Sender(name=tid.title(), email=f"billing@{tid}.test", domain=f"{tid}.test"),
                  status=TenantStatus.PENDING, created_at=NOW, updated_at=NOW)
    return replace(base, **fields)


def client(name: str, **fields: object) -> Client:
    base = Client(name=name, secret_hash="h", all_tenants=False, tenants=("acme",), networks=(), created_at=NOW)
    return replace(base, **fields)


def snapshot(tenants: list[Tenant], clients: list[Client], generation: int = 1) -> Snapshot:
    return Snapshot(generation, {t.id: t for t in tenants}, {c.name: c for c in clients}, signers={})


def test_changes_names_what_the_relay_serves_and_nothing_else() -> None:
    old = snapshot([tenant("acme"), tenant("beta")], [client("billing")], generation=1)
    later = NOW.replace(year=NOW.year + 1)
    bookkeeping = snapshot([tenant("acme", last_validated_at=later, updated_at=later), tenant("beta")],
                           [client("billing")], generation=7)
    assert changes(old, bookkeeping) == []
    new = snapshot([tenant("acme", status=TenantStatus.VERIFIED), tenant("gamma")],
                   [client("billing", networks=("10.0.0.0/8",)), client("reports"), client("erp")])
    assert changes(old, new) == ["1 tenant added", "1 tenant changed", "1 tenant removed",
                                 "2 clients added", "1 client changed"]


def test_changes_sees_a_new_key_of_a_kept_tenant() -> None:
    key = DkimKey(tenant="acme", selector="s1", state=KeyState.ACTIVE, public_key_b64="p", key_file="acme/s1.pem",
                  created_at=NOW)
    old = replace(snapshot([tenant("acme")], []), keys={"acme": key}, stamps={"acme": None})
    new = replace(old, keys={"acme": replace(key, selector="s2", key_file="acme/s2.pem")})
    assert changes(old, new) == ["1 key changed"]


@pytest.fixture
def owner(cli: Callable[..., CliResult]) -> Callable[..., CliResult]:
    """The CLI with an owner `alice` and a tenant `acme` in the store; runs commands as alice."""
    assert cli("user", "add", "alice", "--role", "owner").code == 0
    assert cli("tenant", "set", "acme", "--name", "Acme", "--email", "billing@acme.test", "--domain", "acme.test",
               "--as", "alice").code == 0
    return lambda *args: cli(*args, "--as", "alice")


def _reloads(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("directory reloaded")]


async def test_admin_commands_that_change_nothing_served_log_no_reload(
        relay_env: Path, owner: Callable[..., CliResult], cli: Callable[..., CliResult],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    settings = make_settings(relay_env, database=env_url())
    reader = open_store(settings)
    try:
        async with relay_running(settings, None) as relay:  # the relay opens the store itself
            before = reader.generation()
            assert owner("tenant", "list").code == 0
            assert owner("records", "acme").code == 0
            assert cli("tenant", "show", "acme", "--as", "mallory").code == 3  # denied: an audit row
            assert owner("user", "add", "bob", "--role", "accountant").code == 0  # users are not served
            seen = reader.generation()
            assert seen == before, "nothing served changed: the relay has no reason to look"
            await eventually(lambda: relay.directory.current.generation >= seen)
            assert _reloads(caplog) == []
            assert owner("client", "add", "billing", "--tenant", "acme").code == 0
            await eventually(lambda: _reloads(caplog))
    finally:
        reader.close()
    assert _reloads(caplog) == ["directory reloaded: 1 client added"]


async def test_a_client_added_a_moment_ago_logs_in_at_once(tmp_path: Path, database_url: str) -> None:
    # The periodic poll never comes.
    settings = make_settings(tmp_path, database=database_url, reload_interval=3600.0)
    store = open_store(settings)
    make_tenant(store, settings, "acme")
    try:
        async with relay_running(settings, store) as relay:
            wrong = await send(relay, MESSAGE, user="late", secret="guess")
            secret = add_client(store, "late", tenants=("acme",))
            client = await RawClient.connect(relay)
            await client.command("EHLO raw.test")
            token = base64.b64encode(f"\0late\0{secret}".encode()).decode()
            code, _ = await client.command(f"AUTH PLAIN {token}")
            client.close()
    finally:
        store.close()
    assert wrong.code == 535
    assert code == 235
