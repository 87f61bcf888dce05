"""The relay's policy seen from real SMTP clients: who may send, for which tenant, as whom, which addresses
and sizes, smuggling, broken keys, STARTTLS, and admin changes picked up while running."""

from __future__ import annotations

import base64
import datetime
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from relay.core import dkimkeys
from relay.core.models import KeyState, TenantStatus
from relay.core.settings import HostPort, Settings
from relay.core.store import Store, open_store
from tests.factories import make_tenant
from tests.relay_harness import (
    RawClient,
    RecordingUpstream,
    add_client,
    eventually,
    make_settings,
    non_loopback_address,
    relay_running,
    self_signed,
    send,
    smtp_upstream,
    values,
)
from tests.snapshot import Stores, database_from, restore_template

MESSAGE = b"From: app@platform.test\r\nTo: someone@example.test\r\nSubject: S\r\n\r\nBody.\r\n"


def tenant_message(tenant: str) -> bytes:
    return f"X-Relay-Tenant: {tenant}\r\n".encode() + MESSAGE


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, backend_stores: Stores) -> tuple[Path, dict[str, str]]:
    """A store with tenants, keys and clients, made once; each test works on its own copy."""
    tmp = tmp_path_factory.mktemp("template")
    settings = make_settings(tmp, database=backend_stores.template(tmp))
    store = open_store(settings)
    make_tenant(store, settings, "acme", name="Acme", domain="acme.test", status=TenantStatus.VERIFIED)
    make_tenant(store, settings, "beta", name="Beta", domain="beta.test", status=TenantStatus.VERIFIED)
    make_tenant(store, settings, "newco", name="NewCo", domain="newco.test")
    secrets = {
        "billing": add_client(store, "billing", tenants=("acme",)),
        "multi": add_client(store, "multi", all_tenants=True),
        "pair": add_client(store, "pair", tenants=("acme", "beta")),
    }
    store.close()
    return tmp, secrets


@dataclass
class World:
    tmp: Path
    settings: Settings
    store: Store
    secrets: dict[str, str]
    upstream: RecordingUpstream

    def with_settings(self, **fields: object) -> Settings:
        return self.settings.model_copy(update=fields)


# Each test's store starts as a copy of the template (one CREATE DATABASE ... TEMPLATE on PostgreSQL).
database_url = database_from("template", lambda template: template[0])


@pytest.fixture
async def world(template: tuple[Path, dict[str, str]], tmp_path: Path, database_url: str) -> AsyncIterator[World]:
    source, secrets = template
    (tmp_path / "w").mkdir()
    restore_template(source, tmp_path / "w", database_url)
    async with RecordingUpstream() as upstream:
        settings = make_settings(tmp_path / "w", database=database_url, upstream=smtp_upstream(upstream.port))
        store = open_store(settings)
        yield World(tmp_path / "w", settings, store, secrets, upstream)
        store.close()


# ------------------------------------------------------------------ who may send


async def test_wrong_secret_and_unknown_user_get_535(world: World) -> None:
    async with relay_running(world.settings, world.store) as relay:
        wrong = await send(relay, MESSAGE, user="billing", secret="guess")
        unknown = await send(relay, MESSAGE, user="nobody", secret="guess", mechanism="LOGIN")
    for outcome in (wrong, unknown):
        assert (outcome.stage, outcome.code, outcome.text.split()[0]) == ("AUTH", 535, "5.7.8"), outcome
    assert world.upstream.messages == []


async def test_no_auth_gets_530_at_mail(world: World) -> None:
    async with relay_running(world.settings, world.store) as relay:
        outcome = await send(relay, MESSAGE, user=None)
    assert (outcome.stage, outcome.code, outcome.text.split()[0]) == ("MAIL", 530, "5.7.0"), outcome


async def test_auth_attempts_are_limited(world: World) -> None:
    async with relay_running(world.settings, world.store) as relay:
        client = await RawClient.connect(relay)
        await client.command("EHLO raw.test")
        bad = base64.b64encode(b"\0billing\0guess").decode()
        replies = [await client.command(f"AUTH PLAIN {bad}") for _ in range(4)]
        client.close()
    assert [code for code, _ in replies] == [535, 535, 535, 421]


