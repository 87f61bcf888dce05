"""aiosmtpd wiring: a small SMTP subclass and thin hooks that gather session state and call pure decisions.

Deliberate departures from stock aiosmtpd (1.4.6):
- DATA is read in blocks up to CRLF.CRLF and judged by relay.mail.smtpdata: bare-LF mail is accepted and
  normalised, end-of-data stays CRLF.CRLF, and look-alikes are refused as smuggling (550 5.5.2).
- Paths in MAIL/RCPT reach the hooks raw, so that source routes are refused instead of silently
  dropped by the header parser.
- AUTH is offered only after STARTTLS, except on loopback, decided per connection.
- Replies carry enhanced status codes (RFC 2034) wherever a hook produces them; an unhandled
  exception is 451, never aiosmtpd's `500 Error: (ExcName) ...` (R7).
- Over RELAY_MAX_CONNECTIONS[_PER_IP] (relay.smtp.limits, counted per process) a connection gets
  `421 4.7.0` instead of the greeting and is closed before any session exists.
- An idle session is told `421 4.4.2` before it is closed; aiosmtpd would just drop it.
- The session timeout starts afresh when DATA is complete, so a slow upload never eats the time meant
  for signing and upstream (R5); aiosmtpd restarts it only when a command arrives.
- On stop (`RunningRelay.stop`, SIGTERM/SIGINT in `relay.service.main`) the listener closes at once, a session in
  DATA finishes its transaction (up to RELAY_SHUTDOWN_GRACE), and every session then gets
  `421 4.3.2 <hostname> shutting down` before it is closed (RFC 5321 3.8; relay.smtp.limits.Drain keeps
  count); aiosmtpd would just drop them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import logging
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from relay.core.metrics import Metrics
from relay.core.replies import (
    AUTH_STORE_DOWN,
    IDLE_TIMEOUT,
    INTERNAL_ERROR,
    TOO_BIG,
    TOO_MANY_CONNECTIONS,
    TOO_MANY_RECIPIENTS,
    Reply,
    ReplyError,
)
from relay.core.settings import Settings
from relay.core.store import utcnow
from relay.core.transaction import Peer, Transaction, new_transaction_id
from relay.mail.smtpdata import DataContent, RefusedData, read_data
from relay.policy.directory import Directory
from relay.policy.rdns import ReverseDns
from relay.policy.senders import (
    Authenticator,
    auth_allowed,
    check_mail_from,
    check_recipient,
    client_ip,
    is_loopback,
    session_client,
)
from relay.smtp.aiosmtpd_adapter import AdaptedSMTP, HandlerNames, RelayEnvelope
from relay.smtp.limits import ConnectionCounter, Drain
from relay.smtp.pipeline import Pipeline
from relay.smtp.transports import writable

log = logging.getLogger("relay.server")

# RFC 4954 4 / aiosmtpd's default: AUTH tries per session. Other commands are bounded by the
# session timeout and aiosmtpd's bogus-command budget, not by a count.
CALL_LIMITS = {"AUTH": 3, "NOOP": 1000, "*": 1_000_000}
LOOKUP_TIMEOUT = 2.0  # a login's look at the store for a client name not yet known


class _DropLoginDataWarning(logging.Filter):
    """aiosmtpd 1.4 warns `Session.login_data is deprecated` on every successful AUTH, itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


def quiet_aiosmtpd_log() -> None:
    # aiosmtpd logs every command line at INFO, AUTH PLAIN's base64 credentials included.
    logger = logging.getLogger("mail.log")
    logger.setLevel(logging.WARNING)
    if not any(isinstance(f, _DropLoginDataWarning) for f in logger.filters):
        logger.addFilter(_DropLoginDataWarning())


def peer_ip(session: Session) -> str:
    return client_ip(session.peer)  # ::ffff:a.b.c.d from a dual-stack listener becomes a.b.c.d


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


