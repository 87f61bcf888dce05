"""The DNS questions a receiver asks (TXT, addresses, MX) as plain answers, on relay.domains.dnscheck's client.

`ResolverLookup` adds nothing to how questions are asked: `relay.domains.dnscheck.DnsClient` already asks
`RELAY_NAMESERVERS` (or the domain's own servers) without a cache, with EDNS, over TCP when an
answer is truncated, follows CNAME chains, and turns dnspython's errors into findings. Here a finding
becomes a `DnsAnswer`; a `DnsError` (SERVFAIL, REFUSED, timeout) becomes `error`, never an absence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from relay.core.settings import Settings
from relay.domains.dnscheck import Answer, DnsClient, DnsError, Finding, NxDomain


@dataclass(frozen=True)
class DnsAnswer:
    """One question's outcome: records, nothing (NXDOMAIN or NODATA), or no answer at all (`error`)."""

    name: str
    records: tuple[str, ...] = ()  # TXT: strings joined (RFC 7208 3.3); A/AAAA: addresses; MX: hosts
    nxdomain: bool = False
    error: str | None = None  # why DNS could not answer, e.g. "127.0.0.1:53 answered SERVFAIL"
    aliases: tuple[str, ...] = ()  # CNAME targets followed from `name`, in order

    @property
    def void(self) -> bool:
        """RFC 7208 4.6.4: an answer that is NXDOMAIN or has no records (an error is not void)."""
        return self.error is None and not self.records


TxtAnswer = DnsAnswer


class DnsLookup(Protocol):
    """What SPF, DKIM and DMARC evaluation ask of DNS; names are fully qualified, without final dot."""

    async def txt(self, name: str) -> DnsAnswer: ...

    async def addresses(self, name: str, *, ipv6: bool = False) -> DnsAnswer: ...

    async def mx(self, name: str) -> DnsAnswer: ...  # records: exchange host names, best first


class ResolverLookup:
    """`DnsLookup` over `relay.domains.dnscheck.DnsClient` (no cache: a record just published is seen)."""

    def __init__(self, client: DnsClient) -> None:
        self._client = client

    @classmethod
    def from_settings(cls, settings: Settings) -> ResolverLookup:
        """Ask `settings.nameservers` when set, else each domain's authoritative servers."""
        return cls(DnsClient(settings))

    async def txt(self, name: str) -> DnsAnswer:
        """TXT records at `name`, each one's strings joined with no separator."""
        return _answer(await self._client.ask(name, "TXT"))

    async def addresses(self, name: str, *, ipv6: bool = False) -> DnsAnswer:
        """A (or AAAA) records at `name`."""
        return _answer(await self._client.ask(name, "AAAA" if ipv6 else "A"))

    async def mx(self, name: str) -> DnsAnswer:
        """MX exchanges by preference; a null MX (RFC 7505, exchange `.`) yields none."""
        answer = _answer(await self._client.ask(name, "MX"))
        ranked = sorted((int(pref), host) for pref, host in (r.split(" ", 1) for r in answer.records))
        hosts = tuple(host for _, host in ranked if host not in (".", ""))
        return DnsAnswer(answer.name, hosts, answer.nxdomain, answer.error, answer.aliases)


def _answer(finding: Finding) -> DnsAnswer:
    """A dnscheck finding as a DnsAnswer; a DnsError stays an error, never an absence."""
    if isinstance(finding, DnsError):
        return DnsAnswer(finding.name, error=finding.reason)
    if isinstance(finding, Answer):
        return DnsAnswer(finding.name, finding.texts, aliases=finding.aliases)
    return DnsAnswer(finding.name, nxdomain=isinstance(finding, NxDomain), aliases=finding.aliases)
