"""`relay-admin send-test` through the front door: a running relay on a free loopback port, AUTH with the
admin's own credential (fresh per run, never shown, retired afterwards), and the forwarded copy in the
outbox judged as a receiver would, against NSD: pass for a good tenant, the failing check named for a
broken one; no relay listening, a relay on another store, STARTTLS, an SMTP upstream, the reserved name."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import dkim
import pytest

from admin.sendtest_client import RETIRED, SEND_TEST_CLIENT
from relay.core.credentials import hash_secret, new_secret, verify_secret
from relay.core.store import open_store as open_settings_store
from relay.service.relay import RunningRelay
from tests.factories import make_client
from tests.relay_harness import (
    RecordingUpstream,
    RelayProcess,
    Script,
    ScriptedUpstream,
    closed_port,
    eventually,
    make_settings,
    nsd_txt,
    process_env,
    relay_running,
    run_admin,
    self_signed,
    send,
    smtp_upstream,
    values,
)
from tests.sendtest_world import (  # noqa: F401  (fixtures, used by name)
    JSON_KEYS,
    OWNER,
    RCPT,
    STRANGER_IP,
    Cli,
    World,
    build_world,
    check_lines,
    database_url,
    env,
    outbox,
    send_test,
)
from tests.snapshot import (
    Stores,
    assert_one_line_error,
    env_url,
    location,
    open_store,
    restore_template,
    state,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, backend_stores: Stores) -> Iterator[World]:
    yield from build_world(tmp_path_factory, "send-test-relay", backend_stores)


@pytest.fixture
def secrets_issued(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every secret send-test issues (the CLI runs in this process), to prove none of them is ever shown."""
    issued: list[str] = []

    def recording() -> str:
        issued.append(new_secret())
        return issued[-1]

    monkeypatch.setattr("admin.sendtest_client.new_secret", recording)
    return issued


@asynccontextmanager
async def relay_at(env: Path, monkeypatch: pytest.MonkeyPatch, *, database: str | None = None,
                   **fields: Any) -> AsyncIterator[RunningRelay]:
    """The relay in this event loop on a free loopback port, on the store `database` (default: env's,
    RELAY_DATABASE), writing into env's outbox; RELAY_LISTEN points relay-admin at it."""
    settings = make_settings(env, database=database or env_url(), **fields)
    # The relay's reloads query the store on the loop's threads (asyncio.to_thread), and closing the relay
    # does not wait for one under way: the store is closed only once those threads are done with it.
    loop = asyncio.get_running_loop()
    threads = ThreadPoolExecutor(thread_name_prefix="relay-under-test")
    loop.set_default_executor(threads)
    store = open_settings_store(settings)
    try:
        async with relay_running(settings, store) as relay:
            host, port = relay.address
            monkeypatch.setenv("RELAY_LISTEN", f"{host}:{port}")
            yield relay
    finally:
        threads.shutdown(wait=True)
        loop.set_default_executor(ThreadPoolExecutor())
        store.close()


async def run(cli: Cli, *args: str, **kwargs: Any) -> Any:
    """The CLI runs its own event loop: in a thread, while this loop serves the relay."""
    return await asyncio.to_thread(send_test, cli, *args, **kwargs)


def transaction_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "relay.transaction"]


def audit(env: Path, action: str = "send-test") -> list[Any]:
    store = open_store(env)
    try:
        return [entry for entry in store.list_audit() if entry.action == action]
    finally:
        store.close()


def stored_client(env: Path) -> Any:
    store = open_store(env)
    try:
        return store.get_client(SEND_TEST_CLIENT)
    finally:
        store.close()


def assert_never_shown(secrets: list[str], *texts: str) -> None:
    """No secret, nor its AUTH PLAIN token, in any of `texts`."""
    assert secrets, "send-test issued a secret"
    for secret in secrets:
        token = base64.b64encode(f"\0{SEND_TEST_CLIENT}\0{secret}".encode()).decode()
        for text in texts:
            assert secret not in text and token not in text


