"""One accepted SMTP transaction, taken once at end of DATA, and the Received field that records it."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

# What may appear of a client-chosen name in our Received field: an LDH host name or an address
# literal. Anything else (spaces, parentheses, bare CR from `EHLO a\rb`) is shown as `unknown`.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-_]{0,253}|\[(?:IPv6:)?[0-9A-Fa-f:.]{1,45}\]")


def new_transaction_id() -> str:
    """A short random id that names one transaction in logs, the Received field and replies."""
    return secrets.token_hex(6).upper()


@dataclass(frozen=True)
class Peer:
    """The client side of a session: address, what it said in EHLO, and how it is protected."""

    ip: str
    helo: str
    rdns: str | None = None
    tls: bool = False


@dataclass(frozen=True)
class Transaction:
    """Everything downstream needs: no aiosmtpd object travels past the server hooks (STYLE.md 3)."""

    id: str
    peer: Peer
    client: str  # the authenticated (or network-bound) client's name
    authenticated: bool  # by SMTP AUTH (as opposed to by source network)
    mail_from: str  # what the client said; never used as our envelope sender
    recipients: tuple[str, ...]
    data: bytes  # dot-unstuffed DATA content, line endings as received
    received_at: datetime
    # The DATA reader counted every CR and LF of `data` as part of a CRLF (relay.mail.smtpdata.DataContent):
    # the pipeline's normalise need not count them again. False: not known (count them).
    crlf_only: bool = False


def safe_name(name: str | None) -> str:
    return name if name and _SAFE_NAME.fullmatch(name) else "unknown"


def received_field(tx: Transaction, *, hostname: str) -> bytes:
    """RFC 5321 4.4 trace field, with RFC 3848 `with` (ESMTP, +S for TLS, +A for AUTH).

    Never names the client's credentials (RFC 4954 7 leaves it optional; we keep secrets out).
    """
    protocol = "ESMTP" + ("S" if tx.peer.tls else "") + ("A" if tx.authenticated else "")
    address = f"[{tx.peer.ip}]" if ":" not in tx.peer.ip else f"[IPv6:{tx.peer.ip}]"
    tcp_info = f"{safe_name(tx.peer.rdns)} {address}" if tx.peer.rdns else address
    date = format_datetime(tx.received_at)
    return (
        f"Received: from {safe_name(tx.peer.helo)} ({tcp_info})\r\n"
        f"\tby {hostname} with {protocol} id {tx.id};\r\n"
        f"\t{date}\r\n"
    ).encode("ascii")
