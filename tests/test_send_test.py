"""`relay-admin send-test --in-process`: the sample goes through the relay's own pipeline to a real outbox or
SMTP upstream; what arrives has one From and a DKIM signature dkimpy verifies against NSD, and the outbox copy
is judged as a receiver would; refusals, bad input, roles and audit. (Through a running relay:
tests/test_send_test_relay.py.)"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import logging
from collections.abc import Iterator
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any

import dkim
import pytest

from admin.sendtest import IN_PROCESS_CLIENT, synthetic_client
from relay.core.replies import INTERNAL_ERROR, TENANT_OUT_OF_SCOPE, ReplyError
from relay.core.store import utcnow
from relay.core.transaction import Peer, Transaction
from relay.policy.directory import Directory
from relay.policy.senders import decide_tenant
from relay.smtp.pipeline import Pipeline
from relay.smtp.upstream import make_upstream
from tests.conftest import CliResult
from tests.relay_harness import (
    RecordingUpstream,
    Script,
    ScriptedUpstream,
    make_settings,
    nsd_txt,
    values,
)
from tests.sendtest_world import (  # noqa: F401  (fixtures, used by name)
    ACCOUNTANT,
    JSON_KEYS,
    OWNER,
    RCPT,
    Cli,
    World,
    build_world,
    check_lines,
    database_url,
    env,
    outbox,
)
from tests.sendtest_world import send_test as send_test_any
from tests.snapshot import (
    Stores,
    assert_one_line_error,
    env_url,
    open_store,
    state,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, backend_stores: Stores) -> Iterator[World]:
    yield from build_world(tmp_path_factory, "send-test", backend_stores)


def send_test(cli: Cli, tenant: str = "acme", to: str = RCPT, *extra: str, actor: str = OWNER) -> CliResult:
    return send_test_any(cli, tenant, to, "--in-process", *extra, actor=actor)


def decoded(value: str) -> str:
    return str(make_header(decode_header(value)))


def body_text(data: bytes) -> str:
    message = email.message_from_bytes(data, policy=email.policy.default)
    return str(message.get_content())


def send_test_audit(env: Path) -> list[Any]:
    store = open_store(env)
    try:
        return [entry for entry in store.list_audit() if entry.action == "send-test"]
    finally:
        store.close()


def test_verified_tenant_leaves_from_its_own_address_signed_for_its_domain(
    env: Path, world: World, cli: Cli, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="relay.transaction")
    selector = world.acme[1].selector
    result = send_test(cli)
    assert result.code == 0, result.err
    [eml] = outbox(env)
    data = eml.read_bytes()
    assert data.startswith(b"Return-Path: <bounces@bounce.acme.test>\r\n"
                           b"X-Envelope-To: <someone@example.test>\r\n")
    [from_value] = values(data, "From")
    assert decoded(from_value) == "Acme Comptabilité <billing@acme.test>"
    assert values(data, "To") == [f"<{RCPT}>"]
    assert values(data, "Subject") == ["accounton-relay test message (acme)"]
    assert len(values(data, "Date")) == 1 and len(values(data, "Message-ID")) == 1
    body = body_text(data)
    assert "send-test" in body and "Acme Comptabilité" in body
    assert f"d=acme.test and s={selector}" in " ".join(body.split())
    assert dkim.verify(data, dnsfunc=nsd_txt(world.nsd.port)), "DKIM verifies against NSD"
    assert b"with ESMTP id" in data, "in-process: no AUTH, no listener"
    lines = result.out.splitlines()
    assert lines[0] == f"send-test acme -> {RCPT} in-process: accepted"
    for expected in ("250 2.0.0", "Acme Comptabilité <billing@acme.test>", "bounces@bounce.acme.test",
                     f"d=acme.test s={selector}", str(eml), values(data, "Message-ID")[0]):
        assert any(expected in line for line in lines[1:]), expected
    [logged] = [r.getMessage() for r in caplog.records if r.name == "relay.transaction"]
    assert f"client={IN_PROCESS_CLIENT} " in logged
    assert "tenant=acme " in logged and "outcome=delivered" in logged
    [audit] = send_test_audit(env)
    assert (audit.actor, audit.tenant, audit.outcome) == (OWNER, "acme", "done")
    assert RCPT in audit.detail and "250 2.0.0" in audit.detail
    assert "in-process" in audit.detail and "dkim=pass spf=pass dmarc=pass" in audit.detail
    checks = check_lines(result.out)
    assert checks["DKIM"].startswith(f"DKIM   pass   d=acme.test s={selector}: The signature with d=acme.test")
    assert checks["SPF"].startswith("SPF    pass   bounce.acme.test from 127.0.0.1: ")
    assert checks["DMARC"].startswith("DMARC  pass   acme.test: From domain acme.test: DKIM d=acme.test is aligned")


def test_json_report(env: Path, world: World, cli: Cli) -> None:
    result = send_test(cli, "acme", RCPT, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert set(report) == JSON_KEYS
    assert (report["mode"], report["relay"], report["verdict_unavailable"]) == ("in-process", None, None)
    assert report["dkim"] == {"result": "pass", "domain": "acme.test", "reason": (
        f"The signature with d=acme.test, s={world.acme[1].selector} verifies with the key at"
        f" {world.acme[1].selector}._domainkey.acme.test.")}
    assert report["spf"]["result"] == "pass" and report["spf"]["domain"] == "bounce.acme.test"
    assert report["spf"]["ip"] == "127.0.0.1"
    assert report["dmarc"]["result"] == "pass" and report["dmarc"]["domain"] == "acme.test"
    [eml] = outbox(env)
    data = eml.read_bytes()
    assert report["tenant"] == "acme" and report["to"] == RCPT and report["accepted"] is True
    assert report["reply"].startswith("250 2.0.0 ") and eml.name in report["reply"]
    assert report["from"] == "Acme Comptabilité <billing@acme.test>"
    assert report["envelope_from"] == "bounces@bounce.acme.test"
    assert report["signature"] == {"domain": "acme.test", "selector": world.acme[1].selector}
    assert values(data, "Message-ID") == [report["message_id"]]
    assert report["outbox_file"] == str(eml) and Path(report["outbox_file"]).is_absolute()
    assert f"id {report['transaction']};" in " ".join(values(data, "Received"))


def test_unverified_tenant_without_platform_sender_is_refused(env: Path, cli: Cli) -> None:
    result = send_test(cli, "newco", RCPT, "--json")
    assert result.code == 1, result.err
    report = json.loads(result.out)
    assert report["accepted"] is False and report["reply"].startswith("550 5.7.1 ")
    assert (report["from"], report["envelope_from"], report["signature"], report["outbox_file"]) == (None,) * 4
    text = send_test(cli, "newco")
    assert text.code == 1
    assert text.out.splitlines()[0] == f"send-test newco -> {RCPT} in-process: refused"
    assert "550 5.7.1" in text.out and "nothing reached the upstream" in text.out
    assert (report["dkim"], report["spf"], report["dmarc"]) == (None, None, None)
    assert report["verdict_unavailable"] == "nothing was forwarded: the relay did not accept the message"
    assert outbox(env) == []
    assert [entry.outcome for entry in send_test_audit(env)] == ["done", "done"]
    assert all("550 5.7.1" in entry.detail for entry in send_test_audit(env))


def test_unverified_tenant_with_platform_sender_leaves_on_its_behalf(
    env: Path, world: World, cli: Cli, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELAY_PLATFORM_SENDER", "platform")
    result = send_test(cli, "newco", RCPT, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["from"] == '"NewCo via Accounton" <noreply@accounton.test>'
    assert report["envelope_from"] == "bounces@bounce.accounton.test"
    assert report["signature"] == {"domain": "accounton.test", "selector": world.platform[1].selector}
    [eml] = outbox(env)
    data = eml.read_bytes()
    assert values(data, "From") == ['"NewCo via Accounton" <noreply@accounton.test>']
    assert values(data, "Reply-To") == ["<billing@newco.test>"]
    assert "d=accounton.test" in " ".join(body_text(data).split())
    assert dkim.verify(data, dnsfunc=nsd_txt(world.nsd.port))
    # DMARC is the From domain's (accounton.test): DKIM d=accounton.test aligns with it.
    assert [report[check]["result"] for check in ("dkim", "spf", "dmarc")] == ["pass"] * 3
    assert report["dmarc"]["domain"] == "accounton.test"


async def test_smtp_upstream_refusing_the_recipient_delivers_nothing(
    env: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = Script(rcpt={RCPT: "550 5.1.1 No such user here"})
    async with ScriptedUpstream(script) as upstream:
        monkeypatch.setenv("RELAY_UPSTREAM", f"smtp://127.0.0.1:{upstream.port}")
        # The CLI runs its own event loop: in a thread, while this loop serves the upstream.
        result = await asyncio.to_thread(send_test, cli, "acme", RCPT, "--json")
    assert result.code == 1, result.err
    report = json.loads(result.out)
    assert report["accepted"] is False
    assert report["reply"].startswith("550 5.1.1 ") and "No such user here" in report["reply"]
    assert report["signature"] is not None, "the signed message was offered"
    assert report["outbox_file"] is None
    assert upstream.data is None and "DATA" not in upstream.verbs() and "RSET" in upstream.verbs()
    assert upstream.commands[1].startswith("MAIL FROM:<bounces@bounce.acme.test>")


async def test_smtp_upstream_accepting(env: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    async with RecordingUpstream() as upstream:
        monkeypatch.setenv("RELAY_UPSTREAM", f"smtp://127.0.0.1:{upstream.port}")
        result = await asyncio.to_thread(send_test, cli, "acme", RCPT)
    assert result.code == 0, result.err
    assert "Ok: queued as REC1" in result.out and "outbox file" not in result.out
    assert ("checks not made: the forwarded copy is not readable with an SMTP upstream "
            f"(RELAY_UPSTREAM=smtp://127.0.0.1:{upstream.port})") in result.out
    assert check_lines(result.out) == {}
    got = upstream.only
    assert (got.mail_from, got.rcpt_tos) == ("bounces@bounce.acme.test", [RCPT])
    assert len(values(got.data, "From")) == 1 and len(values(got.data, "DKIM-Signature")) == 1
    assert outbox(env) == []


def test_broken_key_fails_closed(env: Path, world: World, cli: Cli) -> None:
    (env / "keys" / world.acme[1].key_file).chmod(0o644)
    result = send_test(cli, "acme", RCPT, "--json")
    assert result.code == 1
    report = json.loads(result.out)
    assert report["reply"].startswith("451 4.3.5 ") and report["signature"] is None
    assert outbox(env) == []


def test_idn_recipient_domain_goes_out_as_a_labels(env: Path, cli: Cli) -> None:
    result = send_test(cli, "acme", "someone@Bücher.test", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["to"] == "someone@xn--bcher-kva.test"
    [eml] = outbox(env)
    data = eml.read_bytes()
    assert values(data, "X-Envelope-To") == ["<someone@xn--bcher-kva.test>"]
    assert values(data, "To") == ["<someone@xn--bcher-kva.test>"]


@pytest.mark.parametrize("to", [
    "", "someone", "someone@", "@example.test", "someone@localhost",
    "someone@example.test\r\nRCPT TO:<evil@evil.test>", "some\none@example.test", "someone@example.test\x00",
    "<someone@example.test>", "Someone <someone@example.test>", "@relay.test:someone@example.test",
    "a@example.test,b@example.test", "a@example.test b@example.test", "a@example.test;b@example.test",
    '"a@b"@example.test', "a@b@example.test", "someone@[127.0.0.1]", "someone@10.0.0.1",
    "sömeone@example.test", "some..one@example.test", "someone@exa_mple.test", "someone@-example.test",
    "someone(comment)@example.test", "x" * 65 + "@example.test", "someone@" + "a" * 250 + ".test",
])
def test_bad_to_is_refused_and_nothing_is_sent(env: Path, cli: Cli, to: str) -> None:
    before = state(env)
    result = send_test(cli, "acme", to)
    assert_one_line_error(result, 2, "--to")
    assert outbox(env) == []
    assert state(env) == before, "nothing changed, not even the audit log"


def test_unknown_tenant(env: Path, cli: Cli) -> None:
    before = state(env)
    assert_one_line_error(send_test(cli, "nobody"), 2, "TENANT")
    assert outbox(env) == [] and state(env) == before


def test_accountant_is_denied_and_audited(env: Path, cli: Cli) -> None:
    assert_one_line_error(send_test(cli, actor=ACCOUNTANT), 3, "permission denied")
    assert outbox(env) == []
    [audit] = send_test_audit(env)
    assert (audit.actor, audit.tenant, audit.outcome) == (ACCOUNTANT, "acme", "denied")


def test_synthetic_client_is_scoped_to_exactly_its_tenant(world: World) -> None:
    client = synthetic_client("acme")
    assert (client.name, client.all_tenants, client.tenants, client.networks) == (
        IN_PROCESS_CLIENT, False, ("acme",), ())
    tenants = {tenant.id: tenant for tenant, _ in (world.acme, world.newco, world.platform)}
    assert decide_tenant(client, [], tenants).id == "acme"
    with pytest.raises(ReplyError) as caught:
        decide_tenant(client, ["platform"], tenants)
    assert caught.value.reply == TENANT_OUT_OF_SCOPE


async def test_pipeline_refuses_a_client_that_is_not_the_transactions(env: Path, world: World) -> None:
    """The log line names `tx.client`; a different client handed in is an internal error, nothing sent."""
    settings = make_settings(env, database=env_url())
    store = open_store(env)
    try:
        directory = Directory(store, keys_dir=settings.keys_dir, reload_interval=1.0)
        directory.load()
        pipeline = Pipeline(settings=settings, directory=directory, upstream=make_upstream(settings))
        tx = Transaction(id="T1", peer=Peer(ip="127.0.0.1", helo="t"), client="someone-else",
                         authenticated=False, mail_from="a@acme.test", recipients=(RCPT,),
                         data=b"Subject: x\r\n\r\nx\r\n", received_at=utcnow())
        assert await pipeline.handle(tx, client=synthetic_client("acme")) == INTERNAL_ERROR
    finally:
        store.close()
    assert outbox(env) == []
