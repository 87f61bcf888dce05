"""DATA normalisation: NUL and smuggled end-of-data refused, bare line endings normalised (the one rule of
relay.mail.lines, as the stream reader and the message checks apply it), and the header parsed once."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import re

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

from relay.core.replies import BAD_HEADER, NUL_BYTES, SMUGGLING, Reply, ReplyError
from relay.mail import lines
from relay.mail.message import Field, normalise_data, parse_message, split_header_body
from relay.mail.smtpdata import STREAM_LIMIT, read_data

HEAD = b"Subject: x\r\n\r\nfirst line"
TAIL = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\n"

# A "." alone between two line endings, at least one of which is a bare CR or a bare LF.
SMUGGLED = [
    b"\n.\n",
    b"\r\n.\n",
    b"\n.\r\n",
    b"\r.\r",
    b"\r\n.\r",
    b"\n.\r",
    b"\r.\n",
    b"\r.\r\n",
    b"\r\n.\r\r\n",  # bare CR right after the dot, then a CRLF
    b"\r\n\n.\r\n",  # CRLF, an empty bare-LF line, then the dot line
]


def refused(data: bytes) -> ReplyError:
    with pytest.raises(ReplyError) as caught:
        normalise_data(data)
    return caught.value


@pytest.mark.parametrize("pattern", SMUGGLED, ids=repr)
def test_smuggled_end_of_data_in_the_middle_is_refused_550_5_5_2(pattern: bytes) -> None:
    error = refused(HEAD + pattern + TAIL)
    assert error.reply == SMUGGLING
    assert (error.reply.code, error.reply.enhanced) == (550, "5.5.2")


@pytest.mark.parametrize("data", [b".\nrest\r\n", b".\rrest\r\n", b"x\r\nlast\n.", b"x\r\nlast\r."], ids=repr)
def test_smuggled_dot_at_the_start_or_end_of_data_is_refused(data: bytes) -> None:
    assert refused(data).reply == SMUGGLING


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # `..` un-stuffed by aiosmtpd: a single dot between two CRLFs is a legitimate line.
        (b"Subject: x\r\n\r\nbefore\r\n.\r\nafter\r\n", b"Subject: x\r\n\r\nbefore\r\n.\r\nafter\r\n"),
        (b".\r\nstarts with a dot line\r\n", b".\r\nstarts with a dot line\r\n"),
        (b"ends with a dot line\r\n.", b"ends with a dot line\r\n.\r\n"),
        # Dots that are not alone on their line, next to bare endings: normalised, not refused.
        (b"a\n.b\n..\nc.\r", b"a\r\n.b\r\n..\r\nc.\r\n"),
    ],
    ids=["middle", "start", "end", "not-alone"],
)
def test_legitimate_dot_lines_pass(data: bytes, expected: bytes) -> None:
    assert normalise_data(data) == expected


def _smuggled_by_definition(data: bytes) -> bool:
    """The rule spelled out dot by dot: a lone dot with a bare CR or bare LF on either side."""
    for i in (i for i, byte in enumerate(data) if byte == ord(".")):
        if i == 0 or data[max(i - 2, 0) : i] == b"\r\n":
            before = "crlf"  # the start of data counts as CRLF
        elif data[i - 1 : i] in (b"\r", b"\n"):
            before = "bare"
        else:
            continue
        after_text = data[i + 1 : i + 3]
        if after_text == b"" or after_text == b"\r\n":
            after = "crlf"  # so does the end of data
        elif after_text[:1] in (b"\r", b"\n"):
            after = "bare"
        else:
            continue
        if "bare" in (before, after):
            return True
    return False


def test_smuggling_check_matches_the_rule_on_every_short_input() -> None:
    """Exhaustive over all strings of up to 6 symbols from CR, LF, ".", "a": regex == definition."""
    checked = 0
    for length in range(7):
        for symbols in itertools.product((b"\r", b"\n", b".", b"a"), repeat=length):
            data = b"".join(symbols)
            try:
                normalise_data(data)
                refused_now = False
            except ReplyError as error:
                assert error.reply == SMUGGLING
                refused_now = True
            assert refused_now == _smuggled_by_definition(data), data
            checked += 1
    assert checked == 5461


def test_nul_byte_is_refused_550_5_6_0() -> None:
    error = refused(b"Subject: x\r\n\r\nhello\x00world\r\n")
    assert error.reply == NUL_BYTES
    assert (error.reply.code, error.reply.enhanced) == (550, "5.6.0")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"Subject: x\n\nline one\nline two\n", b"Subject: x\r\n\r\nline one\r\nline two\r\n"),
        (b"Subject: x\r\rline one\rline two\r", b"Subject: x\r\n\r\nline one\r\nline two\r\n"),
        (b"A: 1\r\nB: 2\n\r\nbody\r\rmore\n\r\n", b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore\r\n\r\n"),
        (b"Subject: x\r\n\r\nno final line ending", b"Subject: x\r\n\r\nno final line ending\r\n"),
        (b"", b"\r\n"),
    ],
    ids=["bare-lf", "bare-cr", "mixed", "no-final-crlf", "empty"],
)
def test_bare_line_endings_become_crlf(data: bytes, expected: bytes) -> None:
    assert normalise_data(data) == expected


def test_crlf_message_passes_unchanged() -> None:
    data = b"Subject: x\r\n\r\n" + b"a line of text \xc3\xa9\r\n" * 2000
    assert normalise_data(data) == data


def test_split_header_body_keeps_continuations_with_their_field() -> None:
    message = b"Subject: one\r\n two\r\nFrom : a@b.test\r\n\r\nbody\r\n\r\nstill body\r\n"
    fields, body = split_header_body(message)
    assert fields == [b"Subject: one\r\n two\r\n", b"From : a@b.test\r\n"]
    assert body == b"body\r\n\r\nstill body\r\n"


def test_split_header_body_without_separator_or_without_header() -> None:
    assert split_header_body(b"A: 1\r\nB: 2\r\n") == ([b"A: 1\r\n", b"B: 2\r\n"], b"")
    assert split_header_body(b"\r\nonly body\r\n") == ([], b"only body\r\n")


@pytest.mark.parametrize(
    "message",
    [
        b"Subject: x\r\nthis is no header\r\n\r\nbody\r\n",  # neither `name:` nor a continuation
        b" continuation first\r\nSubject: x\r\n\r\n",
        b"Fr\r\n om: evil@x.test\r\n\r\n",  # a folded field name
        b": empty name\r\n\r\n",
        b"Subj\xc3\xa9ct: 8-bit name\r\n\r\n",
        b"Subject: x\nFrom: evil@x.test\r\n\r\n",  # a bare LF would start a new line downstream
        b"Subject: " + b"x" * 990 + b"\r\n\r\n",  # a line over 998 octets (RFC 5322 2.1.1)
    ],
    ids=["not-a-header", "leading-continuation", "folded-name", "empty-name", "8bit-name", "bare-lf", "too-long"],
)
def test_malformed_header_line_is_refused_550_5_6_0(message: bytes) -> None:
    with pytest.raises(ReplyError) as caught:
        split_header_body(message)
    assert caught.value.reply == BAD_HEADER


# ------------------------------------------------------------------ the one rule (relay.mail.lines)

ONE_RULE = [
    # (variant inside a message, what the rule says: the refusal, or the variant as it will be signed)
    (b"\n.\n", SMUGGLING),
    (b"\r.\n", SMUGGLING),
    (b"\n.\r\n", SMUGGLING),
    (b"\r\n.\r", SMUGGLING),
    (b"\r.\r", SMUGGLING),
    (b"\r\n.\n", SMUGGLING),
    (b"\r\nbare\rCR mid-line\r\n", b"\r\nbare\r\nCR mid-line\r\n"),
    (b"\r\nbare LF\nline\r\n", b"\r\nbare LF\r\nline\r\n"),
    (b"\r\nNUL \x00 inside\r\n", NUL_BYTES),
    (b"\r\nmixed\r\r\n\nline\rend\n", b"\r\nmixed\r\n\r\n\r\nline\r\nend\r\n"),
    (b"\r\nmixed\r\n\n.\r\n", SMUGGLING),  # CRLF, an empty bare-LF line, then the dot line
]


async def _read(wire: bytes) -> bytes:
    stream = asyncio.StreamReader(limit=STREAM_LIMIT)
    stream.feed_data(wire + b".\r\n")  # the message's own last CRLF and this make the real end
    stream.feed_eof()
    return (await read_data(stream, max_size=1_000_000)).data


def through_the_reader(wire: bytes) -> bytes | Reply:
    """What the relay makes of `wire` sent as DATA: the stream reader, then the message checks."""
    try:
        return normalise_data(asyncio.run(_read(wire)))
    except ReplyError as exc:
        return exc.reply


def through_the_checks(data: bytes) -> bytes | Reply:
    """The message checks alone, on content handed in without SMTP (send-test in process)."""
    try:
        return normalise_data(data)
    except ReplyError as exc:
        return exc.reply


@pytest.mark.parametrize(("variant", "rule"), ONE_RULE, ids=repr)
def test_reader_and_message_checks_agree_with_the_one_rule(variant: bytes, rule: bytes | Reply) -> None:
    data = b"Subject: x\r\n\r\nfirst line" + variant + b"last line\r\n"
    expected = b"Subject: x\r\n\r\nfirst line" + rule + b"last line\r\n" if isinstance(rule, bytes) else rule
    assert through_the_reader(data) == expected
    assert through_the_checks(data) == expected
    if isinstance(rule, Reply):
        assert (rule.code, rule.enhanced) in ((550, "5.5.2"), (550, "5.6.0"))


def test_a_stuffed_dot_before_a_bare_cr_is_refused_once_unstuffed() -> None:
    """Why the rule is applied twice: `..` followed by a bare CR is no look-alike on the wire, but un-stuffed
    it is a lone dot before a bare CR, which a later hop could take for the end."""
    wire = b"Subject: x\r\n\r\nfirst\r\n..\rMAIL FROM:<ceo@acme.test>\r\n"
    assert not lines.smuggled_dot(wire)
    assert through_the_reader(wire) == SMUGGLING


def test_the_readers_look_alike_check_is_the_one_rule_with_the_previous_line_ending() -> None:
    """Every raw line up to 8 symbols then LF, after a CRLF or a bare LF: the reader's question ("a lone
    dot between breaks of any kind?", its definition before the rule moved to lines.py) is the rule's."""
    breaks = re.compile(rb"\r\n|\r|\n")
    for length in range(9):
        for symbols in itertools.product((b"\r", b".", b"a"), repeat=length):
            line = b"".join(symbols) + b"\n"
            for after_bare in (False, True):
                if line == b".\r\n" and not after_bare:
                    continue  # the end of data
                assert lines.smuggled_dot(line, after_bare_break=after_bare) == (b"." in breaks.split(line)), line


