"""Issue 11: a message's header block is split once on its way through the relay, and its body travels
from the DATA reader to the upstream hand-off without a copy (checked by identity, not by measuring)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim  # type: ignore[import-untyped]
import pytest
from aiosmtplib.protocol import PERIOD_REGEX

import relay.mail.lines as lines_module
import relay.mail.message as message_module
from relay.core.models import DkimKey, TenantStatus
from relay.core.replies import Reply
from relay.core.store import SqliteStore
from relay.core.transaction import Transaction
from relay.service.relay import start_relay
from relay.smtp.pipeline import Pipeline
from relay.smtp.upstream import Envelope
from tests.factories import make_tenant
from tests.relay_harness import RawClient, add_client, make_settings

MESSAGE = (b"From: app@platform.test\r\nTo: someone@example.test\r\nSubject: parsed once\r\n"
           b"X-Relay-Tenant: acme\r\n\r\n" + b"a body line\r\n" * 200 + b".a dot line\r\n" + b"last\r\n")


class BytesUpstream:
    """An upstream as relay.smtp.upstream's: it takes the message joined."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def deliver(self, envelope: Envelope, message: bytes) -> Reply:
        self.messages.append(message)
        return Reply(250, "2.0.0", "OK")


class PartsUpstream(BytesUpstream):
    """An upstream that takes the parsed message (relay.smtp.pipeline.MessageUpstream)."""

    async def deliver_message(self, envelope: Envelope, message: Any) -> Reply:
        self.messages.append(message)
        return Reply(250, "2.0.0", "OK")


@dataclass
class World:
    tmp: Path
    store: SqliteStore
    key: DkimKey


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    settings = make_settings(tmp_path)
    store = SqliteStore(settings.database_path)
    _, key = make_tenant(store, settings, "acme", domain="acme.test", status=TenantStatus.VERIFIED)
    add_client(store, "app", tenants=("acme",), networks=("127.0.0.0/8",))
    yield World(tmp_path, store, key)
    store.close()


def count_header_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every split of a header block in relay/: `parse_header` wherever it is bound, and the
    `split_header_body` each stage used to call for itself (before issue 11)."""
    calls: list[str] = []

    def counting(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return function(*args, **kwargs)
        return counted

    parse_header = getattr(message_module, "parse_header", None)
    for name, module in list(sys.modules.items()):
        if not name.startswith("relay."):
            continue
        if parse_header is not None and getattr(module, "parse_header", None) is parse_header:
            monkeypatch.setattr(module, "parse_header", counting("parse_header", parse_header))
        if module is not message_module and hasattr(module, "split_header_body"):
            monkeypatch.setattr(module, "split_header_body", counting("split_header_body", module.split_header_body))
    return calls


def record_transactions(monkeypatch: pytest.MonkeyPatch) -> list[Transaction]:
    seen: list[Transaction] = []
    handle = Pipeline.handle

    async def recording(self: Pipeline, tx: Transaction, **kwargs: Any) -> Reply:
        seen.append(tx)
        return await handle(self, tx, **kwargs)

    monkeypatch.setattr(Pipeline, "handle", recording)
    return seen


async def send(world: World, upstream: BytesUpstream, message: bytes = MESSAGE) -> tuple[int, str]:
    settings = make_settings(world.tmp)
    relay = await start_relay(settings, world.store, upstream=upstream)
    try:
        client = await RawClient.connect(relay)
        for text, expected in (("EHLO raw.test", 250), ("MAIL FROM:<app@platform.test>", 250),
                               ("RCPT TO:<someone@example.test>", 250), ("DATA", 354)):
            code, said = await client.command(text)
            assert code == expected, f"{text}: {code} {said}"
        stuffed = message.replace(b"\n.", b"\n..")  # RFC 5321 4.5.2, after CRLF or a bare LF alike
        client.writer.write(stuffed + b".\r\n")
        reply = await client.reply()
        await client.command("QUIT")
        client.close()
        return reply
    finally:
        await relay.close()


def dns_for(key: DkimKey) -> Callable[..., bytes | None]:
    record = f"v=DKIM1; k=rsa; p={key.public_key_b64}".encode("ascii")

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == f"{key.selector}._domainkey.acme.test.".encode() else None

    return lookup


async def test_the_header_block_is_parsed_once_per_message(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the whole relay (SMTP in, tenant header, rewrite, sign, upstream): one split, not one per stage."""
    calls = count_header_parses(monkeypatch)
    upstream = BytesUpstream()
    code, said = await send(world, upstream)
    assert code == 250, said
    assert calls == ["parse_header"]
    (signed,) = upstream.messages
    assert dkim.verify(signed, dnsfunc=dns_for(world.key))
    assert b"\r\n.a dot line\r\n" in signed and b"X-Relay-Tenant" not in signed


