"""Enforce the sender on raw header lines: one From (ours), no client signatures, Date/Message-ID/Received."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime

from relay.mail.lines import CRLF, MAX_LINE, CrlfData, crlf_only
from relay.mail.mailbox import first_address, is_address, is_host_name, mailbox_field
from relay.mail.message import Field, Message, parse_header

# Fields a client must not set: they name another sender (RFC 5322 3.6.2 Sender, 3.6.6 Resent-*), are
# the final MTA's to add (Return-Path, RFC 5321 4.4), would disclose blind copies (Bcc), claim
# authentication results and signatures that are not ours (RFC 6376, RFC 8617 ARC, RFC 8601, and
# RFC 7208 9.1 Received-SPF), or are trust headers that receiving systems believe: Exchange's
# organisation headers, the original results a forwarder kept, and the envelope the outbox itself
# writes above the message (relay.smtp.upstream.Outbox: Return-Path and X-Envelope-To).
_REMOVED = frozenset(
    {
        b"from",
        b"sender",
        b"return-path",
        b"bcc",
        b"dkim-signature",
        b"domainkey-signature",
        b"x-google-dkim-signature",
        b"authentication-results",
        b"x-original-authentication-results",
        b"received-spf",
        b"x-envelope-to",
        b"x-envelope-from",
    }
)
_REMOVED_PREFIXES = (b"resent-", b"arc-", b"x-ms-exchange-organization-")
# RFC 5322 3.6: at most one of each. We keep the first and drop the rest, so that what a reader shows
# and what our signature covers (DKIM signs the last instance, RFC 6376 5.4.2) cannot differ.
_SINGLE = frozenset({b"date", b"message-id", b"reply-to"})


@dataclass(frozen=True)
class Identity:
    """Who the message leaves as; checked here so that nothing unsafe can reach a header."""

    display_name: str  # "Acme BV" or "Acme BV via Accounton"
    address: str  # ASCII, domain in A-labels
    reply_to: str | None  # None: a different original From becomes Reply-To; else this address

    def __post_init__(self) -> None:
        if any(char in "\r\n\x00" for char in self.display_name):
            raise ValueError("display name contains CR, LF or NUL")
        if not is_address(self.address):
            raise ValueError(f"sender address {self.address!r} is not a valid ASCII address")
        if self.reply_to is not None and not is_address(self.reply_to):
            raise ValueError(f"reply-to address {self.reply_to!r} is not a valid ASCII address")


def rewrite_message(
    message: Message,
    *,
    identity: Identity,
    tenant_header: str,
    received: bytes,
    message_id_domain: str,
    now: datetime,
) -> Message:
    """The message with the sender enforced: new header fields, the same body (not copied).

    Output header: `received`, the client's fields minus the removed ones (and minus duplicates of
    Date/Message-ID/Reply-To), then ours: From, Reply-To (when due), Date and Message-ID (when missing).
    Malformed header lines were refused with 550 5.6.0 when `message` was parsed
    (relay.mail.message.parse_header; RFC 5322 2.1.1: we refuse rather than guess).
    """
    _check_arguments(received, message_id_domain)
    tenant = tenant_header.strip().lower().encode("ascii")
    kept: list[Field] = []
    seen: set[bytes] = set()
    original_from: bytes | None = None
    for field in message.fields:
        name = field.name
        if name == b"from" and original_from is None:
            original_from = field.value
        if name in _REMOVED or name.startswith(_REMOVED_PREFIXES) or (tenant and name == tenant):
            continue
        if name in _SINGLE:
            if name in seen:
                continue
            seen.add(name)
        kept.append(field)
    ours = [Field(b"from", mailbox_field("From", identity.display_name, identity.address))]
    if b"reply-to" not in seen:
        reply_to = _reply_to(identity, original_from)
        if reply_to is not None:
            ours.append(Field(b"reply-to", f"Reply-To: <{reply_to}>\r\n".encode("ascii")))
    if b"date" not in seen:
        ours.append(Field(b"date", f"Date: {_rfc5322_date(now)}\r\n".encode("ascii")))
    if b"message-id" not in seen:
        message_id = f"Message-ID: <{secrets.token_hex(16)}@{message_id_domain}>\r\n"
        ours.append(Field(b"message-id", message_id.encode("ascii")))
    return message.with_fields([Field(b"received", received), *kept, *ours])


def rewrite_headers(
    message: bytes,
    *,
    identity: Identity,
    tenant_header: str,
    received: bytes,
    message_id_domain: str,
    now: datetime,
) -> bytes:
    """`rewrite_message` on bytes: `message` CRLF-normalised (relay.mail.lines.normalise), the result joined.

    Raises ReplyError(BAD_HEADER) for a line that is neither a field nor a continuation, a leading
    continuation, or a header line over 998 octets.
    """
    _check_arguments(received, message_id_domain)  # before the header, as always
    fields, body_start = parse_header(message)
    # The body is only carried over here (joined below), never hashed: no claim on its line endings.
    parsed = Message(fields, CrlfData(message), body_start)
    return rewrite_message(parsed, identity=identity, tenant_header=tenant_header, received=received,
                           message_id_domain=message_id_domain, now=now).tobytes()


def _reply_to(identity: Identity, original_from: bytes | None) -> str | None:
    """Where replies go when the message names no Reply-To: the given address, or the original From."""
    if identity.reply_to is not None:
        candidate: str | None = identity.reply_to
    else:
        candidate = first_address(original_from) if original_from is not None else None
    if candidate is None or candidate.lower() == identity.address.lower():
        return None
    return candidate


def _rfc5322_date(now: datetime) -> str:
    """RFC 5322 3.3 date-time; a naive `now` is taken as UTC."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    return format_datetime(now)


def _check_arguments(received: bytes, message_id_domain: str) -> None:
    _check_received(received)
    if not is_host_name(message_id_domain):
        raise ValueError(f"message-id domain {message_id_domain!r} is not a host name")


def _check_received(received: bytes) -> None:
    """The server's Received field must be one well-formed field, or it could smuggle others in."""
    lines = received.split(CRLF)
    ok = (
        received.lower().startswith(b"received:")
        and received.endswith(CRLF)
        and crlf_only(received)
        and b"\x00" not in received
        and all(line[:1] in (b" ", b"\t") for line in lines[1:-1])
        and all(len(line) <= MAX_LINE for line in lines)
    )
    if not ok:
        raise ValueError("received must be one CRLF-terminated Received field")
