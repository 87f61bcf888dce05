"""Client secrets: generated once, stored only as a salted slow hash (scrypt), checked in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# scrypt parameters (RFC 7914): N=2^14, r=8, p=1 costs ~16 MiB and tens of milliseconds per check,
# which is why the relay verifies in a thread and caches successes, never the other way round.
_N, _R, _P = 2**14, 8, 1
_PREFIX = "scrypt"


def new_secret() -> str:
    """A client secret: 32 random bytes, URL-safe text (safe in AUTH PLAIN/LOGIN and shells)."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    b64 = base64.b64encode
    return f"{_PREFIX}${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_secret(secret: str, stored: str) -> bool:
    try:
        prefix, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if prefix != _PREFIX:
            return False
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
        digest = hashlib.scrypt(
            secret.encode(), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)
