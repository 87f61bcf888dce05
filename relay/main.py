"""`relay`: check settings, store and listener, then serve SMTP in RELAY_WORKERS processes sharing one socket.

The relay never creates the store: on a fresh install it starts, serves no client, and picks the
store up once `relay-admin user add` has created it. Every worker also re-checks the tenants' DNS on
its own (`relay.revalidator`, started with the worker's relay); a lease makes one of them check a given
tenant. SIGTERM or SIGINT stops it politely (see `relay.server.RunningRelay.stop`); with several
workers the parent forwards the signal and waits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sqlite3
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from relay.directory import Directory
from relay.limits import plural
from relay.models import Role
from relay.policy import is_loopback
from relay.server import start_relay, tls_context
from relay.settings import Settings, SettingsError, load_settings
from relay.store import Store, StoreError, StoreMissing, open_store, store_location

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}

log = logging.getLogger("relay.main")


class StartupError(Exception):
    """Start-up cannot go on; the message is one line naming what is wrong."""


@dataclass(frozen=True)
class StoreFacts:
    """What the banner says of the store: where it is and what it holds (nothing while it does not exist)."""

    location: str  # absolute path
    exists: bool
    users: int = 0
    actor: str | None = None  # an owner or admin, who may take the next step
    tenants: tuple[str, ...] = ()
    verified: tuple[str, ...] = ()
    clients: int = 0


def _check_creatable(path: Path) -> None:
    """A missing store must be creatable later: its nearest existing ancestor is a directory."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise StartupError(f"RELAY_DATABASE: no store can be created at {path}: {parent} is not a directory")
            return


def _facts(store: Store, settings: Settings) -> StoreFacts:
    """Build one snapshot (which loads keys and logs any broken one) and count what the store holds."""
    snapshot = Directory(store, keys_dir=settings.keys_dir, reload_interval=settings.reload_interval).load()
    users = store.list_users()
    actors = [user.name for user in users if user.role is Role.OWNER] + [
        user.name for user in users if user.role is Role.ADMIN]
    # A degraded tenant is still verified: its mail leaves as itself (SPEC.md "Lifecycle").
    verified = tuple(tid for tid, tenant in snapshot.tenants.items() if tenant.status.sends_as_itself)
    return StoreFacts(location=store_location(settings), exists=True, users=len(users),
                      actor=actors[0] if actors else None, tenants=tuple(snapshot.tenants),
                      verified=verified, clients=len(snapshot.clients))


def check_store(settings: Settings) -> StoreFacts:
    """Read the store if it exists; never create it (`relay-admin user add` does)."""
    try:
        store = open_store(settings, create=False)
    except StoreMissing:
        _check_creatable(settings.database_path)
        log.info("no store at %s yet: no client can send until it exists; the relay picks it up within %gs "
                 "of its creation (relay-admin user add NAME --role owner)",
                 store_location(settings), settings.reload_interval)
        return StoreFacts(location=store_location(settings), exists=False)
    except (StoreError, sqlite3.Error, OSError) as exc:
        raise StartupError(f"RELAY_DATABASE: the store is not usable: {exc}") from None
    try:
        return _facts(store, settings)
    except (StoreError, sqlite3.Error, OSError) as exc:
        raise StartupError(f"RELAY_DATABASE: the store is not usable: {exc}") from None
    finally:
        store.close()


def check_tls(settings: Settings) -> None:
    """Load the certificate and key once, so a bad pair stops start-up with one line."""
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


def _upstream(settings: Settings) -> str:
    """The upstream as the banner names it: never its password, an outbox as an absolute path."""
    upstream = settings.upstream
    if upstream.scheme == "outbox" and upstream.outbox_dir is not None:
        return (f"outbox:{upstream.outbox_dir.resolve()} (each accepted message is written there as a signed "
                ".eml file, not sent on)")
    return str(upstream)  # Upstream.__str__ masks the password


def _store_summary(facts: StoreFacts) -> str:
    """`2 users, 3 tenants (1 verified), 4 clients`, or that the store does not exist yet."""
    if not facts.exists:
        return "does not exist yet"
    tenants = f"{plural(len(facts.tenants), 'tenant')} ({len(facts.verified)} verified)"
    return f"{plural(facts.users, 'user')}, {tenants}, {plural(facts.clients, 'client')}"


def next_step(settings: Settings, facts: StoreFacts, where: str) -> str:
    """The one step that is right in the store's present state, in the README's words."""
    acting = f" --as {facts.actor or 'USER'}"
    if not facts.exists:
        return (f"next: `relay-admin user add NAME --role owner` creates the store; this relay picks it up "
                f"within {settings.reload_interval:g}s")
    if facts.users == 0:
        return "next: `relay-admin user add NAME --role owner`"
    if not facts.tenants:
        return f"next: `relay-admin tenant set TENANT --name NAME --email ADDRESS --domain DOMAIN{acting}`"
    if facts.clients == 0:
        return f"next: `relay-admin client add NAME --tenant {facts.tenants[0]}{acting}` (prints its secret once)"
    if not facts.verified:
        # No verified tenant means no verified platform sender either: every message gets 550 5.7.1.
        tenant = facts.tenants[0]
        return (f"next: publish the records that `relay-admin records {tenant}{acting}` lists, then "
                f"`relay-admin validate {tenant}{acting}`; until a tenant is verified, every message is refused")
    return f"ready: services send to {where} with SMTP AUTH PLAIN or LOGIN, user = the client's name"


