"""A published DKIM key record read by meaning (RFC 6376 3.6.1) and judged against the key we issued."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from enum import StrEnum

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.core.dkimkeys import MIN_KEY_BITS, public_key_b64
from relay.domains.taglist import TagListError, parse_tag_list

MAX_STRING = 255  # one DNS character-string (RFC 1035 3.3); longer TXT data needs several


class Verdict(StrEnum):
    MATCH = "match"  # our key
    NOT_DKIM = "not-dkim"  # some other TXT record (SPF, a verification token, ...)
    BARE_KEY = "bare-key"  # only the base64 key was pasted, without v=/k=/p=
    QUOTED = "quoted"  # literal quotes typed into a form that adds its own
    SYNTAX = "syntax"  # not a tag list
    VERSION = "version"  # v= not first, or not DKIM1
    KEY_TYPE = "key-type"  # k= other than rsa
    REVOKED = "revoked"  # p= empty
    DAMAGED = "damaged"  # p= is not a complete key: cut off, a chunk lost, mistyped
    WEAK = "weak"  # an RSA key below 2048 bits (RFC 8301)
    OTHER_KEY = "other-key"
    HASH = "hash"  # h= without sha256, the hash we sign with
    SERVICE = "service"  # s= without email


# Verdicts of records that are meant as DKIM key records (and so count for "several records").
NOT_MEANT_AS_DKIM = frozenset({Verdict.NOT_DKIM, Verdict.BARE_KEY})


@dataclass(frozen=True)
class Assessment:
    verdict: Verdict
    detail: str = ""  # what exactly: "1024 bits", "cut off after 255 of 392 characters", ...
    testing: bool = False  # t=y: the domain is testing DKIM (RFC 6376 3.6.1)

    @property
    def meant_as_dkim(self) -> bool:
        return self.verdict not in NOT_MEANT_AS_DKIM


def our_key(record_value: str) -> rsa.RSAPublicKey:
    """The public key in the record value we issued (`relay.domains.records.dkim_value`)."""
    tags = dict(parse_tag_list(record_value))
    key = serialization.load_der_public_key(base64.b64decode(tags["p"]))
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("our DKIM record does not hold an RSA key")
    return key


def assess(text: str, strings: tuple[str, ...], ours: rsa.RSAPublicKey) -> Assessment:
    """Judge one TXT record (its strings joined, RFC 6376 3.6.2.2) against our key."""
    stripped = text.strip()
    if stripped.startswith('"') or stripped.endswith('"'):
        inner = assess(stripped.strip('"'), (), ours)
        ours_inside = inner.verdict is Verdict.MATCH
        return Assessment(Verdict.QUOTED, "the key inside is ours" if ours_inside else "")
    if not _looks_like_dkim(stripped):
        if _bare_key(stripped):
            return Assessment(Verdict.BARE_KEY)
        return Assessment(Verdict.NOT_DKIM)
    try:
        pairs = parse_tag_list(stripped)
    except TagListError as exc:
        return Assessment(Verdict.SYNTAX, str(exc))
    return _judge_tags(pairs, strings, ours)


def _judge_tags(
    pairs: list[tuple[str, str]], strings: tuple[str, ...], ours: rsa.RSAPublicKey
) -> Assessment:
    tags = dict(pairs)
    # RFC 6376 3.6.1: v= is optional, but if present it is first and exactly DKIM1.
    if "v" in tags and pairs[0][0] != "v":
        return Assessment(Verdict.VERSION, "v= is not the first tag")
    if tags.get("v", "DKIM1") != "DKIM1":
        return Assessment(Verdict.VERSION, f"v={tags['v']} is not DKIM1")
    key_type = tags.get("k", "rsa")  # k= defaults to rsa
    if key_type != "rsa":
        return Assessment(Verdict.KEY_TYPE, f"k={key_type}")
    if "p" not in tags:
        return Assessment(Verdict.SYNTAX, "there is no p= tag")
    published = re.sub(r"\s", "", tags["p"])  # FWS inside the base64 is allowed (3.6.1)
    if not published:
        return Assessment(Verdict.REVOKED)
    key = _load(published)
    if key is None:
        return Assessment(Verdict.DAMAGED, _damage(published, strings, ours))
    if not isinstance(key, rsa.RSAPublicKey):
        return Assessment(Verdict.OTHER_KEY, "not an RSA key")
    if key.public_numbers() != ours.public_numbers():
        if key.key_size < MIN_KEY_BITS:
            return Assessment(Verdict.WEAK, f"{key.key_size} bits")
        return Assessment(Verdict.OTHER_KEY)
    return _judge_options(tags)


def _judge_options(tags: dict[str, str]) -> Assessment:
    """Our key is there; tags that would still make verifiers ignore it (RFC 6376 3.6.1)."""
    hashes = _colon_list(tags.get("h", "sha256"))
    if "sha256" not in hashes:
        return Assessment(Verdict.HASH, f"h={tags['h']}")
    services = _colon_list(tags.get("s", "*"))
    if "*" not in services and "email" not in services:
        return Assessment(Verdict.SERVICE, f"s={tags['s']}")
    return Assessment(Verdict.MATCH, testing="y" in _colon_list(tags.get("t", "")))


def _colon_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(":")]


def _looks_like_dkim(text: str) -> bool:
    return bool(re.match(r"v\s*=\s*DKIM1\b", text) or re.search(r"(?:^|;)\s*p\s*=", text))


def _bare_key(text: str) -> bool:
    compact = re.sub(r"\s", "", text)
    return len(compact) > 100 and _load(compact) is not None


def _load(b64: str) -> object | None:
    try:
        return serialization.load_der_public_key(base64.b64decode(b64, validate=True))
    except (binascii.Error, ValueError):
        return None


def _damage(published: str, strings: tuple[str, ...], ours: rsa.RSAPublicKey) -> str:
    """Say how the key is damaged: cut off (where), or otherwise not a key."""
    expected = public_key_b64(ours)
    at_limit = any(len(part) == MAX_STRING for part in strings)
    if expected.startswith(published):
        where = f" at a {MAX_STRING}-character string" if at_limit else ""
        return f"cut off{where}: {len(published)} of the {len(expected)} characters of our key"
    if at_limit:
        return f"a string of exactly {MAX_STRING} characters, so probably cut off"
    return "not a valid key: part of it may be lost or mistyped"
