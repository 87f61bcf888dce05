"""send-test: a sample message for one tenant through the running relay (or its pipeline in-process), and its report.

Through the relay (the default) the message takes a service's path: the listener at RELAY_LISTEN, AUTH
with send-test's own credential (admin.sendtest_client), the tenant named in RELAY_TENANT_HEADER. So it
exercises what a client meets, and the admin host needs neither the DKIM keys nor the upstream's
credentials. In-process (`--in-process`) it runs `relay.smtp.pipeline.Pipeline` here, with a synthetic
client scoped to that one tenant, as the relay would, without a running relay.

Where the forwarded copy can be read (RELAY_UPSTREAM=outbox:DIR: the file the relay's 250 names), it is
judged as a receiving server would (relay.domains.receiver): DKIM, SPF for the return-path host from `client_ip`,
and DMARC alignment, each with its reason. With an SMTP upstream the copy has left: the three are null,
and `verdict_unavailable` says why.
"""

from __future__ import annotations

import asyncio
import quopri
import re
import secrets
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from admin import inputs
from admin.context import UsageError
from admin.sendtest_client import (
    SEND_TEST_CLIENT,
    SEND_TEST_HELO,
    CredentialRefused,
    OwnCredential,
    RelayTarget,
    SessionFailed,
    submit,
)
from relay.core.models import Client, DkimKey, Tenant
from relay.core.replies import Reply, ReplyError
from relay.core.settings import Settings
from relay.core.store import Store, store_location, utcnow
from relay.core.transaction import Peer, Transaction, new_transaction_id
from relay.domains.receiver import (
    ResolverLookup,
    Result,
    Verdict,
    judge,
    outbox_envelope,
)
from relay.domains.taglist import TagListError, parse_tag_list
from relay.mail.mailbox import mailbox_field
from relay.mail.message import field_name, field_value, split_header_body
from relay.policy.directory import Directory, active_key
from relay.policy.senders import check_recipient, decide_identity
from relay.smtp.pipeline import Pipeline
from relay.smtp.upstream import Envelope, OutboxReply, Upstream, make_upstream

__all__ = ["IN_PROCESS_CLIENT", "SEND_TEST_CLIENT", "SEND_TEST_HELO", "SendTestReport", "SessionFailed",
           "UnknownTenant", "recipient", "run_in_process", "run_through_relay", "synthetic_client"]

# ':' cannot occur in a real client's name (admin.inputs.identifier), so this never names one.
IN_PROCESS_CLIENT = "relay-admin:send-test"
DEFAULT_CLIENT_IP = "127.0.0.1"
_NOT_ONE_ADDRESS = re.compile(r"[\s,;]")
_NOT_PLAIN = re.compile(r'[<>"()\[\]\\]')
# relay.smtp.upstream.Outbox.deliver: "OK: written to the outbox as <name>"; the name is the file's own.
_OUTBOX_NAME = re.compile(r"\bwritten to the outbox as (\S+)")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.eml")
_RECEIVED_ID = re.compile(r"\bwith [A-Z]+ id ([A-Za-z0-9]+);")


class UnknownTenant(Exception):
    """No tenant by that id."""


def recipient(value: str, field: str = "--to") -> str:
    """One plain addr-spec `local@domain` (RFC 5321 4.1.2), domain in A-labels; else a one-line UsageError."""
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise UsageError(f"{field}: {value!r} contains a control character (CR, LF, NUL, ...)")
    if value.startswith("@") and ":" in value:
        raise UsageError(f"{field}: {value!r} is a source route (RFC 5321 4.1.2, C); give local@domain")
    if _NOT_PLAIN.search(value):
        raise UsageError(f"{field}: {value!r}: give a plain local@domain, without <>, quotes or comments")
    if _NOT_ONE_ADDRESS.search(value) or value.count("@") > 1:
        raise UsageError(f"{field}: {value!r} is not one address; give exactly one local@domain")
    address = inputs.email(value, field)
    try:
        return check_recipient(address)  # what the relay itself accepts at RCPT
    except ReplyError:
        raise UsageError(f"{field}: {value!r} is not a valid SMTP recipient (local@domain)") from None


def synthetic_client(tenant_id: str) -> Client:
    """In-process send-test's client: no secret, no network, exactly one tenant (never all tenants)."""
    return Client(name=IN_PROCESS_CLIENT, secret_hash="", all_tenants=False, tenants=(tenant_id,),
                  networks=(), created_at=utcnow())