def banner(settings: Settings, address: tuple[str, int], facts: StoreFacts) -> str:
    """Facts (where it listens and sends, its store and keys) and the next step that is right now."""
    host, port = address
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    keys = settings.keys_dir.resolve()
    lines = [
        f"listening on {where} ({plural(settings.workers, 'worker')})",
        f"upstream {_upstream(settings)}",
        f"store {facts.location}: {_store_summary(facts)}",
        f"keys {keys}" + ("" if keys.is_dir() else " (does not exist yet)"),
        next_step(settings, facts, where),
    ]
    if settings.tls_cert is None and not is_loopback(host):
        lines.append("note: without RELAY_TLS_CERT/KEY, AUTH is offered on loopback only; "
                     "other clients need `client add --network`")
    return "\n".join(f"relay: {line}" for line in lines)


async def _serve(settings: Settings, sock: socket.socket) -> int:
    """Serve until SIGTERM or SIGINT, then stop politely."""
    stop = asyncio.Event()
    received: list[str] = []
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    # A worker is forked with these blocked (see `_fork_worker`); now that they are handled, let them in.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS | {signal.SIGCHLD})
    relay = await start_relay(settings, None, sock=sock)
    await stop.wait()
    await relay.stop(grace=settings.shutdown_grace, reason=received[0])
    return EXIT_OK


def serve(settings: Settings, sock: socket.socket) -> int:
    """One relay process: its own event loop and store connection."""
    return asyncio.run(_serve(settings, sock))


def _fork_worker(settings: Settings, sock: socket.socket) -> int:
    """Fork a worker; it inherits the parent's blocked signals until its event loop handles them."""
    pid = os.fork()
    if pid == 0:
        os._exit(_worker(settings, sock))
    return pid


def _reap(children: set[int]) -> list[tuple[int, int]]:
    """Collect every worker that has exited: (pid, wait status)."""
    exited = []
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            break
        children.discard(pid)
        exited.append((pid, status))
    return exited


def _forward(children: set[int], signum: int) -> None:
    """Send `signum` to every worker still running."""
    for pid in children:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass  # exited meanwhile; reaped at its SIGCHLD


def supervise(settings: Settings, sock: socket.socket) -> int:
    """Fork the workers; forward SIGTERM/SIGINT to them; exit when they have all exited.

    A worker that dies on its own takes the others down (exit 1): a supervisor such as systemd
    restarts the whole relay rather than run it short-handed without anyone noticing.
    """
    # Signals are taken synchronously (sigwaitinfo), never by a handler: a stop that arrives while
    # forking waits, blocked, and is forwarded to every worker once all exist.
    waited = STOP_SIGNALS | {signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    children = {_fork_worker(settings, sock) for _ in range(settings.workers)}
    sock.close()  # the workers hold the listener; when they close theirs on stop, it is closed
    stopping, code = False, EXIT_OK
    while children:
        signum = signal.sigwaitinfo(waited).si_signo
        if signum != signal.SIGCHLD:
            if not stopping:
                log.info("stopping on %s: forwarded to %s", signal.Signals(signum).name,
                         plural(len(children), "worker"))
            stopping = True
            _forward(children, signum)
            continue
        for pid, status in _reap(children):
            if not stopping:
                print(f"relay: worker {pid} exited unexpectedly (status {status}); stopping", file=sys.stderr)
                stopping, code = True, EXIT_RUNTIME
                _forward(children, signal.SIGTERM)
            elif os.waitstatus_to_exitcode(status) != EXIT_OK:
                log.error("worker %d exited with code %d while stopping", pid, os.waitstatus_to_exitcode(status))
                code = EXIT_RUNTIME
    if code == EXIT_OK:
        log.info("stopped: every worker exited")
    return code


def _worker(settings: Settings, sock: socket.socket) -> int:
    """A forked worker: its own event loop and store connection; never returns into the parent's code."""
    try:
        return serve(settings, sock)
    except BaseException as exc:  # os._exit follows: say why in one line instead of a lost traceback
        print(f"relay: worker {os.getpid()} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


def main() -> int:
    """Check everything once, print the banner, then serve in one process or supervise workers."""
    try:
        settings = load_settings()
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr,
            format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
        )
        check_tls(settings)
        facts = check_store(settings)  # logs one line per unusable key; those tenants get 451 4.3.5
        sock = listen_socket(settings)
    except (SettingsError, StartupError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    host, port = sock.getsockname()[:2]
    print(banner(settings, (str(host), int(port)), facts), flush=True)
    if settings.workers == 1:
        return serve(settings, sock)
    return supervise(settings, sock)


def run() -> NoReturn:
    sys.exit(main())
