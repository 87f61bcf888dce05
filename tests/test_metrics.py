"""Metrics and health (relay.service.metrics): what each stage counts, the /readyz rule, prometheus-client's
multiprocess mode, and one scrape summing two real worker processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import smtplib
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, values

from relay.core.metrics import Metrics
from relay.core.settings import HostPort, SettingsError, load_settings
from relay.core.store import Store, open_store
from relay.service import metrics as metrics_module
from relay.service.metrics import MetricsServer, readiness
from relay.service.revalidator import Revalidator
from tests.factories import make_tenant
from tests.relay_harness import (
    RCPT,
    RELAY_SCRIPT,
    RecordingUpstream,
    RelayProcess,
    Script,
    ScriptedUpstream,
    closed_port,
    eventually,
    make_settings,
    process_env,
    relay_running,
    send,
    smtp_upstream,
)
from tests.snapshot import verified_acme

MESSAGE = b"From: app@platform.test\r\nTo: someone@example.test\r\nSubject: Count me\r\n\r\nBody.\r\n"


@dataclass
class Site:
    tmp: Path
    store: Store
    secret: str
    database: str


@pytest.fixture
def site(tmp_path: Path, database_url: str) -> Iterator[Site]:
    """A store with the verified tenant `acme` and its client `billing`."""
    store, _, secret = verified_acme(make_settings(tmp_path, database=database_url))
    yield Site(tmp_path, store, secret, database_url)
    store.close()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return int(answer.status), bytes(answer.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


# ------------------------------------------------------------------ the /readyz rule (pure)


def test_ready_when_store_read_keys_usable_and_upstream_answering() -> None:
    metrics = Metrics()
    now = time.time()
    metrics.store_read.set(now - 1)
    metrics.key_unusable.labels("acme").set(0)
    metrics.upstream_answered(connected=True)
    assert readiness(metrics.registry, now=now, reload_interval=2).problems == {}


def test_not_ready_names_each_problem() -> None:
    metrics = Metrics()
    now = time.time()
    assert readiness(metrics.registry, now=now, reload_interval=2).problems == {
        "store": "not read yet (the store does not exist, or cannot be read)"}
    metrics.store_read.set(now - 60)
    metrics.key_unusable.labels("beta").set(1)
    metrics.key_unusable.labels("acme").set(1)
    metrics.key_unusable.labels("gamma").set(0)
    metrics.upstream_ok.set(now - 30)
    metrics.upstream_down.set(now - 5)
    state = readiness(metrics.registry, now=now, reload_interval=2)
    assert not state.ready
    assert state.problems == {
        "store": "last read 60s ago (more than 10s)",
        "keys": "no usable signing key for tenant acme, beta",
        "upstream": "unreachable 5s ago (no answer from it since)",
    }
    assert state.body() == {"ready": False, "not_ready": state.problems}


def test_the_store_window_follows_the_reload_interval() -> None:
    metrics = Metrics()
    now = time.time()
    metrics.store_read.set(now - 20)
    assert readiness(metrics.registry, now=now, reload_interval=10).ready  # 3 x 10 s
    assert not readiness(metrics.registry, now=now, reload_interval=2).ready  # at least 10 s


def test_an_upstream_failure_counts_for_a_minute_or_until_an_answer() -> None:
    metrics = Metrics()
    now = time.time()
    metrics.store_read.set(now)
    metrics.upstream_down.set(now - 61)
    assert readiness(metrics.registry, now=now, reload_interval=2).ready, "older than a minute"
    metrics.upstream_down.set(now - 2)
    assert not readiness(metrics.registry, now=now, reload_interval=2).ready
    metrics.upstream_ok.set(now - 1)
    assert readiness(metrics.registry, now=now, reload_interval=2).ready, "a later exchange got an answer"


# ------------------------------------------------------------------ multiprocess mode (the adapter)


def test_multiprocess_mode_writes_values_to_files_and_adds_them_up() -> None:
    """relay.service.metrics switches prometheus-client's value class after import: this fails if that stops working."""
    saved = os.environ.pop(metrics_module.MULTIPROC_VARIABLE, None)
    path = metrics_module.enable_multiprocess()
    try:
        assert os.environ[metrics_module.MULTIPROC_VARIABLE] == str(path)
        metrics = Metrics()
        metrics.messages.labels("acme", "delivered").inc(3)
        metrics.sessions_open.inc()
        assert list(path.glob("counter_*.db")) and list(path.glob("gauge_livesum_*.db"))
        registry = metrics_module.multiprocess_registry(path)
        assert value(registry, "relay_messages_total", tenant="acme", outcome="delivered") == 3
        assert value(registry, "relay_sessions_open") == 1
        metrics_module.worker_exited(path, os.getpid())  # a dead worker's sessions leave the sum
        assert value(registry, "relay_sessions_open") == 0
        assert value(registry, "relay_messages_total", tenant="acme", outcome="delivered") == 3, "counts stay"
    finally:
        metrics_module.disable_multiprocess(path)
        if saved is not None:
            os.environ[metrics_module.MULTIPROC_VARIABLE] = saved
    assert not path.exists()
    assert values.ValueClass is values.MutexValue, "back to in-memory values"


