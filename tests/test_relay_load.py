"""Load, functionally (RELIABILITY.md, the Load class): many concurrent sessions, slow clients and a noisy
tenant change nothing about what is delivered. Latency is measured in bench/noisy.py, never asserted here."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dkim
import pytest

from relay.core.models import DkimKey, TenantStatus
from relay.core.settings import Settings
from relay.core.store import SqliteStore
from relay.service.relay import RunningRelay
from tests.factories import make_client, make_tenant
from tests.relay_harness import (
    RawClient,
    RecordingUpstream,
    Script,
    ScriptedUpstream,
    eventually,
    make_settings,
    relay_running,
    smtp_upstream,
    values,
)

# Each tenant's service is known by its loopback source address (`client add --network`): no AUTH, so
# no scrypt per session, and the relay tells the tenants apart by where a connection comes from.
NOISY_IP, QUIET_IP = "127.0.0.2", "127.0.0.3"
REFUSED_RCPT = "victim@refused.test"


@dataclass
class World:
    settings: Settings
    store: SqliteStore
    keys: dict[str, DkimKey]  # domain -> the active key the factory made


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("load")
    # Above the 100 sessions of one test from one address: this module is about concurrency, not limits.
    settings = make_settings(tmp, max_connections_per_ip=150)
    store = SqliteStore(settings.database_path)
    keys: dict[str, DkimKey] = {}
    for name, ip in (("noisy", NOISY_IP), ("quiet", QUIET_IP)):
        tenant, key = make_tenant(store, settings, name, name=f"{name.title()} Ltd", domain=f"{name}.test",
                                  status=TenantStatus.VERIFIED)
        keys[tenant.sender.domain] = key
        make_client(store, f"{name}-app", "scrypt$unused", tenants=(name,), networks=(f"{ip}/32",))
    yield World(settings, store, keys)
    store.close()


def fake_dns(keys: dict[str, DkimKey]) -> Callable[..., bytes | None]:
    """A dkimpy `dnsfunc` answering `<selector>._domainkey.<domain>` with the factory's public keys."""
    records = {f"{key.selector}._domainkey.{domain}": key.public_key_b64 for domain, key in keys.items()}

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        found = records.get(name.decode().rstrip("."))
        return f"v=DKIM1; k=rsa; p={found}".encode() if found else None

    return lookup


def body(tenant: str, n: int | str) -> bytes:
    return (f"From: app@platform.test\r\nTo: customer@dest.test\r\nSubject: {tenant} {n}\r\n\r\n"
            f"Message {n} of {tenant}.\r\n").encode()


async def at_data(relay: RunningRelay, source: str, rcpt: str = "customer@dest.test") -> RawClient:
    """A session from `source` (a network-bound client) taken up to the relay's 354."""
    reader, writer = await asyncio.open_connection(*relay.address, local_addr=(source, 0))
    client = RawClient(reader, writer)
    assert (await client.reply())[0] == 220
    for text, expected in (("EHLO load.test", 250), ("MAIL FROM:<app@platform.test>", 250),
                           (f"RCPT TO:<{rcpt}>", 250), ("DATA", 354)):
        code, reply = await client.command(text)
        assert code == expected, f"{text}: {code} {reply}"
    return client


async def warm(relay: RunningRelay, source: str, rcpt: str = "customer@dest.test") -> tuple[int, str]:
    """One message from `source` before a burst: the relay caches an address's PTR name (for Received)
    only once a lookup has finished, so a burst of first messages asks the resolver once per message,
    and a resolver that drops such a burst holds every DKIM signature up for its timeout (the thread
    pool is shared; bench/README.md, case (d)). That is latency, measured there, not asserted here."""
    return await finish(await at_data(relay, source, rcpt), body("warm-up", source))


async def finish(client: RawClient, message: bytes) -> tuple[int, str]:
    """The rest of DATA and the final dot; the relay's reply to it. The session is then closed."""
    client.writer.write(message + b".\r\n")
    try:
        return await client.reply()
    finally:
        client.close()


class CollectingUpstream(ScriptedUpstream):
    """The scripted upstream, keeping every complete DATA payload (it keeps only the last one)."""

    payloads: list[bytes]

    @property
    def data(self) -> bytes | None:
        return self.payloads[-1] if self.payloads else None

    @data.setter
    def data(self, value: bytes | None) -> None:
        self.__dict__.setdefault("payloads", [])
        if value is not None:
            self.payloads.append(value)


def unstuffed(payload: bytes) -> bytes:
    """A payload as the scripted upstream read it, without the final dot and transparency dots."""
    assert payload.endswith(b"\r\n.\r\n")
    return re.sub(rb"(?m)^\.", b"", payload[:-3])


