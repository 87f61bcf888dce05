"""Pure decisions of the relay, without sockets: DATA reading and smuggling, addresses, networks, tenant,
identity, the Received field, upstream reply mapping, and the authenticator's cache."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from relay.core.credentials import hash_secret, verify_secret
from relay.core.models import Client, Sender, Tenant, TenantStatus
from relay.core.replies import (
    LINE_TOO_LONG,
    SMUGGLING,
    TENANT_NOT_VERIFIED,
    TOO_BIG,
    ReplyError,
)
from relay.core.transaction import Peer, Transaction, received_field
from relay.mail.smtpdata import DataReader
from relay.policy import senders as policy
from relay.policy.rdns import ReverseDns
from relay.policy.senders import (
    Authenticator,
    auth_allowed,
    check_recipient,
    decide_identity,
    decide_tenant,
    network_client,
    tenant_header_values,
)
from relay.smtp.limits import ConnectionCounter
from relay.smtp.upstream import upstream_reply

NOW = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)


def read(raw: bytes, *, max_size: int = 10_000) -> bytes:
    """Feed `raw` the way the server does (lines up to each LF), through the final CRLF.CRLF."""
    reader = DataReader(max_size=max_size)
    lines = raw.split(b"\n")
    for index, line in enumerate(lines[:-1]):
        if reader.feed(line + b"\n"):
            assert index == len(lines) - 2, "ended early"
            return reader.content()
    raise AssertionError("no end of data")


# ------------------------------------------------------------------ DATA


def test_crlf_data_is_unstuffed() -> None:
    assert read(b"a\r\n..\r\n.b\r\n\r\n.\r\n") == b"a\r\n.\r\nb\r\n\r\n"


def test_bare_lf_lines_become_crlf_and_keep_their_dots() -> None:
    assert read(b"a\nb\n..\n..c\n\r\n.\r\n") == b"a\r\nb\r\n.\r\n.c\r\n\r\n"


@pytest.mark.parametrize("trick", [b"\n.\n", b"\r\n.\r", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r.\r"])
def test_dot_between_bare_line_breaks_is_smuggling(trick: bytes) -> None:
    reader = DataReader(max_size=10_000)
    raw = b"a" + trick + b"MAIL FROM:<x@y>\r\n.\r\n"
    ended = [reader.feed(line) for line in re.findall(rb"[^\n]*\n", raw)]
    assert ended == [False] * (len(ended) - 1) + [True], "only the real CRLF.CRLF ends the data"
    with pytest.raises(ReplyError) as raised:
        reader.content()
    assert raised.value.reply == SMUGGLING


def test_over_long_line_is_refused_even_when_cr_and_lf_arrive_in_separate_pieces() -> None:
    reader = DataReader(max_size=10_000)
    reader.feed_overlong(b"x" * 1001 + b"\r")
    assert not reader.feed(b"\n")
    assert reader.feed(b".\r\n"), "the CR of the previous piece and this LF make a CRLF"
    with pytest.raises(ReplyError) as raised:
        reader.content()
    assert raised.value.reply == LINE_TOO_LONG


def test_998_characters_is_the_longest_line() -> None:
    assert read(b"x" * 998 + b"\r\n.\r\n") == b"x" * 998 + b"\r\n"
    with pytest.raises(ReplyError):
        read(b"x" * 999 + b"\r\n.\r\n")


def test_size_limit_counts_everything_and_keeps_nothing() -> None:
    with pytest.raises(ReplyError) as raised:
        read(b"x" * 60 + b"\r\n" + b"y" * 60 + b"\r\n.\r\n", max_size=100)
    assert raised.value.reply == TOO_BIG


# ------------------------------------------------------------------ who may send


def client(name: str = "svc", *, tenants: tuple[str, ...] = (), all_tenants: bool = False,
           networks: tuple[str, ...] = ()) -> Client:
    return Client(name=name, secret_hash="x", all_tenants=all_tenants, tenants=tenants, networks=networks,
                  created_at=NOW)


def test_auth_only_over_tls_except_on_loopback() -> None:
    assert auth_allowed("127.0.0.1", tls=False) and auth_allowed("::1", tls=False)
    assert not auth_allowed("192.0.2.7", tls=False)
    assert auth_allowed("192.0.2.7", tls=True)


def test_most_specific_network_wins() -> None:
    clients = {c.name: c for c in (client("wide", networks=("10.0.0.0/8",)),
                                   client("narrow", networks=("10.1.2.0/24",)),
                                   client("v6", networks=("2001:db8::/32",)))}
    assert network_client(clients, "10.1.2.3") == clients["narrow"]
    assert network_client(clients, "10.9.9.9") == clients["wide"]
    assert network_client(clients, "2001:db8::1") == clients["v6"]
    assert network_client(clients, "192.0.2.1") is None


@pytest.mark.parametrize(("peer", "ip"), [
    (("::ffff:127.0.0.1", 2525, 0, 0), "127.0.0.1"),
    (("::FFFF:10.20.0.5", 2525, 0, 0), "10.20.0.5"),
    (("127.0.0.1", 2525), "127.0.0.1"),
    (("::1", 2525, 0, 0), "::1"),
    (("2001:db8::7", 2525, 0, 0), "2001:db8::7"),
    (("::ffff:0:a14:5", 2525, 0, 0), "::ffff:0:a14:5"),  # IPv4-translated (RFC 2765), not mapped
    (None, ""),
])
def test_an_ipv4_mapped_peer_is_its_ipv4_address(peer: object, ip: str) -> None:
    """RFC 4291 2.5.5.2: a dual-stack listener sees an IPv4 client as ::ffff:a.b.c.d."""
    assert policy.client_ip(peer) == ip


def test_ipv4_mapped_loopback_and_networks_are_judged_as_ipv4() -> None:
    assert auth_allowed("::ffff:127.0.0.1", tls=False) and policy.is_loopback("::ffff:127.0.0.2")
    assert not auth_allowed("::ffff:192.0.2.7", tls=False)
    clients = {c.name: c for c in (client("erp", networks=("10.20.0.0/24",)),
                                   client("local", networks=("127.0.0.0/8",)))}
    assert network_client(clients, "::ffff:10.20.0.5") == clients["erp"]
    assert network_client(clients, "::ffff:127.0.0.1") == clients["local"]
    assert policy.session_client(clients, ip="::ffff:127.0.0.1", tls=False, auth_name=None) == clients["local"]
    assert network_client(clients, "::ffff:192.0.2.1") is None


def test_one_client_is_one_count_over_ipv4_and_ipv4_mapped_ipv6() -> None:
    counter = ConnectionCounter(max_total=10, max_per_ip=1)
    assert counter.acquire("::ffff:10.0.0.1")
    assert counter.count("10.0.0.1") == 1
    assert not counter.acquire("10.0.0.1")  # the same client: over its limit of one
    counter.release("10.0.0.1")
    assert counter.total == 0 and counter.acquire("10.0.0.1")


async def test_reverse_dns_asks_for_the_ipv4_address_of_a_mapped_peer() -> None:
    asked: list[str] = []

    def resolve(ip: str) -> str | None:
        asked.append(ip)
        return "app1.internal"

    rdns = ReverseDns(resolve=resolve)
    try:
        assert await rdns.lookup("::ffff:10.0.0.5") == "app1.internal"
        assert await rdns.lookup("10.0.0.5") == "app1.internal"  # the same entry, from the cache
    finally:
        rdns.close()
    assert asked == ["10.0.0.5"]


@pytest.mark.parametrize("address", ["u@example.test", "u%x@y.test", "u!x@y.test", '"u@x"@y.test',
                                     '"a b"@y.test', "first.last+tag@sub.example.test"])
def test_plain_addresses_pass_verbatim(address: str) -> None:
    assert check_recipient(address) == address


@pytest.mark.parametrize("address", ["@a:u@b.test", "u@[127.0.0.1]", "u@x@y.test", "u", '"u"x@y.test',
                                     "u\r@y.test", "u@y.test\n", "u\0@y.test", "ü@y.test", "u@y..test"])
def test_other_addresses_are_refused(address: str) -> None:
    with pytest.raises(ReplyError) as raised:
        check_recipient(address)
    assert (raised.value.reply.code, raised.value.reply.enhanced) == (501, "5.1.3")


# ------------------------------------------------------------------ tenant and identity


def tenant(tenant_id: str, status: TenantStatus = TenantStatus.VERIFIED, name: str = "Acme") -> Tenant:
    sender = Sender(name=name, email=f"billing@{tenant_id}.test", domain=f"{tenant_id}.test")
    return Tenant(id=tenant_id, sender=sender, status=status, created_at=NOW, updated_at=NOW)


TENANTS = {t.id: t for t in (tenant("acme"), tenant("beta"), tenant("newco", TenantStatus.PENDING, "NewCo"),
                             tenant("platform", name="Accounton"))}


def test_tenant_header_is_read_from_raw_lines() -> None:
    message = b"Subject: x\r\nX-Relay-Tenant:\r\n  acme \r\nx-relay-tenant: acme\r\n\r\nX-Relay-Tenant: beta\r\n"
    assert tenant_header_values(message, "X-Relay-Tenant") == ["acme", "acme"]


def test_single_tenant_client_needs_no_header_but_may_not_name_another() -> None:
    only_acme = client(tenants=("acme",))
    assert decide_tenant(only_acme, [], TENANTS).id == "acme"
    assert decide_tenant(only_acme, ["acme"], TENANTS).id == "acme"
    with pytest.raises(ReplyError, match="not allowed"):
        decide_tenant(only_acme, ["beta"], TENANTS)


def test_multi_tenant_client_needs_a_known_tenant_in_scope() -> None:
    with pytest.raises(ReplyError, match="name one"):
        decide_tenant(client(all_tenants=True), [], TENANTS)
    with pytest.raises(ReplyError, match="Unknown"):
        decide_tenant(client(all_tenants=True), ["ghost"], TENANTS)
    with pytest.raises(ReplyError, match="more than once"):
        decide_tenant(client(all_tenants=True), ["acme", "beta"], TENANTS)
    assert decide_tenant(client(tenants=("acme", "beta")), ["beta"], TENANTS).id == "beta"


def test_verified_tenant_sends_as_itself() -> None:
    decided = decide_identity(TENANTS["acme"], TENANTS, platform_sender="platform")
    assert (decided.identity.display_name, decided.identity.address, decided.identity.reply_to) == \
        ("Acme", "billing@acme.test", None)
    assert decided.signer_tenant == "acme" and decided.sender.bounce_address == "bounces@bounce.acme.test"


def test_unverified_tenant_sends_as_the_platform_or_not_at_all() -> None:
    decided = decide_identity(TENANTS["newco"], TENANTS, platform_sender="platform")
    assert decided.identity.display_name == "NewCo via Accounton"
    assert decided.identity.address == "billing@platform.test"
    assert decided.identity.reply_to == "billing@newco.test"
    assert decided.signer_tenant == "platform"
    for platform in (None, "newco", "ghost"):
        with pytest.raises(ReplyError) as raised:
            decide_identity(TENANTS["newco"], TENANTS, platform_sender=platform)
        assert raised.value.reply == TENANT_NOT_VERIFIED


# ------------------------------------------------------------------ Received, upstream replies


def test_received_field_never_carries_client_controlled_junk() -> None:
    tx = Transaction(id="ABC", peer=Peer(ip="192.0.2.7", helo="evil\rX-Injected: 1", rdns="bad name", tls=True),
                     client="billing", authenticated=True, mail_from="a@b.test", recipients=("c@d.test",),
                     data=b"", received_at=NOW)
    field = received_field(tx, hostname="relay.test")
    assert field == (b"Received: from unknown (unknown [192.0.2.7])\r\n\tby relay.test with ESMTPSA id ABC;\r\n"
                     b"\tFri, 14 Mar 2025 09:26:53 +0000\r\n")
    assert b"billing" not in field


@pytest.mark.parametrize("code, message, expected", [
    (550, "5.1.1 No such user", (550, "5.1.1")),
    (452, "4.2.2 Over quota", (452, "4.2.2")),
    (554, "4.1.1 class mismatch", (554, "5.0.0")),
    (451, "Try later", (451, "4.0.0")),
    (421, "4.3.2 Closing", (451, "4.4.1")),
    (250, "odd", (451, "4.4.1")),
])
def test_upstream_reply_keeps_class_and_enhanced_code(code: int, message: str, expected: tuple[int, str]) -> None:
    reply = upstream_reply(code, message, "the message")
    assert (reply.code, reply.enhanced) == expected


def test_upstream_text_is_one_clean_line() -> None:
    reply = upstream_reply(550, "5.7.1 first\nsecond\x00\x1b[31m", "the message")
    assert "\n" not in reply.text and "\x00" not in reply.text and "\x1b" not in reply.text


# ------------------------------------------------------------------ authenticator


async def test_authenticator_caches_successes_and_notices_a_new_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = verify_secret

    def counting(secret: str, stored: str) -> bool:
        calls.append(stored)
        return real(secret, stored)

    monkeypatch.setattr(policy, "verify_secret", counting)
    auth = Authenticator()
    try:
        await _cache_checks(auth, calls)
    finally:
        auth.close()


async def _cache_checks(auth: Authenticator, calls: list[str]) -> None:
    clients = {"svc": Client("svc", hash_secret("s1"), False, ("acme",), (), NOW)}
    assert await auth.authenticate(clients, "svc", "s1", ip="127.0.0.1") == clients["svc"]
    assert await auth.authenticate(clients, "svc", "s1", ip="127.0.0.1") == clients["svc"]
    assert len(calls) == 1, "the second success came from the cache"
    assert await auth.authenticate(clients, "svc", "wrong", ip="127.0.0.1") is None
    assert len(calls) == 2, "a different secret is checked with scrypt"
    clients = {"svc": Client("svc", hash_secret("s2"), False, ("acme",), (), NOW)}
    assert await auth.authenticate(clients, "svc", "s1", ip="127.0.0.1") is None, "the old secret no longer works"
    assert await auth.authenticate(clients, "nobody", "s1", ip="127.0.0.1") is None
