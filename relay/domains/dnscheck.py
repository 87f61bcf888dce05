"""DNS questions for validation: ask authoritative servers without a cache, answer with findings.

This is the one boundary where dnspython's exceptions are translated. Every question gets exactly
one finding, never an exception:

    Finding
    ├── Answer    records of the asked type at the name (after any CNAME chain, named in `aliases`)
    ├── NxDomain  the name does not exist (RFC 8020: nor anything below it)
    ├── NoData    the name exists but has no record of that type (RFC 2308 2.2)
    └── DnsError  no usable answer (SERVFAIL, REFUSED, timeout, no servers): "could not check"

Servers asked: `RELAY_NAMESERVERS` when set; otherwise the domain's own authoritative servers,
found from its NS records, so that a record just added is seen at once (a caching resolver may
hide it for the zone's negative TTL, RFC 2308 5).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple, TypeVar

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset

from relay.core.settings import HostPort, Settings

MAX_ALIASES = 8  # CNAME chain we follow ourselves when a server does not (RFC 1034 3.6.2)
EDNS_PAYLOAD = 1232  # the DNS Flag Day 2020 size: no IP fragmentation; larger answers come over TCP


class Question(NamedTuple):
    name: str  # fully qualified, no trailing dot
    rdtype: str  # TXT, CNAME, A, ...


@dataclass(frozen=True)
class Record:
    text: str  # TXT: its strings joined with no separator (RFC 6376 3.6.2.2); names without final dot
    strings: tuple[str, ...] = ()  # TXT only: the character-strings as published


@dataclass(frozen=True)
class Answer:
    name: str
    rdtype: str
    records: tuple[Record, ...]
    aliases: tuple[str, ...] = ()  # CNAME targets followed from `name`, in order

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(record.text for record in self.records)


@dataclass(frozen=True)
class NxDomain:
    name: str
    rdtype: str
    negative_ttl: int | None  # how long a resolver may cache the absence (SOA, RFC 2308 5)
    aliases: tuple[str, ...] = ()  # the name is an alias whose (last) target does not exist


@dataclass(frozen=True)
class NoData:
    name: str
    rdtype: str
    negative_ttl: int | None
    aliases: tuple[str, ...] = ()


class Failure(StrEnum):
    SERVFAIL = "servfail"  # typically a zone that failed to load
    REFUSED = "refused"  # the server does not serve that zone
    TIMEOUT = "timeout"
    OTHER = "other"  # unreachable, malformed answers, no servers found


@dataclass(frozen=True)
class DnsError:
    name: str
    rdtype: str
    reason: str  # e.g. "127.0.0.1:53 answered SERVFAIL"
    kind: Failure = Failure.OTHER


Finding = Answer | NxDomain | NoData | DnsError
_K = TypeVar("_K")
_V = TypeVar("_V")


class _NoServers(Exception):
    """The authoritative servers of a name could not be found."""


def _text_name(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True)


def _record(rdata: dns.rdata.Rdata) -> Record:
    if rdata.rdtype == dns.rdatatype.TXT:
        parts = tuple(s.decode("utf-8", "replace") for s in rdata.strings)  # type: ignore[attr-defined]
        return Record(text="".join(parts), strings=parts)
    if rdata.rdtype == dns.rdatatype.CNAME:
        return Record(text=_text_name(rdata.target))  # type: ignore[attr-defined]
    if rdata.rdtype == dns.rdatatype.MX:
        exchange = _text_name(rdata.exchange)  # type: ignore[attr-defined]
        return Record(text=f"{rdata.preference} {exchange}")  # type: ignore[attr-defined]
    return Record(text=rdata.to_text())


def _negative_ttl(response: dns.message.Message, name: dns.name.Name) -> int | None:
    """RFC 2308 5: a negative answer is cached for min(SOA TTL, SOA MINIMUM) of the zone's SOA."""
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and name.is_subdomain(rrset.name):
            return int(min(rrset.ttl, rrset[0].minimum))
    return None


def _aliases(response: dns.message.Message) -> tuple[tuple[str, ...], dns.name.Name]:
    chain = response.resolve_chaining()  # type: ignore[attr-defined]
    targets = tuple(_text_name(rrset[0].target) for rrset in chain.cnames)
    return targets, chain.canonical_name


