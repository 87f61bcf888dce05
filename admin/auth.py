"""Sign-in for people and programs: passwords and admin API tokens, kept only as salted slow hashes.

Both are hashed with scrypt (RFC 7914) as client secrets are (`relay.core.credentials`): a 16-byte random
salt per hash, N=2^14, r=8, p=1 (~16 MiB and tens of milliseconds per check), a 32-byte result,
stored as `scrypt$N$r$p$<salt>$<digest>` and compared in constant time (`hmac.compare_digest`).

A token reads `rat_<prefix>_<secret>`: the 8-character prefix names it (in `token revoke`, in the
audit log) and finds its row; the secret is `secrets.token_urlsafe(32)` with its '_' turned into '-'
(still over 255 bits), so a token splits on '_' into exactly three parts; the hash covers the whole
token. A lookup that finds no user, no password or no token still spends one scrypt, so
the time taken does not tell a wrong name from a wrong password.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from functools import cache

from relay.core.credentials import hash_secret, verify_secret
from relay.core.models import ApiToken, User
from relay.core.store import Store

PASSWORD_MIN_LENGTH = 12
TOKEN_SCHEME = "rat"  # "relay admin token": recognisable in a leaked config or a secret scanner
PREFIX_LENGTH = 8
_PREFIX_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"  # no '_': the prefix ends at the next '_'
_TOKEN = re.compile(rf"{TOKEN_SCHEME}_([a-z0-9]{{{PREFIX_LENGTH}}})_([A-Za-z0-9-]+)")
_PREFIX = re.compile(rf"(?:{TOKEN_SCHEME}_)?([a-z0-9]{{{PREFIX_LENGTH}}})(?:_[A-Za-z0-9_-]*)?")
_ATTEMPTS = 5  # prefixes that are already taken before giving up (36^8 of them: never in practice)


def hash_password(password: str) -> str:
    """A salted scrypt hash of `password` (or of a whole token), as the store keeps it."""
    return hash_secret(password)


def verify_password(stored: str, password: str) -> bool:
    """Whether `password` matches the `stored` hash, compared in constant time."""
    return verify_secret(password, stored)


def password_problem(password: str) -> str | None:
    """What is wrong with a new password, in words, or None when it will do."""
    if len(password) < PASSWORD_MIN_LENGTH:
        return (f"too short ({len(password)} characters); use at least {PASSWORD_MIN_LENGTH}, "
                "a passphrase of a few words is fine")
    return None


@cache
def _decoy_hash() -> str:
    """A hash no input matches, checked when there is nothing real to check (equal timing)."""
    return hash_password(secrets.token_urlsafe(32))


def token_prefix(text: str) -> str | None:
    """The prefix named by a whole token, `rat_<prefix>` or the bare prefix; None if it is none of them."""
    match = _PREFIX.fullmatch(text)
    return match.group(1) if match else None


def _new_token() -> tuple[str, str]:
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH))
    secret = secrets.token_urlsafe(32).replace("_", "-")
    return prefix, f"{TOKEN_SCHEME}_{prefix}_{secret}"


def issue_token(store: Store, user_name: str, now: datetime) -> str:
    """A new token acting as `user_name`; the store keeps its prefix and hash, the caller shows it once."""
    for _ in range(_ATTEMPTS):
        prefix, token = _new_token()
        token_hash = hash_password(token)  # slow: outside the write lock
        with store.transaction():
            if store.get_user(user_name) is None:
                raise LookupError(f"no user {user_name!r}")
            if not store.tokens_with_prefix(prefix):
                store.add_token(ApiToken(prefix=prefix, user=user_name, token_hash=token_hash,
                                         created_at=now))
                return token
    raise RuntimeError(f"no free token prefix after {_ATTEMPTS} attempts")


def user_for_token(store: Store, token: str) -> User | None:
    """The user a live token acts as (with its role and scope), or None: unknown, wrong or revoked."""
    match = _TOKEN.fullmatch(token)
    if match is None:  # not even shaped like a token: nothing to look up, nothing to time
        return None
    candidates = store.tokens_with_prefix(match.group(1))
    if not candidates:
        verify_password(_decoy_hash(), token)
        return None
    for candidate in candidates:
        if verify_password(candidate.token_hash, token) and candidate.revoked_at is None:
            return store.get_user(candidate.user)
    return None


def authenticate_password(store: Store, name: str, password: str) -> User | None:
    """The user `name` when `password` is its password; None otherwise, in the same time either way."""
    user = store.get_user(name)
    stored = user.password_hash if user is not None else None
    matches = verify_password(stored or _decoy_hash(), password)
    return user if matches and stored is not None else None
