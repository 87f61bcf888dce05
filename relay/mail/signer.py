"""DKIM signing (RFC 6376, rsa-sha256, relaxed/relaxed) with a key held in memory, signed by OpenSSL."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Sequence

import idna
from cryptography.exceptions import InternalError, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from relay.core.replies import KEY_UNAVAILABLE, ReplyError
from relay.mail.lines import CRLF, CrlfData, crlf_only, spans
from relay.mail.mailbox import is_host_name
from relay.mail.message import Field, Message, parse_message

# The fields a reader trusts, in this order (RFC 6376 5.4.1's recommended set plus the list headers
# of RFC 8058 one-click unsubscribe). Each is listed once more than present, absent ones once
# (5.4.2, 8.15: "oversigned"): verifiers select instances from the bottom up, and the extra entry
# signs "no further instance", so a Subject, To or Cc added anywhere, even above ours where most
# clients show the first one, breaks the signature.
SIGNED_FIELDS = (
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to", b"mime-version",
    b"content-type", b"content-transfer-encoding", b"in-reply-to", b"references",
    b"list-unsubscribe", b"list-unsubscribe-post",
)  # fmt: skip
# Signed and oversigned when present, but not sealed when absent: some upstream providers add their
# own List-Unsubscribe, and sealing its absence would break our signature at every receiver.
SIGNED_WHEN_PRESENT = frozenset({b"list-unsubscribe", b"list-unsubscribe-post"})
MIN_KEY_BITS = 1024  # RFC 8301 3.2: verifiers MUST NOT accept smaller RSA keys.
_SPACE_RUN = re.compile(rb"  +")
_FOLD_WIDTH = 76
_SPAN = 256 * 1024  # the body is hashed in spans of about this size: the copies stay this small


class SigningKeyError(ReplyError):
    """The tenant's key cannot sign: 451 4.3.5 to the client; `detail` is for the log (never key bytes)."""

    def __init__(self, detail: str) -> None:
        super().__init__(KEY_UNAVAILABLE)
        self.detail = detail


def _compress_wsp(text: bytes) -> bytes:
    """Every run of SP/HTAB -> one SP: C-speed bytes.replace for tabs, one literal-prefix regex for runs."""
    if b"\t" in text:
        text = text.replace(b"\t", b" ")
    if b"  " in text:
        text = _SPACE_RUN.sub(b" ", text)
    return text


def _relaxed_lines(text: bytes) -> bytes:
    """RFC 6376 3.4.4 a and b on whole lines: WSP runs -> one SP, no WSP before CRLF."""
    return _compress_wsp(text).replace(b" \r\n", CRLF)


def _final_crlfs(data: bytes, start: int, end: int) -> int:
    """How many CRLFs `data[start:end]` ends with: a few steps even for megabytes of empty lines."""
    count, step = 0, 1
    while step:
        if data.endswith(CRLF * step, start, end - 2 * count):
            count += step
            step *= 2
        else:
            step //= 2
    return count


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4: WSP runs -> one SP, no WSP before CRLF, no empty lines at the end, CRLF-ended.

    Whole-body bytes operations, no per-line Python loop. The signer hashes the same span by span
    (`body_hash`); this is the reference it is tested against.
    """
    body = _relaxed_lines(body)
    end = len(body) - 2 * _final_crlfs(body, 0, len(body))
    if end == 0:
        return b""  # an empty body, or only empty lines: the empty string (3.4.4, 3.4.3)
    return body + CRLF if end == len(body) else body[: end + 2]  # one CRLF ends it, also when missing


def body_hash(data: bytes, start: int = 0) -> bytes:
    """SHA-256 of `relaxed_body(data[start:])`, span by span: no copy of the body, none of its canonical form.

    Spans are cut after an LF (relay.mail.lines.spans), so no WSP run and no line is split between two.
    A span without SP or HTAB is already canonical and is hashed in place. Empty lines at the end of a
    span are held back until something follows them: at the end of the body they are dropped (3.4.4).
    """
    digest = hashlib.sha256()
    held = 0  # CRLFs read but not hashed yet
    hashed = False
    for low, high in spans(data, size=_SPAN, start=start):
        if data.find(b" ", low, high) < 0 and data.find(b"\t", low, high) < 0:
            text, first, last = data, low, high
        else:
            text = _relaxed_lines(data[low:high])
            first, last = 0, len(text)
        empty = _final_crlfs(text, first, last)
        if last - first == 2 * empty:
            held += empty
            continue
        while held:  # in blocks: a body may hold megabytes of empty lines
            step = min(held, 32 * 1024)
            digest.update(CRLF * step)
            held -= step
        digest.update(memoryview(text)[first : last - 2 * empty])
        held, hashed = empty, True
    if hashed:
        digest.update(CRLF)
    return digest.digest()


def relaxed_header(field: bytes) -> bytes:
    """RFC 6376 3.4.2: lower-case name, unfolded value, WSP runs -> one SP, no WSP around the colon."""
    colon = field.index(b":")
    name = field[:colon].rstrip(b" \t").lower()
    value = _compress_wsp(field[colon + 1 :].replace(CRLF, b"")).strip(b" ")
    return name + b":" + value + CRLF


def _signed_instances(fields: Sequence[Field]) -> tuple[list[bytes], list[bytes]]:
    """The h= names and the fields they select, bottom-up per name as verifiers do (RFC 6376 5.4.2)."""
    by_name: dict[bytes, list[bytes]] = {}
    for field in fields:
        by_name.setdefault(field.name, []).append(field.raw)
    if b"from" not in by_name:
        raise ValueError("a message to sign must have a From field (RFC 6376 5.4)")
    if b"dkim-signature" in by_name:  # one signature per message, ours: rewrite removes the client's
        raise ValueError("message already carries a DKIM-Signature")
    names: list[bytes] = []
    selected: list[bytes] = []
    for name in SIGNED_FIELDS:
        instances = by_name.get(name, [])
        if not instances and name in SIGNED_WHEN_PRESENT:
            continue
        names += [name] * (len(instances) + 1)
        selected += reversed(instances)
    return names, selected


def _fold(segments: list[str]) -> str:
    """Join segments, breaking lines (CRLF SP) between them to stay near 76 columns (RFC 6376 3.5 FWS)."""
    lines: list[str] = []
    line = ""
    for segment in segments:
        if line and len(line) + len(segment) > _FOLD_WIDTH:
            lines.append(line)
            line = segment if segment.startswith(" ") else " " + segment
        else:
            line += segment
    lines.append(line)
    return "\r\n".join(lines)


def _a_label(domain: str) -> str:
    """d= carries A-labels (RFC 6376 3.5, IDNA2008 via `idna`)."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise SigningKeyError(f"signing domain {domain!r} is not a valid domain name") from exc


