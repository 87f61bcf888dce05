"""DKIM key files: issue RSA-2048 keys, write them atomically 0600, and load them failing closed."""

from __future__ import annotations

import base64
import os
import secrets
import stat
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.atomicfile import write_atomically

KEY_BITS = 2048  # RFC 8301 3.2: signers MUST use at least 1024, SHOULD use 2048; we require 2048.
MIN_KEY_BITS = 2048


class KeyFileError(Exception):
    """A key cannot be used; the message names the file and the problem (never the key itself)."""


def new_selector(now: datetime) -> str:
    """A fresh selector: `ar` + date + random hex, a valid DNS label that never repeats in practice."""
    return f"ar{now:%Y%m%d}{secrets.token_hex(3)}"


def generate_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)


def public_key_b64(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> str:
    """The `p=` value: base64 of the DER SubjectPublicKeyInfo (RFC 6376 3.6.1)."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


def key_path(tenant_id: str, selector: str) -> str:
    """Where a tenant's key lives, relative to RELAY_KEYS_DIR."""
    return f"{tenant_id}/{selector}.pem"


def _ensure_private_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)


def write_private_key(keys_dir: Path, relative: str, key: rsa.RSAPrivateKey) -> Path:
    """Write PKCS#8 PEM atomically, 0600 (relay.atomicfile: temp file, fsync, rename)."""
    target = keys_dir / relative
    _ensure_private_dir(keys_dir)
    _ensure_private_dir(target.parent)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return write_atomically(target, pem, mode=0o600)


def load_private_key(keys_dir: Path, relative: str) -> rsa.RSAPrivateKey:
    """Load a signing key, refusing anything that is not a private, RSA, >= 2048-bit key file."""
    path = keys_dir / relative
    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} is missing") from None
    except OSError as exc:
        raise KeyFileError(f"key file {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"key file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise KeyFileError(
            f"key file {path} is readable by group or others (mode {stat.S_IMODE(info.st_mode):04o}, want 0600)"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"key file {path} cannot be read: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"key file {path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFileError(f"key file {path} is not an RSA key")
    if key.key_size < MIN_KEY_BITS:
        raise KeyFileError(f"key file {path} has {key.key_size} bits, fewer than {MIN_KEY_BITS}")
    return key
