"""The DKIM check: our public key published at `<selector>._domainkey.<domain>`, compared by meaning."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import rsa

from relay.core.models import CheckStatus, Sender
from relay.domains.checks.common import (
    Findings,
    Outcome,
    absence,
    could_not_check,
    found_at,
    negative_ttl_note,
    own_data,
)
from relay.domains.dkimrecord import Assessment, Verdict, assess, our_key
from relay.domains.dnscheck import Answer, DnsError, NoData, NxDomain, Question, Record
from relay.domains.records import DnsRecord

OTHER_TYPES = ("A", "AAAA", "MX")  # asked to say what *is* at a name without TXT


def near_misses(record: DnsRecord, sender: Sender) -> list[tuple[str, str]]:
    """Names where a misplaced key record is often found (DNS.md), each with its fix."""
    domain, relative = record.zone, record.relative_name
    selector = relative.split(".", 1)[0]
    rename = f"rename it to `{relative}` in the zone of {domain}"
    misses = [
        (f"{record.name}.{domain}",
         f"your DNS host appended {domain} a second time; enter only `{relative}` as the host name"),
        (f"{selector}.domainkey.{domain}", f"the underscore of `_domainkey` is missing; {rename}"),
        (f"_domainkey.{domain}", f"the selector `{selector}` is missing in front; {rename}"),
    ]
    parent = domain.split(".", 1)[1] if domain.count(".") >= 2 else None
    if parent:
        misses.append((f"{selector}._domainkey.{parent}",
                       f"it is in the parent domain {parent}; publish it in the zone of {domain}"
                       f" as `{relative}`"))
    email_domain = sender.email.rsplit("@", 1)[-1]
    for sub in dict.fromkeys([email_domain, f"mail.{domain}"]):
        if sub != domain and sub.endswith("." + domain):
            misses.append((f"{selector}._domainkey.{sub}",
                           f"it is under {sub} instead of {domain}; {rename}"))
    return misses


def questions(record: DnsRecord, sender: Sender) -> list[Question]:
    asked = [Question(record.name, "TXT")]
    asked += [Question(record.name, t) for t in OTHER_TYPES]
    asked += [Question(name, "TXT") for name, _ in near_misses(record, sender)]
    return asked


def decide(record: DnsRecord, sender: Sender, findings: Findings) -> Outcome:
    ours = our_key(record.value)
    at_name = findings[Question(record.name, "TXT")]
    if isinstance(at_name, DnsError):
        return Outcome(CheckStatus.ERROR, (), could_not_check(at_name))
    if isinstance(at_name, Answer):
        judged = [(r, assess(r.text, r.strings, ours)) for r in at_name.records]
        meant = [(r, a) for r, a in judged if a.meant_as_dkim]
        if len(meant) > 1:
            return Outcome(CheckStatus.MISMATCH, found_at(at_name), _several(meant))
        if meant:
            return _judge(meant[0][1], at_name, others=len(judged) - 1)
        if any(a.verdict is Verdict.BARE_KEY for _, a in judged):
            return Outcome(CheckStatus.MISMATCH, found_at(at_name),
                           "Only the key itself was pasted, without the tags around it: set the value"
                           " to the whole expected text, starting with `v=DKIM1; k=rsa; p=`.")
    return _missing(record, sender, at_name, findings, ours)


def _judge(assessment: Assessment, at_name: Answer, *, others: int) -> Outcome:
    status, diagnosis = _verdict_text(assessment)
    if at_name.aliases:
        diagnosis += f" (It is reached through the alias {' -> '.join(at_name.aliases)}.)"
    if status is CheckStatus.OK and others:
        diagnosis += " Other TXT records at this name are not DKIM keys; they are best removed."
    return Outcome(status, found_at(at_name), diagnosis)


def _verdict_text(a: Assessment) -> tuple[CheckStatus, str]:
    bad = CheckStatus.MISMATCH
    paste = "paste the expected value again"
    v = a.verdict
    if v is Verdict.MATCH:
        note = (" It says t=y (testing), so receivers may ignore failures; remove t=y once mail"
                " flows." if a.testing else "")
        return CheckStatus.OK, "The published key is ours." + note
    if v is Verdict.QUOTED:
        inside = f" ({a.detail})" if a.detail else ""
        return bad, (f"The value has literal quotes around it{inside}: remove the quotes, your DNS"
                     f" host adds its own.")
    if v is Verdict.REVOKED:
        return bad, ("The p= tag is empty, which means the key is revoked (RFC 6376 3.6.1): publish"
                     " the expected value with our key.")
    if v is Verdict.DAMAGED:
        return bad, (f"The key in p= is incomplete ({a.detail}): {paste} in full; some DNS hosts"
                     f" need it split into strings of at most 255 characters.")
    if v is Verdict.WEAK:
        return bad, (f"The record holds a {a.detail} key, too small to be trusted (RFC 8301) and not"
                     f" ours: replace it with the expected value.")
    if v is Verdict.OTHER_KEY:
        what = f" ({a.detail})" if a.detail else ""
        return bad, (f"The record holds another key than ours{what}, perhaps an old or another"
                     f" provider's: replace the value with the expected one.")
    if v is Verdict.KEY_TYPE:
        return bad, f"The record says {a.detail}, but our key is RSA: {paste} (k=rsa)."
    if v is Verdict.HASH:
        return bad, f"The record says {a.detail}, excluding sha256, which we sign with: {paste}."
    if v is Verdict.SERVICE:
        return bad, f"The record says {a.detail}, so it may not be used for e-mail: {paste}."
    # SYNTAX, VERSION: not a DKIM key record a verifier can read.
    return bad, f"The record cannot be read as a DKIM key ({a.detail}): {paste}."


def _several(meant: list[tuple[Record, Assessment]]) -> str:
    ours = any(a.verdict is Verdict.MATCH for _, a in meant)
    keep = "the one with our key" if ours else "one, with the expected value"
    return (f"There are {len(meant)} DKIM records at this one name, so receivers may pick either and"
            f" the result is undefined (RFC 6376 3.6.2.2): keep only {keep} and delete the others.")


def _missing(
    record: DnsRecord, sender: Sender, at_name: Answer | NxDomain | NoData, findings: Findings,
    ours: rsa.RSAPublicKey,
) -> Outcome:
    found = found_at(at_name)
    if not isinstance(at_name, Answer):
        found += own_data(findings, record.name, OTHER_TYPES)
    hits = _near_miss_hits(record, sender, findings, ours)
    found += tuple(f"{name} TXT {text}" for name, _, text, _ in hits)
    if hits:
        name, fix, _, assessment = hits[0]
        whose = "our key" if assessment.verdict is Verdict.MATCH else "another key"
        return Outcome(CheckStatus.MISSING, found,
                       f"No DKIM record at {record.name}, but one with {whose} is at {name}: {fix}.")
    if isinstance(at_name, Answer):
        what = f"{record.name} has TXT data, but no DKIM key"
    else:
        what = absence(at_name, own_data(findings, record.name, OTHER_TYPES))
    return Outcome(CheckStatus.MISSING, found,
                   f"No DKIM record: {what}; publish a TXT record with host `{record.relative_name}`"
                   f" in the zone of {record.zone} and the expected value." + negative_ttl_note(at_name))


def _near_miss_hits(
    record: DnsRecord, sender: Sender, findings: Findings, ours: rsa.RSAPublicKey
) -> list[tuple[str, str, str, Assessment]]:
    hits = []
    for name, fix in near_misses(record, sender):
        finding = findings.get(Question(name, "TXT"))
        if isinstance(finding, Answer):  # a probe that failed is only a hint lost, never an error
            for r in finding.records:
                assessment = assess(r.text, r.strings, ours)
                if assessment.meant_as_dkim:
                    hits.append((name, fix, r.text, assessment))
    # Our own key first: that one is certainly the misplaced record.
    return sorted(hits, key=lambda hit: hit[3].verdict is not Verdict.MATCH)
