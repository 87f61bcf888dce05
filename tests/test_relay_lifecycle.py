"""The relay's own re-validation (relay/service/revalidator.py) against NSD, and its snapshot read in one transaction.

A running relay re-checks its tenants every RELAY_REVALIDATE_INTERVAL: a removed DKIM record degrades
the tenant (mail still as itself), with RELAY_GRACE=0s fails it (mail as the platform sender), and the
restored record verifies it again; workers sharing one store never both check a tenant; each change is
POSTed signed; a store or DNS failure is logged and the loop goes on. Waits are bounded polls.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dkim
import pytest

from admin.tenants import set_tenant
from relay.core.models import DkimKey, Sender, Tenant, TenantStatus
from relay.core.settings import HostPort, Settings
from relay.core.store import Store, StoreError, open_store, utcnow
from relay.domains.dnscheck import DnsClient, DnsError, Failure, Finding, Question
from relay.domains.notify import verify_signature
from relay.domains.records import records_for
from relay.domains.revalidation import due_tenant_ids
from relay.policy.directory import Directory
from relay.service import revalidator as revalidator_module
from relay.service.relay import RunningRelay
from relay.service.revalidator import Revalidator, tick_for
from tests.factories import make_tenant
from tests.nsd import Nsd, zone_text
from tests.relay_harness import (
    RCPT,
    RecordingUpstream,
    RelayProcess,
    add_client,
    closed_port,
    eventually,
    make_settings,
    nsd_txt,
    process_env,
    relay_running,
    send,
    smtp_upstream,
    values,
)
from tests.snapshot import open_url_with, store_exists
from tests.test_notify import SECRET, Receiver
from tests.test_validate import RELAY_ZONE, txt

MESSAGE = b"From: app@platform.test\r\nTo: someone@example.test\r\nSubject: Invoice\r\n\r\nBody.\r\n"
TICK = 0.05  # the loop's tick in these tests; the interval is what decides when a tenant is due
WAIT = 20.0  # bound of every poll: DNS answers in milliseconds here, a check every interval


# ------------------------------------------------------------------ the world: store, NSD, tenants


def zone_of(tenant: Tenant, key: DkimKey, settings: Settings, *, dkim_record: bool = True, serial: int = 1) -> str:
    """The tenant's zone with the records the admin side issues (the DKIM one left out on request)."""
    lines = []
    for record in records_for(tenant.sender, [key], return_path_target=settings.return_path_target):
        if record.purpose == "dkim" and dkim_record:
            lines.append(f"{record.name}. 300 IN TXT {txt(record.value, 200)}")
        elif record.purpose == "return-path":
            lines.append(f"{record.name}. 300 IN CNAME {record.value}.")
    return zone_text(tenant.sender.domain, "\n".join(lines), serial=serial)


@dataclass
class World:
    """A store with `acme` and the platform sender (both verified), a client for acme, and NSD."""

    tmp: Path
    store: Store
    nsd: Nsd
    acme: tuple[Tenant, DkimKey]
    platform: tuple[Tenant, DkimKey]
    secret: str
    base: Settings

    def settings(self, **fields: Any) -> Settings:
        update: dict[str, Any] = {"revalidate_interval": 1.0, "grace": 3600.0, **fields}
        return self.base.model_copy(update=update)

    def status(self, tenant_id: str = "acme") -> TenantStatus:
        tenant = self.store.get_tenant(tenant_id)
        assert tenant is not None
        return tenant.status

    def serve_acme(self, *, dkim_record: bool, serial: int) -> None:
        tenant, key = self.acme
        self.nsd.update({"acme.test": zone_of(tenant, key, self.base, dkim_record=dkim_record, serial=serial)})

    def audit(self, action: str, tenant_id: str = "acme") -> list[str]:
        return [e.detail for e in self.store.list_audit(tenant_id) if e.action == action]


@pytest.fixture
def world(tmp_path: Path, database_url: str,
          nsd_factory: Callable[[dict[str, str]], Nsd]) -> Iterator[World]:
    settings = make_settings(tmp_path, database=database_url, platform_sender="platform", dns_timeout=2.0)
    store = open_store(settings)
    acme = make_tenant(store, settings, "acme", name="Acme BV", domain="acme.test", status=TenantStatus.VERIFIED)
    platform = make_tenant(store, settings, "platform", name="Accounton", email="noreply@accounton.test",
                           domain="accounton.test", status=TenantStatus.VERIFIED)
    secret = add_client(store, "billing", tenants=("acme",))
    nsd = nsd_factory({"relay.test": RELAY_ZONE, "acme.test": zone_of(*acme, settings),
                       "accounton.test": zone_of(*platform, settings)})
    base = settings.model_copy(update={"nameservers": [HostPort("127.0.0.1", nsd.port)]})
    yield World(tmp_path, store, nsd, acme, platform, secret, base)
    store.close()


