"""DMARC as a receiver evaluates it: RFC 7489 with RFC 9989's DNS tree walk instead of a suffix list.

Pure: `walk_names`, `find_policy`, `find_org_domain`, `read_policy`, `decide`. DNS: `TreeWalk` asks
`_dmarc.<name>` at most once per name for one verdict; a name DNS cannot answer stops the verdict
with temperror ("could not check") as soon as the walk needs that name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from relay.domains.checks.dmarc import POLICIES, is_dmarc
from relay.domains.receiver.dkimcheck import DkimOutcome
from relay.domains.receiver.lookup import DnsLookup
from relay.domains.receiver.model import Check, Result
from relay.domains.taglist import TagListError, parse_tag_list

MAX_WALK = 8  # RFC 9989 4.10 (DNS tree walk): at most 8 names are asked


class DmarcRecordError(ValueError):
    """A DMARC record receivers cannot use; the text says what is wrong with it."""


class DnsTrouble(Exception):
    """`_dmarc.<domain>` got no answer, so nothing is known there."""

    def __init__(self, domain: str, error: str) -> None:
        super().__init__(f"_dmarc.{domain}: {error}")
        self.domain = domain
        self.error = error


@dataclass(frozen=True)
class Published:
    """What `_dmarc.<domain>` holds: the TXT records that start with v=DMARC1 (RFC 7489 6.6.3)."""

    domain: str
    records: tuple[str, ...] = ()
    error: str | None = None  # DNS could not answer


@dataclass(frozen=True)
class Policy:
    """One DMARC record, read (RFC 7489 6.3)."""

    domain: str  # where it was found, without `_dmarc.`
    p: str
    sp: str | None = None
    adkim: str = "r"  # RFC 7489 3.1.1: relaxed unless s
    aspf: str = "r"

    def applied(self, from_domain: str) -> tuple[str, str]:
        """The tag receivers apply: sp= for a subdomain governed by this record, else p= (6.3)."""
        if from_domain != self.domain and self.sp is not None:
            return "sp", self.sp
        return "p", self.p


def walk_names(domain: str) -> list[str]:
    """RFC 9989 4.10: the domain, then (from at most 7 labels) one label less each time, to the TLD."""
    labels = domain.split(".")
    start = min(len(labels) - 1, MAX_WALK - 1)
    return [domain] + [".".join(labels[-count:]) for count in range(start, 0, -1)]


def read_policy(domain: str, text: str) -> Policy:
    """The tags receivers act on; raises DmarcRecordError when they would ignore the record."""
    try:
        tags = {name: value.lower() for name, value in parse_tag_list(text)}
    except TagListError as exc:
        raise DmarcRecordError(f"it is not a tag list ({exc})") from None
    p = tags.get("p", "")
    if p not in POLICIES:
        if "rua" not in tags:
            raise DmarcRecordError("it has no valid p= (none, quarantine or reject)")
        p = "none"  # RFC 7489 6.6.3 step 6: with a valid rua=, act as if p=none
    sp = tags.get("sp")
    return Policy(domain, p, sp if sp in POLICIES else None,
                  "s" if tags.get("adkim") == "s" else "r", "s" if tags.get("aspf") == "s" else "r")


def find_policy(walked: list[Published]) -> Published | None:
    """The first name of the walk with exactly one DMARC record (RFC 9989 4.10, RFC 7489 6.6.3)."""
    for item in walked:
        if item.error is not None:
            raise DnsTrouble(item.domain, item.error)
        if len(item.records) == 1:  # several records at one name are discarded: no DMARC there
            return item
    return None


def find_org_domain(domain: str, walked: list[Published]) -> str:
    """RFC 9989 4.10: psd=n there, the child of psd=y, the shortest name with a record, or `domain`."""
    found: list[str] = []
    for item in walked:
        if item.error is not None:
            raise DnsTrouble(item.domain, item.error)
        if len(item.records) != 1:
            continue
        psd = _psd(item.records[0])
        if psd == "n":
            return item.domain
        if psd == "y" and item.domain != domain:
            return ".".join(domain.split(".")[-(item.domain.count(".") + 2):])
        found.append(item.domain)
        if psd == "y":
            break  # psd=y where the walk started: the walk stops; the shortest name rule applies
    return found[-1] if found else domain


def _psd(text: str) -> str | None:
    """The psd= tag of a record (RFC 9989), lower-cased, or None."""
    try:
        return dict(parse_tag_list(text)).get("psd", "").lower() or None
    except TagListError:
        return None


class TreeWalk:
    """`_dmarc` look-ups for one verdict, each name asked once."""

    def __init__(self, dns: DnsLookup) -> None:
        self._dns = dns
        self._asked: dict[str, asyncio.Task[Published]] = {}

    async def walk(self, domain: str) -> list[Published]:
        """What every name of `domain`'s tree walk holds, in walk order (asked concurrently)."""
        return list(await asyncio.gather(*(self.at(name) for name in walk_names(domain))))

    async def at(self, domain: str) -> Published:
        """What `_dmarc.<domain>` holds, asked once."""
        if domain not in self._asked:
            self._asked[domain] = asyncio.create_task(self._ask(domain))
        return await self._asked[domain]

    async def _ask(self, domain: str) -> Published:
        answer = await self._dns.txt(f"_dmarc.{domain}")
        if answer.error is not None:
            return Published(domain, error=answer.error)
        return Published(domain, tuple(text for text in answer.records if is_dmarc(text)))


