"""A receiver's words for one message: a Check per mechanism (RFC 8601 2.7 result words) and the Verdict."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Result(StrEnum):
    """RFC 8601 2.7.1-2.7.3: the words an Authentication-Results field uses (a str, so JSON-ready)."""

    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"  # SPF only (RFC 7208 2.6.5)
    NEUTRAL = "neutral"
    NONE = "none"
    TEMPERROR = "temperror"  # DNS could not answer: "could not check", never a finding
    PERMERROR = "permerror"  # a record or message a receiver cannot use as published


@dataclass(frozen=True)
class Check:
    """One mechanism's result, why (one sentence naming domain, selector or record, and the fix)."""

    result: Result
    reason: str
    domain: str | None  # SPF: the MAIL FROM domain; DKIM: d=; DMARC: the From domain

    def to_json(self) -> dict[str, object]:
        """`{"result", "reason", "domain"}` with plain strings."""
        return {"result": str(self.result), "reason": self.reason, "domain": self.domain}


@dataclass(frozen=True)
class Verdict:
    """What SPF, DKIM and DMARC would say about one relayed message at a receiving server."""

    spf: Check
    dkim: Check
    dmarc: Check

    def to_json(self) -> dict[str, object]:
        """`{"spf": {...}, "dkim": {...}, "dmarc": {...}}`."""
        return {"spf": self.spf.to_json(), "dkim": self.dkim.to_json(), "dmarc": self.dmarc.to_json()}
