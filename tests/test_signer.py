"""DKIM signing: dkimpy (the independent verifier) accepts our signatures on many message shapes."""

from __future__ import annotations

import base64
import hashlib
import random
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import dkim  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from dkim.canonicalization import Relaxed  # type: ignore[import-untyped]

from relay.core.dkimkeys import generate_private_key, public_key_b64
from relay.core.replies import KEY_UNAVAILABLE, ReplyError
from relay.mail import signer as signer_module
from relay.mail.lines import CrlfData
from relay.mail.message import normalise_data, parse_message
from relay.mail.rewrite import Identity, rewrite_headers
from relay.mail.signer import DkimSigner, SigningKeyError, body_hash, relaxed_body, relaxed_header

DOMAIN, SELECTOR = "acme.test", "ar20250314abcdef"
DnsFunc = Callable[..., bytes | None]


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return generate_private_key()  # one RSA-2048 key for the module: generation costs ~100 ms


@pytest.fixture(scope="module")
def signer(key: rsa.RSAPrivateKey) -> DkimSigner:
    return DkimSigner(private_key=key, domain=DOMAIN, selector=SELECTOR)


@pytest.fixture(scope="module")
def dns(key: rsa.RSAPrivateKey) -> DnsFunc:
    """A TXT lookup answering only `<selector>._domainkey.<domain>.` with the public key record."""
    record = f"v=DKIM1; k=rsa; p={public_key_b64(key)}".encode("ascii")

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() else None

    return lookup


def prepare(data: bytes) -> bytes:
    """What the relay does before signing: normalise, then enforce the sender."""
    return rewrite_headers(
        normalise_data(data),
        identity=Identity("Acme BV", "billing@acme.test", None),
        tenant_header="X-Accounton-Tenant",
        received=b"Received: from app1 by relay.test; Fri, 14 Mar 2025 09:26:53 +0000\r\n",
        message_id_domain="relay.test",
        now=datetime.now(timezone.utc),
    )


def tags(signed: bytes) -> dict[str, str]:
    """The tag=value pairs of the (first) DKIM-Signature field, unfolded, whitespace removed."""
    first, rest = signed.split(b"\r\n", 1)
    assert first.startswith(b"DKIM-Signature:")
    value = first[len(b"DKIM-Signature:") :]
    for line in rest.split(b"\r\n"):
        if not line[:1].isspace():
            break
        value += line
    pairs = (item.split("=", 1) for item in value.decode("ascii").split(";") if item.strip())
    return {name.strip(): re.sub(r"\s+", "", val) for name, val in pairs}


MULTIPART = (
    b"From: jan@gmail.test\r\nTo: a@b.test\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XYZ"\r\n\r\n'
    b"--XYZ\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"Hier is uw factuur \xe2\x82\xac 12,50.\r\n"
    b"--XYZ\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
    b'Content-Disposition: attachment; filename="f.pdf"\r\n\r\n'
    + base64.encodebytes(bytes(range(256)) * 40).replace(b"\n", b"\r\n")
    + b"--XYZ--\r\n"
)
SHAPES = {
    "utf8-body": b"From: a@b.test\r\nSubject: caf\xc3\xa9\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Gr\xc3\xbc\xc3\x9fe, \xe6\x97\xa5\xe6\x9c\xac\r\n",
    "multipart-base64": MULTIPART,
    "990-char-lines": b"Subject: long\r\n\r\n" + (b"x" * 990 + b"\r\n") * 5,
    "single-dot-lines": b"Subject: dots\r\n\r\n.\r\nbetween\r\n.\r\n..\r\n.\r\n",
    "empty-body": b"Subject: empty\r\n\r\n",
    "no-body-no-separator": b"Subject: none\r\n",
    "trailing-blank-lines": b"Subject: blank\r\n\r\ntext  with\t runs \t\r\n\r\n \r\n\t\r\n\r\n",
    "folded-header": b"Subject: a subject\r\n\tthat is folded\r\n   twice\r\nTo: a@b.test,\r\n c@d.test\r\n\r\nbody\r\n",
    "bare-lf-client": b"Subject: legacy\n\nline one\nline two\n",
    "duplicate-to-and-list-headers": b"To: a@b.test\r\nTo: c@d.test\r\nList-Unsubscribe: <https://x.test/u>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nIn-Reply-To: <p@x.test>\r\nReferences: <p@x.test>\r\n\r\nhi\r\n",
}


