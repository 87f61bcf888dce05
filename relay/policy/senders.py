"""Who may send what: client authentication, network-bound clients, addresses, the tenant and the identity.

Every function here except the `Authenticator`'s methods is a pure decision over a directory snapshot;
the server hooks gather state and call them, and render the `ReplyError`s they raise.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import logging
import secrets
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from relay.core.credentials import hash_secret, verify_secret
from relay.core.models import Client, Sender, Tenant
from relay.core.replies import (
    AUTH_BUSY,
    AUTH_REQUIRED,
    AUTH_THROTTLED,
    AUTH_THROTTLED_CLOSE,
    BAD_ADDRESS,
    BAD_SENDER,
    SOURCE_ROUTE,
    TENANT_AMBIGUOUS,
    TENANT_MISSING,
    TENANT_NOT_VERIFIED,
    TENANT_OUT_OF_SCOPE,
    TENANT_UNKNOWN,
    ReplyError,
)
from relay.mail.mailbox import is_address
from relay.mail.message import Message, parse_header
from relay.mail.rewrite import Identity
from relay.policy.auththrottle import MAX_FAILURES, WINDOW, AuthThrottle, Verdict

log = logging.getLogger("relay.auth")
_T = TypeVar("_T")


def plain_ip(ip: str) -> str:
    """`ip` as text, an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, RFC 4291 2.5.5.2) as plain IPv4.

    A dual-stack listener (`RELAY_LISTEN=[::]:2525`) sees IPv4 clients in that form; every decision
    and log line that uses a client's address takes it through here, so 127.0.0.1 is loopback and
    10.20.0.5 is in 10.20.0.0/24 whichever socket it came in on.
    """
    if ":" not in ip:
        return ip  # IPv4 (or nothing): the common case, no parsing
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return str(mapped) if mapped is not None else ip


def client_ip(peer: object) -> str:
    """The client's address from a socket's peername (`(host, port, ...)`), through `plain_ip`."""
    return plain_ip(str(peer[0])) if isinstance(peer, tuple) and peer else ""


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(plain_ip(ip)).is_loopback
    except ValueError:
        return False


def auth_allowed(ip: str, *, tls: bool) -> bool:
    """SPEC: AUTH only over TLS, except on loopback (RFC 4954 4: no plaintext passwords on the wire)."""
    return tls or is_loopback(ip)


@functools.lru_cache(maxsize=4096)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """A client's network, parsed once: this is asked at every MAIL and DATA of a network client."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def network_client(clients: Mapping[str, Client], ip: str) -> Client | None:
    """The client bound to the network containing `ip`; the most specific network wins."""
    try:
        address = ipaddress.ip_address(plain_ip(ip))
    except ValueError:
        return None
    best: tuple[int, Client] | None = None
    for client in clients.values():
        for text in client.networks:
            network = _network(text)
            if network is None:
                continue
            if address.version == network.version and address in network:
                if best is None or network.prefixlen > best[0]:
                    best = (network.prefixlen, client)
    return best[1] if best else None


def session_client(
    clients: Mapping[str, Client], *, ip: str, tls: bool, auth_name: str | None
) -> Client:
    """The client of a transaction at MAIL: by AUTH (only where AUTH is allowed), else by network."""
    if auth_name is not None:
        client = clients.get(auth_name)
        if client is not None and auth_allowed(ip, tls=tls):
            return client
        raise ReplyError(AUTH_REQUIRED)  # deleted since AUTH, or AUTH somehow used in the clear
    client = network_client(clients, ip)
    if client is None:
        raise ReplyError(AUTH_REQUIRED)
    return client


def _has_controls(text: str) -> bool:
    return any(ord(char) < 0x20 or ord(char) == 0x7F for char in text)


def check_recipient(address: str) -> str:
    """A RCPT path goes upstream verbatim only as a plain `local@domain` (RFC 5321 4.1.2 Mailbox).

    The local part is a dot-string or one quoted string (`"u@x"@y`), never a mix; `%` and `!` are
    ordinary characters that we never route on. Source routes (`@a:u@b`), address literals and
    anything with controls are refused with 501 5.1.3.
    """
    if _has_controls(address) or not address.isascii():
        raise ReplyError(BAD_ADDRESS)
    if address.startswith("@"):
        raise ReplyError(SOURCE_ROUTE)
    if not is_address(address):
        raise ReplyError(BAD_ADDRESS)
    return address


def check_mail_from(address: str) -> None:
    """The client's MAIL FROM is not used upstream, but it must still be a clean path or `<>`."""
    if address == "<>":
        return
    if _has_controls(address) or not address.isascii() or not is_address(address):
        raise ReplyError(BAD_SENDER)


def tenant_header_values(message: Message | bytes, header: str) -> list[str]:
    """Values of the tenant header, read from raw header lines (folded values unfolded, trimmed).

    `message` is the parsed message (the pipeline's, parsed once) or raw bytes, whose header is parsed here.
    """
    fields = message.fields if isinstance(message, Message) else parse_header(message)[0]
    wanted = header.lower().encode("ascii")
    return [field.value.decode("ascii", errors="replace").strip() for field in fields if field.name == wanted]


