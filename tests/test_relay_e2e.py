"""End to end: a real client sends through the relay to a recording upstream, and what upstream received
has one From (ours), the envelope on the return-path host, no forbidden headers, and a DKIM signature
that dkimpy verifies against the records the admin side issued, served by NSD."""

from __future__ import annotations

import base64
import email.header
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest

from relay.core.models import DkimKey, Tenant, TenantStatus
from relay.core.settings import Settings
from relay.core.store import Store, open_store
from tests.factories import make_tenant
from tests.nsd import Nsd
from tests.peers import require_binary
from tests.relay_harness import (
    RCPT,
    RecordingUpstream,
    add_client,
    dkim_zone,
    make_settings,
    nsd_txt,
    relay_running,
    send,
    smtp_upstream,
    values,
)
from tests.snapshot import Stores


@dataclass
class World:
    settings: Settings
    store: Store
    nsd: Nsd
    acme: tuple[Tenant, DkimKey]
    platform: tuple[Tenant, DkimKey]
    secrets: dict[str, str]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, backend_stores: Stores) -> Iterator[World]:
    """Tenants, keys, clients and NSD for the whole module (RSA keys and NSD cost time)."""
    require_binary("nsd", "nsd")  # fails under `make test`, skips under a bare pytest
    tmp = tmp_path_factory.mktemp("e2e")
    settings = make_settings(tmp, database=backend_stores.new(tmp), platform_sender="platform")
    store = open_store(settings)
    acme = make_tenant(store, settings, "acme", name="Acme Comptabilité", domain="acme.test",
                       status=TenantStatus.VERIFIED)
    platform = make_tenant(store, settings, "platform", name="Accounton", email="noreply@accounton.test",
                           domain="accounton.test", status=TenantStatus.VERIFIED)
    make_tenant(store, settings, "newco", name="NewCo", domain="newco.test")  # pending
    secrets = {
        "billing": add_client(store, "billing", tenants=("acme",)),
        "multi": add_client(store, "multi", all_tenants=True),
    }
    (tmp / "nsd").mkdir()
    nsd = Nsd(tmp / "nsd", dkim_zone([acme, platform], settings)).start()
    yield World(settings, store, nsd, acme, platform, secrets)
    nsd.stop()
    store.close()
    backend_stores.discard(settings.database)


def dkim_tags(data: bytes) -> dict[str, str]:
    [signature] = values(data, "DKIM-Signature")
    return {k.strip(): re.sub(r"\s+", "", v) for k, v in (t.split("=", 1) for t in signature.split(";") if "=" in t)}


def assert_enforced(data: bytes, world: World, *, tenant: Tenant, signer: tuple[Tenant, DkimKey]) -> None:
    """What every forwarded message must satisfy (SPEC: Relay behaviour)."""
    assert data.count(b"\r\n") == data.count(b"\n"), "only CRLF line endings"
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    [from_value] = values(data, "From")
    assert f"<{signer[0].sender.email}>" in from_value
    for name in ("sender", "return-path", "bcc", "authentication-results", "x-relay-tenant"):
        assert values(data, name) == [], name
    names = [line.split(b":", 1)[0].strip().lower() for line in data.split(b"\r\n\r\n")[0].split(b"\r\n")]
    assert not [n for n in names if n.startswith((b"resent-", b"arc-"))]
    tags = dkim_tags(data)
    _, key = signer
    assert (tags["a"], tags["c"], tags["d"], tags["s"]) == ("rsa-sha256", "relaxed/relaxed",
                                                             signer[0].sender.domain, key.selector)
    assert "l" not in tags
    assert tags["h"].lower().split(":").count("from") == 2, "From oversigned"
    assert dkim.verify(data, dnsfunc=nsd_txt(world.nsd.port)), "DKIM signature verifies against NSD"
    [received] = values(data, "Received")
    assert received.startswith("from client.test (") and "by relay.test with ESMTPA id" in received
    assert "secret" not in received and "billing" not in received


