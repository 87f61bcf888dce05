"""The DMARC check (never required): an existing record is read and judged, a missing one gets our advice.

Decision on `p=none`: `ok` with a note. It is the policy we advise ourselves (monitoring only), and
a warning would flag our own advice; the note says what it does and does not do.
A domain without a record of its own whose organisational domain has one is `ok` too: that
record applies (RFC 7489 6.6.3), and publishing ours would replace it with `p=none`.

A sender address below the domain (facturen@mail.beta.test, domain beta.test) is judged as
receivers judge it: against the From domain, its policy found by the tree walk from
`_dmarc.<From domain>` up (`relay.domains.receiver.dmarc`, RFC 7489 6.6.3 / RFC 9989 4.10). We sign
d=<domain>, so a policy with adkim=s there means DKIM never aligns: `mismatch`, with the fix. It
stays optional (not required): the SPEC calls DMARC advice, and the relay's own records are in
order; a strict policy is the customer's choice, so we say plainly what it breaks instead of
blocking verification, and the status word is not `ok`.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING

from relay.core.models import CheckStatus, Sender
from relay.domains.checks.common import Findings, Outcome, could_not_check, found_at
from relay.domains.dnscheck import Answer, DnsError, Question
from relay.domains.records import DnsRecord
from relay.domains.taglist import TagListError, parse_tag_list

if TYPE_CHECKING:
    from relay.domains.receiver.dmarc import Published

POLICIES = ("none", "quarantine", "reject")
EXISTING = "one valid v=DMARC1 record (an existing record is kept, never replaced)"


def is_dmarc(text: str) -> bool:
    """RFC 7489 6.6.3: only TXT records starting with `v=DMARC1` are DMARC records."""
    return re.match(r"v\s*=\s*DMARC1\s*(;|$)", text) is not None


def _ancestors(domain: str) -> list[str]:
    """Parent domains with at least two labels: where an organisational record may live."""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(1, len(labels) - 1)]


def from_domain(sender: Sender) -> str:
    """The domain of the From address: what DMARC judges alignment against (RFC 7489 3.1)."""
    return sender.email.rpartition("@")[2]


def _walk(domain: str) -> list[str]:
    """The receivers' tree walk (RFC 9989 4.10) without the top-level domain, which we never ask."""
    from relay.domains.receiver.dmarc import (
        walk_names,  # here: relay.domains.receiver.dmarc imports this module
    )

    return [name for name in walk_names(domain) if "." in name]


def _from_walks(sender: Sender) -> list[str]:
    """The names whose `_dmarc` records decide policy and alignment for a From domain below ours."""
    if from_domain(sender) == sender.domain:
        return []
    return list(dict.fromkeys(_walk(from_domain(sender)) + _walk(sender.domain)))


def questions(record: DnsRecord, sender: Sender) -> list[Question]:
    domain = record.zone
    return list(dict.fromkeys([
        Question(record.name, "TXT"),
        Question(domain, "TXT"),  # a DMARC record put at the apex by mistake
        *(Question(f"_dmarc.{parent}", "TXT") for parent in _ancestors(domain)),
        *(Question(f"_dmarc.{name}", "TXT") for name in _from_walks(sender)),
    ]))


def decide(record: DnsRecord, sender: Sender, findings: Findings) -> Outcome:
    if from_domain(sender) == sender.domain:
        return _decide_at_domain(record, sender, findings)
    return _decide_for_from(record, sender, findings)


def _published(name: str, findings: Findings) -> Published:
    """What `_dmarc.<name>` holds, as the receiver module reads it."""
    from relay.domains.receiver.dmarc import Published

    finding = findings.get(Question(f"_dmarc.{name}", "TXT"))
    if isinstance(finding, DnsError):
        return Published(name, error=finding.reason)
    texts = finding.texts if isinstance(finding, Answer) else ()
    return Published(name, tuple(text for text in texts if is_dmarc(text)))