@pytest.mark.parametrize("data", SHAPES.values(), ids=SHAPES.keys())
def test_dkimpy_verifies_messages_of_many_shapes(signer: DkimSigner, dns: DnsFunc, data: bytes) -> None:
    signed = signer.sign(prepare(data))
    assert dkim.verify(signed, dnsfunc=dns)


def test_signature_tags(signer: DkimSigner, dns: DnsFunc) -> None:
    signed = signer.sign(prepare(b"To: a@b.test\r\nSubject: hi\r\nCc: c@d.test\r\n\r\nhi\r\n"), now=1741944413)
    found = tags(signed)
    assert found["v"] == "1" and found["a"] == "rsa-sha256" and found["c"] == "relaxed/relaxed"
    assert (found["d"], found["s"], found["t"]) == (DOMAIN, SELECTOR, "1741944413")
    assert "l" not in found
    signed_names = found["h"].split(":")
    # RFC 6376 5.4.2, 8.15: each field a reader trusts is listed once more than present (oversigned),
    # absent ones once, so that none can be added anywhere; Received is a trace field, not signed.
    for name in ("from", "to", "cc", "subject", "date", "message-id"):
        assert signed_names.count(name) == 2, name
    for name in ("reply-to", "mime-version", "content-type", "content-transfer-encoding"):
        assert signed_names.count(name) == 1, name
    assert "received" not in signed_names


def test_exactly_one_dkim_signature_and_short_lines(signer: DkimSigner) -> None:
    client_signed = b"DKIM-Signature: v=1; d=gmail.test; b=abc\r\nSubject: hi\r\n\r\nhi\r\n"
    signed = signer.sign(prepare(client_signed))
    assert len(re.findall(rb"(?im)^dkim-signature\s*:", signed)) == 1
    header = signed.split(b"\r\n\r\n", 1)[0]
    signature_lines = header.split(b"\r\nReceived:", 1)[0].split(b"\r\n")
    assert max(len(line) for line in signature_lines) <= 78


def test_signing_a_signed_message_again_is_refused(signer: DkimSigner) -> None:
    with pytest.raises(ValueError):
        signer.sign(signer.sign(prepare(b"Subject: hi\r\n\r\nhi\r\n")))


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: m.replace(b"pay 100 EUR", b"pay 900 EUR"),
        lambda m: m + b"appended line\r\n",
        lambda m: m.replace(b"Subject: invoice", b"Subject: urgent"),
        lambda m: m.replace(b"\r\n\r\n", b"\r\nFrom: ceo@acme.test\r\n\r\n", 1),  # a second From, below
        # Above ours: our oversigned h= breaks it (dkimpy also adds an extra `from` on its own side).
        lambda m: m.replace(b"\r\nReceived:", b"\r\nFrom: ceo@acme.test\r\nReceived:", 1),
    ],
    ids=["body-changed", "body-appended", "subject-changed", "from-added-last", "from-added-first"],
)
def test_tampering_fails_verification(signer: DkimSigner, dns: DnsFunc, tamper: Callable[[bytes], bytes]) -> None:
    signed = signer.sign(prepare(b"Subject: invoice\r\n\r\nPlease pay 100 EUR.\r\n"))
    assert dkim.verify(signed, dnsfunc=dns)
    tampered = tamper(signed)
    assert tampered != signed
    assert not dkim.verify(tampered, dnsfunc=dns)


def test_other_domain_key_does_not_verify(key: rsa.RSAPrivateKey, dns: DnsFunc) -> None:
    other = DkimSigner(private_key=key, domain="other.test", selector=SELECTOR)
    assert not dkim.verify(other.sign(prepare(b"Subject: hi\r\n\r\nhi\r\n")), dnsfunc=dns)


RELAXED_BODIES = [
    b"",
    b"\r\n",
    b"\r\n\r\n\r\n",
    b"text",
    b"text  \r\n",
    b"a \t b\t\r\n  c  \r\n\r\n \r\n\t\r\n",
    b"  leading\r\n\tand tabs\t\tinside\r\n",
    b"last line without crlf  ",
    b"a\r\n  ",
    b"\xc3\xa9t\xc3\xa9  \xe2\x82\xac\r\n\r\n",
    b".\r\n..\r\n \r\n",
]


@pytest.mark.parametrize("body", RELAXED_BODIES, ids=repr)
def test_relaxed_body_equals_dkimpy(body: bytes) -> None:
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


