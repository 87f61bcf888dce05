"""SPF as a receiver evaluates it: check_host() of RFC 7208 4 over a DnsLookup, with a reason to read.

The walk stops at the first error (RFC 7208 4.6.4, 5.2, 6.1): `_Stop` carries temperror or permerror
up through include and redirect to `check_spf`, the one place that makes it a Check. `ptr` (5.5,
"SHOULD NOT be used") is counted as a look-up but never matches here; receivers rarely honour it.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, replace

from relay.domains.receiver.lookup import DnsAnswer, DnsLookup
from relay.domains.receiver.model import Check, Result
from relay.domains.receiver.spfrecord import (
    IpAddress,
    MacroContext,
    Mechanism,
    SpfRecord,
    SpfSyntaxError,
    expand,
    is_spf,
    parse,
)

MAX_DNS_TERMS = 10  # RFC 7208 4.6.4: include, a, mx, ptr, exists and redirect together
MAX_VOID = 2  # RFC 7208 4.6.4: look-ups that find nothing (NXDOMAIN or no records)
MAX_MX_HOSTS = 10  # RFC 7208 4.6.4: exchanges of one mx mechanism


class _Stop(Exception):
    """temperror or permerror: evaluation ends here (RFC 7208 4.6.4, 5.2, 6.1)."""

    def __init__(self, result: Result, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


@dataclass(frozen=True)
class _Decision:
    result: Result
    term: str | None  # what matched (an include says what matched inside); None: nothing did
    where: str  # "the SPF record of X", or for none: why there is none


@dataclass
class _Walk:
    """One check_host() run: the inputs and the limits shared by every include and redirect."""

    dns: DnsLookup
    ip: IpAddress
    sender: str
    terms: int = 0
    voids: int = 0

    def count_term(self, term: str) -> None:
        """RFC 7208 4.6.4: one more DNS-querying term; the eleventh is permerror."""
        self.terms += 1
        if self.terms > MAX_DNS_TERMS:
            raise _Stop(Result.PERMERROR,
                        f"Evaluating SPF needs more than {MAX_DNS_TERMS} DNS look-ups (include, a, mx,"
                        f" ptr, exists, redirect; RFC 7208 4.6.4), the last at {term}: receivers give"
                        f" permerror; replace includes by the ip4:/ip6: networks they stand for.")

    def answered(self, answer: DnsAnswer, term: str) -> DnsAnswer:
        """The answer of a term's look-up; DNS errors are temperror, too many void ones permerror."""
        if answer.error is not None:
            raise _Stop(Result.TEMPERROR, _could_not(answer, f"while evaluating {term}"))
        if answer.void:
            self.voids += 1
            if self.voids > MAX_VOID:
                raise _Stop(Result.PERMERROR,
                            f"More than {MAX_VOID} SPF look-ups found nothing, the last {answer.name}"
                            f" for {term} (RFC 7208 4.6.4): receivers give permerror; remove terms"
                            f" that name domains without records.")
        return answer


async def check_spf(*, mail_from: str, client_ip: str, dns: DnsLookup) -> Check:
    """check_host(client_ip, the MAIL FROM domain, MAIL FROM) (RFC 7208 4) as one Check."""
    ip = ipaddress.ip_address(client_ip)
    local, _, domain = mail_from.rpartition("@")
    domain = domain.rstrip(".").lower()
    if not domain:
        return Check(Result.NONE, "The envelope sender is empty (a bounce), so receivers check SPF"
                                  " on the HELO name instead, which is not known here.", None)
    if not _valid_domain(domain):  # RFC 7208 4.3
        return Check(Result.NONE, f"The MAIL FROM domain {domain!r} is not a valid domain name, so"
                                  f" there is no SPF record to check: send with a valid sender.", domain)
    walk = _Walk(dns, ip, f"{local or 'postmaster'}@{domain}")  # 4.3: empty local-part
    try:
        decision = await _check_host(walk, domain)
    except _Stop as stop:
        return Check(stop.result, stop.reason, domain)
    return Check(decision.result, _say(decision, ip, domain), domain)