def _decide_for_from(record: DnsRecord, sender: Sender, findings: Findings) -> Outcome:
    """A From domain below the signing domain: the policy receivers find for it, and alignment."""
    from relay.domains.receiver.dmarc import (
        DmarcRecordError,
        DnsTrouble,
        aligned,
        find_org_domain,
        find_policy,
        read_policy,
    )

    origin, signer = from_domain(sender), sender.domain
    try:
        walked = [_published(name, findings) for name in _walk(origin)]
        applies = find_policy(walked)
        if applies is None:  # no policy for the From domain at all: our advice for _dmarc.<domain>
            return _decide_at_domain(record, sender, findings)
        found = tuple(f"_dmarc.{applies.domain} TXT {text}" for text in applies.records)
        try:
            policy = read_policy(applies.domain, applies.records[0])
        except DmarcRecordError as exc:
            return Outcome(CheckStatus.WARNING, found, f"The DMARC record at _dmarc.{applies.domain}"
                           f" applies to From {origin} but cannot be used: {exc}, so receivers ignore"
                           f" it; correct it.", expected=EXISTING)
        orgs = {origin: find_org_domain(origin, walked),
                signer: find_org_domain(signer, [_published(n, findings) for n in _walk(signer)])}
    except DnsTrouble as trouble:
        return Outcome(CheckStatus.ERROR, (), f"Could not check the DMARC policy for From {origin}:"
                       f" _dmarc.{trouble.domain} got no answer ({trouble.error}), so nothing is"
                       f" known about it: validate again later.", expected=EXISTING)
    # The return path bounce.<domain> is taken to share <domain>'s organisational domain.
    orgs[sender.return_path_host] = orgs[signer]
    spf_aligns = aligned(policy.aspf, sender.return_path_host, origin, orgs)
    tag, value = policy.applied(origin)
    if not aligned(policy.adkim, signer, origin, orgs):
        return Outcome(CheckStatus.MISMATCH, found,
                       _misaligned(sender, applies.domain, policy.adkim, orgs, spf_aligns,
                                   f"{tag}={value}"), expected=EXISTING)
    note = (f" From {origin} aligns with our signature d={signer} (adkim=r: the same organisational"
            f" domain {orgs[origin]}).")
    if applies.domain == signer or not applies.domain.endswith(f".{signer}"):
        judged = _decide_at_domain(record, sender, findings)  # the record at or above _dmarc.<domain>
    else:  # a record of the From domain's own (or between it and the domain) takes precedence
        judged = _judge(applies.records[0], sender, found)
        judged = replace(judged, diagnosis=f"The DMARC record at _dmarc.{applies.domain} applies to"
                         f" From {origin} (RFC 7489 6.6.3). {judged.diagnosis}")
    return replace(judged, diagnosis=judged.diagnosis + note)


def _misaligned(sender: Sender, at: str, adkim: str, orgs: dict[str, str], spf_aligns: bool,
                applied: str) -> str:
    """Why our DKIM signature cannot align with the From domain, what that breaks, and the fix."""
    origin, signer = from_domain(sender), sender.domain
    why = ("adkim=s (strict), so DKIM does not align" if adkim == "s" else
           f"adkim=r, but the organisational domains {orgs[signer]} and {orgs[origin]} differ, so"
           f" DKIM does not align")
    if spf_aligns:
        breaks = (f"DMARC then rests on SPF alone (return path {sender.return_path_host}), and"
                  f" receivers apply {applied} to forwarded mail, whose SPF fails.")
    else:
        breaks = (f"SPF cannot align either (aspf=s; the return path is {sender.return_path_host}),"
                  f" so receivers apply {applied} to all of its mail.")
    relax = f", or relax to adkim=r at _dmarc.{at}" if adkim == "s" else ""
    return (f"Mail From {sender.email} is signed d={signer}; the DMARC policy at _dmarc.{at} has"
            f" {why}: {breaks} Fix: use an address directly at {signer}, or set the domain to"
            f" {origin}{relax}.")


def _decide_at_domain(record: DnsRecord, sender: Sender, findings: Findings) -> Outcome:
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