async def check_dmarc(from_domain: str, *, spf: Check, dkim: DkimOutcome, dns: DnsLookup) -> Check:
    """Policy discovery, identifier alignment and the result (RFC 7489 6.6, RFC 9989 4.10)."""
    walk = TreeWalk(dns)
    try:
        walked = await walk.walk(from_domain)
        found = find_policy(walked)
        if found is None:
            return Check(Result.NONE, _no_policy(from_domain, walked), from_domain)
        try:
            policy = read_policy(found.domain, found.records[0])
        except DmarcRecordError as exc:
            return Check(Result.PERMERROR, f"The DMARC record at _dmarc.{found.domain} cannot be used:"
                                           f" {exc}, so receivers ignore it; correct it.", from_domain)
        needed = _needs_org(from_domain, policy, spf, dkim)
        walks = await asyncio.gather(*(walk.walk(name) for name in needed))
        orgs = {name: find_org_domain(name, w) for name, w in zip(needed, walks, strict=True)}
    except DnsTrouble as trouble:
        return Check(Result.TEMPERROR, f"Could not check DMARC for {from_domain}: _dmarc.{trouble.domain}"
                                       f" got no answer from DNS ({trouble.error}); receivers retry"
                                       f" later.", from_domain)
    return decide(from_domain, policy, spf, dkim, orgs)


def _needs_org(from_domain: str, policy: Policy, spf: Check, dkim: DkimOutcome) -> list[str]:
    """Names whose organisational domain relaxed alignment needs; none when one passes identical."""
    if from_domain in dkim.passing or spf.result is Result.PASS and spf.domain == from_domain:
        return []
    names = list(dkim.passing) if policy.adkim == "r" else []
    if policy.aspf == "r" and spf.result is Result.PASS and spf.domain:
        names.append(spf.domain)
    return list(dict.fromkeys([from_domain, *names])) if names else []


def aligned(mode: str, identifier: str, from_domain: str, orgs: Mapping[str, str]) -> bool:
    """RFC 7489 3.1: strict = identical; relaxed = the same organisational domain."""
    if identifier == from_domain:
        return True
    return mode == "r" and identifier in orgs and orgs[identifier] == orgs.get(from_domain)