async def test_an_upstream_taking_the_message_gets_the_data_buffer_itself(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Normalising, un-stuffing, parsing, rewriting and signing made no copy of the body: upstream's message
    lies in the very bytes the DATA reader produced; on the wire it is what the joined bytes would be."""
    seen = record_transactions(monkeypatch)
    calls = count_header_parses(monkeypatch)
    upstream = PartsUpstream()
    code, said = await send(world, upstream)
    assert code == 250, said
    assert calls == ["parse_header"]
    (message,) = upstream.messages
    (tx,) = seen
    assert message.data is tx.data
    signed = message.tobytes()
    assert dkim.verify(signed, dnsfunc=dns_for(world.key))
    wire = b"".join(bytes(chunk) for chunk in message.stuffed_chunks(size=512))
    assert wire == PERIOD_REGEX.sub(b"..", signed) + b".\r\n"
    assert message.size == len(signed) and message.isascii()


async def test_nothing_is_parsed_for_a_refused_message(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A look-alike is refused by the DATA reader, before any header is split."""
    calls = count_header_parses(monkeypatch)
    settings = make_settings(world.tmp)
    upstream = BytesUpstream()
    relay = await start_relay(settings, world.store, upstream=upstream)
    try:
        client = await RawClient.connect(relay)
        for text in ("EHLO raw.test", "MAIL FROM:<app@platform.test>", "RCPT TO:<someone@example.test>", "DATA"):
            await client.command(text)
        client.writer.write(b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<ceo@acme.test>\r\n.\r\n")
        code, said = await asyncio.wait_for(client.reply(), 10)
        client.close()
    finally:
        await relay.close()
    assert (code, said[:5]) == (550, "5.5.2")
    assert calls == [] and upstream.messages == []


def count_line_end_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many bytes each call of relay.mail.lines.crlf_only (rule 1, wherever it is bound) counted."""
    sizes: list[int] = []
    original = lines_module.crlf_only

    def counted(data: bytes, start: int = 0, end: int | None = None) -> bool:
        sizes.append(len(range(len(data))[start:end]))
        return original(data, start, end)

    for name, module in list(sys.modules.items()):
        if name.startswith("relay.") and getattr(module, "crlf_only", None) is original:
            monkeypatch.setattr(module, "crlf_only", counted)
    return sizes


async def test_the_data_readers_count_of_line_endings_is_not_repeated(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """CRLF-only DATA (all ordinary mail): the reader counted every CR and LF while judging it, and says
    so; normalise does not count the whole message again (only the header block is, by parse_header)."""
    seen = record_transactions(monkeypatch)
    sizes = count_line_end_passes(monkeypatch)
    upstream = BytesUpstream()
    code, said = await send(world, upstream)
    assert code == 250, said
    (tx,) = seen
    assert tx.crlf_only
    assert sizes and max(sizes) < 200, sizes  # the header block: MESSAGE is ~2.6 KB
    assert dkim.verify(upstream.messages[0], dnsfunc=dns_for(world.key))


async def test_bare_lf_data_is_still_counted_and_made_crlf(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = record_transactions(monkeypatch)
    sizes = count_line_end_passes(monkeypatch)
    upstream = BytesUpstream()
    # Every line ends in a bare LF but the last: the end of data is CRLF "." CRLF and nothing else.
    code, said = await send(world, upstream, MESSAGE.replace(b"\r\n", b"\n")[:-1] + b"\r\n")
    assert code == 250, said
    (tx,) = seen
    assert not tx.crlf_only  # read line by line: not counted there
    assert max(sizes) >= len(MESSAGE) - len(b"\r") * MESSAGE.count(b"\r"), sizes  # the whole message, counted
    (signed,) = upstream.messages
    assert dkim.verify(signed, dnsfunc=dns_for(world.key))
    assert signed.count(b"\n") == signed.count(b"\r\n")