def test_normalise_does_not_copy_crlf_data() -> None:
    data = b"Subject: x\r\n\r\n" + b"line\r\n" * 1000
    assert normalise_data(data) is data


def test_normalise_with_the_count_known_still_refuses_nul_and_ends_in_crlf() -> None:
    """What the DATA reader's count spares (relay.mail.smtpdata.DataContent) is rule 1 alone."""
    data = b"Subject: x\r\n\r\n" + b"line\r\n" * 1000
    assert normalise_data(data, crlf_only_known=True) is data
    assert normalise_data(b"Subject: x\r\n\r\nno end", crlf_only_known=True) == b"Subject: x\r\n\r\nno end\r\n"
    with pytest.raises(ReplyError) as caught:
        normalise_data(b"Subject: x\r\n\r\na\x00b\r\n", crlf_only_known=True)
    assert caught.value.reply == NUL_BYTES


def test_spans_cut_after_an_lf_and_cover_everything() -> None:
    data = b"ab\r\ncd\nefghij\r\n" * 50 + b"tail without lf"
    for size in (1, 2, 5, 64, 10_000):
        parts = list(lines.spans(data, size=size, start=3))
        assert b"".join(data[low:high] for low, high in parts) == data[3:]
        assert all(data[high - 1 : high] == b"\n" for _, high in parts[:-1])
        assert all(high - low >= min(size, len(data) - low) for low, high in parts[:-1])


