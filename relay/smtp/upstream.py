"""Where accepted mail goes: an SMTP server (aiosmtplib, translated at this one boundary) or an outbox dir.

Error tree of `deliver()` (see relay.core.replies):

    Reply 250                  upstream accepted these bytes for every recipient (R1)
    UpstreamReplyError         upstream refused MAIL, a RCPT (after RSET: nothing delivered, R3) or
                               the data; its class and enhanced code kept (R2), also when the RSET
                               after a refused recipient fails or stalls
    ReplyError(554 5.6.3)      8-bit content and upstream does not offer 8BITMIME: nothing sent
    ReplyError(451 4.4.1)      not connected, timed out or lost before the final dot: nothing delivered
    ReplyError(451 4.4.2)      silent or lost after the final dot: ambiguous (R6), the caller logs it

The SMTP transaction is done step by step, never with `sendmail()`, which raises only when every
recipient is refused. On any failure, and when the caller is cancelled (aiosmtpd cancels the handler
when the client disconnects, R4), the transport is aborted: a polite close or QUIT would flush a
buffered body and its final dot.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import aiosmtplib
from aiosmtplib.protocol import normalize_message_line_endings

from relay.core.atomicfile import write_atomically
from relay.core.replies import (
    CONVERSION_NOT_SUPPORTED,
    TLS_REQUIRED_MISSING,
    UPSTREAM_AMBIGUOUS,
    UPSTREAM_UNAVAILABLE,
    Reply,
    ReplyError,
    UpstreamReplyError,
)
from relay.core.settings import Settings
from relay.core.settings import Upstream as UpstreamSetting
from relay.mail.message import CRLF
from relay.policy.senders import client_ip, is_loopback

log = logging.getLogger("relay.upstream")

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class Envelope:
    sender: str  # our bounce address, never the client's MAIL FROM
    recipients: tuple[str, ...]


class Upstream(Protocol):
    async def deliver(self, envelope: Envelope, message: bytes) -> Reply: ...


def make_upstream(settings: Settings) -> Upstream:
    target = settings.upstream
    if target.scheme == "outbox":
        assert target.outbox_dir is not None
        return Outbox(target.outbox_dir)
    return SmtpUpstream(target, timeout=settings.upstream_timeout, local_hostname=settings.hostname)


def _clean_text(text: str) -> str:
    """Upstream's words for a client reply: one line of printable ASCII, bounded."""
    flat = " ".join(text.split())
    return "".join(char if " " <= char <= "~" else "?" for char in flat)[:200]


def upstream_reply(code: int, message: str, what: str) -> Reply:
    """Upstream's reply kept in class with its enhanced code (R2); 421 and oddities become 451."""
    match = _ENHANCED.match(message)
    text = _clean_text(message[match.end():] if match else message)
    if code == 421 or not 400 <= code < 600:  # 421: upstream is closing, not judging the message
        return Reply(451, "4.4.1", f"Upstream unavailable ({what}): {text}")
    if match and match.group(1) == str(code)[0]:
        enhanced = match.group(0)
    else:
        enhanced = f"{str(code)[0]}.0.0"
    return Reply(code, enhanced, f"Upstream refused {what}: {text}")


