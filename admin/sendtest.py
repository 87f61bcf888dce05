"""send-test: a sample message for one tenant, run through the relay's own pipeline in-process, and its report.

The message takes the path a client's would (`relay.pipeline.Pipeline`: tenant, identity, raw header
rewrite, DKIM with the key `Directory` loads, delivery to RELAY_UPSTREAM under the same never-lose
rules), so the report says exactly what the relay would do, without a running relay. The client is a
synthetic one, `relay-admin:send-test`, scoped to that one tenant.

JSON keys: `signature` is the DKIM signature the relay added (`domain`, `selector`); the key `dkim`
is left free for the later issue's verdict as a receiver computes it, beside `spf` and `dmarc`.
"""

from __future__ import annotations

import asyncio
import quopri
import re
import secrets
import textwrap
from dataclasses import dataclass
from datetime import datetime
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from admin import inputs
from admin.context import UsageError
from admin.taglist import TagListError, parse_tag_list
from relay.directory import Directory, Snapshot
from relay.mailbox import mailbox_field
from relay.message import field_name, field_value, split_header_body
from relay.models import Client, Tenant
from relay.pipeline import Pipeline
from relay.policy import check_recipient, decide_identity
from relay.replies import Reply, ReplyError
from relay.settings import Settings
from relay.store import Store, utcnow
from relay.transaction import Peer, Transaction, new_transaction_id
from relay.upstream import Envelope, OutboxReply, Upstream, make_upstream

# ':' cannot occur in a real client's name (admin.inputs.identifier), so this never names one.
SEND_TEST_CLIENT = "relay-admin:send-test"
SEND_TEST_HELO = "relay-admin"
_NOT_ONE_ADDRESS = re.compile(r"[\s,;]")
_NOT_PLAIN = re.compile(r'[<>"()\[\]\\]')


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
    """send-test's client: no secret, no network, exactly one tenant (never all tenants)."""
    return Client(name=SEND_TEST_CLIENT, secret_hash="", all_tenants=False, tenants=(tenant_id,),
                  networks=(), created_at=utcnow())


@dataclass(frozen=True)
class Signing:
    domain: str
    selector: str


def expected_signing(snapshot: Snapshot, tenant: Tenant, *, platform_sender: str | None) -> Signing:
    """Whose key should sign, by the relay's own decision; the tenant's when it would refuse anyway."""
    try:
        signer = decide_identity(tenant, snapshot.tenants, platform_sender=platform_sender).signer_tenant
    except ReplyError:
        signer = tenant.id
    key = snapshot.keys.get(signer)
    return Signing(snapshot.tenants[signer].sender.domain, key.selector if key else "(no active key)")


def _body(tenant: Tenant, signing: Signing) -> str:
    paragraphs = [
        f"This is a test message from accounton-relay, sent with `relay-admin send-test` for "
        f"tenant {tenant.id} ({tenant.sender.name}).",
        "It went through the relay's own pipeline: the From is the tenant's verified sender (or the "
        "platform sender while the tenant is not verified), and the message carries one DKIM "
        f"signature that should have d={signing.domain} and s={signing.selector}.",
        "The Authentication-Results header the receiving mailbox adds should show dkim=pass for "
        f"{signing.domain}, and spf and dmarc results for the envelope sender.",
        "No reply is needed.",
    ]
    return "\n\n".join(textwrap.fill(text, width=72) for text in paragraphs) + "\n"


def sample_message(tenant: Tenant, to: str, *, signing: Signing, now: datetime, message_id: str) -> bytes:
    """The sample: From the tenant's address, To `to`, Subject, Date, Message-ID, a plain UTF-8 body."""
    text = _body(tenant, signing).encode("utf-8")
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
    """The message as the pipeline handed it to the upstream (whatever the upstream then said)."""

    from_: str  # the From field, unfolded, encoded words decoded
    envelope_from: str
    signature: Signing | None


def _offered(envelope: Envelope, message: bytes) -> Offered:
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
    return Offered(from_=from_, envelope_from=envelope.sender, signature=signature)


@dataclass(frozen=True)
class SendTestReport:
    tenant: str
    to: str
    transaction: str  # the id in the relay's log line and the Received field
    message_id: str
    reply: Reply
    offered: Offered | None  # None: refused before anything reached the upstream
    outbox_file: Path | None

    @property
    def accepted(self) -> bool:
        return self.reply.code == 250

    def to_json(self) -> dict[str, Any]:
        offered, signature = self.offered, self.offered.signature if self.offered else None
        return {
            "tenant": self.tenant,
            "to": self.to,
            "accepted": self.accepted,
            "reply": str(self.reply),
            "from": offered.from_ if offered else None,
            "envelope_from": offered.envelope_from if offered else None,
            "signature": {"domain": signature.domain, "selector": signature.selector} if signature else None,
            "message_id": self.message_id,
            "outbox_file": str(self.outbox_file) if self.outbox_file else None,
            "transaction": self.transaction,
        }


async def run_send_test(settings: Settings, store: Store, tenant_id: str, to: str) -> SendTestReport:
    """Send the sample for `tenant_id` to `to` (already checked by `recipient`) and report what happened."""
    directory = Directory(store, keys_dir=settings.keys_dir, reload_interval=settings.reload_interval)
    snapshot = await asyncio.to_thread(directory.load)
    tenant = snapshot.tenants.get(tenant_id)
    if tenant is None:
        raise UnknownTenant(tenant_id)
    now = utcnow()
    message_id = f"<{secrets.token_hex(16)}.send-test@{tenant.sender.domain}>"
    signing = expected_signing(snapshot, tenant, platform_sender=settings.platform_sender)
    tx = Transaction(
        id=new_transaction_id(), peer=Peer(ip="127.0.0.1", helo=SEND_TEST_HELO), client=SEND_TEST_CLIENT,
        authenticated=False, mail_from=tenant.sender.email, recipients=(to,),
        data=sample_message(tenant, to, signing=signing, now=now, message_id=message_id), received_at=now,
    )
    upstream = _Recording(make_upstream(settings))
    pipeline = Pipeline(settings=settings, directory=directory, upstream=upstream)
    reply = await pipeline.handle(tx, client=synthetic_client(tenant.id))
    offered = None
    if upstream.envelope is not None and upstream.message is not None:
        offered = _offered(upstream.envelope, upstream.message)
    return SendTestReport(tenant=tenant.id, to=to, transaction=tx.id, message_id=message_id, reply=reply,
                          offered=offered,
                          outbox_file=reply.path.absolute() if isinstance(reply, OutboxReply) else None)
