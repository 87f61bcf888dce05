"""A receiver's verdict (relay.domains.receiver): SPF parsing and check_host, DMARC tags, tree walk and
alignment on an in-memory DNS; then whole verdicts on messages our signer signed, against NSD."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.core.dkimkeys import generate_private_key, public_key_b64
from relay.core.settings import load_settings
from relay.domains.receiver import (
    Check,
    DnsAnswer,
    ResolverLookup,
    Result,
    Verdict,
    judge,
    outbox_envelope,
)
from relay.domains.receiver.dkimcheck import DkimOutcome
from relay.domains.receiver.dmarc import (
    DmarcRecordError,
    Published,
    check_dmarc,
    find_org_domain,
    read_policy,
    walk_names,
)
from relay.domains.receiver.judge import author_domain
from relay.domains.receiver.spf import check_spf
from relay.domains.receiver.spfrecord import (
    MacroContext,
    SpfSyntaxError,
    expand,
    is_spf,
    parse,
)
from relay.mail.signer import DkimSigner
from relay.smtp.upstream import Envelope, Outbox, OutboxReply
from tests.nsd import Nsd, zone_text

SERVFAIL = "SERVFAIL"
Records = dict[tuple[str, str], tuple[str, ...] | str]
NsdFactory = Callable[[dict[str, str]], Nsd]


class FakeDns:
    """An in-memory DnsLookup: {(name, type): records or SERVFAIL}; other names are NXDOMAIN."""

    def __init__(self, records: Records) -> None:
        self.records = records
        self.asked: list[tuple[str, str]] = []

    async def _get(self, name: str, rdtype: str) -> DnsAnswer:
        self.asked.append((name, rdtype))
        value = self.records.get((name, rdtype))
        if value == SERVFAIL:
            return DnsAnswer(name, error="127.0.0.1:53 answered SERVFAIL")
        if value is None:
            return DnsAnswer(name, nxdomain=not any(n == name for n, _ in self.records))
        return DnsAnswer(name, tuple(value))

    async def txt(self, name: str) -> DnsAnswer:
        return await self._get(name, "TXT")

    async def addresses(self, name: str, *, ipv6: bool = False) -> DnsAnswer:
        return await self._get(name, "AAAA" if ipv6 else "A")

    async def mx(self, name: str) -> DnsAnswer:
        return await self._get(name, "MX")


# --- SPF: the record as data ---------------------------------------------------------------------

def test_parse_reads_every_mechanism_and_redirect() -> None:
    record = parse("v=spf1 +a mx/24 a:mail.x.test/28//64 ip4:192.0.2.0/24 ip6:2001:db8::/32"
                   " include:_spf.x.test exists:%{i}.bl.x.test ?ptr ~all redirect=_spf.y.test")
    kinds = [(m.qualifier.value, m.kind) for m in record.mechanisms]
    assert kinds == [("pass", "a"), ("pass", "mx"), ("pass", "a"), ("pass", "ip4"), ("pass", "ip6"),
                     ("pass", "include"), ("pass", "exists"), ("neutral", "ptr"), ("softfail", "all")]
    mx, a = record.mechanisms[1], record.mechanisms[2]
    assert (mx.cidr4, a.cidr4, a.cidr6) == (24, 28, 64)
    assert record.mechanisms[3].network == ipaddress.ip_network("192.0.2.0/24")
    assert record.redirect == "_spf.y.test"


@pytest.mark.parametrize("text, phrase", [
    ("v=spf1 foo:bar -all", "not an SPF mechanism"),
    ("v=spf1 ip4:300.1.1.1 -all", "not a valid ip4 network"),
    ("v=spf1 ip4:192.0.2.1/33", "not a valid ip4 network"),
    ("v=spf1 ip6:192.0.2.1", "not a valid ip6 network"),
    ("v=spf1 a/33", "prefix length out of range"),
    ("v=spf1 include: -all", "malformed"),
    ("v=spf1 all:x.test", "malformed"),
    ("v=spf1 redirect=a.test redirect=b.test", "redirect= appears twice"),
    ("v=spf1 exists:%{c}.x.test", "allowed only in exp="),
    ("v=spf1 include:localhost", "does not end in a domain name"),
    ("v=spf1 a:x%y.test", "starts no macro"),
    ("v=spf1 exists:%{d0}.x.test", "zero labels"),
])
def test_parse_refuses_what_receivers_call_permerror(text: str, phrase: str) -> None:
    with pytest.raises(SpfSyntaxError, match=phrase):
        parse(text)


@pytest.mark.parametrize("text, spf", [
    ("v=spf1 -all", True), ("v=spf1", True), ("V=SPF1 ip4:192.0.2.1", True),
    ("v=spf10 -all", False), ("v=spf1-all", False), ("spf1 -all", False),
])
def test_is_spf_is_the_exact_version_tag(text: str, spf: bool) -> None:
    assert is_spf(text) is spf


def test_unknown_modifiers_are_ignored() -> None:
    assert [m.kind for m in parse("v=spf1 moo=cow.test -all").mechanisms] == ["all"]


CTX4 = MacroContext("bounces@bounce.acme.test", "bounce.acme.test", ipaddress.ip_address("192.0.2.3"))


@pytest.mark.parametrize("spec, expanded", [
    ("%{i}.%{d}", "192.0.2.3.bounce.acme.test"),
    ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.acme.test"),
    ("%{l}.%{o}", "bounces.bounce.acme.test"),
    ("%{s}.x.test", "bounces@bounce.acme.test.x.test"),
    ("%{d1r}.x.test", "bounce.x.test"),
    ("%{l-}.x.test", "bounces.x.test"),
])
def test_macros_expand(spec: str, expanded: str) -> None:
    assert expand(spec, CTX4) == expanded


def test_ipv6_i_macro_is_dotted_nibbles() -> None:
    context = MacroContext("a@x.test", "x.test", ipaddress.ip_address("2001:db8::1"))
    assert expand("%{ir}.x.test", context) == "1." + "0." * 23 + "8.b.d.0.1.0.0.2.x.test"


@pytest.mark.parametrize("letter", ["p", "h"])
def test_unsupported_macros_are_named(letter: str) -> None:
    with pytest.raises(SpfSyntaxError, match=f"macro %{{{letter}}}, which this check does not evaluate"):
        expand(f"%{{{letter}}}.x.test", CTX4)


# --- SPF: check_host on in-memory DNS ------------------------------------------------------------

FROM_BOUNCE = "bounces@bounce.acme.test"


async def spf(records: Records, ip: str = "192.0.2.10",
              mail_from: str = FROM_BOUNCE) -> Check:
    return await check_spf(mail_from=mail_from, client_ip=ip, dns=FakeDns(records))


def spf_at(value: str, **more: str) -> Records:
    """The SPF record of bounce.acme.test, plus TXT records at other names (`__` in a name is `.`)."""
    others = {(name.replace("__", "."), "TXT"): (text,) for name, text in more.items()}
    return {("bounce.acme.test", "TXT"): (value,), **others}


async def test_spf_pass_through_include_names_the_term() -> None:
    check = await spf(spf_at("v=spf1 include:p.test -all", p__test="v=spf1 ip4:192.0.2.0/24 -all"))
    assert (check.result, check.domain) == ("pass", "bounce.acme.test")
    assert "authorised to send for bounce.acme.test by include:p.test" in check.reason
    assert "ip4:192.0.2.0/24" in check.reason


@pytest.mark.parametrize("all_term, result, phrase", [
    ("-all", "fail", "-all in the SPF record of bounce.acme.test rejects it (fail)"),
    ("~all", "softfail", "marks it as suspect (softfail)"),
    ("?all", "neutral", "says neither yes nor no (neutral)"),
    ("", "neutral", "has neither all nor redirect="),
])
async def test_spf_not_authorised_says_which_term_and_the_fix(
    all_term: str, result: str, phrase: str
) -> None:
    check = await spf(spf_at(f"v=spf1 ip4:192.0.2.10 {all_term}"), ip="203.0.113.9")
    assert check.result == result
    assert phrase in check.reason and "add ip4:203.0.113.9" in check.reason


async def test_spf_a_and_mx_with_cidr_and_ipv6() -> None:
    records = spf_at("v=spf1 a/24 mx:x.test//64 -all")
    records |= {("bounce.acme.test", "A"): ("198.51.100.1",), ("x.test", "MX"): ("mx1.x.test",),
                ("mx1.x.test", "AAAA"): ("2001:db8:5::1",)}
    assert (await spf(records, ip="198.51.100.200")).result == "pass"
    assert (await spf(records, ip="2001:db8:5::abcd")).result == "pass"
    assert (await spf(records, ip="2001:db8:6::1")).result == "fail"


async def test_spf_exists_with_macros() -> None:
    records = spf_at("v=spf1 exists:%{ir}.%{l}.allow.x.test -all")
    records[("10.2.0.192.bounces.allow.x.test", "A")] = ("127.0.0.2",)
    check = await spf(records)
    assert check.result == "pass" and "exists:%{ir}.%{l}.allow.x.test" in check.reason


async def test_spf_redirect_and_ptr_never_matching() -> None:
    check = await spf(spf_at("v=spf1 ptr redirect=_spf.p.test", _spf__p__test="v=spf1 ip4:192.0.2.10 -all"))
    assert check.result == "pass" and "reached by redirect=_spf.p.test from bounce.acme.test" in check.reason


@pytest.mark.parametrize("records, phrase", [
    (spf_at("v=spf1 redirect=nothing.test"), "leads to nothing.test, which has no SPF record"),
    (spf_at("v=spf1 include:nothing.test -all"), "names nothing.test, which has no SPF record"),
    ({("bounce.acme.test", "TXT"): ("v=spf1 -all", "v=spf1 +all")}, "has 2 SPF records"),
    (spf_at("v=spf1 a:n1.test a:n2.test a:n3.test -all"), "More than 2 SPF look-ups found nothing"),
    (spf_at("v=spf1 exists:%{p}.x.test -all"), "uses the macro %{p}, which this check does not evaluate"),
    (spf_at("v=spf1 ip4:192.0.2.300 -all"), "The SPF record of bounce.acme.test cannot be used"),
])
async def test_spf_permerror(records: Records, phrase: str) -> None:
    check = await spf(records)
    assert check.result == "permerror" and phrase in check.reason, check.reason


async def test_spf_more_than_ten_lookups_is_permerror() -> None:
    records = spf_at("v=spf1 include:i0.test -all")
    records |= {(f"i{n}.test", "TXT"): (f"v=spf1 include:i{n + 1}.test -all",) for n in range(12)}
    check = await spf(records)
    assert check.result == "permerror" and "more than 10 DNS look-ups" in check.reason


@pytest.mark.parametrize("records, phrase", [
    ({("acme.test", "TXT"): ("v=spf1 -all",)}, "bounce.acme.test does not exist (NXDOMAIN)"),
    ({("bounce.acme.test", "TXT"): ("google-site-verification=x",)}, "has no SPF record"),
])
async def test_spf_none(records: Records, phrase: str) -> None:
    check = await spf(records)
    assert check.result == "none" and phrase in check.reason


@pytest.mark.parametrize("records", [
    {("bounce.acme.test", "TXT"): SERVFAIL},
    spf_at("v=spf1 include:p.test -all") | {("p.test", "TXT"): SERVFAIL},
    spf_at("v=spf1 a:x.test -all") | {("x.test", "A"): SERVFAIL},
])
async def test_spf_dns_failure_is_temperror_never_fail(records: Records) -> None:
    check = await spf(records, ip="203.0.113.9")
    assert check.result == "temperror" and check.reason.startswith("Could not check SPF")
    assert "SERVFAIL" in check.reason


async def test_spf_empty_sender() -> None:
    check = await spf({}, mail_from="")
    assert check.result == "none" and "envelope sender is empty" in check.reason


# --- DMARC: tags, tree walk, alignment -----------------------------------------------------------

def test_walk_names_go_to_the_tld_and_jump_to_seven_labels() -> None:
    assert walk_names("mail.beta.test") == ["mail.beta.test", "beta.test", "test"]
    long = walk_names("a.b.c.d.e.f.g.h.i.test")
    assert len(long) == 8 and long[1] == "d.e.f.g.h.i.test" and long[-1] == "test"


def test_read_policy_tags() -> None:
    policy = read_policy("beta.test", "v=DMARC1; p=Reject; sp=quarantine; adkim=s; aspf=s; pct=50")
    assert (policy.p, policy.sp, policy.adkim, policy.aspf) == ("reject", "quarantine", "s", "s")
    assert policy.applied("beta.test") == ("p", "reject")
    assert policy.applied("mail.beta.test") == ("sp", "quarantine")
    assert read_policy("x.test", "v=DMARC1; rua=mailto:d@x.test").p == "none"  # RFC 7489 6.6.3 step 6
    with pytest.raises(DmarcRecordError, match="no valid p="):
        read_policy("x.test", "v=DMARC1; p=block")


@pytest.mark.parametrize("walked, org", [
    ([Published("a.b.x.test"), Published("b.x.test", ("v=DMARC1; p=none",)),
      Published("x.test", ("v=DMARC1; p=reject",)), Published("test")], "x.test"),
    ([Published("a.b.x.test"), Published("b.x.test", ("v=DMARC1; p=none; psd=n",)),
      Published("x.test", ("v=DMARC1; p=reject",)), Published("test")], "b.x.test"),
    ([Published("a.b.x.test"), Published("b.x.test"), Published("x.test"),
      Published("test", ("v=DMARC1; p=reject; psd=y",))], "x.test"),
    ([Published("a.b.x.test"), Published("b.x.test"),
      Published("x.test", ("v=DMARC1; p=none", "v=DMARC1; p=reject")), Published("test")], "a.b.x.test"),
])
def test_org_domain_by_tree_walk(walked: list[Published], org: str) -> None:
    assert find_org_domain("a.b.x.test", walked) == org


def passed(domain: str | None) -> Check:
    return Check(Result.PASS, "", domain)


DKIM_BETA = DkimOutcome(passed("beta.test"), ("beta.test",))
DKIM_NONE = DkimOutcome(Check(Result.NONE, "", None), ())


async def dmarc(records: Mapping[str, tuple[str, ...] | str], from_domain: str, spf_check: Check,
                dkim: DkimOutcome) -> Check:
    dns = FakeDns({(f"_dmarc.{name}", "TXT"): value for name, value in records.items()})
    return await check_dmarc(from_domain, spf=spf_check, dkim=dkim, dns=dns)


async def test_dmarc_passes_on_relaxed_spf_alignment() -> None:
    records = {"acme.test": ("v=DMARC1; p=reject",)}
    check = await dmarc(records, "acme.test", passed("bounce.acme.test"), DKIM_NONE)
    assert check.result == "pass" and "SPF for bounce.acme.test is aligned (aspf=r)" in check.reason


async def test_dmarc_strict_dkim_on_a_subdomain_fails_with_the_parent_policy() -> None:
    records = {"beta.test": ("v=DMARC1; p=reject; adkim=s; aspf=s",)}
    check = await dmarc(records, "mail.beta.test", passed("bounce.beta.test"), DKIM_BETA)
    assert (check.result, check.domain) == ("fail", "mail.beta.test")
    assert ("DKIM d=beta.test passes but is not aligned with From domain mail.beta.test under adkim=s"
            in check.reason)
    assert "SPF passes for bounce.beta.test but is not aligned" in check.reason
    assert "receivers apply p=reject (the record at _dmarc.beta.test)" in check.reason


async def test_dmarc_subdomain_policy_sp_is_applied() -> None:
    records = {"beta.test": ("v=DMARC1; p=none; sp=quarantine; adkim=s",)}
    check = await dmarc(records, "mail.beta.test", Check(Result.FAIL, "", "bounce.beta.test"), DKIM_BETA)
    assert check.result == "fail" and "receivers apply sp=quarantine" in check.reason


async def test_dmarc_relaxed_across_organisations_fails() -> None:
    records = {"acme.test": ("v=DMARC1; p=quarantine",), "other.test": ("v=DMARC1; p=none",)}
    dkim = DkimOutcome(passed("other.test"), ("other.test",))
    check = await dmarc(records, "acme.test", Check(Result.SOFTFAIL, "", "bounce.acme.test"), dkim)
    assert check.result == "fail" and "organisational domains other.test and acme.test differ" in check.reason
    assert "SPF is softfail for bounce.acme.test" in check.reason


async def test_dmarc_public_suffix_record_bounds_the_organisation() -> None:
    records = {"test": ("v=DMARC1; p=reject; psd=y",)}
    check = await dmarc(records, "acme.test", passed("bounce.acme.test"), DKIM_NONE)
    assert check.result == "pass" and "policy at _dmarc.test is p=reject" in check.reason


@pytest.mark.parametrize("records, result, phrase", [
    ({}, "none", "No DMARC record at _dmarc.acme.test or any parent up to _dmarc.test"),
    ({"acme.test": ("v=DMARC1; p=none", "v=DMARC1; p=reject")}, "none",
     "2 DMARC records, which means no DMARC"),
    ({"acme.test": ("v=DMARC1; p=block",)}, "permerror", "_dmarc.acme.test cannot be used"),
    ({"acme.test": SERVFAIL}, "temperror", "Could not check DMARC for acme.test"),
])
async def test_dmarc_none_permerror_temperror(
    records: dict[str, tuple[str, ...] | str], result: str, phrase: str
) -> None:
    check = await dmarc(records, "acme.test", passed("bounce.acme.test"), DKIM_NONE)
    assert check.result == result and phrase in check.reason, check.reason


async def test_dmarc_temperror_when_dkim_could_not_be_checked() -> None:
    dkim = DkimOutcome(Check(Result.TEMPERROR, "", "acme.test"), ())
    records = {"acme.test": ("v=DMARC1; p=reject",)}
    check = await dmarc(records, "acme.test", Check(Result.FAIL, "", "b.x.test"), dkim)
    assert check.result == "temperror" and "DKIM could not be checked" in check.reason


def test_author_domain_needs_exactly_one_mailbox() -> None:
    from email import policy
    from email.parser import BytesHeaderParser
    parse_header = BytesHeaderParser(policy=policy.default).parsebytes
    one = parse_header(b'From: "Acme" <Facturen@Mail.Beta.Test>\r\n\r\n')
    assert author_domain(one.get_all("From") or []) == "mail.beta.test"
    for raw, phrase in ((b"From: a@x.test\r\nFrom: b@y.test\r\n\r\n", "2 From fields"),
                        (b"From: a@x.test, b@y.test\r\n\r\n", "holds 2 addresses")):
        check = author_domain(parse_header(raw).get_all("From") or [])
        assert isinstance(check, Check) and check.result == "permerror" and phrase in check.reason


def test_outbox_envelope() -> None:
    eml = (b"Return-Path: <bounces@bounce.acme.test>\r\nX-Envelope-To: <a@x.test>\r\n"
           b"X-Envelope-To: <b@y.test>\r\nFrom: f@acme.test\r\n\r\nbody\r\n")
    assert outbox_envelope(eml) == ("bounces@bounce.acme.test", ["a@x.test", "b@y.test"],
                                    b"From: f@acme.test\r\n\r\nbody\r\n")
    with pytest.raises(ValueError, match="not an outbox file"):
        outbox_envelope(b"From: f@acme.test\r\n\r\nbody\r\n")


# --- whole verdicts against NSD, on messages our signer signed -----------------------------------

PLATFORM_IP, STRANGER_IP = "192.0.2.10", "203.0.113.9"
SELECTOR = "ar20260101abcdef"
PLATFORM = zone_text("relay.test", f"bounces IN A {PLATFORM_IP}\n"
                                   f'bounces IN TXT "v=spf1 ip4:{PLATFORM_IP} -all"')
# A CNAME beside other data: NSD refuses to load the zone and answers SERVFAIL for it.
BROKEN_PLATFORM = zone_text("relay.test", 'bounces IN CNAME elsewhere.test.\nbounces IN TXT "v=spf1 -all"')
TLD = zone_text("test", "")  # so that the tree walk's _dmarc.test is NXDOMAIN, not REFUSED
DMARC_REJECT = '_dmarc IN TXT "v=DMARC1; p=reject"'


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return generate_private_key()  # RSA-2048 costs ~100 ms: one for the module


def key_line(key: rsa.RSAPrivateKey) -> str:
    """The DKIM key record as a zone line, split in two strings as a 2048-bit key must be."""
    value = f"v=DKIM1; k=rsa; p={public_key_b64(key)}"
    return f'{SELECTOR}._domainkey IN TXT "{value[:200]}" "{value[200:]}"'


def tenant_zone(domain: str, *lines: str) -> str:
    return zone_text(domain, "\n".join(["bounce IN CNAME bounces.relay.test.", *lines]))


def signed(key: rsa.RSAPrivateKey, *, domain: str = "acme.test", sender: str = "facturen@acme.test") -> bytes:
    """A message as the relay forwards it, signed by the relay's own signer for `domain`."""
    message = (f'From: "Acme BV" <{sender}>\r\nTo: customer@example.org\r\nSubject: Invoice 42\r\n'
               f"Date: Fri, 27 Nov 2026 11:12:11 +0000\r\nMessage-ID: <42@{domain}>\r\n\r\n"
               f"Please find your invoice attached.\r\n").encode()
    return DkimSigner(private_key=key, domain=domain, selector=SELECTOR).sign(message)


