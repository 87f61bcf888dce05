"""The outbox upstream: its 250 names the file it wrote, as data and in the reply text."""

from __future__ import annotations

from pathlib import Path

from relay.smtp.upstream import Envelope, Outbox, OutboxReply


async def test_outbox_reply_carries_the_file_it_wrote(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    reply = await outbox.deliver(Envelope("bounces@bounce.acme.test", ("a@example.test",)),
                                 b"From: x@acme.test\r\n\r\nbody\r\n")
    assert isinstance(reply, OutboxReply) and reply.code == 250
    assert reply.path.parent == tmp_path / "outbox" and reply.path.is_file()
    assert reply.path.name in str(reply)  # the client reads the same name in the reply text
    assert reply.path.read_bytes().startswith(b"Return-Path: <bounces@bounce.acme.test>\r\n")
