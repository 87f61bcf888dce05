"""Signed-in browsers: a random session id in a cookie, only its SHA-256 in the store.

A copy of the store (a backup, a leaked file) therefore signs nobody in. A session ends after LIFETIME
or on signing out; each request reads the user again, so a changed role or scope applies at once.
The cookie is HttpOnly and SameSite=Strict always, and Secure with the `__Host-` prefix over HTTPS
(the prefix makes a browser refuse it without Secure, a Domain or a Path other than /).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response

from admin.web.security import new_token
from relay.core.models import User
from relay.core.store import Store, WebSession

LIFETIME = timedelta(hours=8)
SESSION_COOKIE = "relay_session"
SIGNIN_COOKIE = "relay_signin"  # the sign-in form's CSRF token, before there is a session
SIGNIN_LIFETIME = timedelta(hours=1)


@dataclass(frozen=True)
class SignedIn:
    """The session of a request and the user it acts as."""

    session: WebSession
    user: User


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def secure(request: Request) -> bool:
    """Whether the browser talks HTTPS to us (directly, or through a proxy uvicorn trusts)."""
    return request.url.scheme == "https"


def cookie_name(request: Request, base: str) -> str:
    return f"__Host-{base}" if secure(request) else base


def set_cookie(response: Response, request: Request, base: str, value: str, lifetime: timedelta) -> None:
    response.set_cookie(cookie_name(request, base), value, max_age=int(lifetime.total_seconds()),
                        path="/", secure=secure(request), httponly=True, samesite="strict")


def clear_cookie(response: Response, request: Request, base: str) -> None:
    response.delete_cookie(cookie_name(request, base), path="/", secure=secure(request),
                           httponly=True, samesite="strict")


def start(store: Store, user: User, now: datetime) -> tuple[str, WebSession]:
    """A new session for `user` (a new id at every sign-in: no fixation); the id goes in the cookie."""
    store.delete_expired_web_sessions(now)
    session_id = new_token()
    session = WebSession(id_hash=_hash(session_id), user=user.name, csrf_token=new_token(),
                         created_at=now, expires_at=now + LIFETIME)
    store.add_web_session(session)
    return session_id, session


def current(store: Store, request: Request, now: datetime) -> SignedIn | None:
    """The request's live session and its user, or None (no cookie, unknown, expired, user gone)."""
    session_id = request.cookies.get(cookie_name(request, SESSION_COOKIE))
    if not session_id:
        return None
    session = store.get_web_session(_hash(session_id))
    if session is None or session.expires_at <= now:
        return None
    user = store.get_user(session.user)
    return SignedIn(session, user) if user is not None else None


def end(store: Store, request: Request) -> None:
    """Forget the request's session in the store (the cookie is cleared by the response)."""
    session_id = request.cookies.get(cookie_name(request, SESSION_COOKIE))
    if session_id:
        store.delete_web_session(_hash(session_id))
