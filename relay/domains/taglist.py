"""The tag=value lists of DKIM key records and DMARC records (RFC 6376 3.2, RFC 7489 6.4)."""

from __future__ import annotations

import re

_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_FWS = " \t\r\n"  # RFC 6376 3.2: whitespace around names, `=` and values is not part of them


class TagListError(ValueError):
    """The text is not a tag list; the message names the offending part."""


def parse_tag_list(text: str) -> list[tuple[str, str]]:
    """Ordered (name, value) pairs of `text`.

    Harmless by RFC 6376 3.2: whitespace around names and values, a final `;`, the order of tags.
    Fatal: a part without `=`, an empty part (`;;`), a bad tag name, and a tag given twice
    ("the entire tag-list is invalid"). Tag names are case-sensitive.
    """
    parts = text.split(";")
    if parts[-1].strip(_FWS) == "":
        parts.pop()
    pairs: list[tuple[str, str]] = []
    for part in parts:
        name, equals, value = part.partition("=")
        name = name.strip(_FWS)
        if not equals:
            if not part.strip(_FWS):
                raise TagListError("an empty part between two ';'")
            raise TagListError(f"{_short(part)!r} is not tag=value")
        if not _TAG_NAME.fullmatch(name):
            raise TagListError(f"{_short(name)!r} is not a tag name")
        if any(name == seen for seen, _ in pairs):
            raise TagListError(f"tag {name}= appears twice")
        pairs.append((name, value.strip(_FWS)))
    return pairs


def _short(text: str, limit: int = 30) -> str:
    text = text.strip(_FWS)
    return text if len(text) <= limit else text[:limit] + "..."
