"""`relay-admin validate` against a real NSD on loopback: one zone per situation of DNS.md."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import dns.asyncresolver
import dns.nameserver
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.core import dkimkeys
from relay.core.models import DkimKey, Role, Tenant, TenantStatus, User
from relay.core.settings import HostPort, load_settings
from relay.core.store import Store, open_store, utcnow
from relay.domains.dnscheck import DnsClient
from relay.domains.validation import validate_tenant
from tests.conftest import CliResult
from tests.factories import make_tenant
from tests.nsd import Nsd, zone_text

Cli = Callable[..., CliResult]
NsdFactory = Callable[[dict[str, str]], Nsd]

TARGET_A, TARGET_AAAA = "192.0.2.10", "2001:db8::10"
TARGET_SPF = "v=spf1 ip4:192.0.2.10 -all"
# The platform's return-path target zone; first in every NSD, so the start-up poll sees a healthy zone.
RELAY_ZONE = zone_text(
    "relay.test",
    f'bounces IN A {TARGET_A}\nbounces IN AAAA {TARGET_AAAA}\nbounces IN TXT "{TARGET_SPF}"',
)


def txt(value: str, size: int = 255) -> str:
    """A TXT value in zone-file syntax: quoted strings of at most `size` characters."""
    chunks = [value[i : i + size] for i in range(0, len(value), size)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


@cache
def other_key(bits: int = 2048) -> str:
    return dkimkeys.public_key_b64(rsa.generate_private_key(public_exponent=65537, key_size=bits))


@dataclass
class Site:
    """A tenant in the store and the NSD that serves its zones."""

    store: Store
    tenant: Tenant
    key: DkimKey
    monkeypatch: pytest.MonkeyPatch
    nsd_factory: NsdFactory
    nsd: Nsd | None = None

    @property
    def domain(self) -> str:
        return self.tenant.sender.domain

    @property
    def dkim_host(self) -> str:
        return f"{self.key.selector}._domainkey"

    def dkim(self, value: str | None = None, *, host: str | None = None, size: int = 200) -> str:
        """A zone line for the DKIM record; by default ours, split in two strings."""
        value = f"v=DKIM1; k=rsa; p={self.key.public_key_b64}" if value is None else value
        return f"{host or self.dkim_host} IN TXT {txt(value, size)}"

    @property
    def cname(self) -> str:
        return "bounce IN CNAME bounces.relay.test."

    def serve(self, body: str, *, origin: str | None = None, negative_ttl: int = 300,
              extra: dict[str, str] | None = None) -> Nsd:
        origin = origin or self.domain
        zones = {"relay.test": RELAY_ZONE, origin: zone_text(origin, body, negative_ttl=negative_ttl)}
        self.nsd = self.nsd_factory({**zones, **(extra or {})})
        self.monkeypatch.setenv("RELAY_NAMESERVERS", f"127.0.0.1:{self.nsd.port}")
        return self.nsd

    def reload(self) -> Tenant:
        tenant = self.store.get_tenant(self.tenant.id)
        assert tenant is not None
        return tenant


@pytest.fixture
def make_site(
    relay_env: Path, monkeypatch: pytest.MonkeyPatch, nsd_factory: NsdFactory
) -> Iterator[Callable[..., Site]]:
    store = open_store(load_settings())
    store.add_user(User("olivia", Role.OWNER, utcnow()))
    store.add_user(User("alex", Role.ACCOUNTANT, utcnow()))

    def make(domain: str = "acme.test", **kwargs: Any) -> Site:
        tenant, key = make_tenant(store, load_settings(), "acme", domain=domain, **kwargs)
        return Site(store, tenant, key, monkeypatch, nsd_factory)

    yield make
    store.close()


def validate(cli: Cli, tenant: str = "acme") -> tuple[int, dict[str, Any]]:
    result = cli("validate", tenant, "--as", "olivia", "--json")
    assert result.err == ""
    return result.code, json.loads(result.out)


def check(report: dict[str, Any], purpose: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in report["checks"] if c["purpose"] == purpose]
    [one] = found
    return one


# --- correct records --------------------------------------------------------------------------


def test_correct_records_verify_the_tenant(cli: Cli, make_site: Callable[..., Site]) -> None:
    site = make_site()
    # The key split over two strings (legitimate); capitals in the target (NSD lowers them anyway).
    site.serve(f"{site.dkim()}\nbounce IN CNAME BOUNCES.Relay.Test.\n_dmarc IN TXT \"v=DMARC1; p=reject\"")
    code, report = validate(cli)
    assert code == 0 and report["verified"] is True and report["tenant"] == "acme"
    assert [c["status"] for c in report["checks"]] == ["ok", "ok", "ok"]
    dkim = check(report, "dkim")
    assert dkim["found"] == [f"v=DKIM1; k=rsa; p={site.key.public_key_b64}"]
    assert dkim["expected"] == dkim["found"][0] and "key is ours" in dkim["diagnosis"]
    assert [f.lower() for f in check(report, "return-path")["found"]] == ["bounces.relay.test"]
    assert set(report["checks"][0]) >= {"purpose", "type", "name", "status", "expected", "found", "diagnosis"}
    tenant = site.reload()
    assert tenant.status == TenantStatus.VERIFIED and tenant.verified_at is not None
    assert tenant.last_validated_at == tenant.verified_at
    assert [c.status.value for c in site.store.latest_checks("acme")] == ["ok", "ok", "ok"]
    assert site.store.list_audit("acme")[-1].detail == "verified"


def test_dkim_record_is_compared_by_meaning(cli: Cli, make_site: Callable[..., Site]) -> None:
    site = make_site()
    key = site.key.public_key_b64
    # No v=, tags reordered, whitespace around and inside the key, a trailing `;`: all harmless.
    spaced = " ".join(key[i : i + 64] for i in range(0, len(key), 64))
    site.serve(f"{site.dkim(f'  p = {spaced} ;k=rsa; t=s ;  ')}\n{site.cname}")
    code, report = validate(cli)
    assert code == 0, report
    assert check(report, "dkim")["status"] == "ok"


# --- DKIM mistakes ------------------------------------------------------------------------------


def dkim_mistake(site: Site, mistake: str) -> str:
    key = site.key.public_key_b64
    ours = f"v=DKIM1; k=rsa; p={key}"
    return {
        "quotes": site.dkim(f'"{ours}"'),
        "cut-at-255": f"{site.dkim_host} IN TXT {txt(ours[:255])}",
        "revoked": site.dkim("v=DKIM1; k=rsa; p="),
        "two-records": f"{site.dkim()}\n{site.dkim(f'v=DKIM1; k=rsa; p={other_key()}')}",
        "another-key": site.dkim(f"v=DKIM1; k=rsa; p={other_key()}"),
        "too-small": site.dkim(f"v=DKIM1; k=rsa; p={other_key(1024)}"),
        "bare-key": site.dkim(key),
        "v-not-first": site.dkim(f"k=rsa; v=DKIM1; p={key}"),
    }[mistake]


@pytest.mark.parametrize(
    ("mistake", "words"),
    [
        ("quotes", ["literal quotes", "remove the quotes", "the key inside is ours"]),
        ("cut-at-255", ["incomplete", "cut off at a 255-character string", "paste", "at most 255"]),
        ("revoked", ["p= tag is empty", "revoked"]),
        ("two-records", ["2 DKIM records", "undefined", "keep only the one with our key"]),
        ("another-key", ["another key than ours", "replace"]),
        ("too-small", ["1024 bits", "too small"]),
        ("bare-key", ["Only the key itself", "v=DKIM1; k=rsa; p="]),
        ("v-not-first", ["v= is not the first tag"]),
    ],
)
def test_dkim_mistakes_are_named(
    cli: Cli, make_site: Callable[..., Site], mistake: str, words: list[str]
) -> None:
    site = make_site()
    line = dkim_mistake(site, mistake)
    site.serve(f"{line}\n{site.cname}")
    code, report = validate(cli)
    dkim = check(report, "dkim")
    assert code == 1 and report["verified"] is False
    assert dkim["status"] == "mismatch"
    for word in words:
        assert word in dkim["diagnosis"], dkim["diagnosis"]
    # `found` is what DNS returned: the strings of each record joined.
    assert len(dkim["found"]) == (2 if mistake == "two-records" else 1)
    assert site.reload().status == TenantStatus.PENDING


@pytest.mark.parametrize(
    ("host", "probe", "words"),
    [
        ("{sel}._domainkey.acme.test", "{sel}._domainkey.acme.test.acme.test",
         ["appended acme.test a second time", "enter only `{sel}._domainkey` as the host name"]),
        ("{sel}.domainkey", "{sel}.domainkey.acme.test", ["underscore of `_domainkey` is missing"]),
        ("_domainkey", "_domainkey.acme.test", ["selector `{sel}` is missing"]),
        ("{sel}._domainkey.mail", "{sel}._domainkey.mail.acme.test",
         ["under mail.acme.test instead of acme.test"]),
    ],
    ids=["zone-twice", "no-underscore", "no-selector", "subdomain"],
)
def test_dkim_at_a_near_miss_is_found_and_renamed(
    cli: Cli, make_site: Callable[..., Site], host: str, probe: str, words: list[str]
) -> None:
    site = make_site()
    sel = site.key.selector
    site.serve(f"{site.dkim(host=host.format(sel=sel))}\n{site.cname}")
    code, report = validate(cli)
    dkim = check(report, "dkim")
    assert code == 1 and dkim["status"] == "missing"
    assert f"one with our key is at {probe.format(sel=sel)}: " in dkim["diagnosis"], dkim["diagnosis"]
    for word in words:
        assert word.format(sel=sel) in dkim["diagnosis"], dkim["diagnosis"]
    assert dkim["found"] == [f"{probe.format(sel=sel)} TXT v=DKIM1; k=rsa; p={site.key.public_key_b64}"]


def test_dkim_at_the_parent_domain_is_found(cli: Cli, make_site: Callable[..., Site]) -> None:
    site = make_site(domain="shop.acme.test", email="billing@shop.acme.test")
    sel = site.key.selector
    site.serve(f"{site.dkim(host=f'{sel}._domainkey')}\nbounce.shop IN CNAME bounces.relay.test.",
               origin="acme.test")
    code, report = validate(cli)
    dkim = check(report, "dkim")
    assert code == 1 and dkim["status"] == "missing"
    assert f"is at {sel}._domainkey.acme.test" in dkim["diagnosis"]
    assert "parent domain acme.test" in dkim["diagnosis"]
    assert dkim["found"] == [f"{sel}._domainkey.acme.test TXT v=DKIM1; k=rsa; p={site.key.public_key_b64}"]


# --- NXDOMAIN vs NODATA -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "words", "found"),
    [
        ("", ["nothing exists at {name} (NXDOMAIN)", "up to 5 minutes"], []),
        ("{host} IN A 192.0.2.7", ["{name} has A data but no TXT record"], ["A 192.0.2.7"]),
        ("x.{host} IN TXT \"hello\"", ["{name} exists but has no records of its own"], []),
        ("{host} IN CNAME gone.acme.test.", ["alias (CNAME) of gone.acme.test, which does not exist"],
         ["CNAME gone.acme.test"]),
        ("{host} IN TXT \"v=spf1 -all\"", ["has TXT data, but no DKIM key"], ["v=spf1 -all"]),
    ],
    ids=["nxdomain", "nodata-other-type", "nodata-empty-nonterminal", "cname-to-nothing", "not-dkim"],
)
def test_missing_dkim_says_what_is_at_the_name(
    cli: Cli, make_site: Callable[..., Site], body: str, words: list[str], found: list[str]
) -> None:
    site = make_site()
    name = f"{site.dkim_host}.acme.test"
    site.serve(body.format(host=site.dkim_host) + f"\n{site.cname}")
    code, report = validate(cli)
    dkim = check(report, "dkim")
    assert code == 1 and dkim["status"] == "missing"
    for word in words:
        assert word.format(name=name) in dkim["diagnosis"], dkim["diagnosis"]
    assert dkim["found"] == found
    assert f"host `{site.dkim_host}`" in dkim["diagnosis"]


# --- return path --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "words", "found"),
    [
        ("bounce IN CNAME bounces.other.test.", "mismatch",
         ["points to bounces.other.test, not to bounces.relay.test"], ["bounces.other.test"]),
        ("bounce IN CNAME bounces.relay.test", "mismatch",
         ["got acme.test appended", "`bounces.relay.test.` with a final dot"],
         ["bounces.relay.test.acme.test"]),
        (f"bounce IN A {TARGET_A}\nbounce IN AAAA {TARGET_AAAA}\nbounce IN TXT \"{TARGET_SPF}\"", "ok",
         ["flattened CNAME", "DNS only"], [f"A {TARGET_A}", f"AAAA {TARGET_AAAA}", f"TXT {TARGET_SPF}"]),
        ("bounce IN A 104.16.1.1", "mismatch", ["proxied", "DNS only", "CNAME to bounces.relay.test"],
         ["A 104.16.1.1"]),
        ("bounce IN TXT \"v=spf1 -all\"", "mismatch", ["has TXT data but no CNAME"], ["TXT v=spf1 -all"]),
        ("bounce.acme.test IN CNAME bounces.relay.test.", "missing",
         ["one is at bounce.acme.test.acme.test", "appended acme.test a second time", "only `bounce`"],
         ["bounce.acme.test.acme.test CNAME bounces.relay.test"]),
        ("", "missing", ["nothing exists at bounce.acme.test (NXDOMAIN)", "add a CNAME with host `bounce`"],
         []),
    ],
    ids=["other-target", "target-zone-appended", "flattened", "proxied", "txt-only", "zone-twice", "nxdomain"],
)
def test_return_path(
    cli: Cli, make_site: Callable[..., Site], body: str, status: str, words: list[str], found: list[str]
) -> None:
    site = make_site()
    site.serve(f"{site.dkim()}\n{body}")
    code, report = validate(cli)
    rp = check(report, "return-path")
    assert rp["status"] == status and rp["expected"] == "bounces.relay.test"
    for word in words:
        assert word in rp["diagnosis"], rp["diagnosis"]
    assert rp["found"] == found
    assert code == (0 if status == "ok" else 1)


# --- DMARC: never required ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ("", "warning", ["No DMARC record at _dmarc.acme.test", "advice, not a requirement"]),
        ('_dmarc IN TXT "v=DMARC1; p=none"', "ok", ["p=none", "take no action"]),
        ('_dmarc IN TXT "v=DMARC1; p=none"\n_dmarc IN TXT "v=DMARC1; p=reject"', "warning",
         ["Two DMARC records mean no DMARC at all (RFC 7489 6.6.3)"]),
        ('@ IN TXT "v=DMARC1; p=quarantine"', "warning", ["at acme.test itself", "move it to _dmarc.acme.test"]),
        ('_dmarc IN TXT "v=DMARC1; p=reject; aspf=s"', "warning",
         ["strict SPF alignment", "bounce.acme.test", "DKIM alone"]),
        ('_dmarc IN TXT "v=DMARC1; p=reject; adkim=s"', "ok", ["adkim=s is fine"]),
        ('_dmarc IN TXT "v=DMARC1; rua=mailto:d@acme.test"', "warning", ["no valid p= tag"]),
    ],
    ids=["missing", "p-none", "two", "apex", "aspf-strict", "adkim-strict", "no-policy"],
)
def test_dmarc_is_checked_but_never_blocks(
    cli: Cli, make_site: Callable[..., Site], body: str, status: str, words: list[str]
) -> None:
    site = make_site()
    site.serve(f"{site.dkim()}\n{site.cname}\n{body}")
    code, report = validate(cli)
    dmarc = check(report, "dmarc")
    assert dmarc["status"] == status and dmarc["required"] is False
    for word in words:
        assert word in dmarc["diagnosis"], dmarc["diagnosis"]
    if not body:
        assert dmarc["expected"] == "v=DMARC1; p=none" and dmarc["found"] == []
    assert code == 0 and report["verified"] is True


def test_dmarc_of_the_organisational_domain_applies(cli: Cli, make_site: Callable[..., Site]) -> None:
    site = make_site(domain="shop.acme.test", email="billing@shop.acme.test")
    sel = site.key.selector
    site.serve(f"{site.dkim(host=f'{sel}._domainkey.shop')}\nbounce.shop IN CNAME bounces.relay.test.\n"
               f'_dmarc IN TXT "v=DMARC1; p=reject"', origin="acme.test")
    code, report = validate(cli)
    dmarc = check(report, "dmarc")
    assert code == 0 and dmarc["status"] == "ok"
    assert "the one of acme.test applies" in dmarc["diagnosis"]
    assert dmarc["found"] == ["_dmarc.acme.test TXT v=DMARC1; p=reject"]


# --- could not check: SERVFAIL, REFUSED, timeout ------------------------------------------------


def assert_could_not_check(report: dict[str, Any], reason: str) -> None:
    assert report["outcome"] == "could not check"
    for c in report["checks"]:
        assert c["status"] == "error" and c["found"] == []
        assert c["diagnosis"].startswith(f"Could not check {c['name']}")
        assert reason in c["diagnosis"], c["diagnosis"]
        assert "missing" not in c["diagnosis"]


def test_servfail_from_a_zone_that_fails_to_load(cli: Cli, make_site: Callable[..., Site]) -> None:
    site = make_site()
    # A CNAME beside other data: NSD refuses to load the whole zone and answers SERVFAIL.
    nsd = site.serve(f"{site.dkim()}\n{site.cname}\nbounce IN TXT \"v=spf1 -all\"")
    assert "CNAME and other data" in nsd.log()
    code, report = validate(cli)
    assert code == 1 and report["verified"] is False
    assert_could_not_check(report, "SERVFAIL")
    assert "zone failed to load" in check(report, "return-path")["diagnosis"]
    assert "CNAME beside other records" in check(report, "return-path")["diagnosis"]
    assert site.reload().status == TenantStatus.PENDING
    assert [c.status.value for c in site.store.latest_checks("acme")] == ["error"] * 3
    assert site.store.list_audit("acme")[-1].detail == "could not check"


def test_refused_for_a_zone_the_server_does_not_serve(cli: Cli, make_site: Callable[..., Site]) -> None:
    site = make_site()
    nsd = site.serve("", origin="elsewhere.test")
    code, report = validate(cli)
    assert code == 1
    assert_could_not_check(report, "REFUSED")
    assert f"127.0.0.1:{nsd.port} answered REFUSED" in check(report, "dkim")["diagnosis"]
    assert "does not serve this domain" in check(report, "dkim")["diagnosis"]
    assert site.reload().status == TenantStatus.PENDING


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A UDP socket that is bound but never read: a name server that never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_a_server_that_never_answers_times_out_quickly(
    cli: Cli, make_site: Callable[..., Site], silent_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_site()
    monkeypatch.setenv("RELAY_NAMESERVERS", f"127.0.0.1:{silent_server}")
    monkeypatch.setenv("RELAY_DNS_TIMEOUT", "0.5s")
    started = time.monotonic()
    code, report = validate(cli)
    elapsed = time.monotonic() - started
    assert code == 1
    assert_could_not_check(report, "no answer within 0.5 s")
    assert elapsed < 3, "the questions of one tenant run concurrently, each bounded by the timeout"


def test_verified_tenant_whose_dns_cannot_be_checked_stays_verified(
    cli: Cli, make_site: Callable[..., Site], silent_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = make_site(status=TenantStatus.VERIFIED)
    monkeypatch.setenv("RELAY_NAMESERVERS", f"127.0.0.1:{silent_server}")
    monkeypatch.setenv("RELAY_DNS_TIMEOUT", "0.3")
    code, report = validate(cli)
    assert_could_not_check(report, "no answer within 0.3 s")
    assert code == 0 and report["verified"] is True and report["status"] == "verified"
    tenant = site.reload()
    assert tenant.status == TenantStatus.VERIFIED and tenant.verified_at == site.tenant.verified_at
    assert tenant.last_validated_at is not None
    assert [c.status.value for c in site.store.latest_checks("acme")] == ["error"] * 3
    assert site.store.list_audit("acme")[-1].detail == "could not check"


def test_verified_tenant_with_a_missing_record_is_degraded(
    cli: Cli, make_site: Callable[..., Site]
) -> None:
    site = make_site(status=TenantStatus.VERIFIED)
    site.serve(site.cname)
    code, report = validate(cli)
    assert check(report, "dkim")["status"] == "missing"
    assert report["outcome"] == "not verified" and report["status"] == "degraded"
    assert code == 1 and report["verified"] is False
    tenant = site.reload()
    assert tenant.status == TenantStatus.DEGRADED and tenant.failing_since == tenant.last_validated_at
    assert [e.action for e in site.store.list_audit("acme")][-2:] == ["status.change", "validate"]
    assert site.store.list_audit("acme")[-1].detail == "not verified"


# --- freshness ----------------------------------------------------------------------------------


def test_a_record_added_between_two_validations_is_seen_at_once(
    cli: Cli, make_site: Callable[..., Site]
) -> None:
    site = make_site()
    # RFC 2308 5: the negative TTL is min(SOA TTL 300, SOA minimum 120).
    nsd = site.serve(site.cname, negative_ttl=120)
    code, report = validate(cli)
    assert code == 1 and check(report, "dkim")["status"] == "missing"
    assert "up to 2 minutes (the zone's negative TTL)" in check(report, "dkim")["diagnosis"]
    nsd.update({"acme.test": zone_text("acme.test", f"{site.cname}\n{site.dkim()}", serial=2,
                                       negative_ttl=120)})
    code, report = validate(cli)
    assert code == 0 and check(report, "dkim")["status"] == "ok"
    assert site.reload().status == TenantStatus.VERIFIED


async def test_without_nameservers_the_authoritative_servers_are_found_and_asked(
    make_site: Callable[..., Site], monkeypatch: pytest.MonkeyPatch
) -> None:
    site = make_site()
    nsd = site.serve(f"{site.dkim()}\n{site.cname}")
    monkeypatch.delenv("RELAY_NAMESERVERS")
    settings = load_settings()
    assert settings.nameservers == []
    # NSD plays the system resolver for the walk to the zone cut; the zone's NS (ns1.acme.test,
    # 127.0.0.1) is then asked directly, on NSD's port since tests cannot bind port 53.
    bootstrap = dns.asyncresolver.Resolver(configure=False)
    bootstrap.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", nsd.port)]
    client = DnsClient(settings, bootstrap=bootstrap, authoritative_port=nsd.port)
    report = await validate_tenant(site.store, settings, "acme", actor="olivia", client=client)
    assert report.verified and [c.status.value for c in report.checks] == ["ok", "ok", "warning"]
    expected = [HostPort("127.0.0.1", nsd.port)]
    assert await client.servers_for(f"{site.dkim_host}.acme.test") == expected  # zone acme.test
    assert await client.servers_for("bounces.relay.test") == expected  # zone relay.test


# --- the command --------------------------------------------------------------------------------


def test_accountant_may_not_validate(cli: Cli, make_site: Callable[..., Site]) -> None:
    site = make_site()
    result = cli("validate", "acme", "--as", "alex")
    assert result.code == 3 and "permission denied" in result.err
    assert site.store.latest_checks("acme") == [] and site.reload().last_validated_at is None


def test_unknown_tenant_is_a_usage_error(cli: Cli, make_site: Callable[..., Site]) -> None:
    make_site()
    result = cli("validate", "nobody", "--as", "olivia")
    assert result.code == 2 and result.out == ""
    assert result.err.count("\n") == 1 and "no tenant 'nobody'" in result.err


def test_text_output_has_one_block_per_check(cli: Cli, make_site: Callable[..., Site]) -> None:
    site = make_site()
    site.serve(f"{site.dkim(host=f'{site.dkim_host}.acme.test')}\nbounce IN A 104.16.1.1")
    result = cli("validate", "acme", "--as", "olivia")
    assert result.code == 1
    assert result.out.startswith("acme: not verified (pending)")
    blocks = result.out.strip().split("\n\n")[1:]
    assert [b.splitlines()[0] for b in blocks] == [
        f"[MISSING] dkim: TXT {site.dkim_host}.acme.test",
        "[MISMATCH] return-path: CNAME bounce.acme.test",
        "[WARNING] dmarc (optional): TXT _dmarc.acme.test",
    ]
    for block in blocks:
        assert [line.split(":")[0].strip() for line in block.splitlines()[1:3]] == ["expected", "found"]
        assert "diagnosis: " in block
    assert "found:     A 104.16.1.1" in result.out
