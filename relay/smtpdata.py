"""DATA as it arrives on the wire: end-of-data, dot-unstuffing, bare-LF lines, smuggling, size and line limits.

aiosmtpd splits DATA on CRLF only, so a legacy client sending bare-LF lines gets `500 Line too long`
once the message passes ~1,000 bytes. Like Postfix, we accept such mail and normalise it: the server
reads lines up to each LF and feeds them here. The end of data stays strictly CRLF "." CRLF
(RFC 5321 4.1.1.4); every other dot alone between line breaks of any kind (`\\n.\\n`, `\\r\\n.\\r`,
`\\n.\\r\\n`, ...) is an end-of-data look-alike that other servers may honour: the message is read to
its real end and refused with 550 5.5.2 (SMTP smuggling), never forwarded.

The output keeps the client's bare CRs inside lines (for `relay.message.normalise_data` to judge) and
ends every line read up to an LF with CRLF.
"""

from __future__ import annotations

import re

from relay.message import MAX_LINE
from relay.replies import SMUGGLING, TOO_BIG, Reply, ReplyError

LINE_TOO_LONG = Reply(550, "5.6.0", "Line too long: at most 998 characters per line (RFC 5322 2.1.1)")

_BREAKS = re.compile(rb"\r\n|\r|\n")


class DataReader:
    """Feed raw lines (each ending at its LF, or partial pieces of an over-long line); then `content()`."""

    def __init__(self, *, max_size: int) -> None:
        self._max_size = max_size
        self._lines: list[bytes] = []
        self._size = 0
        self._after_crlf = True  # the 354 reply's exchange ended with the client's CRLF
        self._partial = False  # the previous piece was part of an over-long line
        self._partial_cr = False  # ... and ended in CR, whose LF may start the next piece
        self._error: Reply | None = None

    def feed(self, line: bytes) -> bool:
        """Take one raw line ending in LF; True when it was the end of data."""
        if not self._partial and self._after_crlf and line == b".\r\n":
            return True
        continuation = self._partial
        self._partial = False
        self._after_crlf = line.endswith(b"\r\n") or (continuation and self._partial_cr and line == b"\n")
        self._count(len(line))
        if self._error is not None:
            return False
        if not continuation and self._smuggled_dot(line):
            self._fail(SMUGGLING)
            return False
        text = line[:-2] if self._after_crlf else line[:-1]
        if not continuation and text.startswith(b"."):
            text = text[1:]  # RFC 5321 4.5.2 transparency
        if len(text) > MAX_LINE:
            self._fail(LINE_TOO_LONG)
            return False
        self._lines.append(text + b"\r\n")
        return False

    def feed_overlong(self, piece: bytes) -> None:
        """Take part of a line longer than the stream limit: counted, then discarded."""
        self._partial = True
        self._partial_cr = piece.endswith(b"\r")
        self._count(len(piece))
        if self._error is None:
            self._fail(LINE_TOO_LONG)

    def content(self) -> bytes:
        """The dot-unstuffed message, or the reply that refuses it (raised as `ReplyError`)."""
        if self._error is not None:
            raise ReplyError(self._error)
        return b"".join(self._lines)

    def _count(self, size: int) -> None:
        self._size += size
        if self._size > self._max_size and self._error is None:
            self._fail(TOO_BIG)

    def _fail(self, reply: Reply) -> None:
        self._error = reply
        self._lines.clear()  # nothing of a refused message is kept in memory

    @staticmethod
    def _smuggled_dot(line: bytes) -> bool:
        # Split at every kind of line break; a lone "." between any two of them (or at the start
        # of this line, after the previous line's break) is a look-alike. The real end was handled
        # in feed(); any other "." line must have been dot-stuffed to "..".
        return b"." in _BREAKS.split(line)
