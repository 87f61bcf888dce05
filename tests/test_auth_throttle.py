"""AUTH guessing across sessions: failures from one address (loopback included) are held back with a
back-off that doubles up to a cap (454 4.7.0, then 421 4.7.0 and close); successes never count; the
scrypt checks run on threads of their own with a bounded queue."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.core.credentials import hash_secret
from relay.core.models import Client, TenantStatus
from relay.core.replies import AUTH_BUSY, ReplyError
from relay.core.store import SqliteStore, utcnow
from relay.policy import auththrottle
from relay.policy import senders as policy
from relay.policy.auththrottle import (
    FIRST_BACKOFF,
    MAX_ADDRESSES,
    MAX_BACKOFF,
    MAX_FAILURES,
    REFUSALS_BEFORE_CLOSE,
    WINDOW,
    AuthThrottle,
    Verdict,
    address_key,
)
from relay.policy.senders import AUTH_QUEUE, Authenticator
from relay.service.relay import RunningRelay
from tests.factories import make_tenant
from tests.relay_harness import RawClient, add_client, make_settings, relay_running


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def failing(throttle: AuthThrottle, ip: str, times: int) -> list[float]:
    return [throttle.failed(ip) for _ in range(times)]


# ------------------------------------------------------------------ the throttle, on a clock of its own


def test_five_failures_are_free_then_each_further_one_doubles_the_hold_up_to_the_cap() -> None:
    clock = FakeClock()
    throttle = AuthThrottle(clock=clock)
    assert failing(throttle, "127.0.0.1", MAX_FAILURES - 1) == [0.0] * (MAX_FAILURES - 1)
    assert throttle.check("127.0.0.1") is Verdict.ALLOW  # loopback is not exempt, but not held yet
    holds = []
    for _ in range(12):
        holds.append(throttle.failed("127.0.0.1"))
        assert throttle.check("127.0.0.1") is Verdict.REFUSE
        clock.now += holds[-1]  # the client waits its hold out, then fails again
        assert throttle.check("127.0.0.1") is Verdict.ALLOW
    assert holds == [min(FIRST_BACKOFF * 2**n, MAX_BACKOFF) for n in range(12)]
    assert holds[-1] == MAX_BACKOFF


def test_a_client_that_keeps_going_while_held_gets_454_then_421() -> None:
    throttle = AuthThrottle(clock=FakeClock())
    failing(throttle, "192.0.2.7", MAX_FAILURES)
    verdicts = [throttle.check("192.0.2.7") for _ in range(REFUSALS_BEFORE_CLOSE + 2)]
    assert verdicts == [Verdict.REFUSE] * REFUSALS_BEFORE_CLOSE + [Verdict.CLOSE] * 2
    assert throttle.check("192.0.2.8") is Verdict.ALLOW  # another address is not held


def test_failures_count_within_the_window_only() -> None:
    clock = FakeClock()
    throttle = AuthThrottle(clock=clock)
    for _ in range(3 * MAX_FAILURES):
        assert throttle.failed("192.0.2.7") == 0.0
        clock.now += WINDOW / (MAX_FAILURES - 1) + 0.01  # never MAX_FAILURES within one window
    assert throttle.check("192.0.2.7") is Verdict.ALLOW


def test_the_back_off_starts_over_after_a_quiet_window() -> None:
    clock = FakeClock()
    throttle = AuthThrottle(clock=clock)
    assert failing(throttle, "192.0.2.7", MAX_FAILURES + 2)[-3:] == [FIRST_BACKOFF, 2 * FIRST_BACKOFF,
                                                                   4 * FIRST_BACKOFF]
    clock.now += 4 * FIRST_BACKOFF + WINDOW
    assert failing(throttle, "192.0.2.7", MAX_FAILURES)[-1] == FIRST_BACKOFF


def test_an_ipv6_client_counts_by_its_slash_64() -> None:
    throttle = AuthThrottle(clock=FakeClock())
    for host in range(MAX_FAILURES):
        throttle.failed(f"2001:db8:1:2::{host + 1:x}")
    assert throttle.check("2001:db8:1:2:ffff::9") is Verdict.REFUSE
    assert throttle.check("2001:db8:1:3::1") is Verdict.ALLOW
    assert address_key("10.1.2.3") == "10.1.2.3" and address_key("::1") == "::/64"


def test_memory_is_bounded_the_least_recent_address_is_forgotten() -> None:
    throttle = AuthThrottle(clock=FakeClock())
    failing(throttle, "192.0.2.7", MAX_FAILURES - 1)
    for n in range(MAX_ADDRESSES):
        throttle.failed(f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}")
    assert throttle.failed("192.0.2.7") == 0.0, "its earlier failures were forgotten"


# ------------------------------------------------------------------ the authenticator


def a_client(secret: str) -> Client:
    return Client(name="billing", secret_hash=hash_secret(secret), all_tenants=True, tenants=(), networks=(),
                  created_at=utcnow())


async def test_successes_never_count() -> None:
    clients = {"billing": a_client("right")}
    auth = Authenticator(throttle=AuthThrottle(clock=FakeClock()))
    try:
        for _ in range(MAX_FAILURES - 1):
            auth.admit("127.0.0.1")
            assert await auth.authenticate(clients, "billing", "wrong", ip="127.0.0.1") is None
        for _ in range(50):
            auth.admit("127.0.0.1")
            assert await auth.authenticate(clients, "billing", "right", ip="127.0.0.1") is not None
        auth.admit("127.0.0.1")  # still not held: 4 failures, 50 successes
    finally:
        auth.close()


async def test_scrypt_runs_on_its_own_threads_with_a_bounded_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    clients = {"billing": a_client("right")}
    release, threads = threading.Event(), set()

    def blocked_verify(secret: str, stored: str) -> bool:
        threads.add(threading.current_thread().name)
        assert release.wait(30)
        return False

    monkeypatch.setattr(policy, "verify_secret", blocked_verify)
    auth = Authenticator()
    try:
        waiting = [asyncio.ensure_future(auth.authenticate(clients, "billing", f"guess{n}", ip=f"10.0.0.{n}"))
                   for n in range(AUTH_QUEUE)]
        await asyncio.sleep(0)  # a yield: each has handed its check to the AUTH threads
        with pytest.raises(ReplyError) as refused:
            await auth.authenticate(clients, "billing", "one more", ip="10.0.1.1")
        assert refused.value.reply == AUTH_BUSY and str(AUTH_BUSY).startswith("454 4.7.0")
        release.set()
        assert await asyncio.gather(*waiting) == [None] * AUTH_QUEUE
    finally:
        release.set()
        auth.close()
    assert threads and all(name.startswith("relay-auth") for name in threads), threads
    assert len(threads) <= policy.AUTH_THREADS


# ------------------------------------------------------------------ from real sessions on loopback


@dataclass
class World:
    store: SqliteStore
    secret: str
    checks: list[str]  # the thread of every scrypt check


@pytest.fixture
async def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    settings = make_settings(tmp_path)
    store = SqliteStore(settings.database_path)
    make_tenant(store, settings, "acme", domain="acme.test", status=TenantStatus.VERIFIED)
    secret = add_client(store, "billing", tenants=("acme",))
    checks: list[str] = []
    real_verify = policy.verify_secret

    def counted(secret: str, stored: str) -> bool:
        checks.append(threading.current_thread().name)
        return real_verify(secret, stored)

    monkeypatch.setattr(policy, "verify_secret", counted)
    # A first hold longer than any test run: what follows does not depend on how fast this machine is.
    monkeypatch.setattr(auththrottle, "FIRST_BACKOFF", 600.0)
    yield World(store, secret, checks)
    store.close()


def token(user: str, secret: str) -> str:
    return base64.b64encode(f"\0{user}\0{secret}".encode()).decode()


async def one_session(relay: RunningRelay, secret: str) -> tuple[int, str, bool]:
    """A new session with one AUTH PLAIN: its reply, and whether the relay closed the connection."""
    client = await RawClient.connect(relay)
    await client.command("EHLO guesser.test")
    code, text = await client.command(f"AUTH PLAIN {token('billing', secret)}")
    closed = await client.reader.read() == b"" if code == 421 else False
    client.close()
    return code, text, closed


async def test_thirty_guesses_in_thirty_sessions_cost_five_checks(world: World, tmp_path: Path) -> None:
    async with relay_running(make_settings(tmp_path), world.store) as relay:
        replies = [await one_session(relay, f"guess-{n}") for n in range(30)]
        right = await one_session(relay, world.secret)  # held back: even the right secret is not checked
    codes = [code for code, _, _ in replies]
    assert codes == [535] * MAX_FAILURES + [454] * REFUSALS_BEFORE_CLOSE + [421] * (
        30 - MAX_FAILURES - REFUSALS_BEFORE_CLOSE), codes
    assert all(text.startswith("4.7.0") for code, text, _ in replies if code in (454, 421))
    assert all(closed for code, _, closed in replies if code == 421)
    assert right[0] == 421
    assert len(world.checks) == MAX_FAILURES, "no scrypt while held back"
    assert all(name.startswith("relay-auth") for name in world.checks), world.checks


async def test_many_logins_from_loopback_never_trip_it(world: World, tmp_path: Path) -> None:
    async with relay_running(make_settings(tmp_path), world.store) as relay:
        wrong = [await one_session(relay, "typo") for _ in range(MAX_FAILURES - 1)]
        good = [await one_session(relay, world.secret) for _ in range(40)]
    assert [code for code, _, _ in wrong] == [535] * (MAX_FAILURES - 1)
    assert [code for code, _, _ in good] == [235] * 40