# ------------------------------------------------------------------ what the relay counts (in process)


async def test_a_message_moves_the_counters(site: Site) -> None:
    async with RecordingUpstream() as upstream:
        settings = make_settings(site.tmp, database=site.database, upstream=smtp_upstream(upstream.port))
        async with relay_running(settings, site.store) as relay:
            registry = relay.metrics.registry
            assert value(registry, "relay_tenants", status="verified") == 1
            assert value(registry, "relay_store_last_read_timestamp_seconds") > 0
            outcome = await send(relay, MESSAGE, user="billing", secret=site.secret)
            assert outcome.code == 250, outcome
            wrong = await send(relay, MESSAGE, user="billing", secret="not-the-secret")
            assert wrong.code == 535, wrong
            await eventually(lambda: value(registry, "relay_sessions_open") == 0)
    assert value(registry, "relay_messages_total", tenant="acme", outcome="delivered") == 1
    assert value(registry, "relay_upstream_seconds_count") == 1
    assert value(registry, "relay_sign_seconds_count") == 1
    assert value(registry, "relay_upstream_last_ok_timestamp_seconds") > 0
    # 220 EHLO 235 250 250 250 221, twice, less what the failed AUTH did not get to; 354 once; 535 once.
    assert value(registry, "relay_replies_total", **{"class": "3xx"}) == 1
    assert value(registry, "relay_replies_total", **{"class": "5xx"}) == 1
    assert value(registry, "relay_replies_total", **{"class": "2xx"}) >= 8
    assert value(registry, "relay_signing_failures_total", tenant="acme") == 0


async def test_refusals_deferrals_and_an_unreachable_upstream(site: Site) -> None:
    script = Script(rcpt={"nobody@example.test": "550 5.1.1 No such user"})
    async with ScriptedUpstream(script) as upstream:
        settings = make_settings(site.tmp, database=site.database, upstream=smtp_upstream(upstream.port))
        async with relay_running(settings, site.store) as relay:
            refused = await send(relay, MESSAGE, user="billing", secret=site.secret, rcpts=("nobody@example.test",))
            assert refused.code == 550, refused
    settings = make_settings(site.tmp, database=site.database, upstream=smtp_upstream(closed_port()))
    async with relay_running(settings, site.store) as down:
        deferred = await send(down, MESSAGE, user="billing", secret=site.secret)
        assert deferred.code == 451, deferred
        state = readiness(down.metrics.registry, now=time.time(), reload_interval=settings.reload_interval)
    assert value(relay.metrics.registry, "relay_messages_total", tenant="acme", outcome="refused") == 1
    assert value(relay.metrics.registry, "relay_upstream_last_ok_timestamp_seconds") > 0, "upstream answered"
    assert value(down.metrics.registry, "relay_messages_total", tenant="acme", outcome="deferred") == 1
    assert value(down.metrics.registry, "relay_upstream_last_unavailable_timestamp_seconds") > 0
    assert list(state.problems) == ["upstream"], state


async def test_a_missing_key_counts_a_signing_failure_and_makes_the_relay_not_ready(site: Site) -> None:
    settings = make_settings(site.tmp, database=site.database)
    [key] = site.store.list_keys("acme")
    (settings.keys_dir / key.key_file).unlink()
    async with relay_running(settings, site.store) as relay:
        outcome = await send(relay, MESSAGE, user="billing", secret=site.secret)
        assert (outcome.code, outcome.text[:5]) == (451, "4.3.5"), outcome
        server = MetricsServer(metrics_module.listen(("127.0.0.1", 0)), relay.metrics.registry,
                               reload_interval=settings.reload_interval).start()
        try:
            base = f"http://127.0.0.1:{server.address[1]}"
            ready = await asyncio.to_thread(get, base + "/readyz")
            alive = await asyncio.to_thread(get, base + "/healthz")
            scraped = await asyncio.to_thread(get, base + "/metrics")
            missing = await asyncio.to_thread(get, base + "/nothing")
        finally:
            server.close()
    assert ready == (503, b'{"ready": false, "not_ready": {"keys": "no usable signing key for tenant acme"}}\n')
    assert alive == (200, b'{"alive": true}\n')
    assert missing[0] == 404
    assert scraped[0] == 200
    text = scraped[1].decode()
    assert 'relay_signing_failures_total{tenant="acme"} 1.0' in text
    assert 'relay_messages_total{outcome="deferred",tenant="acme"} 1.0' in text
    assert 'relay_signing_key_unusable{tenant="acme"} 1.0' in text