HEAD = b"To: Someone <someone@example.test>\r\nSubject: Invoice 42\r\n"

SHAPES: dict[str, bytes] = {
    "plain": b"From: app@platform.test\r\nDate: Fri, 14 Mar 2025 09:26:53 +0000\r\n"
             b"Message-ID: <m1@platform.test>\r\n" + HEAD + b"\r\nHello.\r\n",
    "no-from-date-message-id": HEAD + b"\r\nNo From, no Date, no Message-ID.\r\n",
    "two-froms": b"From: ceo@evil.test\r\nFrom: Other <other@evil.test>\r\n" + HEAD + b"\r\nTwo.\r\n",
    "forbidden-headers": b"From : Spoof <spoof@evil.test>\r\nSender: s@evil.test\r\nResent-From: r@evil.test\r\n"
                         b"Return-Path: <rp@evil.test>\r\nBcc: hidden@example.test\r\n"
                         b"DKIM-Signature: v=1; d=evil.test; s=x; b=AAAA\r\nARC-Seal: i=1; cv=none\r\n"
                         b"Authentication-Results: mx.test; dkim=pass\r\nX-Relay-Tenant: acme\r\n"
                         + HEAD + b"\r\nHeaders.\r\n",
    "utf8-8bit": b"From: app@platform.test\r\nSubject: =?utf-8?q?Factuur_=E2=82=AC?=\r\nMIME-Version: 1.0\r\n"
                 b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
                 b"To: someone@example.test\r\n\r\n" + "Prijs: 42 € — déjà vu, Größe\r\n".encode(),
    "multipart-base64": b"From: app@platform.test\r\n" + HEAD + b"MIME-Version: 1.0\r\n"
                        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
                        b"--b1\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
                        b"--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
                        b'Content-Disposition: attachment; filename="i.pdf"\r\n\r\n'
                        + base64.encodebytes(bytes(range(256)) * 20).replace(b"\n", b"\r\n")
                        + b"--b1--\r\n",
    "990-char-lines": b"From: app@platform.test\r\n" + HEAD + b"\r\n" + (b"x" * 990 + b"\r\n") * 3
                      + b"." + b"y" * 989 + b"\r\n",
    "single-dot-lines": b"From: app@platform.test\r\n" + HEAD + b"\r\nbefore\r\n.\r\nmiddle\r\n..\r\n.\r\nafter\r\n",
}


@pytest.mark.parametrize("shape", SHAPES)
async def test_forwarded_message_is_enforced_and_verifies(world: World, shape: str) -> None:
    async with RecordingUpstream() as upstream:
        settings = world.settings.model_copy(update={"upstream": smtp_upstream(upstream.port)})
        async with relay_running(settings, world.store) as relay:
            outcome = await send(relay, SHAPES[shape], user="billing", secret=world.secrets["billing"])
    assert outcome.code == 250, outcome
    got = upstream.only
    assert got.mail_from == "bounces@bounce.acme.test"
    assert got.rcpt_tos == [RCPT]
    assert_enforced(got.data, world, tenant=world.acme[0], signer=world.acme)
    [from_value] = values(got.data, "From")
    assert str(email.header.make_header(email.header.decode_header(from_value))) == \
        "Acme Comptabilité <billing@acme.test>"
    body = got.data.split(b"\r\n\r\n", 1)[1]
    original_body = SHAPES[shape].split(b"\r\n\r\n", 1)[1]
    assert body == original_body, "the body passes untouched"
    assert len(values(got.data, "Date")) == 1 and len(values(got.data, "Message-ID")) == 1


async def test_different_original_from_is_kept_as_reply_to(world: World) -> None:
    async with RecordingUpstream() as upstream:
        settings = world.settings.model_copy(update={"upstream": smtp_upstream(upstream.port)})
        async with relay_running(settings, world.store) as relay:
            outcome = await send(relay, SHAPES["plain"], user="billing", secret=world.secrets["billing"])
    assert outcome.code == 250, outcome
    assert values(upstream.only.data, "Reply-To") == ["<app@platform.test>"]