def decide(
    from_domain: str, policy: Policy, spf: Check, dkim: DkimOutcome, orgs: Mapping[str, str]
) -> Check:
    """Pass when an aligned identifier passes (RFC 7489 4.2); otherwise why, and the policy applied."""
    dkim_ok = [d for d in dkim.passing if aligned(policy.adkim, d, from_domain, orgs)]
    spf_ok = spf.result is Result.PASS and spf.domain is not None and aligned(
        policy.aspf, spf.domain, from_domain, orgs)
    tag, value = policy.applied(from_domain)
    if dkim_ok or spf_ok:
        why = [f"DKIM d={dkim_ok[0]} is aligned (adkim={policy.adkim})"] if dkim_ok else []
        why += [f"SPF for {spf.domain} is aligned (aspf={policy.aspf})"] if spf_ok else []
        return Check(Result.PASS, f"From domain {from_domain}: {' and '.join(why)}; the policy at"
                                  f" _dmarc.{policy.domain} is {tag}={value}.", from_domain)
    checks = (("SPF", spf), ("DKIM", dkim.check))
    unsure = [name for name, check in checks if check.result is Result.TEMPERROR]
    if unsure:
        return Check(Result.TEMPERROR, f"Could not check DMARC for {from_domain}: nothing aligned passes"
                                       f" and {' and '.join(unsure)} could not be checked; receivers"
                                       f" retry later.", from_domain)
    parts = [_dkim_words(from_domain, policy, dkim, orgs), _spf_words(from_domain, policy, spf, orgs)]
    return Check(Result.FAIL, f"{'; '.join(parts)}; receivers apply {tag}={value} (the record at"
                              f" _dmarc.{policy.domain}): {_fix(from_domain, policy, dkim)}.", from_domain)


def _dkim_words(from_domain: str, policy: Policy, dkim: DkimOutcome, orgs: Mapping[str, str]) -> str:
    """Why DKIM gives DMARC nothing: no pass, or a pass that is not aligned."""
    if not dkim.passing:
        signer = f" for d={dkim.check.domain}" if dkim.check.domain else ""
        return f"DKIM is {dkim.check.result}{signer}"
    return (f"DKIM d={dkim.passing[0]} passes but is not aligned with From domain {from_domain}"
            f" under adkim={policy.adkim}{_why_not(dkim.passing[0], from_domain, policy.adkim, orgs)}")


def _spf_words(from_domain: str, policy: Policy, spf: Check, orgs: Mapping[str, str]) -> str:
    """Why SPF gives DMARC nothing: no pass, or a pass that is not aligned."""
    if spf.result is not Result.PASS or spf.domain is None:
        return f"SPF is {spf.result} for {spf.domain or 'an empty envelope sender'}"
    return (f"SPF passes for {spf.domain} but is not aligned with {from_domain} under"
            f" aspf={policy.aspf}{_why_not(spf.domain, from_domain, policy.aspf, orgs)}")


def _why_not(identifier: str, from_domain: str, mode: str, orgs: Mapping[str, str]) -> str:
    """What the alignment mode asked and why the two names miss it."""
    if mode == "s":
        return " (strict: the domains must be identical)"
    return (f" (relaxed: organisational domains {orgs.get(identifier, identifier)} and"
            f" {orgs.get(from_domain, from_domain)} differ)")


def _fix(from_domain: str, policy: Policy, dkim: DkimOutcome) -> str:
    """The one change that would make DMARC pass."""
    if dkim.check.result is Result.NONE:
        return f"sign the message with d={from_domain}"
    if not dkim.passing:
        return "make the DKIM signature verify (see the DKIM result)"
    if policy.adkim == "s":
        return f"sign with d={from_domain}, or set adkim=r at _dmarc.{policy.domain}"
    return f"sign with a d= of the same organisation as {from_domain}"


def _no_policy(from_domain: str, walked: list[Published]) -> str:
    """Why no policy applies (nothing published, or several records at one name)."""
    doubles = [item for item in walked if len(item.records) > 1]
    top = walked[-1].domain
    if doubles:
        return (f"_dmarc.{doubles[0].domain} has {len(doubles[0].records)} DMARC records, which means no"
                f" DMARC at all (RFC 7489 6.6.3), and no other name up to {top} has one: receivers"
                f" apply no DMARC policy; keep one record.")
    return (f"No DMARC record at _dmarc.{from_domain} or any parent up to _dmarc.{top} (RFC 9989 tree"
            f" walk): receivers apply no DMARC policy; publish one, e.g. \"v=DMARC1; p=none\" at"
            f" _dmarc.{from_domain}, to start monitoring.")
