"""Line endings and SMTP smuggling: the one rule that the DATA reader and the message checks both apply.

The rule (what counts as a line ending, what is refused and with which reply, what is normalised):

1. A line ends in CRLF (RFC 5321 2.3.8). A bare CR or a bare LF is no line ending in SMTP, but
   receivers differ on whether they treat it as one, so each is judged here as a *line break*.
2. The end of data is CRLF "." CRLF and nothing else (RFC 5321 4.1.1.4; `END`).
3. A "." alone between two line breaks of which at least one is a bare CR or bare LF (the start and
   the end of the data count as CRLF) is an end-of-data look-alike: some server on the way may end
   the message there and run what follows as commands (SMTP smuggling, SEC Consult 2023, Postfix
   CVE-2023-51764: `\\n.\\n`, `\\r.\\n`, `\\n.\\r\\n`, `\\r\\n.\\r`, ...). Refused with 550 5.5.2
   (`SMUGGLING`), both as the client sent it (before un-stuffing: relay.mail.smtpdata, line by line)
   and as it would be forwarded (after un-stuffing: `normalise`, where `..` became a lone dot that a
   later hop would see).
4. A NUL byte anywhere is refused with 550 5.6.0 (`NUL_BYTES`): RFC 5322 3.5 `text` excludes it, only
   the obsolete syntax of 4.1 has it, and receivers truncate or reject at it.
5. Every other bare CR or bare LF becomes CRLF (`to_crlf`; RFC 5322 2.3: CR and LF only as CRLF), as
   Postfix does, and before signing: aiosmtplib normalises line endings on the wire, so a body hash
   over other bytes would not verify (RFC 6376 3.4.4). The DATA reader already ends each line it reads
   up to an LF with CRLF (`text_of` takes the line's own ending off).
6. Transparency (RFC 5321 4.5.2): a line's first "." is the client's stuffing and is removed
   (`unstuff_crlf`, `text_of`); on the way out a line starting with "." gets one more (`dot_stuffed`,
   relay.mail.message.Message.stuffed_chunks).
7. No line longer than 998 octets without its CRLF (RFC 5322 2.1.1, `MAX_LINE`): 550 5.6.0.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NewType

from relay.core.replies import NUL_BYTES, SMUGGLING, ReplyError

CRLF = b"\r\n"
END = b"\r\n.\r\n"  # RFC 5321 4.1.1.4
MAX_LINE = 998  # RFC 5322 2.1.1: a line MUST NOT exceed 998 octets, excluding the CRLF.

CrlfData = NewType("CrlfData", bytes)
"""Bytes made by `normalise`: every line ends in CRLF, no NUL, no look-alike. The signer hashes a body
of these as it lies (RFC 6376 3.4.4); a bytes-API wrapper may claim it only after `crlf_only`, or for
bytes that never reach the signer as such (relay.mail.rewrite.rewrite_headers)."""

# Rule 3 on one piece of bytes. The start and the end of `data` count as CRLF.
#   1st branch: bare CR, or LF without CR, before the dot; any line break (or the end) after it;
#   2nd branch: CRLF (or the start) before the dot; bare CR or bare LF after it.
# The pattern starts with the literal dot (look-behinds after it) so the regex engine can skip to
# dots at C speed: ~0.2 ms for 50 KB even with a dot on every line.
_SMUGGLED_DOT = re.compile(
    rb"\.(?:(?<=\r\.)|(?<=[^\r]\n\.)|(?<=\A\n\.))(?:[\r\n]|\Z)"
    rb"|\.(?:(?<=\A\.)|(?<=\r\n\.))(?:\r(?!\n)|\n)"
)


def crlf_only(data: bytes, start: int = 0, end: int | None = None) -> bool:
    """Whether every CR and LF in `data[start:end]` is part of a CRLF (counted in place, no copy)."""
    crlf = data.count(CRLF, start, end)
    return data.count(b"\r", start, end) == crlf and data.count(b"\n", start, end) == crlf


def smuggled_dot(data: bytes, *, after_bare_break: bool = False) -> bool:
    """Rule 3: a lone "." with a bare CR or bare LF on either side somewhere in `data`.

    `after_bare_break`: `data` follows a bare LF (the DATA reader's previous line), so a dot at its very
    start has a bare break before it; otherwise the start counts as CRLF.
    """
    if after_bare_break and data[:1] == b"." and data[1:2] in (b"", b"\r", b"\n"):
        return True
    return _SMUGGLED_DOT.search(data) is not None


def to_crlf(data: bytes) -> bytes:
    """Rule 5: CRLF, bare CR and bare LF each become one CRLF."""
    return data.replace(CRLF, b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)


def normalise(data: bytes, *, crlf_only_known: bool = False) -> CrlfData:
    """DATA content (un-stuffed, line endings as received) as the message to sign, or `ReplyError`.

    Refuses NUL (550 5.6.0) and look-alikes (550 5.5.2); turns every line ending into CRLF and ends the
    data with one. CRLF-only data (all ordinary mail) is returned as is, without a copy.
    `crlf_only_known`: the caller has already counted every CR and LF of `data` (the DATA reader,
    relay.mail.smtpdata.DataContent): rule 1 holds, so no look-alike can be in it either.
    """
    if b"\x00" in data:
        raise ReplyError(NUL_BYTES)
    if not crlf_only_known and not crlf_only(data):
        if smuggled_dot(data):
            raise ReplyError(SMUGGLING)
        data = to_crlf(data)
    if not data.endswith(CRLF):
        data += CRLF
    return CrlfData(data)


def text_of(line: bytes, *, ending: int, at_line_start: bool) -> bytes:
    """A raw DATA line without its `ending` (2 for CRLF, 1 for a bare LF), un-stuffed (rule 6).

    The DATA reader adds CRLF to every line it read up to an LF: a bare LF ends a line (rule 5).
    """
    text = line[:-ending] if ending else line
    return text[1:] if at_line_start and text.startswith(b".") else text


def unstuff_crlf(data: bytes) -> bytes:
    """Rule 6 on CRLF-only data read after the 354: every line's first dot is the transparency dot.

    The data begins at a line start (after the DATA command's CRLF). No copy when no line starts with ".".
    """
    data = data.replace(b"\r\n.", CRLF)
    return data[1:] if data.startswith(b".") else data


def spans(data: bytes, *, size: int, start: int = 0) -> Iterator[tuple[int, int]]:
    """`(low, high)` spans of about `size` bytes covering `data[start:]`, each cut just after an LF.

    Cut there, no CRLF, look-alike, WSP run or line is split between two spans (except an LF-less
    tail), so a per-span check or transform gives what a whole-data one would, with bounded copies.
    """
    length = len(data)
    while start < length:
        cut = data.find(b"\n", start + size - 1)
        end = length if cut < 0 else cut + 1
        yield start, end
        start = end


def dot_stuffed(data: bytes | memoryview) -> bytes:
    """Rule 6 outbound on CRLF-only bytes that begin a line: each line starting with "." gets one more.

    A copy of `data` (a span from `spans`, or a header block).
    """
    stuffed = bytes(data).replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed
