"""A whole key rotation against a real NSD: verified with key A, rotate-key issues B, B is published,
the validation that sees B makes it active and A retiring for RELAY_KEY_OVERLAP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from relay.core.models import DkimKey, KeyState, TenantStatus
from relay.core.settings import load_settings
from relay.core.store import utcnow
from relay.domains.records import in_lifecycle_order
from relay.domains.validation import validate_tenant
from relay.policy import directory
from tests.conftest import CliResult
from tests.nsd import Nsd, zone_text
from tests.snapshot import open_store

Cli = Callable[..., CliResult]
OWNER = "alice"
DOMAIN = "acme.test"
OVERLAP = timedelta(days=2)
# The platform's return-path target, served beside the tenant's zone (DNS.md).
RELAY_ZONE = zone_text("relay.test", 'bounces IN A 192.0.2.10\nbounces IN TXT "v=spf1 ip4:192.0.2.10 -all"')


@dataclass
class Rotation:
    """Tenant acme, verified with key A, during a rotation to key B (not yet published)."""

    cli: Cli
    env: Path
    nsd: Nsd
    a: str
    b: str

    def keys(self) -> list[DkimKey]:
        store = open_store(self.env)
        try:
            return in_lifecycle_order(store.list_keys("acme"))
        finally:
            store.close()

    def states(self) -> dict[str, KeyState]:
        return {key.selector: key.state for key in self.keys()}

    def status(self) -> TenantStatus:
        store = open_store(self.env)
        try:
            tenant = store.get_tenant("acme")
        finally:
            store.close()
        assert tenant is not None
        return tenant.status

    def publish(self, serial: int) -> None:
        """Serve exactly what `relay-admin records --format bind` lists now, as IT would."""
        self.nsd.update({DOMAIN: zone_text(DOMAIN, bind(self.cli), serial=serial)})

    def validate(self) -> None:
        """The validation itself (relay.domains.validation), as the CLI and the relay's re-checks run it."""
        store = open_store(self.env)
        try:
            asyncio.run(validate_tenant(store, load_settings(), "acme", actor=OWNER))
        finally:
            store.close()


def bind(cli: Cli) -> str:
    result = cli("records", "acme", "--format", "bind", "--as", OWNER)
    assert result.code == 0, result.err
    return result.out


def dkim_records(cli: Cli) -> list[dict[str, Any]]:
    result = cli("records", "acme", "--json", "--as", OWNER)
    assert result.code == 0, result.err
    return [r for r in json.loads(result.out) if r["purpose"] == "dkim"]


@pytest.fixture
def rotation(cli: Cli, relay_env: Path, monkeypatch: pytest.MonkeyPatch,
             nsd_factory: Callable[[dict[str, str]], Nsd]) -> Iterator[Rotation]:
    monkeypatch.setenv("RELAY_KEY_OVERLAP", "2d")
    assert cli("user", "add", OWNER, "--role", "owner").code == 0
    assert cli("tenant", "set", "acme", "--name", "Acme", "--email", f"billing@{DOMAIN}",
               "--domain", DOMAIN, "--as", OWNER).code == 0
    nsd = nsd_factory({"relay.test": RELAY_ZONE, DOMAIN: zone_text(DOMAIN, bind(cli))})
    monkeypatch.setenv("RELAY_NAMESERVERS", f"127.0.0.1:{nsd.port}")
    verified = cli("validate", "acme", "--as", OWNER)
    assert verified.code == 0, verified.out + verified.err
    (a,) = [r["name"].split(".")[0] for r in dkim_records(cli)]
    rotated = cli("rotate-key", "acme", "--as", OWNER, "--json")
    assert rotated.code == 0, rotated.err
    yield Rotation(cli, relay_env, nsd, a, json.loads(rotated.out)["selector"])


def test_until_b_is_seen_the_relay_keeps_signing_with_a(rotation: Rotation) -> None:
    a, b = rotation.a, rotation.b
    assert [(r["name"], r["state"]) for r in dkim_records(rotation.cli)] == [
        (f"{a}._domainkey.{DOMAIN}", "active"), (f"{b}._domainkey.{DOMAIN}", "next")]
    assert rotation.status() is TenantStatus.VERIFIED
    signing = directory.active_key(rotation.keys())
    assert signing is not None and signing.selector == a
    # A validation that does not see B (IT has not published it yet) changes no key.
    rotation.validate()
    assert rotation.states() == {a: KeyState.ACTIVE, b: KeyState.NEXT}
    assert rotation.status() is TenantStatus.VERIFIED


def test_the_validation_that_sees_b_switches_to_it(rotation: Rotation) -> None:
    a, b = rotation.a, rotation.b
    rotation.publish(serial=2)  # A and B, as `records` lists them during the rotation
    before = utcnow()
    rotation.validate()
    after = utcnow()
    keys = {key.selector: key for key in rotation.keys()}
    assert (keys[b].state, keys[a].state) == (KeyState.ACTIVE, KeyState.RETIRING)
    remove_after = keys[a].remove_after
    assert remove_after is not None and before + OVERLAP <= remove_after <= after + OVERLAP
    signing = directory.active_key(list(keys.values()))
    assert signing is not None and signing.selector == b
    assert rotation.status() is TenantStatus.VERIFIED
    old, new = dkim_records(rotation.cli)
    assert (old["state"], old["remove_after"], old["required"]) == ("retiring", remove_after.isoformat(),
                                                                    False)
    assert (new["name"], new["state"]) == (f"{b}._domainkey.{DOMAIN}", "active")
    # The next rotation may start now: no key waits to be seen any more.
    assert rotation.cli("rotate-key", "acme", "--as", OWNER).code == 0
