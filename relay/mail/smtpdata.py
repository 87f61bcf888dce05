"""DATA as it arrives on the wire: end-of-data, dot-unstuffing, bare-LF lines, smuggling, size and line limits.

aiosmtpd splits DATA on CRLF only, so a legacy client sending bare-LF lines gets `500 Line too long`
once the message passes ~1,000 bytes. Like Postfix, we accept such mail and normalise it. What is a
line ending, a look-alike or too long is the rule of relay.mail.lines; here it is applied to the bytes
as the client sent them: the end of data stays strictly CRLF "." CRLF (RFC 5321 4.1.1.4), and a
look-alike (`\\n.\\n`, `\\r\\n.\\r`, ...) is read to the real end and refused with 550 5.5.2, never forwarded.

`read_data` reads in blocks up to the real end, never past it (what follows is the client's next
command, RFC 2920), into one buffer, and `message_from` judges the bytes at once: CRLF-only data
within the size limit is unstuffed with bytes operations (in spans, so a large message is not copied
line by line); anything else goes line by line through `DataReader`, whose rules are the reference
(a line is what ends at an LF; lines longer than the stream reader's limit count as read in pieces,
never checked for smuggling).

The output keeps the client's bare CRs inside lines (for `relay.mail.lines.normalise` to judge) and
ends every line read up to an LF with CRLF. It comes with what the reader proved on the way
(`DataContent.crlf_only`), so that `normalise` need not count every CR and LF of it again.
"""

from __future__ import annotations

import asyncio
import io
from typing import NamedTuple

from relay.core.replies import LINE_TOO_LONG, SMUGGLING, TOO_BIG, Reply, ReplyError
from relay.mail.lines import (
    CRLF,
    END,
    MAX_LINE,
    smuggled_dot,
    spans,
    text_of,
    unstuff_crlf,
)

__all__ = ["END", "STREAM_LIMIT", "DataContent", "DataReader", "RefusedData", "message_from", "read_data"]

# aiosmtpd's SMTP.line_length_limit, the limit of its StreamReader: a line longer than this plus its
# LF could only be read in pieces (LimitOverrunError), and counts as such (see DataReader.feed_overlong).
STREAM_LIMIT = 1001
_SPAN = 1024 * 1024  # CRLF-only data is checked in spans of about this size


class DataContent(NamedTuple):
    """The un-stuffed message `read_data` read, and whether every CR and LF in it was part of a CRLF.

    `crlf_only` is rule 1 of relay.mail.lines, counted span by span while the message was judged:
    `normalise(data, crlf_only_known=True)` then skips counting them again (~90 us for 50 KB). False says
    only that it was not counted here (the line-by-line path), not that a bare CR or LF is in it.
    """

    data: bytes
    crlf_only: bool


class RefusedData(ReplyError):
    """The DATA reader refused the message (a look-alike 550 5.5.2, too big 552 5.3.4, a line too long
    550 5.6.0), having read it to its end and kept nothing; `size` is how many bytes it was."""

    def __init__(self, reply: Reply, *, size: int) -> None:
        super().__init__(reply)
        self.size = size


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
        after_crlf = self._after_crlf
        if not self._partial and after_crlf and line == b".\r\n":
            return True
        continuation = self._partial
        self._partial = False
        self._after_crlf = line.endswith(b"\r\n") or (continuation and self._partial_cr and line == b"\n")
        self._count(len(line))
        if self._error is not None:
            return False
        # A lone dot here is a look-alike: the real end was taken above, and any other must have been
        # stuffed to ".." (relay.mail.lines, rule 3, on the bytes as sent, after the previous line's break).
        if not continuation and smuggled_dot(line, after_bare_break=not after_crlf):
            self._fail(SMUGGLING)
            return False
        text = text_of(line, ending=2 if self._after_crlf else 1, at_line_start=not continuation)
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

    def skip(self, size: int) -> None:
        """Count bytes that were read but not kept (past the size limit)."""
        self._count(size)

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


