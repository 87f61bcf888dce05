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

The relay's upstream keeps up to RELAY_UPSTREAM_POOL_SIZE connections open between messages (per
process; `make_upstream(..., pooled=True)`). Each message still has its own MAIL, RCPT and DATA, and
its own outcome as above. Only a connection whose last message got upstream's 250 goes back to the
pool; any refusal or error ends it as before (servers count errors per session and slow down or drop
sessions that collect them, e.g. Postfix's smtpd_soft_error_limit). Before reuse it must answer RSET
(RFC 5321 4.1.1.5), which clears the server's state and proves the connection alive; a
pooled connection that fails before upstream accepted MAIL FROM carried nothing, so the message goes
on a fresh connection instead. Idle connections are QUIT after POOL_IDLE_SECONDS, and all of them
when the upstream is closed (stop, or replaced at SIGHUP).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import ssl
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiosmtplib

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
from relay.mail.lines import crlf_only, dot_stuffed, to_crlf
from relay.mail.message import CRLF, Message
from relay.policy.senders import client_ip, is_loopback
from relay.smtp.transports import writable

log = logging.getLogger("relay.upstream")

# RFC 5321 4.5.3.2.7 lets a server drop a client idle for 5 minutes, and busy servers do it far sooner:
# we QUIT a pooled connection first. One the server closed anyway is replaced before MAIL FROM.
POOL_IDLE_SECONDS = 30.0
# Some servers cap the messages they take per connection: a fresh one after this many.
POOL_MAX_MESSAGES = 20
# How long a pooled connection may take to answer RSET before it is taken as dead.
PROBE_SECONDS = 5.0

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class Envelope:
    sender: str  # our bounce address, never the client's MAIL FROM
    recipients: tuple[str, ...]


class Upstream(Protocol):
    async def deliver(self, envelope: Envelope, message: bytes) -> Reply: ...


def make_upstream(settings: Settings, *, pooled: bool = False) -> Upstream:
    """The upstream of `settings`; `pooled` (the running relay) keeps RELAY_UPSTREAM_POOL_SIZE connections open:
    a one-off user (send-test in process) has nobody to close a pool, so it gets one connection per message."""
    target = settings.upstream
    if target.scheme == "outbox":
        assert target.outbox_dir is not None
        return Outbox(target.outbox_dir)
    return SmtpUpstream(target, timeout=settings.upstream_timeout, local_hostname=settings.hostname,
                        pool_size=settings.upstream_pool_size if pooled else 0)


def upstream_settings(settings: Settings) -> tuple[object, ...]:
    """What `make_upstream` reads: while these stay the same (SIGHUP), the running upstream and its pool stay."""
    return settings.upstream, settings.upstream_timeout, settings.hostname, settings.upstream_pool_size


async def close_upstream(upstream: Upstream) -> None:
    """QUIT the connections an upstream keeps open (only SmtpUpstream's pool does)."""
    if isinstance(upstream, SmtpUpstream):
        await upstream.close()


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


@dataclass(eq=False)
class _Connection:
    """One upstream connection: TLS, EHLO and AUTH once, then up to POOL_MAX_MESSAGES messages."""

    client: aiosmtplib.SMTP
    messages: int = 0  # whose data went out on it
    expiry: asyncio.TimerHandle | None = None  # while pooled: when it is QUIT for being idle

    def take(self) -> _Connection:
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        return self


class _Stale(Exception):
    """A pooled connection failed before upstream accepted MAIL FROM: nothing went out, a fresh one may retry."""


class SmtpUpstream:
    """smtp:// (STARTTLS when offered; required with ?tls=required) or smtps:// (implicit TLS).

    `pool_size` > 0: up to that many connections stay open between messages (module docstring); 0: one
    connection per message, QUIT after upstream's reply."""

    def __init__(self, target: UpstreamSetting, *, timeout: float, local_hostname: str, pool_size: int = 0,
                 idle_seconds: float = POOL_IDLE_SECONDS, max_messages: int = POOL_MAX_MESSAGES) -> None:
        self._target = target
        self._timeout = timeout
        self._local_hostname = local_hostname
        self._pool_size = pool_size
        self._idle_seconds = idle_seconds
        self._max_messages = max_messages
        self._idle: list[_Connection] = []  # taken from the end: the warmest first, the others idle out
        self._quitting: set[asyncio.Task[None]] = set()
        self._closed = False

    async def deliver(self, envelope: Envelope, message: bytes) -> Reply:
        return await self._deliver(envelope, _BytesPayload(message))

    async def deliver_message(self, envelope: Envelope, message: Message) -> Reply:
        """`deliver`, for a message the pipeline holds as fields over the DATA buffer: it goes out in
        chunks, the wire drained between them, so a large message is never copied whole (relay.smtp.pipeline)."""
        return await self._deliver(envelope, message)

    async def _deliver(self, envelope: Envelope, payload: Payload) -> Reply:
        sent = _Progress()
        message = _Outgoing(payload, size=payload.size, eight_bit=not payload.isascii())
        try:
            async with asyncio.timeout(self._timeout):
                reply = await self._send(envelope, message, sent)
            connection, sent.connection = sent.connection, None
            assert connection is not None
            await self._release(connection)
            return reply
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
            if sent.connection is not None:  # anything but a 250: this connection is never used again
                _abort(sent.connection.client)

    async def _send(self, envelope: Envelope, message: _Outgoing, sent: _Progress) -> Reply:
        """The transaction on a pooled connection that answers RSET, else (or if it dies before MAIL) on a new one."""
        pooled = await self._pooled(sent)
        if pooled is not None:
            try:
                return await self._transaction(pooled.client, envelope, message, sent, reused=True)
            except _Stale as exc:
                log.info("upstream %s: a pooled connection failed before MAIL FROM (%s); using a new one",
                         self._target, exc)
                _abort(pooled.client)
                sent.connection = None
        client = aiosmtplib.SMTP(
            hostname=self._target.host,
            port=self._target.port,
            local_hostname=self._local_hostname,
            use_tls=self._target.scheme == "smtps",
            start_tls=False,  # decided below from the EHLO, so that ?tls=required can refuse
            timeout=None,  # one budget for the whole exchange, enforced in deliver (R5)
            tls_context=ssl.create_default_context() if self._target.scheme == "smtps" else None,
        )
        sent.connection = _Connection(client)
        await client.connect()
        await self._hello(client)
        if self._target.username is not None:
            await client.login(self._target.username, self._target.password or "")
        return await self._transaction(client, envelope, message, sent, reused=False)

    async def _pooled(self, sent: _Progress) -> _Connection | None:
        """An idle connection that answers RSET, or None. RSET (RFC 5321 4.1.1.5) both clears any state left
        on the server and proves the connection alive before a message is risked on it."""
        while self._idle:
            connection = sent.connection = self._idle.pop().take()  # from here deliver aborts it on any exit
            try:
                if connection.client.is_connected:
                    async with asyncio.timeout(PROBE_SECONDS):
                        response = await connection.client.execute_command(b"RSET")
                    if response.code == 250:
                        return connection
                    log.info("upstream %s answered RSET on a pooled connection with %d; closing it",
                             self._target, response.code)
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                log.info("upstream %s: a pooled connection failed RSET (%s); closing it", self._target,
                         type(exc).__name__)
            _abort(connection.client)
            sent.connection = None
        return None

    async def _release(self, connection: _Connection) -> None:
        """After upstream's 250: back into the pool, or QUIT when the pool is off, full or closed, or the
        connection has carried POOL_MAX_MESSAGES."""
        if (self._closed or len(self._idle) >= self._pool_size or connection.messages >= self._max_messages
                or not connection.client.is_connected):
            await _quit(connection.client)
            return
        connection.expiry = asyncio.get_running_loop().call_later(self._idle_seconds, self._expire, connection)
        self._idle.append(connection)

    def _expire(self, connection: _Connection) -> None:
        """Idle too long (POOL_IDLE_SECONDS): QUIT before the server drops it (RFC 5321 4.5.3.2.7)."""
        connection.expiry = None
        if connection in self._idle:
            self._idle.remove(connection)
            self._background(_quit(connection.client))

    def _background(self, quitting: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(quitting)
        self._quitting.add(task)
        task.add_done_callback(self._quitting.discard)

    async def close(self) -> None:
        """QUIT every idle connection (RFC 5321 4.1.1.10); one in use is QUIT when its message is done."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            self._background(_quit(connection.take().client))
        if self._quitting:
            await asyncio.gather(*self._quitting, return_exceptions=True)

    async def _transaction(
        self, client: aiosmtplib.SMTP, envelope: Envelope, message: _Outgoing, sent: _Progress, *, reused: bool
    ) -> Reply:
        _check_8bit(client, message)  # on this connection's own EHLO
        await self._mail(client, envelope, message, reused=reused)
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
        for piece in message.payload.stuffed_chunks():  # no joined copy of a large message
            protocol.write(piece)  # type: ignore[arg-type]  # asyncio's transports take any bytes-like object
            await _wire_drained(protocol)  # asyncio copies what the socket did not take: keep that small
        sent.dot = True  # from here on, upstream may have the whole message (RFC 1047)
        if sent.connection is not None:
            sent.connection.messages += 1
        response = await protocol.read_response(timeout=None)
        if response.code != 250:
            raise UpstreamReplyError(upstream_reply(response.code, response.message, "the message"))
        said = _ENHANCED.sub("", response.message).strip()
        return Reply(250, "2.0.0", f"OK: accepted by upstream: {_clean_text(said)}")

    async def _mail(self, client: aiosmtplib.SMTP, envelope: Envelope, message: _Outgoing, *, reused: bool) -> None:
        command = (b"MAIL", b"FROM:<" + envelope.sender.encode() + b">", *self._mail_options(client, message))
        if not reused:
            await self._command(client, "sender", *command)
            return
        # A pooled connection the server dropped or is closing (421, RFC 5321 3.8) before accepting MAIL
        # FROM has carried nothing of this message: `_send` retries it on a fresh connection.
        try:
            response = await client.execute_command(*command)
        except (aiosmtplib.SMTPServerDisconnected, OSError) as exc:
            raise _Stale(type(exc).__name__) from exc
        if response.code == 421:
            raise _Stale("421")
        if response.code != 250:
            raise UpstreamReplyError(upstream_reply(response.code, response.message, "sender"))

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
    def _mail_options(client: aiosmtplib.SMTP, message: _Outgoing) -> list[bytes]:
        options = []
        if client.supports_extension("size"):
            options.append(b"SIZE=%d" % message.size)  # RFC 1870
        if client.supports_extension("8bitmime") and message.eight_bit:
            options.append(b"BODY=8BITMIME")  # RFC 6152
        return options

    @staticmethod
    async def _command(client: aiosmtplib.SMTP, what: str, *args: bytes, expect: int = 250) -> None:
        response = await client.execute_command(*args)
        if response.code != expect:
            raise UpstreamReplyError(upstream_reply(response.code, response.message, what))


def _check_8bit(client: aiosmtplib.SMTP, message: _Outgoing) -> None:
    """8-bit content goes only to a server that offers 8BITMIME (RFC 6152 3); refuse it otherwise.

    Converting to 7 bit (quoted-printable) would have to happen before signing, since DKIM hashes
    the body we send, and before we know what upstream offers; raw 8-bit header text cannot be
    converted at all. Upstream's extensions are a fact of the deployment, so the refusal is
    permanent: 554 5.6.3, conversion required but not supported (RFC 3463).
    """
    if message.eight_bit and not client.supports_extension("8bitmime"):
        raise ReplyError(CONVERSION_NOT_SUPPORTED)


def _is_loopback(peer: object) -> bool:
    """Whether upstream's peername is a loopback address (IPv4-mapped too: relay.policy.senders.client_ip)."""
    return is_loopback(client_ip(peer))


@dataclass
class _Progress:
    dot: bool = False  # the final dot went out: from here on an outcome is ambiguous (R6)
    refusal: Reply | None = None  # a recipient was refused: that is the answer, whatever follows (R3)
    connection: _Connection | None = None  # in use: aborted on any way out but upstream's 250

    def failure(self) -> ReplyError:
        """What the client gets when the exchange breaks off (timeout, lost connection)."""
        if self.refusal is not None:
            return UpstreamReplyError(self.refusal)
        return ReplyError(UPSTREAM_AMBIGUOUS if self.dot else UPSTREAM_UNAVAILABLE)


def _dot_stuffed_pieces(message: bytes) -> tuple[bytes, ...]:
    """RFC 5321 4.5.2 transparency and the final dot, as pieces to write, by relay.mail.lines' rules.

    For `deliver(envelope, bytes)` (the pipeline hands its messages to `deliver_message` instead): bytes
    from elsewhere have their bare CR and LF made CRLF first (rule 5), since a bare LF before a dot must
    never reach the wire unstuffed (SMTP smuggling).
    """
    if not crlf_only(message):
        message = to_crlf(message)
    if not message.endswith(CRLF):
        message += CRLF
    return dot_stuffed(message), b".\r\n"


class Payload(Protocol):
    """What a transaction sends: its size and 7-bitness for MAIL FROM (RFC 1870, RFC 6152), and the bytes
    that follow DATA's 354, dot-stuffed and ending in the final dot (RFC 5321 4.5.2, 4.1.1.4).
    relay.mail.message.Message is one; `_BytesPayload` makes one of plain bytes."""

    @property
    def size(self) -> int: ...

    def isascii(self) -> bool: ...

    def stuffed_chunks(self) -> Iterable[bytes | memoryview]: ...


@dataclass(frozen=True)
class _BytesPayload:
    message: bytes

    @property
    def size(self) -> int:
        return len(self.message)

    def isascii(self) -> bool:
        return self.message.isascii()

    def stuffed_chunks(self) -> tuple[bytes, ...]:
        return _dot_stuffed_pieces(self.message)


@dataclass(frozen=True)
class _Outgoing:
    """One message on its way: what MAIL FROM and the 8BITMIME check need, worked out once (a retry on a
    fresh connection reuses them), and the payload whose chunks follow the 354."""

    payload: Payload
    size: int
    eight_bit: bool


async def _wire_drained(protocol: Any) -> None:
    """Wait until the connection's write buffer is below its high-water mark again (asyncio's flow
    control, as StreamWriter.drain does; aiosmtplib's protocol keeps it in `_drain_helper`, checked by
    tests/test_upstream_stream.py against the pinned aiosmtplib)."""
    await protocol._drain_helper()


async def _quit(client: aiosmtplib.SMTP) -> None:
    """QUIT politely, then make sure the connection is gone whatever the server did."""
    try:
        await quit_politely(client)
    finally:
        _abort(client)


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
    transport = writable(client.transport)
    if transport is not None:
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
    ends at the first line that is not `X-Envelope-To` (relay.domains.receiver.outbox_envelope reads it so);
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
