"""The upstream connection pool (RELAY_UPSTREAM_POOL_SIZE, relay.smtp.upstream): messages share connections with
RSET between them, a pooled connection found dead before MAIL FROM is replaced without the client noticing, an
outcome lost after the dot is still 451 and ends its connection, the pool stays bounded, and its connections are
QUIT when the relay stops or the upstream is replaced. Real loopback servers count what they see."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Self

import pytest

from relay.core.settings import Settings
from relay.core.store import SqliteStore
from relay.service.relay import RunningRelay, start_relay
from relay.smtp.upstream import Envelope, SmtpUpstream
from tests.relay_harness import (
    Script,
    ScriptedUpstream,
    eventually,
    make_settings,
    relay_running,
    send,
    smtp_upstream,
    verified_acme,
)

MESSAGE = b"From: app@platform.test\r\nTo: a@example.test\r\nSubject: Pool\r\n\r\nBody.\r\n"
ONE = ("EHLO", "MAIL", "RCPT", "DATA")  # a message on a new connection
AGAIN = ("RSET", "MAIL", "RCPT", "DATA")  # a message on a pooled one (RFC 5321 4.1.1.5)

_MAILS: contextvars.ContextVar[list[str]] = contextvars.ContextVar("mails")  # per upstream connection


class _Counted(asyncio.Event):
    """An event that also counts how often it was set (messages whose final dot arrived)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def set(self) -> None:
        self.count += 1
        super().set()


class PoolUpstream(ScriptedUpstream):
    """The harness's scripted upstream, counting connections: opened, open now, and QUITs received."""

    dot_arrived: _Counted

    def __init__(self, script: Script | None = None) -> None:
        super().__init__(script or Script())
        self.opened = 0
        self.open = 0
        self.dot_arrived = _Counted()

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        return self

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        self.open += 1
        _MAILS.set([])
        try:
            await super()._session(reader, writer)
        finally:
            self.open -= 1

    def close_connections(self, goodbye: str | None) -> None:
        """What a server does to clients idle too long: optionally say why (RFC 5321 4.5.3.2), then close."""
        for writer in self._writers:
            if goodbye is not None and not writer.is_closing():
                writer.write(goodbye.encode() + b"\r\n")
            writer.close()

    @property
    def quits(self) -> int:
        return self.verbs().count("QUIT")


class OneMessagePerConnection(dict[str, str]):
    """Script replies of a server that takes one message per connection and says 421 to a second MAIL."""

    def get(self, verb: str, default: Any = None) -> Any:
        if verb == "MAIL":
            mails = _MAILS.get()
            mails.append(verb)
            if len(mails) > 1:
                return "421 4.7.0 one message per connection, closing"
        return super().get(verb, default)


@dataclass
class World:
    settings: Settings
    store: SqliteStore
    secret: str

    def upstream(self, port: int, **update: Any) -> Settings:
        return self.settings.model_copy(update={"upstream": smtp_upstream(port), **update})

    async def send(self, relay: RunningRelay) -> tuple[int, str]:
        outcome = await send(relay, MESSAGE, user="billing", secret=self.secret)
        return outcome.code, outcome.text


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("pool")
    store, _, secret = verified_acme(tmp)
    yield World(make_settings(tmp), store, secret)
    store.close()


def delivered(replies: list[tuple[int, str]]) -> bool:
    return all(code == 250 for code, _ in replies)


# ---------------------------------------------------------------- reuse


async def test_messages_share_one_connection_with_rset_between(world: World) -> None:
    async with (PoolUpstream() as upstream,
                relay_running(world.upstream(upstream.port), world.store) as relay):
        replies = [await world.send(relay) for _ in range(5)]
        assert upstream.opened == 1 and upstream.open == 1, "one connection, still open between messages"
        assert upstream.quits == 0
    assert delivered(replies), replies
    assert upstream.verbs() == [*ONE, *AGAIN * 4, "QUIT"]
    assert upstream.dot_arrived.count == 5


async def test_pool_size_0_opens_one_connection_per_message(world: World) -> None:
    async with PoolUpstream() as off, PoolUpstream() as on:
        async with relay_running(world.upstream(off.port, upstream_pool_size=0), world.store) as relay:
            replies = [await world.send(relay) for _ in range(3)]
        async with relay_running(world.upstream(on.port, upstream_pool_size=1), world.store) as relay:
            replies += [await world.send(relay) for _ in range(3)]
    assert delivered(replies), replies
    assert off.opened == 3 and off.verbs() == [*ONE, "QUIT"] * 3, "size 0: as without a pool"
    assert on.opened == 1 and on.verbs() == [*ONE, *AGAIN * 2, "QUIT"]


