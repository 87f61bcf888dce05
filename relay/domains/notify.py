"""Webhook delivery: every tenant status change as a signed JSON POST to RELAY_NOTIFY_URL.

A status change writes its notification into the store's outbox in the same transaction as the change
(so none is lost and none is sent for a change that did not commit); `deliver_due` posts what is due.

The request (one per notification and attempt):

    POST <RELAY_NOTIFY_URL>
    Content-Type: application/json
    X-Relay-Event: tenant.status
    X-Relay-Delivery: <notification id>         the same on every retry: receivers dedupe on it
    X-Relay-Timestamp: <unix seconds of this attempt>
    X-Relay-Signature: sha256=<hex HMAC-SHA256(RELAY_NOTIFY_SECRET, timestamp + "." + body)>

    {"event": "tenant.status", "id", "tenant", "from", "to", "time", "reason",
     "failing_since", "failed_after", "checks": [{"purpose", "name", "status"}]}

A receiver recomputes the HMAC over the exact bytes it received (`verify_signature`), compares in
constant time, and rejects timestamps older than a few minutes (a replayed request keeps its old
timestamp; signing it too makes that check meaningful).

Any 2xx is delivered. Anything else (another status, a redirect, which is never followed, a timeout,
a refused connection) is retried with exponential back-off: 30 s, doubling, at most 1 h apart; after
24 h the notification is given up (kept in the store with its last error) and a line is logged.
Delivery never blocks mail or a validation, and never changes a validation's outcome. The secret is
never logged; the URL is logged without credentials or query.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import json
import logging
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from relay.core.models import CheckResult
from relay.core.settings import Settings
from relay.core.store import Notification, Store, utcnow
from relay.domains.lifecycle import default_holder

log = logging.getLogger("relay.notify")

EVENT = "tenant.status"
TIMEOUT = 5.0  # seconds for one POST: a slow receiver must not hold up a validation
FIRST_RETRY = timedelta(seconds=30)
MAX_RETRY = timedelta(hours=1)
GIVE_UP_AFTER = timedelta(hours=24)
LEASE = timedelta(seconds=TIMEOUT + 25)  # one process posts a given notification at a time


@dataclass(frozen=True)
class Delivery:
    """One attempt: delivered, or the error with the next try (`retry_at` None: given up)."""

    notification: int
    delivered: bool
    error: str = ""
    retry_at: datetime | None = None


def status_event(
    *, tenant: str, before: str, after: str, time: datetime, reason: str,
    failing_since: datetime | None, failed_after: datetime | None, checks: Sequence[CheckResult],
) -> str:
    """The JSON body of a status change (module docstring)."""
    return json.dumps({
        "event": EVENT,
        "id": secrets.token_hex(16),
        "tenant": tenant,
        "from": before,
        "to": after,
        "time": time.isoformat(),
        "reason": reason,
        "failing_since": failing_since.isoformat() if failing_since else None,
        "failed_after": failed_after.isoformat() if failed_after else None,
        "checks": [{"purpose": c.purpose, "name": c.name, "status": c.status.value} for c in checks],
    }, ensure_ascii=False, separators=(",", ":"))


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 (RFC 2104) over `timestamp + "." + body`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(secret: str, timestamp: str, body: bytes, header: str, *,
                     max_age: float | None = None, now: float | None = None) -> bool:
    """For receivers: whether `X-Relay-Signature` fits the body and timestamp (and is recent)."""
    if max_age is not None:
        try:
            age = (time.time() if now is None else now) - int(timestamp)
        except ValueError:
            return False
        if abs(age) > max_age:
            return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


def retry_at(notification: Notification, now: datetime) -> datetime | None:
    """The next attempt after a failed one: 30 s doubling up to 1 h; None once 24 h have passed."""
    if now - notification.created_at >= GIVE_UP_AFTER:
        return None
    wait = FIRST_RETRY * (1 << min(notification.attempts, 16))
    return now + min(wait, MAX_RETRY)


def where(url: str) -> str:
    """The URL as logs and messages show it: no user, password or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a delivery: the signature was made for this URL's receiver."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _post(url: str, body: bytes, headers: dict[str, str]) -> None:
    """One POST (blocking, run in a thread); raises `OSError` or `HTTPException` unless 2xx."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    # No proxy from the environment: the receiver is contacted directly, as configured.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    with opener.open(request, timeout=TIMEOUT) as response:
        if not 200 <= response.status < 300:
            raise http.client.HTTPException(f"HTTP {response.status}")


def _headers(secret: str, body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))
    return {"Content-Type": "application/json", "User-Agent": "accounton-relay",
            "X-Relay-Event": EVENT, "X-Relay-Timestamp": timestamp,
            "X-Relay-Signature": sign(secret, timestamp, body)}


def _error(exc: Exception) -> str:
    """A failed attempt in words, without the URL (it is logged separately, redacted)."""
    if isinstance(exc, urllib.error.HTTPError):
        exc.close()
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return f"cannot connect: {exc.reason}"
    if isinstance(exc, TimeoutError):
        return f"no answer within {TIMEOUT:g} s"
    return str(exc) or type(exc).__name__


async def attempt(store: Store, settings: Settings, notification: Notification, now: datetime) -> Delivery:
    """POST one notification and record the outcome in the store."""
    assert settings.notify_url is not None and settings.notify_secret is not None
    body = notification.payload.encode()
    headers = {**_headers(settings.notify_secret, body), "X-Relay-Delivery": str(notification.id)}
    try:
        await asyncio.to_thread(_post, settings.notify_url, body, headers)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return _failed(store, settings, notification, _error(exc), now)
    store.notification_delivered(notification.id, now)
    return Delivery(notification.id, delivered=True)


def _failed(store: Store, settings: Settings, notification: Notification, error: str,
            now: datetime) -> Delivery:
    retry = retry_at(notification, now)
    store.notification_failed(notification.id, error, retry)
    if retry is None:
        log.warning("notification %d to %s given up after %d attempts: %s", notification.id,
                    where(settings.notify_url or ""), notification.attempts + 1, error)
    return Delivery(notification.id, delivered=False, error=error, retry_at=retry)


async def deliver(store: Store, settings: Settings, ids: Iterable[int], *,
                  holder: str | None = None, now: datetime | None = None) -> list[Delivery]:
    """Post each of these notifications that is still queued and that no other process is posting."""
    if settings.notify_url is None:
        return []
    holder = holder or default_holder()
    now = now or utcnow()
    done: list[Delivery] = []
    for notification_id in ids:
        lease = f"notify:{notification_id}"
        if not store.acquire_lease(lease, holder, now + LEASE, now):
            continue
        try:
            # Re-read under the lease: another process may have delivered it meanwhile.
            notification = store.queued_notification(notification_id)
            if notification is not None:
                done.append(await attempt(store, settings, notification, now))
        finally:
            store.release_lease(lease, holder)
    return done


async def deliver_due(store: Store, settings: Settings, now: datetime | None = None, *,
                      holder: str | None = None) -> list[Delivery]:
    """Post the notifications whose (next) attempt is due: for the relay's loop and cron."""
    now = now or utcnow()
    due = [n.id for n in store.due_notifications(now)]
    return await deliver(store, settings, due, holder=holder, now=now)
