"""Session limits seen from real sockets: connections per process and per client IP, idle sessions."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from relay.core.settings import SettingsError, load_settings
from relay.core.store import open_store
from relay.service.relay import RunningRelay
from relay.smtp.limits import ConnectionCounter, admits
from tests.relay_harness import eventually, make_settings, relay_running, self_signed


class Conn:
    """A raw SMTP connection from a chosen loopback source address, with its greeting line."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, greeting: str) -> None:
        self.reader, self.writer, self.greeting = reader, writer, greeting

    @property
    def code(self) -> str:
        return self.greeting[:3]

    async def line(self) -> str:
        return (await asyncio.wait_for(self.reader.readline(), 10)).decode()

    async def closed_by_server(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 10) == b""

    async def quit(self) -> None:
        """QUIT, then wait for the server's close: its slot is released before its socket closes."""
        self.writer.write(b"QUIT\r\n")
        assert (await self.line()).startswith("221 ")
        assert await self.closed_by_server()


class Lab:
    """Relays on free loopback ports over one empty store, and connections to them (all closed at the end)."""

    def __init__(self, tmp: Path, stack: AsyncExitStack, database: str) -> None:
        self._tmp, self._stack, self._database = tmp, stack, database
        self._store = open_store(make_settings(tmp, database=database))
        stack.callback(self._store.close)
        self.relay: RunningRelay | None = None

    async def start(self, **fields: Any) -> RunningRelay:
        settings = make_settings(self._tmp, database=self._database, **fields)
        self.relay = await self._stack.enter_async_context(relay_running(settings, self._store))
        return self.relay

    async def connect(self, source: str = "127.0.0.1") -> Conn:
        assert self.relay is not None
        reader, writer = await asyncio.open_connection(*self.relay.address, local_addr=(source, 0))
        self._stack.callback(writer.close)
        greeting = (await asyncio.wait_for(reader.readline(), 10)).decode()
        return Conn(reader, writer, greeting)


@pytest.fixture
async def lab(tmp_path: Path, database_url: str) -> AsyncIterator[Lab]:
    async with AsyncExitStack() as stack:
        yield Lab(tmp_path, stack, database_url)


def live_sessions(relay: RunningRelay) -> int:
    """Protocols that got as far as an aiosmtpd session (a refused connection never does)."""
    return sum(1 for protocol in relay.sessions if protocol.session is not None)


async def test_connection_over_the_per_ip_limit_gets_421_and_no_session(lab: Lab) -> None:
    relay = await lab.start(max_connections_per_ip=2)
    held = [await lab.connect(), await lab.connect()]
    assert [conn.code for conn in held] == ["220", "220"]
    refused = await lab.connect()
    assert refused.greeting == "421 4.7.0 Too many connections, try again later\r\n"
    assert await refused.closed_by_server()  # RFC 5321 3.8: nothing after the 421 but the close
    assert relay.connections.count("127.0.0.1") == 2 and live_sessions(relay) == 2


async def test_other_addresses_are_served_while_one_is_at_its_limit(lab: Lab) -> None:
    await lab.start(max_connections_per_ip=2)
    noisy = [await lab.connect(), await lab.connect(), await lab.connect()]
    assert [conn.code for conn in noisy] == ["220", "220", "421"]
    others = [await lab.connect("127.0.0.2"), await lab.connect("127.0.0.3")]
    assert [conn.code for conn in others] == ["220", "220"]


async def test_quit_frees_a_per_ip_slot(lab: Lab) -> None:
    await lab.start(max_connections_per_ip=2)
    first, _second = await lab.connect(), await lab.connect()
    assert (await lab.connect()).code == "421"
    await first.quit()
    assert (await lab.connect()).code == "220"
    assert (await lab.connect()).code == "421"


async def test_a_dropped_connection_frees_its_slot(lab: Lab) -> None:
    relay = await lab.start(max_connections_per_ip=1)
    first = await lab.connect()
    assert (await lab.connect()).code == "421"
    first.writer.transport.abort()  # a reset, no QUIT: the server learns it from the socket alone
    await eventually(lambda: relay.connections.total == 0)
    assert (await lab.connect()).code == "220"


async def test_total_limit_counts_every_address_and_frees_on_close(lab: Lab) -> None:
    relay = await lab.start(max_connections=3, max_connections_per_ip=2)
    held = [await lab.connect(), await lab.connect(), await lab.connect("127.0.0.2")]
    assert [conn.code for conn in held] == ["220", "220", "220"]
    refused = await lab.connect("127.0.0.3")  # a fresh address, refused by the total alone
    assert refused.greeting.startswith("421 4.7.0 ")
    assert await refused.closed_by_server()
    assert relay.connections.total == 3 and live_sessions(relay) == 3
    await held[2].quit()
    assert (await lab.connect("127.0.0.3")).code == "220"
    assert (await lab.connect("127.0.0.4")).code == "421"