RELAXED_HEADERS = [
    (b"Subject", b" hello   world \r\n"),
    (b"SUBJECT", b"\thello\r\n\t world\t \r\n"),
    (b"From ", b"  <a@b.test>  \r\n"),
    (b"X-Empty", b"\r\n"),
    (b"To", b" a@b.test,\r\n   c@d.test\r\n"),
    (b"Subject", b" caf\xc3\xa9  \xe2\x82\xac\r\n"),
]


@pytest.mark.parametrize(("name", "value"), RELAXED_HEADERS, ids=repr)
def test_relaxed_header_equals_dkimpy(name: bytes, value: bytes) -> None:
    ((their_name, their_value),) = Relaxed.canonicalize_headers([(name, value)])
    assert relaxed_header(name + b":" + value) == their_name + b":" + their_value


def test_message_with_bare_line_endings_is_refused(signer: DkimSigner) -> None:
    with pytest.raises(ValueError):
        signer.sign(b"From: a@b.test\r\nSubject: x\n\r\nbody\r\n")


def test_message_without_from_is_refused(signer: DkimSigner) -> None:
    with pytest.raises(ValueError):
        signer.sign(b"Subject: x\r\n\r\nbody\r\n")


def test_a_key_that_is_not_rsa_is_key_unavailable() -> None:
    with pytest.raises(ReplyError) as caught:
        DkimSigner(private_key=ec.generate_private_key(ec.SECP256R1()), domain=DOMAIN, selector=SELECTOR)  # type: ignore[arg-type]
    assert caught.value.reply == KEY_UNAVAILABLE
    assert (caught.value.reply.code, caught.value.reply.enhanced) == (451, "4.3.5")


@pytest.mark.parametrize(("domain", "selector"), [("acme..test", SELECTOR), (DOMAIN, "bad selector"), ("localhost", "s")])
def test_bad_domain_or_selector_is_key_unavailable(key: rsa.RSAPrivateKey, domain: str, selector: str) -> None:
    with pytest.raises(SigningKeyError) as caught:
        DkimSigner(private_key=key, domain=domain, selector=selector)
    assert caught.value.reply == KEY_UNAVAILABLE


class _FailingKey:
    """An RSA key whose signing operation fails, as a hardware or OpenSSL fault would: no peer can play it."""

    key_size = 2048

    def sign(self, *args: Any) -> bytes:
        raise ValueError("simulated OpenSSL failure")


rsa.RSAPrivateKey.register(_FailingKey)


def test_openssl_failure_becomes_key_unavailable_with_a_log_detail() -> None:
    signer = DkimSigner(private_key=_FailingKey(), domain=DOMAIN, selector=SELECTOR)  # type: ignore[arg-type]
    with pytest.raises(SigningKeyError) as caught:
        signer.sign(b"From: a@acme.test\r\n\r\nhi\r\n")
    assert caught.value.reply == KEY_UNAVAILABLE
    assert "ValueError" in caught.value.detail and "BEGIN" not in caught.value.detail


def test_unicode_domain_is_signed_as_a_labels(key: rsa.RSAPrivateKey) -> None:
    signer = DkimSigner(private_key=key, domain="bücher.test", selector=SELECTOR)
    assert tags(signer.sign(b"From: a@xn--bcher-kva.test\r\n\r\nhi\r\n"))["d"] == "xn--bcher-kva.test"


def test_t_defaults_to_now(signer: DkimSigner) -> None:
    before = int(time.time())
    stamp = int(tags(signer.sign(b"From: a@acme.test\r\n\r\nhi\r\n"))["t"])
    assert before <= stamp <= int(time.time())


SIGNED_MESSAGE = (b"To: a@b.test\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n"
                  b"Content-Type: text/plain; charset=utf-8\r\n\r\nPlease pay 100 EUR to NL01BANK.\r\n")
ADDED_FIELDS = [
    b"Subject: URGENT: new bank details",
    b"To: victim@b.test",
    b"Cc: spy@evil.test",
    b"Reply-To: <ceo@evil.test>",
    b"Content-Type: text/html; charset=utf-8",
    b"From: ceo@acme.test",
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000",
    b"Message-ID: <forged@evil.test>",
    b"MIME-Version: 2.0",
    b"Content-Transfer-Encoding: base64",
    b"In-Reply-To: <thread@evil.test>",
    b"References: <thread@evil.test>",
]


