"""Status changes announced to RELAY_NOTIFY_URL: a real HTTP receiver on loopback, signatures, retries."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from relay.core.models import TenantStatus
from relay.core.settings import load_settings
from relay.core.store import Notification, utcnow
from relay.domains import notify
from relay.domains.notify import deliver_due, retry_at, sign, verify_signature
from tests.nsd import zone_text
from tests.test_validate import Cli, Site, make_site

__all__ = ["make_site"]  # a fixture, imported for pytest

SECRET = "s3cret-for-tests"
MakeSite = Callable[..., Site]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class Receiver:
    """An HTTP server on a free loopback port answering each POST with the next scripted status."""

    statuses: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/relay?token=abc"

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch, relay_env: Any) -> Iterator[Receiver]:
    server = Receiver().start()
    monkeypatch.setenv("RELAY_NOTIFY_URL", server.url)
    monkeypatch.setenv("RELAY_NOTIFY_SECRET", SECRET)
    yield server
    server.stop()


def assert_signed(request: Received) -> None:
    headers = request.headers
    assert headers["Content-Type"] == "application/json" and headers["X-Relay-Event"] == "tenant.status"
    assert verify_signature(SECRET, headers["X-Relay-Timestamp"], request.body, headers["X-Relay-Signature"],
                            max_age=300)
    assert not verify_signature("another secret", headers["X-Relay-Timestamp"], request.body,
                                headers["X-Relay-Signature"])
    assert not verify_signature(SECRET, headers["X-Relay-Timestamp"], request.body + b" ",
                                headers["X-Relay-Signature"])


def test_each_status_change_is_posted_signed(cli: Cli, make_site: MakeSite, receiver: Receiver) -> None:
    site = make_site()
    nsd = site.serve(f"{site.dkim()}\n{site.cname}")
    assert cli("validate", "acme", "--as", "olivia").code == 0  # pending -> verified
    assert cli("validate", "acme", "--as", "olivia").code == 0  # no change: nothing posted
    nsd.update({"acme.test": zone_text("acme.test", site.cname, serial=2)})
    result = cli("validate", "acme", "--as", "olivia")  # verified -> degraded
    assert result.code == 1 and result.err == ""
    assert [(r.json["from"], r.json["to"]) for r in receiver.requests] == [
        ("pending", "verified"), ("verified", "degraded")]
    for request in receiver.requests:
        assert_signed(request)
        assert request.path == "/hooks/relay?token=abc"
    degraded = receiver.requests[1].json
    tenant = site.reload()
    assert tenant.last_validated_at is not None and tenant.failing_since is not None
    assert degraded["event"] == "tenant.status" and degraded["tenant"] == "acme"
    assert degraded["reason"] == f"dkim TXT {site.dkim_host}.acme.test missing"
    assert degraded["time"] == tenant.last_validated_at.isoformat()
    assert degraded["failed_after"] == (tenant.failing_since + timedelta(hours=72)).isoformat()
    assert {"purpose": "dkim", "name": f"{site.dkim_host}.acme.test", "status": "missing"} in degraded["checks"]
    assert receiver.requests[0].headers["X-Relay-Delivery"] != receiver.requests[1].headers["X-Relay-Delivery"]
    assert site.store.due_notifications(utcnow() + timedelta(days=2)) == []


def test_a_failed_delivery_is_retried_with_back_off(
    cli: Cli, make_site: MakeSite, receiver: Receiver
) -> None:
    site = make_site(status=TenantStatus.VERIFIED)
    site.serve(site.cname)
    receiver.statuses = [500, 200]
    result = cli("validate", "acme", "--as", "olivia", "--json")
    assert result.code == 1 and json.loads(result.out)["status"] == "degraded", "delivery never decides"
    [line] = result.err.splitlines()
    assert receiver.server is not None
    assert line.startswith("relay-admin: warning: notification 1 could not be delivered to "
                           f"http://127.0.0.1:{receiver.server.server_address[1]}/hooks/relay (HTTP 500);"
                           " queued, next attempt after ")
    assert SECRET not in result.err and "token=abc" not in result.err
    settings = load_settings()
    [queued] = site.store.due_notifications(utcnow() + timedelta(seconds=30))
    assert queued.attempts == 1 and queued.last_error == "HTTP 500"
    assert asyncio.run(deliver_due(site.store, settings, utcnow())) == [], "not due before its retry time"
    [delivery] = asyncio.run(deliver_due(site.store, settings, utcnow() + timedelta(seconds=31)))
    assert delivery.delivered
    first, second = receiver.requests
    assert first.body == second.body and first.headers["X-Relay-Delivery"] == second.headers["X-Relay-Delivery"]
    assert_signed(second)
    assert site.store.due_notifications(utcnow() + timedelta(days=2)) == []


async def test_an_unreachable_receiver_changes_nothing_but_the_queue(
    make_site: MakeSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = make_site()
    stopped = Receiver().start()
    url = stopped.url
    stopped.stop()  # nothing listens on that port any more
    monkeypatch.setenv("RELAY_NOTIFY_URL", url)
    monkeypatch.setenv("RELAY_NOTIFY_SECRET", SECRET)
    settings = load_settings()
    now = utcnow()
    site.store.add_notification('{"event":"tenant.status"}', now)
    [delivery] = await deliver_due(site.store, settings, now)
    assert not delivery.delivered and delivery.error.startswith("cannot connect")
    assert delivery.retry_at == now + timedelta(seconds=30)


async def test_a_redirect_is_not_followed(make_site: MakeSite, receiver: Receiver) -> None:
    site = make_site()
    receiver.statuses = [307]
    now = utcnow()
    site.store.add_notification('{"event":"tenant.status"}', now)
    [delivery] = await deliver_due(site.store, load_settings(), now)
    assert (delivery.delivered, delivery.error, len(receiver.requests)) == (False, "HTTP 307", 1)


async def test_a_notification_being_posted_elsewhere_is_left_alone(make_site: MakeSite, receiver: Receiver) -> None:
    site = make_site()
    now = utcnow()
    ident = site.store.add_notification('{"event":"tenant.status"}', now)
    assert site.store.acquire_lease(f"notify:{ident}", "relay:1:x", now + timedelta(minutes=1), now)
    assert await deliver_due(site.store, load_settings(), now, holder="cli:2:y") == []
    assert receiver.requests == []


def test_no_url_no_notification(cli: Cli, make_site: MakeSite) -> None:
    site = make_site()
    site.serve(f"{site.dkim()}\n{site.cname}")
    assert cli("validate", "acme", "--as", "olivia").code == 0
    assert site.store.due_notifications(utcnow() + timedelta(days=1)) == []


# --- pure parts ---------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    body = b'{"a":1}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("k", "1700000000", body) == f"sha256={expected}"
    assert verify_signature("k", "1700000000", body, f"sha256={expected}")
    assert not verify_signature("k", "1700000000", body, f"sha256={expected}", max_age=300, now=1700000301)
    assert verify_signature("k", "1700000000", body, f"sha256={expected}", max_age=300, now=1700000299)
    assert not verify_signature("k", "not-a-number", body, "sha256=00", max_age=300)


def test_retries_double_from_30_seconds_up_to_an_hour_and_stop_after_a_day() -> None:
    start = utcnow()

    def after(attempts: int, age: timedelta) -> timedelta | None:
        note = Notification(1, start, "{}", attempts, start, "")
        at = retry_at(note, start + age)
        return at - (start + age) if at is not None else None

    waits = [after(n, timedelta(0)) for n in range(9)]
    assert [int(w.total_seconds()) for w in waits if w] == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert after(40, timedelta(hours=24)) is None


def test_logged_url_has_no_credentials_or_query() -> None:
    assert notify.where("https://user:pw@hooks.example:8443/relay?token=t") == "https://hooks.example:8443/relay"