async def until_status(world: World, status: TenantStatus, relay: RunningRelay | None = None) -> None:
    """Wait (bounded) until the store has `status` for acme, and the relay's snapshot serves it."""
    await eventually(lambda: world.status() is status, timeout=WAIT)
    if relay is not None:
        await eventually(lambda: relay.directory.current.tenants["acme"].status is status, timeout=WAIT)


def dkim_tags(data: bytes) -> dict[str, str]:
    [signature] = values(data, "DKIM-Signature")
    return {k.strip(): re.sub(r"\s+", "", v) for k, v in (t.split("=", 1) for t in signature.split(";") if "=" in t)}


@asynccontextmanager
async def relay_with_upstream(world: World, settings: Settings) -> AsyncIterator[tuple[RunningRelay, RecordingUpstream]]:
    async with RecordingUpstream() as upstream:
        settings = settings.model_copy(update={"upstream": smtp_upstream(upstream.port)})
        async with relay_running(settings, world.store, revalidate_tick=TICK) as relay:
            yield relay, upstream


async def sent(world: World, relay: RunningRelay, upstream: RecordingUpstream) -> bytes:
    """Send one message as acme's client; what upstream received."""
    before = len(upstream.messages)
    outcome = await send(relay, MESSAGE, user="billing", secret=world.secret)
    assert outcome.code == 250, outcome
    assert len(upstream.messages) == before + 1
    return upstream.messages[-1].data


# ------------------------------------------------------------------ (a) degraded, failed, restored


async def test_the_relay_degrades_fails_and_restores_a_tenant_on_its_own(world: World) -> None:
    acme, key = world.acme
    async with relay_with_upstream(world, world.settings()) as (relay, upstream):
        await eventually(lambda: world.audit("revalidate"), timeout=WAIT)  # its first check: all in order
        assert world.status() is TenantStatus.VERIFIED
        world.serve_acme(dkim_record=False, serial=2)  # IT removed the DKIM record
        await until_status(world, TenantStatus.DEGRADED, relay)
        data = await sent(world, relay, upstream)
        assert values(data, "From") == ['"Acme BV" <billing@acme.test>'], "degraded: still as itself"
        assert (dkim_tags(data)["d"], dkim_tags(data)["s"]) == ("acme.test", key.selector)

    async with relay_with_upstream(world, world.settings(grace=0.0)) as (relay, upstream):
        await until_status(world, TenantStatus.FAILED, relay)
        data = await sent(world, relay, upstream)
        assert values(data, "From") == ['"Acme BV via Accounton" <noreply@accounton.test>']
        assert values(data, "Reply-To") == ["<billing@acme.test>"]
        assert dkim_tags(data)["d"] == "accounton.test"
        assert dkim.verify(data, dnsfunc=nsd_txt(world.nsd.port)), "signed by the platform, verifiable"
        assert upstream.messages[-1].rcpt_tos == [RCPT]

        world.serve_acme(dkim_record=True, serial=3)  # IT put it back
        await until_status(world, TenantStatus.VERIFIED, relay)
        data = await sent(world, relay, upstream)
        assert values(data, "From") == ['"Acme BV" <billing@acme.test>']
        assert dkim_tags(data)["d"] == "acme.test"
        assert dkim.verify(data, dnsfunc=nsd_txt(world.nsd.port))

    changes = world.audit("status.change")
    assert [c.split(":")[0] for c in changes] == ["verified -> degraded", "degraded -> failed", "failed -> verified"]
    assert f"dkim TXT {key.selector}._domainkey.acme.test missing" in changes[0]
    assert world.status("platform") is TenantStatus.VERIFIED