def subject(message: bytes) -> str:
    return values(message, "Subject")[0]


async def test_100_concurrent_sessions_all_delivered_once_and_signed(world: World) -> None:
    async with RecordingUpstream() as upstream:
        settings = world.settings.model_copy(update={"upstream": smtp_upstream(upstream.port)})
        async with relay_running(settings, world.store) as relay:
            assert (await warm(relay, QUIET_IP))[0] == 250
            clients = await asyncio.gather(*(at_data(relay, QUIET_IP) for _ in range(100)))
            assert relay.connections.count(QUIET_IP) == 100, "all 100 sessions open at once, at DATA"
            replies = await asyncio.gather(*(finish(c, body("quiet", n)) for n, c in enumerate(clients)))
    assert [code for code, _ in replies] == [250] * 100, replies
    subjects = [subject(m.data) for m in upstream.messages]
    assert sorted(subjects[1:]) == sorted(f"quiet {n}" for n in range(100)), "each once, nothing else"
    lookup = fake_dns(world.keys)
    for delivered in upstream.messages[1::10]:  # a sample: dkimpy verifies in pure Python
        assert values(delivered.data, "From") == ['"Quiet Ltd" <billing@quiet.test>']
        assert dkim.verify(delivered.data, dnsfunc=lookup), subject(delivered.data)


async def test_slow_sessions_mid_data_neither_block_others_nor_leak_upstream(world: World) -> None:
    async with RecordingUpstream() as upstream:
        settings = world.settings.model_copy(update={"upstream": smtp_upstream(upstream.port)})
        async with relay_running(settings, world.store) as relay:
            slow = await asyncio.gather(*(at_data(relay, NOISY_IP) for _ in range(50)))
            for n, client in enumerate(slow):  # half a message each, no end of data
                client.writer.write(body("noisy", n) + b"Half of it, and then")
            await asyncio.gather(*(client.writer.drain() for client in slow))

            code, reply = await finish(await at_data(relay, QUIET_IP), body("quiet", 0))
            assert (code, [subject(m.data) for m in upstream.messages]) == (250, ["quiet 0"]), reply
            assert relay.connections.count(NOISY_IP) == 50, "the slow sessions were still open meanwhile"

            for n, client in enumerate(slow):  # half drop politely (FIN), half abruptly (RST)
                if n % 2:
                    client.writer.close()
                else:
                    client.writer.transport.abort()
            await eventually(lambda: relay.connections.count(NOISY_IP) == 0)
            # After them, one more complete message: anything of theirs under way would be ahead of it.
            assert (await finish(await at_data(relay, QUIET_IP), body("quiet", 1)))[0] == 250
    # R4: nothing of an unfinished message goes upstream, however the client left.
    assert [subject(m.data) for m in upstream.messages] == ["quiet 0", "quiet 1"]


async def test_noisy_tenants_refused_mail_leaves_quiet_deliveries_alone(world: World) -> None:
    collector = CollectingUpstream(Script(rcpt={REFUSED_RCPT: "550 5.1.1 No such user"}))
    async with collector as upstream:
        settings = world.settings.model_copy(update={"upstream": smtp_upstream(upstream.port)})
        async with relay_running(settings, world.store) as relay:
            for source in (NOISY_IP, QUIET_IP):  # refused upstream too: nothing of theirs is delivered
                assert (await warm(relay, source, REFUSED_RCPT))[0] == 550
            noisy = [at_data(relay, NOISY_IP, REFUSED_RCPT) for _ in range(20)]
            quiet = [at_data(relay, QUIET_IP) for _ in range(20)]
            clients = await asyncio.gather(*(c for pair in zip(noisy, quiet) for c in pair))  # interleaved
            replies = await asyncio.gather(*(finish(c, body("noisy" if i % 2 == 0 else "quiet", i // 2))
                                             for i, c in enumerate(clients)))
    noisy_replies, quiet_replies = replies[0::2], replies[1::2]
    assert {(code, text.split(" ", 1)[0]) for code, text in noisy_replies} == {(550, "5.1.1")}  # R2: class kept
    assert [code for code, _ in quiet_replies] == [250] * 20, quiet_replies
    # R3: a refused recipient ends that transaction before DATA; only quiet's 20 messages went upstream.
    assert upstream.verbs().count("DATA") == 20
    messages = [unstuffed(payload) for payload in collector.payloads]
    assert sorted(subject(m) for m in messages) == sorted(f"quiet {n}" for n in range(20))
    lookup = fake_dns(world.keys)
    for message in messages[::5]:
        assert "d=quiet.test;" in re.sub(r"\s", "", values(message, "DKIM-Signature")[0])
        assert dkim.verify(message, dnsfunc=lookup), subject(message)