async def read_data(stream: asyncio.StreamReader, *, max_size: int) -> DataContent:
    """Read DATA through its final CRLF.CRLF and return the unstuffed message, or raise `RefusedData`
    (only after reading to the end, so that nothing of the message is ever run as a command).

    The client leaving mid-DATA raises `asyncio.IncompleteReadError` (nothing is handed on, R4). Past
    `max_size` the bytes are counted, not kept.
    """
    # The CRLF that ended the DATA command is the first CRLF of an end that comes at once (an empty
    # message). readuntil(END) never reads past an end, but cannot see one that began in bytes
    # already taken: while those end in a proper prefix of END (`pending` bytes of it), read on with
    # care. After a CR, readuntil(LF "." CRLF) (what every end ends with) finds it too; after CRLF,
    # CRLF "." or CRLF "." CR, one byte at a time (a line rarely starts with a dot: back to blocks).
    # A LimitOverrunError of readuntil(END) leaves 4 bytes unread: no end can straddle its pieces.
    # The pieces go straight into one growing buffer: CPython's BytesIO grows its bytes in place and
    # getvalue() hands that very object over, so the message is never held twice while read.
    kept = io.BytesIO()
    size = 0  # bytes read after the 354
    tail = CRLF  # the last bytes read, the DATA command's CRLF first
    pending = 2
    while True:
        if pending > 1:
            piece = await stream.readexactly(1)
        else:
            try:
                piece = await stream.readuntil(END[pending:])
            except asyncio.LimitOverrunError as exc:
                piece = await stream.read(exc.consumed)
        if size <= max_size:
            kept.write(piece)
        size += len(piece)
        tail = (tail + piece)[-len(END):] if len(piece) < len(END) else piece[-len(END):]
        if tail == END:
            break
        if pending:  # once reading in blocks up to END, nothing is pending again (see above)
            pending = _pending(tail)
    kept.truncate(size - 3)  # without the final "." CRLF; cut already when over the limit
    try:
        return message_from(kept.getvalue(), size=size - 3, max_size=max_size)
    except ReplyError as exc:
        raise RefusedData(exc.reply, size=size - 3) from None


def _pending(tail: bytes) -> int:
    """The length of the longest end of `tail` that begins END (CR, CRLF, CRLF ".", CRLF "." CR), or 0."""
    for length in (4, 3, 2, 1):
        if tail.endswith(END[:length]):
            return length
    return 0


def message_from(data: bytes, *, size: int, max_size: int) -> DataContent:
    """The message from the raw bytes between the 354 and the final "." CRLF, or `ReplyError`.

    `size` is how many there were; `data` holds them all, or at least those up to `max_size` + 1.
    """
    if size > max_size:
        return _line_by_line(data, size=size, max_size=max_size)
    # Span by span (each cut after an LF, relay.mail.lines.spans), so the lines of a large message
    # are never all held at once; a message under a span is checked in one piece, as before.
    for low, high in spans(data, size=_SPAN):
        span = data if high - low == len(data) else data[low:high]
        lines = span.split(CRLF)
        breaks = len(lines) - 1  # CRLFs; any other CR or LF is a bare one (counted, not joined: no copy)
        if span.count(b"\r") != breaks or span.count(b"\n") != breaks:
            return _line_by_line(data, size=size, max_size=max_size)
        # CRLF only: no line can be a look-alike (a lone "." line would have been the end), and every
        # line's first dot is the transparency dot of RFC 5321 4.5.2, so DataReader would do just this.
        if max(map(len, lines)) > MAX_LINE and any(len(line) - line.startswith(b".") > MAX_LINE for line in lines):
            raise ReplyError(LINE_TOO_LONG)
    return DataContent(unstuff_crlf(data), crlf_only=True)


def _line_by_line(data: bytes, *, size: int, max_size: int) -> DataContent:
    reader = DataReader(max_size=max_size)
    fed = 0
    # Each line up to its LF; what follows the last LF is empty, or part of a line past the size limit.
    while (lf := data.find(b"\n", fed)) >= 0:
        line = data[fed : lf + 1]
        if len(line) > STREAM_LIMIT + 1:
            reader.feed_overlong(line[:-1])
            ended = reader.feed(b"\n")
        else:
            ended = reader.feed(line)
        assert not ended, "the end of data was found where read_data found none"
        fed = lf + 1
    reader.skip(size - fed)
    return DataContent(reader.content(), crlf_only=False)
