"""RELAY_EVENT_LOOP: each relay process runs on uvloop by default, or on Python's own asyncio loop,
and the relay's transport handling works on both (relay.smtp.transports). The relay as a process on
each loop: tests/test_relay_shutdown.py; every other async test runs on uvloop (tests/conftest.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import uvloop

from relay.core.settings import load_settings
from relay.service import eventloop
from relay.smtp.transports import writable


async def _running_loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


@pytest.mark.parametrize(("name", "module"), [("uvloop", "uvloop"), ("asyncio", "asyncio.unix_events")])
def test_run_uses_the_named_loop(name: eventloop.EventLoopName, module: str) -> None:
    assert eventloop.run(_running_loop_module(), name) == module


def test_the_default_is_uvloop_and_the_name_is_read_in_any_case(
        relay_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().event_loop == "uvloop"
    monkeypatch.setenv("RELAY_EVENT_LOOP", " AsyncIO ")
    assert load_settings().event_loop == "asyncio"


class _Refuser(asyncio.Protocol):
    """What relay.smtp.server does with a connection over a limit: 421 through `writable`, then close."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        writer = writable(transport)
        assert writer is not None, type(transport)
        writer.write(b"421 4.7.0 too many\r\n")
        transport.close()


async def _refused_greeting() -> bytes:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Refuser, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # On both loops the client's own transport is writable too (upstream's abort uses it).
        assert writable(writer.transport) is writer.transport
        greeting = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return greeting
    finally:
        server.close()


@pytest.mark.parametrize("name", ["uvloop", "asyncio"])
def test_a_transport_of_either_loop_is_writable(name: eventloop.EventLoopName) -> None:
    # uvloop's transports subclass none of asyncio's: an isinstance check took them for read-only ones,
    # and the 421 was never written.
    assert eventloop.run(_refused_greeting(), name) == b"421 4.7.0 too many\r\n"


async def test_the_test_suite_runs_on_uvloop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


def test_what_cannot_write_is_not_writable() -> None:
    class ReadOnly(asyncio.ReadTransport):
        pass

    assert writable(None) is None
    assert writable(ReadOnly()) is None
