"""relay.smtp.aiosmtpd_adapter against the installed aiosmtpd: every private name it uses exists with the expected
parameters, each public name of ours does what aiosmtpd does with it on a real connection, and the pin in
pyproject.toml is the range this was tested on. A new aiosmtpd that renames or reshapes any of them fails
here, not in production."""

from __future__ import annotations

import asyncio
import base64
import inspect
import re
import ssl
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session

from relay.core.models import TenantStatus
from relay.core.store import SqliteStore
from relay.smtp.aiosmtpd_adapter import PRIVATE_ATTRIBUTES, PRIVATE_METHODS, AdaptedSMTP
from tests.factories import make_tenant
from tests.relay_harness import (
    RawClient,
    Script,
    ScriptedUpstream,
    add_client,
    make_settings,
    relay_running,
    self_signed,
    server_tls,
    smtp_upstream,
)

ROOT = Path(__file__).resolve().parent.parent


def problems(smtp: type[Any], instance: object) -> list[str]:
    """What the adapter needs and `smtp` (aiosmtpd's SMTP class) or a connected `instance` of it lacks."""
    found = []
    for name, expected in PRIVATE_METHODS.items():
        method = getattr(smtp, name, None)
        if not callable(method):
            found.append(f"SMTP.{name} is gone")
            continue
        parameters = tuple(inspect.signature(method).parameters)
        if parameters != expected:
            found.append(f"SMTP.{name}{parameters} is not SMTP.{name}{expected}")
    found += [f"SMTP().{name} is gone" for name in PRIVATE_ATTRIBUTES if name not in vars(instance)]
    return found


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


# ------------------------------------------------------------------ a real connection to an adapted server


class Handler:
    """Records DATA; answers it as a real handler would."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, object, object, bytes]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.calls.append((server, session, envelope, envelope.content))
        return "250 2.0.0 handled"


class Recording(AdaptedSMTP):
    """Overrides only the public names, as RelaySMTP does."""

    def __init__(self, handler: Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.paths: list[str] = []
        self.timed_out = asyncio.Event()

    def split_path(self, arg: str) -> tuple[str | None, str | None]:
        self.paths.append(arg)
        return super().split_path(arg)

    def on_session_timeout(self) -> None:
        self.timed_out.set()
        super().on_session_timeout()


@dataclass
class Served:
    handler: Handler
    client: RawClient
    protocols: list[Recording] = field(default_factory=list)

    @property
    def protocol(self) -> Recording:
        [protocol] = self.protocols
        return protocol


@asynccontextmanager
async def served(timeout: float = 30.0, tls: ssl.SSLContext | None = None) -> AsyncIterator[Served]:
    """An adapted aiosmtpd on a free loopback port, with one client connected past the greeting."""
    handler = Handler()
    protocols: list[Recording] = []

    def factory() -> Recording:
        protocol = Recording(handler, hostname="adapter.test", timeout=timeout, tls_context=tls)
        protocols.append(protocol)
        return protocol

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    client = RawClient(reader, writer)
    await client.reply()
    try:
        yield Served(handler, client, protocols)
    finally:
        client.close()
        server.close()
        await server.wait_closed()


# ------------------------------------------------------------------ the names


async def test_every_private_name_exists_with_the_expected_parameters() -> None:
    async with served() as world:
        assert problems(SMTP, world.protocol) == []


async def test_the_check_notices_a_renamed_or_reshaped_private_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a future aiosmtpd would look like to the test above."""
    async with served() as world:
        monkeypatch.delattr(SMTP, "_getaddr")
        monkeypatch.setattr(SMTP, "_reset_timeout", lambda self: None)
        del world.protocol.__dict__["_auth_require_tls"]
        assert problems(SMTP, world.protocol) == [
            "SMTP._reset_timeout('self',) is not SMTP._reset_timeout('self', 'duration')",
            "SMTP._getaddr is gone",
            "SMTP()._auth_require_tls is gone",
        ]


def test_pyproject_pins_the_tested_range_and_it_is_installed() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "aiosmtpd>=1.4.6,<1.5" in dependencies
    assert (1, 4, 6) <= version_tuple(version("aiosmtpd")) < (1, 5)


# ------------------------------------------------------------------ what each public name does


async def test_split_path_is_what_mail_and_rcpt_use() -> None:
    async with served() as world:
        await world.client.command("EHLO client.test")
        assert (await world.client.command("MAIL FROM:<a@b.test> SIZE=10"))[0] == 250
        assert (await world.client.command("RCPT TO:<c@d.test>"))[0] == 250
        assert world.protocol.paths == ["<a@b.test> SIZE=10", "<c@d.test>"]
        assert world.protocol.split_path("<a@b.test> SIZE=10") == ("a@b.test", "SIZE=10")


async def test_on_session_timeout_is_what_the_session_timer_calls() -> None:
    async with served(timeout=0.2) as world:
        await asyncio.wait_for(world.protocol.timed_out.wait(), 10)  # the protocol's own timer, not ours
        assert await world.client.reader.read() == b"", "aiosmtpd's own close still happens"


