"""SPF records as data (RFC 7208 4.5, 4.6, 5, 6, 7): select, parse, and expand macros. Pure: no DNS."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import quote

from relay.domains.receiver.model import Result

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

QUALIFIERS = {"+": Result.PASS, "-": Result.FAIL, "~": Result.SOFTFAIL, "?": Result.NEUTRAL}
MAX_DOMAIN = 253  # RFC 7208 7.3: a longer expansion loses labels from the left
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.-]*)=(.*)", re.S)
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
_DUAL_CIDR = re.compile(r"(?::(?P<spec>.+?))?(?:/(?P<c4>0|[1-9][0-9]*))?(?://(?P<c6>0|[1-9][0-9]*))?")
_MACRO = re.compile(  # RFC 7208 7.1: %{letter digits r delimiters}, or %% %_ %-
    r"%(?:\{(?P<letter>[A-Za-z])(?P<digits>[0-9]*)(?P<r>[rR]?)(?P<delims>[-.+,/_=]*)\}|(?P<lit>[%_-]))")
_TOP_LABEL = re.compile(r"(?=[A-Za-z0-9-]*[A-Za-z])[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_DOMAIN_LETTERS = "slodiphv"  # RFC 7208 7.2: c, r and t are allowed only in exp=


class SpfSyntaxError(ValueError):
    """The record (or a domain-spec) is unusable: check_host() returns permerror; the text says why."""


@dataclass(frozen=True)
class Mechanism:
    """One directive: `qualifier` is the result when it matches (RFC 7208 4.6.2)."""

    qualifier: Result
    kind: str  # all, include, a, mx, ptr, ip4, ip6, exists
    text: str  # as written, for reasons
    domain_spec: str | None = None
    network: IpNetwork | None = None
    cidr4: int = 32
    cidr6: int = 128


@dataclass(frozen=True)
class SpfRecord:
    mechanisms: tuple[Mechanism, ...]
    redirect: str | None = None  # RFC 7208 6.1; exp= (6.2) is ignored: it only words a rejection


def is_spf(text: str) -> bool:
    """RFC 7208 4.5: exactly `v=spf1` (any case), then a space or the end."""
    return re.match(r"v=spf1(?: |$)", text, re.I) is not None


def parse(text: str) -> SpfRecord:
    """The record's terms (RFC 7208 4.6.1, 12); raises SpfSyntaxError for what makes it permerror."""
    if not is_spf(text):
        raise SpfSyntaxError("it does not start with v=spf1")
    terms = [term for term in text.split(" ") if term][1:]
    mechanisms: list[Mechanism] = []
    modifiers: dict[str, str] = {}
    for term in terms:
        modifier = _MODIFIER.fullmatch(term)
        if modifier:
            name = modifier.group(1).lower()
            if name in modifiers and name in ("redirect", "exp"):
                raise SpfSyntaxError(f"{name}= appears twice (RFC 7208 6)")
            modifiers[name] = modifier.group(2)  # unknown modifiers are ignored (RFC 7208 6)
        else:
            mechanisms.append(_mechanism(term))
    redirect = modifiers.get("redirect")
    if redirect is not None:
        _check_domain_spec(redirect, "redirect=")
    return SpfRecord(tuple(mechanisms), redirect)


def _mechanism(term: str) -> Mechanism:
    """One directive (RFC 7208 4.6.1, 5): qualifier, mechanism and its argument."""
    qualifier = QUALIFIERS.get(term[0], Result.PASS)
    body = term[1:] if term[0] in QUALIFIERS else term
    name_match = _NAME.match(body)
    if name_match is None:
        raise SpfSyntaxError(f"{term!r} is neither a mechanism nor a modifier")
    kind, rest = name_match.group(0).lower(), body[name_match.end():]
    if kind == "all" and not rest:
        return Mechanism(qualifier, kind, term)
    if kind in ("include", "exists") and rest.startswith(":") and len(rest) > 1:
        return Mechanism(qualifier, kind, term, _check_domain_spec(rest[1:], term))
    if kind == "ptr" and (not rest or rest.startswith(":") and len(rest) > 1):
        return Mechanism(qualifier, kind, term, _check_domain_spec(rest[1:], term) if rest else None)
    if kind in ("a", "mx"):
        return _dual_cidr(qualifier, kind, term, rest)
    if kind in ("ip4", "ip6") and rest.startswith(":"):
        return Mechanism(qualifier, kind, term, network=_network(kind, rest[1:], term))
    if kind in ("all", "include", "exists", "ptr", "ip4", "ip6"):
        raise SpfSyntaxError(f"{term!r} is malformed (RFC 7208 5)")
    raise SpfSyntaxError(f"{term!r} is not an SPF mechanism (RFC 7208 5)")