async def test_starttls_keeps_one_slot_and_releases_it(lab: Lab, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    relay = await lab.start(max_connections_per_ip=1, tls_cert=cert, tls_key=key)
    conn = await lab.connect()
    for command in (b"EHLO client.test", b"STARTTLS"):
        conn.writer.write(command + b"\r\n")
        while (await conn.line())[3] == "-":
            pass
    # aiosmtpd calls connection_made again for the TLS transport: that is not a second session.
    await conn.writer.start_tls(ssl._create_unverified_context())  # a self-signed test certificate
    conn.writer.write(b"EHLO client.test\r\n")
    assert (await conn.line()).startswith("250")
    assert relay.connections.count("127.0.0.1") == 1
    conn.writer.write(b"QUIT\r\n")
    while not (await conn.line()).startswith("221 "):
        pass
    await eventually(lambda: relay.connections.total == 0)  # a TLS close is not observable as EOF
    assert (await lab.connect()).code == "220"


async def test_defaults_admit_the_benchmarks_twenty_loopback_sessions(lab: Lab) -> None:
    relay = await lab.start()
    conns = await asyncio.gather(*(lab.connect() for _ in range(20)))
    assert [conn.code for conn in conns] == ["220"] * 20
    assert relay.connections.count("127.0.0.1") == 20


async def test_idle_session_gets_421_after_the_session_timeout(lab: Lab) -> None:
    relay = await lab.start(session_timeout=0.3, upstream_timeout=0.1)
    conn = await lab.connect()
    conn.writer.write(b"EHLO client.test\r\n")
    while (await conn.line()).startswith("250-"):
        pass
    loop = asyncio.get_running_loop()
    idle_since = loop.time()
    assert await conn.line() == "421 4.4.2 Idle timeout, closing connection\r\n"
    assert loop.time() - idle_since >= 0.25  # the timer started when EHLO arrived, just before
    assert await conn.closed_by_server()
    assert relay.connections.total == 0  # released before the server closed its socket


def test_counter_admits_up_to_each_limit_and_releases() -> None:
    counter = ConnectionCounter(max_total=3, max_per_ip=2)
    assert [counter.acquire("192.0.2.1") for _ in range(3)] == [True, True, False]
    assert counter.acquire("192.0.2.2") and not counter.acquire("192.0.2.3")
    assert (counter.total, counter.count("192.0.2.1"), counter.count("192.0.2.3")) == (3, 2, 0)
    counter.release("192.0.2.1")
    assert counter.acquire("192.0.2.3") and counter.total == 3


def test_counter_ignores_a_release_it_never_counted() -> None:
    counter = ConnectionCounter(max_total=1, max_per_ip=1)
    counter.release("192.0.2.1")
    assert counter.total == 0 and counter.acquire("192.0.2.1") and not counter.acquire("192.0.2.2")


@pytest.mark.parametrize(("total", "from_ip", "expected"), [
    (0, 0, True), (9, 4, True), (10, 0, False), (5, 5, False),
])
def test_admits_is_below_both_limits(total: int, from_ip: int, expected: bool) -> None:
    assert admits(total=total, from_ip=from_ip, max_total=10, max_per_ip=5) is expected


@pytest.mark.sqlite_only  # settings alone: no store is opened
@pytest.mark.parametrize(("variable", "value"), [
    ("RELAY_MAX_CONNECTIONS", "0"),
    ("RELAY_MAX_CONNECTIONS", "many"),
    ("RELAY_MAX_CONNECTIONS_PER_IP", "0"),
    ("RELAY_MAX_CONNECTIONS_PER_IP", "-1"),
    ("RELAY_MAX_CONNECTIONS_PER_IP", "1.5"),
])
def test_bad_limit_is_one_line_naming_the_variable(
    relay_env: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str,
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value).startswith(f"{variable}: ") and "\n" not in str(caught.value)


@pytest.mark.sqlite_only  # settings alone: no store is opened
def test_limits_default_and_parse(relay_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings()
    assert (defaults.max_connections, defaults.max_connections_per_ip) == (1000, 100)
    monkeypatch.setenv("RELAY_MAX_CONNECTIONS", "50")
    monkeypatch.setenv("RELAY_MAX_CONNECTIONS_PER_IP", "5")
    settings = load_settings()
    assert (settings.max_connections, settings.max_connections_per_ip) == (50, 5)
