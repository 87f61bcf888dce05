"""What every check shares: building a CheckResult, rendering findings, phrasing absence and errors.

`found` convention: the records of the checked type at the checked name as bare values (TXT joined);
a CNAME in the way as `CNAME target`; other types at that name as `TYPE value`; records found at
another name (near misses) as `name TYPE value`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import dns.exception
import dns.name

from relay.core.models import CheckResult, CheckStatus
from relay.domains.dnscheck import (
    Answer,
    DnsError,
    Failure,
    Finding,
    NoData,
    NxDomain,
    Question,
)
from relay.domains.records import DnsRecord

Findings = Mapping[Question, Finding]


@dataclass(frozen=True)
class Outcome:
    """A check's verdict before it is stamped with the record and the time."""

    status: CheckStatus
    found: tuple[str, ...]
    diagnosis: str
    expected: str | None = None  # None: the record's value


def stamp(record: DnsRecord, outcome: Outcome, checked_at: datetime) -> CheckResult:
    return CheckResult(
        purpose=record.purpose,
        type=record.type,
        name=record.name,
        status=outcome.status,
        expected=record.value if outcome.expected is None else outcome.expected,
        found=outcome.found,
        diagnosis=outcome.diagnosis,
        checked_at=checked_at,
        required=record.required,
    )


def same_name(a: str, b: str) -> bool:
    """Names compared as DNS does: case and a trailing dot do not matter (RFC 4343)."""
    try:
        return bool(dns.name.from_text(a) == dns.name.from_text(b))
    except dns.exception.DNSException:
        return a.rstrip(".").lower() == b.rstrip(".").lower()


def found_at(finding: Finding) -> tuple[str, ...]:
    """What DNS returned at the checked name, aliases first."""
    aliases = tuple(f"CNAME {target}" for target in getattr(finding, "aliases", ()))
    if isinstance(finding, Answer):
        return aliases + finding.texts
    return aliases


def typed(finding: Finding) -> tuple[str, ...]:
    """Records of another type at the name itself (not reached through a CNAME): `TYPE value`."""
    if isinstance(finding, Answer) and not finding.aliases:
        return tuple(f"{finding.rdtype} {text}" for text in finding.texts)
    return ()


def own_data(findings: Findings, name: str, rdtypes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(line for t in rdtypes for line in typed(findings.get(Question(name, t), _NONE)))


_NONE: Finding = DnsError("", "", "not asked")


def absence(finding: NxDomain | NoData, others: tuple[str, ...] = ()) -> str:
    """What is (not) at the name, for a missing record: nothing, another type, an alias."""
    if finding.aliases:
        target = finding.aliases[-1]
        if isinstance(finding, NxDomain):
            return f"{finding.name} is an alias (CNAME) of {target}, which does not exist"
        return f"{finding.name} is an alias (CNAME) of {target}, which has no {finding.rdtype} record"
    if isinstance(finding, NxDomain):
        return f"nothing exists at {finding.name} (NXDOMAIN)"
    if others:
        kinds = sorted({line.split(" ", 1)[0] for line in others})
        return f"{finding.name} has {' and '.join(kinds)} data but no {finding.rdtype} record"
    return f"{finding.name} exists but has no records of its own, only names below it"


def negative_ttl_note(finding: Finding) -> str:
    """Checked too early: how long a resolver that asked before may still hide a new record."""
    ttl = getattr(finding, "negative_ttl", None)
    if not ttl:
        return ""
    return (f" Once it is published, receivers that looked before may keep seeing nothing for up to"
            f" {duration(ttl)} (the zone's negative TTL).")


def could_not_check(finding: DnsError) -> str:
    """`error`: no answer, so nothing is known about the record ("could not check", never missing)."""
    fix = {
        Failure.SERVFAIL: "this usually means the zone failed to load on that server (for example"
                          " because of a CNAME beside other records at one name); ask your DNS"
                          " provider to check the zone, then validate again",
        Failure.REFUSED: "that server does not serve this domain; check that the domain is delegated"
                         " to the DNS provider holding the records, then validate again",
    }.get(finding.kind, "validate again later")
    return (f"Could not check {finding.name} ({finding.reason}), so nothing is known about the"
            f" record: {fix}.")


def duration(seconds: float, *, exact: bool = False) -> str:
    """`7 days`, `36 hours`, `90 minutes`, `1 second`: a setting or TTL as people say it.

    A whole number of the largest unit; unless `exact`, also a rounded count once it is two or more
    of that unit (`exact` keeps every second: 7300 s is `7300 seconds`, not `2 hours`).
    """
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0 or not exact and seconds >= 2 * size:
            count = round(seconds / size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    count = round(seconds)
    return f"{count} second{'s' if count != 1 else ''}"