@dataclass(frozen=True)
class Signing:
    domain: str
    selector: str


def expected_signing(tenants: Mapping[str, Tenant], key_of: Callable[[str], DkimKey | None], tenant: Tenant,
                     *, platform_sender: str | None) -> Signing:
    """Whose key should sign, by the relay's own decision; the tenant's when it would refuse anyway."""
    try:
        signer = decide_identity(tenant, tenants, platform_sender=platform_sender).signer_tenant
    except ReplyError:
        signer = tenant.id
    key = key_of(signer)
    return Signing(tenants[signer].sender.domain, key.selector if key else "(no active key)")


def _body(tenant: Tenant, signing: Signing, route: str) -> str:
    paragraphs = [
        f"This is a test message from accounton-relay, sent with `relay-admin send-test` for "
        f"tenant {tenant.id} ({tenant.sender.name}).",
        f"It went {route}: the From is the tenant's verified sender (or the platform sender while the "
        "tenant is not verified), and the message carries one DKIM signature that should have "
        f"d={signing.domain} and s={signing.selector}.",
        "The Authentication-Results header the receiving mailbox adds should show dkim=pass for "
        f"{signing.domain}, and spf and dmarc results for the envelope sender.",
        "No reply is needed.",
    ]
    return "\n\n".join(textwrap.fill(text, width=72) for text in paragraphs) + "\n"


def sample_message(tenant: Tenant, to: str, *, signing: Signing, now: datetime, message_id: str,
                   route: str = "through the relay's own pipeline", tenant_header: str | None = None) -> bytes:
    """The sample: From the tenant's address, To `to`, Subject, Date, Message-ID, a plain UTF-8 body.

    `tenant_header` names the tenant in that header (send-test's own client may send for every tenant).
    """
    text = _body(tenant, signing, route).encode("utf-8")
    if text.isascii():
        encoding, body = "7bit", text
    else:  # quoted-printable keeps the signed bytes 7-bit whatever the upstream offers (RFC 2045 6.7)
        encoding, body = "quoted-printable", quopri.encodestring(text)
    head = [
        mailbox_field("From", tenant.sender.name, tenant.sender.email),
        f"To: <{to}>\r\n".encode("ascii"),
        f"Subject: accounton-relay test message ({tenant.id})\r\n".encode("ascii"),
        f"Date: {format_datetime(now)}\r\n".encode("ascii"),
        f"Message-ID: {message_id}\r\n".encode("ascii"),
        b"MIME-Version: 1.0\r\n",
        b"Content-Type: text/plain; charset=utf-8\r\n",
        f"Content-Transfer-Encoding: {encoding}\r\n".encode("ascii"),
    ]
    if tenant_header is not None:
        head.append(f"{tenant_header}: {tenant.id}\r\n".encode("ascii"))
    return b"".join(head) + b"\r\n" + body.replace(b"\n", b"\r\n")


class _Recording:
    """The configured upstream, keeping what the pipeline handed it, so the report reads the real bytes."""

    def __init__(self, inner: Upstream) -> None:
        self._inner = inner
        self.envelope: Envelope | None = None
        self.message: bytes | None = None

    async def deliver(self, envelope: Envelope, message: bytes) -> Reply:
        self.envelope, self.message = envelope, message
        return await self._inner.deliver(envelope, message)


@dataclass(frozen=True)
class Offered:
    """The message as the relay handed it to the upstream (whatever the upstream then said)."""

    from_: str  # the From field, unfolded, encoded words decoded
    envelope_from: str
    signature: Signing | None
    transaction: str | None  # the id in the relay's Received field


def _offered(envelope_from: str, message: bytes) -> Offered:
    values: dict[bytes, list[str]] = {}
    for field in split_header_body(message)[0]:
        values.setdefault(field_name(field), []).append(field_value(field).decode("ascii", "replace").strip())
    try:
        from_ = " ".join(str(make_header(decode_header(value))) for value in values.get(b"from", []))
    except (HeaderParseError, LookupError, UnicodeError):
        from_ = " ".join(values.get(b"from", []))
    signature = None
    for value in values.get(b"dkim-signature", [])[:1]:
        try:
            tags = dict(parse_tag_list(value))
        except TagListError:  # not expected of the relay's own signer; report what can be read
            tags = {}
        signature = Signing(tags.get("d", ""), tags.get("s", ""))
    received = (_RECEIVED_ID.search(" ".join(value.split())) for value in values.get(b"received", []))
    transaction = next((match.group(1) for match in received if match), None)
    return Offered(from_=from_, envelope_from=envelope_from, signature=signature, transaction=transaction)


