"""DATA normalisation: NUL and smuggled end-of-data refused, bare line endings normalised, header split."""

from __future__ import annotations

import itertools

import pytest

from relay.core.replies import BAD_HEADER, NUL_BYTES, SMUGGLING, ReplyError
from relay.mail.message import normalise_data, split_header_body

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