@dataclass
class World:
    """The platform's zone, a tenant zone, the TLD, all on one NSD; messages go through the outbox."""

    tmp: Path
    start: NsdFactory
    key: rsa.RSAPrivateKey

    def serve(self, *acme_lines: str, platform: str = PLATFORM, extra: dict[str, str] | None = None) -> Nsd:
        zones = {"test": TLD, "relay.test": platform, "acme.test": tenant_zone("acme.test", *acme_lines)}
        return self.start(zones | (extra or {}))

    async def verdict(self, port: int, message: bytes, *, domain: str = "acme.test",
                      ip: str = PLATFORM_IP, timeout: float = 2) -> Verdict:
        """Write `message` as the relay's outbox does, read it back, judge it asking 127.0.0.1:`port`."""
        envelope = Envelope(f"bounces@bounce.{domain}", ("customer@example.org",))
        reply = await Outbox(self.tmp / "outbox").deliver(envelope, message)
        assert isinstance(reply, OutboxReply)
        mail_from, recipients, data = outbox_envelope(reply.path.read_bytes())
        assert recipients == ["customer@example.org"] and data == message
        settings = load_settings(nameservers=f"127.0.0.1:{port}", dns_timeout=timeout)
        dns = ResolverLookup.from_settings(settings)
        return await judge(data, mail_from=mail_from, client_ip=ip, dns=dns)