async def test_auth_is_not_offered_in_the_clear_off_loopback(world: World) -> None:
    address = _non_loopback_address()
    settings = world.with_settings(listen=HostPort(address, 0))
    async with relay_running(settings, world.store) as relay:
        client = await RawClient.connect(relay)
        _, ehlo = await client.command("EHLO raw.test")
        token = base64.b64encode(f"\0billing\0{world.secrets['billing']}".encode()).decode()
        auth = await client.command(f"AUTH PLAIN {token}")
        mail = await client.command("MAIL FROM:<app@platform.test>")
        client.close()
    assert "AUTH" not in ehlo
    assert auth[0] == 538
    assert mail[0] == 530


async def test_network_bound_client_sends_without_auth_most_specific_network_wins(world: World) -> None:
    add_client(world.store, "wide", tenants=("beta",), networks=("127.0.0.0/8",))
    add_client(world.store, "narrow", tenants=("acme",), networks=("127.0.0.1/32",))
    async with relay_running(world.settings, world.store) as relay:
        outcome = await send(relay, MESSAGE, user=None)
    assert outcome.code == 250, outcome
    assert values(world.upstream.only.data, "From") == ['"Acme" <billing@acme.test>']
    received = values(world.upstream.only.data, "Received")[0]
    assert "with ESMTP id" in received, "not ESMTPA: no AUTH was used"


# ------------------------------------------------------------------ the tenant and the identity


@pytest.mark.parametrize("client, message, text", [
    ("multi", MESSAGE, "name one in the tenant header"),
    ("multi", tenant_message("ghost"), "Unknown tenant"),
    ("billing", tenant_message("beta"), "not allowed for this client"),
    ("pair", tenant_message("newco"), "not allowed for this client"),
])
async def test_tenant_missing_unknown_or_out_of_scope_is_550_5_7_1(world: World, client: str, message: bytes,
                                                                   text: str) -> None:
    async with relay_running(world.settings, world.store) as relay:
        outcome = await send(relay, message, user=client, secret=world.secrets[client])
    assert (outcome.stage, outcome.code, outcome.text.split()[0]) == ("DATA", 550, "5.7.1"), outcome
    assert text in outcome.text
    assert world.upstream.messages == []


async def test_tenant_header_names_the_tenant_and_is_removed(world: World) -> None:
    message = b"x-relay-TENANT:\r\n beta\r\n" + MESSAGE  # any case, folded
    async with relay_running(world.settings, world.store) as relay:
        outcome = await send(relay, message, user="pair", secret=world.secrets["pair"])
    assert outcome.code == 250, outcome
    got = world.upstream.only
    assert values(got.data, "From") == ['"Beta" <billing@beta.test>']
    assert got.mail_from == "bounces@bounce.beta.test"
    assert values(got.data, "X-Relay-Tenant") == []


async def test_unverified_tenant_without_platform_sender_is_refused(world: World) -> None:
    async with relay_running(world.settings, world.store) as relay:
        outcome = await send(relay, tenant_message("newco"), user="multi", secret=world.secrets["multi"])
    assert (outcome.code, outcome.text.split()[0]) == (550, "5.7.1"), outcome
    assert "not verified" in outcome.text
    assert world.upstream.messages == []


async def test_unverified_platform_sender_is_no_fallback(world: World) -> None:
    settings = world.with_settings(platform_sender="newco")  # newco itself is pending
    async with relay_running(settings, world.store) as relay:
        outcome = await send(relay, tenant_message("newco"), user="multi", secret=world.secrets["multi"])
    assert (outcome.code, outcome.text.split()[0]) == (550, "5.7.1"), outcome


# ------------------------------------------------------------------ keys