async def test_status_changes_are_logged_on_the_lifecycle_logger(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    world.serve_acme(dkim_record=False, serial=2)
    async with relay_with_upstream(world, world.settings(grace=0.0)) as (relay, _):
        await until_status(world, TenantStatus.FAILED, relay)
    [line] = [r.getMessage() for r in caplog.records if r.name == "relay.lifecycle"]
    assert line.startswith("tenant acme: verified -> failed (dkim TXT ") and line.endswith(
        "; mail leaves as the platform sender"), line
    assert not [r for r in caplog.records if r.name == "relay.revalidator" and r.levelno >= logging.WARNING]


# ------------------------------------------------------------------ (b) one check per tenant


async def test_two_relays_on_one_store_check_each_tenant_once(
        world: World, nsd_factory: Callable[[dict[str, str]], Nsd]) -> None:
    zones = {"relay.test": RELAY_ZONE}
    for index in range(10):  # more than CONCURRENCY: later claims come after earlier checks ended
        tenant, key = make_tenant(world.store, world.base, f"t{index}", domain=f"t{index}.test",
                                  status=TenantStatus.VERIFIED)
        zones[tenant.sender.domain] = zone_of(tenant, key, world.base)
    nsd = nsd_factory(zones)  # NSD loads new zones only at start
    # Due once (never checked), then not for an hour.
    settings = world.settings(revalidate_interval=3600.0, nameservers=[HostPort("127.0.0.1", nsd.port)])
    first = Revalidator(settings, opener=lambda: open_store(settings), tick=TICK)
    second = Revalidator(settings, opener=lambda: open_store(settings), tick=TICK)
    try:
        for _ in range(3):  # both look at the same moment, with the same list of due tenants
            await asyncio.gather(first.tick_once(), second.tick_once())
    finally:
        await first.stop()
        await second.stop()
    tenants = [t.id for t in world.store.list_tenants()]
    assert {t: len(world.audit("revalidate", t)) for t in tenants} == {t: 1 for t in tenants}


async def test_a_tenant_checked_since_the_list_was_read_is_not_checked_again(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race the lease alone leaves open: B reads the due list, A checks a tenant and releases its
    lease, then B claims it; B must look again and find it no longer due."""
    settings = world.settings(revalidate_interval=3600.0)
    first = Revalidator(settings, opener=lambda: open_store(settings), tick=TICK)
    second = Revalidator(settings, opener=lambda: open_store(settings), tick=TICK)
    stale = due_tenant_ids(world.store, utcnow(), timedelta(hours=1))
    assert stale == ["acme", "platform"]
    try:
        assert {r.tenant for r in await first.tick_once()} == {"acme", "platform"}
        monkeypatch.setattr(revalidator_module, "due_tenant_ids", lambda *args: list(stale))
        assert await second.tick_once() == []
    finally:
        await first.stop()
        await second.stop()
    assert [len(world.audit("revalidate", t)) for t in stale] == [1, 1]
    assert world.store.acquire_lease("revalidate:acme", "other:1:x", utcnow() + timedelta(minutes=1), utcnow())


def test_two_worker_processes_never_check_one_tenant_twice_in_an_interval(world: World) -> None:
    interval = 2
    env = process_env(world.tmp, RELAY_DATABASE=world.base.database, RELAY_WORKERS="2",
                      RELAY_REVALIDATE_INTERVAL=f"{interval}s",
                      RELAY_NAMESERVERS=f"127.0.0.1:{world.nsd.port}", RELAY_PLATFORM_SENDER="platform")
    with RelayProcess(env) as relay:
        relay.banner()
        reader = open_store(world.base)
        try:
            checks = _wait_for_checks(reader, ("acme", "platform"), rounds=3)
        finally:
            reader.close()
        assert relay.stop() == 0
    for tenant_id, times in checks.items():
        gaps = [(later - earlier).total_seconds() for earlier, later in zip(times, times[1:])]
        assert all(gap >= interval for gap in gaps), (tenant_id, times)
    assert not [line for line in relay.lines() if "revalidat" in line and "failed" in line], relay.lines()


def _wait_for_checks(store: Store, tenants: Iterable[str], *, rounds: int) -> dict[str, list[Any]]:
    """The times of each tenant's `revalidate` entries, once each has `rounds` of them (bounded poll)."""
    deadline = time.monotonic() + 4 * WAIT
    while True:
        checks = {t: [e.time for e in store.list_audit(t) if e.action == "revalidate"] for t in tenants}
        if all(len(times) >= rounds for times in checks.values()):
            return checks
        assert time.monotonic() < deadline, checks
        time.sleep(0.05)  # a poll's pace, not a synchronisation: the condition above decides


# ------------------------------------------------------------------ (c) webhook


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


async def test_the_loops_status_change_is_posted_signed(world: World, receiver: Receiver) -> None:
    settings = world.settings(notify_url=receiver.url, notify_secret=SECRET)
    async with relay_with_upstream(world, settings):
        await eventually(lambda: world.audit("revalidate"), timeout=WAIT)
        world.serve_acme(dkim_record=False, serial=2)
        await eventually(lambda: receiver.requests, timeout=WAIT)
        # The receiver has it; the relay records that once the 2xx is back: wait for that before the stop
        # (stopped in between, it stays queued and is sent again: at least once, never lost).
        await eventually(lambda: world.store.due_notifications(utcnow() + timedelta(days=2)) == [], timeout=WAIT)
    [request] = receiver.requests
    headers = request.headers
    assert verify_signature(SECRET, headers["X-Relay-Timestamp"], request.body, headers["X-Relay-Signature"],
                            max_age=300)
    event = request.json
    assert (event["event"], event["tenant"], event["from"], event["to"]) == (
        "tenant.status", "acme", "verified", "degraded")


async def test_a_refused_notification_is_logged_without_secret_and_kept(
        world: World, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    receiver.statuses = [500]
    world.serve_acme(dkim_record=False, serial=2)
    settings = world.settings(notify_url=receiver.url, notify_secret=SECRET)
    async with relay_with_upstream(world, settings):
        await eventually(lambda: [r for r in caplog.records if "not delivered" in r.getMessage()], timeout=WAIT)
    [line] = [r.getMessage() for r in caplog.records if "not delivered" in r.getMessage()]
    assert receiver.server is not None
    assert line.startswith(f"notification 1 to http://127.0.0.1:{receiver.server.server_address[1]}/hooks/relay "
                           "not delivered (HTTP 500); next attempt after "), line
    assert "token=abc" not in caplog.text and SECRET not in caplog.text
    [queued] = world.store.due_notifications(utcnow() + timedelta(minutes=1))
    assert queued.attempts == 1


# ------------------------------------------------------------------ (d) failures the loop outlives


class FlakyStore:
    """A store whose first reads of the tenant list, or first lease writes, fail as a broken store's would
    (mixed into the backend's class by `flaky_store`)."""

    failures = 0
    lease_failures = 0

    def list_tenants(self) -> list[Tenant]:
        if self.failures > 0:
            self.failures -= 1
            raise StoreError("the store could not be read: database is locked")
        return super().list_tenants()  # type: ignore[misc, no-any-return]

    def acquire_lease(self, name: str, holder: str, until: datetime, now: datetime) -> bool:
        if self.lease_failures > 0:
            self.lease_failures -= 1
            raise StoreError("the store refused a write: attempt to write a readonly database")
        return super().acquire_lease(name, holder, until, now)  # type: ignore[misc, no-any-return]


def flaky_store(settings: Settings, *, failures: int = 0, lease_failures: int = 0) -> Store:
    store: Store = open_url_with(settings.database, FlakyStore, failures=failures, lease_failures=lease_failures)
    return store


class ScriptedDns(DnsClient):
    """Answers per `script` (`raise`, `servfail`), then as the real servers do."""

    def __init__(self, settings: Settings, script: list[str]) -> None:
        super().__init__(settings)
        self.script = script

    async def ask_all(self, questions: Iterable[Question]) -> dict[Question, Finding]:
        step = self.script.pop(0) if self.script else "real"
        if step == "raise":
            raise RuntimeError("resolver exploded")
        if step == "servfail":
            return {q: DnsError(q.name, q.rdtype, "127.0.0.1 answered SERVFAIL", Failure.SERVFAIL) for q in questions}
        return await super().ask_all(questions)


async def test_the_loop_outlives_store_and_dns_failures(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    world.serve_acme(dkim_record=False, serial=2)
    settings = world.settings()
    # Only acme is due, so the DNS script is played on its checks alone.
    world.store.save_lifecycle("platform", status=TenantStatus.VERIFIED, failing_since=None,
                               verified_at=utcnow(), last_validated_at=utcnow() + timedelta(days=1))
    revalidator = Revalidator(settings, opener=lambda: flaky_store(settings, failures=2), tick=TICK,
                              client=ScriptedDns(settings, ["raise", "raise", "servfail"]))
    revalidator.start()
    try:
        await until_status(world, TenantStatus.DEGRADED)
    finally:
        await revalidator.stop()
    assert world.audit("revalidate") == ["could not check", "not verified"], "SERVFAIL changed nothing"
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "relay.revalidator"]
    assert lines == [
        ("ERROR", f"revalidation failed, retrying every {TICK:g}s: StoreError: the store could not be read: "
                  "database is locked"),  # twice in a row, said once
        ("ERROR", "revalidation of tenant acme failed: RuntimeError: resolver exploded"),  # twice, said once
        ("INFO", "revalidation works again"),  # that tick itself went through
    ], lines
    assert all(r.exc_info is None for r in caplog.records), "no traceback"
    # Its leases were given back, the failed check's too: another process may check acme at once.
    assert world.store.acquire_lease("revalidate:acme", "other:1:x", utcnow() + timedelta(minutes=1), utcnow())


async def test_a_store_failure_of_every_tenant_is_said_once_for_the_tick(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    settings = world.settings()
    store = flaky_store(settings, lease_failures=2)  # both tenants' claims, in one tick
    revalidator = Revalidator(settings, opener=lambda: store, tick=TICK)
    try:
        await revalidator.tick_safely()
        assert world.audit("revalidate") == [], "nothing checked"
        assert {r.tenant for r in await revalidator.tick_once()} == {"acme", "platform"}
    finally:
        await revalidator.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "relay.revalidator"]
    assert lines == [f"revalidation failed, retrying every {TICK:g}s: StoreError: the store refused a write: "
                     "attempt to write a readonly database"], lines


async def test_the_loop_waits_for_a_store_that_does_not_exist_yet(tmp_path: Path, database_url: str) -> None:
    # Asked of a closed port, every question fails at once: the check is made, and changes nothing.
    settings = make_settings(tmp_path, database=database_url, revalidate_interval=1.0, dns_timeout=0.5,
                             nameservers=[HostPort("127.0.0.1", closed_port())])
    # The relay's own opener: StoreMissing while there is no store (an empty PostgreSQL database is none).
    revalidator = Revalidator(settings, opener=lambda: open_store(settings, create=False), tick=TICK)
    try:
        assert await revalidator.tick_once() == []
        assert not store_exists(database_url), "never created by the loop"
        store = open_store(settings)  # `relay-admin user add` creates it
        try:
            make_tenant(store, settings, "acme")
            [report] = await revalidator.tick_once()
            assert report.tenant == "acme" and not report.skipped
        finally:
            store.close()
    finally:
        await revalidator.stop()


def test_the_tick_is_a_quarter_of_the_interval_at_most_a_minute() -> None:
    assert tick_for(1.0) == 0.25 and tick_for(120.0) == 30.0 and tick_for(3600.0) == 60.0


# ------------------------------------------------------------------ (e) the snapshot is never torn


class TearingStore:
    """Right after the tenants are read, another process commits a change (once); mixed into the
    backend's class."""

    change: Callable[[], None] | None = None

    def list_tenants(self) -> list[Tenant]:
        tenants: list[Tenant] = super().list_tenants()  # type: ignore[misc]
        if self.change is not None:
            change, self.change = self.change, None
            change()
        return tenants


def test_the_snapshot_is_read_in_one_transaction(world: World) -> None:
    settings = world.base
    old_tenant, old_key = world.acme
    other = open_store(settings)  # the admin's own connection

    def tenant_set() -> None:
        """A new address: a new key signs from now on, the old one is kept as `retiring`."""
        sender = Sender(name="Acme BV", email="facturen@acme.test", domain="acme.test")
        set_tenant(other, settings.keys_dir, "acme", sender, actor="alice")

    store = open_url_with(settings.database, TearingStore, change=tenant_set)
    directory = Directory(store, keys_dir=settings.keys_dir, reload_interval=1.0)
    try:
        generation = store.generation()
        snapshot = directory.load()
        assert store.change is None, "the change was committed between the reads"
        new_keys = [k for k in other.list_keys("acme") if k.selector != old_key.selector]
        assert new_keys, "a new key is in the store"
        # All old: the sender and the signing key it was published with, and the generation of both.
        assert snapshot.tenants["acme"].sender == old_tenant.sender
        assert snapshot.keys["acme"].selector == old_key.selector
        assert snapshot.signer("acme").domain == "acme.test"
        assert snapshot.generation == generation
        assert snapshot.signer("acme").selector == old_key.selector
        # The next look sees all of the change.
        fresh = directory.load()
        assert fresh.generation > generation
        assert fresh.tenants["acme"].sender.email == "facturen@acme.test"
        assert fresh.tenants["acme"].status is TenantStatus.PENDING
        assert fresh.keys["acme"].selector == new_keys[-1].selector
        assert fresh.signer("acme").selector == new_keys[-1].selector
    finally:
        store.close()
        other.close()


def test_a_read_transaction_inside_a_write_transaction_joins_it(world: World) -> None:
    with world.store.transaction():
        world.store.save_lifecycle("acme", status=TenantStatus.DEGRADED, failing_since=utcnow(),
                                   verified_at=None, last_validated_at=utcnow())
        assert world.store.read_snapshot().tenants[0].status is TenantStatus.DEGRADED
    with world.store.transaction():  # the outer one committed, and the store takes the next one
        pass
    assert world.status() is TenantStatus.DEGRADED
