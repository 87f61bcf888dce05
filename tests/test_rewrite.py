"""Header enforcement on raw lines: one From (ours), removed fields, Reply-To, Date/Message-ID, limits."""

from __future__ import annotations

import base64
import email
import email.policy
import re
from datetime import datetime, timezone
from email.header import decode_header, make_header
from email.utils import parseaddr, parsedate_to_datetime
from pathlib import Path

import pytest

from relay.core.replies import BAD_HEADER, ReplyError
from relay.domains.receiver import outbox_envelope
from relay.mail.mailbox import first_address
from relay.mail.rewrite import Identity, rewrite_headers
from relay.smtp.upstream import Envelope, Outbox, OutboxReply

NOW = datetime(2025, 3, 14, 9, 26, 53, tzinfo=timezone.utc)
RECEIVED = b"Received: from app1 (app1.internal [10.0.0.5])\r\n\tby relay.test; Fri, 14 Mar 2025 09:26:53 +0000\r\n"
ACME = Identity(display_name="Acme BV", address="billing@acme.test", reply_to=None)
BODY = b"Hello,\r\n\r\nFrom: this line is body text\r\n.\r\nbye \r\n"


def rewrite(message: bytes, identity: Identity = ACME, tenant_header: str = "X-Accounton-Tenant") -> bytes:
    return rewrite_headers(
        message,
        identity=identity,
        tenant_header=tenant_header,
        received=RECEIVED,
        message_id_domain="relay.test",
        now=NOW,
    )


def fields(output: bytes) -> list[tuple[str, str]]:
    """(lower-case name, unfolded value) of each header field, read from the raw output lines."""
    header = output.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    result: list[tuple[str, str]] = []
    for line in header.split("\r\n"):
        if line[:1] in (" ", "\t"):
            name, value = result[-1]
            result[-1] = (name, value + line)
        else:
            name, _, value = line.partition(":")
            result.append((name.rstrip(" \t").lower(), value.strip()))
    return result


def values(output: bytes, name: str) -> list[str]:
    return [value for field, value in fields(output) if field == name]


