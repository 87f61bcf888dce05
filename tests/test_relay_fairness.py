"""The noisy-tenant fixes: a transaction line even when the client goes (R6), rDNS single-flight off the
shared pool, signing on its own threads, and the per-tenant gate on signing + delivery."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from relay.core.models import TenantStatus
from relay.core.replies import TENANT_BUSY, Reply, ReplyError
from relay.core.settings import Settings, SettingsError, load_settings
from relay.core.store import SqliteStore
from relay.policy.rdns import ReverseDns
from relay.smtp.fairness import TenantGate, gate_wait_budget
from relay.smtp.upstream import Envelope, Upstream, make_upstream
from tests.factories import make_tenant
from tests.relay_harness import (
    RawClient,
    RecordingUpstream,
    Script,
    ScriptedUpstream,
    add_client,
    eventually,
    make_settings,
    relay_running,
    send,
    smtp_upstream,
    values,
)

LOCAL_IP = "127.0.0.7"  # the network client's address: no AUTH, so nothing needs the default executor


def message(tenant: str, subject: str) -> bytes:
    return (f"X-Relay-Tenant: {tenant}\r\nFrom: app@platform.test\r\nTo: a@example.test\r\n"
            f"Subject: {subject}\r\n\r\nBody.\r\n").encode()


@dataclass
class World:
    settings: Settings
    store: SqliteStore
    secret: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("fairness")
    settings = make_settings(tmp)
    store = SqliteStore(settings.database_path)
    for tenant in ("acme", "beta"):
        make_tenant(store, settings, tenant, domain=f"{tenant}.test", status=TenantStatus.VERIFIED)
    secret = add_client(store, "multi", tenants=("acme", "beta"))
    add_client(store, "local", tenants=("acme",), networks=(f"{LOCAL_IP}/32",))
    yield World(settings, store, secret)
    store.close()


# ---------------------------------------------------------------- a held upstream


class _Holding:
    def __init__(self, upstream: "HeldUpstream") -> None:
        self._upstream = upstream

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        assert isinstance(envelope.original_content, bytes)
        self._upstream.subjects.append(values(envelope.original_content, "Subject")[0])
        await self._upstream.release.wait()
        return "250 2.0.0 Ok: queued"


@dataclass
class HeldUpstream:
    """A real SMTP server that records each message's Subject at the dot, then holds the reply until
    `release` is set."""

    subjects: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> "HeldUpstream":
        handler = _Holding(self)
        self._server = await asyncio.get_running_loop().create_server(
            lambda: SMTP(handler, hostname="held.test", data_size_limit=None), "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self.release.set()
        self._server.close()


class GatedUpstream:
    """The real SMTP upstream behind a door the test opens: a delivery waits there outside the
    upstream's own time budget, so it can outlast a gate waiter's bound."""

    def __init__(self, inner: Upstream) -> None:
        self.inner = inner
        self.entered = asyncio.Event()
        self.open = asyncio.Event()

    async def deliver(self, envelope: Envelope, message: bytes) -> Reply:
        self.entered.set()
        await self.open.wait()
        return await self.inner.deliver(envelope, message)


# ---------------------------------------------------------------- 1. R6: the line is written on cancellation


async def test_client_gone_after_the_dot_is_logged_abandoned_with_message_id_and_hash(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    async with ScriptedUpstream(Script(after_dot="stall")) as upstream:
        settings = world.settings.model_copy(update={"upstream": smtp_upstream(upstream.port)})
        async with relay_running(settings, world.store) as relay:
            client = await RawClient.connect(relay)
            await client.start_mail("multi", world.secret)
            client.writer.write(message("acme", "gone") + b".\r\n")
            await client.writer.drain()
            await eventually(upstream.stalled.is_set)  # upstream has the whole message, no reply yet
            client.close()
            lines = await eventually(lambda: [r.getMessage() for r in caplog.records
                                              if "outcome=" in r.getMessage()])
    [line] = lines
    assert "outcome=abandoned" in line and "tenant=acme" in line, line
    assert upstream.data is not None
    sent = re.sub(rb"(?m)^\.", b"", upstream.data[:-3])
    found = re.search(rb"(?im)^message-id:\s*(.+?)\r\n", sent)
    assert found is not None
    assert f"message-id={found.group(1).decode()}" in line
    assert f"sha256={hashlib.sha256(sent).hexdigest()}" in line
    assert all(world.secret not in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- 2. rDNS single-flight, signing threads


async def test_rdns_concurrent_lookups_of_one_address_share_one_resolver_call() -> None:
    calls: list[str] = []
    threads: list[str] = []
    release = threading.Event()

    def resolve(ip: str) -> str | None:
        calls.append(ip)
        threads.append(threading.current_thread().name)
        release.wait(10)
        return "host.example.test"

    rdns = ReverseDns(resolve=resolve, timeout=10)
    try:
        waiters = [asyncio.create_task(rdns.lookup("192.0.2.9")) for _ in range(50)]
        await eventually(lambda: calls)
        release.set()
        names = await asyncio.gather(*waiters)
        assert await rdns.lookup("192.0.2.9") == "host.example.test"  # from the cache
    finally:
        rdns.close()
    assert names == ["host.example.test"] * 50
    assert calls == ["192.0.2.9"]
    assert threads[0].startswith("relay-rdns"), "not the loop's default executor"


async def test_rdns_waiter_gives_up_but_the_lingering_call_still_fills_the_cache() -> None:
    release = threading.Event()
    calls: list[str] = []

    def resolve(ip: str) -> str | None:
        calls.append(ip)
        release.wait(10)
        return "late.example.test"

    rdns = ReverseDns(resolve=resolve, timeout=0.05)
    try:
        assert await rdns.lookup("192.0.2.10") is None
        release.set()
        assert await eventually(lambda: rdns.lookup("192.0.2.10")) == "late.example.test"
    finally:
        rdns.close()
    assert calls == ["192.0.2.10"]


async def test_signing_does_not_wait_for_a_full_default_executor(world: World) -> None:
    async with RecordingUpstream() as upstream:
        settings = world.settings.model_copy(update={"upstream": smtp_upstream(upstream.port)})
        async with relay_running(settings, world.store) as relay:
            loop = asyncio.get_running_loop()
            blocker, release = ThreadPoolExecutor(max_workers=1), threading.Event()
            loop.set_default_executor(blocker)
            started = threading.Event()

            def occupy() -> None:
                started.set()
                release.wait(30)

            occupied = loop.run_in_executor(None, occupy)
            try:
                await eventually(started.is_set)  # the default executor's only thread is taken
                reader, writer = await asyncio.open_connection(*relay.address, local_addr=(LOCAL_IP, 0))
                client = RawClient(reader, writer)
                await client.reply()
                for text in ("EHLO local.test", "MAIL FROM:<app@platform.test>", "RCPT TO:<a@example.test>"):
                    assert (await client.command(text))[0] == 250, text
                assert (await client.command("DATA"))[0] == 354
                code, text = await client.command((message("acme", "busy pool") + b".").decode())
                client.close()
                assert not occupied.done(), "the default executor stayed blocked throughout"
            finally:
                release.set()
                await occupied
    assert code == 250, text
    assert values(upstream.only.data, "DKIM-Signature")


# ---------------------------------------------------------------- 3. the per-tenant gate


async def test_one_in_flight_per_tenant_holds_the_second_of_a_tenant_not_another_tenant(world: World) -> None:
    async with HeldUpstream() as upstream:
        settings = world.settings.model_copy(update={
            "upstream": smtp_upstream(upstream.port), "max_inflight_per_tenant": 1})
        async with relay_running(settings, world.store) as relay:
            gate = relay.pipeline.gate

            def sending(tenant: str, subject: str) -> asyncio.Task[object]:
                return asyncio.create_task(send(relay, message(tenant, subject), user="multi", secret=world.secret))

            first = sending("acme", "acme-1")
            await eventually(lambda: upstream.subjects == ["acme-1"])
            second = sending("acme", "acme-2")
            await eventually(lambda: gate.users("acme") == 2)  # waiting its turn at the gate
            other = sending("beta", "beta-1")
            await eventually(lambda: "beta-1" in upstream.subjects)
            assert upstream.subjects == ["acme-1", "beta-1"], "acme-2 must not reach upstream yet"
            upstream.release.set()
            outcomes = await asyncio.gather(first, second, other)
            assert upstream.subjects == ["acme-1", "beta-1", "acme-2"]
            assert len(gate) == 0, "idle tenants are dropped from the gate"
    assert [getattr(o, "code") for o in outcomes] == [250, 250, 250], outcomes


async def test_a_waiter_beyond_the_bound_gets_451_4_7_0_and_the_holder_still_delivers(world: World) -> None:
    async with RecordingUpstream() as recording:
        settings = world.settings.model_copy(update={
            "upstream": smtp_upstream(recording.port), "max_inflight_per_tenant": 1, "upstream_timeout": 0.2})
        gated = GatedUpstream(make_upstream(settings))
        async with relay_running(settings, world.store, upstream=gated) as relay:
            first = asyncio.create_task(send(relay, message("acme", "holder"), user="multi", secret=world.secret))
            await eventually(gated.entered.is_set)
            refused = await send(relay, message("acme", "waiter"), user="multi", secret=world.secret)
            gated.open.set()
            delivered = await first
            assert len(relay.pipeline.gate) == 0
    assert (refused.code, refused.text.split()[0]) == (TENANT_BUSY.code, "4.7.0"), refused
    assert "in flight for this tenant" in refused.text
    assert delivered.code == 250
    assert [values(m.data, "Subject") for m in recording.messages] == [["holder"]]


async def test_a_client_gone_while_waiting_at_the_gate_is_abandoned_without_a_hash(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    async with HeldUpstream() as upstream:
        settings = world.settings.model_copy(update={
            "upstream": smtp_upstream(upstream.port), "max_inflight_per_tenant": 1})
        async with relay_running(settings, world.store) as relay:
            first = asyncio.create_task(send(relay, message("acme", "held"), user="multi", secret=world.secret))
            await eventually(lambda: upstream.subjects == ["held"])
            client = await RawClient.connect(relay)
            await client.start_mail("multi", world.secret)
            client.writer.write(message("acme", "waiting") + b".\r\n")
            await eventually(lambda: relay.pipeline.gate.users("acme") == 2)
            client.close()
            lines = await eventually(lambda: [r.getMessage() for r in caplog.records
                                              if "outcome=abandoned" in r.getMessage()])
            assert relay.pipeline.gate.users("acme") == 1, "the waiter left the gate"
            upstream.release.set()
            assert (await first).code == 250
    [line] = lines
    assert "sha256=" not in line and "message-id=" not in line, line
    assert upstream.subjects == ["held"]


async def test_gate_waiters_take_turns_in_arrival_order() -> None:
    gate, order = TenantGate(1), []
    release = asyncio.Event()

    async def one(name: str) -> None:
        async with gate.turn("acme", wait=10):
            order.append(name)
            await release.wait()

    tasks = [asyncio.create_task(one("first"))]
    await eventually(lambda: order)
    for name in ("second", "third", "fourth"):
        tasks.append(asyncio.create_task(one(name)))
        await eventually(lambda: gate.users("acme") == len(tasks))
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["first", "second", "third", "fourth"]
    assert len(gate) == 0


async def test_gate_timeout_is_a_reply_error_and_leaves_no_slot() -> None:
    gate = TenantGate(1)
    async with gate.turn("acme", wait=1):
        with pytest.raises(ReplyError) as caught:
            async with gate.turn("acme", wait=0.01):
                pytest.fail("the second turn must not be given")
        assert gate.users("acme") == 1
    assert caught.value.reply == TENANT_BUSY and str(caught.value.reply).startswith("451 4.7.0 ")
    assert len(gate) == 0


def test_gate_wait_keeps_within_the_session_timeout(tmp_path: Path) -> None:
    assert gate_wait_budget(make_settings(tmp_path, upstream_timeout=5.0, session_timeout=15.0)) == 5.0
    # R5: waiting plus the upstream exchange must end before the client's session does.
    assert gate_wait_budget(make_settings(tmp_path, upstream_timeout=200.0, session_timeout=300.0)) == 100.0


def test_max_inflight_per_tenant_setting(relay_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().max_inflight_per_tenant == 4
    monkeypatch.setenv("RELAY_MAX_INFLIGHT_PER_TENANT", "2")
    assert load_settings().max_inflight_per_tenant == 2
    monkeypatch.setenv("RELAY_MAX_INFLIGHT_PER_TENANT", "0")
    with pytest.raises(SettingsError, match=r"^RELAY_MAX_INFLIGHT_PER_TENANT: .*greater than or equal to 1"):
        load_settings()
