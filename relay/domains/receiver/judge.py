"""One relayed message judged as a receiving server would: SPF, DKIM, then DMARC on top of both."""

from __future__ import annotations

import asyncio
import re
from email import policy
from email.headerregistry import AddressHeader
from email.parser import BytesHeaderParser

import idna

from relay.domains.receiver.dkimcheck import check_dkim
from relay.domains.receiver.dmarc import check_dmarc
from relay.domains.receiver.lookup import DnsLookup
from relay.domains.receiver.model import Check, Result, Verdict
from relay.domains.receiver.spf import check_spf

_RETURN_PATH = re.compile(rb"Return-Path:[ \t]*<([^<>\r\n]*)>[ \t]*", re.I)
_ENVELOPE_TO = re.compile(rb"X-Envelope-To:[ \t]*<([^<>\r\n]*)>[ \t]*", re.I)


def outbox_envelope(eml: bytes) -> tuple[str, list[str], bytes]:
    """An outbox `.eml` (relay.smtp.upstream.Outbox) -> (MAIL FROM, recipients, the message as sent)."""
    line, rest = _first_line(eml)
    sender = _RETURN_PATH.fullmatch(line)
    if sender is None:
        raise ValueError("not an outbox file: it does not start with a Return-Path: <...> line")
    recipients: list[str] = []
    while (recipient := _ENVELOPE_TO.fullmatch(_first_line(rest)[0])) is not None:
        recipients.append(recipient.group(1).decode("utf-8", "replace"))
        rest = _first_line(rest)[1]
    return sender.group(1).decode("utf-8", "replace"), recipients, rest


def _first_line(data: bytes) -> tuple[bytes, bytes]:
    """The first line without its line ending, and the rest."""
    end = data.find(b"\n")
    if end < 0:
        return data, b""
    return data[:end].removesuffix(b"\r"), data[end + 1:]


async def judge(message: bytes, *, mail_from: str, client_ip: str, dns: DnsLookup) -> Verdict:
    """What SPF (on `mail_from` from `client_ip`), DKIM and DMARC would say about `message`."""
    header = BytesHeaderParser(policy=policy.default).parsebytes(message)
    signatures = [str(value).replace("\r", "").replace("\n", "")
                  for name, value in header.raw_items() if name.lower() == "dkim-signature"]
    spf, dkim = await asyncio.gather(
        check_spf(mail_from=mail_from, client_ip=client_ip, dns=dns),
        check_dkim(message, signatures, dns),
    )
    from_domain = author_domain(header.get_all("From") or [])
    if isinstance(from_domain, Check):
        return Verdict(spf, dkim.check, from_domain)
    return Verdict(spf, dkim.check, await check_dmarc(from_domain, spf=spf, dkim=dkim, dns=dns))


def author_domain(fields: list[object]) -> str | Check:
    """The From domain in A-labels, or DMARC's permerror when there is not exactly one mailbox.

    RFC 7489 6.6.1: DMARC needs one author domain; a message without one, or with several, cannot
    be judged (receivers reject or skip it).
    """
    def error(why: str) -> Check:
        return Check(Result.PERMERROR, f"{why}, so DMARC cannot be evaluated (RFC 7489 6.6.1):"
                                       f" send exactly one From with one address.", None)

    if len(fields) != 1:
        return error(f"The message has {len(fields)} From fields")
    field = fields[0]
    addresses = field.addresses if isinstance(field, AddressHeader) else ()
    if len(addresses) != 1:
        return error(f"The From field holds {len(addresses)} addresses")
    if not addresses[0].domain:
        return error(f"The From address {addresses[0].addr_spec!r} has no domain")
    domain = addresses[0].domain.rstrip(".").lower()
    try:
        return domain if domain.isascii() else idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError:
        return error(f"The From domain {domain!r} is not a valid domain name")