async def test_auth_login_and_tenant_header_of_a_multi_tenant_client(world: World) -> None:
    message = b"X-Relay-Tenant: acme\r\nFrom: app@platform.test\r\n" + HEAD + b"\r\nBody.\r\n"
    async with RecordingUpstream() as upstream:
        settings = world.settings.model_copy(update={"upstream": smtp_upstream(upstream.port)})
        async with relay_running(settings, world.store) as relay:
            outcome = await send(relay, message, user="multi", secret=world.secrets["multi"], mechanism="LOGIN")
    assert outcome.code == 250, outcome
    assert values(upstream.only.data, "X-Relay-Tenant") == []
    assert_enforced(upstream.only.data, world, tenant=world.acme[0], signer=world.acme)


async def test_unverified_tenant_goes_out_as_the_platform_sender(world: World) -> None:
    message = b"X-Relay-Tenant: newco\r\nFrom: app@platform.test\r\n" + HEAD + b"\r\nBody.\r\n"
    async with RecordingUpstream() as upstream:
        settings = world.settings.model_copy(update={"upstream": smtp_upstream(upstream.port)})
        async with relay_running(settings, world.store) as relay:
            outcome = await send(relay, message, user="multi", secret=world.secrets["multi"])
    assert outcome.code == 250, outcome
    got = upstream.only
    assert got.mail_from == "bounces@bounce.accounton.test"
    assert values(got.data, "From") == ['"NewCo via Accounton" <noreply@accounton.test>']
    assert values(got.data, "Reply-To") == ["<billing@newco.test>"]
    assert_enforced(got.data, world, tenant=world.platform[0], signer=world.platform)


async def test_bare_lf_message_longer_than_a_line_is_accepted_and_normalised(world: World) -> None:
    """Legacy clients (smtplib given bytes) send bare LF; aiosmtpd alone would answer `500 Line too long`."""
    lines = [b"From: app@platform.test", b"To: someone@example.test", b"Subject: bare LF", b""]
    lines += [b"line %d of a long body written with bare LF endings" % i for i in range(60)]
    lines += [b".", b"..leading dots", b"end"]
    message = b"\n".join(lines) + b"\n"
    assert len(message) > 2000
    async with RecordingUpstream() as upstream:
        settings = world.settings.model_copy(update={"upstream": smtp_upstream(upstream.port)})
        async with relay_running(settings, world.store) as relay:
            outcome = await send(relay, message, user="billing", secret=world.secrets["billing"])
    assert outcome.code == 250, outcome
    got = upstream.only.data
    assert_enforced(got, world, tenant=world.acme[0], signer=world.acme)
    assert got.endswith(b"line 59 of a long body written with bare LF endings\r\n.\r\n..leading dots\r\nend\r\n\r\n")


async def test_outbox_file_keeps_the_envelope_and_verifies(world: World, tmp_path: Path) -> None:
    settings = world.settings.model_copy(
        update={"upstream": world.settings.upstream.__class__(scheme="outbox", outbox_dir=tmp_path / "outbox")})
    async with relay_running(settings, world.store) as relay:
        outcome = await send(relay, SHAPES["plain"], user="billing", secret=world.secrets["billing"],
                             rcpts=("a@example.test", "b@example.test"))
    assert outcome.code == 250, outcome
    [path] = list((tmp_path / "outbox").iterdir())
    assert path.suffix == ".eml" and path.name in outcome.text
    data = path.read_bytes()
    assert data.startswith(b"Return-Path: <bounces@bounce.acme.test>\r\n"
                           b"X-Envelope-To: <a@example.test>\r\nX-Envelope-To: <b@example.test>\r\n"
                           b"DKIM-Signature: ")
    assert dkim.verify(data, dnsfunc=nsd_txt(world.nsd.port))
