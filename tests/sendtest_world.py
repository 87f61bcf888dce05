"""What send-test's tests share: a store template with good, broken and unverified tenants, and the DNS
a receiver asks (NSD): each tenant's records as issued, the platform's return-path target with an SPF
record that authorises 127.0.0.1, DMARC p=reject, and the `test` zone itself, so that the DMARC tree
walk's `_dmarc.test` is NXDOMAIN rather than REFUSED (temperror)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.core.dkimkeys import generate_private_key, public_key_b64
from relay.core.models import DkimKey, Role, Tenant, TenantStatus, User
from relay.core.store import SqliteStore, utcnow
from tests.conftest import CliResult
from tests.factories import make_tenant
from tests.nsd import Nsd, zone_text
from tests.peers import require_binary
from tests.relay_harness import dkim_zone, make_settings
from tests.snapshot import Stores, database_from, on_backend, restore_template

Cli = Callable[..., CliResult]
OWNER, ACCOUNTANT = "alice", "carol"
RCPT = "someone@example.test"
STRANGER_IP = "203.0.113.9"  # not in the return-path target's SPF record
DMARC_REJECT = '_dmarc IN TXT "v=DMARC1; p=reject"'
# RELAY_RETURN_PATH_TARGET under tests (conftest.relay_env, relay_harness.make_settings).
PLATFORM_ZONE = zone_text("relay.test", 'bounces IN TXT "v=spf1 ip4:127.0.0.1 -all"')


@dataclass(frozen=True)
class World:
    """A store built once per module (RSA keys cost time), copied into each test's relay_env; NSD for it."""

    template: Path
    acme: tuple[Tenant, DkimKey]  # verified; DNS as issued
    broken: tuple[Tenant, DkimKey]  # verified; DNS publishes another key at its selector
    newco: tuple[Tenant, DkimKey]  # pending
    platform: tuple[Tenant, DkimKey]  # verified, the platform's own sender when configured
    nsd: Nsd

    @property
    def nameservers(self) -> str:
        return f"127.0.0.1:{self.nsd.port}"


def zones(good: list[tuple[Tenant, DkimKey]], broken: list[tuple[Tenant, DkimKey]],
          settings_dir: Path) -> dict[str, str]:
    """Zones for NSD: the good tenants' records as issued; the broken ones' DKIM record with a foreign key."""
    settings = make_settings(settings_dir)
    foreign = public_key_b64(generate_private_key())
    published = good + [(tenant, dataclasses.replace(key, public_key_b64=foreign)) for tenant, key in broken]
    served = {"test": zone_text("test", ""), "relay.test": PLATFORM_ZONE}
    for domain, text in dkim_zone(published, settings).items():
        served[domain] = text + DMARC_REJECT + "\n"
    return served


def build_world(tmp_path_factory: pytest.TempPathFactory, name: str, stores: Stores) -> Iterator[World]:
    """The module's World, its template on `stores`' backend; NSD stopped when the module is done."""
    require_binary("nsd", "nsd")  # fails under `make test`, skips under a bare pytest
    template = tmp_path_factory.mktemp(name)
    settings = make_settings(template)  # relay.db and keys/ where tests.snapshot expects them
    store = SqliteStore(settings.database_path)
    acme = make_tenant(store, settings, "acme", name="Acme Comptabilité", domain="acme.test",
                       status=TenantStatus.VERIFIED)
    broken = make_tenant(store, settings, "broken", name="Broken BV", domain="broken.test",
                         status=TenantStatus.VERIFIED)
    newco = make_tenant(store, settings, "newco", name="NewCo", domain="newco.test")
    platform = make_tenant(store, settings, "platform", name="Accounton", email="noreply@accounton.test",
                           domain="accounton.test", status=TenantStatus.VERIFIED)
    store.add_user(User(OWNER, Role.OWNER, utcnow()))
    store.add_user(User(ACCOUNTANT, Role.ACCOUNTANT, utcnow()))
    store.close()
    nsd_dir = tmp_path_factory.mktemp(f"{name}-nsd")
    nsd = Nsd(nsd_dir, zones([acme, newco, platform], [broken], template)).start()
    try:
        on_stores = on_backend(template, stores, tmp_path_factory.mktemp(f"{name}-{stores.backend}"))
        yield World(on_stores, acme, broken, newco, platform, nsd)
    finally:
        nsd.stop()


# Each test's store starts as a copy of the template (one CREATE DATABASE ... TEMPLATE on PostgreSQL);
# a module imports this with `env` (below).
database_url = database_from("world", lambda world: world.template)


@pytest.fixture
def env(world: World, relay_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """relay_env holding the module's tenants, keys and users (an outbox upstream under it); DNS is the
    world's NSD. The module defines the `world` fixture with `build_world`."""
    restore_template(world.template, relay_env)
    monkeypatch.setenv("RELAY_NAMESERVERS", world.nameservers)
    return relay_env


# The keys of `send-test --json`'s report (SPEC.md), in and out of process alike.
JSON_KEYS = {"tenant", "to", "mode", "relay", "accepted", "reply", "dkim", "spf", "dmarc", "verdict_unavailable",
             "from", "envelope_from", "signature", "message_id", "outbox_file", "transaction"}


def send_test(cli: Cli, tenant: str = "acme", to: str = RCPT, *extra: str, actor: str = OWNER) -> CliResult:
    # `--to=VALUE` so that values starting with '-' reach our checks, not argparse's.
    return cli("send-test", f"--to={to}", "--as", actor, *extra, "--", tenant)


def outbox(env: Path) -> list[Path]:
    """Everything in the outbox directory (temp files included)."""
    directory = env / "outbox"
    return sorted(directory.iterdir()) if directory.exists() else []


def check_lines(text: str) -> dict[str, str]:
    """The report's one line per check, by check name: {"DKIM": "DKIM   pass   d=...: ...", ...}."""
    return {line.split()[0]: line for line in text.splitlines() if line.split()[:1] in (["DKIM"], ["SPF"], ["DMARC"])}
