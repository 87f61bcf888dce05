"""Web security in one place: response headers (a strict CSP), CSRF tokens, the sign-in throttle, redirects.

- Every response carries a Content-Security-Policy without inline script or style and with nothing
  from elsewhere (the page works on a closed network), and may not be framed.
- Every form that changes something carries the session's CSRF token in a hidden field, compared in
  constant time; the sign-in form, before there is a session, carries one that must equal a cookie
  set with the form (double submit). Cookies are SameSite=Strict on top of that.
- Failed sign-ins are counted per user name and per client address over WINDOW; from the LIMITth on,
  the next attempt must wait BASE_DELAY, doubling with each further failure up to MAX_DELAY.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
HSTS = "max-age=31536000"
STATIC_PREFIX = "/static/"


class SecurityHeaders:
    """ASGI middleware: the headers above on every response; no caching except for static files."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith(STATIC_PREFIX)
        https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers[name] = value
                if https:
                    headers["strict-transport-security"] = HSTS
                # Pages and API answers hold a tenant's data: never kept by a browser or proxy.
                headers["cache-control"] = "no-cache" if static else "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def new_token() -> str:
    """A random token for a cookie or a form (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def same_token(expected: str | None, given: str | None) -> bool:
    """Whether a form's token equals the expected one, compared in constant time; empty never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


_LOCAL_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*")


def safe_next(target: str | None, default: str = "/tenants") -> str:
    """Where to go after signing in: a path on this server only, never another site (`//evil`)."""
    if target and _LOCAL_PATH.fullmatch(target) and "\\" not in target:
        return target
    return default


# The sign-in throttle.
WINDOW = timedelta(minutes=15)
USER_LIMIT = 5  # failures for one user name before it is slowed down
ADDRESS_LIMIT = 20  # failures from one client address (an office behind one address has many users)
BASE_DELAY = timedelta(seconds=30)
MAX_DELAY = timedelta(minutes=15)


@dataclass(frozen=True)
class Wait:
    """How long the next sign-in for a key must wait, and after how many failures."""

    seconds: int
    failures: int


def wait_for(failures: Sequence[datetime], limit: int, now: datetime) -> Wait:
    """Pure rule: under `limit` failures in the window, no wait; then BASE_DELAY after the last
    failure, doubled for each failure beyond the limit, at most MAX_DELAY."""
    if len(failures) < limit:
        return Wait(0, len(failures))
    delay = min(BASE_DELAY * 2 ** min(len(failures) - limit, 16), MAX_DELAY)  # 2**16: no overflow
    remaining = (max(failures) + delay - now).total_seconds()
    return Wait(max(0, int(remaining + 0.999)), len(failures))


def user_key(name: str) -> str:
    return f"user:{name.lower()}"


def address_key(address: str) -> str:
    return f"ip:{address}"
