"""Mailboxes in header fields: find the first address in a raw From value, and write a safe `Name <address>`."""

from __future__ import annotations

import base64
import re

from relay.mail.message import MAX_LINE

# RFC 5322 3.2.3 atext, 3.4.1 addr-spec. Domains must be host names (RFC 5321 4.1.2) so that nothing
# like an encoded word (`x?=`) passes as a domain.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = rf"{_LABEL}(?:\.{_LABEL})*"
_HOST_NAME = re.compile(_HOST)
_ADDRESS = re.compile(rf"(?:{_DOT_ATOM}|{_QUOTED})@{_HOST}")
MAX_ADDRESS = 254  # RFC 5321 4.5.3.1.3: a path is at most 256 octets including the angle brackets.

# A word that no decoder reads as anything but itself, between single spaces inside a display name;
# short, so that it always fits a line of its own.
_PLAIN_WORD = re.compile(r"(?<=\S) ([A-Za-z0-9]{1,64}) (?=\S)")

_TOKEN = re.compile(r'\s+|\(|"(?:[^"\\]|\\.)*"?|\[[^\]]*\]?|[<>:;,@.]|[^\s()<>:;,@."\[\]]+|.', re.S)


def is_host_name(name: str) -> bool:
    """An ASCII host name of LDH labels (RFC 5321 4.1.2 Domain), no trailing dot."""
    return len(name) <= 253 and _HOST_NAME.fullmatch(name) is not None


def is_address(address: str) -> bool:
    """An ASCII addr-spec with a host-name domain, short enough for SMTP."""
    return len(address) <= MAX_ADDRESS and _ADDRESS.fullmatch(address) is not None


def _skip_comment(text: str, start: int) -> int:
    """Index after the comment opening at `start` (RFC 5322 3.2.2: nested, with quoted-pairs)."""
    depth, i = 0, start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 1
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


def _tokens(text: str) -> list[str]:
    """Lexical tokens of an address list: comments and whitespace dropped, quoted strings kept whole."""
    tokens: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "(":
            i = _skip_comment(text, i)
            continue
        match = _TOKEN.match(text, i)
        assert match is not None  # the alternatives cover every character
        if not match.group().isspace():
            tokens.append(match.group())
        i = match.end()
    return tokens


def _angle_address(tokens: list[str]) -> str:
    """The addr-spec inside `<...>`, dropping an obsolete route (`<@a,@b:user@host>`, RFC 5322 4.4)."""
    if ":" in tokens:
        tokens = tokens[len(tokens) - tokens[::-1].index(":") :]
    return "".join(tokens)


def first_address(value: bytes) -> str | None:
    """The address of the first mailbox in a raw From value, or None when there is no usable one.

    Parsed from the raw bytes, tolerating comments, quoted display names, encoded words (RFC 2047:
    never part of an addr-spec, so never decoded here) and groups (`name: a@b, c@d;`).
    """
    tokens = _tokens(value.decode("utf-8", errors="replace"))
    phrase: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "<":
            close = tokens.index(">", i) if ">" in tokens[i:] else len(tokens)
            address = _angle_address(tokens[i + 1 : close])
            return address if is_address(address) else None
        if token == ":":  # a group's display name ends here; its mailboxes follow
            phrase = []
        elif token in (",", ";"):
            if "@" in phrase:
                break
            phrase = []
        else:
            phrase.append(token)
        i += 1
    if "@" not in phrase:
        return None
    address = "".join(phrase)
    return address if is_address(address) else None


def _encoded_words(name: str, max_octets: int) -> list[str]:
    """RFC 2047 `=?utf-8?b?...?=` words of whole characters (RFC 2047 5), each of at most `max_octets`."""
    chunks: list[bytes] = []
    chunk = b""
    for char in name:
        encoded = char.encode("utf-8", errors="replace")
        if chunk and len(chunk) + len(encoded) > max_octets:
            chunks.append(chunk)
            chunk = b""
        chunk += encoded
    chunks.append(chunk)
    return [f"=?utf-8?b?{base64.b64encode(c).decode('ascii')}?=" for c in chunks]


def _quotable(name: str) -> bool:
    """Printable ASCII in which no decoder can find an encoded word.

    RFC 2047 5(3): an encoded word must not appear within a quoted-string, but lenient decoders
    (Python's email among them) decode one there anyway; so `=?` never goes into a quoted-string.
    """
    return all(" " <= char <= "~" for char in name) and "=?" not in name


def _octets(text: str) -> int:
    """Length in UTF-8 octets, as `_encoded_words` counts them."""
    return len(text.encode("utf-8", errors="replace"))


def _encoded_phrase(name: str, max_octets: int) -> list[str]:
    """The name as one encoded word; split only when longer than `max_octets`, at a plain word.

    Decoders disagree about the white space between two adjacent encoded words (RFC 2047 6.2 drops
    it, Python's email keeps one space), so a long name is cut where a plain word stands between
    single spaces (" via "): `=?..?= via =?..?=` reads the same everywhere. Only a run with no such
    word and too long for a line is cut into adjacent words. A name over 45 octets thus makes a
    word longer than RFC 2047 2's 75 characters: decoders read it whole.
    """
    pieces = _PLAIN_WORD.split(name)  # run, word, run, word, ..., run
    words: list[str] = []
    run = pieces[0]
    for plain, following in zip(pieces[1::2], pieces[2::2]):
        joined = f"{run} {plain} {following}"
        if _octets(joined) <= max_octets:
            run = joined
        else:
            words += [*_encoded_words(run, max_octets), plain]
            run = following
    return words + _encoded_words(run, max_octets)


def _phrase(field: str, name: str) -> list[str]:
    """The display name as words that fit a line after `Field: ` (RFC 5322 2.1.1: 998 octets)."""
    room = MAX_LINE - len(field) - len(": ")
    if _quotable(name):
        # Never folded inside: Python's compat32 parser keeps a folded quoted-string's CRLF.
        quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if len(quoted) <= room:
            return [quoted]
    # base64 turns 3 octets into 4 characters (RFC 2045 6.8).
    return _encoded_phrase(name, max_octets=(room - len("=?utf-8?b??=")) // 4 * 3)


def _lines(field: str, words: list[str]) -> bytes:
    """`Field: w1 w2 ...`, folded between words (RFC 5322 2.2.3) to stay within 78 where possible."""
    lines = [f"{field}: {words[0]}"]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) <= 78:
            lines[-1] += " " + word
        else:
            lines.append(" " + word)
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def mailbox_field(field: str, name: str, address: str) -> bytes:
    """`Field: "Name" <address>` folded, CRLF-terminated, with no line over 998 octets.

    Every decoder must read exactly `name` back. A printable-ASCII name becomes a quoted-string
    (RFC 5322 3.2.4) with `\\` and `"` escaped, so nothing in it can act as an address or a field
    separator; a name with non-ASCII characters or `=?` (or one too long for a line) becomes an
    RFC 2047 encoded word of the whole name, which carries no raw CR/LF and leaves nothing to decode
    twice.
    """
    if any(char in "\r\n\x00" for char in name) or not is_address(address):
        raise ValueError(f"{field}: display name with CR/LF/NUL or invalid address")
    if not name:
        return f"{field}: <{address}>\r\n".encode("ascii")
    return _lines(field, [*_phrase(field, name), f"<{address}>"])