async def test_reset_session_timer_starts_the_timeout_afresh() -> None:
    # By handle, not by time: uvloop's clock moves once per loop iteration, in milliseconds.
    async with served() as world:
        before = world.protocol._timeout_handle
        await world.client.command("NOOP")  # a command rearms it too: the timer is the one aiosmtpd uses
        after_command = world.protocol._timeout_handle
        assert after_command is not before and before.cancelled()
        world.protocol.reset_session_timer()
        fresh = world.protocol._timeout_handle
        assert fresh is not after_command and after_command.cancelled() and not fresh.cancelled()
        assert fresh.when() >= after_command.when()


async def test_require_tls_for_auth_is_what_auth_checks() -> None:
    token = base64.b64encode(b"\0user\0secret").decode()
    async with served() as world:
        await world.client.command("EHLO client.test")
        assert (await world.client.command(f"AUTH PLAIN {token}"))[0] == 538  # aiosmtpd's default: TLS first
        world.protocol.require_tls_for_auth(False)
        assert (await world.client.command(f"AUTH PLAIN {token}"))[0] == 535  # tried (and refused: no users)


async def test_reader_envelope_hook_and_transport_are_aiosmtpds_own() -> None:
    async with served() as world:
        protocol = world.protocol
        assert protocol.plain_transport is None and protocol.transport is not None  # no STARTTLS yet
        assert isinstance(protocol.reader, asyncio.StreamReader)  # RelaySMTP's DATA reads it (test_hotpath)
        envelope = protocol.new_envelope()
        assert isinstance(envelope, Envelope) and envelope is not protocol.envelope
        protocol.envelope.content = b"body"
        assert await protocol.call_hook("DATA") == "250 2.0.0 handled"
        assert world.handler.calls == [(protocol, protocol.session, protocol.envelope, b"body")]
        assert await protocol.call_hook("NOSUCH") is MISSING


async def test_plain_transport_is_the_tcp_one_once_starttls_began(tmp_path: Path) -> None:
    """RelaySMTP tells the first connection_made from aiosmtpd's second one (after STARTTLS) by it."""
    async with served(tls=server_tls(*self_signed(tmp_path))) as world:
        tcp = world.protocol.transport
        await world.client.command("EHLO client.test")
        assert (await world.client.command("STARTTLS"))[0] == 220
        client_tls = ssl.create_default_context()
        client_tls.check_hostname, client_tls.verify_mode = False, ssl.CERT_NONE
        await world.client.writer.start_tls(client_tls)
        assert (await world.client.command("EHLO client.test"))[0] == 250
        assert world.protocol.plain_transport is tcp and world.protocol.transport is not tcp


# ------------------------------------------------------------------ the session timer after a long DATA


class Clock:
    """The event loop's clock, moved forward on demand: every timer (aiosmtpd's session timer, the
    upstream budget) sees the jump at the loop's next turn, as if that much time had passed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        loop = asyncio.get_running_loop()
        real = loop.time
        self.offset = 0.0
        monkeypatch.setattr(loop, "time", lambda: real() + self.offset)

    def advance(self, seconds: float) -> None:
        self.offset += seconds


SESSION_TIMEOUT, UPSTREAM_TIMEOUT = 10.0, 6.0
UPLOAD_TIME, AFTER_DOT = 8.0, 4.0  # 12 s after the DATA command: past the session timeout, unless reset


async def test_a_long_upload_leaves_signing_and_upstream_a_whole_session_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """R5: DATA takes 8 of the 10 s session timeout; upstream holds its reply another 4 s. Without a fresh
    timer once DATA is in, the session would time out (421 4.4.2) while upstream is answering."""
    store = SqliteStore(make_settings(tmp_path).database_path)
    make_tenant(store, make_settings(tmp_path), "acme", domain="acme.test", status=TenantStatus.VERIFIED)
    secret = add_client(store, "billing", tenants=("acme",))
    head = b"From: app@platform.test\r\nTo: someone@example.test\r\nSubject: slow\r\n\r\n"
    async with ScriptedUpstream(Script(hold_after_dot=True)) as upstream:
        settings = make_settings(tmp_path, upstream=smtp_upstream(upstream.port),
                                 session_timeout=SESSION_TIMEOUT, upstream_timeout=UPSTREAM_TIMEOUT)
        async with relay_running(settings, store) as relay:
            clock = Clock(monkeypatch)
            client = await RawClient.connect(relay)
            await client.start_mail("billing", secret)  # the DATA command (re)started the session timer
            client.writer.write(head + b"first half\r\n" * 1000)
            await client.writer.drain()
            clock.advance(UPLOAD_TIME)  # a slow client: most of the session timeout spent uploading
            client.writer.write(b"second half\r\n" * 1000 + b".\r\n")
            await client.writer.drain()
            await asyncio.wait_for(upstream.dot_arrived.wait(), 10)
            clock.advance(AFTER_DOT)  # upstream takes its time: within its own budget of 6 s
            upstream.release.set()
            final = await client.reply()
            client.close()
    store.close()
    assert final[0] == 250, final
    assert upstream.data is not None and upstream.data.count(b"second half") == 1000