class DkimSigner:
    """Signs for one domain and selector with one key, parsed once; the caller picks the key per tenant."""

    def __init__(self, *, private_key: rsa.RSAPrivateKey, domain: str, selector: str) -> None:
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise SigningKeyError("signing key is not an RSA private key")
        if private_key.key_size < MIN_KEY_BITS:
            raise SigningKeyError(f"signing key has {private_key.key_size} bits, fewer than {MIN_KEY_BITS}")
        self._key = private_key
        self.domain = _a_label(domain).lower()
        self.selector = selector.lower()
        if not is_host_name(self.domain) or "." not in self.domain:
            raise SigningKeyError(f"signing domain {domain!r} is not a host name")
        if not is_host_name(self.selector):  # RFC 6376 3.1: selector = sub-domain *("." sub-domain)
            raise SigningKeyError(f"selector {selector!r} is not a valid selector")

    def sign(self, message: bytes, *, now: int | None = None) -> bytes:
        """`message` (CRLF line endings) with one DKIM-Signature field prepended."""
        if not crlf_only(message):
            # The wire will carry CRLF only; a hash over anything else would not verify.
            raise ValueError("message to sign must use CRLF line endings only")
        return self.signature(parse_message(CrlfData(message)), now=now) + message

    def sign_message(self, message: Message, *, now: int | None = None) -> Message:
        """`message` with one DKIM-Signature field first; the body stays where it lies."""
        return message.with_fields((Field(b"dkim-signature", self.signature(message, now=now)), *message.fields))

    def signature(self, message: Message, *, now: int | None = None) -> bytes:
        """The DKIM-Signature field (CRLF-terminated) over `message`'s fields and body, as they will be sent."""
        names, selected = _signed_instances(message.fields)
        body = base64.b64encode(body_hash(message.data, message.body_start)).decode("ascii")
        head = [
            "DKIM-Signature: v=1;", " a=rsa-sha256;", " c=relaxed/relaxed;", f" d={self.domain};",
            f" s={self.selector};", f" t={int(time.time()) if now is None else now};",
        ]  # fmt: skip
        h_tag = [f"{name.decode('ascii')}:" for name in names]
        h_tag[0] = " h=" + h_tag[0]
        h_tag[-1] = h_tag[-1][:-1] + ";"
        segments = head + h_tag + [f" bh={body};", " b="]
        # RFC 6376 3.7: the signature field itself is hashed with an empty b= and no final CRLF.
        unsigned = _fold(segments).encode("ascii") + CRLF
        data = b"".join(relaxed_header(field) for field in selected) + relaxed_header(unsigned)[:-2]
        signature = base64.b64encode(self._rsa_sign(data)).decode("ascii")
        chunks = [signature[i : i + 64] for i in range(0, len(signature), 64)]
        return _fold(segments + chunks).encode("ascii") + CRLF

    def _rsa_sign(self, data: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 with SHA-256 (RFC 6376 3.3.1), translating OpenSSL failures at this boundary."""
        try:
            return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        except (ValueError, TypeError, UnsupportedAlgorithm, InternalError) as exc:
            raise SigningKeyError(f"RSA signing failed ({type(exc).__name__})") from exc
