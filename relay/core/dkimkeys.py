"""DKIM key files: issue RSA-2048 keys, write them atomically 0600, and load them failing closed."""

from __future__ import annotations

import base64
import errno
import os
import secrets
import stat
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from relay.core.atomicfile import write_atomically

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
    """Write PKCS#8 PEM atomically, 0600 (relay.core.atomicfile: temp file, fsync, rename)."""
    target = keys_dir / relative
    _ensure_private_dir(keys_dir)
    _ensure_private_dir(target.parent)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return write_atomically(target, pem, mode=0o600)


# Opening a key, one path component at a time below RELAY_KEYS_DIR: never through a symlink (O_NOFOLLOW
# on every component, O_DIRECTORY on the directories), and O_NONBLOCK so that a FIFO planted in the
# key's place cannot hang the reload (it is refused as "not a regular file" after fstat).
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def key_file_parts(relative: str) -> list[str]:
    """The store's key_file as path components below RELAY_KEYS_DIR, or KeyFileError (absolute, `..`)."""
    parts = relative.split("/")
    if relative.startswith("/") or "\x00" in relative or any(part in ("", ".", "..") for part in parts):
        raise KeyFileError(f"key file {relative!r} is not a plain path inside the keys directory")
    return parts


def key_file_path(keys_dir: Path, relative: str) -> Path:
    """Where the store's key_file is, checked by `key_file_parts` (never a path outside `keys_dir`)."""
    return keys_dir.joinpath(*key_file_parts(relative))


def _open_key_file(keys_dir: Path, parts: list[str]) -> int:
    """A read descriptor for keys_dir/parts, with no symlink anywhere below keys_dir (OSError if so)."""
    fd = os.open(keys_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the configured dir may be a link
    try:
        for part in parts[:-1]:
            inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)


def _first_link(keys_dir: Path, parts: list[str]) -> Path | None:
    """The first symbolic link on the way from keys_dir to the key file, if any (for the message)."""
    for depth in range(1, len(parts) + 1):
        candidate = keys_dir.joinpath(*parts[:depth])
        if candidate.is_symlink():
            return candidate
    return None


def _open_error(keys_dir: Path, parts: list[str], exc: OSError) -> KeyFileError:
    path = keys_dir.joinpath(*parts)
    if isinstance(exc, FileNotFoundError):
        return KeyFileError(f"key file {path} is missing")
    link = _first_link(keys_dir, parts) if exc.errno in (errno.ELOOP, errno.ENOTDIR) else None
    if link is not None:  # O_NOFOLLOW met it: ELOOP for the file itself, ENOTDIR for a directory
        return KeyFileError(f"key file {path} is reached through the symbolic link {link}; keys are read "
                            "only from regular files inside the keys directory")
    return KeyFileError(f"key file {path} cannot be read: {exc.strerror}")


def _read_key_file(keys_dir: Path, relative: str) -> bytes:
    """The bytes of a private (0600), regular key file inside keys_dir, or KeyFileError."""
    parts = key_file_parts(relative)
    path = keys_dir.joinpath(*parts)
    try:
        fd = _open_key_file(keys_dir, parts)
    except OSError as exc:
        raise _open_error(keys_dir, parts, exc) from None
    with os.fdopen(fd, "rb") as handle:  # fstat on what was opened: no window for a swap after a check
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise KeyFileError(f"key file {path} is readable by group or others "
                               f"(mode {stat.S_IMODE(info.st_mode):04o}, want 0600)")
        try:
            return handle.read()
        except OSError as exc:
            raise KeyFileError(f"key file {path} cannot be read: {exc.strerror}") from None


def load_private_key(keys_dir: Path, relative: str, *, public_key: str) -> rsa.RSAPrivateKey:
    """Load a signing key, refusing anything that is not a private, RSA, >= 2048-bit key file inside
    keys_dir whose public half is `public_key` (the store's `p=` value for its selector)."""
    path = key_file_path(keys_dir, relative)
    data = _read_key_file(keys_dir, relative)
    try:
        # OpenSSL's full RSA consistency check costs ~80 ms per key, minutes for a relay with thousands
        # of tenants at start; the probe signature below proves the same for ~1 ms (and OpenSSL checks
        # every CRT result it signs with, so a broken key never leaks a faulty signature).
        key = serialization.load_pem_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"key file {path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFileError(f"key file {path} is not an RSA key")
    if key.key_size < MIN_KEY_BITS:
        raise KeyFileError(f"key file {path} has {key.key_size} bits, fewer than {MIN_KEY_BITS}")
    # A key copied over this file (another tenant's, an old one) would sign mail that fails at every
    # receiver (RFC 6376 6.1.3: the signature is checked with the published p=); refuse it instead.
    if public_key_b64(key) != public_key:
        raise KeyFileError(f"key file {path} does not match the public key the store holds for this "
                           "selector (another key was put in its place?)")
    if not _signs_verifiably(key):
        raise KeyFileError(f"key file {path} is damaged: its private part does not match its public part")
    return key


PROBE = b"accounton-relay key probe"


def _signs_verifiably(key: rsa.RSAPrivateKey) -> bool:
    """Whether a signature made with the private part verifies with the public part (RFC 8017 8.2)."""
    try:
        signature = key.sign(PROBE, padding.PKCS1v15(), hashes.SHA256())
        key.public_key().verify(signature, PROBE, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True
