"""send-test as a client of the running relay: the admin's own credential, and one SMTP session through the listener.

The credential is a client named `relay-admin.send-test` with all-tenants scope (each message names its
tenant in RELAY_TENANT_HEADER), created on first use; `client add` refuses the name. The store keeps
only a salted hash of a client's secret (relay.core.credentials), so no secret can be recovered from it:
each send-test issues a fresh random secret (when the relay first asks for AUTH, so a run that finds
no relay changes nothing), stores its hash, authenticates with it and retires it when done. The
secret exists only in this process, for one run; it is never printed or logged. A running relay
stops accepting it within its reload interval of the retirement.

The session (aiosmtplib, translated at this one boundary): EHLO; STARTTLS when offered and either
RELAY_TLS_CERT names the relay's certificate (pinned: the relay must show exactly that certificate) or
the relay is not on loopback (the system's trust and the host name); AUTH PLAIN (RFC 4616); MAIL,
RCPT, DATA. A 535 or 454 to AUTH is retried on a new connection with a short back-off for up to the
relay's reload interval plus a second: a running relay may not have read the fresh hash yet.

Error tree of `submit()`:

    Reply                   the relay's answer to the message: 250 at the end of DATA is accepted;
                            a refusal of MAIL, RCPT or DATA is returned as it came, never raised
    SessionFailed           no session to send the message in; one line naming what to do
    ├── NotListening        nothing listens at the address (connection refused)
    └── CredentialRefused   AUTH still refused when the retry budget ran out
    ReservedClientMisused   a client of the reserved name has networks or a narrower scope: not used
"""

from __future__ import annotations

import asyncio
import base64
import errno
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib

from relay.core.credentials import hash_secret, new_secret
from relay.core.models import AuditEntry, Client
from relay.core.replies import Reply
from relay.core.settings import HostPort
from relay.core.store import Store, utcnow
from relay.policy.senders import is_loopback
from relay.smtp.upstream import quit_politely

SEND_TEST_CLIENT = "relay-admin.send-test"
SEND_TEST_HELO = "relay-admin"
# Like a locked /etc/shadow entry: `relay.core.credentials.verify_secret` accepts no secret against it.
RETIRED = "!"

_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\s*")
_AUTH_AGAIN = (535, 454)  # RFC 4954 6: credentials invalid; temporary authentication failure
_FIRST_BACKOFF, _MAX_BACKOFF = 0.05, 0.5
_CONNECT_TIMEOUT = 15.0  # a host that drops the SYN should not hold the command for a session timeout


class ReservedClientMisused(Exception):
    """A client by send-test's reserved name exists with a scope send-test never gives it."""


class SessionFailed(Exception):
    """No session with the relay to send the message in; the text is one line saying what to do."""


class NotListening(SessionFailed):
    """Connection refused: nothing listens at the relay's address."""


class CredentialRefused(SessionFailed):
    """The relay still refused send-test's credential when the retry budget ran out."""

    def __init__(self, text: str, reply: Reply) -> None:
        super().__init__(text)
        self.reply = reply


# ---------------------------------------------------------------- the credential


@dataclass(frozen=True)
class Credential:
    """send-test's secret for one run, and the hash stored for it (to retire exactly this one)."""

    name: str
    secret: str = field(repr=False)
    secret_hash: str = field(repr=False)
    created: bool  # this run created the client


def issue_credential(store: Store, *, actor: str) -> Credential:
    """A fresh secret for `relay-admin.send-test`, its hash stored; the client created on first use (audited)."""
    secret = new_secret()
    hashed = hash_secret(secret)
    with store.transaction():
        existing = store.get_client(SEND_TEST_CLIENT)
        if existing is None:
            now = utcnow()
            store.add_client(Client(name=SEND_TEST_CLIENT, secret_hash=hashed, all_tenants=True, tenants=(),
                                    networks=(), created_at=now))
            store.add_audit(AuditEntry(
                time=now, actor=actor, action="client.add", tenant=None, outcome="done",
                detail=f"added client {SEND_TEST_CLIENT!r} for all tenants; networks none "
                       "(send-test's own credential, created on first use; its secret lives for one run)",
            ))
        else:
            _check_reserved(existing)
            store.set_client_secret(SEND_TEST_CLIENT, hashed)
    return Credential(SEND_TEST_CLIENT, secret, hashed, created=existing is None)