def _above_everything(signed: bytes, field: bytes) -> bytes:
    return field + b"\r\n" + signed


def _below_the_signature(signed: bytes, field: bytes) -> bytes:
    return signed.replace(b"\r\nReceived:", b"\r\n" + field + b"\r\nReceived:", 1)


@pytest.mark.parametrize("where", [_above_everything, _below_the_signature], ids=["top", "below-signature"])
@pytest.mark.parametrize("field", ADDED_FIELDS, ids=lambda field: field.split(b":")[0].decode())
def test_a_trusted_field_prepended_to_a_signed_message_breaks_the_signature(
        signer: DkimSigner, dns: DnsFunc, field: bytes, where: Callable[[bytes, bytes], bytes]) -> None:
    """A reader shows the first Subject/To/Cc/...: one added above ours must not keep the signature valid."""
    signed = signer.sign(prepare(SIGNED_MESSAGE))
    assert dkim.verify(signed, dnsfunc=dns)
    assert not dkim.verify(where(signed, field), dnsfunc=dns)


def test_list_unsubscribe_is_sealed_when_present_and_left_open_when_absent(
        signer: DkimSigner, dns: DnsFunc) -> None:
    """RFC 8058 signs List-Unsubscribe when present; an upstream that adds its own must not break us."""
    added = b"List-Unsubscribe: <https://provider.test/u>"
    without = signer.sign(prepare(SIGNED_MESSAGE))
    assert dkim.verify(_below_the_signature(without, added), dnsfunc=dns)
    with_header = signer.sign(prepare(b"List-Unsubscribe: <https://acme.test/u>\r\n" + SIGNED_MESSAGE))
    assert b"list-unsubscribe:list-unsubscribe" in with_header.replace(b"\r\n ", b"")
    assert dkim.verify(with_header, dnsfunc=dns)
    assert not dkim.verify(_above_everything(with_header, added), dnsfunc=dns)


# ------------------------------------------------------------------ signing the parsed message, body in place


@pytest.mark.parametrize("body", RELAXED_BODIES, ids=repr)
@pytest.mark.parametrize("span", [1, 3, 64, 256 * 1024])
def test_body_hash_span_by_span_is_the_hash_of_the_relaxed_body(monkeypatch: pytest.MonkeyPatch, body: bytes,
                                                              span: int) -> None:
    monkeypatch.setattr(signer_module, "_SPAN", span)
    data = b"Subject: x\r\n\r\n" + body
    assert body_hash(data, 14) == hashlib.sha256(relaxed_body(body)).digest()


def test_body_hash_on_random_bodies_cut_into_small_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    """WSP runs, trailing WSP and runs of empty lines across span boundaries, on CRLF bodies."""
    rng = random.Random(6376)
    texts = [b"", b"", b" ", b"\t", b"a", b"word  word", b"tail \t ", b"  lead", b"x" * 40]
    for _ in range(400):
        body = b"".join(rng.choice(texts) + b"\r\n" for _ in range(rng.randrange(0, 25)))
        body += rng.choice([b"", b"no final crlf", b"  ", b"\r\n" * rng.randrange(1, 30)])
        monkeypatch.setattr(signer_module, "_SPAN", rng.choice([1, 2, 7, 33, 1000]))
        assert body_hash(body) == hashlib.sha256(relaxed_body(body)).digest(), body


def test_many_empty_lines_at_the_end_are_dropped() -> None:
    body = b"text\r\n" + b"\r\n" * 300_000
    assert relaxed_body(body) == b"text\r\n"
    assert body_hash(body) == hashlib.sha256(b"text\r\n").digest()
    assert body_hash(b"\r\n" * 300_000) == hashlib.sha256(b"").digest()


@pytest.mark.parametrize("data", SHAPES.values(), ids=SHAPES.keys())
def test_signing_the_parsed_message_gives_the_bytes_signing_gives(signer: DkimSigner, dns: DnsFunc,
                                                                 data: bytes) -> None:
    prepared = prepare(data)
    message = parse_message(CrlfData(prepared))
    signed = signer.sign_message(message, now=1741944413)
    assert signed.tobytes() == signer.sign(prepared, now=1741944413)
    assert signed.body.obj is message.data, "the body is signed where it lies"
    assert dkim.verify(signed.tobytes(), dnsfunc=dns)