@pytest.fixture
def world(relay_env: Path, nsd_factory: NsdFactory, key: rsa.RSAPrivateKey) -> World:
    return World(relay_env, nsd_factory, key)


async def test_good_tenant_passes_all_three(world: World) -> None:
    nsd = world.serve(key_line(world.key), DMARC_REJECT)
    v = await world.verdict(nsd.port, signed(world.key))
    assert v.spf.result == "pass" and v.spf.domain == "bounce.acme.test"
    assert ("by ip4:192.0.2.10 in the SPF record of bounce.acme.test (published at bounces.relay.test"
            in v.spf.reason)
    assert v.to_json()["dkim"] == {
        "result": "pass", "domain": "acme.test",
        "reason": f"The signature with d=acme.test, s={SELECTOR} verifies with the key at"
                  f" {SELECTOR}._domainkey.acme.test.",
    }
    assert v.dmarc.result == "pass" and "DKIM d=acme.test is aligned (adkim=r)" in v.dmarc.reason


async def test_body_changed_after_signing_fails_dkim(world: World) -> None:
    altered = signed(world.key).replace(b"invoice attached", b"invoice attached. -- Sent by a footer")
    v = await world.verdict(world.serve(key_line(world.key), DMARC_REJECT).port, altered)
    assert v.dkim.result == "fail" and "body hash mismatch" in v.dkim.reason
    assert v.dmarc.result == "pass" and "SPF for bounce.acme.test is aligned" in v.dmarc.reason