def _check_reserved(client: Client) -> None:
    """send-test's client has all-tenants scope and no networks: one with networks would let a network in."""
    if client.networks or not client.all_tenants:
        scope = (f"networks {', '.join(client.networks)}" if client.networks
                 else f"tenants {', '.join(client.tenants)}")
        raise ReservedClientMisused(
            f"client {SEND_TEST_CLIENT!r} in the store has {scope}, a scope send-test never gives it: the name "
            "is reserved for send-test's own credential; remove that client from the store, or use --in-process")


def retire_credential(store: Store, credential: Credential) -> None:
    """After the run no secret opens the client, unless another send-test has issued its own meanwhile."""
    with store.transaction():
        current = store.get_client(credential.name)
        if current is not None and current.secret_hash == credential.secret_hash:
            store.set_client_secret(credential.name, RETIRED)


class OwnCredential:
    """send-test's credential for one run: issued when the relay first asks for AUTH, retired by `retire()`.

    Issued late, so a run that finds no relay listening changes nothing in the store.
    """

    def __init__(self, store: Store, *, actor: str) -> None:
        self._store = store
        self._actor = actor
        self._issued: Credential | None = None

    def get(self) -> Credential:
        if self._issued is None:
            self._issued = issue_credential(self._store, actor=self._actor)
        return self._issued

    def current(self) -> bool:
        """Whether the store still holds this run's hash (another send-test may have replaced it)."""
        if self._issued is None:
            return False
        stored = self._store.get_client(self._issued.name)
        return stored is not None and stored.secret_hash == self._issued.secret_hash

    def retire(self) -> None:
        if self._issued is not None:
            retire_credential(self._store, self._issued)


# ---------------------------------------------------------------- the session


@dataclass(frozen=True)
class RelayTarget:
    """Where the relay listens and how to talk to it."""

    address: HostPort
    source: str  # what named the address, for messages: "RELAY_LISTEN" or "--relay"
    tls_cert: Path | None  # RELAY_TLS_CERT: the certificate the relay shows, pinned
    timeout: float  # per command; longer than the relay's session timeout (R5: the client is the patient one)
    retry_for: float  # how long a refused AUTH is tried again

    @property
    def dial_host(self) -> str:
        """The host to connect to: a wildcard listen address is reached on loopback."""
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.address.host, self.address.host)


def reply_of(code: int, message: str) -> Reply:
    """An SMTP reply as a value; its enhanced code (RFC 3463) read from the text, or the class's x.0.0."""
    text = " ".join(message.split())
    match = _ENHANCED.match(text)
    if match:
        return Reply(code, match.group(1), text[match.end():])
    return Reply(code, f"{code // 100}.0.0", text)


@dataclass
class _AuthRefused:
    reply: Reply