class SmtpUpstream:
    """smtp:// (STARTTLS when offered; required with ?tls=required) or smtps:// (implicit TLS)."""

    def __init__(self, target: UpstreamSetting, *, timeout: float, local_hostname: str) -> None:
        self._target = target
        self._timeout = timeout
        self._local_hostname = local_hostname

    async def deliver(self, envelope: Envelope, message: bytes) -> Reply:
        client = aiosmtplib.SMTP(
            hostname=self._target.host,
            port=self._target.port,
            local_hostname=self._local_hostname,
            use_tls=self._target.scheme == "smtps",
            start_tls=False,  # decided below from the EHLO, so that ?tls=required can refuse
            timeout=None,  # one budget for the whole exchange, enforced here (R5)
            tls_context=ssl.create_default_context() if self._target.scheme == "smtps" else None,
        )
        sent = _Progress()
        try:
            async with asyncio.timeout(self._timeout):
                return await self._transaction(client, envelope, message, sent)
        except TimeoutError:
            raise sent.failure() from None
        except aiosmtplib.SMTPResponseException as exc:
            # Greeting, EHLO, STARTTLS or AUTH refused: our set-up, not the message, so transient.
            log.warning("upstream %s refused the session: %d %s", self._target, exc.code, _clean_text(exc.message))
            raise ReplyError(UPSTREAM_UNAVAILABLE) from None
        except (aiosmtplib.SMTPException, OSError, ValueError) as exc:
            log.warning("upstream %s: %s: %s", self._target, type(exc).__name__, exc)
            raise sent.failure() from None
        finally:
            _abort(client)

    async def _transaction(
        self, client: aiosmtplib.SMTP, envelope: Envelope, message: bytes, sent: "_Progress"
    ) -> Reply:
        await client.connect()
        await self._hello(client)
        _check_8bit(client, message)
        if self._target.username is not None:
            await client.login(self._target.username, self._target.password or "")
        await self._command(client, "sender", b"MAIL", b"FROM:<" + envelope.sender.encode() + b">",
                            *self._mail_options(client, message))
        refusals: list[Reply] = []
        for recipient in envelope.recipients:
            response = await client.execute_command(b"RCPT", b"TO:<" + recipient.encode() + b">")
            if response.code not in (250, 251):
                refusals.append(upstream_reply(response.code, response.message, f"recipient <{recipient}>"))
        if refusals:
            # R3: all or nothing. RSET ends the upstream transaction; the worst refusal is returned,
            # whatever becomes of the RSET (R2: a 5xx stays 5xx).
            sent.refusal = max(refusals, key=lambda reply: reply.code // 100)
            await self._reset(client)
            raise UpstreamReplyError(sent.refusal)
        await self._command(client, "data", b"DATA", expect=354)
        protocol = client.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("connection lost before the data")
        protocol.write(_dot_stuffed(message))
        sent.dot = True  # from here on, upstream may have the whole message (RFC 1047)
        response = await protocol.read_response(timeout=None)
        if response.code != 250:
            raise UpstreamReplyError(upstream_reply(response.code, response.message, "the message"))
        await quit_politely(client)
        said = _ENHANCED.sub("", response.message).strip()
        return Reply(250, "2.0.0", f"OK: accepted by upstream: {_clean_text(said)}")

    async def _hello(self, client: aiosmtplib.SMTP) -> None:
        await client.ehlo()
        if self._target.scheme == "smtps":
            return
        if client.supports_extension("starttls"):
            await client.starttls()
            await client.ehlo()  # RFC 3207 4.2: forget what was said before TLS
        elif self._target.tls_required:
            log.warning("upstream %s does not offer STARTTLS; refusing plaintext (tls=required)", self._target)
            raise ReplyError(TLS_REQUIRED_MISSING)
        elif self._target.username is not None and not _is_loopback(client.get_transport_info("peername")):
            log.warning("upstream %s does not offer STARTTLS; not sending its password in the clear", self._target)
            raise ReplyError(TLS_REQUIRED_MISSING)

    async def _reset(self, client: aiosmtplib.SMTP) -> None:
        """RSET within a second; a failure only means the connection goes: `deliver` aborts it next.

        Nothing follows the refused RCPT, so dropping the connection also ends the upstream
        transaction (RFC 5321 3.8: a server whose connection closes early cancels a pending one)."""
        try:
            async with asyncio.timeout(1.0):
                response = await client.execute_command(b"RSET")
            if response.code != 250:
                log.warning("upstream %s answered RSET with %d; dropping the connection", self._target, response.code)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            log.warning("upstream %s: RSET failed (%s); dropping the connection", self._target, type(exc).__name__)

    @staticmethod
    def _mail_options(client: aiosmtplib.SMTP, message: bytes) -> list[bytes]:
        options = []
        if client.supports_extension("size"):
            options.append(b"SIZE=%d" % len(message))
        if client.supports_extension("8bitmime") and not message.isascii():
            options.append(b"BODY=8BITMIME")  # RFC 6152
        return options

    @staticmethod
    async def _command(client: aiosmtplib.SMTP, what: str, *args: bytes, expect: int = 250) -> None:
        response = await client.execute_command(*args)
        if response.code != expect:
            raise UpstreamReplyError(upstream_reply(response.code, response.message, what))


def _check_8bit(client: aiosmtplib.SMTP, message: bytes) -> None:
    """8-bit content goes only to a server that offers 8BITMIME (RFC 6152 3); refuse it otherwise.

    Converting to 7 bit (quoted-printable) would have to happen before signing, since DKIM hashes
    the body we send, and before we know what upstream offers; raw 8-bit header text cannot be
    converted at all. Upstream's extensions are a fact of the deployment, so the refusal is
    permanent: 554 5.6.3, conversion required but not supported (RFC 3463).
    """
    if not message.isascii() and not client.supports_extension("8bitmime"):
        raise ReplyError(CONVERSION_NOT_SUPPORTED)


def _is_loopback(peer: object) -> bool:
    """Whether upstream's peername is a loopback address (IPv4-mapped too: relay.policy.senders.client_ip)."""
    return is_loopback(client_ip(peer))


@dataclass
class _Progress:
    dot: bool = False  # the final dot went out: from here on an outcome is ambiguous (R6)
    refusal: Reply | None = None  # a recipient was refused: that is the answer, whatever follows (R3)

    def failure(self) -> ReplyError:
        """What the client gets when the exchange breaks off (timeout, lost connection)."""
        if self.refusal is not None:
            return UpstreamReplyError(self.refusal)
        return ReplyError(UPSTREAM_AMBIGUOUS if self.dot else UPSTREAM_UNAVAILABLE)


def _dot_stuffed(message: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency and the final dot, on the lines aiosmtplib would send.

    The pipeline hands over signed messages, CRLF-only (the signer refuses anything else), so
    bytes.replace does it; any other message gets aiosmtplib's normalisation of bare CR and LF first.
    """
    crlf = message.count(CRLF)
    if message.count(b"\r") != crlf or message.count(b"\n") != crlf:
        message = normalize_message_line_endings(message)
    elif not message.endswith(CRLF):
        message += CRLF
    stuffed = message.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


async def quit_politely(client: aiosmtplib.SMTP) -> None:
    """QUIT within a second, ignoring failure: after the final reply the outcome is already known."""
    # After upstream's 250 the message is delivered; QUIT is a courtesy and may not fail the send.
    try:
        async with asyncio.timeout(1.0):
            await client.quit()
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        pass


def _abort(client: aiosmtplib.SMTP) -> None:
    """Drop the connection without flushing anything still buffered (never a QUIT, R4)."""
    transport = client.transport
    if transport is not None and isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    client.close()


@dataclass(frozen=True)
class OutboxReply(Reply):
    """The outbox's 250, carrying the file it wrote (send-test reports it; clients see only the text)."""

    path: Path = Path()


class Outbox:
    """`outbox:DIR`: one `.eml` per message, written atomically (relay.core.atomicfile), never over another.

    The envelope goes in the file itself, as the first lines, the way a delivery agent records it
    (RFC 5321 4.4): `Return-Path: <sender>` and one `X-Envelope-To: <recipient>` per recipient. They
    sit above our DKIM-Signature and are not signed, so the signed bytes still verify. The envelope
    ends at the first line that is not `X-Envelope-To` (admin.receiver.outbox_envelope reads it so);
    relay.mail.rewrite removes a client's own Return-Path and X-Envelope-To, so none follows further down.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    async def deliver(self, envelope: Envelope, message: bytes) -> Reply:
        try:
            name = await asyncio.to_thread(self._write, envelope, message)
        except OSError as exc:
            log.error("outbox %s: cannot write: %s", self._directory, exc.strerror)
            raise ReplyError(UPSTREAM_UNAVAILABLE) from None
        return OutboxReply(250, "2.0.0", f"OK: written to the outbox as {name}", path=self._directory / name)

    def _write(self, envelope: Envelope, message: bytes) -> str:
        self._directory.mkdir(parents=True, exist_ok=True)
        lines = [f"Return-Path: <{envelope.sender}>\r\n".encode()]
        lines += [f"X-Envelope-To: <{recipient}>\r\n".encode() for recipient in envelope.recipients]
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(8)}.eml"  # sorts by time; unique
        # replace=False: a name clash fails (451) instead of overwriting a message already accepted.
        write_atomically(self._directory / name, b"".join(lines) + message, mode=0o640, replace=False)
        return name