async def test_at_most_max_messages_per_connection(world: World) -> None:
    async with PoolUpstream() as server:
        upstream = SmtpUpstream(smtp_upstream(server.port), timeout=5.0, local_hostname="relay.test", pool_size=4,
                                max_messages=2)
        envelope = Envelope(sender="bounces@bounce.acme.test", recipients=("a@example.test",))
        try:
            replies = [await upstream.deliver(envelope, MESSAGE) for _ in range(5)]
            assert server.opened == 3 and server.open == 1, "2 + 2 + 1 messages"
        finally:
            await upstream.close()
        await eventually(lambda: server.open == 0)
    assert [reply.code for reply in replies] == [250] * 5
    assert server.verbs() == [*ONE, *AGAIN, "QUIT"] * 2 + [*ONE, "QUIT"]


async def test_an_idle_connection_is_quit_after_the_idle_time(world: World) -> None:
    async with PoolUpstream() as server:
        upstream = SmtpUpstream(smtp_upstream(server.port), timeout=5.0, local_hostname="relay.test", pool_size=4,
                                idle_seconds=0.05)
        envelope = Envelope(sender="bounces@bounce.acme.test", recipients=("a@example.test",))
        try:
            reply = await upstream.deliver(envelope, MESSAGE)
            assert server.quits == 0, "pooled: not QUIT after its message"
            await eventually(lambda: server.quits == 1 and server.open == 0)  # idle: QUIT before any close()
        finally:
            await upstream.close()
    assert reply.code == 250
    assert server.verbs() == [*ONE, "QUIT"]


# ---------------------------------------------------------------- dead pooled connections: replaced


@pytest.mark.parametrize("goodbye", [None, "421 4.4.2 upstream.test idle too long, closing"],
                         ids=["silent-close", "421-then-close"])
async def test_a_connection_the_server_closed_while_idle_is_replaced(world: World, goodbye: str | None) -> None:
    async with (PoolUpstream() as upstream,
                relay_running(world.upstream(upstream.port), world.store) as relay):
        replies = [await world.send(relay) for _ in range(2)]
        assert upstream.opened == 1
        upstream.close_connections(goodbye)
        await eventually(lambda: upstream.open == 0)
        replies.append(await world.send(relay))
        assert upstream.opened == 2
    assert delivered(replies), replies
    assert upstream.dot_arrived.count == 3
    verbs = upstream.verbs()
    assert verbs[:8] == [*ONE, *AGAIN]
    # The relay may or may not have seen the close before the third message: either nothing went on the dead
    # connection, or only an RSET that failed; then the message went on a new one.
    assert verbs[8:] in ([*ONE, "QUIT"], ["RSET", *ONE, "QUIT"])


@pytest.mark.parametrize("rset", ["drop", "421 4.3.2 Shutting down", "500 5.5.1 What?"])
async def test_a_pooled_connection_failing_rset_is_replaced(world: World, rset: str) -> None:
    async with (PoolUpstream(Script(replies={"RSET": rset})) as upstream,
                relay_running(world.upstream(upstream.port), world.store) as relay):
        replies = [await world.send(relay) for _ in range(2)]
    assert delivered(replies), replies
    assert upstream.opened == 2
    assert upstream.verbs() == [*ONE, "RSET", *ONE, "QUIT"], "no MAIL on the connection that failed RSET"


async def test_a_pooled_connection_answering_mail_with_421_is_replaced(world: World) -> None:
    script = Script(replies=OneMessagePerConnection())
    async with (PoolUpstream(script) as upstream,
                relay_running(world.upstream(upstream.port), world.store) as relay):
        replies = [await world.send(relay) for _ in range(3)]
    assert delivered(replies), replies
    assert upstream.opened == 3
    assert upstream.verbs() == [*ONE, "RSET", "MAIL", *ONE, "RSET", "MAIL", *ONE, "QUIT"]
    assert upstream.dot_arrived.count == 3


# ---------------------------------------------------------------- outcomes stay per message


