"""Stopping the relay (SIGTERM/SIGINT): the listener closes at once, transactions under way finish, every
session is told `421 4.3.2 <hostname> shutting down` (RFC 5321 3.8), and the process exits 0."""

from __future__ import annotations

import asyncio
import logging
import signal
import smtplib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.core.store import open_store
from tests.relay_harness import (
    RCPT,
    RELAY_SCRIPT,
    RawClient,
    RecordingUpstream,
    RelayProcess,
    Script,
    ScriptedUpstream,
    eventually,
    make_settings,
    process_env,
    relay_running,
    smtp_upstream,
)
from tests.snapshot import verified_acme

MESSAGE = b"From: app@platform.test\r\nTo: someone@example.test\r\nSubject: Stop\r\n\r\nBody.\r\n"
SHUTTING_DOWN = (421, "4.3.2 relay.test shutting down")


@dataclass
class Site:
    tmp: Path
    secret: str
    database: str


@pytest.fixture
def site(tmp_path: Path, database_url: str) -> Iterator[Site]:
    """A store with one verified tenant and its client `billing`."""
    store, _, secret = verified_acme(make_settings(tmp_path, database=database_url))
    store.close()
    yield Site(tmp_path, secret, database_url)


@pytest.fixture(autouse=True)
def console_script() -> None:
    if not RELAY_SCRIPT.exists():
        pytest.skip("the relay console script is not installed in this venv")


def _reply(pair: tuple[int, bytes]) -> tuple[int, str]:
    return pair[0], pair[1].decode()


