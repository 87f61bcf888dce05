"""DKIM as a receiver verifies it (RFC 6376 6): every DKIM-Signature, by dkimpy, keys fetched first.

dkimpy asks DNS synchronously through `dnsfunc`, so the key records are fetched asynchronously first
(their names come from each signature's s= and d=) and dkimpy gets a dnsfunc that answers from them.
The key record is read here before dkimpy sees it, so that "no key", "revoked" and "unusable key"
each get their own words: dkimpy would only return False.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import serialization

from relay.domains.receiver.lookup import DnsAnswer, DnsLookup
from relay.domains.receiver.model import Check, Result
from relay.domains.taglist import TagListError, parse_tag_list

_LOG = logging.getLogger(__name__)  # dkimpy's debug output goes here, never to the user
_ORDER = (Result.PASS, Result.TEMPERROR, Result.FAIL, Result.PERMERROR)  # what one failing set shows


@dataclass(frozen=True)
class Signature:
    """One DKIM-Signature as verified: its result, why, and its d= and s=."""

    result: Result
    reason: str
    domain: str | None
    selector: str | None

    @property
    def key_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"  # RFC 6376 3.6.2.1


@dataclass(frozen=True)
class DkimOutcome:
    check: Check
    passing: tuple[str, ...]  # d= of every signature that verifies: DMARC's DKIM identifiers


async def check_dkim(message: bytes, values: list[str], dns: DnsLookup) -> DkimOutcome:
    """Verify every signature (`values`: the DKIM-Signature field values, in header order)."""
    if not values:
        return DkimOutcome(Check(Result.NONE, "The message carries no DKIM-Signature, so receivers see"
                                              " DKIM none and DMARC rests on SPF alone: sign it.", None), ())
    heads = [_head(value) for value in values]
    names = list(dict.fromkeys(head.key_name for head in heads if head.result is Result.PASS))
    answers = dict(zip(names, await asyncio.gather(*(dns.txt(name) for name in names)), strict=True))
    judged = await asyncio.to_thread(_judge_all, message, heads, answers)
    return _summary(judged)


def _head(value: str) -> Signature:
    """d= and s= of one signature; `result` PASS means only "readable" here."""
    try:
        tags = dict(parse_tag_list(value.replace("\r", "").replace("\n", "")))
    except TagListError as exc:
        return Signature(Result.PERMERROR, f"A DKIM-Signature cannot be read ({exc}), so receivers"
                                           f" ignore it: the signer must write a valid tag list.", None, None)
    domain, selector = tags.get("d", "").lower().rstrip("."), tags.get("s", "").lower()
    if not domain or not selector:
        return Signature(Result.PERMERROR, "A DKIM-Signature has no d= or s= (RFC 6376 3.5), so"
                                           " receivers ignore it.", domain or None, selector or None)
    return Signature(Result.PASS, "", domain, selector)


def _judge_all(message: bytes, heads: list[Signature], answers: dict[str, DnsAnswer]) -> list[Signature]:
    """Each signature's verdict (dkimpy's RSA is pure Python: this runs in a worker thread)."""
    return [_judge(message, index, head, answers[head.key_name]) if head.result is Result.PASS else head
            for index, head in enumerate(heads)]


def _judge(message: bytes, index: int, head: Signature, answer: DnsAnswer) -> Signature:
    """One signature against the key records fetched for it (RFC 6376 6.1.2, 6.1.3)."""
    ids = f"d={head.domain}, s={head.selector}"
    if answer.error is not None:
        return _as(head, Result.TEMPERROR, f"Could not check DKIM {ids}: {answer.name} got no answer"
                                           f" from DNS ({answer.error}); receivers retry later.")
    keys = [text for text in answer.records if re.search(r"(?:^|;)\s*p\s*=", text)]
    if not keys:
        found = "NXDOMAIN: the name does not exist" if answer.nxdomain else "the name has no key record"
        return _as(head, Result.FAIL, f"The signature with {ids} cannot verify: key not found at"
                                      f" {head.key_name} ({found}); publish the DKIM key record there.")
    verdicts = [_key_problem(head, text) or _verify(message, index, head, text) for text in keys]
    # RFC 6376 6.1.2: with several key records a verifier may try each; one that verifies suffices.
    return min(verdicts, key=lambda verdict: _ORDER.index(verdict.result))


def _key_problem(head: Signature, text: str) -> Signature | None:
    """RFC 6376 3.6.1: a key record receivers cannot use, in words; None when dkimpy may try it."""
    where = f"The key record at {head.key_name}"
    try:
        tags = dict(parse_tag_list(text))
    except TagListError as exc:
        return _as(head, Result.PERMERROR, f"{where} cannot be read ({exc}): correct it.")
    if tags.get("v", "DKIM1") != "DKIM1" or tags.get("k", "rsa") not in ("rsa", "ed25519"):
        return _as(head, Result.PERMERROR, f"{where} is not a DKIM1 key of a known type (v=, k=):"
                                           f" correct it.")
    key = re.sub(r"\s", "", tags["p"])
    if not key:
        return _as(head, Result.FAIL, f"{where} is revoked (p= is empty), so the signature with"
                                      f" d={head.domain} cannot verify: publish the current key.")
    if tags.get("k", "rsa") == "rsa":
        try:
            serialization.load_der_public_key(base64.b64decode(key, validate=True))
        except (binascii.Error, ValueError):
            return _as(head, Result.PERMERROR, f"{where} holds no valid key (p= is cut off or"
                                               f" mistyped): publish the complete key again.")
    return None


def _verify(message: bytes, index: int, head: Signature, record: str) -> Signature:
    """dkimpy verifies signature `index` against `record`, which is all its dnsfunc knows."""
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        asked = name.decode("ascii", "replace").rstrip(".").lower()
        return record.encode("utf-8") if asked == head.key_name else None

    ids = f"d={head.domain}, s={head.selector}"
    try:
        valid = dkim.DKIM(message, logger=_LOG).verify(idx=index, dnsfunc=dnsfunc)
    except dkim.ValidationError as exc:
        if "body hash mismatch" in str(exc):
            return _as(head, Result.FAIL, f"The signature with {ids} does not verify: body hash mismatch,"
                                          f" so the body changed after signing (a footer, a re-encoding):"
                                          f" nothing may alter the message after the relay signs it.")
        return _as(head, Result.FAIL, f"The signature with {ids} is not valid ({exc}).")
    except dkim.KeyFormatError as exc:
        return _as(head, Result.FAIL, f"The key at {head.key_name} is refused ({exc}): publish an"
                                      f" RSA key of 2048 bits.")
    except dkim.DKIMException as exc:
        return _as(head, Result.PERMERROR, f"The signature with {ids} cannot be verified ({exc}).")
    if valid:
        return _as(head, Result.PASS, f"The signature with {ids} verifies with the key at {head.key_name}.")
    return _as(head, Result.FAIL, f"The signature with {ids} does not match the key at {head.key_name}"
                                  f" (key mismatch, or a signed header changed after signing): publish"
                                  f" the key the relay signs with (relay-admin records).")


def _as(head: Signature, result: Result, reason: str) -> Signature:
    """The verdict for `head`'s signature."""
    return Signature(result, reason, head.domain, head.selector)


def _summary(judged: list[Signature]) -> DkimOutcome:
    """Pass when one signature verifies (RFC 6376 6.1); otherwise the most telling failure."""
    passing = tuple(dict.fromkeys(s.domain for s in judged if s.result is Result.PASS and s.domain))
    shown = min(judged, key=lambda signature: _ORDER.index(signature.result))
    more = f" ({len(judged)} signatures in all.)" if len(judged) > 1 else ""
    return DkimOutcome(Check(shown.result, shown.reason + more, shown.domain), passing)