@dataclass(frozen=True)
class SendTestReport:
    tenant: str
    to: str
    mode: str  # "relay" or "in-process"
    relay: str | None  # the address sent to, in relay mode
    transaction: str | None  # the id in the relay's log line and the Received field
    message_id: str
    reply: Reply
    offered: Offered | None  # None: refused before anything reached the upstream, or not readable
    outbox_file: Path | None
    client_ip: str  # the address SPF was evaluated for
    verdict: Verdict | None  # a receiver's DKIM, SPF and DMARC on the forwarded copy
    verdict_unavailable: str | None  # why there is no verdict

    @property
    def accepted(self) -> bool:
        return self.reply.code == 250

    @property
    def failing(self) -> list[str]:
        """The checks that do not pass, by name (none when there is no verdict)."""
        if self.verdict is None:
            return []
        checks = (("DKIM", self.verdict.dkim), ("SPF", self.verdict.spf), ("DMARC", self.verdict.dmarc))
        return [name for name, check in checks if check.result is not Result.PASS]

    @property
    def passed(self) -> bool:
        """Accepted, and every check a receiver would make passes (or the copy cannot be read)."""
        return self.accepted and not self.failing

    def to_json(self) -> dict[str, Any]:
        offered, signature = self.offered, self.offered.signature if self.offered else None
        verdict = self.verdict
        return {
            "tenant": self.tenant,
            "to": self.to,
            "mode": self.mode,
            "relay": self.relay,
            "accepted": self.accepted,
            "reply": str(self.reply),
            "dkim": verdict.dkim.to_json() if verdict else None,
            "spf": verdict.spf.to_json() | {"ip": self.client_ip} if verdict else None,
            "dmarc": verdict.dmarc.to_json() if verdict else None,
            "verdict_unavailable": self.verdict_unavailable,
            "from": offered.from_ if offered else None,
            "envelope_from": offered.envelope_from if offered else None,
            "signature": {"domain": signature.domain, "selector": signature.selector} if signature else None,
            "message_id": self.message_id,
            "outbox_file": str(self.outbox_file) if self.outbox_file else None,
            "transaction": self.transaction,
        }


# ---------------------------------------------------------------- the forwarded copy


@dataclass(frozen=True)
class _Copy:
    path: Path | None
    offered: Offered | None
    verdict: Verdict | None
    unavailable: str | None


def _not_read(why: str, path: Path | None = None) -> _Copy:
    return _Copy(path, None, None, why)


def _outbox_path(settings: Settings, reply: Reply) -> Path | str:
    """The file the relay's 250 names, inside RELAY_UPSTREAM's outbox directory; else why not."""
    outbox = settings.upstream.outbox_dir
    if outbox is None:
        return (f"the forwarded copy is not readable with an SMTP upstream (RELAY_UPSTREAM={settings.upstream}); "
                "the Authentication-Results header the receiving mailbox adds shows the same three results")
    if isinstance(reply, OutboxReply):
        return reply.path.absolute()
    directory = outbox.resolve()
    match = _OUTBOX_NAME.search(reply.text)
    if match is None:
        return (f"the relay's reply names no outbox file, so it does not write to {directory} "
                "(RELAY_UPSTREAM); run relay-admin with the relay's RELAY_UPSTREAM")
    name = match.group(1)
    path = (directory / name).resolve()
    if not _FILE_NAME.fullmatch(name) or path.parent != directory:
        return f"the relay's reply names {name!r}, which is not a file in {directory}"
    return path


async def _read_copy(settings: Settings, reply: Reply, client_ip: str) -> _Copy:
    """Find, read and judge the copy the relay forwarded, as a receiving server would."""
    if reply.code != 250:
        return _not_read("nothing was forwarded: the relay did not accept the message")
    path = _outbox_path(settings, reply)
    if isinstance(path, str):
        return _not_read(path)
    try:
        eml = await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        return _not_read(f"the relay wrote {path.name}, which is not in {path.parent} (RELAY_UPSTREAM): run "
                         "relay-admin with the relay's RELAY_UPSTREAM, from its directory when that is relative")
    except OSError as exc:
        return _not_read(f"cannot read the forwarded copy {path}: {exc.strerror}", path)
    try:
        mail_from, _, message = outbox_envelope(eml)
    except ValueError as exc:
        return _not_read(f"{path}: {exc}", path)
    dns = ResolverLookup.from_settings(settings)
    verdict = await judge(message, mail_from=mail_from, client_ip=client_ip, dns=dns)
    return _Copy(path, _offered(mail_from, message), verdict, None)


