"""Mailboxes in header fields: find the first address in a raw From value, and write a safe `Name <address>`."""

from __future__ import annotations

import base64
import re

from relay.message import MAX_LINE, fold

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


def _encoded_words(name: str) -> list[str]:
    """RFC 2047 `=?utf-8?b?...?=` words of whole characters (RFC 2047 5), each short enough to fold."""
    chunks: list[bytes] = []
    chunk = b""
    for char in name:
        encoded = char.encode("utf-8", errors="replace")
        if len(chunk) + len(encoded) > 42:  # 56 base64 chars: a 68-char word, within 75 (RFC 2047 2)
            chunks.append(chunk)
            chunk = b""
        chunk += encoded
    chunks.append(chunk)
    return [f"=?utf-8?b?{base64.b64encode(c).decode('ascii')}?=" for c in chunks]


def mailbox_field(field: str, name: str, address: str) -> bytes:
    """`Field: "Name" <address>` folded, CRLF-terminated, with no line over 998 octets.

    An ASCII name becomes a quoted-string (RFC 5322 3.2.4) with `\\` and `"` escaped, so nothing in it
    can act as an address or a field separator; a name with non-ASCII or control characters (or one
    too long to fold) becomes RFC 2047 encoded words, which carry no raw CR/LF.
    """
    if any(char in "\r\n\x00" for char in name) or not is_address(address):
        raise ValueError(f"{field}: display name with CR/LF/NUL or invalid address")
    if not name:
        return f"{field}: <{address}>\r\n".encode("ascii")
    if all(" " <= char <= "~" for char in name):
        quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        folded = fold(f"{field}: {quoted} <{address}>").encode("ascii")
        if max(len(line) for line in folded.split(b"\r\n")) <= MAX_LINE:
            return folded
    words = " ".join(_encoded_words(name))
    return fold(f"{field}: {words} <{address}>").encode("ascii")
