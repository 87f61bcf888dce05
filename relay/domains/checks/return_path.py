"""The return-path check: `<label>.<domain>` is a CNAME to RELAY_RETURN_PATH_TARGET (or serves its data)."""

from __future__ import annotations

from relay.core.models import CheckStatus
from relay.domains.checks.common import (
    Findings,
    Outcome,
    absence,
    could_not_check,
    negative_ttl_note,
    own_data,
    same_name,
)
from relay.domains.dnscheck import Answer, DnsError, NoData, NxDomain, Question
from relay.domains.records import DnsRecord

DATA_TYPES = ("A", "AAAA", "TXT", "MX")  # other data that may sit at the name
COPIED_TYPES = ("A", "AAAA", "TXT")  # what a flattened CNAME copies from the target (TXT: SPF)


def _doubled(record: DnsRecord) -> str:
    return f"{record.name}.{record.zone}"


def questions(record: DnsRecord) -> list[Question]:
    target = record.value
    return [
        Question(record.name, "CNAME"),
        *(Question(record.name, t) for t in DATA_TYPES),
        *(Question(target, t) for t in COPIED_TYPES),
        Question(_doubled(record), "CNAME"),
    ]


def decide(record: DnsRecord, findings: Findings) -> Outcome:
    cname = findings[Question(record.name, "CNAME")]
    if isinstance(cname, DnsError):
        return Outcome(CheckStatus.ERROR, (), could_not_check(cname))
    if isinstance(cname, Answer):
        return _judge_cname(record, cname.texts[0], findings)
    return _no_cname(record, cname, findings)


def _judge_cname(record: DnsRecord, target: str, findings: Findings) -> Outcome:
    expected = record.value
    beside = own_data(findings, record.name, DATA_TYPES)
    found = (target,) + beside
    if beside:
        kinds = " and ".join(sorted({line.split(" ", 1)[0] for line in beside}))
        # RFC 1034 3.6.2 / RFC 2181 10.1: a CNAME must be the only record at its name.
        return Outcome(CheckStatus.MISMATCH, found,
                       f"{record.name} has a CNAME and also {kinds} data, but a CNAME must stand"
                       f" alone: delete the {kinds} record(s) at `{record.relative_name}`.")
    if same_name(target, expected):
        return Outcome(CheckStatus.OK, found,
                       f"{record.name} is a CNAME to {expected}, as it should be.")
    suffix = "." + record.zone
    if target.lower().endswith(suffix) and same_name(target[: -len(suffix)], expected):
        return Outcome(CheckStatus.MISMATCH, found,
                       f"The CNAME target got {record.zone} appended ({target}): enter the target as"
                       f" `{expected}.` with a final dot, or however your DNS host marks a full name.")
    return Outcome(CheckStatus.MISMATCH, found,
                   f"{record.name} points to {target}, not to {expected}: change the CNAME target"
                   f" to {expected}.")


def _no_cname(record: DnsRecord, cname: NxDomain | NoData, findings: Findings) -> Outcome:
    expected = record.value
    doubled = findings.get(Question(_doubled(record), "CNAME"))
    if isinstance(doubled, Answer):
        return Outcome(CheckStatus.MISSING, (f"{_doubled(record)} CNAME {doubled.texts[0]}",),
                       f"No CNAME at {record.name}, but one is at {_doubled(record)}: your DNS host"
                       f" appended {record.zone} a second time; enter only `{record.relative_name}`"
                       f" as the host name.")
    data = own_data(findings, record.name, DATA_TYPES)
    if isinstance(cname, NxDomain) or not data:
        return Outcome(CheckStatus.MISSING, data,
                       f"No CNAME: {absence(cname, data)}; add a CNAME with host"
                       f" `{record.relative_name}` pointing to {expected}." + negative_ttl_note(cname))
    return _flattened_or_not(record, data, findings)


def _flattened_or_not(record: DnsRecord, data: tuple[str, ...], findings: Findings) -> Outcome:
    expected = record.value
    target = [findings[Question(expected, t)] for t in COPIED_TYPES]
    for finding in target:
        if isinstance(finding, DnsError):
            return Outcome(CheckStatus.ERROR, data,
                           f"{record.name} has no CNAME but other data, and {expected} could not be"
                           f" asked to compare ({finding.reason}): try again later.")
    ours = [set(f.texts) if isinstance(f, Answer) else set() for f in target]
    theirs = [set(_values(findings, record.name, t)) for t in COPIED_TYPES]
    if theirs == ours and any(theirs):
        return Outcome(CheckStatus.OK, data,
                       f"{record.name} has no CNAME but serves exactly the data of {expected} (a"
                       f" flattened CNAME), which works; setting it to \"DNS only\" as a plain CNAME"
                       f" keeps it working when our addresses change.")
    if theirs[0] or theirs[1]:
        return Outcome(CheckStatus.MISMATCH, data,
                       f"{record.name} has addresses that {expected} does not have, so the record is"
                       f" probably proxied (e.g. Cloudflare's orange cloud): set it to \"DNS only\" as"
                       f" a CNAME to {expected}.")
    kinds = " and ".join(sorted({line.split(" ", 1)[0] for line in data}))
    return Outcome(CheckStatus.MISMATCH, data,
                   f"{record.name} has {kinds} data but no CNAME: replace it with a CNAME to"
                   f" {expected}.")


def _values(findings: Findings, name: str, rdtype: str) -> tuple[str, ...]:
    finding = findings.get(Question(name, rdtype))
    if isinstance(finding, Answer) and not finding.aliases:
        return finding.texts
    return ()