class RelaySMTP(AdaptedSMTP):
    """aiosmtpd's protocol with the relay's DATA reader, raw paths, AUTH offered per connection, and
    admission against the process's connection limits (aiosmtpd's private names: relay.smtp.aiosmtpd_adapter)."""

    def __init__(self, handler: Any, *, max_size: int, connections: ConnectionCounter, drain: Drain | None = None,
                 metrics: Metrics | None = None, **kwargs: Any) -> None:
        super().__init__(handler, data_size_limit=None, **kwargs)
        self._metrics = metrics if metrics is not None else Metrics()
        self._max_size = max_size
        self._connections = connections
        self._drain = drain if drain is not None else Drain()
        self._counted_ip: str | None = None  # set while this connection holds a slot
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ip = client_ip(transport.get_extra_info("peername"))
        if self.plain_transport is None:  # the first call; aiosmtpd calls again after STARTTLS
            if self._drain.reply is not None:  # accepted just before the listener closed
                self._refuse(transport, self._drain.reply)
                return
            if not self._connections.acquire(ip):
                log.warning("refused a connection from %s: %d open from it, %d in all",
                            ip, self._connections.count(ip), self._connections.total)
                self._refuse(transport, TOO_MANY_CONNECTIONS)
                return
            self._counted_ip = ip
            self._metrics.sessions_open.inc()
            self._drain.opened(self)
        super().connection_made(transport)
        # RFC 4954 4: no AUTH in the clear, except on loopback where nothing crosses a wire.
        self.require_tls_for_auth(not is_loopback(ip))

    def _refuse(self, transport: asyncio.BaseTransport, reply: Reply) -> None:
        """RFC 5321 3.8: 421 in place of the greeting, then close; no session, no handler task."""
        self._refused = True
        writer = writable(transport)
        if writer is not None:
            self._metrics.reply(reply.code)
            writer.write(f"{reply}\r\n".encode("ascii"))
        transport.close()  # flushes the 421 first; no data is read from here on

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return  # aiosmtpd's bookkeeping was never started for this connection
        if self._counted_ip is not None:  # aiosmtpd may call this twice (a failed STARTTLS)
            self._connections.release(self._counted_ip)
            self._counted_ip = None
            self._metrics.sessions_open.dec()
        self._drain.closed(self)
        super().connection_lost(error)

    def on_session_timeout(self) -> None:
        """aiosmtpd's session timeout: it only closes; we first say why (RFC 5321 4.5.3.2)."""
        self.end(IDLE_TIMEOUT)

    def end(self, reply: Reply) -> None:
        """Send `reply` (a 421) unasked and close: RFC 5321 3.8, the client reads it at its next command."""
        transport = self.transport
        if transport is None:
            return
        # Not while a TLS handshake owns the socket: plaintext there would only corrupt it.
        writer = writable(transport)
        if writer is not None and transport is not self.plain_transport and not transport.is_closing():
            self._metrics.reply(reply.code)
            writer.write(f"{reply}\r\n".encode("ascii"))
        transport.close()  # as aiosmtpd does: connection_lost() then ends the handler and the slot

    def split_path(self, arg: str) -> tuple[str | None, str | None]:
        """The path between `<` and `>` as the client sent it (policy checks it); `<>` stays `<>`."""
        text = arg.lstrip()
        if not text.startswith("<"):
            address, _, rest = text.partition(" ")
            return address, rest.strip()
        quoted = escaped = False
        for index, char in enumerate(text[1:], start=1):
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = not quoted
            elif char == ">" and not quoted:
                return text[1:index] or "<>", text[index + 1:].strip()
        return None, None

    async def push(self, status: Any) -> None:
        """Every reply line; the last line of each reply is counted by class (relay_replies_total)."""
        head = status[:4] if isinstance(status, str) else bytes(status[:4]).decode("ascii", "replace")
        if head[:3].isdigit() and head[3:4] != "-":
            self._metrics.reply(int(head[:3]))
        await super().push(status)

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        # A stop lets this transaction finish (RELAY_SHUTDOWN_GRACE), then ends the session.
        self._drain.set_busy(self, True)
        try:
            await self._transaction()
        finally:
            self._drain.set_busy(self, False)
        if self._drain.reply is not None:
            self.end(self._drain.reply)

    async def _transaction(self) -> None:
        """From the 354 to the reply to the final dot."""
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        envelope = self.envelope
        assert isinstance(envelope, RelayEnvelope)  # every envelope is made by AdaptedSMTP._create_envelope
        try:
            content = await read_data(self.reader, max_size=self._max_size)
        except asyncio.IncompleteReadError:
            return  # the client is gone mid-DATA: nothing was handed on (R4)
        except RefusedData as exc:
            # A look-alike, too big, a line too long: read to its end, kept nowhere. The hook still
            # runs, so that it is answered and logged like any refused transaction.
            content, envelope.refused = DataContent(b"", crlf_only=True), exc
        # R5: the upload had the session timeout to itself (a slow 35 MB one may use most of it); signing
        # and upstream get a fresh one, well within the client's 10 minutes for the reply (RFC 5321 4.5.3.2.6).
        self.reset_session_timer()
        envelope.content = envelope.original_content = content.data
        envelope.content_crlf_only = content.crlf_only
        status = await self.call_hook("DATA")
        self.envelope = self.new_envelope()
        await self.push(status)