async def test_missing_key_fails_dkim(world: World) -> None:
    v = await world.verdict(world.serve(DMARC_REJECT).port, signed(world.key))
    assert v.dkim.result == "fail" and v.dkim.domain == "acme.test"
    assert f"key not found at {SELECTOR}._domainkey.acme.test (NXDOMAIN" in v.dkim.reason


async def test_another_key_published_is_a_key_mismatch(world: World) -> None:
    nsd = world.serve(key_line(generate_private_key()), DMARC_REJECT)
    v = await world.verdict(nsd.port, signed(world.key))
    assert v.dkim.result == "fail" and "key mismatch" in v.dkim.reason


async def test_unauthorised_ip_fails_spf(world: World) -> None:
    nsd = world.serve(key_line(world.key), DMARC_REJECT)
    v = await world.verdict(nsd.port, signed(world.key), ip=STRANGER_IP)
    assert v.spf.result == "fail"
    assert f"{STRANGER_IP} is not authorised to send for bounce.acme.test: -all" in v.spf.reason
    assert v.dmarc.result == "pass"  # DKIM d=acme.test carries it alone


async def test_servfail_is_spf_temperror(world: World) -> None:
    nsd = world.serve(key_line(world.key), DMARC_REJECT, platform=BROKEN_PLATFORM)
    assert "CNAME and other data" in nsd.log()
    v = await world.verdict(nsd.port, signed(world.key))
    assert v.spf.result == "temperror"
    assert v.spf.reason.startswith("Could not check SPF") and "SERVFAIL" in v.spf.reason


