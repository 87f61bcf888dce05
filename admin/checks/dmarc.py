"""The DMARC check (never required): an existing record is read and judged, a missing one gets our advice.

Decision on `p=none`: `ok` with a note. It is the policy we advise ourselves (monitoring only), and
a warning would flag our own advice; the note says what it does and does not do.
A domain without a record of its own whose organisational domain has one is `ok` too: that
record applies (RFC 7489 6.6.3), and publishing ours would replace it with `p=none`.
"""

from __future__ import annotations

import re

from admin.checks.common import Findings, Outcome, could_not_check, found_at
from admin.dnscheck import Answer, DnsError, Question
from admin.records import DnsRecord
from admin.taglist import TagListError, parse_tag_list
from relay.models import CheckStatus, Sender

POLICIES = ("none", "quarantine", "reject")
EXISTING = "one valid v=DMARC1 record (an existing record is kept, never replaced)"


def is_dmarc(text: str) -> bool:
    """RFC 7489 6.6.3: only TXT records starting with `v=DMARC1` are DMARC records."""
    return re.match(r"v\s*=\s*DMARC1\s*(;|$)", text) is not None


def _ancestors(domain: str) -> list[str]:
    """Parent domains with at least two labels: where an organisational record may live."""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(1, len(labels) - 1)]


def questions(record: DnsRecord) -> list[Question]:
    domain = record.zone
    return [
        Question(record.name, "TXT"),
        Question(domain, "TXT"),  # a DMARC record put at the apex by mistake
        *(Question(f"_dmarc.{parent}", "TXT") for parent in _ancestors(domain)),
    ]


def decide(record: DnsRecord, sender: Sender, findings: Findings) -> Outcome:
    at_name = findings[Question(record.name, "TXT")]
    if isinstance(at_name, DnsError):
        return Outcome(CheckStatus.ERROR, (), could_not_check(at_name), expected=EXISTING)
    texts = at_name.texts if isinstance(at_name, Answer) else ()
    found = found_at(at_name)
    records = [text for text in texts if is_dmarc(text)]
    if len(records) > 1:
        return Outcome(CheckStatus.WARNING, found,
                       "Two DMARC records mean no DMARC at all (RFC 7489 6.6.3): keep one and delete"
                       " the other.", expected=EXISTING)
    if records:
        return _judge(records[0], sender, found)
    return _none_here(record, texts, found, findings)


def _judge(text: str, sender: Sender, found: tuple[str, ...]) -> Outcome:
    def warn(diagnosis: str) -> Outcome:
        return Outcome(CheckStatus.WARNING, found, diagnosis, expected=EXISTING)

    try:
        tags = dict(parse_tag_list(text))
    except TagListError as exc:
        return warn(f"The DMARC record cannot be read ({exc}), so receivers ignore it: correct it.")
    policy = tags.get("p", "").lower()
    if policy not in POLICIES:
        return warn("The DMARC record has no valid p= tag, so receivers treat it as p=none at best"
                    " (RFC 7489 6.6.3): add p=none, p=quarantine or p=reject.")
    if tags.get("aspf", "r").lower() == "s":
        # RFC 7489 3.1.2: strict means the envelope domain must equal the From domain exactly.
        return warn(f"aspf=s asks for strict SPF alignment, which our return-path"
                    f" {sender.return_path_host} can never meet, so DMARC rests on DKIM alone"
                    f" (d={sender.domain}); that passes once DKIM is published, or set aspf=r.")
    strict_dkim = (f" adkim=s is fine: we sign with d={sender.domain} itself."
                   if tags.get("adkim", "r").lower() == "s" else "")
    if policy == "none":
        return Outcome(CheckStatus.OK, found,
                       "DMARC record found with p=none: receivers report but take no action on"
                       " failures; nothing to change (consider p=quarantine once reports look"
                       " clean)." + strict_dkim, expected=EXISTING)
    return Outcome(CheckStatus.OK, found, f"DMARC record found with p={policy}; our DKIM signature"
                   f" aligns with it." + strict_dkim, expected=EXISTING)


def _none_here(
    record: DnsRecord, texts: tuple[str, ...], found: tuple[str, ...], findings: Findings
) -> Outcome:
    domain = record.zone
    apex = findings.get(Question(domain, "TXT"))
    if isinstance(apex, Answer):
        misplaced = [t for t in apex.texts if is_dmarc(t)]
        if misplaced:
            return Outcome(CheckStatus.WARNING, found + tuple(f"{domain} TXT {t}" for t in misplaced),
                           f"A DMARC record is at {domain} itself, where receivers never look: move"
                           f" it to {record.name} (host `_dmarc`).", expected=EXISTING)
    if texts:
        return Outcome(CheckStatus.WARNING, found,
                       f"{record.name} has TXT data that does not start with v=DMARC1, so receivers"
                       f" ignore it: make it start with v=DMARC1 (without quotes), or publish the"
                       f" advised record.")
    for parent in _ancestors(domain):
        inherited = findings.get(Question(f"_dmarc.{parent}", "TXT"))
        if isinstance(inherited, Answer) and any(is_dmarc(t) for t in inherited.texts):
            return Outcome(CheckStatus.OK, tuple(f"_dmarc.{parent} TXT {t}" for t in inherited.texts),
                           f"{domain} has no DMARC record of its own, but the one of {parent} applies"
                           f" (RFC 7489 6.6.3); nothing to add, ours would replace it with p=none.",
                           expected=EXISTING)
    return Outcome(CheckStatus.WARNING, found,
                   f"No DMARC record at {record.name}: we advise publishing the expected record"
                   f" (monitoring only); this is advice, not a requirement for sending.")