async def _check_host(walk: _Walk, domain: str) -> _Decision:
    """check_host() for one domain (RFC 7208 4); include and redirect come back here."""
    record, answer = await _record(walk, domain)
    if record is None:
        return _Decision(Result.NONE, None, _absence(answer))
    where = f"the SPF record of {domain}"
    if answer.aliases:
        where += f" (published at {answer.aliases[-1]}, of which {domain} is an alias)"
    context = MacroContext(walk.sender, domain, walk.ip)
    for mechanism in record.mechanisms:  # RFC 7208 4.6.2: left to right, the first match decides
        matched = await _matches(walk, mechanism, domain, context)
        if matched is not None:
            return _Decision(mechanism.qualifier, matched, where)
    if record.redirect is None:
        return _Decision(Result.NEUTRAL, None, where)  # RFC 7208 4.7
    term = f"redirect={record.redirect}"
    walk.count_term(term)
    target = _target(record.redirect, context, term, where)
    found = await _check_host(walk, target)
    if found.result is Result.NONE:  # RFC 7208 6.1
        raise _Stop(Result.PERMERROR, f"{term} in {where} leads to {target}, which has no SPF record"
                                      f" (RFC 7208 6.1): receivers give permerror; fix the redirect.")
    return replace(found, where=f"{found.where}, reached by {term} from {domain}")


async def _record(walk: _Walk, domain: str) -> tuple[SpfRecord | None, DnsAnswer]:
    """RFC 7208 4.4, 4.5: the one TXT record starting with v=spf1, or None."""
    answer = await walk.dns.txt(domain)
    if answer.error is not None:
        raise _Stop(Result.TEMPERROR, _could_not(answer, "looking for its SPF record"))
    texts = [text for text in answer.records if is_spf(text)]
    if len(texts) > 1:
        raise _Stop(Result.PERMERROR, f"{domain} has {len(texts)} SPF records and RFC 7208 4.5 allows"
                                      f" one: receivers give permerror; merge them into one record.")
    if not texts:
        return None, answer
    try:
        return parse(texts[0]), answer
    except SpfSyntaxError as exc:
        raise _Stop(Result.PERMERROR, f"The SPF record of {domain} cannot be used: {exc}; receivers"
                                      f" give permerror, so correct it.") from None


async def _matches(walk: _Walk, mechanism: Mechanism, domain: str, context: MacroContext) -> str | None:
    """The matched term's words, or None (RFC 7208 5)."""
    kind, text = mechanism.kind, mechanism.text
    if kind == "all":
        return text
    if kind in ("ip4", "ip6"):
        network = mechanism.network
        hit = network is not None and walk.ip.version == network.version and walk.ip in network
        return text if hit else None
    walk.count_term(text)
    spec = mechanism.domain_spec
    target = _target(spec, context, text, f"the SPF record of {domain}") if spec else domain
    if kind == "include":
        return await _include(walk, mechanism, target)
    if kind == "a":
        answer = walk.answered(await walk.dns.addresses(target, ipv6=walk.ip.version == 6), text)
        return text if _covers(walk.ip, answer.records, mechanism) else None
    if kind == "mx":
        return text if await _mx(walk, mechanism, target) else None
    if kind == "exists":  # RFC 7208 5.7: an A query, whatever the client's address family
        return text if walk.answered(await walk.dns.addresses(target), text).records else None
    return None  # ptr


async def _include(walk: _Walk, mechanism: Mechanism, target: str) -> str | None:
    """RFC 7208 5.2: a pass inside matches; none inside is permerror."""
    inner = await _check_host(walk, target)  # temperror and permerror propagate (RFC 7208 5.2)
    if inner.result is Result.NONE:
        raise _Stop(Result.PERMERROR, f"{mechanism.text} names {target}, which has no SPF record"
                                      f" (RFC 7208 5.2): receivers give permerror; fix or remove it.")
    return f"{mechanism.text} (its record matches with {inner.term})" if inner.result is Result.PASS else None