async def test_strict_dkim_on_a_subdomain_from_fails_dmarc(world: World) -> None:
    strict = '_dmarc IN TXT "v=DMARC1; p=reject; adkim=s; aspf=s"'
    beta = tenant_zone("beta.test", key_line(world.key), strict)
    nsd = world.serve(extra={"beta.test": beta})
    message = signed(world.key, domain="beta.test", sender="facturen@mail.beta.test")
    v = await world.verdict(nsd.port, message, domain="beta.test")
    assert v.dkim.result == "pass" and v.spf.result == "pass"
    assert v.dmarc.result == "fail" and v.dmarc.domain == "mail.beta.test"
    assert ("DKIM d=beta.test passes but is not aligned with From domain mail.beta.test under adkim=s"
            in v.dmarc.reason)
    assert "receivers apply p=reject (the record at _dmarc.beta.test)" in v.dmarc.reason


async def test_no_dmarc_record_anywhere_is_none(world: World) -> None:
    v = await world.verdict(world.serve(key_line(world.key)).port, signed(world.key))
    assert v.dmarc.result == "none"
    assert "No DMARC record at _dmarc.acme.test or any parent up to _dmarc.test" in v.dmarc.reason
    assert 'publish one, e.g. "v=DMARC1; p=none"' in v.dmarc.reason


async def test_a_server_that_never_answers_is_temperror_everywhere(world: World) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # DNS.md: a timeout
        silent.bind(("127.0.0.1", 0))
        v = await world.verdict(silent.getsockname()[1], signed(world.key), timeout=0.3)
    for check, what in ((v.spf, "SPF"), (v.dkim, "DKIM"), (v.dmarc, "DMARC")):
        assert check.result == "temperror" and check.reason.startswith(f"Could not check {what}"), check
        assert "no answer within 0.3 s" in check.reason


async def test_resolver_lookup_mx_by_preference_null_mx_and_nxdomain(world: World) -> None:
    nsd = world.serve("@ IN MX 20 mx2.acme.test.", "@ IN MX 10 mx1.acme.test.", "nomail IN MX 0 .")
    dns = ResolverLookup.from_settings(load_settings(nameservers=f"127.0.0.1:{nsd.port}"))
    assert (await dns.mx("acme.test")).records == ("mx1.acme.test", "mx2.acme.test")
    null = await dns.mx("nomail.acme.test")
    assert null.records == () and null.void and not null.nxdomain
    missing = await dns.addresses("nothing.acme.test", ipv6=True)
    assert missing.nxdomain and missing.void and missing.error is None