def _dual_cidr(qualifier: Result, kind: str, term: str, rest: str) -> Mechanism:
    """`a` and `mx`: [":" domain-spec] ["/" ip4-cidr] ["//" ip6-cidr] (RFC 7208 5.6)."""
    match = _DUAL_CIDR.fullmatch(rest)
    if match is None:
        raise SpfSyntaxError(f"{term!r} is malformed (RFC 7208 5.3, 5.4)")
    cidr4, cidr6 = int(match["c4"] or 32), int(match["c6"] or 128)
    if cidr4 > 32 or cidr6 > 128:
        raise SpfSyntaxError(f"{term!r} has a prefix length out of range")
    spec = _check_domain_spec(match["spec"], term) if match["spec"] else None
    return Mechanism(qualifier, kind, term, spec, cidr4=cidr4, cidr6=cidr6)


def _network(kind: str, value: str, term: str) -> IpNetwork:
    """ip4:/ip6: network and optional prefix length (RFC 7208 5.6)."""
    address, slash, prefix = value.partition("/")
    try:
        ip = ipaddress.IPv4Address(address) if kind == "ip4" else ipaddress.IPv6Address(address)
        if slash and not re.fullmatch(r"0|[1-9][0-9]*", prefix):
            raise ValueError(prefix)
        return ipaddress.ip_network(f"{ip}/{prefix or ip.max_prefixlen}", strict=False)
    except ValueError:
        raise SpfSyntaxError(f"{term!r} is not a valid {kind} network") from None


def _check_domain_spec(spec: str, where: str) -> str:
    """RFC 7208 7.1: macros well-formed, and the spec ends in a top label or a macro."""
    position = 0
    while (percent := spec.find("%", position)) >= 0:
        macro = _MACRO.match(spec, percent)
        if macro is None:
            raise SpfSyntaxError(f"{where!r}: a '%' that starts no macro (write %% for a percent sign)")
        if macro["letter"] and macro["letter"].lower() not in _DOMAIN_LETTERS:
            raise SpfSyntaxError(f"{where!r}: %{{{macro['letter']}}} is allowed only in exp= (RFC 7208 7.2)")
        if macro["digits"] and int(macro["digits"]) == 0:
            raise SpfSyntaxError(f"{where!r}: a macro keeps zero labels (RFC 7208 7.3)")
        position = macro.end()
    if not _ends_well(spec):
        raise SpfSyntaxError(f"{where!r} does not end in a domain name (RFC 7208 7.1)")
    return spec


def _ends_well(spec: str) -> bool:
    """domain-end = "." toplabel ["."] / macro-expand (RFC 7208 7.1)."""
    if spec.endswith(("}", "%%", "%_", "%-")):
        return True
    _, dot, last = spec.removesuffix(".").rpartition(".")
    return bool(dot) and _TOP_LABEL.fullmatch(last) is not None


@dataclass(frozen=True)
class MacroContext:
    """The values macros draw on (RFC 7208 7.2)."""

    sender: str  # <sender>: local-part@domain, with "postmaster" for an empty local-part (4.3)
    domain: str  # <domain>: the domain being evaluated
    ip: IpAddress

    def value(self, letter: str) -> str:
        """The value of macro letter `letter` (RFC 7208 7.2)."""
        local, _, sender_domain = self.sender.rpartition("@")
        if letter == "i" and self.ip.version == 6:
            return ".".join(self.ip.exploded.replace(":", ""))  # 7.3: dot-separated nibbles
        values = {"s": self.sender, "l": local, "o": sender_domain, "d": self.domain,
                  "i": str(self.ip), "v": "in-addr" if self.ip.version == 4 else "ip6"}
        if letter not in values:  # p (validated name) and h (HELO) would need what we do not have
            raise SpfSyntaxError(f"uses the macro %{{{letter}}}, which this check does not evaluate")
        return values[letter]


def expand(spec: str, context: MacroContext) -> str:
    """A domain-spec with its macros expanded (RFC 7208 7.3), at most 253 characters."""
    def one(macro: re.Match[str]) -> str:
        """One macro expanded (RFC 7208 7.3)."""
        if macro["lit"]:
            return {"%": "%", "_": " ", "-": "%20"}[macro["lit"]]
        letter = macro["letter"]
        parts = re.split("[" + re.escape(macro["delims"] or ".") + "]", context.value(letter.lower()))
        if macro["r"]:
            parts.reverse()
        if macro["digits"]:
            parts = parts[-int(macro["digits"]):]
        text = ".".join(parts)
        return quote(text, safe="-._~") if letter.isupper() else text  # 7.3: upper case = URL-escaped

    expanded = _MACRO.sub(one, spec).rstrip(".")
    while len(expanded) > MAX_DOMAIN and "." in expanded:
        expanded = expanded.split(".", 1)[1]
    return expanded
