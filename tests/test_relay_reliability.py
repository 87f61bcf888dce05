"""RELIABILITY.md R1-R7 against scripted, misbehaving upstreams: never 250 unless upstream said 250 for the
same bytes and every recipient; classes kept; nothing delivered on partial refusal or client drop."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.core.models import TenantStatus
from relay.core.replies import Reply
from relay.core.settings import Settings, Upstream
from relay.core.store import Store, open_store
from relay.smtp import server as relay_server
from relay.smtp.upstream import Envelope
from tests.factories import make_tenant
from tests.relay_harness import (
    RawClient,
    RecordingUpstream,
    Script,
    ScriptedUpstream,
    add_client,
    closed_port,
    eventually,
    make_settings,
    non_loopback_address,
    relay_running,
    self_signed,
    send,
    server_tls,
    smtp_upstream,
)
from tests.snapshot import Stores

MESSAGE = b"From: app@platform.test\r\nTo: a@example.test\r\nSubject: R\r\n\r\nBody.\r\n"


@dataclass
class World:
    settings: Settings
    store: Store
    secret: str

    def with_upstream(self, port: int, **fields: Any) -> Settings:
        return self.settings.model_copy(update={"upstream": smtp_upstream(port, **fields)})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, backend_stores: Stores) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("reliability")
    settings = make_settings(tmp, database=backend_stores.new(tmp))
    store = open_store(settings)
    make_tenant(store, settings, "acme", domain="acme.test", status=TenantStatus.VERIFIED)
    secret = add_client(store, "billing", tenants=("acme",))
    yield World(settings, store, secret)
    store.close()
    backend_stores.discard(settings.database)


def unstuffed(data: bytes) -> bytes:
    """The message a scripted upstream received, without the final dot and transparency dots."""
    assert data.endswith(b"\r\n.\r\n")
    return re.sub(rb"(?m)^\.", b"", data[:-3])


@pytest.mark.parametrize("refusal, expected", [
    ("550 5.1.1 No such user", (550, "5.1.1")),
    ("450 4.2.1 Mailbox busy", (450, "4.2.1")),
])
async def test_r1_r3_one_recipient_refused_delivers_nothing(world: World, refusal: str,
                                                             expected: tuple[int, str]) -> None:
    async with ScriptedUpstream(Script(rcpt={"bad@example.test": refusal})) as upstream:
        async with relay_running(world.with_upstream(upstream.port), world.store) as relay:
            outcome = await send(relay, MESSAGE, user="billing", secret=world.secret,
                                 rcpts=("good@example.test", "bad@example.test", "also@example.test"))
    assert (outcome.code, outcome.text.split()[0]) == expected, outcome
    assert "bad@example.test" in outcome.text
    assert upstream.verbs() == ["EHLO", "MAIL", "RCPT", "RCPT", "RCPT", "RSET"]
    assert not upstream.data_started, "no DATA after a refused recipient"


@pytest.mark.parametrize("after_dot, expected", [
    ("451 4.3.0 Try again later", (451, "4.3.0")),
    ("554 5.7.1 Rejected by policy", (554, "5.7.1")),
    ("550 Rejected, no enhanced code", (550, "5.0.0")),
    ("421 4.3.2 Shutting down", (451, "4.4.1")),
])
async def test_r2_upstream_class_and_enhanced_code_are_kept(world: World, after_dot: str,
                                                            expected: tuple[int, str]) -> None:
    async with ScriptedUpstream(Script(after_dot=after_dot)) as upstream:
        async with relay_running(world.with_upstream(upstream.port), world.store) as relay:
            outcome = await send(relay, MESSAGE, user="billing", secret=world.secret)
    assert (outcome.code, outcome.text.split()[0]) == expected, outcome
    assert upstream.data is not None


async def test_r2_r6_connection_dropped_after_the_dot_is_451_and_logged(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    async with ScriptedUpstream(Script(after_dot="drop")) as upstream:
        async with relay_running(world.with_upstream(upstream.port), world.store) as relay:
            outcome = await send(relay, MESSAGE, user="billing", secret=world.secret)
    assert (outcome.code, outcome.text.split()[0]) == (451, "4.4.2"), outcome
    assert upstream.data is not None
    sent = unstuffed(upstream.data)
    [line] = [r.getMessage() for r in caplog.records if "ambiguous" in r.getMessage()]
    message_id = re.search(rb"(?im)^message-id:\s*(.+?)\r\n", sent)
    assert message_id is not None
    assert f"message-id={message_id.group(1).decode()}" in line
    assert f"sha256={hashlib.sha256(sent).hexdigest()}" in line


async def test_r5_r6_upstream_stalling_after_the_dot_gets_451_within_the_budget(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    async with ScriptedUpstream(Script(after_dot="stall")) as upstream:
        settings = world.with_upstream(upstream.port).model_copy(update={"upstream_timeout": 0.5})
        async with relay_running(settings, world.store) as relay:
            outcome = await send(relay, MESSAGE, user="billing", secret=world.secret)
    assert (outcome.code, outcome.text.split()[0]) == (451, "4.4.2"), outcome
    assert upstream.stalled.is_set()
    assert any("ambiguous" in r.getMessage() and "sha256=" in r.getMessage() for r in caplog.records)


async def test_r2_upstream_stalling_before_the_dot_is_451_not_ambiguous(world: World) -> None:
    async with ScriptedUpstream(Script(stall_at="MAIL")) as upstream:
        settings = world.with_upstream(upstream.port).model_copy(update={"upstream_timeout": 0.5})
        async with relay_running(settings, world.store) as relay:
            outcome = await send(relay, MESSAGE, user="billing", secret=world.secret)
    assert (outcome.code, outcome.text.split()[0]) == (451, "4.4.1"), outcome


async def test_r2_unreachable_upstream_is_451(world: World) -> None:
    async with relay_running(world.with_upstream(closed_port()), world.store) as relay:
        outcome = await send(relay, MESSAGE, user="billing", secret=world.secret)
    assert (outcome.code, outcome.text.split()[0]) == (451, "4.4.1"), outcome


async def test_tls_required_refuses_an_upstream_without_starttls(world: World) -> None:
    async with ScriptedUpstream(Script()) as upstream:
        async with relay_running(world.with_upstream(upstream.port, tls_required=True), world.store) as relay:
            refused = await send(relay, MESSAGE, user="billing", secret=world.secret)
        assert (refused.code, refused.text.split()[0]) == (451, "4.7.5"), refused
        assert upstream.verbs() == ["EHLO"], "nothing but EHLO in the clear"
        # The same upstream without ?tls=required: plaintext is accepted (STARTTLS only when offered).
        async with relay_running(world.with_upstream(upstream.port), world.store) as relay:
            accepted = await send(relay, MESSAGE, user="billing", secret=world.secret)
    assert accepted.code == 250, accepted


@pytest.mark.parametrize("scheme", ["smtp", "smtps"])
async def test_upstream_tls_starttls_and_implicit_with_a_verified_certificate(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheme: str) -> None:
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust our test CA, as an operator's CA bundle would
    async with RecordingUpstream(tls=server_tls(cert, key), implicit_tls=scheme == "smtps") as upstream:
        target = Upstream(scheme=scheme, host="127.0.0.1", port=upstream.port, username=None,  # type: ignore[arg-type]
                          tls_required=True)
        async with relay_running(world.settings.model_copy(update={"upstream": target}), world.store) as relay:
            outcome = await send(relay, MESSAGE, user="billing", secret=world.secret)
    assert outcome.code == 250, outcome
    assert upstream.only.tls


async def test_upstream_with_an_untrusted_certificate_is_451(world: World, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)  # not trusted: SSL_CERT_FILE not set
    async with RecordingUpstream(tls=server_tls(cert, key)) as upstream:
        async with relay_running(world.with_upstream(upstream.port), world.store) as relay:
            outcome = await send(relay, MESSAGE, user="billing", secret=world.secret)
    assert (outcome.code, outcome.text.split()[0]) == (451, "4.4.1"), outcome
    assert upstream.messages == []


async def test_upstream_auth_comes_from_the_url(world: World) -> None:
    async with ScriptedUpstream(Script(ehlo=("AUTH PLAIN LOGIN",))) as upstream:
        settings = world.with_upstream(upstream.port, username="relay", password="p@ss:word")
        async with relay_running(settings, world.store) as relay:
            outcome = await send(relay, MESSAGE, user="billing", secret=world.secret)
    assert outcome.code == 250, outcome
    token = base64.b64encode(b"\0relay\0p@ss:word").decode()
    assert f"AUTH PLAIN {token}" in upstream.commands


async def test_upstream_password_is_never_sent_in_the_clear_off_loopback(world: World) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("no non-loopback local address on this machine")
    async with ScriptedUpstream(Script(ehlo=("AUTH PLAIN LOGIN",)), host=address) as upstream:
        settings = world.with_upstream(upstream.port, host=address, username="relay", password="secret")
        async with relay_running(settings, world.store) as relay:
            outcome = await send(relay, MESSAGE, user="billing", secret=world.secret)
    assert (outcome.code, outcome.text.split()[0]) == (451, "4.7.5"), outcome
    assert upstream.verbs() == ["EHLO"]


async def test_r4_client_dropping_mid_data_leaves_nothing_upstream(world: World) -> None:
    async with ScriptedUpstream(Script()) as upstream:
        async with relay_running(world.with_upstream(upstream.port), world.store) as relay:
            client = await RawClient.connect(relay)
            await client.start_mail("billing", world.secret)
            client.writer.write(MESSAGE[: len(MESSAGE) // 2])
            await client.writer.drain()
            client.close()
            await eventually(lambda: all(s.transport is None for s in relay.sessions))
            # The relay is still serving: a complete message afterwards goes through.
            after = await send(relay, MESSAGE, user="billing", secret=world.secret)
    assert after.code == 250
    assert upstream.verbs().count("DATA") == 1 and upstream.verbs().count("MAIL") == 1


async def test_r4_client_dropping_while_upstream_works_aborts_without_quit(world: World) -> None:
    """aiosmtpd cancels the handler when the client goes; the upstream transport is aborted, not QUIT."""
    async with ScriptedUpstream(Script(stall_at="DATA")) as upstream:
        async with relay_running(world.with_upstream(upstream.port), world.store) as relay:
            client = await RawClient.connect(relay)
            await client.start_mail("billing", world.secret)
            client.writer.write(MESSAGE + b".\r\n")
            await client.writer.drain()
            await eventually(upstream.stalled.is_set)
            client.writer.transport.abort()
            await eventually(upstream.closed.is_set)
    assert upstream.verbs() == ["EHLO", "MAIL", "RCPT", "DATA"], "no QUIT, no RSET, no body"
    assert upstream.data is None


async def test_r4_client_dropping_mid_upload_upstream_never_gets_the_dot(world: World) -> None:
    """The relay is writing a big body upstream when its client goes: the rest, and the final dot, are
    dropped (transport aborted). A polite close would flush them and upstream would deliver."""
    body = (b"z" * 998 + b"\r\n") * 12_000  # 12 MB: more than the kernel buffers between us hold
    message = b"From: app@platform.test\r\nTo: a@example.test\r\n\r\n" + body
    async with ScriptedUpstream(Script(pause_data_after=1_000_000)) as upstream:
        async with relay_running(world.with_upstream(upstream.port), world.store) as relay:
            client = await RawClient.connect(relay)
            await client.start_mail("billing", world.secret)
            client.writer.write(message + b".\r\n")
            await client.writer.drain()
            await eventually(upstream.paused.is_set)
            client.writer.transport.abort()
            await eventually(lambda: all(s.transport is None for s in relay.sessions))
            upstream.resume.set()
            await eventually(upstream.closed.is_set)
    assert 1_000_000 <= len(upstream.raw_data) < len(message)
    assert not upstream.raw_data.endswith(b"\r\n.\r\n")
    assert "QUIT" not in upstream.verbs()


class _Exploding:
    async def deliver(self, envelope: Envelope, message: bytes) -> Reply:
        raise RuntimeError("internal detail /srv/relay/secret.conf")


async def test_r7_internal_error_in_the_pipeline_is_451_without_internals(world: World) -> None:
    async with relay_running(world.settings, world.store, upstream=_Exploding()) as relay:
        outcome = await send(relay, MESSAGE, user="billing", secret=world.secret)
    assert (outcome.code, outcome.text.split()[0]) == (451, "4.3.0"), outcome
    assert "RuntimeError" not in outcome.text and "secret" not in outcome.text


async def test_r7_unhandled_exception_in_a_hook_is_451_not_500(world: World,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(address: str) -> str:
        raise RuntimeError("internal detail")

    # No loopback peer can make a hook fail unexpectedly: patch the one decision the RCPT hook calls.
    monkeypatch.setattr(relay_server, "check_recipient", explode)
    async with RecordingUpstream() as upstream:
        async with relay_running(world.with_upstream(upstream.port), world.store) as relay:
            outcome = await send(relay, MESSAGE, user="billing", secret=world.secret)
    assert (outcome.stage, outcome.code, outcome.text.split()[0]) == ("RCPT", 451, "4.3.0"), outcome
    assert "RuntimeError" not in outcome.text and "internal detail" not in outcome.text
    assert upstream.messages == []


def test_r5_upstream_budget_must_end_before_the_session(tmp_path: Path) -> None:
    from relay.core.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="RELAY_UPSTREAM_TIMEOUT"):
        load_settings(upstream_timeout=300, session_timeout=300)


@pytest.mark.parametrize("rset", [
    Script(stall_at="RSET"),
    Script(replies={"RSET": "drop"}),
    Script(replies={"RSET": "421 4.3.2 Shutting down"}),
    Script(replies={"RSET": "500 5.5.1 What?"}),
], ids=["stalls", "drops", "421", "500"])
@pytest.mark.parametrize("refusal, expected", [
    ("550 5.1.1 No such user", (550, "5.1.1")),
    ("450 4.2.1 Mailbox busy", (450, "4.2.1")),
])
async def test_r2_r3_a_failed_rset_keeps_the_recipient_refusal_and_drops_the_connection(
        world: World, rset: Script, refusal: str, expected: tuple[int, str]) -> None:
    script = Script(rcpt={"bad@example.test": refusal}, stall_at=rset.stall_at, replies=rset.replies)
    async with ScriptedUpstream(script) as upstream:
        settings = world.with_upstream(upstream.port).model_copy(update={"upstream_timeout": 0.5})
        async with relay_running(settings, world.store) as relay:
            outcome = await send(relay, MESSAGE, user="billing", secret=world.secret,
                                 rcpts=("good@example.test", "bad@example.test"))
        await eventually(upstream.closed.is_set)  # the relay dropped the connection
    assert (outcome.code, outcome.text.split()[0]) == expected, outcome
    assert upstream.verbs() == ["EHLO", "MAIL", "RCPT", "RCPT", "RSET"], "no DATA, no QUIT"
    assert not upstream.data_started


EIGHT_BIT = (b"From: app@platform.test\r\nTo: a@example.test\r\nSubject: Factuur\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
             b"Bedrag: \xe2\x82\xac 12,50\r\n")


async def test_8bit_message_to_an_upstream_without_8bitmime_is_refused_554_5_6_3(world: World) -> None:
    """RFC 6152 3: 8-bit data only to a server that offers 8BITMIME; we refuse rather than convert."""
    async with ScriptedUpstream(Script(ehlo=("SIZE 100000000",))) as upstream:
        async with relay_running(world.with_upstream(upstream.port), world.store) as relay:
            refused = await send(relay, EIGHT_BIT, user="billing", secret=world.secret)
            plain = await send(relay, MESSAGE, user="billing", secret=world.secret)
    assert (refused.code, refused.text.split()[0]) == (554, "5.6.3"), refused
    assert plain.code == 250, plain
    assert upstream.verbs() == ["EHLO", "EHLO", "MAIL", "RCPT", "DATA", "QUIT"], "nothing of the 8-bit one"
    [mail] = [line for line in upstream.commands if line.upper().startswith("MAIL")]
    assert "BODY=" not in mail.upper()


async def test_8bit_message_says_body_8bitmime_when_upstream_offers_it(world: World) -> None:
    async with ScriptedUpstream(Script()) as upstream:  # offers 8BITMIME
        async with relay_running(world.with_upstream(upstream.port), world.store) as relay:
            eight_bit = await send(relay, EIGHT_BIT, user="billing", secret=world.secret)
            plain = await send(relay, MESSAGE, user="billing", secret=world.secret)
    assert eight_bit.code == 250 and plain.code == 250
    first, second = [line for line in upstream.commands if line.upper().startswith("MAIL")]
    assert first.endswith(" BODY=8BITMIME") and "BODY=" not in second