def _failure(
    resolver: dns.asyncresolver.Resolver, errors: list[tuple[Any, ...]]
) -> tuple[str, Failure]:
    """NoNameservers' trace -> (`127.0.0.1:53 answered SERVFAIL; ...`, the kind of failure)."""
    names = {str(ns): f"{HostPort(ns.address, ns.port)}" for ns in resolver.nameservers
             if isinstance(ns, dns.nameserver.Do53Nameserver)}
    texts = [f"{names.get(str(server), server)} answered {error}" for server, _, _, error, _ in errors]
    answers = {str(error) for *_, error, _ in errors}
    kind = (Failure.SERVFAIL if "SERVFAIL" in answers
            else Failure.REFUSED if answers == {"REFUSED"} else Failure.OTHER)
    return "; ".join(dict.fromkeys(texts)) or "no server could be asked", kind


class DnsClient:
    """Asks each question of the right servers; one instance per validation run.

    What is remembered is where to ask (zone cut and its servers), never an answer.
    `bootstrap` (the system resolver by default) finds zone cuts and NS addresses;
    `authoritative_port` exists so tests can run authoritative discovery on a high port.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        bootstrap: dns.asyncresolver.Resolver | None = None,
        authoritative_port: int = 53,
    ) -> None:
        self.timeout = settings.dns_timeout
        self._fixed = self._resolver(settings.nameservers) if settings.nameservers else None
        self._bootstrap = bootstrap
        self._port = authoritative_port
        self._zones: dict[str, asyncio.Task[dns.name.Name]] = {}
        self._servers: dict[dns.name.Name, asyncio.Task[dns.asyncresolver.Resolver]] = {}

    def _resolver(self, servers: Iterable[HostPort]) -> dns.asyncresolver.Resolver:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(s.host, s.port) for s in servers]
        resolver.cache = None  # never an answer from memory: a record just added must be seen
        resolver.use_edns(0, 0, EDNS_PAYLOAD)
        resolver.lifetime = self.timeout
        # Half the budget per attempt, so a second server still gets a turn.
        resolver.timeout = self.timeout / 2
        return resolver

    async def ask_all(self, questions: Iterable[Question]) -> dict[Question, Finding]:
        """Every distinct question concurrently; each one bounded by RELAY_DNS_TIMEOUT."""
        unique = list(dict.fromkeys(questions))
        findings = await asyncio.gather(*(self.ask(q.name, q.rdtype) for q in unique))
        return dict(zip(unique, findings, strict=True))

    async def ask(self, name: str, rdtype: str, *, depth: int = 0) -> Finding:
        try:
            qname = dns.name.from_text(name)
            resolver = await self._resolver_for(qname)
            return await self._translate(resolver, qname, name, rdtype, depth)
        except _NoServers as exc:
            return DnsError(name, rdtype, str(exc))
        except dns.exception.DNSException as exc:  # a name DNS cannot hold, a chain too long, ...
            return DnsError(name, rdtype, str(exc) or type(exc).__name__)

    async def _translate(
        self, resolver: dns.asyncresolver.Resolver, qname: dns.name.Name, name: str, rdtype: str,
        depth: int,
    ) -> Finding:
        try:
            answer = await resolver.resolve(qname, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN as exc:
            response = exc.kwargs.get("responses", {}).get(qname)
            if response is None:
                return NxDomain(name, rdtype, None)
            aliases, canonical = _aliases(response)
            return NxDomain(name, rdtype, _negative_ttl(response, canonical), aliases)
        except dns.resolver.NoNameservers as exc:
            return DnsError(name, rdtype, *_failure(resolver, exc.kwargs.get("errors", [])))
        except dns.exception.Timeout:
            return DnsError(name, rdtype, f"no answer within {self.timeout:g} s", Failure.TIMEOUT)
        except dns.exception.DNSException as exc:
            return DnsError(name, rdtype, str(exc) or type(exc).__name__)
        aliases, canonical = _aliases(answer.response)
        if answer.rrset is not None:
            records = tuple(_record(rdata) for rdata in answer.rrset)
            return Answer(name, rdtype, records, aliases)
        negative_ttl = _negative_ttl(answer.response, canonical)
        if aliases and negative_ttl is None:
            # An authoritative server answers an alias into another zone with the CNAME alone.
            return await self._follow(name, rdtype, aliases, depth)
        return NoData(name, rdtype, negative_ttl, aliases)

    async def _follow(self, name: str, rdtype: str, aliases: tuple[str, ...], depth: int) -> Finding:
        if depth + len(aliases) > MAX_ALIASES:
            return DnsError(name, rdtype, f"more than {MAX_ALIASES} CNAMEs in a row")
        found = await self.ask(aliases[-1], rdtype, depth=depth + len(aliases))
        if isinstance(found, DnsError):
            return DnsError(name, rdtype, f"alias target {aliases[-1]}: {found.reason}", found.kind)
        if isinstance(found, Answer):
            return Answer(name, rdtype, found.records, aliases + found.aliases)
        return type(found)(name, rdtype, found.negative_ttl, aliases + found.aliases)

    async def servers_for(self, name: str) -> list[HostPort]:
        """Where questions about `name` go (raises `LookupError` when that cannot be found)."""
        try:
            resolver = await self._resolver_for(dns.name.from_text(name))
        except _NoServers as exc:
            raise LookupError(str(exc)) from exc
        return [HostPort(ns.address, ns.port) for ns in resolver.nameservers
                if isinstance(ns, dns.nameserver.Do53Nameserver)]

    async def _resolver_for(self, qname: dns.name.Name) -> dns.asyncresolver.Resolver:
        if self._fixed is not None:
            return self._fixed
        zone = await _once(self._zones, qname.to_text(), lambda: self._zone_of(qname))
        return await _once(self._servers, zone, lambda: self._zone_servers(zone))

    def _system(self) -> dns.asyncresolver.Resolver:
        if self._bootstrap is None:
            self._bootstrap = dns.asyncresolver.Resolver()
            self._bootstrap.cache = None
            self._bootstrap.lifetime = self.timeout
        return self._bootstrap

    async def _zone_of(self, qname: dns.name.Name) -> dns.name.Name:
        # Walk up from the name to the zone cut (the first name with an SOA).
        try:
            return await dns.asyncresolver.zone_for_name(
                qname, resolver=self._system(), lifetime=self.timeout
            )
        except dns.exception.DNSException as exc:
            raise _NoServers(f"could not find the zone of {_text_name(qname)}: {_plain(exc)}") from exc

    async def _zone_servers(self, zone: dns.name.Name) -> dns.asyncresolver.Resolver:
        system = self._system()
        try:
            ns = await system.resolve(zone, "NS", search=False)
        except dns.exception.DNSException as exc:
            raise _NoServers(f"could not find the name servers of {_text_name(zone)}: {_plain(exc)}") from exc
        hosts = [rdata.target for rdata in ns]
        lookups = [system.resolve(h, t, search=False) for h in hosts for t in ("A", "AAAA")]
        addresses: list[str] = []
        for result in await asyncio.gather(*lookups, return_exceptions=True):
            if isinstance(result, dns.resolver.Answer):
                addresses.extend(rdata.to_text() for rdata in result)
            elif not isinstance(result, dns.exception.DNSException):
                raise result  # a bug, not a DNS outcome: do not hide it
        if not addresses:
            raise _NoServers(f"no address for the name servers of {_text_name(zone)}")
        return self._resolver(HostPort(a, self._port) for a in dict.fromkeys(addresses))


def _plain(exc: dns.exception.DNSException) -> str:
    """dnspython's words for a failed look-up of the domain's servers, in words a customer's IT reads."""
    if isinstance(exc, dns.resolver.NoRootSOA):
        return ("no DNS zone exists for it up to the root: the domain is not registered or not "
                "delegated (check the spelling), or this machine's resolver cannot reach the internet")
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return "the name does not exist in DNS"
    if isinstance(exc, dns.resolver.LifetimeTimeout):
        return "the resolver did not answer in time"
    if isinstance(exc, dns.resolver.NoNameservers):
        return "every name server failed to answer (SERVFAIL or REFUSED)"
    return str(exc)


async def _once(
    tasks: dict[_K, asyncio.Task[_V]], key: _K, make: Callable[[], Coroutine[Any, Any, _V]]
) -> _V:
    """Run `make()` once per key even when many questions need it at the same moment."""
    if key not in tasks:
        tasks[key] = asyncio.create_task(make())
    return await tasks[key]