async def submit(target: RelayTarget, credential: OwnCredential, *, mail_from: str, to: str,
                 message: bytes) -> Reply:
    """Send `message` through the relay's listener, authenticated as `credential`; the relay's final reply."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + target.retry_for
    delay = _FIRST_BACKOFF
    while True:
        outcome = await _session(target, credential, mail_from=mail_from, to=to, message=message)
        if isinstance(outcome, Reply):
            return outcome
        if loop.time() + delay > deadline:
            raise CredentialRefused(
                f"the relay at {target.address} refused send-test's own credential for {target.retry_for:g} s "
                f"({outcome.reply})", outcome.reply)
        await asyncio.sleep(delay)  # a back-off between attempts, bounded by the deadline
        delay = min(delay * 2, _MAX_BACKOFF)


async def _session(target: RelayTarget, credential: OwnCredential, *, mail_from: str, to: str,
                   message: bytes) -> Reply | _AuthRefused:
    client = aiosmtplib.SMTP(hostname=target.dial_host, port=target.address.port, local_hostname=SEND_TEST_HELO,
                             start_tls=False, timeout=target.timeout)
    try:
        await _connect(client, target)
        await _hello(client, target)
        refused = await _authenticate(client, target, credential)
        if refused is not None:
            return refused
        return await _transaction(client, mail_from=mail_from, to=to, message=message)
    except SessionFailed:
        raise
    except ssl.SSLError as exc:
        raise SessionFailed(f"TLS with the relay at {target.address} failed: {exc.reason or exc}") from None
    except aiosmtplib.SMTPResponseException as exc:  # greeting, EHLO or STARTTLS refused (421 included)
        raise SessionFailed(f"the relay at {target.address} answered {reply_of(exc.code, exc.message)}") from None
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise SessionFailed(f"the session with the relay at {target.address} broke off: {exc}") from None
    finally:
        client.close()


async def _connect(client: aiosmtplib.SMTP, target: RelayTarget) -> None:
    try:
        await client.connect(timeout=min(target.timeout, _CONNECT_TIMEOUT))
    except aiosmtplib.SMTPConnectResponseError:
        raise  # a greeting other than 220: the caller words it
    except aiosmtplib.SMTPConnectError as exc:
        if _refused(exc.__cause__):
            raise NotListening(
                f"no relay is listening at {target.address} ({target.source}); start it with `relay` or "
                "`make run`, or use --in-process") from None
        raise SessionFailed(f"cannot reach the relay at {target.address} ({target.source}): {exc}") from None


def _refused(cause: BaseException | None) -> bool:
    """Connection refused; asyncio words it as one error per address when a name has several."""
    if isinstance(cause, ConnectionRefusedError):
        return True
    return isinstance(cause, OSError) and cause.errno is None and f"[Errno {errno.ECONNREFUSED}]" in str(cause)


async def _hello(client: aiosmtplib.SMTP, target: RelayTarget) -> None:
    await client.ehlo()
    if not client.supports_extension("starttls"):
        return
    peer = client.get_transport_info("peername")
    if target.tls_cert is not None:
        await client.starttls(tls_context=_unverified_context())
        _check_pinned(client, target.tls_cert, target)
    elif not is_loopback(str(peer[0]) if isinstance(peer, tuple) else ""):
        await client.starttls(tls_context=ssl.create_default_context(), server_hostname=target.dial_host)
    else:
        return  # loopback without a certificate to pin: nothing crosses a wire, and AUTH is offered in the clear
    await client.ehlo()  # RFC 3207 4.2: forget what was said before TLS


def _unverified_context() -> ssl.SSLContext:
    """Verification is the pin in `_check_pinned` (the exact certificate), not a chain to a trust anchor."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _check_pinned(client: aiosmtplib.SMTP, cert: Path, target: RelayTarget) -> None:
    """The relay must show the first certificate of RELAY_TLS_CERT (the handshake proved it holds its key)."""
    ssl_object = client.get_transport_info("ssl_object")
    shown = ssl_object.getpeercert(binary_form=True) if isinstance(ssl_object, ssl.SSLObject) else None
    try:
        pem = cert.read_text("ascii")
        begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
        first = pem[pem.index(begin):pem.index(end) + len(end)]
        expected = ssl.PEM_cert_to_DER_cert(first)
    except (OSError, UnicodeError, ValueError) as exc:
        raise SessionFailed(f"cannot read the relay's certificate {cert} (RELAY_TLS_CERT): {exc}") from None
    if shown != expected:
        raise SessionFailed(f"the relay at {target.address} shows another certificate than {cert} "
                            "(RELAY_TLS_CERT): not sending the credential")


async def _authenticate(client: aiosmtplib.SMTP, target: RelayTarget, own: OwnCredential) -> _AuthRefused | None:
    if "plain" not in client.server_auth_methods:  # aiosmtplib keeps them in lower case
        raise SessionFailed(
            f"the relay at {target.address} offers no AUTH PLAIN on this connection (it offers AUTH only over "
            "TLS, except on loopback): set RELAY_TLS_CERT to the relay's certificate, or use --in-process")
    credential = own.get()
    # RFC 4616: [authzid] NUL authcid NUL passwd, as the initial response. Never logged or printed.
    token = base64.b64encode(b"\0" + credential.name.encode() + b"\0" + credential.secret.encode())
    response = await client.execute_command(b"AUTH", b"PLAIN", token)
    if response.code == 235:
        return None
    reply = reply_of(response.code, response.message)
    if response.code in _AUTH_AGAIN:
        return _AuthRefused(reply)
    raise SessionFailed(f"the relay at {target.address} refused AUTH: {reply}")


async def _transaction(client: aiosmtplib.SMTP, *, mail_from: str, to: str, message: bytes) -> Reply:
    """MAIL, RCPT, DATA: the first refusal, or the reply to the end of the data."""
    for command, argument in ((b"MAIL", f"FROM:<{mail_from}>"), (b"RCPT", f"TO:<{to}>")):
        response = await client.execute_command(command, argument.encode())
        if response.code not in (250, 251):
            return reply_of(response.code, response.message)
    try:
        response = await client.data(message)
    except aiosmtplib.SMTPDataError as exc:  # DATA itself or the end of the data refused
        return reply_of(exc.code, exc.message)
    await quit_politely(client)
    return reply_of(response.code, response.message)
