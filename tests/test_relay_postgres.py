"""Relay processes on one PostgreSQL: admin changes reach every instance by NOTIFY, and a server that
stops mid-run costs no acknowledged mail, no crash, and is picked up again when it returns.

Real `relay` processes (tests.relay_harness.RelayProcess); synchronisation on their log lines and
bounded polls, never sleeps. Measured times are printed (`pytest -s`), not asserted.
"""

from __future__ import annotations

import json
import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from relay.core.models import TenantStatus
from relay.core.store.postgres import PostgresStore
from tests.factories import make_tenant
from tests.postgres import Cluster, require_postgres
from tests.relay_harness import (
    RelayProcess,
    add_client,
    make_settings,
    process_env,
    run_admin,
)

MESSAGE = b"From: app@platform.test\r\nTo: someone@example.test\r\nSubject: S\r\n\r\nBody.\r\n"


def auth_code(port: int, user: str, secret: str) -> int:
    """The reply code to one AUTH PLAIN (235 accepted; `login()` would try LOGIN after a 4xx too)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20) as smtp:
        smtp.ehlo()
        smtp.user, smtp.password = user, secret
        try:
            return smtp.auth("PLAIN", smtp.auth_plain, initial_response_ok=True)[0]
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code


def send_code(port: int, user: str, secret: str) -> int:
    """The reply code that ended one message's attempt (250 = taken)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20) as smtp:
        smtp.ehlo()
        try:
            smtp.login(user, secret)
            refused = smtp.sendmail("app@platform.test", ["someone@example.test"], MESSAGE)
            assert refused == {}
        except smtplib.SMTPRecipientsRefused as exc:
            return next(iter(exc.recipients.values()))[0]
        except smtplib.SMTPResponseException as exc:
            return exc.smtp_code
        return 250


def poll(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Wait for `condition()` to hold, asking again and again up to `timeout` seconds (a bounded poll)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g}s: {what}"


def seen_at(relays: list[RelayProcess], pattern: str) -> list[float]:
    """When each relay logged a line matching `pattern` (time.monotonic), waited for in parallel."""
    times = [0.0] * len(relays)

    def watch(index: int) -> None:
        relays[index].wait_line(pattern, timeout=15)
        times[index] = time.monotonic()

    threads = [threading.Thread(target=watch, args=(index,)) for index in range(len(relays))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert all(times), (pattern, [relay.lines() for relay in relays])
    return times


def test_two_relays_on_one_postgres_see_admin_changes_by_notify(pg_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database=pg_url)
    admin = PostgresStore(pg_url)
    try:
        tenant, _ = make_tenant(admin, settings, "acme", domain="acme.test", status=TenantStatus.VERIFIED)
        add_client(admin, "billing", tenants=("acme",))
        # A 30 s poll: whatever arrives within seconds came by NOTIFY, not by the fallback poll.
        env = process_env(tmp_path, RELAY_DATABASE=pg_url, RELAY_RELOAD_INTERVAL="30s")
        with RelayProcess(env) as one, RelayProcess(env) as two:
            relays = [one, two]
            ports = [relay.port for relay in relays]

            # `relay-admin client add`: both relays hear of the new client and accept it.
            admin_env = dict(env, RELAY_ADMIN_USER="alice")
            assert run_admin(admin_env, "user", "add", "alice", "--role", "owner").returncode == 0
            before = time.monotonic()
            added = run_admin(admin_env, "client", "add", "late", "--tenant", "acme", "--json")
            after = time.monotonic()
            assert added.returncode == 0, added.stderr
            secret = json.loads(added.stdout)["secret"]
            times = seen_at(relays, r"directory reloaded: .*1 client added")
            print(f"\nclient add -> reload: {[round(t - after, 3) for t in times]} s after relay-admin exited "
                  f"(relay-admin took {after - before:.3f} s)")
            assert [auth_code(port, "late", secret) for port in ports] == [235, 235]

            # A tenant's new status, written by another instance: served by both.
            started = time.monotonic()
            admin.save_tenant(replace(tenant, status=TenantStatus.FAILED))
            times = seen_at(relays, r"directory reloaded: .*1 tenant changed")
            print(f"tenant status -> reload: {[round(t - started, 3) for t in times]} s after the commit "
                  "(the poll alone: up to RELAY_RELOAD_INTERVAL, 2 s by default)")
            assert all(t - started < 10 for t in times)  # well before the 30 s poll
            for relay in relays:
                assert relay.stop() == 0
    finally:
        admin.close()


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A cluster of this test's own: it is stopped mid-run, and nothing else may be using it."""
    cluster = Cluster(require_postgres())
    try:
        cluster.init().start()
        yield cluster
    finally:
        if cluster.port and cluster.running():
            cluster.stop("immediate")
        cluster.remove()


def test_postgres_stopped_mid_run_gives_4xx_never_a_lost_message_and_recovers(
    own_cluster: Cluster, tmp_path: Path,
) -> None:
    url = own_cluster.database()
    settings = make_settings(tmp_path, database=url)
    admin = PostgresStore(url)
    try:
        make_tenant(admin, settings, "acme", domain="acme.test", status=TenantStatus.VERIFIED)
        secret = add_client(admin, "billing", tenants=("acme",))
    finally:
        admin.close()
    outbox = tmp_path / "outbox"

    def handed_on() -> int:
        return len(list(outbox.glob("*.eml"))) if outbox.exists() else 0

    env = process_env(tmp_path, RELAY_DATABASE=url, RELAY_RELOAD_INTERVAL="500ms")
    with RelayProcess(env) as relay:
        port = relay.port
        assert send_code(port, "billing", secret) == 250 and handed_on() == 1

        own_cluster.stop("fast")
        accepted = 1
        for _ in range(3):  # a known client: served from memory (250), or 451; never 5xx
            code = send_code(port, "billing", secret)
            assert 400 <= code < 500 or code == 250, code
            accepted += code == 250
            assert handed_on() == accepted  # nothing acknowledged that upstream did not take
        started = time.monotonic()
        unknown = auth_code(port, "newcomer", "whatever")
        took = time.monotonic() - started
        print(f"\nunknown client's AUTH while the store is down: {unknown} in {took:.3f} s")
        assert 400 <= unknown < 500, unknown
        relay.wait_line("store unreachable")
        started = time.monotonic()
        assert 400 <= auth_code(port, "newcomer", "whatever") < 500
        print(f"again, the outage known: {time.monotonic() - started:.3f} s")
        # A known client with a wrong secret gets the same 454, not 535: no name is told apart meanwhile.
        assert auth_code(port, "billing", "wrong secret") == unknown == 454
        assert auth_code(port, "billing", secret) == 235, "the known client, right secret, from memory"

        own_cluster.start()
        admin = PostgresStore(url)
        try:
            late = add_client(admin, "late", tenants=("acme",))
        finally:
            admin.close()
        poll(lambda: auth_code(port, "late", late) == 235, "the client added after recovery logs in")
        relay.wait_line("store answers again")
        assert send_code(port, "late", late) == 250 and handed_on() == accepted + 1
        assert relay.stop() == 0
    outage = [line for line in relay.lines() if "store unreachable" in line]
    assert len(outage) == 1, outage  # one line per outage, not one per message or poll
    assert not [line for line in relay.lines() if "Traceback" in line]