def parsed(output: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(output, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def assert_one_from_ours(output: bytes, identity: Identity = ACME) -> None:
    """One From, ours: on the raw lines and as Python's parser sees it."""
    assert len(values(output, "from")) == 1
    from_fields = parsed(output).get_all("From") or []
    assert len(from_fields) == 1
    assert parseaddr(str(from_fields[0]))[1] == identity.address
    # The name as an RFC 2047 decoder reads the raw value. (Python's address parser puts a space
    # between adjacent encoded words, which RFC 2047 6.2 says to drop; so it is not the judge here.)
    display = values(output, "from")[0].rsplit(" ", 1)[0]
    decoded = str(make_header(decode_header(display)))
    if decoded.startswith('"'):
        decoded = re.sub(r"\\(.)", r"\1", decoded[1:-1])  # RFC 5322 3.2.4 quoted-pair
    assert decoded == identity.display_name


def test_message_without_from_date_message_id_gets_all_three() -> None:
    output = rewrite(b"To: someone@example.test\r\nSubject: hi\r\n\r\n" + BODY)
    assert_one_from_ours(output)
    assert values(output, "from") == ['"Acme BV" <billing@acme.test>']
    assert parsedate_to_datetime(values(output, "date")[0]) == NOW
    (message_id,) = values(output, "message-id")
    assert message_id.startswith("<") and message_id.endswith("@relay.test>")
    assert values(output, "reply-to") == []  # no original From: nothing to keep


def test_received_is_first_and_body_passes_byte_for_byte() -> None:
    output = rewrite(b"Subject: hi\r\n\r\n" + BODY)
    assert output.startswith(RECEIVED)
    assert output.endswith(b"\r\n\r\n" + BODY)
    assert output.split(b"\r\n\r\n", 1)[1] == BODY


def test_two_from_fields_become_one_ours_and_the_first_becomes_reply_to() -> None:
    output = rewrite(b"From: Jan <jan@gmail.test>\r\nFrom: evil@evil.test\r\nSubject: hi\r\n\r\n" + BODY)
    assert_one_from_ours(output)
    assert values(output, "reply-to") == ["<jan@gmail.test>"]
    assert b"evil@evil.test" not in output


@pytest.mark.parametrize("name", [b"From :", b"From\t:", b"FROM:", b"from  :"])
def test_obsolete_or_odd_case_from_is_removed(name: bytes) -> None:
    output = rewrite(b"Subject: hi\r\n" + name + b" ceo@bank.test\r\n\r\n" + BODY)
    assert_one_from_ours(output)
    assert values(output, "reply-to") == ["<ceo@bank.test>"]
    assert output.count(b"ceo@bank.test") == 1


def test_folded_from_is_removed_with_its_continuation_lines() -> None:
    output = rewrite(b"From: Jan\r\n Peeters\r\n\t<jan@gmail.test>\r\nTo: a@b.test\r\n\r\n" + BODY)
    assert_one_from_ours(output)
    assert b"Peeters" not in output
    assert values(output, "reply-to") == ["<jan@gmail.test>"]
    assert values(output, "to") == ["a@b.test"]


def test_from_with_several_mailboxes_keeps_the_first_address_as_reply_to() -> None:
    output = rewrite(b'From: "Doe, Jan" <jan@gmail.test>, piet@other.test\r\n\r\n' + BODY)
    assert_one_from_ours(output)
    assert values(output, "reply-to") == ["<jan@gmail.test>"]
    assert b"piet@other.test" not in output


def test_encoded_word_display_name_that_decodes_to_an_address_does_not_survive() -> None:
    disguise = b"=?utf-8?b?" + base64.b64encode(b"ceo@bank.test") + b"?="
    output = rewrite(b"From: " + disguise + b" <evil@evil.test>\r\nSubject: pay\r\n\r\n" + BODY)
    assert_one_from_ours(output)
    assert disguise not in output
    assert b"ceo@bank.test" not in str(parsed(output)).encode()
    # Its real address is what a reply would have reached: kept as Reply-To, without the disguise.
    assert values(output, "reply-to") == ["<evil@evil.test>"]


def test_encoded_word_standing_for_the_whole_from_gives_no_reply_to() -> None:
    output = rewrite(b"From: =?utf-8?q?ceo@bank.test?=\r\n\r\n" + BODY)
    assert_one_from_ours(output)
    assert values(output, "reply-to") == []


@pytest.mark.parametrize(
    "field",
    [
        b"Sender: other@example.test",
        b"Resent-From: other@example.test",
        b"Resent-Sender: other@example.test",
        b"resent-to: x@example.test",
        b"Return-Path: <bounce@example.test>",
        b"Bcc: secret@example.test",
        b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test;\r\n s=sel; b=abc",
        b"dkim-signature: v=1; d=other.test",
        b"X-Google-DKIM-Signature: v=1; d=1e100.net",
        b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=example.test",
        b"ARC-Message-Signature: i=1; a=rsa-sha256; d=example.test",
        b"ARC-Authentication-Results: i=1; example.test; dkim=pass",
        b"Authentication-Results: example.test; dmarc=pass",
        b"X-Original-Authentication-Results: example.test; dmarc=pass",
        b"Received-SPF: pass (example.test: domain of a@acme.test designates 192.0.2.1 as permitted sender)",
        b"X-MS-Exchange-Organization-AuthAs: Internal",
        b"X-MS-Exchange-Organization-SCL: -1",
        b"X-Envelope-To: <spy@evil.test>",
        b"x-envelope-to : spy@evil.test",
        b"X-Envelope-From: <ceo@bank.test>",
        b"X-Accounton-Tenant: acme",
        b"x-accounton-tenant : acme",
    ],
    ids=lambda field: field.split(b":")[0].decode(),
)
def test_client_fields_are_removed(field: bytes) -> None:
    output = rewrite(b"Subject: hi\r\n" + field + b"\r\nTo: a@b.test\r\n\r\n" + BODY)
    name = field.split(b":")[0].rstrip().lower().decode()
    assert values(output, name) == []
    assert values(output, "subject") == ["hi"] and values(output, "to") == ["a@b.test"]
    assert_one_from_ours(output)


def test_existing_reply_to_is_kept_and_none_added() -> None:
    message = b"From: jan@gmail.test\r\nReply-To: Support <help@acme.test>\r\n\r\n" + BODY
    for identity in (ACME, Identity("Acme BV via Accounton", "noreply@platform.test", "billing@acme.test")):
        output = rewrite(message, identity)
        assert values(output, "reply-to") == ["Support <help@acme.test>"]


def test_unverified_tenant_gets_the_given_reply_to_address() -> None:
    platform = Identity("Acme BV via Accounton", "noreply@platform.test", reply_to="billing@acme.test")
    output = rewrite(b"From: jan@gmail.test\r\n\r\n" + BODY, platform)
    assert_one_from_ours(output, platform)
    assert values(output, "reply-to") == ["<billing@acme.test>"]


def test_original_from_equal_to_ours_gives_no_reply_to() -> None:
    output = rewrite(b"From: Billing <Billing@Acme.test>\r\n\r\n" + BODY)
    assert values(output, "reply-to") == []


def test_existing_date_and_message_id_are_kept_and_duplicates_dropped() -> None:
    message = (
        b"Date: Thu, 13 Mar 2025 10:00:00 +0100\r\nMessage-ID: <first@app.test>\r\n"
        b"Date: Wed, 01 Jan 2020 00:00:00 +0000\r\nMessage-ID: <second@app.test>\r\n\r\n" + BODY
    )
    output = rewrite(message)
    assert values(output, "date") == ["Thu, 13 Mar 2025 10:00:00 +0100"]
    assert values(output, "message-id") == ["<first@app.test>"]


def test_non_ascii_display_name_is_encoded_and_decodes_back() -> None:
    name = "Société Générale — Überweisungen & Co. 日本"
    identity = Identity(name, "billing@acme.test", None)
    output = rewrite(b"Subject: hi\r\n\r\n" + BODY, identity)
    header = output.split(b"\r\n\r\n", 1)[0]
    assert header.isascii()
    (value,) = values(output, "from")
    display, address = value.rsplit(" ", 1)
    assert address == "<billing@acme.test>"
    assert str(make_header(decode_header(display))) == name
    assert_one_from_ours(output, identity)


@pytest.mark.parametrize(
    "name",
    ['Acme "the best" BV', "Back\\slash BV", "Trailing\\", 'Evil" <ceo@bank.test>, "x', "ceo@bank.test <ceo@bank.test>"],
)
def test_display_name_with_quotes_backslashes_or_addresses_stays_a_name(name: str) -> None:
    identity = Identity(name, "billing@acme.test", None)
    output = rewrite(b"Subject: hi\r\n\r\n" + BODY, identity)
    assert_one_from_ours(output, identity)
    assert first_address(values(output, "from")[0].encode()) == "billing@acme.test"


@pytest.mark.parametrize("name", ["Acme\r\nBcc: x@y.test", "Acme\nBV", "Acme\x00"])
def test_display_name_with_cr_lf_or_nul_is_refused(name: str) -> None:
    with pytest.raises(ValueError):
        Identity(name, "billing@acme.test", None)


@pytest.mark.parametrize("address", ["billing@acme.test>", "a b@acme.test", "billing@acme.test\r\n", "bîlling@acme.test"])
def test_invalid_identity_address_is_refused(address: str) -> None:
    with pytest.raises(ValueError):
        Identity("Acme", address, None)


@pytest.mark.parametrize(
    "message",
    [
        b"Subject: hi\r\nnot a header line\r\n\r\n" + BODY,
        b"\tcontinuation first\r\nSubject: hi\r\n\r\n" + BODY,
        b"Subject: " + b"x" * 1000 + b"\r\n\r\n" + BODY,
    ],
    ids=["neither", "leading-continuation", "line-over-998"],
)
def test_malformed_header_is_refused_550_5_6_0(message: bytes) -> None:
    with pytest.raises(ReplyError) as caught:
        rewrite(message)
    assert caught.value.reply == BAD_HEADER
    assert (caught.value.reply.code, caught.value.reply.enhanced) == (550, "5.6.0")


@pytest.mark.parametrize(
    "name",
    ["A" * 2000, "Acme " * 400, "é" * 700],
    ids=["ascii-unbreakable", "ascii-words", "non-ascii"],
)
def test_no_output_header_line_over_998_octets(name: str) -> None:
    identity = Identity(name.strip(), "billing@acme.test", None)
    message = b"From: Jan <jan@gmail.test>\r\nSubject: " + b"y" * 980 + b"\r\n\r\n" + BODY
    output = rewrite(message, identity)
    header = output.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in header.split(b"\r\n")) <= 998
    (value,) = values(output, "from")
    assert str(make_header(decode_header(value.rsplit(" ", 1)[0]))).strip('"') == name.strip()


def test_tenant_header_is_matched_case_insensitively() -> None:
    output = rewrite(b"x-TENANT: acme\r\nSubject: hi\r\n\r\n" + BODY, tenant_header="X-Tenant")
    assert values(output, "x-tenant") == []


def test_received_must_be_one_well_formed_field() -> None:
    with pytest.raises(ValueError):
        rewrite_headers(
            b"Subject: hi\r\n\r\n",
            identity=ACME,
            tenant_header="",
            received=b"Received: x\r\nFrom: evil@x.test\r\n",
            message_id_domain="relay.test",
            now=NOW,
        )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"jan@gmail.test", "jan@gmail.test"),
        (b"Jan Peeters <jan@gmail.test>", "jan@gmail.test"),
        (b'"Evil <ceo@bank.test>" <jan@gmail.test>', "jan@gmail.test"),
        (b"jan@gmail.test (Jan (the) Peeters)", "jan@gmail.test"),
        (b"(comment <ceo@bank.test>) Jan <jan@gmail.test>", "jan@gmail.test"),
        (b"Friends: jan@gmail.test, piet@x.test;", "jan@gmail.test"),
        (b"Empty:;, jan@gmail.test", "jan@gmail.test"),
        (b"<@route.test,@other.test:jan@gmail.test>", "jan@gmail.test"),
        (b'"jan peeters"@gmail.test', '"jan peeters"@gmail.test'),
        (b"=?utf-8?b?Y2VvQGJhbmsudGVzdA==?= <jan@gmail.test>", "jan@gmail.test"),
        (b"undisclosed-recipients:;", None),
        (b"just a name", None),
        (b"=?utf-8?q?ceo@bank.test?=", None),
        (b"<not an address>", None),
        (b"", None),
    ],
)
def test_first_address_of_a_raw_from_value(value: bytes, expected: str | None) -> None:
    assert first_address(value) == expected


async def test_a_client_x_envelope_to_never_reaches_the_outbox_file(tmp_path: Path) -> None:
    """The outbox writes the envelope as the file's first lines; a client's own X-Envelope-To or
    Return-Path must not sit beside them, where anything reading the outbox takes it for a recipient."""
    message = (b"X-Envelope-To: <spy@evil.test>\r\nReturn-Path: <ceo@bank.test>\r\nSubject: hi\r\n"
               b"X-Envelope-To: spy2@evil.test\r\n\r\n" + BODY)
    envelope = Envelope(sender="bounces@bounce.acme.test", recipients=("customer@example.test",))
    reply = await Outbox(tmp_path).deliver(envelope, rewrite(message))
    assert isinstance(reply, OutboxReply)
    eml = reply.path.read_bytes()
    assert outbox_envelope(eml)[:2] == ("bounces@bounce.acme.test", ["customer@example.test"])
    as_read = email.message_from_bytes(eml, policy=email.policy.default)
    assert as_read.get_all("X-Envelope-To") == ["<customer@example.test>"]
    assert as_read.get_all("Return-Path") == ["<bounces@bounce.acme.test>"]
    assert b"evil.test" not in eml and b"bank.test" not in eml