async def test_good_tenant_passes_every_check_through_the_listener(
    env: Path, world: World, cli: Cli, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    secrets_issued: list[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    selector = world.acme[1].selector
    async with relay_at(env, monkeypatch) as relay:
        port = relay.address[1]
        result = await run(cli)
    assert result.code == 0, result.out + result.err
    [eml] = outbox(env)
    data = eml.read_bytes()
    lines = result.out.splitlines()
    assert lines[0] == f"send-test acme -> {RCPT} through the relay at 127.0.0.1:{port}: accepted"
    checks = check_lines(result.out)
    assert checks["DKIM"].startswith(f"DKIM   pass   d=acme.test s={selector}: The signature with d=acme.test,")
    assert checks["SPF"].startswith("SPF    pass   bounce.acme.test from 127.0.0.1: ")
    assert "bounces.relay.test" in checks["SPF"], "SPF followed the return-path CNAME to the platform's record"
    assert checks["DMARC"].startswith("DMARC  pass   acme.test: From domain acme.test: DKIM d=acme.test is aligned")
    # It came through the listener, authenticated as send-test's own client, not through an in-process pipeline.
    [received] = values(data, "Received")
    assert re.match(r"from relay-admin \((localhost )?\[127\.0\.0\.1\]\)\s+by relay\.test with ESMTPA id ", received)
    [logged] = transaction_lines(caplog)
    assert f"client={SEND_TEST_CLIENT} ip=127.0.0.1 tenant=acme " in logged and "outcome=delivered" in logged
    assert values(data, "X-Relay-Tenant") == [], "the tenant header was removed by the relay"
    assert dkim.verify(data, dnsfunc=nsd_txt(world.nsd.port)), "dkimpy agrees"
    for expected in (f"d=acme.test s={selector}", "bounces@bounce.acme.test", str(eml),
                     values(data, "Message-ID")[0], re.sub(r".* id (\w+);.*", r"\1", received)):
        assert any(expected in line for line in lines[1:]), expected
    [entry] = audit(env)
    assert (entry.actor, entry.tenant, entry.outcome) == (OWNER, "acme", "done")
    assert f"through the relay at 127.0.0.1:{port}: 250 2.0.0" in entry.detail
    assert "dkim=pass spf=pass dmarc=pass" in entry.detail
    details = " ".join(e.detail for e in audit(env, "send-test") + audit(env, "client.add"))
    assert_never_shown(secrets_issued, result.out, result.err, caplog.text, data.decode("utf-8", "replace"), details)


async def test_json_report(env: Path, world: World, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    async with relay_at(env, monkeypatch) as relay:
        port = relay.address[1]
        result = await run(cli, "acme", RCPT, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert set(report) == JSON_KEYS
    [eml] = outbox(env)
    data = eml.read_bytes()
    assert (report["mode"], report["relay"]) == ("relay", f"127.0.0.1:{port}")
    assert report["accepted"] is True and report["reply"].startswith("250 2.0.0 ") and eml.name in report["reply"]
    selector = world.acme[1].selector
    assert report["dkim"] == {"result": "pass", "domain": "acme.test", "reason": (
        f"The signature with d=acme.test, s={selector} verifies with the key at {selector}._domainkey.acme.test.")}
    assert report["spf"]["result"] == "pass" and report["spf"]["domain"] == "bounce.acme.test"
    assert report["spf"]["ip"] == "127.0.0.1"
    assert report["dmarc"]["result"] == "pass" and report["dmarc"]["domain"] == "acme.test"
    assert "p=reject" in report["dmarc"]["reason"]
    assert report["verdict_unavailable"] is None
    assert report["from"] == "Acme Comptabilité <billing@acme.test>"
    assert report["envelope_from"] == "bounces@bounce.acme.test"
    assert report["signature"] == {"domain": "acme.test", "selector": selector}
    assert values(data, "Message-ID") == [report["message_id"]]
    assert report["outbox_file"] == str(eml.resolve())
    assert f"id {report['transaction']};" in " ".join(values(data, "Received"))


async def test_broken_tenant_names_the_failing_check(
    env: Path, world: World, cli: Cli, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """broken.test publishes another key at the selector the relay signs with: a receiver's DKIM fails."""
    async with relay_at(env, monkeypatch):
        text = await run(cli, "broken")
        report = json.loads((await run(cli, "broken", RCPT, "--json")).out)
    assert text.code == 1, text.out + text.err
    selector = world.broken[1].selector
    assert text.out.splitlines()[0].endswith(": accepted, but a receiver would not pass DKIM")
    checks = check_lines(text.out)
    assert checks["DKIM"].startswith(f"DKIM   fail   d=broken.test s={selector}: ")
    assert "key mismatch" in checks["DKIM"]
    assert checks["SPF"].startswith("SPF    pass   ") and checks["DMARC"].startswith("DMARC  pass   ")
    assert report["dkim"]["result"] == "fail" and report["dkim"]["domain"] == "broken.test"
    assert report["dkim"]["reason"] in checks["DKIM"]
    assert report["accepted"] is True


async def test_spf_fails_for_an_address_it_does_not_authorise(
    env: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with relay_at(env, monkeypatch):
        result = await run(cli, "acme", RCPT, "--ip", STRANGER_IP)
    assert result.code == 1, result.out + result.err
    checks = check_lines(result.out)
    assert checks["SPF"].startswith(f"SPF    fail   bounce.acme.test from {STRANGER_IP}: ")
    assert f"{STRANGER_IP} is not authorised to send for bounce.acme.test" in checks["SPF"]
    assert checks["DKIM"].startswith("DKIM   pass") and checks["DMARC"].startswith("DMARC  pass"), \
        "DKIM d=acme.test carries DMARC alone"
    assert result.out.splitlines()[0].endswith("accepted, but a receiver would not pass SPF")


@pytest.mark.parametrize("option", [None, "--relay"])
def test_no_relay_listening_is_one_line_and_changes_nothing(
    env: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch, option: str | None,
) -> None:
    port = closed_port()
    if option is None:
        monkeypatch.setenv("RELAY_LISTEN", f"127.0.0.1:{port}")
        extra: tuple[str, ...] = ()
    else:
        extra = (option, f"127.0.0.1:{port}")
    before = state(env)
    result = send_test(cli, "acme", RCPT, *extra)
    assert_one_line_error(result, 1, "no relay")
    source = "RELAY_LISTEN" if option is None else "--relay"
    assert result.err == (f"relay-admin: no relay is listening at 127.0.0.1:{port} ({source}); start it with "
                          "`relay` or `make run`, or use --in-process\n")
    assert state(env).without_audit() == before.without_audit(), "no credential was issued"
    [entry] = audit(env)
    assert "failed: no relay is listening" in entry.detail


async def test_each_run_has_a_fresh_secret_that_is_retired_afterwards(
    env: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    secrets_issued: list[str],
) -> None:
    """The second run's secret is new while the relay still knows the first one's hash (it reloads every
    0.5 s here): send-test tries AUTH again until the relay has it."""
    caplog.set_level(logging.DEBUG)
    async with relay_at(env, monkeypatch, reload_interval=0.5) as relay:
        first = await run(cli)
        second = await run(cli)
        assert (first.code, second.code) == (0, 0), first.out + first.err + second.out + second.err
        assert len(secrets_issued) == 2 and secrets_issued[0] != secrets_issued[1]
        client = stored_client(env)
        assert (client.all_tenants, client.tenants, client.networks) == (True, (), ())
        assert client.secret_hash == RETIRED and not verify_secret(secrets_issued[1], RETIRED)
        # Once the relay has reloaded (a bounded poll), neither secret opens the client any more.
        for secret in secrets_issued:
            async def refused(secret: str = secret) -> bool:
                outcome = await send(relay, b"Subject: x\r\n\r\nx\r\n", user=SEND_TEST_CLIENT, secret=secret)
                return (outcome.stage, outcome.code) == ("AUTH", 535)

            await eventually(refused)
    delivered = [line for line in transaction_lines(caplog) if "outcome=delivered" in line]
    assert len(delivered) == 2 and all(f"client={SEND_TEST_CLIENT} " in line for line in delivered)
    [created] = audit(env, "client.add")
    assert (created.actor, created.outcome) == (OWNER, "done") and "all tenants" in created.detail
    assert_never_shown(secrets_issued, first.out, first.err, second.out, second.err, caplog.text)


async def test_a_relay_on_another_store_refuses_the_credential_in_bounded_time(
    env: Path, world: World, cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory,
    caplog: pytest.LogCaptureFixture, secrets_issued: list[str], backend_stores: Stores,
) -> None:
    caplog.set_level(logging.DEBUG)
    elsewhere = tmp_path_factory.mktemp("other-store")
    other = backend_stores.copy(world.template, elsewhere)  # the same tenants, in another store
    restore_template(world.template, elsewhere, other)  # and the keys beside it
    monkeypatch.setenv("RELAY_RELOAD_INTERVAL", "200ms")  # relay-admin retries AUTH for 0.2 s + 1 s
    try:
        async with relay_at(env, monkeypatch, database=other) as relay:
            port = relay.address[1]
            result = await run(cli)
    finally:
        backend_stores.discard(other)
    assert_one_line_error(result, 1, "refused send-test's own credential")
    assert result.err == (f"relay-admin: the relay at 127.0.0.1:{port} refused send-test's own credential "
                          "for 1.2 s (535 5.7.8 Authentication credentials invalid): does the relay use the store "
                          f"{location()} (RELAY_DATABASE)?\n")
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("auth failed")]
    assert len(refusals) >= 2 and all(f"user={SEND_TEST_CLIENT!r}" in line for line in refusals), refusals
    assert stored_client(env).secret_hash == RETIRED
    assert outbox(env) == []
    assert_never_shown(secrets_issued, result.out, result.err, caplog.text)


async def test_starttls_pinned_to_the_relays_certificate(
    env: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    other_cert, other_key = self_signed(tmp_path_factory.mktemp("other-tls"))
    async with relay_at(env, monkeypatch, tls_cert=cert, tls_key=key):
        monkeypatch.setenv("RELAY_TLS_CERT", str(cert))
        monkeypatch.setenv("RELAY_TLS_KEY", str(key))
        good = await run(cli)
        monkeypatch.setenv("RELAY_TLS_CERT", str(other_cert))
        monkeypatch.setenv("RELAY_TLS_KEY", str(other_key))
        wrong = await run(cli)
    assert good.code == 0, good.out + good.err
    [eml] = outbox(env)
    assert " with ESMTPSA id " in values(eml.read_bytes(), "Received")[0]
    assert_one_line_error(wrong, 1, f"shows another certificate than {other_cert} (RELAY_TLS_CERT)")


async def test_smtp_upstream_leaves_the_checks_unmade(env: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    async with RecordingUpstream() as upstream:
        monkeypatch.setenv("RELAY_UPSTREAM", f"smtp://127.0.0.1:{upstream.port}")
        async with relay_at(env, monkeypatch, upstream=smtp_upstream(upstream.port)):
            result = await run(cli, "acme", RCPT, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["accepted"] is True and "accepted by upstream: Ok: queued as REC1" in report["reply"]
    assert (report["dkim"], report["spf"], report["dmarc"]) == (None, None, None)
    assert report["verdict_unavailable"].startswith("the forwarded copy is not readable with an SMTP upstream")
    got = upstream.only
    assert " with ESMTPA id " in values(got.data, "Received")[0]
    assert (got.mail_from, got.rcpt_tos) == ("bounces@bounce.acme.test", [RCPT])


async def test_a_relay_with_other_upstream_settings_is_named(
    env: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """relay-admin reads the copy where its own RELAY_UPSTREAM says; a relay configured otherwise is named."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    async with RecordingUpstream() as upstream:
        async with relay_at(env, monkeypatch, upstream=smtp_upstream(upstream.port)):
            smtp = json.loads((await run(cli, "acme", RCPT, "--json")).out)
    monkeypatch.setenv("RELAY_UPSTREAM", f"outbox:{elsewhere}")
    async with relay_at(env, monkeypatch):
        other_dir = json.loads((await run(cli, "acme", RCPT, "--json")).out)
    assert smtp["accepted"] and other_dir["accepted"]
    assert smtp["verdict_unavailable"] == (
        f"the relay's reply names no outbox file, so it does not write to {env / 'outbox'} (RELAY_UPSTREAM); "
        "run relay-admin with the relay's RELAY_UPSTREAM")
    assert other_dir["verdict_unavailable"].startswith(
        f"the relay wrote {Path(other_dir['reply'].split()[-1]).name}, which is not in {elsewhere} (RELAY_UPSTREAM)")
    assert other_dir["dkim"] is None and other_dir["outbox_file"] is None


@pytest.mark.parametrize("name", ["../outside.eml", "sub/inner.eml", "..", "outside"])
async def test_a_reply_naming_a_file_outside_the_outbox_is_not_followed(
    env: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch, name: str,
) -> None:
    """A scripted server in the relay's place: its 250 names a path that leaves the outbox directory."""
    (env / "outbox" / "sub").mkdir(parents=True)
    for planted in (env / "outside.eml", env / "outbox" / "sub" / "inner.eml"):
        planted.write_bytes(b"Return-Path: <x@attacker.test>\r\n\r\nnot ours\r\n")
    script = Script(ehlo=("AUTH PLAIN LOGIN",), after_dot=f"250 2.0.0 OK: written to the outbox as {name}")
    async with ScriptedUpstream(script) as fake:
        result = await run(cli, "acme", RCPT, "--json", "--relay", f"127.0.0.1:{fake.port}")
    report = json.loads(result.out)
    assert report["accepted"] is True and report["outbox_file"] is None and report["dkim"] is None
    assert report["verdict_unavailable"] == f"the relay's reply names {name!r}, which is not a file in {env / 'outbox'}"
    assert "X-Relay-Tenant: acme" in (fake.data or b"").decode(), "send-test names its tenant to the relay"


async def test_a_relay_offering_no_auth_is_named(env: Path, cli: Cli) -> None:
    async with ScriptedUpstream(Script(ehlo=("8BITMIME",))) as fake:
        result = await run(cli, "acme", RCPT, "--relay", f"127.0.0.1:{fake.port}")
    assert_one_line_error(result, 1, f"the relay at 127.0.0.1:{fake.port} offers no AUTH PLAIN on this connection")
    assert "AUTH" not in fake.verbs() and "MAIL" not in fake.verbs()


async def test_refused_by_the_relay(env: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    async with relay_at(env, monkeypatch):
        result = await run(cli, "newco", RCPT, "--json")
        text = await run(cli, "newco")
    assert (result.code, text.code) == (1, 1)
    report = json.loads(result.out)
    assert report["accepted"] is False and report["reply"].startswith("550 5.7.1 ")
    assert report["verdict_unavailable"] == "nothing was forwarded: the relay did not accept the message"
    assert text.out.splitlines()[0].endswith(": refused") and "checks not made: nothing was forwarded" in text.out
    assert outbox(env) == []


def test_the_name_is_reserved_for_send_test(env: Path, cli: Cli) -> None:
    before = state(env)
    for scope in (("--all-tenants",), ("--tenant", "acme")):
        result = cli("client", "add", SEND_TEST_CLIENT, *scope, "--as", OWNER)
        assert_one_line_error(result, 2, f"NAME: {SEND_TEST_CLIENT!r} is reserved for `relay-admin send-test`")
    assert state(env) == before


async def test_a_client_of_that_name_with_a_network_is_never_given_a_secret(
    env: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Made before the name was reserved: its network would be all-tenants without AUTH; send-test will not use it."""
    store = open_store(env)
    try:
        make_client(store, SEND_TEST_CLIENT, hash_secret("unknown"), all_tenants=True, networks=("10.9.0.0/16",))
    finally:
        store.close()
    before = state(env)
    async with relay_at(env, monkeypatch):
        result = await run(cli)
    assert_one_line_error(result, 2, "networks 10.9.0.0/16, a scope send-test never gives it")
    assert state(env) == before and outbox(env) == []


@pytest.mark.parametrize(("args", "field"), [
    (("--ip", "127.0.0.256"), "--ip"),
    (("--relay", "nowhere"), "--relay"),
    (("--relay", "127.0.0.1:0"), "--relay"),
    (("--relay", "127.0.0.1:2525", "--in-process"), "not allowed with argument"),
])
def test_bad_options(env: Path, cli: Cli, args: tuple[str, ...], field: str) -> None:
    before = state(env)
    assert_one_line_error(send_test(cli, "acme", RCPT, *args), 2, field)
    assert state(env) == before


def test_a_relay_process_and_a_relay_admin_process(env: Path, world: World) -> None:
    """Nothing in-process: the `relay` and `relay-admin` console scripts, as an operator runs them."""
    with RelayProcess(process_env(env, RELAY_DATABASE=env_url())) as relay:
        admin = process_env(env, RELAY_DATABASE=env_url(), RELAY_LISTEN=f"127.0.0.1:{relay.port}",
                            RELAY_NAMESERVERS=world.nameservers, RELAY_ADMIN_USER=OWNER)
        done = run_admin(admin, "send-test", "acme", "--to", RCPT, "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        logged = relay.wait_line(rf"client={re.escape(SEND_TEST_CLIENT)} .*tenant=acme .*outcome=delivered")
        assert relay.stop() == 0
    report = json.loads(done.stdout)
    assert [report[check]["result"] for check in ("dkim", "spf", "dmarc")] == ["pass", "pass", "pass"]
    assert f"tx={report['transaction']} " in logged
    assert done.stderr == ""