# ------------------------------------------------------------------ the header parsed once


def test_parse_message_keeps_the_body_in_place() -> None:
    data = normalise_data(b"Subject: one\r\n two\r\nFrom : a@b.test\r\n\r\nbody\r\n")
    message = parse_message(data)
    assert message.fields == (Field(b"subject", b"Subject: one\r\n two\r\n"), Field(b"from", b"From : a@b.test\r\n"))
    assert message.body.obj is data and bytes(message.body) == b"body\r\n"
    assert message.values(b"subject") == [b" one two"]
    assert message.tobytes() == data and message.size == len(data)
    assert message.head() == b"Subject: one\r\n two\r\nFrom : a@b.test\r\n\r\n"
    assert message.sha256() == hashlib.sha256(data).hexdigest()


def test_message_without_separator_or_header() -> None:
    headers_only = parse_message(normalise_data(b"A: 1\r\nB: 2\r\n"))
    assert [field.raw for field in headers_only.fields] == [b"A: 1\r\n", b"B: 2\r\n"]
    assert bytes(headers_only.body) == b"" and headers_only.tobytes() == b"A: 1\r\nB: 2\r\n\r\n"
    body_only = parse_message(normalise_data(b"\r\nonly body\r\n"))
    assert body_only.fields == () and bytes(body_only.body) == b"only body\r\n"


@pytest.mark.parametrize("data", [b"Subject: x\r\n\r\n8-bit \xc3\xa9\r\n", b"Subject: \xc3\xa9\r\n\r\nx\r\n"], ids=repr)
def test_isascii_looks_at_what_is_sent(data: bytes) -> None:
    message = parse_message(normalise_data(data))
    assert not message.isascii()
    assert parse_message(normalise_data(b"Subject: x\r\n\r\nplain\r\n")).isascii()


def test_stuffed_chunks_are_what_aiosmtplib_would_send() -> None:
    """RFC 5321 4.5.2 on the way out, span by span, against aiosmtplib's own stuffing of the joined message."""
    rng = random.Random(4552)
    texts = [b"", b".", b"..", b".x", b"x.", b"text", b"a" * 70, b". ."]
    for _ in range(300):
        head = b"Subject: s\r\n" if rng.random() < 0.9 else b""
        body = b"".join(rng.choice(texts) + b"\r\n" for _ in range(rng.randrange(0, 20)))
        message = parse_message(normalise_data(head + b"\r\n" + body))
        expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message.tobytes())) + b".\r\n"
        for size in (1, 3, 16, 1000):
            chunks = list(message.stuffed_chunks(size=size))
            assert b"".join(bytes(chunk) for chunk in chunks) == expected
            # A body span without a dot line is the DATA buffer itself, not a copy.
            assert all(chunk.obj is message.data for chunk in chunks if isinstance(chunk, memoryview))
            if body and not body.startswith(b".") and b"\r\n." not in body:
                assert any(isinstance(chunk, memoryview) for chunk in chunks), "no dot line: no copy"