# ---------------------------------------------------------------- the two ways


def _new_message_id(tenant: Tenant) -> str:
    return f"<{secrets.token_hex(16)}.send-test@{tenant.sender.domain}>"


async def run_through_relay(settings: Settings, store: Store, tenant_id: str, to: str, *, target: RelayTarget,
                            actor: str, client_ip: str = DEFAULT_CLIENT_IP) -> SendTestReport:
    """Send the sample through the relay listening at `target`, authenticated with send-test's own credential.

    Raises `SessionFailed` (one line) when there is no session to send in.
    """
    tenant = store.get_tenant(tenant_id)
    if tenant is None:
        raise UnknownTenant(tenant_id)
    tenants = {each.id: each for each in store.list_tenants()}
    signing = expected_signing(tenants, lambda tid: active_key(store.list_keys(tid)), tenant,
                               platform_sender=settings.platform_sender)
    message_id = _new_message_id(tenant)
    data = sample_message(tenant, to, signing=signing, now=utcnow(), message_id=message_id,
                          route=f"through the relay at {target.address}, authenticated as {SEND_TEST_CLIENT}",
                          tenant_header=settings.tenant_header)
    credential = OwnCredential(store, actor=actor)
    try:
        reply = await submit(target, credential, mail_from=tenant.sender.email, to=to, message=data)
    except CredentialRefused as exc:
        if not credential.current():
            raise SessionFailed(f"{exc}: another send-test issued its own credential meanwhile; "
                                "run it again") from None
        raise SessionFailed(f"{exc}: does the relay use the store {store_location(settings)} "
                            "(RELAY_DATABASE)?") from None
    finally:
        credential.retire()
    copy = await _read_copy(settings, reply, client_ip)
    return SendTestReport(
        tenant=tenant.id, to=to, mode="relay", relay=str(target.address),
        transaction=copy.offered.transaction if copy.offered else None, message_id=message_id, reply=reply,
        offered=copy.offered, outbox_file=copy.path, client_ip=client_ip, verdict=copy.verdict,
        verdict_unavailable=copy.unavailable,
    )


async def run_in_process(settings: Settings, store: Store, tenant_id: str, to: str, *,
                         client_ip: str = DEFAULT_CLIENT_IP) -> SendTestReport:
    """Run the sample through the relay's own pipeline here (no running relay) and report what happened."""
    directory = Directory(store, keys_dir=settings.keys_dir, reload_interval=settings.reload_interval)
    snapshot = await asyncio.to_thread(directory.load)
    tenant = snapshot.tenants.get(tenant_id)
    if tenant is None:
        raise UnknownTenant(tenant_id)
    now = utcnow()
    message_id = _new_message_id(tenant)
    signing = expected_signing(snapshot.tenants, snapshot.keys.get, tenant, platform_sender=settings.platform_sender)
    tx = Transaction(
        id=new_transaction_id(), peer=Peer(ip="127.0.0.1", helo=SEND_TEST_HELO), client=IN_PROCESS_CLIENT,
        authenticated=False, mail_from=tenant.sender.email, recipients=(to,),
        data=sample_message(tenant, to, signing=signing, now=now, message_id=message_id), received_at=now,
    )
    upstream = _Recording(make_upstream(settings))
    pipeline = Pipeline(settings=settings, directory=directory, upstream=upstream)
    try:
        reply = await pipeline.handle(tx, client=synthetic_client(tenant.id))
    finally:
        pipeline.close()
    offered = None
    if upstream.envelope is not None and upstream.message is not None:
        offered = _offered(upstream.envelope.sender, upstream.message)
    copy = await _read_copy(settings, reply, client_ip)
    return SendTestReport(
        tenant=tenant.id, to=to, mode="in-process", relay=None, transaction=tx.id, message_id=message_id,
        reply=reply, offered=offered, outbox_file=copy.path, client_ip=client_ip, verdict=copy.verdict,
        verdict_unavailable=copy.unavailable,
    )