def _refused(port: int) -> bool:
    """Whether nothing listens on the port any more (the kernel refuses the connection)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


# ------------------------------------------------------------------ the relay as a process


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_tells_an_idle_client_421_and_exits_0(site: Site, workers: str) -> None:
    with RelayProcess(process_env(site.tmp, RELAY_DATABASE=site.database, RELAY_WORKERS=workers)) as relay:
        smtp = smtplib.SMTP("127.0.0.1", relay.port, timeout=20)
        try:
            smtp.ehlo()
            smtp.login("billing", site.secret)
            relay.process.send_signal(signal.SIGTERM)
            told = _reply(smtp.getreply())  # unasked: RFC 5321 3.8, read before any next command
        finally:
            smtp.close()
        assert relay.wait() == 0
    assert told == SHUTTING_DOWN
    log = relay.lines()
    assert any("relay.server: stopping on SIGTERM: no longer accepting; 1 session open" in line for line in log), log
    assert sum(line.endswith("relay.server: stopped") for line in log) == int(workers), log
    if workers == "2":
        assert any("relay.main: stopping on SIGTERM: forwarded to 2 workers" in line for line in log), log
        assert log[-1].endswith("relay.main: stopped: every worker exited"), log


def test_sigint_stops_the_same_way(site: Site) -> None:
    with RelayProcess(process_env(site.tmp, RELAY_DATABASE=site.database)) as relay:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as smtp:
            relay.process.send_signal(signal.SIGINT)
            told = _reply(smtp.getreply())
            assert relay.wait() == 0
    assert told == SHUTTING_DOWN
    assert any("stopping on SIGINT" in line for line in relay.lines())


def _send_then_listen(port: int, secret: str) -> tuple[tuple[int, str], tuple[int, str]]:
    """Send one message; return the reply to its final dot and the reply that follows it unasked."""
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=30)
    try:
        smtp.ehlo()
        smtp.login("billing", secret)
        smtp.mail("app@platform.test")
        smtp.rcpt(RCPT)
        return _reply(smtp.data(MESSAGE)), _reply(smtp.getreply())
    finally:
        smtp.close()


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])  # RELAY_EVENT_LOOP: the default, and the fallback
async def test_transaction_in_flight_gets_its_250_after_sigterm(site: Site, event_loop: str) -> None:
    async with ScriptedUpstream(Script(hold_after_dot=True)) as upstream:
        env = process_env(site.tmp, RELAY_DATABASE=site.database, RELAY_UPSTREAM=f"smtp://127.0.0.1:{upstream.port}",
                          RELAY_EVENT_LOOP=event_loop)
        with RelayProcess(env) as relay:
            port = await asyncio.to_thread(lambda: relay.port)
            client = asyncio.create_task(asyncio.to_thread(_send_then_listen, port, site.secret))
            await asyncio.wait_for(upstream.dot_arrived.wait(), 20)  # upstream holds its reply from here
            relay.process.send_signal(signal.SIGTERM)
            stopping = await asyncio.to_thread(relay.wait_line, "stopping on SIGTERM")
            assert await asyncio.to_thread(_refused, port), "the listener is closed at once"
            assert not client.done()
            upstream.release.set()
            final, then = await asyncio.wait_for(client, 30)
            code = await asyncio.to_thread(relay.wait)
    assert final[0] == 250, final
    assert then == SHUTTING_DOWN
    assert code == 0
    assert "1 session open, 1 with a transaction under way (up to 30s to finish)" in stopping
    log = relay.lines()
    assert any(f"(1 worker, event loop {event_loop})" in line for line in relay.lines("stdout")), relay.lines("stdout")
    assert any("outcome=delivered" in line for line in log), log
    assert log[-1].endswith("relay.server: stopped"), log


# ------------------------------------------------------------------ in-process: the stages of a stop


async def test_a_message_being_uploaded_is_finished_then_421(site: Site) -> None:
    async with RecordingUpstream() as upstream:
        settings = make_settings(site.tmp, database=site.database, upstream=smtp_upstream(upstream.port))
        store = open_store(settings)
        async with relay_running(settings, store) as relay:
            uploading = await RawClient.connect(relay)
            await uploading.start_mail("billing", site.secret)  # at the 354
            idle = await RawClient.connect(relay)
            stop = asyncio.create_task(relay.stop(grace=20, reason="SIGTERM"))
            assert await idle.reply() == SHUTTING_DOWN  # at once, unasked
            uploading.writer.write(MESSAGE + b".\r\n")
            final = await uploading.reply()
            then = await uploading.reply()
            await asyncio.wait_for(stop, 20)
            for client in (idle, uploading):
                client.close()
        store.close()
    assert final[0] == 250, final
    assert then == SHUTTING_DOWN
    assert len(upstream.messages) == 1


async def test_a_connection_after_the_stop_is_refused(site: Site) -> None:
    settings = make_settings(site.tmp, database=site.database)
    store = open_store(settings)
    async with relay_running(settings, store) as relay:
        host, port = relay.address
        held = await RawClient.connect(relay)
        await held.start_mail("billing", site.secret)  # keeps the stop waiting
        stop = asyncio.create_task(relay.stop(grace=20, reason="SIGTERM"))
        await eventually(lambda: relay.drain.reply is not None)  # the stop has begun
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(host, port)
        held.writer.write(MESSAGE + b".\r\n")
        assert (await held.reply())[0] == 250
        await asyncio.wait_for(stop, 20)
        held.close()
    store.close()


async def test_after_the_grace_a_stalled_transaction_gets_421(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    async with ScriptedUpstream(Script(after_dot="stall")) as upstream:
        settings = make_settings(site.tmp, database=site.database, upstream=smtp_upstream(upstream.port))
        store = open_store(settings)
        async with relay_running(settings, store) as relay:
            client = await RawClient.connect(relay)
            await client.start_mail("billing", site.secret)
            client.writer.write(MESSAGE + b".\r\n")
            await asyncio.wait_for(upstream.stalled.wait(), 20)
            await asyncio.wait_for(relay.stop(grace=0.2, reason="SIGTERM"), 20)
            final = await client.reply()
            client.close()
        store.close()
    assert final == SHUTTING_DOWN  # transient: the client keeps the message and retries
    messages = [record.getMessage() for record in caplog.records]
    assert "shutdown grace of 0.2s is over: 1 transaction cut short with 421 (the client retries)" in messages
    assert any("outcome=abandoned" in message and "sha256=" in message for message in messages)  # R6
    assert messages[-1] == "stopped"
