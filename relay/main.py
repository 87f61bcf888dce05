"""`relay`: check settings, store and listener, then serve SMTP in RELAY_WORKERS processes sharing one socket."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sqlite3
import ssl
import sys
from typing import NoReturn

from relay.directory import Directory
from relay.server import start_relay, tls_context
from relay.settings import Settings, SettingsError, load_settings
from relay.store import StoreError, open_store

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2


class StartupError(Exception):
    """Start-up cannot go on; the message is one line naming what is wrong."""


def check_store(settings: Settings) -> None:
    """Open the store and build one snapshot (which also loads keys and logs any broken one)."""
    try:
        store = open_store(settings)
        try:
            Directory(store, keys_dir=settings.keys_dir, reload_interval=settings.reload_interval).load()
        finally:
            store.close()
    except (StoreError, sqlite3.Error, OSError) as exc:
        raise StartupError(f"RELAY_DATABASE: the store is not usable: {exc}") from None


def check_tls(settings: Settings) -> None:
    try:
        tls_context(settings)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"RELAY_TLS_CERT/RELAY_TLS_KEY: cannot load the certificate and key: {exc}") from None


def listen_socket(settings: Settings) -> socket.socket:
    """Bind once in the parent (SO_REUSEADDR); workers inherit the socket and accept from it."""
    host, port = settings.listen.host, settings.listen.port
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(512)
    except OSError as exc:
        raise StartupError(f"RELAY_LISTEN: cannot listen on {settings.listen}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def banner(settings: Settings, sock: socket.socket) -> str:
    """How to try it: where we listen and send (never the upstream password), store and keys."""
    host, port = sock.getsockname()[:2]
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    workers = f"{settings.workers} worker{'s' if settings.workers > 1 else ''}"
    lines = [
        f"relay: listening on {where} ({workers}); upstream {settings.upstream}; "
        f"store {settings.database}; keys {settings.keys_dir}",
        "relay: try it: relay-admin user add me --role owner",
        "relay:         relay-admin tenant set acme --name Acme --email billing@acme.test --domain acme.test --as me",
        "relay:         relay-admin client add billing --tenant acme --as me   (prints the secret once)",
        f"relay:         swaks --server {where} --auth-user billing --auth-password SECRET "
        "--from app@example.test --to you@example.test",
        "relay:         (a tenant not yet validated needs RELAY_PLATFORM_SENDER; mail sent to "
        f"{settings.upstream} is DKIM-signed and enveloped)",
    ]
    if settings.tls_cert is None and not host.startswith("127.") and host != "::1":
        lines.append("relay: note: without RELAY_TLS_CERT/KEY, AUTH is offered on loopback only; "
                     "other clients need `client add --network`")
    return "\n".join(lines)


async def _serve(settings: Settings, sock: socket.socket) -> int:
    store = open_store(settings)
    relay = await start_relay(settings, store, sock=sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await relay.close()
    store.close()
    return EXIT_OK


def serve(settings: Settings, sock: socket.socket) -> int:
    return asyncio.run(_serve(settings, sock))


def supervise(settings: Settings, sock: socket.socket) -> int:
    """Fork the workers; forward SIGTERM/SIGINT to them; exit when they have all exited.

    A worker that dies on its own takes the others down (exit 1): a supervisor such as systemd
    restarts the whole relay rather than run it short-handed without anyone noticing.
    """
    children: set[int] = set()
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    # Installed before forking, so a signal that arrives meanwhile is forwarded, not fatal.
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in range(settings.workers):
        if stopping:
            break
        pid = os.fork()
        if pid == 0:
            os._exit(_worker(settings, sock))
        children.add(pid)
    code = EXIT_OK
    while children:
        pid, status = os.wait()
        children.discard(pid)
        if not stopping:
            print(f"relay: worker {pid} exited unexpectedly (status {status}); stopping", file=sys.stderr)
            forward(signal.SIGTERM, None)
            code = EXIT_RUNTIME
    return code


def _worker(settings: Settings, sock: socket.socket) -> int:
    """A forked worker: its own event loop and store connection; never returns into the parent's code."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        return serve(settings, sock)
    except BaseException as exc:  # os._exit follows: say why in one line instead of a lost traceback
        print(f"relay: worker {os.getpid()} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


def main() -> int:
    try:
        settings = load_settings()
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr,
            format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
        )
        check_tls(settings)
        check_store(settings)  # logs one line per unusable key; those tenants get 451 4.3.5
        sock = listen_socket(settings)
    except (SettingsError, StartupError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(banner(settings, sock), flush=True)
    if settings.workers == 1:
        return serve(settings, sock)
    return supervise(settings, sock)


def run() -> NoReturn:
    sys.exit(main())