@pytest.mark.parametrize("after_dot", ["drop", "stall"])
async def test_silent_after_the_dot_is_451_and_the_connection_is_not_reused(
        world: World, after_dot: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    async with PoolUpstream() as upstream:
        settings = world.upstream(upstream.port, upstream_timeout=0.5)
        async with relay_running(settings, world.store) as relay:
            first = await world.send(relay)
            upstream.script.after_dot = after_dot
            lost = await world.send(relay)
            upstream.script.after_dot = "250 2.0.0 Ok: queued"
            await eventually(lambda: upstream.open == 0)  # the relay dropped the connection (R4: aborted)
            third = await world.send(relay)
    assert first[0] == 250 and third[0] == 250
    assert (lost[0], lost[1].split()[0]) == (451, "4.4.2"), lost  # R6: ambiguous, never retried
    assert any("ambiguous" in r.getMessage() and "sha256=" in r.getMessage() for r in caplog.records)
    assert upstream.opened == 2, "the second message went on the pooled connection, the third on a new one"
    assert upstream.verbs() == [*ONE, *AGAIN, *ONE, "QUIT"], "nothing more on the connection after the lost dot"
    assert upstream.dot_arrived.count == 3


async def test_a_refused_recipient_ends_the_pooled_connection(world: World) -> None:
    async with (PoolUpstream(Script(rcpt={"bad@example.test": "550 5.1.1 No such user"})) as upstream,
                relay_running(world.upstream(upstream.port), world.store) as relay):
        first = await world.send(relay)
        refused = await send(relay, MESSAGE, user="billing", secret=world.secret, rcpts=("bad@example.test",))
        third = await world.send(relay)
    assert first[0] == 250 and third[0] == 250
    assert (refused.code, refused.text.split()[0]) == (550, "5.1.1")
    assert upstream.opened == 2
    assert upstream.verbs() == [*ONE, *AGAIN[:3], "RSET", *ONE, "QUIT"], "the refusal's connection was dropped"


# ---------------------------------------------------------------- bounds and closing


async def test_the_pool_is_bounded_under_concurrency(world: World) -> None:
    async with PoolUpstream(Script(hold_after_dot=True)) as upstream:
        settings = world.upstream(upstream.port, upstream_pool_size=2, max_inflight_per_tenant=10)
        async with relay_running(settings, world.store) as relay:
            sending = [asyncio.create_task(world.send(relay)) for _ in range(5)]
            await eventually(lambda: upstream.dot_arrived.count == 5)
            assert upstream.opened == 5, "five messages at once: five connections"
            upstream.release.set()
            replies = list(await asyncio.gather(*sending))
            await eventually(lambda: upstream.open == 2)
            assert upstream.quits == 3, "beyond the pool's 2, connections are QUIT after their message"
            replies.append(await world.send(relay))
            assert upstream.opened == 5, "the sixth message went on a pooled connection"
    assert delivered(replies), replies
    assert upstream.quits == 5 and upstream.open == 0


async def test_pooled_connections_are_quit_when_the_relay_stops(world: World) -> None:
    async with PoolUpstream() as upstream:
        relay = await start_relay(world.upstream(upstream.port), world.store)
        try:
            reply = await world.send(relay)
            assert upstream.open == 1 and upstream.quits == 0, "kept open after the message"
            await relay.stop(grace=5.0, reason="SIGTERM")
        finally:
            await relay.close()
        assert upstream.open == 0
    assert reply[0] == 250
    assert upstream.verbs() == [*ONE, "QUIT"]


async def test_sighup_keeps_the_pool_unless_an_upstream_setting_changed(world: World) -> None:
    async with PoolUpstream() as upstream:
        settings = world.upstream(upstream.port)
        async with relay_running(settings, world.store) as relay:
            replies = [await world.send(relay)]
            relay.configure(settings.model_copy(update={"max_recipients": 7}))  # not an upstream setting
            replies.append(await world.send(relay))
            assert upstream.opened == 1 and upstream.quits == 0
            relay.configure(settings.model_copy(update={"upstream_pool_size": 4}))
            await eventually(lambda: upstream.quits == 1 and upstream.open == 0)  # the old pool's connection
            replies.append(await world.send(relay))
            assert upstream.opened == 2
    assert delivered(replies), replies
    assert upstream.verbs() == [*ONE, *AGAIN, "QUIT", *ONE, "QUIT"]