@pytest.mark.parametrize("damage", ["chmod 0644", "missing file"])
async def test_broken_key_fails_closed_for_that_tenant_only(world: World, damage: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    [key] = world.store.list_keys("acme")
    path = world.settings.keys_dir / key.key_file
    if damage == "chmod 0644":
        path.chmod(0o644)
    else:
        path.unlink()
    async with relay_running(world.settings, world.store) as relay:
        broken = await send(relay, tenant_message("acme"), user="pair", secret=world.secrets["pair"])
        fine = await send(relay, tenant_message("beta"), user="pair", secret=world.secrets["pair"])
    assert (broken.code, broken.text.split()[0]) == (451, "4.3.5"), broken
    assert fine.code == 250, fine
    assert values(world.upstream.only.data, "From") == ['"Beta" <billing@beta.test>']
    [line] = [r.getMessage() for r in caplog.records if "dkim key unusable" in r.getMessage()]
    assert f"tenant=acme selector={key.selector}" in line
    assert "PRIVATE KEY" not in caplog.text


async def test_repaired_key_is_picked_up_without_restart(world: World) -> None:
    [key] = world.store.list_keys("acme")
    path = world.settings.keys_dir / key.key_file
    path.chmod(0o644)
    async with relay_running(world.settings, world.store) as relay:
        broken = await send(relay, MESSAGE, user="billing", secret=world.secrets["billing"])
        assert broken.code == 451
        path.chmod(0o600)  # no store write: the key file's own change is noticed

        async def delivered() -> bool:
            return (await send(relay, MESSAGE, user="billing", secret=world.secrets["billing"])).code == 250

        await eventually(delivered)


# ------------------------------------------------------------------ live admin changes


async def test_validation_reaches_a_running_relay(world: World) -> None:
    async with relay_running(world.settings, world.store) as relay:
        before = await send(relay, tenant_message("newco"), user="multi", secret=world.secrets["multi"])
        assert before.code == 550, before
        tenant = world.store.get_tenant("newco")
        assert tenant is not None
        world.store.save_tenant(replace(tenant, status=TenantStatus.VERIFIED))

        async def delivered() -> bool:
            outcome = await send(relay, tenant_message("newco"), user="multi", secret=world.secrets["multi"])
            return outcome.code == 250

        await eventually(delivered)
    assert values(world.upstream.only.data, "From") == ['"NewCo" <billing@newco.test>']


async def test_new_client_and_new_name_reach_a_running_relay(world: World) -> None:
    async with relay_running(world.settings, world.store) as relay:
        secret = add_client(world.store, "late", tenants=("acme",))
        tenant = world.store.get_tenant("acme")
        assert tenant is not None
        world.store.save_tenant(replace(tenant, sender=replace(tenant.sender, name="Acme Renamed")))

        async def delivered() -> bool:
            return (await send(relay, MESSAGE, user="late", secret=secret)).code == 250

        await eventually(delivered)
    assert values(world.upstream.only.data, "From") == ['"Acme Renamed" <billing@acme.test>']


async def test_a_removed_client_is_refused_by_a_running_relay(world: World) -> None:
    """`relay-admin client remove` (the store's delete_client): the relay refuses the secret within a reload."""
    async with relay_running(world.settings, world.store) as relay:
        first = await send(relay, MESSAGE, user="billing", secret=world.secrets["billing"])
        assert world.store.delete_client("billing")

        async def refused() -> bool:
            outcome = await send(relay, MESSAGE, user="billing", secret=world.secrets["billing"])
            return (outcome.stage, outcome.code) == ("AUTH", 535)

        await eventually(refused)  # until the reload: still delivered (the poll's messages count too)
        delivered = len(world.upstream.messages)
        again = await send(relay, MESSAGE, user="billing", secret=world.secrets["billing"])
    assert first.code == 250, first
    assert (again.stage, again.code) == ("AUTH", 535), again
    assert len(world.upstream.messages) == delivered, "nothing from the removed client after the reload"


async def test_new_key_reaches_a_running_relay(world: World) -> None:
    [old] = world.store.list_keys("acme")
    private = dkimkeys.generate_private_key()
    selector = "rotated1"
    dkimkeys.write_private_key(world.settings.keys_dir, dkimkeys.key_path("acme", selector), private)
    async with relay_running(world.settings, world.store) as relay:
        first = await send(relay, MESSAGE, user="billing", secret=world.secrets["billing"])
        assert first.code == 250
        with world.store.transaction():
            world.store.add_key(replace(old, selector=selector, key_file=dkimkeys.key_path("acme", selector),
                                        public_key_b64=dkimkeys.public_key_b64(private),
                                        created_at=old.created_at + datetime.timedelta(seconds=1)))
            world.store.set_key_state("acme", old.selector, KeyState.RETIRING)

        async def signed_with_new_key() -> bool:
            await send(relay, MESSAGE, user="billing", secret=world.secrets["billing"])
            return f"s={selector};" in values(world.upstream.messages[-1].data, "DKIM-Signature")[0]

        await eventually(signed_with_new_key)
    assert f"s={old.selector};" in values(world.upstream.messages[0].data, "DKIM-Signature")[0]


# ------------------------------------------------------------------ addresses and limits


async def test_no_open_relay_in_any_address_form_without_auth(world: World) -> None:
    async with relay_running(world.settings, world.store) as relay:
        client = await RawClient.connect(relay)
        await client.command("EHLO raw.test")
        mail = await client.command("MAIL FROM:<app@platform.test>")
        rcpts = [await client.command(f"RCPT TO:<{a}>") for a in ("u%x@y.test", '"u@x"@y.test', "@a.test:u@b.test")]
        client.close()
    assert mail[0] == 530
    assert all(code == 503 for code, _ in rcpts)
    assert world.upstream.messages == []


@pytest.mark.parametrize("address", ["@a.test:u@b.test", "@a.test,@c.test:u@b.test", "u@[127.0.0.1]",
                                     "u@x.test@y.test", "u", '"u@x".z@y.test', "u@-bad-.test"])
async def test_other_address_forms_are_501_5_1_3(world: World, address: str) -> None:
    async with relay_running(world.settings, world.store) as relay:
        outcome = await send(relay, MESSAGE, user="billing", secret=world.secrets["billing"], rcpts=(address,))
    assert (outcome.stage, outcome.code, outcome.text.split()[0]) == ("RCPT", 501, "5.1.3"), outcome


async def test_plain_and_quoted_addresses_go_upstream_verbatim(world: World) -> None:
    rcpts = ("u%x@y.test", '"u@x"@y.test', "first.last+tag@example.test")
    async with relay_running(world.settings, world.store) as relay:
        outcome = await send(relay, MESSAGE, user="billing", secret=world.secrets["billing"], rcpts=rcpts)
    assert outcome.code == 250, outcome
    assert world.upstream.only.rcpt_tos == list(rcpts)


async def test_client_mail_from_is_checked_but_not_used(world: World) -> None:
    async with relay_running(world.settings, world.store) as relay:
        bad = await send(relay, MESSAGE, user="billing", secret=world.secrets["billing"], mail_from="a b@x")
        null = await send(relay, MESSAGE, user="billing", secret=world.secrets["billing"], mail_from="")
    assert (bad.stage, bad.code) == ("MAIL", 501), bad
    assert null.code == 250, null
    assert world.upstream.only.mail_from == "bounces@bounce.acme.test"


async def test_size_is_advertised_and_enforced(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    settings = world.with_settings(max_message_size=4096)
    async with relay_running(settings, world.store) as relay:
        client = await RawClient.connect(relay)
        _, ehlo = await client.command("EHLO raw.test")
        token = base64.b64encode(f"\0billing\0{world.secrets['billing']}".encode()).decode()
        assert (await client.command(f"AUTH PLAIN {token}"))[0] == 235
        announced = await client.command("MAIL FROM:<app@platform.test> SIZE=5000")
        client.close()
        big = MESSAGE + (b"y" * 70 + b"\r\n") * 80  # ~5.8 kB
        outcome = await send(relay, big, user="billing", secret=world.secrets["billing"])
    assert "SIZE 4096" in ehlo and "ENHANCEDSTATUSCODES" in ehlo and "AUTH" in ehlo
    assert announced[0] == 552 and announced[1].startswith("5.3.4")
    assert (outcome.code, outcome.text.split()[0]) == (552, "5.3.4"), outcome
    assert world.upstream.messages == []
    [line] = transaction_lines(caplog)  # the refused MAIL FROM (SIZE=5000) is no transaction
    assert f"client=billing ip=127.0.0.1 tenant=- rcpts=1 size={len(big)} outcome=refused reply='552 5.3.4 " in line


async def test_recipient_count_is_limited(world: World) -> None:
    settings = world.with_settings(max_recipients=2)
    async with relay_running(settings, world.store) as relay:
        outcome = await send(relay, MESSAGE, user="billing", secret=world.secrets["billing"],
                             rcpts=("a@x.test", "b@x.test", "c@x.test"))
    assert (outcome.stage, outcome.code, outcome.text.split()[0]) == ("RCPT", 452, "4.5.3"), outcome


async def test_line_over_998_characters_is_refused(world: World) -> None:
    async with relay_running(world.settings, world.store) as relay:
        outcome = await send(relay, MESSAGE + b"x" * 1200 + b"\r\n", user="billing",
                             secret=world.secrets["billing"])
    assert (outcome.code, outcome.text.split()[0]) == (550, "5.6.0"), outcome
    assert world.upstream.messages == []


# ------------------------------------------------------------------ smuggling


def transaction_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "relay.transaction"]


@pytest.mark.parametrize("trick", [b"\n.\n", b"\r\n.\r", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n"])
async def test_smuggled_end_of_data_is_refused_and_nothing_goes_upstream(
        world: World, trick: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    injected = b"MAIL FROM:<ceo@acme.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nFrom: ceo@acme.test\r\n"
    async with relay_running(world.settings, world.store) as relay:
        client = await RawClient.connect(relay)
        await client.start_mail("billing", world.secrets["billing"])
        client.writer.write(MESSAGE + b"text" + trick + injected + b"\r\n.\r\n")
        final = await client.reply()
        after = await client.command("NOOP")
        client.close()
    assert final[0] == 550 and final[1].startswith("5.5.2"), final
    assert after[0] == 250, "the injected commands were read as data, not run"
    assert world.upstream.messages == []
    # The attempt leaves the transaction's line, like any refusal: who, from where, how much, what was said.
    [line] = transaction_lines(caplog)
    size = len(MESSAGE + b"text" + trick + injected + b"\r\n")  # all the bytes before the final "." CRLF
    assert f"client=billing ip=127.0.0.1 tenant=- rcpts=1 size={size} outcome=refused reply='550 5.5.2 " in line


async def test_nul_bytes_are_refused(world: World) -> None:
    async with relay_running(world.settings, world.store) as relay:
        outcome = await send(relay, MESSAGE + b"a\0b\r\n", user="billing", secret=world.secrets["billing"])
    assert (outcome.code, outcome.text.split()[0]) == (550, "5.6.0"), outcome


# ------------------------------------------------------------------ STARTTLS


async def test_starttls_then_auth(world: World) -> None:
    cert, key = self_signed(world.tmp)
    address = _non_loopback_address()
    settings = world.with_settings(tls_cert=cert, tls_key=key, listen=HostPort(address, 0))
    async with relay_running(settings, world.store) as relay:
        client = await RawClient.connect(relay)
        _, ehlo = await client.command("EHLO raw.test")
        client.close()
        outcome = await send(relay, MESSAGE, user="billing", secret=world.secrets["billing"], starttls=True)
    assert "STARTTLS" in ehlo and "AUTH" not in ehlo
    assert outcome.code == 250, outcome
    [received] = values(world.upstream.only.data, "Received")
    assert f"[{address}]" in received and "with ESMTPSA id" in received


def _non_loopback_address() -> str:
    address = non_loopback_address()
    if address is None:
        pytest.skip("no non-loopback local address on this machine")
    return address