async def _mx(walk: _Walk, mechanism: Mechanism, target: str) -> bool:
    """RFC 7208 5.4: an address of one of the domain's MX hosts covers the client."""
    hosts = walk.answered(await walk.dns.mx(target), mechanism.text).records
    if len(hosts) > MAX_MX_HOSTS:
        raise _Stop(Result.PERMERROR, f"{mechanism.text} finds {len(hosts)} MX hosts at {target}, more"
                                      f" than {MAX_MX_HOSTS} (RFC 7208 4.6.4): receivers give permerror.")
    ipv6 = walk.ip.version == 6
    answers = await asyncio.gather(*(walk.dns.addresses(host, ipv6=ipv6) for host in hosts))
    for answer in answers:
        if answer.error is not None:
            raise _Stop(Result.TEMPERROR, _could_not(answer, f"while evaluating {mechanism.text}"))
    return any(_covers(walk.ip, answer.records, mechanism) for answer in answers)


def _covers(ip: IpAddress, addresses: tuple[str, ...], mechanism: Mechanism) -> bool:
    """RFC 7208 5.6: the client is in the network of one of the addresses, at the mechanism's prefix."""
    prefix = mechanism.cidr4 if ip.version == 4 else mechanism.cidr6
    for address in addresses:
        network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
        if network.version == ip.version and ip in network:
            return True
    return False


def _target(spec: str, context: MacroContext, term: str, where: str) -> str:
    """A domain-spec expanded to the name to ask (RFC 7208 7); a bad one is permerror."""
    try:
        target = expand(spec, context)
    except SpfSyntaxError as exc:
        raise _Stop(Result.PERMERROR, f"{term} in {where} {exc}: receivers give permerror.") from None
    if not _valid_domain(target):
        raise _Stop(Result.PERMERROR, f"{term} in {where} expands to {target!r}, which is not a"
                                      f" domain name: receivers give permerror.")
    return target


def _valid_domain(name: str) -> bool:
    """RFC 7208 4.3: a multi-label name, labels of 1 to 63 characters, 253 at most."""
    labels = name.split(".")
    return len(name) <= 253 and len(labels) >= 2 and all(0 < len(label) <= 63 for label in labels)


def _absence(answer: DnsAnswer) -> str:
    """Why a domain has no SPF record, in words."""
    if answer.nxdomain:
        return f"{answer.name} does not exist (NXDOMAIN)"
    alias = f" (an alias of {answer.aliases[-1]})" if answer.aliases else ""
    return f"{answer.name}{alias} has no SPF record (no TXT record starting with v=spf1)"


def _could_not(answer: DnsAnswer, doing: str) -> str:
    """temperror words: which name DNS did not answer, and what to check."""
    return (f"Could not check SPF: {answer.name} got no answer from DNS ({answer.error}) {doing};"
            f" receivers treat this as temperror and retry later: check that the zone loads and"
            f" its servers answer.")


def _say(decision: _Decision, ip: IpAddress, domain: str) -> str:
    """One sentence: what decided, where, and the fix when it is not a pass."""
    fix = f"send through a server the record authorises, or add ip{ip.version}:{ip} to the record."
    term, where = decision.term, decision.where
    if decision.result is Result.PASS:
        return f"{ip} is authorised to send for {domain} by {term} in {where}."
    if decision.result is Result.NONE:
        return (f"{where}, so receivers get SPF none: publish an SPF record there (for the relay's"
                f" return path, the CNAME to the platform's bounce host provides it).")
    if term is None:
        return (f"No term in {where} matches {ip} and it has neither all nor redirect=, so the result"
                f" is neutral: {fix}")
    words = {Result.FAIL: "rejects it (fail)", Result.SOFTFAIL: "marks it as suspect (softfail)",
             Result.NEUTRAL: "says neither yes nor no (neutral)"}[decision.result]
    return f"{ip} is not authorised to send for {domain}: {term} in {where} {words}; {fix}"