def decide_tenant(client: Client, header_values: list[str], tenants: Mapping[str, Tenant]) -> Tenant:
    """SPEC: the credential's only tenant, or the one the tenant header names within its scope."""
    names = set(header_values)
    if len(names) > 1:
        raise ReplyError(TENANT_AMBIGUOUS)
    only = client.tenants[0] if not client.all_tenants and len(client.tenants) == 1 else None
    wanted = names.pop() if names else only
    if wanted is None:
        raise ReplyError(TENANT_MISSING)
    if not client.all_tenants and wanted not in client.tenants:
        raise ReplyError(TENANT_OUT_OF_SCOPE)
    tenant = tenants.get(wanted)
    if tenant is None:
        raise ReplyError(TENANT_UNKNOWN)
    return tenant


@dataclass(frozen=True)
class SendAs:
    """The decided identity: header From/Reply-To, whose key signs, and whose return path bounces."""

    identity: Identity
    signer_tenant: str  # the tenant whose active key signs (the platform's when sending on behalf)
    sender: Sender  # envelope sender = sender.bounce_address; DKIM d= = sender.domain


def decide_identity(
    tenant: Tenant, tenants: Mapping[str, Tenant], *, platform_sender: str | None
) -> SendAs:
    """Verified tenant: its own sender. Otherwise the platform sender on its behalf, or 550 5.7.1."""
    if tenant.status.sends_as_itself:
        identity = Identity(display_name=tenant.sender.name, address=tenant.sender.email, reply_to=None)
        return SendAs(identity=identity, signer_tenant=tenant.id, sender=tenant.sender)
    platform = tenants.get(platform_sender) if platform_sender else None
    if platform is None or not platform.status.sends_as_itself:
        raise ReplyError(TENANT_NOT_VERIFIED)
    identity = Identity(
        display_name=f"{tenant.sender.name} via {platform.sender.name}",
        address=platform.sender.email,
        reply_to=tenant.sender.email,
    )
    return SendAs(identity=identity, signer_tenant=platform.id, sender=platform.sender)


# scrypt (relay.core.credentials) on threads of its own: a burst of logins, right or wrong, never queues in
# front of the loop's default executor (reloads, reverse DNS) nor the signing threads. At most
# AUTH_QUEUE checks wait or run at once; beyond that AUTH gets 454 4.7.0 at once (RFC 4954 6).
AUTH_THREADS = 2
AUTH_QUEUE = 16


class Authenticator:
    """AUTH PLAIN/LOGIN against the store's clients: scrypt on its own threads, successes cached in memory,
    failures throttled per client address (relay.policy.auththrottle).

    The cache maps a client name to an HMAC of (name, secret) under a random per-process key, plus
    the stored hash it was checked against: a changed secret in the store misses the cache, and the
    cache never holds a secret or anything that would test guesses offline without the key.
    """

    def __init__(self, *, throttle: AuthThrottle | None = None) -> None:
        self._key = secrets.token_bytes(32)
        self._cache: dict[str, tuple[bytes, str]] = {}
        # Unknown names still pay one scrypt, so timing does not reveal which clients exist.
        self._dummy_hash: str | None = None
        self.throttle = throttle if throttle is not None else AuthThrottle()
        self._hashing = ThreadPoolExecutor(max_workers=AUTH_THREADS, thread_name_prefix="relay-auth")
        self._queued = 0

    def close(self) -> None:
        """Stop the AUTH threads (a check under way finishes; nothing new is taken)."""
        self._hashing.shutdown(wait=False, cancel_futures=True)

    def _mac(self, name: str, secret: str) -> bytes:
        return hmac.new(self._key, name.encode() + b"\x00" + secret.encode(), hashlib.sha256).digest()

    def admit(self, ip: str) -> None:
        """Before anything else of an AUTH: `ReplyError` (454, or 421 when it keeps going) while `ip` is
        held back. Nothing is checked then, a right secret included: a check that could still succeed
        would let guesses go on at full speed."""
        verdict = self.throttle.check(ip)
        if verdict is not Verdict.ALLOW:
            raise ReplyError(AUTH_THROTTLED_CLOSE if verdict is Verdict.CLOSE else AUTH_THROTTLED)

    async def authenticate(self, clients: Mapping[str, Client], name: str, secret: str, *, ip: str) -> Client | None:
        """The client these credentials name, or None (a failure counted against `ip`); call `admit` first.

        `ReplyError` (454) when AUTH_QUEUE checks are already waiting for the AUTH threads.
        """
        client = await self._verify(clients, name, secret)
        if client is None:
            hold = self.throttle.failed(ip)
            if hold:
                log.warning("auth throttled: ip=%s %d failures within %gs; AUTH refused for %gs",
                            ip, MAX_FAILURES, WINDOW, hold)
        return client

    async def _verify(self, clients: Mapping[str, Client], name: str, secret: str) -> Client | None:
        client = clients.get(name)
        mac = self._mac(name, secret)
        if client is not None:
            cached = self._cache.get(name)
            if cached is not None and cached[1] == client.secret_hash and hmac.compare_digest(cached[0], mac):
                return client
            if await self._hash(verify_secret, secret, client.secret_hash):
                self._cache[name] = (mac, client.secret_hash)
                return client
            return None
        if self._dummy_hash is None:
            self._dummy_hash = await self._hash(hash_secret, secrets.token_urlsafe(16))
        await self._hash(verify_secret, secret, self._dummy_hash)
        return None

    async def _hash(self, function: Callable[..., _T], *args: str) -> _T:
        """`function(*args)` on the AUTH threads, or 454 4.7.0 when AUTH_QUEUE checks are already waiting."""
        if self._queued >= AUTH_QUEUE:
            raise ReplyError(AUTH_BUSY)
        self._queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._hashing, function, *args)
        finally:
            self._queued -= 1
