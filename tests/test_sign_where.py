"""Where a message is signed: a small one on the event loop (one RSA signature costs less than the hand-off
to a thread), a large one on the signing threads, so hashing it never stalls the other sessions
(relay.smtp.pipeline.INLINE_SIGN_BYTES)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from relay.mail.signer import DkimSigner
from relay.service.relay import start_relay
from relay.smtp.pipeline import INLINE_SIGN_BYTES
from tests.relay_harness import RawClient, make_settings
from tests.test_parse_once import BytesUpstream, World, world  # noqa: F401  (world: a fixture)


def message(size: int) -> bytes:
    head = b"From: app@platform.test\r\nTo: someone@example.test\r\nSubject: S\r\nX-Relay-Tenant: acme\r\n\r\n"
    line = b"x" * 78 + b"\r\n"
    return head + line * (size // len(line) + 1)


async def test_a_small_message_is_signed_on_the_loop_and_a_large_one_on_a_thread(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    sign = DkimSigner.sign_message

    def recording(self: DkimSigner, *args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return sign(self, *args)

    monkeypatch.setattr(DkimSigner, "sign_message", recording)
    upstream = BytesUpstream()
    relay = await start_relay(make_settings(world.tmp), world.store, upstream=upstream)
    try:
        for size in (1024, INLINE_SIGN_BYTES + 1024):
            client = await RawClient.connect(relay)
            for text, expected in (("EHLO raw.test", 250), ("MAIL FROM:<app@platform.test>", 250),
                                   ("RCPT TO:<someone@example.test>", 250), ("DATA", 354)):
                code, said = await client.command(text)
                assert code == expected, f"{text}: {code} {said}"
            client.writer.write(message(size) + b".\r\n")
            code, said = await client.reply()
            assert code == 250, said
            await client.command("QUIT")
            client.close()
    finally:
        await relay.close()
    assert len(upstream.messages) == 2
    assert threads[0] == threading.main_thread().name, "the small one on the event loop"
    assert threads[1].startswith("relay-sign"), "the large one on a signing thread"
