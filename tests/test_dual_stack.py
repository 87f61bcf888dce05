"""A dual-stack listener (`RELAY_LISTEN=[::]:2525`) sees IPv4 clients as `::ffff:a.b.c.d` (RFC 4291
2.5.5.2): they keep their loopback exemption, their network binding, their count and their log line."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.core.models import TenantStatus
from relay.core.settings import HostPort, Settings
from relay.core.store import SqliteStore
from relay.service.relay import RunningRelay
from tests.factories import make_tenant
from tests.relay_harness import (
    RCPT,
    Outcome,
    _send_sync,
    add_client,
    make_settings,
    relay_running,
)

MESSAGE = b"From: app@platform.test\r\nTo: someone@example.test\r\nSubject: dual stack\r\n\r\nBody.\r\n"


def _ipv6_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _ipv6_works(), reason="this machine has no IPv6 (cannot bind ::1)")


def dual_stack_socket() -> socket.socket:
    """`[::]:0` as relay.service.main binds RELAY_LISTEN=[::]:PORT: one AF_INET6 socket that IPv4 clients reach too
    (IPV6_V6ONLY off, the Linux default that relay.service.main relies on)."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", 0))
    sock.listen(16)
    return sock


@dataclass
class World:
    settings: Settings
    store: SqliteStore
    secret: str


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    settings = make_settings(tmp_path, listen=HostPort("::", 0))
    store = SqliteStore(settings.database_path)
    make_tenant(store, settings, "acme", domain="acme.test", status=TenantStatus.VERIFIED)
    secret = add_client(store, "billing", tenants=("acme",))
    add_client(store, "legacy-erp", tenants=("acme",), networks=("127.0.0.0/8",))
    yield World(settings, store, secret)
    store.close()


async def send_over(host: str, relay: RunningRelay, *, user: str | None, secret: str | None = None) -> Outcome:
    """smtplib from `host` (127.0.0.1 or ::1) to the relay's dual-stack port."""
    port = relay.address[1]
    return await asyncio.to_thread(_send_sync, host, port, MESSAGE, user, secret, "PLAIN",
                                   "app@platform.test", (RCPT,), False)


async def test_an_ipv4_loopback_client_is_loopback_and_its_network_client_matches(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    async with relay_running(world.settings, world.store, sock=dual_stack_socket()) as relay:
        assert relay.address[0] == "::"
        by_network = await send_over("127.0.0.1", relay, user=None)  # no AUTH: known by 127.0.0.0/8
        by_auth = await send_over("127.0.0.1", relay, user="billing", secret=world.secret)  # AUTH, no TLS
    assert by_network.code == 250, by_network
    assert by_auth.code == 250, by_auth
    lines = [r.getMessage() for r in caplog.records if "outcome=delivered" in r.getMessage()]
    assert len(lines) == 2 and all(" ip=127.0.0.1 " in line for line in lines), lines
    for eml in sorted((world.settings.upstream.outbox_dir or Path()).glob("*.eml")):
        assert b"[127.0.0.1]" in eml.read_bytes() and b"::ffff:" not in eml.read_bytes()


async def test_auth_is_offered_in_the_clear_to_an_ipv4_loopback_client(world: World) -> None:
    async with relay_running(world.settings, world.store, sock=dual_stack_socket()) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.address[1])
        try:
            assert (await reader.readline()).startswith(b"220")
            writer.write(b"EHLO client.test\r\n")
            ehlo = [await reader.readline()]
            while ehlo[-1][3:4] == b"-":
                ehlo.append(await reader.readline())
            token = base64.b64encode(f"\0billing\0{world.secret}".encode())
            writer.write(b"AUTH PLAIN " + token + b"\r\n")
            auth = await reader.readline()
            assert any(line.startswith(b"250-AUTH") for line in ehlo), ehlo
            assert auth.startswith(b"235"), auth
            assert relay.connections.count("127.0.0.1") == 1  # counted as the IPv4 client it is
        finally:
            writer.close()


async def test_an_ipv6_loopback_client_on_the_same_listener_is_loopback(world: World) -> None:
    async with relay_running(world.settings, world.store, sock=dual_stack_socket()) as relay:
        outcome = await send_over("::1", relay, user="billing", secret=world.secret)
    assert outcome.code == 250, outcome
