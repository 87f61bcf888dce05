"""The message as bytes: its header block parsed once into fields, the body left where it lies.

`parse_message` splits the header block of a normalised message (relay.mail.lines) once; the pipeline
hands the resulting `Message` to policy (the tenant header), rewriting (a new field list, the same
body) and signing (the field list and the body in place). Nothing downstream splits the bytes again,
and the body is never copied on the way: a 25 MB attachment stays the one DATA buffer.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from relay.core.replies import BAD_HEADER, ReplyError
from relay.mail.lines import CRLF, MAX_LINE, CrlfData, crlf_only, dot_stuffed, spans

# The pipeline's first step, under the name it has always had here (relay.mail.lines, rules 3 to 5).
from relay.mail.lines import normalise as normalise_data

__all__ = ["CRLF", "MAX_LINE", "Field", "Message", "field_name", "field_value", "normalise_data",
           "parse_header", "parse_message", "split_header_body"]

# RFC 5322 2.2 / 3.6.8: field name = printable US-ASCII except ":"; WSP before the colon is the
# obsolete syntax of RFC 5322 4.5 (`From :`) and still names the field.
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
_SPAN = 1024 * 1024  # the body is read in spans of about this size where a copy is needed


class Field(NamedTuple):
    """One header field: its name as a reader matches it, and its bytes exactly as they will be sent.

    A (name, raw) pair: a tuple is made in a fraction of a frozen dataclass's time, and a message has dozens.
    """

    name: bytes  # lower-cased, WSP before the colon dropped
    raw: bytes  # name, colon, value and continuation lines, each line ending in CRLF

    @property
    def value(self) -> bytes:
        return field_value(self.raw)


@dataclass(frozen=True)
class Message:
    """A CRLF message: the header fields in order, and the body as `data[body_start:]`, never copied.

    `data` is what `relay.mail.lines.normalise` returned (CRLF only, no NUL, no look-alike): the signer
    hashes the body as it lies. Rewriting makes a new `Message` with other fields over the same `data`.
    On the wire: the fields, the empty line, the body (`chunks`).
    """

    fields: tuple[Field, ...]
    data: CrlfData
    body_start: int

    @property
    def body(self) -> memoryview:
        return memoryview(self.data)[self.body_start :]

    def values(self, name: bytes) -> list[bytes]:
        """The raw values (unfolded, RFC 5322 2.2.3) of every field called `name` (lower case), in order."""
        return [field.value for field in self.fields if field.name == name]

    def with_fields(self, fields: Iterable[Field]) -> Message:
        return Message(tuple(fields), self.data, self.body_start)

    def head(self) -> bytes:
        """The header block with the empty line that ends it (RFC 5322 2.1)."""
        return b"".join(field.raw for field in self.fields) + CRLF

    def chunks(self) -> tuple[bytes, memoryview]:
        """The message as sent: the header block, then the body in place (no joined copy)."""
        return self.head(), self.body

    @property
    def size(self) -> int:
        """len(tobytes()), without making it."""
        return sum(len(field.raw) for field in self.fields) + len(CRLF) + len(self.data) - self.body_start

    def tobytes(self) -> bytes:
        """The message as one bytes object: a copy of the body, for callers that need one."""
        return b"".join(self.chunks())

    def isascii(self) -> bool:
        """Whether the message as sent is 7-bit (RFC 6152: else upstream must offer 8BITMIME)."""
        return self.head().isascii() and all(
            self.data[low:high].isascii() for low, high in spans(self.data, size=_SPAN, start=self.body_start))

    def stuffed_chunks(self, *, size: int = 256 * 1024) -> Iterator[bytes | memoryview]:
        """What follows DATA's 354 on the wire: the message dot-stuffed (RFC 5321 4.5.2), then "." CRLF
        (4.1.1.4), in chunks of about `size`, so that a writer can let the wire drain between them.

        A body span without a line starting with "." is the body itself (a view), not a copy.
        """
        yield dot_stuffed(self.head())
        data, view = self.data, memoryview(self.data)
        for low, high in spans(data, size=size, start=self.body_start):
            # Spans start at a line start (after the head's empty line, or an LF).
            if data.startswith(b".", low) or data.find(b"\r\n.", low, high) >= 0:
                yield dot_stuffed(view[low:high])
            else:
                yield view[low:high]
        yield b".\r\n"

    def sha256(self) -> str:
        """Hex SHA-256 of the bytes `tobytes` would give, without making them."""
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.hexdigest()


def parse_message(data: CrlfData) -> Message:
    """`data` (normalised, relay.mail.lines) as a `Message`: the one split of its header block."""
    fields, body_start = parse_header(data)
    return Message(fields, data, body_start)


def parse_header(message: bytes) -> tuple[tuple[Field, ...], int]:
    """The raw header fields of a message (each with its continuation lines and CRLFs), and where its body starts.

    The header ends at the first empty line (RFC 5322 2.1); without one, everything is header and the
    body is empty. Any line that is neither `name:` nor a continuation (starting with SP or HTAB) is
    refused with 550 5.6.0, as is a continuation on the first line, a bare CR or LF, or a line over 998
    octets: a receiver's parser would otherwise decide what the line means, and each decides differently.
    Only the header block is looked at: the body is not touched.
    """
    if message.startswith(CRLF):
        return (), 2
    end = message.find(b"\r\n\r\n")
    header_end, body_start = (len(message), len(message)) if end < 0 else (end + 2, end + 4)
    header = message[:header_end]
    if not crlf_only(header):
        # Not CRLF-normalised: a bare LF would become a new header line downstream of our checks.
        raise ReplyError(BAD_HEADER)
    lines = header.split(CRLF)
    if header.endswith(CRLF):
        lines.pop()
    fields: list[Field] = []
    name = b""
    parts: list[bytes] = []  # the lines of the field being read
    for line in lines:
        if len(line) > MAX_LINE:
            raise ReplyError(BAD_HEADER)
        if line[:1] in (b" ", b"\t"):
            if not parts:
                raise ReplyError(BAD_HEADER)
            parts.append(line)
            continue
        match = _FIELD_NAME.match(line)
        if match is None:
            raise ReplyError(BAD_HEADER)
        if parts:
            fields.append(Field(name, CRLF.join(parts) + CRLF))
        name, parts = line[: match.end() - 1].rstrip(b" \t").lower(), [line]
    if parts:
        fields.append(Field(name, CRLF.join(parts) + CRLF))
    return tuple(fields), body_start


def split_header_body(message: bytes) -> tuple[list[bytes], bytes]:
    """`parse_header` as raw fields and a copy of the body (for readers of a few messages: send-test)."""
    fields, body_start = parse_header(message)
    return [field.raw for field in fields], message[body_start:]


def field_name(field: bytes) -> bytes:
    """The lower-cased name of a raw field (WSP before the colon dropped)."""
    return field[: field.index(b":")].rstrip(b" \t").lower()


def field_value(field: bytes) -> bytes:
    """The raw value of a field: after the colon, unfolded (RFC 5322 2.2.3), without the final CRLF."""
    return field[field.index(b":") + 1 :].replace(CRLF, b"")