async def test_a_tenant_waiting_for_its_turn_is_counted(site: Site) -> None:
    async with ScriptedUpstream(Script(hold_after_dot=True)) as upstream:
        settings = make_settings(site.tmp, database=site.database, upstream=smtp_upstream(upstream.port),
                                 max_inflight_per_tenant=1)
        async with relay_running(settings, site.store) as relay:
            first = asyncio.create_task(send(relay, MESSAGE, user="billing", secret=site.secret))
            await asyncio.wait_for(upstream.dot_arrived.wait(), 20)  # holds acme's only turn
            second = asyncio.create_task(send(relay, MESSAGE, user="billing", secret=site.secret))
            await eventually(lambda: relay.pipeline.gate.users("acme") == 2)
            upstream.release.set()
            assert (await first).code == 250 and (await second).code == 250
    assert value(relay.metrics.registry, "relay_tenant_gate_waits_total") == 1


async def test_revalidation_results_are_counted(tmp_path: Path, database_url: str) -> None:
    # Asked of a closed port, every question fails at once: the check is made and "could not check".
    settings = make_settings(tmp_path, database=database_url, revalidate_interval=1.0, dns_timeout=0.5,
                             nameservers=[HostPort("127.0.0.1", closed_port())])
    store = open_store(settings)
    make_tenant(store, settings, "acme")
    metrics = Metrics()
    revalidator = Revalidator(settings, opener=lambda: open_store(settings), tick=60, metrics=metrics)
    try:
        [report] = await revalidator.tick_once()
    finally:
        await revalidator.stop()
        store.close()
    assert report.outcome == "could not check"
    assert value(metrics.registry, "relay_revalidations_total", result="could_not_check") == 1


# ------------------------------------------------------------------ two worker processes, one scrape


def _send_one(port: int, secret: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.login("billing", secret)
        assert smtp.sendmail("app@platform.test", [RCPT], MESSAGE) == {}


def until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """`check()` once it is truthy: a bounded poll (the harness's `eventually`, for a thread)."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
    return result


def test_one_scrape_sums_every_worker(site: Site) -> None:
    if not RELAY_SCRIPT.exists():
        pytest.skip("the relay console script is not installed in this venv")
    temp = site.tmp / "temp"
    temp.mkdir()
    env = process_env(site.tmp, RELAY_DATABASE=site.database, RELAY_WORKERS="2", RELAY_METRICS_LISTEN="127.0.0.1:0",
                      TMPDIR=str(temp))
    with RelayProcess(env) as relay:
        [metrics_url] = [m.group(1) for line in relay.banner() if (m := re.search(r"metrics on (\S+)", line))]
        port = relay.port
        workers = set(until(lambda: len(relay.children()) == 2 and relay.children()))  # forked after the banner

        def delivered() -> list[str]:
            return [line for line in relay.lines() if "outcome=delivered" in line]

        sent, served_by = 0, set()
        with ThreadPoolExecutor(10) as pool:
            # The kernel hands each connection to either worker; send in bursts until both have served.
            while served_by != workers and sent < 400:
                list(pool.map(lambda _: _send_one(port, site.secret), range(10)))
                sent += 10
                lines = until(lambda: len(delivered()) == sent and delivered())
                served_by = {int(m.group(1)) for line in lines if (m := re.search(r"\[(\d+)\]", line))}
        assert served_by == workers, f"one worker served all {sent} messages"

        def scraped() -> str | None:
            status, body = get(metrics_url)
            assert status == 200
            text = body.decode()
            total = re.search(r'relay_messages_total\{outcome="delivered",tenant="acme"\} (\S+)', text)
            settled = total and float(total.group(1)) == sent and "\nrelay_sessions_open 0.0\n" in text
            return text if settled else None

        text = until(scraped)
        assert f"relay_upstream_seconds_count {float(sent)}" in text
        assert f"relay_sign_seconds_count {float(sent)}" in text
        status, body = get(metrics_url.replace("/metrics", "/readyz"))
        assert (status, json.loads(body)) == (200, {"ready": True, "not_ready": {}})
        assert relay.stop() == 0
    assert list(temp.iterdir()) == [], "the metrics directory is removed at exit"


# ------------------------------------------------------------------ the setting and start-up


def test_the_setting_is_host_port_or_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("RELAY_")]:
        monkeypatch.delenv(name)
    assert load_settings().metrics_listen is None
    monkeypatch.setenv("RELAY_METRICS_LISTEN", "[::1]:9125")
    assert load_settings().metrics_listen == HostPort("::1", 9125)
    monkeypatch.setenv("RELAY_METRICS_LISTEN", "9125")
    with pytest.raises(SettingsError, match=r"^RELAY_METRICS_LISTEN: '9125' has no port \(use host:port\)$"):
        load_settings()


def test_an_address_in_use_stops_start_up_in_one_line(site: Site) -> None:
    if not RELAY_SCRIPT.exists():
        pytest.skip("the relay console script is not installed in this venv")
    taken = metrics_module.listen(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        env = process_env(site.tmp, RELAY_DATABASE=site.database, RELAY_METRICS_LISTEN=f"127.0.0.1:{port}")
        with RelayProcess(env) as relay:
            assert relay.wait() == 2
    finally:
        taken.close()
    assert relay.lines() == [f"relay: RELAY_METRICS_LISTEN: cannot listen on 127.0.0.1:{port}: Address already in use"]
