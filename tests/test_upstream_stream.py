"""A message handed to upstream as fields over the DATA buffer (`SmtpUpstream.deliver_message`) goes out
in chunks with the wire drained between them, and arrives byte for byte as the same message handed
over as bytes: dot-stuffing across chunk boundaries, the final dot, SIZE and BODY=8BITMIME included."""

from __future__ import annotations

import asyncio
import inspect

from aiosmtplib.protocol import SMTPProtocol

from relay.mail.lines import normalise
from relay.mail.message import parse_message
from relay.smtp.upstream import Envelope, SmtpUpstream
from tests.relay_harness import RecordingUpstream, smtp_upstream


def big_message() -> bytes:
    """~3 MB over several chunks, with lines that start with a dot where chunks begin and end, and 8-bit text."""
    head = b"From: Acme <billing@acme.test>\r\nTo: a@example.test\r\nSubject: big\r\n\r\n"
    lines = [b".leading dot %d, caf\xc3\xa9 " % i + b"x" * (i % 97) for i in range(60_000)]
    return head + b"\r\n".join(lines) + b"\r\n.\r\n..\r\nlast line\r\n"


async def test_a_message_in_chunks_arrives_as_the_same_message_as_bytes() -> None:
    data = big_message()
    message = parse_message(normalise(data))
    envelope = Envelope(sender="bounces@bounce.acme.test", recipients=("a@example.test",))
    async with RecordingUpstream() as server:
        upstream = SmtpUpstream(smtp_upstream(server.port), timeout=30.0, local_hostname="relay.test")
        try:
            streamed = await upstream.deliver_message(envelope, message)
            joined = await upstream.deliver(envelope, data)
        finally:
            await upstream.close()
    assert streamed.code == joined.code == 250
    first, second = server.messages
    assert first.data == second.data == data, "both arrive as sent, un-stuffed by the server"
    assert message.size == len(data)


def test_the_flow_control_the_writer_waits_on_is_there() -> None:
    """relay.smtp.upstream waits for aiosmtplib's protocol to drain (`_drain_helper`, asyncio's flow
    control): a new aiosmtplib without it fails here, not on the first large message."""
    helper = getattr(SMTPProtocol, "_drain_helper", None)
    assert helper is not None and inspect.iscoroutinefunction(helper)
    assert tuple(inspect.signature(helper).parameters) == ("self",)
    assert asyncio.iscoroutinefunction(SMTPProtocol._drain_helper)