_F = TypeVar("_F", bound=Callable[..., Any])


def _signature_once(function: _F) -> _F:
    """aiosmtpd 1.4 calls inspect.signature(handle_EHLO) on every connection (to tell its 4- and
    5-argument forms apart); inspect.signature returns a function's `__signature__` when set (PEP 362)."""
    setattr(function, "__signature__", inspect.signature(function))
    return function


class Hooks(HandlerNames):
    """The aiosmtpd handler: each hook gathers state and calls a pure decision or the pipeline."""

    def __init__(self, *, settings: Settings, directory: Directory, pipeline: Pipeline, rdns: ReverseDns) -> None:
        self._settings = settings
        self._directory = directory
        self._pipeline = pipeline
        self._auth = Authenticator()
        self._rdns = rdns

    def configure(self, settings: Settings) -> None:
        """Settings changed live (SIGHUP, relay.service.reload): the next command uses them."""
        self._settings = settings

    def close(self) -> None:
        """Stop the AUTH threads."""
        self._auth.close()

    @_signature_once
    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        allowed = auth_allowed(peer_ip(session), tls=session.ssl is not None)
        lines = [line for line in responses[:-1] if allowed or not line.startswith("250-AUTH")]
        lines += [f"250-SIZE {self._settings.max_message_size}", "250-ENHANCEDSTATUSCODES", responses[-1]]
        return lines

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        """RFC 4616: [authzid] NUL authcid NUL passwd, as an initial response or after a 334."""
        blob = await self._auth_blob(server, args[1] if len(args) > 1 else None, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await server.push("501 5.5.2 Cannot split the AUTH PLAIN value")
            return AuthResult(success=False, handled=True)
        return await self._check(server, parts[1], parts[2])

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        login = await self._auth_blob(server, args[1] if len(args) > 1 else None, "User Name")
        if login is None:
            return AuthResult(success=False, handled=True)
        password = await self._auth_blob(server, None, "Password")
        if password is None:
            return AuthResult(success=False, handled=True)
        return await self._check(server, login, password)

    async def _auth_blob(self, server: SMTP, initial: str | None, challenge: str) -> bytes | None:
        if initial is not None:
            try:
                return base64.b64decode(initial, validate=True)
            except (binascii.Error, ValueError):
                await server.push("501 5.5.2 Cannot decode base64")
                return None
        blob = await server.challenge_auth(challenge)  # pushes its own 501 on '*' or bad base64
        return blob if isinstance(blob, bytes) else None

    async def _check(self, server: SMTP, login: bytes, password: bytes) -> AuthResult:
        assert server.session is not None
        ip = peer_ip(server.session)
        if not auth_allowed(ip, tls=server.session.ssl is not None):
            return AuthResult(success=False, handled=False, message="538 5.7.11 Encryption required for AUTH")
        try:
            self._auth.admit(ip)  # an address held back after failed AUTHs: nothing looked up or hashed
            name, secret = login.decode("utf-8"), password.decode("utf-8")
            store_silent = False
            if name not in self._directory.current.clients:
                # Perhaps added a moment ago: look now rather than at the next poll, so a service whose
                # credentials were just issued logs in at once (a cheap look; a rebuild only on a change).
                try:
                    await self._look_for_new_client()
                except ReplyError:
                    store_silent = True
            client = await self._auth.authenticate(self._directory.current.clients, name, secret, ip=ip)
            if client is None and (store_silent or self._directory.failing):
                # While the store cannot be asked, an unknown name can only get 454; so does a known name
                # with a wrong secret (after the same scrypt), or the two replies would tell which
                # client names exist. RFC 4954 6: 454 4.7.0, temporary authentication failure.
                raise ReplyError(AUTH_STORE_DOWN)
        except UnicodeDecodeError:
            return AuthResult(success=False, handled=False)
        except ReplyError as exc:  # 454 4.7.0, or 421 4.7.0 for a client that keeps going (relay.policy.auththrottle)
            return await self._refuse_auth(server, exc.reply)
        if client is None:
            log.warning("auth failed: ip=%s user=%r", ip, name[:64])  # the user name, never the secret
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=client.name)

    async def _look_for_new_client(self) -> None:
        """Read the store once for a name the snapshot lacks; 454 4.7.0, not 535, when the store cannot
        say (known down, or no answer within LOOKUP_TIMEOUT: the look goes on in the background)."""
        if not self._directory.failing:
            try:
                await asyncio.wait_for(asyncio.shield(self._directory.poll()), LOOKUP_TIMEOUT)
            except TimeoutError:
                raise ReplyError(AUTH_STORE_DOWN) from None
        if self._directory.failing:
            raise ReplyError(AUTH_STORE_DOWN)

    async def _refuse_auth(self, server: SMTP, reply: Reply) -> AuthResult:
        """A 4xx aiosmtpd sends; a 421 is sent here and the connection closed (RFC 5321 3.8)."""
        if reply.code != 421:
            return AuthResult(success=False, handled=False, message=str(reply))
        await server.push(str(reply))
        assert server.transport is not None
        server.transport.close()
        return AuthResult(success=False, handled=True)

    def _client_name(self, session: Session) -> str:
        client = session_client(
            self._directory.current.clients,
            ip=peer_ip(session),
            tls=session.ssl is not None,
            auth_name=str(session.auth_data) if session.authenticated else None,
        )
        return client.name

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        try:
            self._client_name(session)  # 530 5.7.0 for anyone who is not a client
            check_mail_from(address)
            for option in options:
                name, _, value = option.partition("=")
                if name == "SIZE" and value.isdigit() and int(value) > self._settings.max_message_size:
                    raise ReplyError(TOO_BIG)  # RFC 1870 6.1
        except ReplyError as exc:
            return str(exc.reply)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        try:
            check_recipient(address)
            if len(envelope.rcpt_tos) >= self._settings.max_recipients:
                raise ReplyError(TOO_MANY_RECIPIENTS)  # RFC 5321 4.5.3.1.10: the client sends the rest later
        except ReplyError as exc:
            return str(exc.reply)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        try:
            client = self._client_name(session)
        except ReplyError as exc:
            return str(exc.reply)
        ip = peer_ip(session)
        content = envelope.content
        assert isinstance(content, bytes) and isinstance(envelope, RelayEnvelope) and envelope.mail_from is not None
        refused = envelope.refused
        # A refused message is only logged, without its rDNS name: no reverse lookup to wait for.
        rdns = None if refused is not None else await self._rdns.lookup(ip)
        tx = Transaction(
            id=new_transaction_id(),
            peer=Peer(ip=ip, helo=session.host_name or "", rdns=rdns, tls=session.ssl is not None),
            client=client,
            authenticated=bool(session.authenticated),
            mail_from=envelope.mail_from,
            recipients=tuple(envelope.rcpt_tos),
            data=content,
            received_at=utcnow(),
            crlf_only=envelope.content_crlf_only,
        )
        if refused is not None:
            return str(self._pipeline.refuse(tx, refused.reply, size=refused.size))
        return str(await self._pipeline.handle(tx))

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 OK"

    async def handle_NOOP(self, server: SMTP, session: Session, envelope: Envelope, arg: str) -> str:
        return "250 2.0.0 OK"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "221 2.0.0 Bye"

    async def handle_exception(self, error: Exception) -> str:
        # R7: aiosmtpd would answer `500 Error: (ExcName) text`, a permanent bounce that leaks internals.
        log.error("internal error in an SMTP session: %s", type(error).__name__, exc_info=error)
        return str(INTERNAL_ERROR)
